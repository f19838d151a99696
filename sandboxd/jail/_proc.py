"""Small readers of /proc shared by the host-side jail modules (cgroup, workspace)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (EPERM still means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount of this process."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, options = right.split()[:3]
            mounts.append((fields[4].replace("\\040", " "), fstype, options))
    return mounts
