"""Hardening of the box against the host's shared kernel quotas and the box's own plumbing.

Each test is one promise, proven with a real hostile program in a real box:

1. the box's user namespace belongs to its slot's host uid, never host root, so what a
   box exhausts (inotify instances, queued signals) is charged to that uid, never root's;
2. the program's session and process group live inside the box: kill(0), killpg(0),
   kill(-1), SIGSTOP and prlimit reach nothing but the program itself;
5. stdin is a sealed, read-only memfd: a writable shared mapping of it is refused, so
   dirtying it cannot borrow memory outside the box's limit;
6. page cache of a file the box merely read is not reported as the box's memory;
7. the smallest accepted memory limit (4 MiB) runs a C hello world, and an OOM kill in
   the box always hits the program, never its init or helpers;
10. a failing descriptor allocation while a box is being set up leaks no descriptor.

Boxes are synchronised with the test by signals and marker files, never by sleeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import glob
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from sandboxd.jail.spec import Bind, BoxLimits, JailError, JailSpec
from sandboxd.model import Status
from sandboxd.verdict import decide, to_result
from tests.integration.hostile import assert_checks, c_program, describe

MIB = 1024 * 1024
NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4), linux/nsfs.h
IN_CLOEXEC = 0o2000000
CLOCK_MONOTONIC = 1


# ------------------------------------------------------------------------------ host side


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a host process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _uids(pid: int) -> tuple[int, int, int, int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            real, eff, saved, fs = (int(v) for v in line.split()[1:5])
            return real, eff, saved, fs
    raise AssertionError(f"no Uid line for {pid}")


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) host processes below `root`."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] != "Z":
            parent[int(entry)] = st[1]
    found = []
    for pid in parent:
        q = pid
        while q in parent and q > 1:
            q = parent[q]
            if q == root:
                found.append(pid)
                break
    return found


def _box_processes(sandbox) -> list[int]:
    """Every live box process: all descend from this test session's fork server."""
    return _descendants(sandbox._forkserver.process.pid)


def _userns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino
    except OSError:
        return None


def _userns_owner(pid: int) -> int:
    """The host uid owning `pid`'s user namespace (ioctl NS_GET_OWNER_UID on its ns file)."""
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, NS_GET_OWNER_UID, buf, True)
        return int.from_bytes(buf, "little")
    finally:
        os.close(fd)


async def _wait_for_program(sandbox, marker: str, task: asyncio.Task,
                            timeout_s: float = 60.0) -> int:
    """The host pid of the box process whose command line is `marker`, once it sleeps
    inside its own user namespace (so: after its box's setup)."""
    host_ns = _userns_inode("self")
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in _box_processes(sandbox):
            st = _stat(pid)
            if (_cmdline(pid) == marker and st is not None and st[0] == "S"
                    and _userns_inode(pid) not in (None, host_ns)):
                return pid
        if task.done():
            raise AssertionError(f"the box ended before {marker!r} ran: {describe(task.result())}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no sleeping box process {marker!r} within {timeout_s} s")
        await asyncio.sleep(0.01)


def _slot_owner_ids(sandbox) -> set[int]:
    """The designed owners: box slot N's outer process and init run as uid_base + 2N."""
    return {sandbox.uid_base + 2 * slot for slot in range(sandbox.slot_count)}


# ---------------------------------------------------------- 1: user namespace ownership

PY_SLEEPER = "import time\ntime.sleep(60)\n"


async def test_box_user_namespace_is_owned_by_the_slot_uid_not_host_root(execute, sandbox):
    task = asyncio.create_task(execute("python3", PY_SLEEPER, time_limit_ms=2000,
                                       wall_time_limit_ms=30_000))
    try:
        program = await _wait_for_program(sandbox, "/usr/bin/python3 main.py", task)
        host_ns = _userns_inode("self")
        owners = {}
        for pid in _box_processes(sandbox):
            if _userns_inode(pid) not in (None, host_ns):
                owners[pid] = (_userns_owner(pid), _cmdline(pid))
        assert program in owners, owners
        assert all(owner != 0 for owner, _ in owners.values()), (
            f"a box's user namespace is owned by host root: {owners}")
        owner = owners[program][0]
        assert owner in _slot_owner_ids(sandbox), (
            f"user namespace owner {owner} is not a slot id {sorted(_slot_owner_ids(sandbox))}")
        # The program runs as the slot's second id, distinct from the namespace's owner.
        assert _uids(program) == (owner + 1,) * 4, _uids(program)
    finally:
        if not task.done():
            for pid in _box_processes(sandbox):
                if _cmdline(pid) == "/usr/bin/python3 main.py":
                    os.kill(pid, signal.SIGKILL)
        result = await task
    assert result.status is Status.RUNTIME_ERROR and result.signal == 9, describe(result)


