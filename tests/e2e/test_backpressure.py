"""A burst against a tiny queue: the overflow is refused with 503 + Retry-After and
nothing is half-accepted; every job that got an id ends with its own right result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import SLOWDOWN, require_kernel
from tests.e2e.conftest import STATE_DIR, Daemon, start_daemon, stop_daemon

QUEUE_SIZE = 2
BURST = 12


@pytest.fixture
def tiny_queue(tmp_path: Path) -> Iterator[Daemon]:
    require_kernel()
    config = (f'[sandbox]\nstate_dir = "{STATE_DIR}"\n\n'
              f"[server]\nworkers = 1\nqueue_size = {QUEUE_SIZE}\n")
    daemon = start_daemon(tmp_path, config_text=config, log_name="daemon.log",
                          languages=["python3"])
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            stop_daemon(daemon)


def test_a_burst_over_a_tiny_queue_gets_503_and_loses_nothing(tiny_queue: Daemon) -> None:
    # Distinct sources (and cache off): every job really runs, and each result can be
    # matched to the job that asked for it.
    def submit(i: int) -> tuple[int, dict, dict]:
        return tiny_queue.request("POST", "/execute", {
            "language": "python3", "cache": False,
            "source": f"import time\ntime.sleep(0.3)\nprint({i})\n"})

    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(submit, range(BURST)))
    accepted = {i: body["submission_id"] for i, (status, body, _) in enumerate(answers)
                if status == 202}
    refused = [(status, body, headers) for status, body, headers in answers if status != 202]
    # One runs, QUEUE_SIZE wait: at most 1 + QUEUE_SIZE of a simultaneous burst fit.
    assert refused, f"a burst of {BURST} into a queue of {QUEUE_SIZE} was all accepted"
    for status, body, headers in refused:
        assert status == 503, body
        assert set(body) == {"error"} and "queue" in body["error"], body
        assert int(headers["Retry-After"]) >= 1, headers
    # Nothing half-accepted: the refused never show up, the accepted all finish right.
    deadline = time.monotonic() + 120 * SLOWDOWN
    for i, job in accepted.items():
        while True:
            status, body, _ = tiny_queue.request("GET", f"/result/{job}")
            assert status == 200, body
            if body["status"] not in ("Queued", "Running"):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        assert body["status"] == "Accepted" and body["stdout"] == f"{i}\n", body
    # The daemon keeps serving once the burst is through: a retried refusal is accepted.
    status, body, _ = tiny_queue.request("POST", "/execute?wait=true", {
        "language": "python3", "source": "print('after')", "cache": False})
    assert status == 200 and body["status"] == "Accepted", body
