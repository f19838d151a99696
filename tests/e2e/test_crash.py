"""No box outlives the daemon, and a dead fork server is the sandbox's fault (issue 13).

The daemon is SIGKILLed (no drain, no cleanup of its own) while boxes run programs
that try hardest to survive: a sleeper, one ignoring SIGTERM with every signal
blocked, one double-forked into its own session. The kernel must take them all:
parent-death signals from the fork server down to the program, and the box's PID
namespace. A restarted daemon then sweeps the dead one's cgroups and workspaces.

These daemons use their own uid range (box processes are found by uid: a range no
other test daemon on this host uses) and their own state directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

WORKERS = 3
# Box slot N uses uid_base + 2N and uid_base + 2N + 1. A base of our own (61000 and
# up, away from the default 60000), varied by pid so two test sessions do not share it.
UID_BASE = 61_000 + 8 * (os.getpid() % 100)
UID_RANGE = range(UID_BASE, UID_BASE + 2 * WORKERS)
STATE_DIR = "/run/sandboxd-test-crash"
# Boxes of every sandboxd on this host share `<base>/sandboxd`, and every starting
# instance sweeps the boxes of dead ones there: another test session would kill our
# survivors and hide a failure. These daemons keep their boxes below a root of their own.
CGROUP_ROOT = f"/sandboxd-test-crash-{os.getpid()}"
DEATH_GRACE_S = 2.0

PY_SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"
C_STUBBORN = """\
#include <signal.h>
#include <unistd.h>
int main(void) {
    signal(SIGTERM, SIG_IGN);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (;;) sleep(1000);
}
"""
C_DOUBLE_FORK = """\
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    pid_t child = fork();
    if (child == 0) {
        setsid();
        if (fork() > 0) _exit(0);
        for (;;) sleep(1000);  /* the grandchild: own session, orphaned inside the box */
    }
    waitpid(child, NULL, 0);
    for (;;) sleep(1000);
}
"""
JOBS = [("python3", PY_SLEEPER), ("c", C_STUBBORN), ("c", C_DOUBLE_FORK)]


# ------------------------------------------------------------------------------ host views


def _status_fields(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# The python3 run step exactly: its syntax-check step (`python3 -I -S -c ... main.py`)
# also ends in main.py, and a kill that lands as the check finishes would hit no run.
PYTHON_RUN_STEP = "/usr/bin/python3 main.py"


def _live(pid: int) -> bool:
    """Exists and is not a zombie (a zombie is dead: it only waits for its reaper)."""
    state = _status_fields(pid).get("State", "Z")
    return not state.startswith(("Z", "X"))


def _processes_with_uid_in(uids: range) -> list[tuple[int, str, str]]:
    """(pid, Uid line, cmdline) of every live host process with any of its uids in `uids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _status_fields(int(entry))
        if not fields or fields.get("State", "Z").startswith(("Z", "X")):
            continue
        if any(int(u) in uids for u in fields.get("Uid", "").split()):
            found.append((int(entry), fields["Uid"], _cmdline(int(entry))))
    return found


def _cgroup_mounts() -> list[Path]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] in ("cgroup", "cgroup2"):
                points.append(Path(left.split()[4]))
    return points


def _box_cgroups_of(daemon_pid: int) -> list[Path]:
    """Every `box-<daemon pid>-*` cgroup directory, in every hierarchy, wherever it is."""
    prefix = f"box-{daemon_pid}-"
    found = []
    for mount in _cgroup_mounts():
        for top, dirs, _files in os.walk(mount):
            found += [Path(top) / d for d in dirs if d.startswith(prefix)]
    return sorted(found)


def _cgroup_members(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _workspace_mounts_of(state_dir: str, daemon_pid: int) -> list[str]:
    prefix = f"{state_dir}/ws/{daemon_pid}"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return points


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _status_fields(int(entry)).get("PPid") == str(pid):
            out.append(int(entry))
    return out


def _fork_server_of(daemon: Daemon) -> int:
    found = [p for p in _children(daemon.process.pid)
             if "sandboxd.jail.forkserver" in _cmdline(p) and _live(p)]
    assert len(found) == 1, f"fork servers of daemon {daemon.process.pid}: {found}"
    return found[0]


def _wait_result(daemon: Daemon, job_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body, _ = daemon.request("GET", f"/result/{job_id}")
        assert status == 200, body
        assert isinstance(body, dict)
        if body["status"] not in ("Queued", "Running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not final within {timeout_s} s")


def _submit(daemon: Daemon, language: str, source: str, **limits) -> str:
    status, body, _ = daemon.request("POST", "/execute",
                                     {"language": language, "source": source, **limits})
    assert status == 202, body
    assert isinstance(body, dict)
    return body["submission_id"]


def _reap_adopted_zombies(keep: set[int]) -> None:
    """Reap zombies that ended up as our children (we were their subreaper)."""
    for pid in _children(os.getpid()):
        if pid not in keep and not _live(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Orphans of the killed daemon are reparented to us, not to the host's init (which
    does not reap here): their zombies are reaped at the end instead of piling up."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


# ------------------------------------------------------------------------------ scenario


@dataclass
class KilledDaemon:
    pid: int
    fork_server: int
    state_dir: str
    killed_at: float
    jobs: list[str]


def _config(uid_base: int) -> str:
    return (f'uid_base = {uid_base}\ncgroup_root = "{CGROUP_ROOT}"\n'
            f"[server]\nworkers = {WORKERS}\n")


def _cgroup_root_dirs(root: str = CGROUP_ROOT) -> list[Path]:
    """`root` in every hierarchy the daemons use (parents of their `sandboxd`)."""
    from sandboxd.jail import cgroup as cg

    backend = cg.detect(os.environ.get("SANDBOXD_TEST_CGROUP", "auto"), root)
    if isinstance(backend, cg.V1Backend):
        return sorted({root.parent for root in backend.roots.values()})
    assert isinstance(backend, cg.V2Backend)
    return [backend.base]


@contextlib.contextmanager
def _own_cgroup_root() -> Iterator[None]:
    made = []
    for path in _cgroup_root_dirs():
        if not path.exists():
            path.mkdir()
            made.append(path)
    try:
        yield
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                (path / "sandboxd").rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()


def _all_running(daemon: Daemon, jobs: list[str]) -> bool:
    statuses = [daemon.request("GET", f"/result/{j}")[1]["status"] for j in jobs]
    assert all(s in ("Queued", "Running") for s in statuses), statuses
    return all(s == "Running" for s in statuses)


def _programs_started() -> bool:
    """All three programs run: python main.py, and 3 live ./main (the stubborn one, and
    the double-forker's parent and grandchild)."""
    cmdlines = [c for _, _, c in _processes_with_uid_in(UID_RANGE)]
    return (sum(c == PYTHON_RUN_STEP for c in cmdlines) >= 1
            and sum(c == "./main" for c in cmdlines) >= 3)


def _remove_state_dir() -> None:
    """The (empty) state directory, once no daemon uses it; mounts are never walked."""
    for sub in ("root", "ws", ""):
        with contextlib.suppress(OSError):
            os.rmdir(Path(STATE_DIR) / sub)


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Iterator[KilledDaemon]:
    require_kernel()
    tmp = tmp_path_factory.mktemp("crash")
    assert not _processes_with_uid_in(UID_RANGE), "uid range already in use on this host"
    with _subreaper(), _own_cgroup_root():
        try:
            daemon = start_daemon(tmp, _config(UID_BASE), state_dir=STATE_DIR,
                                  log_name="first.log")
            try:
                jobs = [_submit(daemon, lang, src, time_limit_ms=2000,
                                wall_time_limit_ms=30_000) for lang, src in JOBS]
                deadline = time.monotonic() + 120
                while not (_all_running(daemon, jobs) and _programs_started()):
                    assert time.monotonic() < deadline, (
                        f"boxes not all running within 120 s: "
                        f"{_processes_with_uid_in(UID_RANGE)}")
                    time.sleep(0.05)
                fork_server = _fork_server_of(daemon)
                daemon.process.kill()
                killed_at = time.monotonic()
                daemon.process.wait()
            except BaseException:
                if daemon.process.poll() is None:
                    daemon.process.kill()
                    daemon.process.wait()
                raise
            yield KilledDaemon(daemon.process.pid, fork_server, STATE_DIR, killed_at, jobs)
        finally:
            # Whatever the tests found: a new daemon on the same state sweeps the dead
            # one's boxes (kills what survived, removes cgroups and workspaces).
            try:
                sweeper = start_daemon(tmp, _config(UID_BASE), state_dir=STATE_DIR,
                                       log_name="sweeper.log")
                stop_daemon(sweeper, signal.SIGINT)
            finally:
                deadline = time.monotonic() + 10
                while _processes_with_uid_in(UID_RANGE) and time.monotonic() < deadline:
                    time.sleep(0.05)
                _reap_adopted_zombies(keep=set())
                _remove_state_dir()


def test_sigkilled_daemon_leaves_no_box_process_within_2_s(killed):
    deadline = killed.killed_at + DEATH_GRACE_S
    while True:
        left = _processes_with_uid_in(UID_RANGE)
        in_cgroups = {str(p): members for p in _box_cgroups_of(killed.pid)
                      if (members := [m for m in _cgroup_members(p) if _live(m)])}
        server_alive = _live(killed.fork_server)
        if (not left and not in_cgroups and not server_alive) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not server_alive, f"fork server {killed.fork_server} outlived its daemon"
    assert left == [], (
        f"{len(left)} box processes (uids {UID_RANGE.start}..{UID_RANGE.stop - 1}) outlived "
        f"the SIGKILLed daemon by {DEATH_GRACE_S} s: {left}")
    assert in_cgroups == {}, f"processes left in the dead daemon's box cgroups: {in_cgroups}"


def test_restarted_daemon_sweeps_the_killed_daemons_cgroups_and_workspaces(killed,
                                                                            tmp_path):
    daemon = start_daemon(tmp_path, _config(UID_BASE), state_dir=killed.state_dir,
                          log_name="restart.log")
    try:
        assert _box_cgroups_of(killed.pid) == []
        assert _workspace_mounts_of(killed.state_dir, killed.pid) == []
        assert not (Path(killed.state_dir) / "ws" / str(killed.pid)).exists()
        body = daemon.execute(language="python3", source="print('after the crash')")
        assert body["status"] == "Accepted", body
    finally:
        stop_daemon(daemon, signal.SIGINT)


# ------------------------------------------------------------------------------ fork server


@pytest.fixture
def daemon_for_forkserver(tmp_path) -> Iterator[Daemon]:
    require_kernel()
    with _subreaper():  # the killed fork server's orphans come to us, to be reaped
        d = start_daemon(tmp_path, log_name="daemon.log")
        try:
            yield d
        finally:
            if d.process.poll() is None:
                stop_daemon(d, signal.SIGINT)
            _reap_adopted_zombies(keep=set())


def test_killed_fork_server_ends_running_jobs_as_internal_error_and_is_replaced(
        daemon_for_forkserver):
    daemon = daemon_for_forkserver
    job = _submit(daemon, "python3", "import time\ntime.sleep(60)\n", time_limit_ms=2000,
                  wall_time_limit_ms=15_000)
    server = _fork_server_of(daemon)
    deadline = time.monotonic() + 60
    while not any(_cmdline(p) == PYTHON_RUN_STEP and _live(p) for p in _descendants(server)):
        assert time.monotonic() < deadline, "the sleeper never started"
        time.sleep(0.02)
    assert daemon.request("GET", f"/result/{job}")[1]["status"] == "Running"

    os.kill(server, signal.SIGKILL)

    result = _wait_result(daemon, job)
    assert result["status"] == "Internal Error", result
    assert "fork server" in result.get("message", "").lower(), result
    again = daemon.execute(language="python3", source="print('next')")
    assert again["status"] == "Accepted" and again["stdout"] == "next\n", again
    assert _fork_server_of(daemon) != server


def _descendants(root: int) -> list[int]:
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := _status_fields(int(entry)).get("PPid")):
            parent[int(entry)] = int(ppid)
    found = []
    for pid in parent:
        q = pid
        while q in parent and q > 1:
            q = parent[q]
            if q == root:
                found.append(pid)
                break
    return found