# ------------------------------------------ 1: exhausting per-user quotas stays in the box

EXHAUST = c_program(r"""
#include <sys/inotify.h>
#include <time.h>
int main(void) {
    sigset_t blocked, go;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    /* Wait for the test's go (SIGUSR1): it first checks who owns our user namespace. */
    sigemptyset(&go);
    sigaddset(&go, SIGUSR1);
    int sig = 0;
    sigwait(&go, &sig);
    long inotify = 0;
    while (inotify < 1000000 && inotify_init1(IN_CLOEXEC) >= 0) inotify++;
    int inotify_err = errno;
    long queued = 0;
    union sigval v = {0};
    while (queued < 10000000 && sigqueue(getpid(), SIGRTMIN, v) == 0) queued++;
    int queue_err = errno;
    printf("inotify %ld %s\nsigqueue %ld %s\n", inotify, errname(inotify_err), queued,
           errname(queue_err));
    fflush(stdout);
    int fd = open("/tmp/exhausted", O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
""")

QUOTA_USER = c_program(r"""
#include <sys/inotify.h>
#include <time.h>
int main(void) {
    EXPECT_OK("inotify_init1", inotify_init1(IN_CLOEXEC));
    timer_t timer;
    EXPECT_OK("timer_create", timer_create(CLOCK_MONOTONIC, NULL, &timer));
    return 0;
}
""")


def _host_root_can_use_inotify_and_timers() -> dict[str, str]:
    """What the test process (host root) gets from inotify_init1 and timer_create."""
    libc = ctypes.CDLL(None, use_errno=True)
    got = {}
    fd = libc.inotify_init1(IN_CLOEXEC)
    got["inotify_init1"] = "OK" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    if fd >= 0:
        os.close(fd)
    timer = ctypes.c_void_p()
    rc = libc.timer_create(CLOCK_MONOTONIC, None, ctypes.byref(timer))
    got["timer_create"] = "OK" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    if rc == 0:
        libc.timer_delete(timer)
    return got


async def _marker(sandbox, name: str, task: asyncio.Task, timeout_s: float = 60.0) -> None:
    """Wait until a box of this session created /tmp/<name> (its /tmp is a directory of
    its workspace on the host: <state_dir>/ws/<our pid>/<workspace>/step-N/tmp)."""
    pattern = str(Path(sandbox.workspace_dir) / "*" / "step-*" / "tmp" / name)
    deadline = time.monotonic() + timeout_s
    while not glob.glob(pattern):
        if task.done():
            raise AssertionError(f"the box ended before writing {name}: "
                                 f"{describe(task.result())}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern} within {timeout_s} s")
        await asyncio.sleep(0.01)


async def test_box_exhausting_inotify_and_signal_queue_leaves_host_root_and_other_boxes_theirs(
        execute, sandbox):
    assert sandbox.slot_count >= 2, "needs a second slot for the concurrent box"
    hog = asyncio.create_task(execute("c", EXHAUST, time_limit_ms=5000,
                                      wall_time_limit_ms=30_000))
    program = None
    try:
        program = await _wait_for_program(sandbox, "./main", hog)
        owner = _userns_owner(program)
        if owner == 0:
            pytest.fail("precondition: the box's user namespace is owned by host root (uid 0), "
                        "so its inotify instances and queued signals would be charged to "
                        "root's quota on this shared host; not exhausting it")
        assert _host_root_can_use_inotify_and_timers() == {"inotify_init1": "OK",
                                                           "timer_create": "OK"}
        os.kill(program, signal.SIGUSR1)  # go: exhaust, then sleep
        await _marker(sandbox, "exhausted", hog)

        # While the hog sleeps with its quotas exhausted:
        assert _host_root_can_use_inotify_and_timers() == {"inotify_init1": "OK",
                                                           "timer_create": "OK"}
        other = await execute("c", QUOTA_USER)
        assert_checks(other, ["inotify_init1", "timer_create"])
        assert not hog.done(), "the hog ended early"
    finally:
        if program is not None and not hog.done():
            os.kill(program, signal.SIGKILL)
        result = await hog
    assert result.status is Status.RUNTIME_ERROR and result.signal == 9, describe(result)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    inotify, inotify_err = lines["inotify"].split()
    queued, queue_err = lines["sigqueue"].split()
    assert int(inotify) > 0 and inotify_err == "EMFILE", result.stdout
    assert int(queued) > 0 and queue_err == "EAGAIN", result.stdout


