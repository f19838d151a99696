"""The child side of a box: three processes, each a flat list of named steps.

Fork safety. These functions run only in processes forked from the fork server
(forkserver.py): a small single-threaded interpreter that imports nothing but
`sandboxd.jail`, started before the daemon's event loop or any thread exists.
So no lock can be held by a thread that is gone after fork, and the asyncio
(uvloop) process never forks at all. Everything the steps need (the mount plan,
the compiled seccomp BPF, the argv and environment) is computed in the fork
server before fork; the steps only make syscalls.

Each step is wrapped by `_step`: an OSError becomes FAILED {step, errno, message}
on the report pipe (fd 3, close-on-exec) and the process exits.

Identities. A box slot owns two host ids (see userns.py): the *keeper* id, which
D takes before it creates the user namespace (so the namespace, and every per-user
kernel counter charged through it, belongs to that id, never to host root) and
which is uid/gid 0 inside; and the *program* id, uid/gid 1000 inside. The program
therefore shares neither uid nor session with D or I: it cannot signal, prlimit or
renice them.

A box is built in two phases. SPAWN builds it up to the moment it waits for its
job: the fork server forks D with the box's shape (its rootfs: spec.BoxShape) and I
ends its steps with STARTED, then blocks on the take socket. TAKE (from the
supervisor, straight to I) brings the job: argv, environment, limits, the seccomp
filter, the program's stdin/stdout/stderr and the workspace mounts as detached mount
trees. A warm box (supervisor.py, the pool) has done the first phase ahead; a cold
one is taken as soon as it says STARTED. Either way the box runs exactly one program.

The order, and why:

D — forked by the fork server, still host root in the host's namespaces
  pdeathsig     die if the fork server dies (armed again after `keeper`, below)
  cgroup        join the box cgroup first: everything after is accounted and killable
  session       setsid(): no controlling terminal, so no TIOCSTI into the daemon's tty
  stdio         /dev/null onto 0-2, report pipe on 3, ...; every other fd closed
  rlimits       CORE=0, SIGPENDING (charged to the keeper id) while root; the program's
                own (CPU, FSIZE, NOFILE, STACK) are set by P
  groups        drop supplementary groups: impossible once we are not root
  keeper        become the slot's keeper id: the user namespace created next is owned
                by it, so inotify instances, queued signals etc. are charged to it
  pdeathsig     again: the kernel clears the parent-death signal when the euid changes
                (prctl(2)); re-armed after the last credential change, parent checked
  unshare       new user, mount, PID, net, IPC, UTS, cgroup namespaces in one call
                (the user namespace is created first, the others belong to it)
  usermap       ask the fork server to write the id maps (see userns.py), wait for it
  fork          I becomes PID 1 of the new PID namespace; D just waits and relays
I — PID 1, uid 0 inside (the keeper id), capabilities only inside the box
  pdeathsig     die with D (and so with the fork server); checked through a lifeline pipe
  session       setsid() inside the box: the program's session and process group hold
                only box processes, so kill(0, …) cannot reach D
  mounts        the plan of mounts.py, ending in pivot_root and a read-only root
  limits        per-namespace caps on inotify instances and watches
  loopback      `lo` up in the new network namespace
  hostname      "sandbox"
  take          STARTED to the supervisor (the box is ready: every box process asleep
                from here, so the supervisor reads an exact CPU counter), then wait for
                TAKE: the job, and its descriptors. I's own CPU time is counted from here
  attach        the workspace's detached mount trees onto their mount points
  traceable     dumpable on for the fork: P inherits it, and only a dumpable P can be
                traced (D's euid change had cleared it)
  fork          P, the program, which waits to be released. The program is never
                PID 1: the kernel ignores default-action signals sent to an init, so
                abort() would not die
  dumpable      off again: nothing in the box may read I's memory or descriptors via
                /proc (P's own flag is reset by its identity change and its execve)
  trace         PTRACE_SEIZE P with TRACEEXEC (before its release): the kernel stops P
                right after its execve; then I releases P
  exec          at that stop, P frozen before its first instruction, I reads P's CPU
                clock, narrows the program's memory limit from the setup's headroom to
                the limit, restarts its memory peak, detaches and reports EXECED: the
                program's numbers and limit start exactly at its execve. (Without
                ptrace: when execve closes a close-on-exec pipe of P's.)
  reap          reap every child and answer P's over-limit allocations with ENOMEM
                (seccomp.py); when P ends (or stops itself: then as if killed by the
                stop signal), read the CPU counter, send EXITED, exit: the kernel then
                kills whatever else is left in the PID namespace
P — the program
  release       wait for I's word (after the trace is set)
  stdio         the job's stdin/stdout/stderr onto 0-2
  rlimits       the job's backstops (CPU, FSIZE, NOFILE, STACK): lowered only, as root
                of the box (the inherited hard limits are the fork server's)
  cgroup        into the program's memory cgroup (cgroup.py): from here on the memory
                limit and the OOM killer see the program's processes only, never D or I
  signals       every signal to its default disposition, empty mask (whatever the
                daemon's launcher ignored must not leak into the program)
  cwd           the working directory
  data          RLIMIT_DATA when the spec asks (here, not in D: D and I are interpreters)
  bounding      empty capability bounding set (needs CAP_SETPCAP: before `identity`)
  identity      the program id (uid/gid 1000 inside): the kernel clears every capability
  capabilities  empty inheritable/effective/permitted sets (belt and braces)
  no_new_privs  no setuid/file-capability gains across execve; required for seccomp
  seccomp       the allow-list, loaded last, with a listener for its over-limit
                allocations that goes to I; after it only the exec report and execve
  execve        preceded by P's own CPU time on the exec pipe
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import signal
import socket
import struct
import time
from typing import NoReturn

import prctl

from . import _libc as L
from . import mounts, netns, protocol
from .cgroup import parse_cpu_usage_ns
from .spec import BOX_HOSTNAME, BOX_UID, BoxShape

REPORT_FD = 3
TAKE_FD = 4  # a SOCK_SEQPACKET socket: the supervisor's TAKE, with its descriptors
SYNC_FD = 5
# Cgroup files, opened by the supervisor (see cgroup.py, accounting_files):
CPU_USAGE_FD = 6  # the box's CPU counter, read-only
MEMORY_PEAK_FD = 7  # the program's memory high-water mark, read-write: reset at execve
MEMORY_LIMIT_FDS = (8, 9)  # the program's memory limit files, write-only
PROGRAM_PROCS_FD = 10  # the program's memory cgroup's cgroup.procs, write-only
LAST_FD = 10
with open("/proc/sys/kernel/cap_last_cap") as _f:
    CAP_LAST = int(_f.read())  # read once in the fork server: P has no /proc of the host
SETUP_FAILED = 127
ALL_NAMESPACES = (L.CLONE_NEWUSER | L.CLONE_NEWNS | L.CLONE_NEWPID | L.CLONE_NEWNET
                  | L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWCGROUP)
# Queued signals a box may hold (charged to its keeper id, not to host root).
SIGPENDING_LIMIT = 1024
# Per-namespace inotify caps (the kernel's defaults are 128 instances per user).
INOTIFY_LIMITS = (("/proc/sys/user/max_inotify_instances", "64"),
                  ("/proc/sys/user/max_inotify_watches", "8192"))
# Signals a process can have a disposition for (SIGKILL/SIGSTOP cannot be changed).
_RESETTABLE_SIGNALS = tuple(sorted(s for s in signal.valid_signals()
                                   if s not in (signal.SIGKILL, signal.SIGSTOP)))
_GLIBC_INTERNAL_SIGNALS = tuple(s for s in range(1, L.NSIG + 1)
                                if s not in _RESETTABLE_SIGNALS
                                and s not in (signal.SIGKILL, signal.SIGSTOP))
_NR_MREMAP = 25  # x86_64
_NS_CLOCK_FMT = 8  # bytes of P's pre-exec CPU time on the exec pipe (little endian)


# The step trace (JailSpec.trace_steps): None unless asked, so an untraced box pays one
# global lookup per step. When asked: (process + step, CLOCK_MONOTONIC ns at the step's
# end), the clock every process of the host shares (no time namespace), so the
# supervisor puts D's, I's and P's steps on one timeline with its own. D's entries
# reach I by the fork; I sends D's and its own with STARTED, P its own before execve.
_trace: list[tuple[str, int]] | None = None
_process = "D"  # the trace's name for the process running the steps: D, I or P


def _step(name: str, fn, *args):
    try:
        result = fn(*args)
        if _trace is not None:
            _trace.append((f"{_process} {name}", time.monotonic_ns()))
        return result
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


def _read_counter(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode()


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
    # Result: 0-2 /dev/null (the job's stdio comes with TAKE), 3 report, 4 take, 5 sync,
    # 6-10 cgroup files; the rest closed.
    report, take, *cgroup_files = fds
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
            for fd in (null, null, null, report, take, sync, *cgroup_files)]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=False)
    os.closerange(LAST_FD + 1, 1 << 20)


def _rlimits() -> None:
    for res, value in ((resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_SIGPENDING, SIGPENDING_LIMIT)):
        resource.setrlimit(res, (value, value))


def _keeper(keeper_id: int) -> None:
    os.setresgid(keeper_id, keeper_id, keeper_id)
    os.setresuid(keeper_id, keeper_id, keeper_id)


def _usermap() -> None:
    os.write(SYNC_FD, protocol.USERMAP_PLS)
    if os.read(SYNC_FD, 1) != protocol.USERMAP_ACK:
        raise OSError(0, "fork server did not write the id maps")
    os.close(SYNC_FD)


def run_box(shape: BoxShape, plan: list[mounts.Op], procs_files: list[str],
            fds: list[int], sync: int, server_pid: int, keeper_id: int) -> NoReturn:
    """D: entered right after fork in the fork server's child. Never returns."""
    global _trace
    if shape.trace_steps:
        _trace = [("D forked", time.monotonic_ns())]
    # Any signal handler of the fork server must not run here.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _step("pdeathsig", _pdeathsig, server_pid)
    _step("cgroup", _join_cgroup, procs_files)
    _step("session", os.setsid)
    _step("stdio", _stdio, fds, sync)
    _step("rlimits", _rlimits)
    _step("groups", os.setgroups, [])
    _step("keeper", _keeper, keeper_id)
    _step("pdeathsig", _pdeathsig, server_pid)
    _step("unshare", L.unshare, ALL_NAMESPACES)
    _step("usermap", _usermap)
    # A lifeline: I holds the read end; EOF on it means D is gone (see _init).
    lifeline_r, lifeline_w = _step("lifeline", os.pipe2, os.O_CLOEXEC)
    init = _step("fork", os.fork)
    if init == 0:
        os.close(lifeline_w)
        _init(plan, lifeline_r)
    os.close(lifeline_r)
    if _trace is not None:
        _trace = []  # the entries so far are I's to send (it has a copy)
    # D holds nothing the box needs; it waits so that I's pdeathsig stays armed.
    _, status = os.waitpid(init, 0)
    _report_trace("D reaped I")  # I's exit: the PID, mount and other namespaces' ends
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ------------------------------------------------------------------------------ I


