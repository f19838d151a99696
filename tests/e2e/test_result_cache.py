"""The result cache over HTTP: a hit answers at once with `cached: true` and a new id, a
change to any part of the key runs again, `cache: false` neither reads nor writes, and
identical submissions in flight share one run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

RUN_FIELDS = ("status", "stdout", "stderr", "exit_code", "time_ms", "wall_time_ms",
              "memory_kb")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("cache"), languages=("python3", "pypy3"),
                     log_name="cache.log")
    try:
        yield d
    finally:
        stop_daemon(d)


def fresh(**fields) -> dict:
    """A submission no earlier test has sent (a unique comment in the source)."""
    source = f"# {uuid.uuid4().hex}\nprint(input())\n"
    return {"language": "python3", "source": source, "stdin": "hi", **fields}


def run(daemon: Daemon, body: dict) -> dict:
    return daemon.execute(**body)


def test_a_hit_answers_with_the_stored_result_and_a_new_id(daemon: Daemon) -> None:
    body = fresh()
    first = run(daemon, body)
    assert first["status"] == "Accepted" and first["cached"] is False, first
    second = run(daemon, body)
    assert second["cached"] is True, second
    assert second["submission_id"] != first["submission_id"]
    assert {k: second[k] for k in RUN_FIELDS} == {k: first[k] for k in RUN_FIELDS}
    status, polled, _ = daemon.request("GET", f"/result/{second['submission_id']}")
    assert status == 200 and polled == second
    # Without ?wait=true the hit is final by the time the 202 arrives.
    status, accepted, _ = daemon.request("POST", "/execute", body)
    assert status == 202, accepted
    status, polled, _ = daemon.request("GET", f"/result/{accepted['submission_id']}")
    assert status == 200 and polled["cached"] is True and polled["status"] == "Accepted"


@pytest.mark.parametrize(("field", "value"), [
    ("language", "pypy3"),
    ("stdin", "ho"),
    ("expected_output", "hi"),
    ("time_limit_ms", 1999),
    ("wall_time_limit_ms", 4999),
    ("memory_limit_mb", 255),
])
def test_a_change_to_any_key_part_is_a_miss(daemon: Daemon, field: str, value: object) -> None:
    body = fresh(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)
    assert run(daemon, body)["cached"] is False
    assert run(daemon, body)["cached"] is True
    changed = run(daemon, {**body, field: value})
    assert changed["cached"] is False, changed
    assert changed["status"] == "Accepted", changed


def test_a_change_to_the_source_is_a_miss(daemon: Daemon) -> None:
    body = fresh()
    run(daemon, body)
    changed = run(daemon, {**body, "source": body["source"] + "\n"})
    assert changed["cached"] is False


def test_cache_false_neither_reads_nor_writes(daemon: Daemon) -> None:
    body = fresh()
    assert run(daemon, {**body, "cache": False})["cached"] is False
    assert run(daemon, body)["cached"] is False  # the opted-out run was not stored
    assert run(daemon, body)["cached"] is True
    assert run(daemon, {**body, "cache": False})["cached"] is False  # and nothing is read


def test_identical_submissions_in_flight_share_one_run(daemon: Daemon) -> None:
    body = fresh()
    body["source"] += "import time\ntime.sleep(1)\n"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(daemon, body), range(4)))
    assert {r["status"] for r in results} == {"Accepted"}
    assert sorted(r["cached"] for r in results) == [False, True, True, True]
    runs = {(r["time_ms"], r["wall_time_ms"], r["memory_kb"]) for r in results}
    assert len(runs) == 1  # one run's measurements, shared