# ------------------------------------------------- 2: signals and prlimit stay in the box

C_CALLS = {
    "kill_0_sigkill": "kill(0, SIGKILL);",
    "killpg_0_sigterm": "killpg(0, SIGTERM);",
    "kill_minus_1_sigkill": "kill(-1, SIGKILL);",
    "kill_0_sigstop": "kill(0, SIGSTOP);",
}
PY_CALLS = {
    "kill_0_sigkill": "os.kill(0, signal.SIGKILL)",
    "killpg_0_sigterm": "os.killpg(0, signal.SIGTERM)",
    "kill_minus_1_sigkill": "os.kill(-1, signal.SIGKILL)",
    "kill_0_sigstop": "os.kill(0, signal.SIGSTOP)",
}
# (status, signal) the program earns by itself: it dies of its own signal, or goes on
# (nobody else in the box: kill(-1) reaches no one). A SIGSTOP'd program may be continued
# and finish, or be reported as stopped; a box stopped until its wall limit never.
CALL_VERDICTS = {
    "kill_0_sigkill": {(Status.RUNTIME_ERROR, 9)},
    "killpg_0_sigterm": {(Status.RUNTIME_ERROR, 15)},
    "kill_minus_1_sigkill": {(Status.ACCEPTED, None)},
    "kill_0_sigstop": {(Status.ACCEPTED, None), (Status.RUNTIME_ERROR, 19)},
}


def _signal_program(language: str, call: str) -> str:
    if language == "c":
        return c_program(f"""
int main(void) {{
    puts("before");
    fflush(stdout);
    {C_CALLS[call]}
    puts("after");
    return 0;
}}
""")
    return ("import os, signal, sys\nprint('before', flush=True)\n"
            f"try:\n    {PY_CALLS[call]}\nexcept OSError:\n    pass\n"
            "print('after', flush=True)\n")


@pytest.mark.parametrize("call", sorted(CALL_VERDICTS))
@pytest.mark.parametrize("language", ["c", "python3"])
async def test_signalling_own_group_session_or_everyone_hits_only_the_program(
        execute, sandbox, language, call):
    result = await execute(language, _signal_program(language, call), time_limit_ms=2000,
                           wall_time_limit_ms=5000)
    assert result.status not in (Status.INTERNAL_ERROR, Status.TIME_LIMIT_EXCEEDED), (
        describe(result))
    assert result.message is None, describe(result)
    assert (result.status, result.signal) in CALL_VERDICTS[call], describe(result)
    expected = "before\nafter\n" if result.status is Status.ACCEPTED else "before\n"
    assert result.stdout == expected, describe(result)
    assert sandbox.healthy


PRLIMIT_C = c_program(r"""
#include <sys/resource.h>
int main(void) {
    struct rlimit tiny = {3, 3};
    EXPECT_ERRNO("prlimit_pid_1", prlimit(1, RLIMIT_NOFILE, &tiny, NULL), EPERM, 0);
    EXPECT_ERRNO("prlimit_parent", prlimit(getppid(), RLIMIT_NOFILE, &tiny, NULL), EPERM, 0);
    struct rlimit zero_cpu = {0, 0};
    EXPECT_ERRNO("prlimit_pid_1_cpu", prlimit(1, RLIMIT_CPU, &zero_cpu, NULL), EPERM, 0);
    return 0;
}
""")

PRLIMIT_PY = """\
import os, resource
for name, pid, res, value in (("prlimit_pid_1", 1, resource.RLIMIT_NOFILE, (3, 3)),
                              ("prlimit_parent", os.getppid(), resource.RLIMIT_NOFILE, (3, 3)),
                              ("prlimit_pid_1_cpu", 1, resource.RLIMIT_CPU, (0, 0))):
    try:
        resource.prlimit(pid, res, value)
        print(f"{name}:FAIL succeeded")
    except PermissionError:
        print(f"{name}:OK")
    except OSError as e:
        print(f"{name}:FAIL {e}")
"""


