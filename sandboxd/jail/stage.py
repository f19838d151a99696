"""The child side of a box: three processes, each a flat list of named steps.

Fork safety. These functions run only in processes forked from the fork server
(forkserver.py): a small single-threaded interpreter that imports nothing but
`sandboxd.jail`, started before the daemon's event loop or any thread exists.
So no lock can be held by a thread that is gone after fork, and the asyncio
(uvloop) process never forks at all. Everything the steps need (the mount plan,
the compiled seccomp BPF, the argv and environment) is computed in the fork
server before fork; the steps only make syscalls.

Each step is wrapped by `_step`: an OSError becomes FAILED {step, errno, message}
on the report pipe (fd 3, close-on-exec) and the process exits. The order, and
why:

D — forked by the fork server, still host root in the host's namespaces
  pdeathsig     die if the fork server dies (no orphaned boxes)
  cgroup        join the box cgroup first: everything after is accounted and killable
  session       setsid(): no controlling terminal, so no TIOCSTI into the daemon's tty
  stdio         stdin/stdout/stderr onto 0-2, report pipe on 3, every other fd closed
  rlimits       backstops (CPU, FSIZE, NOFILE, STACK, CORE=0) set while we may raise them
  groups        drop supplementary groups: impossible once setgroups is denied
  unshare       new user, mount, PID, net, IPC, UTS, cgroup namespaces in one call
  usermap       ask the fork server to write the id maps (see userns.py), wait for it
  identity      become the box uid/gid; host root is unmapped inside, so the
                capabilities held in the new user namespace survive the switch
  fork          I becomes PID 1 of the new PID namespace; D just waits and relays
I — PID 1, capabilities only inside the box's user namespace
  pdeathsig     die with D (and so with the fork server)
  mounts        the plan of mounts.py, ending in pivot_root and a read-only root
  loopback      `lo` up in the new network namespace
  hostname      "sandbox"
  dumpable      off: the program (same uid) cannot read I's memory through /proc
  go            STARTED to the supervisor, which takes its CPU and memory baselines and
                answers GO: the program's clock starts only then
  fork          P, the program. The program is never PID 1: the kernel ignores
                default-action signals sent to an init, so abort() would not die
  reap          reap every child; when P ends send EXITED {status}, then exit:
                the kernel then kills whatever else is left in the PID namespace
P — the program
  signals       default dispositions and an empty mask (Python ignores SIGPIPE/SIGXFSZ)
  cwd           the working directory
  capabilities  empty bounding set and capability sets
  no_new_privs  no setuid/file-capability gains across execve; required for seccomp
  seccomp       the allow-list, loaded last: after it only execve remains
  execve
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import time
from typing import NoReturn

import prctl

from . import _libc as L
from . import mounts, netns, protocol
from .spec import BOX_HOSTNAME, BOX_UID, JailSpec

REPORT_FD = 3
GO_FD = 4
SYNC_FD = 5
with open("/proc/sys/kernel/cap_last_cap") as _f:
    CAP_LAST = int(_f.read())  # read once in the fork server: P has no /proc of the host
SETUP_FAILED = 127
ALL_NAMESPACES = (L.CLONE_NEWUSER | L.CLONE_NEWNS | L.CLONE_NEWPID | L.CLONE_NEWNET
                  | L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWCGROUP)


def _step(name: str, fn, *args):
    try:
        return fn(*args)
    except OSError as e:
        try:
            protocol.report(REPORT_FD, {"kind": "FAILED", "step": name, "errno": e.errno or 0,
                                        "message": e.strerror or str(e)})
        finally:
            os._exit(SETUP_FAILED)
    except BaseException as e:  # a bug of ours: still report, never hang the supervisor
        try:
            protocol.report(REPORT_FD, {"kind": "FAILED", "step": name, "errno": 0,
                                        "message": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(SETUP_FAILED)


# ------------------------------------------------------------------------------ D


def _pdeathsig(expected_parent: int | None) -> None:
    prctl.set_pdeathsig(signal.SIGKILL)
    # The parent may have died before pdeathsig was armed. (Not checkable for PID 1:
    # its parent lives outside its PID namespace, so getppid() is always 0 there.)
    if expected_parent is not None and os.getppid() != expected_parent:
        raise OSError(errno.ESRCH, "parent exited during setup")


def _join_cgroup(procs_files: list[str]) -> None:
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # "0" means the writing process itself
        finally:
            os.close(fd)


def _stdio(fds: list[int], sync: int) -> None:
    # Copy everything above the target range first, so no dup2 clobbers a source.
    # Result: 0-2 stdio, 3 report pipe, 4 go pipe, 5 sync socket; the rest closed.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (*fds, sync)]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target <= 2)
    os.closerange(SYNC_FD + 1, 1 << 20)


def _rlimits(spec: JailSpec) -> None:
    lim = spec.limits
    cpu_s = lim.cpu_ms // 1000 + 2  # backstop only: the watchdog kills at the exact limit
    for res, value in (
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, lim.file_size_bytes),
        (resource.RLIMIT_NOFILE, lim.open_files),
        (resource.RLIMIT_STACK, lim.stack_bytes or resource.RLIM_INFINITY),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))


def _usermap() -> None:
    os.write(SYNC_FD, protocol.USERMAP_PLS)
    if os.read(SYNC_FD, 1) != protocol.USERMAP_ACK:
        raise OSError(0, "fork server did not write the id maps")
    os.close(SYNC_FD)


def _identity() -> None:
    os.setresgid(BOX_UID, BOX_UID, BOX_UID)
    os.setresuid(BOX_UID, BOX_UID, BOX_UID)


def run_box(spec: JailSpec, plan: list[mounts.Op], bpf: bytes, procs_files: list[str],
            fds: list[int], sync: int, server_pid: int) -> NoReturn:
    """D: entered right after fork in the fork server's child. Never returns."""
    # Any signal handler of the fork server must not run here.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _step("pdeathsig", _pdeathsig, server_pid)
    _step("cgroup", _join_cgroup, procs_files)
    _step("session", os.setsid)
    _step("stdio", _stdio, fds, sync)
    _step("rlimits", _rlimits, spec)
    _step("groups", os.setgroups, [])
    _step("unshare", L.unshare, ALL_NAMESPACES)
    _step("usermap", _usermap)
    _step("identity", _identity)
    init = _step("fork", os.fork)
    if init == 0:
        _init(spec, plan, bpf)
    # D holds nothing the box needs; it waits so that I's pdeathsig stays armed.
    _, status = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ------------------------------------------------------------------------------ I


