"""The journal, over HTTP with the real daemon: a SIGKILLed daemon loses no accepted job,
a SIGTERMed one drains and leaves its queue for the next start, results expire.

The crash and SIGTERM daemons use a uid range, a state directory and a cgroup root of
their own (as test_crash.py does, for the same reasons): leftovers are found by uid
and by the dead daemon's pid, and no other daemon on this host may sweep them first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SLOWDOWN, require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon
from tests.e2e.test_crash import (
    _box_cgroups_of,
    _cgroup_members,
    _cgroup_root_dirs,
    _live,
    _processes_with_uid_in,
    _reap_adopted_zombies,
    _subreaper,
    _workspace_mounts_of,
)

WORKERS = 2
# Away from test_crash.py's range (61000 + 8 * (pid % 100)) and the default 60000.
UID_BASE = 62_000 + 8 * (os.getpid() % 100)
UID_RANGE = range(UID_BASE, UID_BASE + 2 * WORKERS)
STATE_DIR = "/run/sandboxd-test-durability"
CGROUP_ROOT = f"/sandboxd-test-durability-{os.getpid()}"
LANGUAGES = ("c", "python3")
POLL_S = 0.05
FINAL_WITHIN_S = 180 * SLOWDOWN


# ------------------------------------------------------------------------------ programs


def py_hello(i: int) -> str:
    return f"print('hello {i}')\n"


def c_hello(i: int) -> str:
    return f'#include <stdio.h>\nint main(void) {{ puts("hello {i}"); return 0; }}\n'


def py_loop(i: int) -> str:  # about a second of CPU here
    return f"n = 0\nwhile n < 8_000_000:\n    n += 1\nprint('done {i}')\n"


def c_loop(i: int) -> str:  # about a second of CPU here
    return ("#include <stdio.h>\nint main(void) {\n"
            "    volatile unsigned long n = 0;\n    while (n < 700000000UL) n++;\n"
            f'    puts("done {i}");\n    return 0;\n}}\n')


def c_forever(i: int) -> str:
    return f"int main(void) {{ volatile int {'x'}{i} = 0; for (;;) x{i}++; }}\n"


@dataclass(frozen=True)
class Job:
    language: str
    source: str
    status: str
    stdout: str | None  # None: not checked (a killed program's output)
    limits: tuple[tuple[str, object], ...] = ()

    def body(self) -> dict:
        return {"language": self.language, "source": self.source, **dict(self.limits)}


def mixed_jobs(count: int) -> list[Job]:
    """Hello worlds, ~1 s CPU loops, wrong answers and time limits, python3 and C;
    every source distinct, so none is answered from the result cache."""
    roomy = (("time_limit_ms", 10_000), ("wall_time_limit_ms", 30_000))
    kinds = [
        lambda i: Job("python3", py_loop(i), "Accepted", f"done {i}\n", roomy),
        lambda i: Job("python3", py_hello(i), "Accepted", f"hello {i}\n"),
        lambda i: Job("c", c_loop(i), "Accepted", f"done {i}\n", roomy),
        lambda i: Job("c", c_hello(i), "Accepted", f"hello {i}\n"),
        lambda i: Job("python3", py_hello(i), "Wrong Answer", f"hello {i}\n",
                      (("expected_output", "goodbye"),)),
        lambda i: Job("python3", py_hello(i), "Accepted", f"hello {i}\n"),
        lambda i: Job("c", c_forever(i), "Time Limit Exceeded", None,
                      (("time_limit_ms", 300),)),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def submit(daemon: Daemon, job: Job) -> str:
    status, body, _ = daemon.request("POST", "/execute", job.body())
    assert status == 202, body
    assert isinstance(body, dict)
    return body["submission_id"]


def statuses(daemon: Daemon, ids: list[str]) -> dict[str, dict]:
    out = {}
    for job_id in ids:
        status, body, _ = daemon.request("GET", f"/result/{job_id}")
        assert status == 200, (job_id, body)  # never a 404 for an accepted job
        assert isinstance(body, dict)
        out[job_id] = body
    return out


def wait_all_final(daemon: Daemon, ids: list[str]) -> dict[str, dict]:
    deadline = time.monotonic() + FINAL_WITHIN_S
    while True:
        current = statuses(daemon, ids)
        pending = [i for i, b in current.items() if b["status"] in ("Queued", "Running")]
        if not pending:
            return current
        assert time.monotonic() < deadline, f"{len(pending)} jobs not final: {pending[:5]}"
        time.sleep(POLL_S)


def check_verdicts(jobs: dict[str, Job], results: dict[str, dict]) -> None:
    wrong = {}
    for job_id, job in jobs.items():
        body = results[job_id]
        if body["status"] != job.status or (job.stdout is not None
                                            and body["stdout"] != job.stdout):
            wrong[job_id] = (job.status, job.stdout, body)
    assert not wrong, wrong


def journal_rows(path: str) -> dict[str, tuple[str, int]]:
    """id -> (state, attempts), read once the daemon has closed the journal."""
    conn = sqlite3.connect(path)
    try:
        return {row[0]: (row[1], row[2])
                for row in conn.execute("SELECT id, state, attempts FROM jobs")}
    finally:
        conn.close()


# ------------------------------------------------------------------------------ plumbing


def _config() -> str:
    return (f'uid_base = {UID_BASE}\ncgroup_root = "{CGROUP_ROOT}"\n'
            f"[server]\nworkers = {WORKERS}\n")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory) -> Iterator[Path]:
    """Our own cgroup root and state directory; at the end a sweeper daemon removes
    whatever a killed daemon left, and the directories go."""
    require_kernel()
    tmp = tmp_path_factory.mktemp("durability")
    assert not _processes_with_uid_in(UID_RANGE), "uid range already in use on this host"
    made = []
    for path in _cgroup_root_dirs(CGROUP_ROOT):
        if not path.exists():
            path.mkdir()
            made.append(path)
    with _subreaper():
        try:
            yield tmp
        finally:
            try:
                sweeper = start_daemon(tmp, _config(), state_dir=STATE_DIR, journal="none",
                                       log_name="sweeper.log", languages=LANGUAGES)
                stop_daemon(sweeper, signal.SIGINT)
            finally:
                _reap_adopted_zombies(keep=set())
                for path in reversed(made):
                    with contextlib.suppress(OSError):
                        (path / "sandboxd").rmdir()
                    with contextlib.suppress(OSError):
                        path.rmdir()
                for sub in ("root", "ws", ""):
                    with contextlib.suppress(OSError):
                        os.rmdir(Path(STATE_DIR) / sub)


def assert_nothing_left_of(pid: int) -> None:
    """No box cgroup, workspace mount or box process of the daemon `pid`."""
    assert _box_cgroups_of(pid) == [], f"box cgroups of daemon {pid} left"
    assert _workspace_mounts_of(STATE_DIR, pid) == [], f"workspace mounts of {pid} left"
    assert not (Path(STATE_DIR) / "ws" / str(pid)).exists()


def wait_no_box_processes(within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while _processes_with_uid_in(UID_RANGE) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert _processes_with_uid_in(UID_RANGE) == []


# ------------------------------------------------------------------------------ SIGKILL


def test_sigkilled_daemon_loses_no_job(isolated: Path) -> None:
    journal = str(isolated / "crash.db")
    jobs_list = mixed_jobs(30)
    first = start_daemon(isolated, _config(), state_dir=STATE_DIR, journal=journal,
                         log_name="crash-first.log", languages=LANGUAGES)
    try:
        ids = [submit(first, job) for job in jobs_list]
        jobs = dict(zip(ids, jobs_list, strict=True))
        # Kill it while some jobs are done, some run and some wait.
        deadline = time.monotonic() + FINAL_WITHIN_S
        while True:
            now = statuses(first, ids)
            states = [b["status"] for b in now.values()]
            finished = [i for i, b in now.items() if b["status"] not in ("Queued", "Running")]
            if finished and "Running" in states and "Queued" in states:
                break
            assert "Queued" in states, f"the queue ran dry before a kill point: {states}"
            assert time.monotonic() < deadline, states
            time.sleep(POLL_S)
        first.process.kill()
        first.process.wait()
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.wait()
    running_at_kill = {i for i, b in now.items() if b["status"] == "Running"}
    done_before = {i: now[i] for i in finished}
    # The kernel takes the dead daemon's boxes (test_crash.py proves how fast).
    wait_no_box_processes()
    for box in _box_cgroups_of(first.process.pid):
        assert [m for m in _cgroup_members(box) if _live(m)] == [], box

    second = start_daemon(isolated, _config(), state_dir=STATE_DIR, journal=journal,
                          log_name="crash-second.log", languages=LANGUAGES)
    try:
        assert_nothing_left_of(first.process.pid)  # swept at start
        # Finished before the kill: served as they were, not run again.
        assert statuses(second, list(done_before)) == done_before
        results = wait_all_final(second, ids)
        check_verdicts(jobs, results)
    finally:
        output = stop_daemon(second)
    assert second.process.returncode == 0, output
    assert "recovered" in output
    rows = journal_rows(journal)
    assert set(rows) == set(ids)  # nothing lost, nothing extra
    assert all(state == "finished" for state, _ in rows.values())
    # Those that ran when the daemon died ran once more, from scratch.
    assert {i for i, (_, attempts) in rows.items() if attempts == 2} == running_at_kill
    wait_no_box_processes()
    assert_nothing_left_of(second.process.pid)


# ------------------------------------------------------------------------------ SIGTERM


def test_sigterm_drains_and_the_queue_runs_after_the_next_start(isolated: Path) -> None:
    journal = str(isolated / "sigterm.db")
    config = _config() + "shutdown_deadline_s = 1\n"
    sleeper = Job("python3", "import time\ntime.sleep(3)\nprint('slept')\n", "Accepted",
                  "slept\n", (("wall_time_limit_ms", 20_000),))
    hellos = [Job("python3", py_hello(i), "Accepted", f"hello {i}\n") for i in range(4)]
    first = start_daemon(isolated, config, state_dir=STATE_DIR, journal=journal,
                         log_name="sigterm-first.log", languages=LANGUAGES)
    try:
        sleepers = [submit(first, sleeper), submit(first, Job(
            "python3", sleeper.source + "# 2\n", "Accepted", "slept\n", sleeper.limits))]
        deadline = time.monotonic() + 60
        while {b["status"] for b in statuses(first, sleepers).values()} != {"Running"}:
            assert time.monotonic() < deadline
            time.sleep(POLL_S)
        queued = [submit(first, job) for job in hellos]
        assert {b["status"] for b in statuses(first, queued).values()} == {"Queued"}

        first.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while first.request("GET", "/health")[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Draining: the sleepers run on (up to the 1 s deadline); nothing new is taken.
        status, body, headers = first.request("POST", "/execute", hellos[0].body())
        assert status == 503 and "Retry-After" in headers, body
        assert "shutting down" in body["error"], body
        assert {b["status"] for b in statuses(first, queued).values()} == {"Queued"}
        output = stop_daemon(first)
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.wait()
    assert first.process.returncode == 0, output
    assert "draining" in output
    wait_no_box_processes()
    assert_nothing_left_of(first.process.pid)
    # The sleepers were cut short: queued again, and not counted as crash attempts.
    assert journal_rows(journal) == {i: ("queued", 0) for i in sleepers + queued}

    second = start_daemon(isolated, config, state_dir=STATE_DIR, journal=journal,
                          log_name="sigterm-second.log", languages=LANGUAGES)
    try:
        results = wait_all_final(second, sleepers + queued)
        check_verdicts(dict(zip(sleepers + queued, [sleeper, sleeper] + hellos, strict=True)),
                       results)
    finally:
        stop_daemon(second)
    assert {i: a for i, (_, a) in journal_rows(journal).items()} == {
        i: 1 for i in sleepers + queued}


# ------------------------------------------------------------------------------ results


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("ttl"), "[server]\nresult_ttl_s = 1\n",
                     languages=("python3",), log_name="ttl.log")
    try:
        yield d
    finally:
        stop_daemon(d)


def test_an_expired_result_is_a_404_that_says_so(short_lived: Daemon) -> None:
    status, body, _ = short_lived.request(
        "POST", "/execute?wait=true", {"language": "python3", "source": "print('ttl')"})
    assert status == 200 and body["status"] == "Accepted", body
    job_id = body["submission_id"]
    deadline = time.monotonic() + 30
    while (answer := short_lived.request("GET", f"/result/{job_id}"))[0] == 200:
        assert time.monotonic() < deadline, "the result never expired"
        time.sleep(0.1)
    status, body, _ = answer
    assert status == 404 and "expired" in body["error"], body
    assert "server.result_ttl_s" in body["error"], body
    status, body, _ = short_lived.request("GET", "/result/" + "0" * 32)
    assert status == 404 and "expired" not in body["error"], body  # never issued here
