"""Several daemons share one queue and result store on a real Redis (issue 11).

Two (or three) real daemons on this machine, `--redis` to one `redis-server` on a
free loopback port: any daemon answers for any id, 200 jobs spread over them each run
exactly once, a SIGKILLed daemon's jobs are re-run by another after the visibility
timeout, Redis restarting mid-load loses no accepted job, and the result cache and
webhooks are shared (a hit on another daemon, one delivery).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, stop_daemon
from tests.e2e.receivers import Receiver
from tests.e2e.redis_fixtures import (
    UID_BASE,
    WORKERS,
    RedisServer,
    require_redis_server,
    start_redis_daemon,
)

DOUBLE = "print(2 * int(input()))"
SLEEP_THEN_PRINT = "import time\ntime.sleep(4)\nprint(int(input()) + 1)"
RESULT_WAIT_S = 240  # a generous bound for a loaded 2-core box, not a measurement


def _final(daemon: Daemon, job_id: str, timeout: float = RESULT_WAIT_S) -> dict:
    """The final result of `job_id`, read from `daemon` (polling; a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body, _ = daemon.request("GET", f"/result/{job_id}", timeout=30)
        except OSError:
            status, body = 0, {}
        if status == 200 and isinstance(body, dict) and body["status"] not in (
                "Queued", "Running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{job_id} not final within {timeout} s: {body}")


def _metric(daemon: Daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _post(daemon: Daemon, body: dict) -> str:
    status, answer, _ = daemon.request("POST", "/execute", body)
    assert status == 202, answer
    assert isinstance(answer, dict)
    return answer["submission_id"]


def _stop_all(*daemons: Daemon) -> None:
    for d in daemons:
        if d.process.poll() is None:
            stop_daemon(d)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    from tests.e2e.conftest import free_port

    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[tuple[RedisServer, Daemon, Daemon, Receiver]]:
    """Redis and two daemons (webhooks to 127.0.0.1 allowed), for the tests that leave
    no daemon dead."""
    require_kernel()
    require_redis_server()
    from tests.e2e.conftest import free_port

    tmp = tmp_path_factory.mktemp("redis-shared")
    server = RedisServer(free_port(), tmp)
    server.start()
    receiver = Receiver([200])
    hooks = '[webhooks]\nallowed_hosts = ["127.0.0.1"]\n'
    a = b = None
    try:
        a = start_redis_daemon(tmp, 0, server.url, extra=hooks)
        b = start_redis_daemon(tmp, 1, server.url, extra=hooks)
        yield server, a, b, receiver
    finally:
        _stop_all(*(d for d in (a, b) if d is not None))
        receiver.close()
        server.stop()


def test_a_job_posted_to_one_daemon_is_answered_by_the_other(shared) -> None:
    _, a, b, _ = shared
    job_id = _post(a, {"language": "python3", "source": DOUBLE, "stdin": "21",
                       "expected_output": "42"})
    # B waits for it (a notification from whichever daemon ran it), then A and B agree.
    status, seen, _ = b.request("GET", f"/result/{job_id}")
    assert status == 200 and isinstance(seen, dict), seen
    from_b = _final(b, job_id)
    assert from_b["status"] == "Accepted" and from_b["stdout"] == "42\n", from_b
    assert _final(a, job_id) == from_b
    # ?wait=true on B for a job posted on B, then read on A.
    status, body, _ = b.request("POST", "/execute?wait=true", {
        "language": "python3", "source": DOUBLE, "stdin": "5"})
    assert status == 200 and isinstance(body, dict) and body["stdout"] == "10\n", body
    assert _final(a, body["submission_id"]) == body
    # An id nobody issued is unknown on every daemon.
    for d in (a, b):
        status, body, _ = d.request("GET", "/result/" + "0" * 32)
        assert status == 404 and "error" in body


def test_200_jobs_over_two_daemons_each_run_exactly_once(shared) -> None:
    server, a, b, _ = shared
    started_before = _metric(a, "sandboxd_jobs_started_total") + _metric(
        b, "sandboxd_jobs_started_total")
    bodies = [{"language": "python3", "source": DOUBLE, "stdin": str(i),
               "expected_output": str(2 * i), "cache": False} for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda ib: _post((a, b)[ib[0] % 2], ib[1]), enumerate(bodies)))
    assert len(set(ids)) == 200
    for i, job_id in enumerate(ids):
        result = _final((b, a)[i % 2], job_id)
        assert (result["status"], result["stdout"]) == ("Accepted", f"{2 * i}\n"), result
    # Runs counted, not results: every job started once, on one daemon or the other...
    started = _metric(a, "sandboxd_jobs_started_total") + _metric(
        b, "sandboxd_jobs_started_total")
    assert started - started_before == 200
    # ...both daemons took their share of the work...
    assert _metric(a, "sandboxd_jobs_finished_total") > 0
    assert _metric(b, "sandboxd_jobs_finished_total") > 0
    # ...and Redis counted one start for each (the attempt count of the job).
    for job_id in ids[:20] + ids[-20:]:
        assert server.command("HGET", f"sandboxd:job:{job_id}", "attempts") == "1"
    # Nothing is left waiting or pending in the stream once all are done.
    assert server.command("XLEN", "sandboxd:jobs") == ":0"


def test_the_result_cache_and_webhooks_are_shared(shared) -> None:
    _, a, b, receiver = shared
    source = "print(sum(range(int(input()))))"
    first = _post(a, {"language": "python3", "source": source, "stdin": "1000",
                      "callback_url": f"http://127.0.0.1:{receiver.port}/hook"})
    judged = _final(a, first)
    assert judged["status"] == "Accepted" and judged["cached"] is False
    status, hit, _ = b.request("POST", "/execute?wait=true", {
        "language": "python3", "source": source, "stdin": "1000"})
    assert status == 200 and isinstance(hit, dict), hit
    assert hit["cached"] is True and hit["stdout"] == judged["stdout"]
    assert _metric(b, "sandboxd_cache_hits_total") >= 1
    (delivered,) = receiver.wait_for(1)
    assert json.loads(delivered.body)["submission_id"] == first
    # Delivered once: both daemons are alive and neither sends it again.
    time.sleep(2)
    assert len(receiver.requests) == 1


def test_metrics_report_the_cluster_queue(shared) -> None:
    _, a, b, _ = shared
    for d in (a, b):
        with urllib.request.urlopen(d.url + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        assert "sandboxd_queue_depth " in text
        assert "sandboxd_queue_oldest_waiting_seconds " in text


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


def _box_processes(uid_base: int, *, except_under: int | None = None) -> list[int]:
    """Pids of processes running as the box uids of the daemon with `uid_base`, but for
    those of the daemon `except_under` (its warm boxes, built ahead for its next jobs)."""
    uids = set(range(uid_base, uid_base + 2 * WORKERS))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^Uid:\s+(\d+)", status, flags=re.M)
        if match and int(match.group(1)) in uids:
            if except_under is None or not _descends_from(int(entry), except_under):
                pids.append(int(entry))
    return pids


def test_a_killed_daemons_jobs_are_run_again_by_another(tmp_path: Path,
                                                        redis_server: RedisServer) -> None:
    require_kernel()
    a = start_redis_daemon(tmp_path, 2, redis_server.url, visibility_timeout_s=2.0)
    b = None
    try:
        # Only A runs: its two workers take two sleepers, the rest wait in the stream.
        ids = [_post(a, {"language": "python3", "source": SLEEP_THEN_PRINT, "stdin": str(i),
                         "wall_time_limit_ms": 20000}) for i in range(4)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [i for i in ids if a.request("GET", f"/result/{i}")[1]["status"]
                       == "Running"]
            if len(running) == WORKERS:
                break
            time.sleep(0.1)
        assert len(running) == WORKERS
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=30)
        b = start_redis_daemon(tmp_path, 3, redis_server.url, visibility_timeout_s=2.0)
        for i, job_id in enumerate(ids):
            result = _final(b, job_id)
            assert (result["status"], result["stdout"]) == ("Accepted", f"{i + 1}\n"), result
        for job_id in running:  # started on A, then again on B
            assert redis_server.command("HGET", f"sandboxd:job:{job_id}", "attempts") == "2"
        # A's host side is cleaned up when it starts again: no box of A's is left.
        a = start_redis_daemon(tmp_path, 2, redis_server.url, visibility_timeout_s=2.0)
        assert _box_processes(UID_BASE + 16 * 2, except_under=a.process.pid) == []
    finally:
        _stop_all(*(d for d in (a, b) if d is not None))


def test_redis_restarting_mid_load_loses_no_accepted_job(tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    require_kernel()
    a = start_redis_daemon(tmp_path, 4, redis_server.url)
    try:
        ids = [_post(a, {"language": "python3", "source": DOUBLE, "stdin": str(i),
                         "cache": False}) for i in range(12)]
        redis_server.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body, _ = a.request("GET", "/health")
            if status == 503:
                break
            time.sleep(0.1)
        assert status == 503 and "Redis" in body["error"], body
        status, body, headers = a.request("POST", "/execute", {
            "language": "python3", "source": DOUBLE, "stdin": "1"})
        assert status == 503 and "Redis" in body["error"] and "Retry-After" in headers, body
        redis_server.start()
        for i, job_id in enumerate(ids):
            result = _final(a, job_id)
            assert (result["status"], result["stdout"]) == ("Accepted", f"{2 * i}\n"), result
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and a.request("GET", "/health")[0] != 200:
            time.sleep(0.1)
        assert a.request("GET", "/health")[0] == 200
    finally:
        _stop_all(a)


def test_an_unreachable_redis_is_a_clear_start_up_error(tmp_path: Path) -> None:
    require_kernel()
    from tests.e2e.conftest import free_port

    with pytest.raises(RuntimeError, match=r"queue.redis_url, --redis: cannot reach Redis"):
        start_redis_daemon(tmp_path, 5, f"redis://127.0.0.1:{free_port()}/0")


def test_the_box_uid_ranges_belong_to_no_user() -> None:
    # The uid ranges above must be free on this host, or "no box process left" could
    # count somebody else's processes.
    for uid in range(UID_BASE, UID_BASE + 16 * 8):
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)