def _hostname() -> None:
    L.sethostname(BOX_HOSTNAME)
    L.setdomainname("(none)")


def _ready_set_go() -> None:
    # The supervisor measures the setup's CPU and memory, grants the program its memory
    # limit on top, and only then lets it start: exact accounting, no race.
    protocol.report(REPORT_FD, {"kind": "STARTED"})
    if os.read(GO_FD, 1) != protocol.GO:
        raise OSError(errno.ECANCELED, "supervisor did not let the program start")
    os.close(GO_FD)


def _init(spec: JailSpec, plan: list[mounts.Op], bpf: bytes) -> NoReturn:
    _step("pdeathsig", _pdeathsig, None)
    _step("mounts", mounts.execute, plan)
    _step("loopback", netns.loopback_up)
    _step("hostname", _hostname)
    _step("dumpable", prctl.set_dumpable, False)
    _step("go", _ready_set_go)
    started = time.monotonic_ns()
    program = _step("fork", os.fork)
    if program == 0:
        _program(spec, bpf)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == program:
            wall = time.monotonic_ns() - started
            protocol.report(REPORT_FD, {"kind": "EXITED", "status": status, "wall_ns": wall})
            # Exiting as PID 1 makes the kernel SIGKILL everything left in the namespace.
            os._exit(0)


# ------------------------------------------------------------------------------ P


def _signals() -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _capabilities() -> None:
    for cap in range(CAP_LAST + 1):
        prctl.capbset_drop(cap)
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit()
    prctl.cap_permitted.limit()


def _execve(spec: JailSpec) -> None:
    env = dict(spec.env)
    os.execvpe(spec.argv[0], list(spec.argv), env)


def _program(spec: JailSpec, bpf: bytes) -> NoReturn:
    _step("signals", _signals)
    _step("cwd", os.chdir, spec.cwd)
    _step("capabilities", _capabilities)
    _step("no_new_privs", prctl.set_no_new_privs, True)
    _step("seccomp", L.seccomp_load_bpf, bpf)
    _step("execve", _execve, spec)
    os._exit(SETUP_FAILED)
