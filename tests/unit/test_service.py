"""The job queue: transitions, back-pressure, runner failures, results and their bounds,
shutdown without a journal, health. (Journal, recovery and cache: test_service_*.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from sandboxd.journal import encode_result
from sandboxd.model import Result, Status
from sandboxd.service import (
    JobIds,
    QueueFull,
    ResultExpired,
    Service,
    ShuttingDown,
    Unavailable,
)
from tests.unit.service_fakes import Clock, FakeRunner, sized, submission, until


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def service(gate: asyncio.Event) -> AsyncIterator[Service]:
    svc = Service(FakeRunner(gate), workers=1, queue_size=2, results_kept=100)
    await svc.start()
    yield svc
    gate.set()
    await svc.stop(1)


def runner_of(service: Service) -> FakeRunner:
    runner = service._runner
    assert isinstance(runner, FakeRunner)
    return runner


async def test_queued_running_final(service: Service, gate: asyncio.Event) -> None:
    first = await service.submit(submission("one"))
    second = await service.submit(submission("two"))
    assert len(first) == 32 and first != second
    await until(lambda: service.running == 1)
    assert service.get(first) == Result(status=Status.RUNNING)
    assert service.get(second) == Result(status=Status.QUEUED)
    assert (service.queued, service.running) == (1, 1)

    gate.set()
    result = await service.wait(second)
    assert result.status is Status.ACCEPTED and result.stdout == "two"
    assert service.get(first) == Result(status=Status.ACCEPTED, stdout="one", exit_code=0)
    assert service.stats().finished == {Status.ACCEPTED: 2}
    assert (service.queued, service.running) == (0, 0)


async def test_unknown_id(service: Service) -> None:
    assert service.get("nope") is None
    assert service.get("0" * 32) is None  # the shape of an id, but not one issued here
    with pytest.raises(KeyError):
        await service.wait("nope")


async def test_wait_with_a_timeout_returns_the_pending_result(service: Service,
                                                              gate: asyncio.Event) -> None:
    running = await service.submit(submission("r"))
    queued = await service.submit(submission("q"))
    await until(lambda: service.running == 1)
    assert await service.wait(running, timeout=0.01) == Result(status=Status.RUNNING)
    assert await service.wait(queued, timeout=0) == Result(status=Status.QUEUED)
    gate.set()
    assert (await service.wait(queued, timeout=None)).stdout == "q"
    assert (await service.wait(queued, timeout=0)).stdout == "q"


async def test_queue_full_accepts_nothing(service: Service) -> None:
    await service.submit(submission("running"))
    await until(lambda: service.running == 1)
    await service.submit(submission("q1"))
    await service.submit(submission("q2"))
    with pytest.raises(QueueFull, match="2 jobs waiting"):
        await service.submit(submission("rejected"))
    assert isinstance(QueueFull(), Unavailable)
    assert service.queued == 2
    assert len(service._jobs) == 3


async def test_queue_full_before_start() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=1, results_kept=10)
    await svc.submit(submission())
    with pytest.raises(QueueFull):
        await svc.submit(submission())
    await svc.stop(0.1)


async def test_workers_bound_concurrency(gate: asyncio.Event) -> None:
    runner = FakeRunner(gate)
    svc = Service(runner, workers=2, queue_size=5, results_kept=10)
    await svc.start()
    ids = [await svc.submit(submission(str(i))) for i in range(3)]
    await until(lambda: svc.running == 2)
    await asyncio.sleep(0.01)
    assert (svc.running, svc.queued, len(runner.started)) == (2, 1, 2)
    gate.set()
    results = [await svc.wait(i) for i in ids]
    assert [r.stdout for r in results] == ["0", "1", "2"]
    assert [s.source for s in runner.started] == ["0", "1", "2"]  # in acceptance order
    await svc.stop(1)


async def test_runner_exception_is_internal_error_and_worker_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    with caplog.at_level(logging.ERROR, logger="sandboxd.service"):
        bad = await svc.wait(await svc.submit(submission("boom")))
    assert bad.status is Status.INTERNAL_ERROR
    assert bad.message is not None and "cgroup vanished" in bad.message
    assert any(r.exc_info for r in caplog.records), "traceback must be logged"

    good = await svc.wait(await svc.submit(submission("after")))
    assert good.status is Status.ACCEPTED
    assert svc.healthy
    assert svc.stats().finished == {Status.INTERNAL_ERROR: 1, Status.ACCEPTED: 1}
    await svc.stop(1)


async def test_non_final_runner_result_is_internal_error() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    result = await svc.wait(await svc.submit(submission("pending")))
    assert result.status is Status.INTERNAL_ERROR
    assert result.message is not None and "Running" in result.message
    await svc.stop(1)


# -- results: bounds, TTL, expired vs unknown ------------------------------------------


async def test_eviction_by_count_keeps_newest_and_says_expired() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=2)
    await svc.start()
    ids = []
    for source in ("a", "b", "c"):
        ids.append(await svc.submit(submission(source)))
        await svc.wait(ids[-1])
    with pytest.raises(ResultExpired, match="expired.*server.results_kept") as e:
        svc.get(ids[0])
    assert ids[0] in str(e.value)
    with pytest.raises(KeyError):  # ResultExpired is a KeyError for wait's callers
        await svc.wait(ids[0])
    assert [svc.get(i).stdout for i in ids[1:]] == ["b", "c"]  # type: ignore[union-attr]
    assert svc.results_held[0] == 2
    await svc.stop(1)


async def test_eviction_by_bytes() -> None:
    one = len(encode_result(Result(status=Status.ACCEPTED, stdout="0" + "x" * 100, exit_code=0)))
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=100,
                  results_max_bytes=3 * one + one // 2)
    await svc.start()
    ids = []
    for i in range(4):
        ids.append(await svc.submit(submission(str(i) + "x" * 100)))
        await svc.wait(ids[-1])
    with pytest.raises(ResultExpired):
        svc.get(ids[0])
    assert all(svc.get(i) is not None for i in ids[1:])
    count, size = svc.results_held
    assert (count, size) == (3, 3 * one)
    await svc.stop(1)


async def test_ttl_expires_results() -> None:
    clock = Clock()
    svc = Service(FakeRunner(), workers=1, queue_size=5, result_ttl_s=60, clock=clock)
    await svc.start()
    old = await svc.submit(submission("old"))
    await svc.wait(old)
    clock.now += 30
    young = await svc.submit(submission("young"))
    await svc.wait(young)
    clock.now += 29.9
    assert svc.get(old) is not None
    clock.now += 0.1
    with pytest.raises(ResultExpired, match="kept 60 s"):
        svc.get(old)
    assert svc.get(young) is not None
    clock.now += 30
    svc._expire()  # what the housekeeping task does on its own
    assert svc.results_held == (0, 0)
    with pytest.raises(ResultExpired):
        svc.get(young)
    await svc.stop(1)


async def test_housekeeping_expires_results_on_its_own() -> None:
    clock = Clock()
    svc = Service(FakeRunner(), workers=1, queue_size=5, result_ttl_s=0.5, clock=clock)
    await svc.start()
    job = await svc.submit(submission())
    await svc.wait(job)
    clock.now += 1
    await until(lambda: svc.results_held == (0, 0), timeout=5)
    await svc.stop(1)


async def test_eviction_never_drops_queued_or_running(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=0)
    await svc.start()
    running = await svc.submit(submission("r"))
    await until(lambda: svc.running == 1)
    queued = await svc.submit(submission("q"))
    assert svc.get(running) == Result(status=Status.RUNNING)
    assert svc.get(queued) == Result(status=Status.QUEUED)
    # A waiter still gets its result although nothing finished is kept.
    waiter = asyncio.create_task(svc.wait(queued))
    gate.set()
    assert (await waiter).stdout == "q"
    for job_id in (running, queued):
        with pytest.raises(ResultExpired):
            svc.get(job_id)
    await svc.stop(1)


def test_job_ids_are_recognised_only_under_their_key() -> None:
    ids = JobIds(b"k" * 32)
    job_id = ids.new()
    assert len(job_id) == 32 and ids.issued(job_id)
    assert JobIds(b"k" * 32).issued(job_id)  # same key (the journal's), same answer
    assert not JobIds(b"x" * 32).issued(job_id)
    tampered = job_id[:-1] + ("0" if job_id[-1] != "0" else "1")
    assert not ids.issued(tampered)
    for bad in ("", "nope", "zz" * 16, job_id + "00", job_id.upper()[:31]):
        assert not ids.issued(bad)


# -- shutdown without a journal ------------------------------------------------------


async def test_stop_lets_running_jobs_finish_and_ends_queued_ones(gate: asyncio.Event) -> None:
    runner = FakeRunner(gate)
    svc = Service(runner, workers=1, queue_size=5, results_kept=10)
    await svc.start()
    running = await svc.submit(submission("r"))
    queued = await svc.submit(submission("q"))
    await until(lambda: svc.running == 1)
    waiter = asyncio.create_task(svc.wait(queued))
    asyncio.get_running_loop().call_later(0.05, gate.set)
    await svc.stop(5)
    assert svc.get(running) == Result(status=Status.ACCEPTED, stdout="r", exit_code=0)
    result = svc.get(queued)
    assert result is not None and result.status is Status.INTERNAL_ERROR
    assert result.message and "stopped before the job ran" in result.message
    assert (await waiter) == result
    assert [s.source for s in runner.started] == ["r"]  # nothing new started
    assert svc.health_problem() == "the service is shutting down" and not svc.healthy
    with pytest.raises(ShuttingDown):
        await svc.submit(submission())


async def test_stop_cancels_after_the_deadline(gate: asyncio.Event) -> None:
    runner = FakeRunner(gate)
    svc = Service(runner, workers=1, queue_size=5, results_kept=10)
    await svc.start()
    running = await svc.submit(submission("r"))
    await until(lambda: svc.running == 1)
    await svc.stop(0.05)  # the gate never opens
    result = svc.get(running)
    assert result is not None and result.status is Status.INTERNAL_ERROR
    assert result.message and "stopped while the job ran" in result.message
    assert runner.cancelled == ["r"]  # the runner saw the cancellation (it kills the box)
    assert (svc.running, svc.queued, svc.held_bytes) == (0, 0, 0)


async def test_health_problem() -> None:
    runner = FakeRunner()
    svc = Service(runner, workers=2, queue_size=5, results_kept=10)
    assert svc.health_problem() == "the service has not started"
    await svc.start()
    assert svc.health_problem() is None and svc.healthy
    runner.healthy = False
    assert "fork server" in (svc.health_problem() or "")
    runner.healthy = True
    assert svc._dispatcher is not None
    svc._dispatcher.cancel()
    await asyncio.sleep(0)
    assert "dispatcher stopped" in (svc.health_problem() or "")
    await svc.stop(0.1)
    assert not svc.healthy


def test_rejects_nonsense_sizes() -> None:
    for bad in ({"workers": 0}, {"queue_size": 0}, {"results_kept": -1}, {"max_attempts": 0},
                {"budget_bytes": 0}, {"results_max_bytes": 0}, {"result_ttl_s": 0}):
        with pytest.raises(ValueError):
            Service(FakeRunner(), **{"workers": 1, "queue_size": 1, **bad})  # type: ignore[arg-type]


# -- the byte budget and dropped inputs --------------------------------------------------


async def test_budget_counts_input_bytes_of_unfinished_jobs(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=10, results_kept=10,
                  budget_bytes=100)
    await svc.start()
    # Source, stdin and expected output, counted as UTF-8: "é" is two bytes.
    running = await svc.submit(sized("a" * 10, "é" * 15, "x" * 10))  # 10 + 30 + 10 = 50
    await until(lambda: svc.running == 1)
    assert svc.held_bytes == 50  # a running job still holds its input
    queued = await svc.submit(sized("b" * 40))  # 90
    with pytest.raises(QueueFull, match="budget of 100 bytes"):
        await svc.submit(sized("c" * 11))  # 101: over, although the job count has room
    assert (svc.queued, svc.held_bytes, len(svc._jobs)) == (1, 90, 2)  # nothing stored
    await svc.submit(sized("d" * 10))  # exactly 100 fits
    gate.set()
    await svc.wait(running)
    await svc.wait(queued)
    await until(lambda: svc.queued == 0 and svc.running == 0)
    assert svc.held_bytes == 0
    await svc.submit(sized("e" * 100))  # the whole budget is free again
    await svc.stop(1)


async def test_a_finished_job_keeps_only_its_result(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=10, results_kept=10,
                  budget_bytes=10 * 1024 * 1024)
    await svc.start()
    job_id = await svc.submit(sized("src", "i" * (1024 * 1024), "expected"))
    assert svc._jobs[job_id].submission is not None
    gate.set()
    result = await svc.wait(job_id)
    assert result.stdout == "src"
    job = svc._jobs[job_id]
    assert job.submission is None and job.result == result
    assert svc.held_bytes == 0
    await svc.stop(1)


async def test_jobs_ended_by_shutdown_drop_their_input(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=10,
                  budget_bytes=1000)
    await svc.start()
    running = await svc.submit(sized("r", "x" * 100))
    queued = await svc.submit(sized("q", "y" * 100))
    await until(lambda: svc.running == 1)
    await svc.stop(0.05)  # the gate never opens
    for job_id in (running, queued):
        assert svc._jobs[job_id].submission is None
    assert svc.held_bytes == 0


# -- batches -----------------------------------------------------------------------------


async def test_submit_many_is_all_or_nothing(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=3, results_kept=10,
                  budget_bytes=1000)
    await svc.start()
    with pytest.raises(QueueFull, match="room for 3 more jobs.*needs 4"):
        await svc.submit_many([submission(str(i)) for i in range(4)])
    assert (len(svc._jobs), svc.queued, svc.held_bytes) == (0, 0, 0)
    with pytest.raises(QueueFull, match="budget"):
        await svc.submit_many([sized("a" * 600), sized("b" * 600)])
    assert (len(svc._jobs), svc.queued, svc.held_bytes) == (0, 0, 0)
    ids = await svc.submit_many([submission(str(i)) for i in range(3)])
    assert len(set(ids)) == 3
    assert await svc.submit_many([]) == []
    gate.set()
    assert [(await svc.wait(i)).stdout for i in ids] == ["0", "1", "2"]
    await svc.stop(1)