@pytest.mark.parametrize("language", ["c", "python3"])
async def test_prlimit_on_the_box_init_is_refused(execute, language):
    result = await execute(language, PRLIMIT_C if language == "c" else PRLIMIT_PY)
    assert_checks(result, ["prlimit_pid_1", "prlimit_parent", "prlimit_pid_1_cpu"])


# ------------------------------------------------------- 5: stdin cannot be mapped shared

MAP_STDIN = c_program(r"""
#include <sys/mman.h>
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")
int main(void) {
    struct stat st;
    if (fstat(0, &st) != 0) return 2;
    size_t n = (size_t)st.st_size;
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, 0, 0);
    if (p == MAP_FAILED) {
        printf("shared:refused %s\n", errname(errno));
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0, 0);
        if (p == MAP_FAILED) { printf("private:FAIL %s\n", errname(errno)); return 2; }
        puts("private:mapped");
    } else {
        puts("shared:MAPPED");
    }
    fflush(stdout);
    for (size_t i = 0; i < n; i += 4096) p[i] ^= 1;
    printf("dirtied %zu\n", n);
    fflush(stdout);
    char *heap = malloc(10 << 20);
    if (!heap) return 3;
    memset(heap, 7, 10 << 20);
    ESCAPE(heap);
    puts("heap");
    return 0;
}
""")


async def test_writable_mapping_of_stdin_counts_against_the_memory_limit(execute):
    result = await execute("c", MAP_STDIN, stdin="s" * (15 * MIB), memory_limit_mb=16)
    first = result.stdout.splitlines()[:1]
    assert first and first[0].startswith("shared:refused"), (
        f"stdin could be mapped MAP_SHARED|PROT_WRITE (its pages are charged outside the box)\n"
        f"{describe(result)}")
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, describe(result)


# ------------------------------------------------------------ 6: page cache is not memory

def _c_spec(registry, argv, binds=(), **kw) -> JailSpec:
    rootfs = registry["c"].rootfs
    return JailSpec(argv=tuple(argv), limits=kw.pop("limits"), binds=rootfs.binds + binds,
                    symlinks=rootfs.symlinks, env=(("PATH", "/usr/bin:/bin"),), **kw)


async def _run_box(sandbox, registry, argv, limits: BoxLimits, binds=(), **kw):
    async with sandbox.slot() as slot:
        ws = sandbox.workspace(slot, 64)
        try:
            spec = _c_spec(registry, argv, binds=binds + ws.binds_for_next_step(),
                           limits=limits, slot=slot, **kw)
            return await sandbox.run(spec)
        finally:
            ws.destroy()


