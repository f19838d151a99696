"""Nothing is left behind: cgroups, mounts, workspaces, processes, descriptors, zombies.

SPEC (Isolation): every process of a run is dead and every file gone when the result is
reported. These tests look at the host from the test process (which is the daemon side
here: the session's Sandbox lives in it) right after `execute` returns, without any
settling delay unless the check is about a process we do not own (the fork server's
reaping is asynchronous by design).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from sandboxd.model import Status
from tests.conftest import SLOWDOWN

PY_OK = "print('ok')"
C_OK = '#include <stdio.h>\nint main(void) { puts("ok"); return 0; }\n'
C_FORK_BOMB = "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n"
C_DOUBLE_FORK_DAEMON = """\
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    setsid();
    if (fork()) exit(0);
    sleep(100);
    return 0;
}
"""


# ------------------------------------------------------------------------------ helpers


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def _children(ppid: int) -> list[int]:
    return [int(p) for p in _pids() if (st := _stat(p)) is not None and st[1] == ppid]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _fork_server_pid(sandbox) -> int:
    found = [p for p in _children(os.getpid()) if "sandboxd.jail.forkserver" in _cmdline(p)]
    assert len(found) == 1, f"expected one fork server child of the test process, got {found}"
    assert found[0] == sandbox._forkserver.process.pid
    return found[0]


def _fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _zombies_of(ppid: int) -> list[int]:
    return [int(p) for p in _pids() if (st := _stat(p)) is not None
            and st[1] == ppid and st[0] == "Z"]


def _descendants(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, cmdline) of every process below `pid`, zombies included."""
    parent_of = {int(p): st for p in _pids() if (st := _stat(p)) is not None}
    found = []
    for p, (state, _ppid) in parent_of.items():
        q = p
        while q in parent_of and q > 1:
            q = parent_of[q][1]
            if q == pid:
                found.append((p, state, _cmdline(p)))
                break
    return found


