"""Load: 300 submissions from 30 clients at once (hello worlds in bash and python3, ~1 s
CPU loops in python3) through the real daemon with its journal: every one gets its right
result, none is lost, and the daemon's memory stays bounded. Nothing here is timed:
speed belongs to bench/."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import SLOWDOWN, require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

SUBMISSIONS = 300
CLIENTS = 30
LOOP_EVERY = 30  # one ~1 s CPU loop in 30 submissions, the rest hello worlds
# What the daemon may grow by over the run (results kept, allocator slack); a leak of a
# submission's input or a box's buffers per job would take far more.
RSS_GROWTH_LIMIT_KB = 64 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def job(i: int) -> tuple[dict, str]:
    """The request of submission `i`, and its expected stdout (each source distinct, so
    the result cache answers none of them)."""
    if i % LOOP_EVERY == 0:
        source = f"n = 0\nwhile n < 8_000_000:\n    n += 1\nprint('loop {i}')\n"
        return ({"language": "python3", "source": source, "time_limit_ms": 10_000,
                 "wall_time_limit_ms": 30_000}, f"loop {i}\n")
    if i % 2:
        return {"language": "bash", "source": f"echo 'hello {i}'\n"}, f"hello {i}\n"
    return {"language": "python3", "source": f"print('hello {i}')\n"}, f"hello {i}\n"


def run_one(daemon: Daemon, i: int) -> tuple[int, str, dict]:
    request, _ = job(i)
    status, body, _ = daemon.request("POST", "/execute?wait=true", request, timeout=300)
    assert isinstance(body, dict)
    job_id = body.get("submission_id", "")
    if status == 202:  # the wait cap passed first: poll
        deadline = time.monotonic() + 300 * SLOWDOWN
        while body.get("status") in (None, "Queued", "Running"):
            assert time.monotonic() < deadline, f"submission {i} never finished"
            time.sleep(0.1)
            status, body, _ = daemon.request("GET", f"/result/{job_id}")
            assert status == 200, body
            assert isinstance(body, dict)
    assert status == 200, (i, status, body)
    return i, job_id, body


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("load"), languages=("bash", "python3"),
                     log_name="load.log")
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)


def test_300_submissions_from_30_clients(daemon: Daemon) -> None:
    pid = daemon.process.pid
    # The baseline: once the first round of clients is through (allocator, first boxes).
    baseline: list[int] = []
    peak = [0]
    finished = 0
    lock = threading.Lock()
    done = threading.Event()

    def client(i: int) -> tuple[int, str, dict]:
        nonlocal finished
        outcome = run_one(daemon, i)
        with lock:
            finished += 1
            if finished == CLIENTS:
                baseline.append(rss_kb(pid))
        return outcome

    def sample() -> None:
        while not done.wait(0.2):
            if baseline:
                peak[0] = max(peak[0], rss_kb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(client, range(SUBMISSIONS)))
    finally:
        done.set()
        sampler.join()
    before, after = baseline[0], rss_kb(pid)

    wrong = [(i, body) for i, _, body in outcomes
             if body["status"] != "Accepted" or body["stdout"] != job(i)[1]
             or body["cached"]]
    assert wrong == []
    ids = [job_id for _, job_id, _ in outcomes]
    assert len(set(ids)) == SUBMISSIONS
    # Every id still answers with its result: none lost after the fact either.
    for i, job_id, body in outcomes[::10]:
        status, again, _ = daemon.request("GET", f"/result/{job_id}")
        assert (status, again) == (200, body), i
    assert after - before < RSS_GROWTH_LIMIT_KB, (before, after, peak[0])
    assert peak[0] - before < 2 * RSS_GROWTH_LIMIT_KB, (before, after, peak[0])

    output = stop_daemon(daemon)
    assert daemon.process.returncode == 0, output
    conn = sqlite3.connect(daemon.journal)
    try:
        rows = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
    finally:
        conn.close()
    assert {rows.get(job_id) for job_id in ids} == {"finished"}