def _init_pdeathsig(lifeline: int) -> None:
    prctl.set_pdeathsig(signal.SIGKILL)
    # getppid() is 0 for PID 1 whoever the parent is; D's end of the lifeline closes
    # only when D is gone, so a readable (EOF) lifeline means D died before we armed.
    if select.select([lifeline], [], [], 0)[0]:
        raise OSError(errno.ESRCH, "parent exited during setup")
    os.close(lifeline)


def _inotify_limits() -> None:
    # /proc/sys/user/* are per user namespace; I holds CAP_SYS_RESOURCE in the box's.
    for path, value in INOTIFY_LIMITS:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def _hostname() -> None:
    L.sethostname(BOX_HOSTNAME)
    L.setdomainname("(none)")


def _take() -> tuple[dict, list[int]]:
    """STARTED, then wait for the job. Every box process sleeps from here until TAKE
    arrives, so the supervisor reads an exact CPU counter before sending it."""
    started: dict = {"kind": "STARTED"}
    if _trace is not None:
        started["steps"] = _trace
    protocol.report(REPORT_FD, started)
    with socket.socket(fileno=TAKE_FD) as sock:
        # Close-on-exec as they arrive: only P's dup2 onto 0-2 outlives its execve.
        msg, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE,
                                                  protocol.TAKE_MAX_FDS, L.MSG_CMSG_CLOEXEC)
    if not msg:
        raise OSError(errno.ECANCELED, "the supervisor closed the box before taking it")
    return protocol.decode(msg), fds


