"""Host side of a box's writable storage: one size-capped tmpfs per submission.

    <state>/ws/<name>/          tmpfs (size = disk cap, nosuid, nodev), root-owned 0755
        box/                    -> /box in every step of the submission (source, binaries)
        step-1/tmp, step-1/shm  -> /tmp and /dev/shm of the first box (compile)
        step-2/tmp, step-2/shm  -> /tmp and /dev/shm of the second box (run)

One cap covers the working directory, /tmp and /dev/shm together. The daemon
writes only into a tmpfs no box has touched yet (the source file, at creation)
or creates directories at its top level, which no box can reach: a box sees
`box/` and its own step directories, never the top. Afterwards the whole tmpfs
is unmounted, so the daemon never reads, follows or deletes anything a box
wrote: no symlink planted by a program can turn a host-side file operation
against the host (the Judge0 CVE-2024-28185 class). The one read is boxtree.py's copy
of a compile's box/ (sealed: its box has ended, no run box had it yet), made through
directory fds with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import _libc as L
from ._proc import mountinfo, pid_alive
from .spec import Bind


class Workspace:
    def __init__(self, path: Path, host_id: int) -> None:
        self.path = path
        self.host_id = host_id
        self.steps = 0

    @classmethod
    def create(cls, parent: Path, name: str, size_mb: int, host_id: int) -> Workspace:
        path = parent / name
        path.mkdir(mode=0o755)
        try:
            L.mount("tmpfs", str(path), "tmpfs", L.MS_NOSUID | L.MS_NODEV,
                    f"size={size_mb}m,mode=0755,uid=0,gid=0")
        except OSError:
            path.rmdir()
            raise
        ws = cls(path, host_id)
        ws._mkdir(path / "box", 0o755)
        return ws

    def _mkdir(self, path: Path, mode: int) -> None:
        os.mkdir(path, mode)
        os.chown(path, self.host_id, self.host_id, follow_symlinks=False)
        os.chmod(path, mode, follow_symlinks=True)  # mkdir's mode is masked by umask

    def write_file(self, name: str, content: bytes, mode: int = 0o644) -> None:
        """Put a file into box/ before any box ran (O_EXCL|O_NOFOLLOW all the same)."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        fd = os.open(self.path / "box" / name,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchown(fd, self.host_id, self.host_id)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def binds_for_next_step(self) -> tuple[Bind, ...]:
        """Fresh /tmp and /dev/shm for the next box, plus the shared /box."""
        self.steps += 1
        step = self.path / f"step-{self.steps}"
        os.mkdir(step, 0o755)
        self._mkdir(step / "tmp", 0o1777)
        self._mkdir(step / "shm", 0o1777)
        return (
            Bind(str(self.path / "box"), "/box", writable=True),
            Bind(str(step / "tmp"), "/tmp", writable=True),
            Bind(str(step / "shm"), "/dev/shm", writable=True),
        )

    def destroy(self) -> None:
        # Lazy unmount drops the whole tmpfs at once; nothing inside is ever walked.
        try:
            L.umount2(str(self.path), L.MNT_DETACH)
        except OSError:
            pass
        os.rmdir(self.path)


def prepare_instance_dir(parent: Path) -> Path:
    """The directory this daemon's workspaces live in: `<parent>/<pid>`.

    `parent` becomes a private mount, so workspace mounts never propagate into other
    mount namespaces; workspaces left by a daemon that is gone are unmounted first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    mounted = [point for point, _type, _options in mountinfo()]
    if str(parent) not in mounted:
        L.mount(str(parent), str(parent), None, L.MS_BIND)
    L.mount(None, str(parent), None, L.MS_PRIVATE)
    for entry in sorted(parent.iterdir()):
        if not entry.name.isdigit() or pid_alive(int(entry.name)):
            continue
        for point in sorted((m for m in mounted if m.startswith(f"{entry}/")), reverse=True):
            L.umount2(point, L.MNT_DETACH)
        for child in entry.iterdir():
            os.rmdir(child)
        os.rmdir(entry)
    mine = parent / str(os.getpid())
    mine.mkdir(exist_ok=True)
    return mine


def release_instance_dir(mine: Path) -> None:
    """Remove this daemon's (empty) directory; the last daemon out unmounts the parent."""
    with contextlib.suppress(OSError):
        mine.rmdir()
    parent = mine.parent
    if not any(parent.iterdir()):
        with contextlib.suppress(OSError):
            L.umount2(str(parent), L.MNT_DETACH)
            parent.rmdir()
