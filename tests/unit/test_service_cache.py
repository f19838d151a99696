"""The service's result cache (hits skip the queue, single flight, opt-out), and what it
tells the observer and the callback notifier."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from sandboxd.cache import ResultCache
from sandboxd.config import CacheConfig, Config
from sandboxd.journal import Journal
from sandboxd.model import Result, Status
from sandboxd.service import QueueFull, Service
from tests.unit.service_fakes import (
    FakeNotifier,
    FakeRunner,
    RecordingObserver,
    submission,
    until,
)

OK = Result(status=Status.ACCEPTED, stdout="same", exit_code=0)


def make(runner: FakeRunner, *, cache: bool = True, queue_size: int = 10,
         **kwargs: object) -> Service:
    result_cache = ResultCache(max_entries=100, max_bytes=1 << 20, ttl_s=60) if cache else None
    return Service(runner, workers=1, queue_size=queue_size, cache=result_cache,
                   **kwargs)  # type: ignore[arg-type]


async def test_a_hit_skips_the_queue_with_a_new_id() -> None:
    runner = FakeRunner()
    observer, notifier = RecordingObserver(), FakeNotifier()
    svc = make(runner, observer=observer, notifier=notifier)
    await svc.start()
    first = await svc.submit(submission("same"))
    assert (await svc.wait(first)) == OK
    gate = asyncio.Event()
    runner.gate = gate  # nothing runs from now on: a hit must not need a worker
    second = await svc.submit(submission("same", callback_url="http://127.0.0.1:1/hook"))
    assert second != first
    assert svc.get(second) == dataclasses.replace(OK, cached=True)  # final at once
    assert svc.get(first) == OK  # the original result is not marked
    assert runner.sources == ["same"]
    assert svc.queued == 0
    assert observer.of("cache") == [("cache", False), ("cache", True)]
    assert observer.of("accepted") == [("accepted", "same")] * 2
    assert observer.of("finished") == [("finished", "same", Status.ACCEPTED, False, True),
                                       ("finished", "same", Status.ACCEPTED, True, False)]
    assert notifier.sent == [(second, "http://127.0.0.1:1/hook",
                              dataclasses.replace(OK, cached=True))]
    gate.set()
    await svc.stop(1)


async def test_a_miss_on_any_key_part_runs_again() -> None:
    runner = FakeRunner()
    svc = make(runner)
    await svc.start()
    base = submission("same", stdin=b"1")
    variants = [base, dataclasses.replace(base, stdin=b"2"),
                dataclasses.replace(base, language="pypy3"),
                dataclasses.replace(base, expected_output=b"same"),
                dataclasses.replace(base, limits=dataclasses.replace(base.limits,
                                                                     memory_limit_mb=64))]
    for variant in variants:
        result = await svc.wait(await svc.submit(variant))
        assert not result.cached
    assert len(runner.started) == len(variants)
    result = await svc.wait(await svc.submit(variants[2]))
    assert result.cached and len(runner.started) == len(variants)
    await svc.stop(1)


async def test_cache_false_neither_reads_nor_writes() -> None:
    runner = FakeRunner()
    observer = RecordingObserver()
    svc = make(runner, observer=observer)
    await svc.start()
    await svc.wait(await svc.submit(submission("same", cache=False)))
    assert svc._cache is not None and len(svc._cache) == 0  # not written
    await svc.wait(await svc.submit(submission("same")))  # a miss: runs, stored
    result = await svc.wait(await svc.submit(submission("same", cache=False)))
    assert not result.cached  # not read
    assert len(runner.started) == 3
    assert observer.of("cache") == [("cache", False)]  # only the one that used it
    await svc.stop(1)


async def test_cache_off_globally() -> None:
    runner = FakeRunner()
    svc = make(runner, cache=False)
    await svc.start()
    for _ in range(2):
        assert not (await svc.wait(await svc.submit(submission("same")))).cached
    assert len(runner.started) == 2
    await svc.stop(1)
    config = Config()
    off = dataclasses.replace(config, cache=CacheConfig(enabled=False))
    assert Service.from_config(runner, off, journal=None)._cache is None
    assert Service.from_config(runner, config, journal=None)._cache is not None


@pytest.mark.parametrize("source", ["internal", "slow-tle"])
async def test_nondeterministic_results_are_not_cached(source: str) -> None:
    runner = FakeRunner()
    svc = make(runner)
    await svc.start()
    for _ in range(2):
        assert not (await svc.wait(await svc.submit(submission(source)))).cached
    assert len(runner.started) == 2
    await svc.stop(1)


async def test_identical_submissions_in_flight_share_one_run() -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    observer = RecordingObserver()
    svc = make(runner, observer=observer)
    await svc.start()
    blocker = await svc.submit(submission("other"))
    await until(lambda: runner.sources == ["other"])
    leader = await svc.submit(submission("same"))
    followers = [await svc.submit(submission("same")) for _ in range(3)]
    assert svc.queued == 4  # followers wait too (and count against the queue's bounds)
    gate.set()
    assert await svc.wait(leader) == OK
    for follower in followers:
        assert await svc.wait(follower) == dataclasses.replace(OK, cached=True)
    assert runner.sources == ["other", "same"]
    assert (await svc.wait(blocker)).stdout == "other"
    assert sorted(observer.of("cache")) == [("cache", False)] * 2 + [("cache", True)] * 3
    assert svc.queued == 0 and svc.held_bytes == 0
    await svc.stop(1)


async def test_followers_of_a_failed_run_run_themselves() -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    svc = make(runner)
    await svc.start()
    ids = [await svc.submit(submission("internal")) for _ in range(3)]
    gate.set()
    results = [await svc.wait(i) for i in ids]
    # An Internal Error is nobody's answer: each ran (one after another, single flight).
    assert [r.status for r in results] == [Status.INTERNAL_ERROR] * 3
    assert not any(r.cached for r in results)
    assert runner.sources == ["internal"] * 3
    await svc.stop(1)


async def test_a_batch_with_duplicates_runs_each_once() -> None:
    runner = FakeRunner()
    svc = make(runner)
    await svc.start()
    ids = await svc.submit_many([submission("a"), submission("b"), submission("a")])
    results = [await svc.wait(i) for i in ids]
    assert [(r.stdout, r.cached) for r in results] == [("a", False), ("b", False),
                                                        ("a", True)]
    assert runner.sources == ["a", "b"]
    await svc.stop(1)


async def test_hits_need_no_room_in_the_queue() -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    svc = make(runner, queue_size=1)
    await svc.start()
    gate.set()
    await svc.wait(await svc.submit(submission("same")))
    gate.clear()
    await svc.submit(submission("running"))
    await until(lambda: svc.running == 1)
    await svc.submit(submission("queued"))
    with pytest.raises(QueueFull):
        await svc.submit(submission("more"))
    assert (await svc.wait(await svc.submit(submission("same")))).cached
    gate.set()
    await svc.stop(1)


async def test_a_cached_result_survives_a_restart_as_a_result(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await Journal.open(path)
    svc = Service(FakeRunner(), workers=1, queue_size=5, journal=journal,
                  cache=ResultCache(max_entries=10, max_bytes=1 << 20, ttl_s=60))
    await svc.start()
    await svc.wait(await svc.submit(submission("same")))
    hit = await svc.submit(submission("same"))
    await svc.stop(1)
    await journal.close()

    journal = await Journal.open(path)
    runner = FakeRunner()
    svc = Service(runner, workers=1, queue_size=5, journal=journal,
                  cache=ResultCache(max_entries=10, max_bytes=1 << 20, ttl_s=60))
    await svc.start()
    assert svc.get(hit) == dataclasses.replace(OK, cached=True)
    # The cache itself is memory only: after a restart the same submission runs again.
    assert not (await svc.wait(await svc.submit(submission("same")))).cached
    assert runner.sources == ["same"]
    await svc.stop(1)
    await journal.close()


async def test_observer_and_notifier_see_every_job() -> None:
    observer, notifier = RecordingObserver(), FakeNotifier()
    svc = make(FakeRunner(), cache=False, observer=observer, notifier=notifier)
    await svc.start()
    job = await svc.submit(submission("x", callback_url="http://127.0.0.1:1/a"))
    plain = await svc.submit(submission("y"))
    result = await svc.wait(job)
    await svc.wait(plain)
    assert observer.events == [("accepted", "x"), ("accepted", "y"), ("started", "x"),
                               ("finished", "x", Status.ACCEPTED, False, True),
                               ("started", "y"),
                               ("finished", "y", Status.ACCEPTED, False, True)]
    assert notifier.sent == [(job, "http://127.0.0.1:1/a", result)]
    await svc.stop(1)