def _process_cpu_clock(pid: int) -> int:
    # clock_getcpuclockid(3): MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), in our PID ns.
    return ((~pid) << 3) | 2


def _await_exec(exec_r: int, program: int) -> int | None:
    """P's CPU time up to its execve, or None if P died before it.

    execve closes the pipe only after it has torn down P's old (forked Python) address
    space, which costs milliseconds: so P's clock is read here, at EOF, and includes it.
    Only if P already ended by then (a program faster than our wakeup) is its own
    reading from just before execve used instead.
    """
    data = b""
    while chunk := os.read(exec_r, _NS_CLOCK_FMT):
        data += chunk
    os.close(exec_r)
    if len(data) != _NS_CLOCK_FMT:
        return None
    try:
        at_eof = time.clock_gettime_ns(_process_cpu_clock(program))
    except OSError:
        at_eof = None
    if at_eof is None or os.waitid(os.P_PID, program,
                                   os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return int.from_bytes(data, "little")
    return at_eof


def _trace_exec(program: int) -> bool:
    """Ask the kernel to stop P right after its execve (PTRACE_O_TRACEEXEC): the one
    moment the program exists but has not run an instruction. I may trace its own
    child (uid 0 and every capability in the box's user namespace); EXITKILL: P dies if
    I does. False where ptrace is refused (e.g. Yama's ptrace_scope 3): the exec pipe
    then tells the moment, a few microseconds late."""
    try:
        L.ptrace(L.PTRACE_SEIZE, program, L.PTRACE_O_TRACEEXEC | L.PTRACE_O_EXITKILL)
    except OSError:
        return False
    return True


def _stop_at_exec(program: int, memory_limit: int) -> tuple[int | None, int | None]:
    """Wait for P's exec stop; there, with P frozen, take its CPU time, give it its
    exact memory limit and a fresh peak, then let it go. Returns (P's CPU time up to
    the execve, None), or (None, P's final wait status) if P ended before its execve.
    """
    exec_stop = (signal.SIGTRAP | L.PTRACE_EVENT_EXEC << 8) << 8 | 0x7F
    while True:
        _pid, status = os.waitpid(program, 0)
        if not os.WIFSTOPPED(status):
            return None, status  # a setup step failed (its report says so) or killed
        if status == exec_stop:
            pre_exec_ns = time.clock_gettime_ns(_process_cpu_clock(program))
            _program_starts(pre_exec_ns, memory_limit)
            L.ptrace(L.PTRACE_DETACH, program)
            return pre_exec_ns, None
        # A signal for P before its execve (or an event stop): deliver it and go on.
        sig = os.WSTOPSIG(status)
        L.ptrace(L.PTRACE_CONT, program, 0 if status >> 16 else sig)


def _program_starts(pre_exec_ns: int, memory_limit: int) -> None:
    limit_errno = _narrow_memory_limit(memory_limit)
    _restart_peak()
    protocol.report(REPORT_FD, {"kind": "EXECED", "pre_exec_cpu_ns": pre_exec_ns,
                                "limit_errno": limit_errno})


def _narrow_memory_limit(limit: int) -> int:
    """From the setup's headroom to exactly the program's limit.

    Lowering: the memory limit before v1's memsw (which may never be below it). Returns
    0, or the errno (v1 EBUSY: the program is over the new limit already).
    """
    value = str(limit).encode()
    try:
        for fd in MEMORY_LIMIT_FDS:
            os.write(fd, value)
    except OSError as e:
        return e.errno or -1
    return 0


def _restart_peak() -> None:
    # v1 memory.max_usage_in_bytes resets on any write; v2 memory.peak (Linux 6.12+)
    # on "reset", for reads through this same open file (the supervisor holds it too).
    # An older v2 kernel refuses: the peak then also covers the setup, a few MiB.
    try:
        os.write(MEMORY_PEAK_FD, b"reset")
    except OSError:
        pass


def _receive_listener(sock: socket.socket) -> int | None:
    """P's seccomp listener (P sends it right after loading its filter), or None."""
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
    except OSError:
        fds = []
    sock.close()
    return fds[0] if fds else None


class _Refusals:
    """Answers the program's over-limit allocations (seccomp.py) with ENOMEM."""

    def __init__(self, listener: int | None) -> None:
        self.listener = listener
        self.largest = 0

    def answer_one(self) -> None:
        assert self.listener is not None
        buf = bytearray(L.SECCOMP_NOTIF_SIZE)  # the kernel wants it zeroed
        try:
            fcntl.ioctl(self.listener, L.SECCOMP_IOCTL_NOTIF_RECV, buf)
        except OSError:
            return  # ENOENT: the caller died or was interrupted meanwhile
        notif_id, _pid, _flags, nr = struct.unpack_from("<QIIi", buf)
        # seccomp_data.args start at offset 32: mmap's length is args[1], mremap's
        # new length args[2].
        size = struct.unpack_from("<Q", buf, 32 + 8 * (2 if nr == _NR_MREMAP else 1))[0]
        if size > self.largest:
            self.largest = size
            # Said at once: the evidence must survive a kill for another limit.
            protocol.report(REPORT_FD, {"kind": "REFUSED", "bytes": size})
        try:
            fcntl.ioctl(self.listener, L.SECCOMP_IOCTL_NOTIF_SEND,
                        struct.pack("<QqiI", notif_id, 0, -errno.ENOMEM, 0))
        except OSError:
            pass


def drain(fd: int) -> None:
    """Empty a non-blocking signal wakeup pipe (set_wakeup_fd)."""
    while True:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            return


def _reap_until_program_ends(program: int, refusals: _Refusals) -> tuple[int, int]:
    """Reap every child (orphans included) and answer notifications. Returns P's final
    status and its CPU time with its reaped children's (wait4's rusage: exact, not
    sampled; includes P's setup before execve)."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    watched = [wake_r] + ([refusals.listener] if refusals.listener is not None else [])
    while True:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                os._exit(SETUP_FAILED)
            if pid == 0:
                break
            if pid != program:
                continue
            cpu_ns = round((usage.ru_utime + usage.ru_stime) * 1e9)
            if os.WIFSTOPPED(status):
                # A program that stops itself (kill(0, SIGSTOP)) would only wait for
                # the wall limit: it ends here, as if killed by the stop signal.
                return os.WSTOPSIG(status), cpu_ns
            return status, cpu_ns
        ready, _, _ = select.select(watched, [], [])
        if wake_r in ready:
            drain(wake_r)
        if refusals.listener is not None and refusals.listener in ready:
            refusals.answer_one()


def _report_trace(*last: str) -> None:
    """Send this process's trace entries so far (with `last` stamped now), then start
    a fresh list: each entry travels once."""
    global _trace
    if _trace is not None:
        now = time.monotonic_ns()
        protocol.report(REPORT_FD, {"kind": "STEPS",
                                    "steps": _trace + [(name, now) for name in last]})
        _trace = []


def _init(plan: list[mounts.Op], lifeline: int) -> NoReturn:
    global _process
    _process = "I"
    _step("pdeathsig", _init_pdeathsig, lifeline)
    _step("session", os.setsid)
    _step("mounts", mounts.execute, plan)
    _step("limits", _inotify_limits)
    _step("loopback", netns.loopback_up)
    _step("hostname", _hostname)
    job, fds = _step("take", _take)
    init_cpu_start = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
    if _trace is not None:
        del _trace[:-1]  # sent with STARTED, all but "I take" (TAKE received)
    stdio, trees = fds[:3], fds[3:]
    _step("attach", mounts.attach, job["late"], trees)
    bpf = bytes.fromhex(job["bpf"])
    memory_limit = job["limits"]["memory_bytes"]
    # P must be dumpable to be traced (ptrace(2), "Ptrace access mode checking"): D's
    # euid change left this mm non-dumpable, and P inherits the flag with the fork.
    # Nothing but I runs in the box yet; I turns it off right after the fork.
    _step("traceable", prctl.set_dumpable, True)
    exec_r, exec_w = _step("exec pipe", os.pipe2, os.O_CLOEXEC)
    release_r, release_w = _step("release pipe", os.pipe2, os.O_CLOEXEC)
    ours, theirs = _step("listener socket", socket.socketpair, socket.AF_UNIX,
                         socket.SOCK_SEQPACKET)
    program = _step("fork", os.fork)
    if program == 0:
        os.close(exec_r)
        os.close(release_w)
        ours.close()
        _program(job, stdio, bpf, exec_w, theirs, release_r)
    _step("dumpable", prctl.set_dumpable, False)
    for fd in (exec_w, release_r, *stdio):
        os.close(fd)
    theirs.close()
    traced = _trace_exec(program)
    os.write(release_w, protocol.GO)
    os.close(release_w)
    refusals = _Refusals(_receive_listener(ours))
    if traced:
        # P still writes its clock to the pipe before its execve: closed after the stop.
        pre_exec_ns, ended = _stop_at_exec(program, memory_limit)
        os.close(exec_r)
    else:
        pre_exec_ns, ended = _await_exec(exec_r, program), None
        if pre_exec_ns is not None:
            _program_starts(pre_exec_ns, memory_limit)
    started = time.monotonic_ns()
    if _trace is not None:
        _trace.append(("I exec stop" if traced else "I exec seen", started))
    status, program_cpu = ((ended, 0) if ended is not None
                           else _reap_until_program_ends(program, refusals))
    wall = time.monotonic_ns() - started
    _report_trace("I program ended")
    cpu = parse_cpu_usage_ns(_read_counter(CPU_USAGE_FD))
    init_cpu = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID) - init_cpu_start
    protocol.report(REPORT_FD, {
        "kind": "EXITED", "status": status, "wall_ns": wall, "cpu_ns": cpu,
        "init_cpu_ns": init_cpu, "program_cpu_ns": program_cpu})
    # Exiting as PID 1 makes the kernel SIGKILL everything left in the namespace.
    os._exit(0)


# ------------------------------------------------------------------------------ P


def _join_program_cgroup() -> None:
    os.write(PROGRAM_PROCS_FD, b"0")  # "0": the writing process itself
    os.close(PROGRAM_PROCS_FD)


def _signals() -> None:
    for sig in _RESETTABLE_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # Python's own table too
    for internal in _GLIBC_INTERNAL_SIGNALS:
        L.reset_signal(internal)  # an ignored 32/33 would survive execve just the same
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _program_stdio(stdio: list[int]) -> None:
    for target, fd in enumerate(stdio):
        os.dup2(fd, target, inheritable=True)
    for fd in set(stdio):
        os.close(fd)


def _program_rlimits(limits: dict) -> None:
    cpu_s = limits["cpu_ms"] // 1000 + 2  # backstop only: the watchdog kills at the limit
    for res, value in (
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, limits["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_STACK, limits["stack_bytes"] or resource.RLIM_INFINITY),
    ):
        resource.setrlimit(res, (value, value))


def _data_limit(limit: int) -> None:
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _bounding_set() -> None:
    for cap in range(CAP_LAST + 1):
        prctl.capbset_drop(cap)


def _identity() -> None:
    os.setresgid(BOX_UID, BOX_UID, BOX_UID)
    os.setresuid(BOX_UID, BOX_UID, BOX_UID)


def _capabilities() -> None:
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit()
    prctl.cap_permitted.limit()


def _execve(job: dict, exec_w: int) -> None:
    env = dict(job["env"])
    argv = list(job["argv"])
    # Last thing before execve: our own CPU time, so I can leave it out of the program's.
    os.write(exec_w, time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID).to_bytes(
        _NS_CLOCK_FMT, "little"))
    os.execvpe(argv[0], argv, env)


def _seccomp(bpf: bytes, to_init: socket.socket) -> None:
    listener = L.seccomp_load_bpf_with_listener(bpf)
    socket.send_fds(to_init, [b"L"], [listener])
    os.close(listener)
    to_init.close()


def _released(release: int) -> None:
    if os.read(release, 1) != protocol.GO:
        raise OSError(errno.ECANCELED, "the init did not release the program")
    os.close(release)


def _program(job: dict, stdio: list[int], bpf: bytes, exec_w: int, to_init: socket.socket,
             release: int) -> NoReturn:
    global _process, _trace
    _process = "P"
    if _trace is not None:
        _trace = []  # D's and I's entries are theirs to send
    _step("release", _released, release)
    _step("stdio", _program_stdio, stdio)
    _step("rlimits", _program_rlimits, job["limits"])
    _step("cgroup", _join_program_cgroup)
    _step("signals", _signals)
    _step("cwd", os.chdir, job["cwd"])
    _step("data", _data_limit, job["limits"]["data_bytes"])
    _step("bounding", _bounding_set)
    _step("identity", _identity)
    _step("capabilities", _capabilities)
    _step("no_new_privs", prctl.set_no_new_privs, True)
    _step("seccomp", _seccomp, bpf, to_init)
    _report_trace()
    _step("execve", _execve, job, exec_w)
    os._exit(SETUP_FAILED)