@pytest.fixture
def uncached_100mb_file():
    """A 100 MB file on a disk file system, readable by box uids, not in the page cache."""
    directory = tempfile.mkdtemp(prefix="sandboxd-pagecache-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    path = Path(directory) / "big"
    try:
        with open(path, "wb") as f:
            chunk = b"p" * MIB
            for _ in range(100):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.chmod(path, 0o644)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(directory)


async def test_page_cache_of_a_read_file_is_not_the_boxs_memory(sandbox, registry,
                                                                uncached_100mb_file):
    with open(uncached_100mb_file, "rb") as f:  # the kernel may have kept it: drop again
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    memory_mb = 32
    limits = BoxLimits(cpu_ms=5000, wall_ms=20_000, memory_bytes=memory_mb * MIB)
    outcome = await _run_box(
        sandbox, registry,
        ["/bin/sh", "-c", "cat /data/big > /dev/null && exit 3; echo cat failed; exit 4"],
        limits, binds=(Bind(str(uncached_100mb_file), "/data/big"),))
    assert outcome.setup_error is None, outcome
    assert (outcome.exit_code, outcome.signal) == (3, None), outcome
    assert not outcome.oom_killed, outcome
    # Through the verdict table, as a submission would be.
    result = to_result(decide(None, outcome, None), None, outcome)
    assert result.status is Status.RUNTIME_ERROR and result.exit_code == 3, describe(result)
    assert result.memory_kb is not None and result.memory_kb < 16 * 1024, (
        f"memory_kb {result.memory_kb}: page cache counted as the program's memory")


# ------------------------------------------------------------ 7: the smallest memory limit

C_HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


async def test_c_hello_world_under_the_smallest_memory_limit_is_accepted(execute, config):
    smallest = config.limits.memory_limit_mb.min
    assert smallest == 4
    result = await execute("c", C_HELLO, memory_limit_mb=smallest)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.stdout == "hello\n"


# ------------------------------------------------ the OOM killer only ever hits the program

# Pages written to /dev/shm (the workspace tmpfs) are charged to the box's memory cgroup
# but belong to no process: when the cgroup runs out, the task with the largest resident
# set is the OOM killer's candidate, and that is the box's (Python) init, not this small
# program. The init and helpers are exempt (oom_score_adj), so the kill hits the program.
FILL_SHM = c_program(r"""
int main(void) {
    static char chunk[1 << 20];
    memset(chunk, 'm', sizeof chunk);
    int fd = open("/dev/shm/fill", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { printf("open %s\n", errname(errno)); return 2; }
    for (int i = 0; i < 48; i++) {
        if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) {
            printf("write %d %s\n", i, errname(errno));
            return 3;
        }
        printf("%d\n", i);
        fflush(stdout);
    }
    return 0;
}
""")


async def test_oom_kill_always_hits_the_program_never_the_box_init(execute):
    result = await execute("c", FILL_SHM, memory_limit_mb=16)
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, describe(result)
    assert result.signal == 9 and result.exit_code is None, describe(result)
    assert result.message is None


# --------------------------------------------- 10: no descriptor leak on a setup failure

FD_FACTORIES = ("pipe2", "memfd_create")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class _FdFactoryFault:
    """Counts calls of os.pipe2/os.memfd_create; the `fail_at`-th raises EMFILE."""

    def __init__(self, monkeypatch, fail_at: int | None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        for name in FD_FACTORIES:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(real))

    def _wrap(self, real):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real(*args, **kwargs)
        return call


def _our_box_cgroups(sandbox) -> list[Path]:
    return [p for p in sandbox.cgroups.box_dirs() if p.name.startswith(f"box-{os.getpid()}-")]


async def test_descriptor_allocation_failure_during_box_setup_leaks_nothing(
        sandbox, registry, monkeypatch):
    limits = BoxLimits(cpu_ms=2000, wall_ms=5000, memory_bytes=64 * MIB)
    # Every box built by the run itself (a cold one): each descriptor it opens is counted.
    await sandbox.set_warm_boxes(0)
    try:
        await _fault_every_descriptor_call(sandbox, registry, monkeypatch, limits)
    finally:
        await sandbox.set_warm_boxes(1)


async def _fault_every_descriptor_call(sandbox, registry, monkeypatch, limits) -> None:
    # A normal box first (binds the loop; the seccomp filter for these limits, compiled
    # once through a memfd, is cached from then on), then one counting the descriptor
    # factories a box calls.
    await _run_box(sandbox, registry, ["/bin/true"], limits, stdin=b"in")
    with monkeypatch.context() as m:
        counter = _FdFactoryFault(m, fail_at=None)
        ok = await _run_box(sandbox, registry, ["/bin/true"], limits, stdin=b"in")
        calls = counter.calls
    assert ok.exit_code == 0, ok
    assert calls >= 2, f"only {calls} pipe2/memfd_create calls per box?"
    for fail_at in range(1, calls + 1):
        before = sorted(os.listdir("/proc/self/fd"))
        with monkeypatch.context() as m:
            _FdFactoryFault(m, fail_at=fail_at)
            with pytest.raises((JailError, OSError)):
                await _run_box(sandbox, registry, ["/bin/true"], limits, stdin=b"in")
        after = sorted(os.listdir("/proc/self/fd"))
        assert len(after) == len(before), (
            f"EMFILE at descriptor call {fail_at} of {calls}: {len(after) - len(before)} "
            f"descriptors leaked ({sorted(set(after) - set(before))})")
        assert _our_box_cgroups(sandbox) == [], f"EMFILE at call {fail_at}: cgroup left"
    again = await _run_box(sandbox, registry, ["/bin/true"], limits)
    assert again.exit_code == 0, again
