"""The syscall allow-list: built once with libseccomp, exported as BPF bytes.

Building a filter costs milliseconds; loading a ready BPF program costs almost
nothing, so the fork server compiles each profile once (`compile_profile`) and
a box only calls `_libc.seccomp_load_bpf` as its last step before execve.

Policy (threat in brackets):
- default action EPERM: runtimes probe optional syscalls and must get an errno,
  not die (javac opens an AF_INET socket while compiling);
- KILL_PROCESS for calls no honest program makes (kernel modules, kexec, reboot...);
- only the native architecture: i386 (`int 0x80`) and x32 (syscall bit 30)
  are killed [syscall-table confusion bypassing the filter];
- clone3 answers ENOSYS so libc falls back to clone, whose flags we can inspect;
  clone with any namespace flag is denied [new user ns = full capabilities];
- sockets: AF_UNIX only [AF_NETLINK/AF_VSOCK/AF_INET reach the kernel or host];
- file locks (flock, fcntl F_SETLK*) answer ENOLCK [a lock on a shared read-only
  inode such as libc.so would block other boxes];
- ioctl TIOCSTI denied [typing into a terminal; there is none, belt and braces];
- personality: only the default (PER_LINUX) or a query;
- mmap/mremap asking for more writable memory than the box's memory limit in one
  call are handed to the box's init (user notification), which answers ENOMEM and
  remembers it [an allocation that can never fit: refused the same way on every
  host, whatever its RAM and overcommit heuristics, and evidence for the verdict].
  Reservations (PROT_NONE or MAP_NORESERVE, as JVMs, V8 and Go make) pass.
"""

from __future__ import annotations

import errno
import os

import pyseccomp as sc

from .spec import SeccompProfile

ALLOWED = (
    # files and descriptors
    "read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 "
    "open openat openat2 close close_range creat lseek dup dup2 dup3 pipe pipe2 "
    "stat fstat lstat newfstatat statx statfs fstatfs access faccessat faccessat2 "
    "getdents getdents64 getcwd chdir fchdir rename renameat renameat2 "
    "mkdir mkdirat rmdir link linkat unlink unlinkat symlink symlinkat "
    "readlink readlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat umask "
    "truncate ftruncate fsync fdatasync sync_file_range fallocate fadvise64 readahead "
    "utime utimes utimensat futimesat sendfile copy_file_range splice tee vmsplice "
    "getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr "
    "poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait "
    "epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 "
    "timerfd_create timerfd_settime timerfd_gettime inotify_init inotify_init1 "
    "inotify_add_watch inotify_rm_watch memfd_create "
    # memory
    "brk munmap mprotect msync mincore madvise mlock mlock2 munlock "
    "mlockall munlockall get_mempolicy membarrier pkey_alloc pkey_free pkey_mprotect "
    "map_shadow_stack "
    # processes, threads, signals
    "fork vfork execve execveat exit exit_group wait4 waitid kill tkill tgkill "
    "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait "
    "rt_sigsuspend rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack pause restart_syscall "
    "pidfd_open pidfd_send_signal pidfd_getfd "
    "futex futex_waitv set_robust_list get_robust_list set_tid_address rseq arch_prctl "
    "prctl capget capset "
    "getpid gettid getppid getpgid setpgid getpgrp getsid setsid "
    "getuid geteuid getgid getegid getresuid getresgid getgroups "
    "setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups "
    "getrlimit setrlimit prlimit64 getrusage getpriority setpriority "
    "sched_yield sched_getaffinity sched_setaffinity sched_getparam sched_setparam "
    "sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min "
    "sched_rr_get_interval sched_getattr sched_setattr getcpu ioprio_get "
    # time
    "nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time times "
    "getitimer setitimer alarm timer_create timer_settime timer_gettime "
    "timer_getoverrun timer_delete "
    # System V / POSIX IPC: confined to the box's own IPC namespace
    "shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl "
    "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr "
    # sockets (creation is filtered by family below)
    "connect accept accept4 bind listen shutdown sendto recvfrom sendmsg recvmsg "
    "sendmmsg recvmmsg getsockname getpeername setsockopt getsockopt "
    # misc
    "uname sysinfo getrandom"
).split()

# Calls no honest program makes: kill the whole box rather than answer.
KILLED = (
    "kexec_load kexec_file_load init_module finit_module delete_module reboot "
    "swapon swapoff acct iopl ioperm"
).split()

# Denied with EPERM explicitly (the default would too; listed so the intent is greppable
# and a language profile cannot re-allow them by accident).
DENIED = (
    "ptrace process_vm_readv process_vm_writev mount umount2 pivot_root chroot "
    "move_mount open_tree fsopen fsmount fsconfig fspick mount_setattr "
    "unshare setns keyctl add_key request_key bpf perf_event_open "
    "io_uring_setup io_uring_enter io_uring_register userfaultfd quotactl quotactl_fd "
    "open_by_handle_at name_to_handle_at lookup_dcookie kcmp fanotify_init "
    "settimeofday clock_settime clock_adjtime adjtimex syslog vhangup mknod mknodat "
    "setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr"
).split()

