"""The box's filesystem: a mount plan built as data, then executed in the box's init.

`plan()` is pure (it runs in the fork server, before fork); `execute()` runs in
the box's PID 1, inside the new user + mount namespaces, and ends with
`pivot_root`. The resulting root:

    /            tmpfs, remounted read-only, nosuid, nodev
    /usr /lib... read-only (nosuid, nodev) binds of host paths the rootfs lists
    /etc         synthesized passwd, group, hosts, hostname (+ listed host files)
    /proc        a fresh proc of the box's own PID namespace
    /dev         null zero full random urandom (binds of the host nodes), fd links, shm
    /box /tmp /dev/shm   the size-capped workspace tmpfs: empty mount points here,
                 attached when the box is taken (`attach`, see BoxShape.late)

Nothing else of the host (/root, /home, /work, /var, /sys, host /proc) is reachable:
the old root is detached after pivot_root.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from . import _libc as L
from .spec import BOX_HOSTNAME, BOX_UID, BoxShape

DEVICES = ("null", "zero", "full", "random", "urandom")
RO_FLAGS = L.MOUNT_ATTR_RDONLY | L.MOUNT_ATTR_NOSUID | L.MOUNT_ATTR_NODEV
RW_FLAGS = L.MOUNT_ATTR_NOSUID | L.MOUNT_ATTR_NODEV


class Op(NamedTuple):
    """One step of the plan; `kind` names the function in `_OPS` that performs it."""

    kind: str
    a: str
    b: str = ""
    c: int = 0


def _etc_files() -> list[tuple[str, str]]:
    return [
        ("/etc/passwd", f"root:x:0:0:root:/root:/bin/sh\n"
                        f"sandbox:x:{BOX_UID}:{BOX_UID}:sandbox:/box:/bin/sh\n"
                        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ("/etc/group", f"root:x:0:\nsandbox:x:{BOX_UID}:\nnogroup:x:65534:\n"),
        ("/etc/hosts", f"127.0.0.1\tlocalhost {BOX_HOSTNAME}\n::1\tlocalhost ip6-localhost\n"),
        ("/etc/hostname", f"{BOX_HOSTNAME}\n"),
        ("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
    ]


def plan(spec: BoxShape, root: str) -> list[Op]:
    """Every step that builds the box's root under `root` (a mount point to cover)."""
    ops = [
        # Nothing we mount may propagate back to the host's mount namespace.
        Op("private", "/"),
        Op("tmpfs", root, "size=1m,nr_inodes=4096,mode=0755",
           L.MS_NOSUID | L.MS_NODEV),
    ]
    made: set[str] = set()

    def parents(path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                ops.append(Op("mkdir", root + d, c=0o755))

    for link, target in sorted(spec.symlinks):
        parents(link)
        ops.append(Op("symlink", target, root + link))
    dev_binds = [b for b in spec.binds if b.target.startswith("/dev/")]
    for bind in sorted(spec.binds, key=lambda b: b.target):
        if bind in dev_binds:
            continue  # mounted after the /dev tmpfs, which would hide them
        parents(bind.target)
        ops.append(Op("bind", bind.source, root + bind.target, RW_FLAGS if bind.writable
                      else RO_FLAGS))
    late_dev = [(t, d) for t, d in spec.late if t.startswith("/dev/")]
    for target, is_dir in spec.late:
        if (target, is_dir) not in late_dev:
            parents(target)
            ops.append(Op("mkdir", root + target, c=0o755) if is_dir
                       else Op("touch", root + target))
    for path, content in _etc_files():
        parents(path)
        ops.append(Op("file", root + path, content, 0o644))
    for d in ("/proc", "/dev"):
        parents(d + "/x")
    ops.append(Op("proc", root + "/proc"))
    ops.append(Op("tmpfs", root + "/dev", "size=64k,nr_inodes=64,mode=0755",
                  L.MS_NOSUID | L.MS_NOEXEC))
    for dev in DEVICES:
        ops.append(Op("bind", "/dev/" + dev, root + "/dev/" + dev, L.MOUNT_ATTR_NOSUID
                      | L.MOUNT_ATTR_NOEXEC))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        ops.append(Op("symlink", target, root + "/dev/" + name))
    # e.g. /dev/shm: a writable bind of the workspace, on top of the /dev tmpfs.
    for bind in dev_binds:
        ops.append(Op("bind", bind.source, root + bind.target,
                      RW_FLAGS if bind.writable else RO_FLAGS))
    for target, is_dir in late_dev:
        ops.append(Op("mkdir", root + target, c=0o755) if is_dir
                   else Op("touch", root + target))
    ops.append(Op("remount_ro", root + "/dev", c=L.MS_NOSUID | L.MS_NOEXEC))
    ops.append(Op("pivot", root))
    ops.append(Op("remount_ro", "/", c=L.MS_NOSUID | L.MS_NODEV))
    return ops


# --- the operations, run inside the box's namespaces -------------------------------


def _private(op: Op) -> None:
    L.mount(None, op.a, None, L.MS_REC | L.MS_PRIVATE)


def _tmpfs(op: Op) -> None:
    L.mount("tmpfs", op.a, "tmpfs", op.c, op.b)


def _mkdir(op: Op) -> None:
    try:
        os.mkdir(op.a, op.c)
    except FileExistsError:
        pass


def _symlink(op: Op) -> None:
    os.symlink(op.a, op.b)


def _bind(op: Op) -> None:
    # The mount point must match the source's type: a directory for a directory,
    # an empty file for a file (e.g. /dev/null, /etc/ld.so.cache).
    if stat.S_ISDIR(os.stat(op.a).st_mode):
        _mkdir(Op("mkdir", op.b, c=0o755))
    elif not os.path.lexists(op.b):
        os.close(os.open(op.b, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    L.mount(op.a, op.b, None, L.MS_BIND | L.MS_REC)
    # One call sets ro/nosuid/nodev on the bind and every mount below it; flags the
    # host mount already locks (e.g. noexec) are kept by the kernel.
    L.mount_setattr_recursive(op.b, op.c)


def _touch(op: Op) -> None:
    # A mount point for a file: an empty regular file.
    if not os.path.lexists(op.a):
        os.close(os.open(op.a, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))


def _file(op: Op) -> None:
    fd = os.open(op.a, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, op.c)
    try:
        os.write(fd, op.b.encode())
    finally:
        os.close(fd)


def _proc(op: Op) -> None:
    L.mount("proc", op.a, "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)


def _remount_ro(op: Op) -> None:
    L.mount(None, op.a, None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | op.c)


def _pivot(op: Op) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    # then leaves only the new root, with no put_old directory to clean up (runc's way).
    os.chdir(op.a)
    L.pivot_root(".", ".")
    L.umount2(".", L.MNT_DETACH)
    os.chdir("/")


_OPS = {
    "private": _private, "tmpfs": _tmpfs, "mkdir": _mkdir, "symlink": _symlink,
    "bind": _bind, "touch": _touch, "file": _file, "proc": _proc,
    "remount_ro": _remount_ro, "pivot": _pivot,
}


def attach(targets: list[str], trees: list[int]) -> None:
    """After pivot_root, in the box's init: move each detached mount tree (open_tree
    clones of the job's workspace mounts, made by the daemon with their final flags)
    onto its mount point. Runs when the box is taken, so a warm box holds no job data."""
    for target, tree in zip(targets, trees, strict=True):
        try:
            L.move_mount_detached(tree, target)
        except OSError as e:
            raise OSError(e.errno, f"attach {target}: {os.strerror(e.errno or 0)}") from None
        os.close(tree)


def execute(ops: list[Op]) -> None:
    """Run the plan; an OSError names the failing step and path."""
    for op in ops:
        try:
            _OPS[op.kind](op)
        except OSError as e:
            where = f"{op.a} -> {op.b}" if op.kind in ("bind", "symlink") else op.a
            raise OSError(e.errno, f"{op.kind} {where}: {os.strerror(e.errno or 0)}") from None