def _box_processes(sandbox) -> list[tuple[int, str, str]]:
    """Live processes forked for boxes: every box process descends from the fork server
    (an orphan inside a box is reparented to the box's init, never outside the box);
    those of the warm pool's boxes excepted: in a warm box's cgroup, or a box's first
    process just forked, in no box cgroup yet (a run's box has had its D join its cgroup
    before the run could end, so such a process is one the pool is building)."""
    warm = sandbox.warm_box_names()

    def in_warm_box(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                parts = {part for line in f for part in line.strip().split("/")}
        except OSError:
            return False
        return bool(parts & warm) or not any(p.startswith("box-") for p in parts)

    return [d for d in _descendants(_fork_server_pid(sandbox))
            if d[1] != "Z" and not in_warm_box(d[0])]


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount the test process sees."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            out.append((left.split()[4].replace("\\040", " "), right.split()[0]))
    return out


def _mounts_under(path: Path, fstype: str | None = None) -> list[str]:
    prefix = f"{path}/"
    return sorted(point for point, fs in _mounts()
                  if (point == str(path) or point.startswith(prefix))
                  and (fstype is None or fs == fstype))


def _our_state_tmpfs(sandbox) -> list[str]:
    """tmpfs mounts under the state dir, except other instances' workspaces (test sessions
    may share the state dir; each instance keeps its workspaces in ws/<its pid>/)."""
    ws = Path(sandbox.workspace_dir).parent
    ours = []
    for point in _mounts_under(sandbox.state_dir, "tmpfs"):
        rel = Path(point).relative_to(ws).parts if Path(point).is_relative_to(ws) else ()
        if rel and rel[0].isdigit() and rel[0] != str(os.getpid()):
            continue
        ours.append(point)
    return ours


def _own(paths: list[Path]) -> list[Path]:
    # Other sandboxd instances (other test sessions, a running daemon) may share the
    # cgroup subtree: only boxes named after this process are ours to account for.
    return [p for p in paths if p.name.startswith(f"box-{os.getpid()}-")]


def _box_dirs(sandbox) -> list[Path]:
    """Our box cgroups, except the warm pool's (built ahead, holding no job)."""
    warm = sandbox.warm_box_names()
    return [p for p in _own(sandbox.cgroups.box_dirs()) if p.name not in warm]


def _box_cgroup_dirs(sandbox) -> list[Path]:
    """Our box directories in every hierarchy (box_dirs() names one per box)."""
    backend = sandbox.cgroups
    roots = list(backend.root_dirs) if backend.version == "v1" else [backend.root]
    warm = sandbox.warm_box_names()
    return [p for p in _own(sorted(p for r in roots if r.is_dir() for p in r.iterdir()
                                   if p.is_dir())) if p.name not in warm]


def _assert_nothing_left(sandbox) -> None:
    assert _box_dirs(sandbox) == []
    assert _box_cgroup_dirs(sandbox) == []
    assert _box_processes(sandbox) == []
    assert os.listdir(sandbox.workspace_dir) == []
    assert _mounts_under(sandbox.workspace_dir) == []


async def _settled(check, timeout: float = 3.0):
    """`check()`'s value once it is falsy, or its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while (value := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return value


# ------------------------------------------------------------------------------ single runs


async def test_nothing_left_after_one_run(execute, sandbox):
    result = await execute("python3", PY_OK)
    assert result.status is Status.ACCEPTED, result
    _assert_nothing_left(sandbox)


async def test_nothing_left_after_a_fork_bomb(execute, sandbox):
    result = await execute("c", C_FORK_BOMB, time_limit_ms=500)
    assert result.status in (Status.TIME_LIMIT_EXCEEDED, Status.RUNTIME_ERROR), result
    _assert_nothing_left(sandbox)


async def test_double_forked_daemon_is_killed_with_the_run(execute, sandbox):
    started = time.monotonic()
    result = await execute("c", C_DOUBLE_FORK_DAEMON, time_limit_ms=1000)
    # The run ends when the main process exits; its detached grandchild dies with the box.
    assert result.status is Status.ACCEPTED, result
    assert result.wall_time_ms is not None and result.wall_time_ms < 1000 * SLOWDOWN
    assert time.monotonic() - started < 20 * SLOWDOWN
    _assert_nothing_left(sandbox)


# ------------------------------------------------------------------------------ 200 runs

# (language, source, time limit, expected statuses)
KINDS = [
    ("python3", PY_OK, 2000, {Status.ACCEPTED}),
    ("c", C_OK, 2000, {Status.ACCEPTED}),
    ("python3", "raise SystemExit(3)", 2000, {Status.RUNTIME_ERROR}),
    ("python3", "while True: pass", 100, {Status.TIME_LIMIT_EXCEEDED}),
    ("c", C_FORK_BOMB, 200, {Status.TIME_LIMIT_EXCEEDED, Status.RUNTIME_ERROR}),
    ("python3", "import sys\nwhile True: sys.stdout.write('x' * 65536)", 2000,
     {Status.OUTPUT_LIMIT_EXCEEDED}),
    ("python3", "import os\nos.kill(os.getpid(), 11)", 2000, {Status.RUNTIME_ERROR}),
    ("c", C_DOUBLE_FORK_DAEMON, 1000, {Status.ACCEPTED}),
    ("python3", "import time\ntime.sleep(100)", 100, {Status.TIME_LIMIT_EXCEEDED}),
    ("python3", "import sys\nprint(len(sys.stdin.read()))", 2000, {Status.ACCEPTED}),
]
RUNS = 200
BATCHES = (4, 3, 2)  # batch sizes, cycled


async def test_nothing_leaks_over_200_mixed_concurrent_runs(execute, sandbox):
    warm = await execute("python3", PY_OK)  # binds this test's event loop to the sandbox
    assert warm.status is Status.ACCEPTED, warm
    # Descriptors are counted without warm boxes (each holds its report pipe, take
    # socket and memory peak file until it is taken or torn down).
    await sandbox.discard_warm_boxes()
    server = _fork_server_pid(sandbox)
    fds_before = _fd_count()
    server_fds_before = _fd_count(server)
    state_tmpfs_before = _our_state_tmpfs(sandbox)

    done = 0
    batch_no = 0
    statuses: dict[Status, int] = {}
    while done < RUNS:
        size = min(BATCHES[batch_no % len(BATCHES)], RUNS - done)
        batch_no += 1
        kinds = [KINDS[(done + i) % len(KINDS)] for i in range(size)]
        results = await asyncio.gather(*(
            execute(lang, src, stdin="abc\n" * 10, time_limit_ms=tl)
            for lang, src, tl, _ in kinds))
        for (lang, src, _, expected), result in zip(kinds, results, strict=True):
            assert result.status in expected, (lang, src, result)
            statuses[result.status] = statuses.get(result.status, 0) + 1
        done += size
        # Right after every batch: no box cgroup survives its result.
        assert _box_dirs(sandbox) == [], f"after {done} runs"

    assert sum(statuses.values()) == RUNS
    _assert_nothing_left(sandbox)
    await sandbox.discard_warm_boxes()
    assert _our_state_tmpfs(sandbox) == state_tmpfs_before
    assert abs(_fd_count() - fds_before) <= 2, (fds_before, sorted(os.listdir("/proc/self/fd")))
    assert _fork_server_pid(sandbox) == server, "the fork server was restarted"
    assert _fd_count(server) == server_fds_before, os.listdir(f"/proc/{server}/fd")
    # The fork server reaps its boxes on SIGCHLD: give it a moment, then no zombie remains.
    assert await _settled(lambda: _zombies_of(server)) == []


# ------------------------------------------------------------------------------ stale sweep


def _stale_dirs(backend, name: str) -> list[Path]:
    if backend.version == "v1":  # each hierarchy once (co-mounted controllers share one)
        return [root / name for root in backend.root_dirs]
    return [backend.root / name]


async def test_sweep_stale_kills_and_removes_a_dead_daemons_box(sandbox):
    backend = sandbox.cgroups
    dead_pid = 999_999
    assert not os.path.exists(f"/proc/{dead_pid}")  # pid_max is far below on this host
    stale = _stale_dirs(backend, f"box-{dead_pid}-1")
    # A box of a daemon that is still alive (our parent) must survive the sweep.
    alive = _stale_dirs(backend, f"box-{os.getppid()}-7")
    sleeper = subprocess.Popen(["sleep", "100"])
    reaper = threading.Thread(target=sleeper.wait, daemon=True)  # as its real parent would
    try:
        for path in stale + alive:
            path.mkdir()
        for path in stale:
            with open(path / "cgroup.procs", "w") as f:
                f.write(str(sleeper.pid))
        name = stale[0].name
        assert name in {p.name for p in backend.box_dirs()}
        assert str(sleeper.pid) in (stale[0] / "cgroup.procs").read_text().split()
        reaper.start()

        removed = await asyncio.to_thread(backend.sweep_stale)

        assert removed == 1
        reaper.join(timeout=5)
        assert sleeper.returncode == -9, "the stale box's process was not SIGKILLed"
        assert [p for p in stale if p.exists()] == []
        assert all(p.is_dir() for p in alive), "a live daemon's box was swept"
        assert name not in {p.name for p in backend.box_dirs()}
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for path in stale + alive:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
    assert name not in {p.name for p in backend.box_dirs()}


def test_box_names_carry_the_daemon_pid(sandbox):
    backend = sandbox.cgroups
    assert isinstance(backend, cg.CgroupBackend)
    name = backend.new_name()
    prefix, pid, seq = name.split("-")
    assert prefix == "box" and int(pid) == os.getpid() and int(seq) >= 1


@pytest.fixture(autouse=True)
async def _no_box_before(sandbox):
    """Each test starts from a clean host, so a leak is blamed on the test that made it."""
    await sandbox.discard_warm_boxes()
    assert _own(sandbox.cgroups.box_dirs()) == []
    yield