AF_UNIX = 1
TIOCSTI = 0x5412
PERSONALITY_QUERY = 0xFFFFFFFF
NAMESPACE_CLONE_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
# fcntl commands that are not locks: the classic ones below F_SETLK (6), the owner/signal
# ones, F_OFD_GETLK (a query), and the Linux-specific ones (leases, which need file
# ownership; F_NOTIFY; F_DUPFD_CLOEXEC; pipe sizes; seals; write hints).
FCNTL_PLAIN_CMDS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 15, 16, 17, 36,
                    *range(1024, 1027), *range(1030, 1039))
FCNTL_LOCK_CMDS = (6, 7, 37, 38)  # F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW
# fcntl's and ioctl's command is an `unsigned int`: the kernel drops bits 32-63 of the
# register, so every comparison must look at the low 32 bits only, or F_SETLK | 1 << 32
# would pass a rule written for F_SETLK.
LOW32 = 0xFFFFFFFF
PROT_NONE = 0
MAP_NORESERVE = 0x4000


def _known(name: str) -> bool:
    try:
        sc.resolve_syscall(sc.system_arch(), name)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _allocation_rules(f: sc.SyscallFilter, limit: int | None) -> None:
    """mmap/mremap: allowed, or over `limit` writable bytes: notify (see the docstring).

    The rules are disjoint: the NOTIFY rule is the exact complement of the ALLOW ones.
    """
    if limit is None:
        f.add_rule(sc.ALLOW, "mmap")
        f.add_rule(sc.ALLOW, "mremap")
        return
    f.add_rule(sc.ALLOW, "mmap", sc.Arg(1, sc.LE, limit))
    f.add_rule(sc.ALLOW, "mmap", sc.Arg(2, sc.EQ, PROT_NONE))
    f.add_rule(sc.ALLOW, "mmap", sc.Arg(3, sc.MASKED_EQ, MAP_NORESERVE, MAP_NORESERVE))
    f.add_rule(sc.NOTIFY, "mmap", sc.Arg(1, sc.GT, limit), sc.Arg(2, sc.NE, PROT_NONE),
               sc.Arg(3, sc.MASKED_EQ, MAP_NORESERVE, 0))
    f.add_rule(sc.ALLOW, "mremap", sc.Arg(2, sc.LE, limit))
    f.add_rule(sc.NOTIFY, "mremap", sc.Arg(2, sc.GT, limit))


def build_filter(profile: SeccompProfile, allocation_limit: int | None = None
                 ) -> sc.SyscallFilter:
    """The allow-list; with `allocation_limit`, larger writable allocations notify."""
    f = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    unknown = [name for name in profile.extra_syscalls if not _known(name)]
    if unknown:
        raise ValueError(f"unknown syscall(s) in seccomp profile: {', '.join(unknown)}")
    overlap = set(profile.extra_syscalls) & set(KILLED + DENIED + ["mmap", "mremap"])
    if overlap:
        raise ValueError(f"seccomp profile may not allow {', '.join(sorted(overlap))}")
    # Names this libseccomp does not know (newer than it) are skipped: the default
    # action answers them EPERM, which is what an old kernel would say (ENOSYS-alike).
    for name in ALLOWED + list(profile.extra_syscalls):
        if _known(name):
            f.add_rule(sc.ALLOW, name)
    for name in KILLED:
        if _known(name):
            f.add_rule(sc.KILL_PROCESS, name)
    _allocation_rules(f, allocation_limit)
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, NAMESPACE_CLONE_FLAGS, 0))
    f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, AF_UNIX))
    f.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX))
    # ioctl: allowed when the low 32 bits differ from TIOCSTI in at least one bit (one
    # masked rule per bit; libseccomp has no "masked not-equal").
    for bit in range(32):
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, 1 << bit, ~TIOCSTI & (1 << bit)))
    f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, 0))
    f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, PERSONALITY_QUERY))
    for cmd in FCNTL_PLAIN_CMDS:
        f.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    for cmd in FCNTL_LOCK_CMDS:
        f.add_rule(sc.ERRNO(errno.ENOLCK), "fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
    f.add_rule(sc.ERRNO(errno.ENOLCK), "flock")
    return f


def compile_profile(profile: SeccompProfile, allocation_limit: int | None = None) -> bytes:
    """The profile's filter as raw BPF (struct sock_filter[]), ready to load."""
    f = build_filter(profile, allocation_limit)
    fd = os.memfd_create("seccomp-bpf")
    try:
        with os.fdopen(os.dup(fd), "rb", buffering=0) as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
