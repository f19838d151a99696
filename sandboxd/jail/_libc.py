"""The few syscalls Python 3.11's `os` lacks, via ctypes on libc; each raises OSError.

Every wrapper is a single libc call with no allocation beyond argument
encoding, so it is safe between fork and exec.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MNT_DETACH = 2

# <linux/mount.h>, for mount_setattr(2) (Linux 5.12)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
_SYS_mount_setattr = 442
_SYS_open_tree = 428
_SYS_move_mount = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MSG_CMSG_CLOEXEC = 0x40000000

# <linux/prctl.h> / <linux/seccomp.h>
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        f"mount {target}",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.pivot_root(new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr_recursive(path: str, attr_set: int) -> None:
    """Set mount attributes on `path` and every mount below it, in one call."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(_SYS_mount_setattr), ctypes.c_int(AT_FDCWD), path.encode(),
        ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, f"mount_setattr {path}")


def detached_bind(path: str, attr_set: int) -> int:
    """A detached clone of the mount tree at `path` (open_tree(2) OPEN_TREE_CLONE, like a
    recursive bind not yet mounted anywhere) with `attr_set` on every mount of it: a
    descriptor another mount namespace can attach with `move_mount_detached`."""
    fd = _check(_libc.syscall(
        ctypes.c_long(_SYS_open_tree), ctypes.c_int(AT_FDCWD), path.encode(),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)), f"open_tree {path}")
    attr = _MountAttr(attr_set, 0, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(_SYS_mount_setattr), ctypes.c_int(fd), b"",
        ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount_setattr {path}: {os.strerror(err)}")
    return int(fd)


def move_mount_detached(tree: int, target: str) -> None:
    """Attach a detached mount tree (from `detached_bind`) at `target`."""
    _check(_libc.syscall(
        ctypes.c_long(_SYS_move_mount), ctypes.c_int(tree), b"", ctypes.c_int(AT_FDCWD),
        target.encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load_bpf(program: bytes) -> None:
    """Install a ready BPF program (struct sock_filter[] bytes) as this thread's filter.

    Needs no_new_privs (or CAP_SYS_ADMIN); inherited across fork and execve.
    """
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(
        _libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                    ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        "seccomp",
    )


_SYS_seccomp = 317  # x86_64
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
# struct seccomp_notif (80 bytes) and seccomp_notif_resp (24 bytes): a fixed ABI, and the
# ioctl numbers encode the sizes (_IOWR('!', 0 / 1, ...)).
SECCOMP_NOTIF_SIZE = 80
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101


def seccomp_load_bpf_with_listener(program: bytes) -> int:
    """Install a ready BPF program whose NOTIFY actions go to the returned descriptor.

    Needs no_new_privs; the listener fd is close-on-exec.
    """
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return _check(
        _libc.syscall(ctypes.c_long(_SYS_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_uint(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(prog)),
        "seccomp",
    )


_SYS_rt_sigaction = 13  # x86_64
NSIG = 64


class _KernelSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong),
                ("restorer", ctypes.c_void_p), ("mask", ctypes.c_uint64)]


def reset_signal(sig: int) -> None:
    """Default disposition for `sig`, by the raw syscall: also for 32 and 33, which
    glibc (and so Python's signal module) keeps for itself and refuses to touch."""
    act = _KernelSigaction(None, 0, None, 0)  # SIG_DFL, no flags, empty mask
    _check(_libc.syscall(ctypes.c_long(_SYS_rt_sigaction), ctypes.c_int(sig),
                         ctypes.byref(act), ctypes.c_void_p(0), ctypes.c_size_t(8)),
           f"rt_sigaction {sig}")


PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_EXEC = 4


def ptrace(request: int, pid: int, data: int = 0) -> None:
    _check(_libc.ptrace(ctypes.c_long(request), ctypes.c_int(pid), ctypes.c_void_p(0),
                        ctypes.c_void_p(data)), "ptrace")
