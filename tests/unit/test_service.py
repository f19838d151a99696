"""The job queue: transitions, back-pressure, runner failures, eviction and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from sandboxd.model import Limits, Result, Status, Submission
from sandboxd.service import QueueFull, Service, ShuttingDown, Unavailable

LIMITS = Limits(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)


def submission(source: str = "ok") -> Submission:
    return Submission(language="python3", source=source, limits=LIMITS)


class FakeRunner:
    """Echoes the source as stdout. Source "boom" raises, "pending" returns Running.

    While `gate` is set to an unset Event, every run waits on it first.
    """

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.healthy = True
        self.started: list[Submission] = []
        self.one_started = asyncio.Event()

    async def run(self, submission: Submission) -> Result:
        self.started.append(submission)
        self.one_started.set()
        if self.gate is not None:
            await self.gate.wait()
        if submission.source == "boom":
            raise RuntimeError("cgroup vanished")
        if submission.source == "pending":
            return Result(status=Status.RUNNING)
        return Result(status=Status.ACCEPTED, stdout=submission.source, exit_code=0)


async def until(condition: object, timeout: float = 2.0) -> None:
    """Yield to the loop until `condition()` holds."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def service(gate: asyncio.Event) -> AsyncIterator[Service]:
    svc = Service(FakeRunner(gate), workers=1, queue_size=2, results_kept=100)
    await svc.start()
    yield svc
    gate.set()
    await svc.stop(drain_timeout=1)


def runner_of(service: Service) -> FakeRunner:
    runner = service._runner
    assert isinstance(runner, FakeRunner)
    return runner


async def test_queued_running_final(service: Service, gate: asyncio.Event) -> None:
    first = service.submit(submission("one"))
    second = service.submit(submission("two"))
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
    with pytest.raises(KeyError):
        await service.wait("nope")


async def test_queue_full_accepts_nothing(service: Service) -> None:
    service.submit(submission("running"))
    await until(lambda: service.running == 1)
    service.submit(submission("q1"))
    service.submit(submission("q2"))
    with pytest.raises(QueueFull):
        service.submit(submission("rejected"))
    assert isinstance(QueueFull(), Unavailable)
    assert service.queued == 2
    assert len(service._jobs) == 3


async def test_queue_full_before_start() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=1, results_kept=10)
    svc.submit(submission())
    with pytest.raises(QueueFull):
        svc.submit(submission())
    await svc.stop(drain_timeout=0.1)


async def test_workers_bound_concurrency(gate: asyncio.Event) -> None:
    runner = FakeRunner(gate)
    svc = Service(runner, workers=2, queue_size=5, results_kept=10)
    await svc.start()
    ids = [svc.submit(submission(str(i))) for i in range(3)]
    await until(lambda: svc.running == 2)
    await asyncio.sleep(0.01)
    assert (svc.running, svc.queued, len(runner.started)) == (2, 1, 2)
    gate.set()
    results = [await svc.wait(i) for i in ids]
    assert [r.stdout for r in results] == ["0", "1", "2"]
    await svc.stop(drain_timeout=1)


async def test_runner_exception_is_internal_error_and_worker_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    with caplog.at_level(logging.ERROR, logger="sandboxd.service"):
        bad = await svc.wait(svc.submit(submission("boom")))
    assert bad.status is Status.INTERNAL_ERROR
    assert bad.message is not None and "cgroup vanished" in bad.message
    assert any(r.exc_info for r in caplog.records), "traceback must be logged"

    good = await svc.wait(svc.submit(submission("after")))
    assert good.status is Status.ACCEPTED
    assert svc.healthy
    assert svc.stats().finished == {Status.INTERNAL_ERROR: 1, Status.ACCEPTED: 1}
    await svc.stop(drain_timeout=1)


async def test_non_final_runner_result_is_internal_error() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    result = await svc.wait(svc.submit(submission("pending")))
    assert result.status is Status.INTERNAL_ERROR
    assert result.message is not None and "Running" in result.message
    await svc.stop(drain_timeout=1)


async def test_eviction_keeps_newest_finished() -> None:
    svc = Service(FakeRunner(), workers=1, queue_size=5, results_kept=2)
    await svc.start()
    ids = []
    for source in ("a", "b", "c"):
        ids.append(svc.submit(submission(source)))
        await svc.wait(ids[-1])
    assert svc.get(ids[0]) is None
    assert [svc.get(i).stdout for i in ids[1:]] == ["b", "c"]  # type: ignore[union-attr]
    await svc.stop(drain_timeout=1)


async def test_eviction_never_drops_queued_or_running(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=0)
    await svc.start()
    running = svc.submit(submission("r"))
    await until(lambda: svc.running == 1)
    queued = svc.submit(submission("q"))
    assert svc.get(running) == Result(status=Status.RUNNING)
    assert svc.get(queued) == Result(status=Status.QUEUED)
    # A waiter still gets its result although nothing finished is kept.
    waiter = asyncio.create_task(svc.wait(queued))
    gate.set()
    assert (await waiter).stdout == "q"
    assert svc.get(running) is None and svc.get(queued) is None
    await svc.stop(drain_timeout=1)


async def test_stop_drains_jobs(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    running = svc.submit(submission("r"))
    queued = svc.submit(submission("q"))
    await until(lambda: svc.running == 1)
    asyncio.get_running_loop().call_later(0.05, gate.set)
    await svc.stop(drain_timeout=5)
    assert svc.get(running) == Result(status=Status.ACCEPTED, stdout="r", exit_code=0)
    assert svc.get(queued) == Result(status=Status.ACCEPTED, stdout="q", exit_code=0)
    assert not svc.healthy
    with pytest.raises(ShuttingDown):
        svc.submit(submission())


async def test_stop_cancels_after_timeout(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=10)
    await svc.start()
    running = svc.submit(submission("r"))
    queued = svc.submit(submission("q"))
    await until(lambda: svc.running == 1)
    waiter = asyncio.create_task(svc.wait(queued))
    await svc.stop(drain_timeout=0.05)  # the gate never opens
    for job_id in (running, queued):
        result = svc.get(job_id)
        assert result is not None and result.status is Status.INTERNAL_ERROR
        assert result.message and "shut down" in result.message
    assert (await waiter).status is Status.INTERNAL_ERROR
    assert svc.running == 0


async def test_healthy() -> None:
    runner = FakeRunner()
    svc = Service(runner, workers=2, queue_size=5, results_kept=10)
    assert not svc.healthy  # no workers yet
    await svc.start()
    assert svc.healthy
    runner.healthy = False
    assert not svc.healthy
    runner.healthy = True
    svc._workers[0].cancel()
    await asyncio.sleep(0)
    assert not svc.healthy  # a dead worker is not a healthy service
    await svc.stop(drain_timeout=0.1)
    assert not svc.healthy


def test_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        Service(FakeRunner(), workers=0, queue_size=1, results_kept=1)
    with pytest.raises(ValueError):
        Service(FakeRunner(), workers=1, queue_size=1, results_kept=1, budget_bytes=0)


# -- the byte budget and dropped inputs --------------------------------------------------


def sized(source: str, stdin: str = "", expected: str | None = None) -> Submission:
    return Submission(language="python3", source=source, limits=LIMITS, stdin=stdin,
                      expected_output=expected)


async def test_budget_counts_input_bytes_of_unfinished_jobs(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=10, results_kept=10,
                  budget_bytes=100)
    await svc.start()
    # Source, stdin and expected output, counted as UTF-8: "é" is two bytes.
    running = svc.submit(sized("a" * 10, "é" * 15, "x" * 10))  # 10 + 30 + 10 = 50
    await until(lambda: svc.running == 1)
    assert svc.held_bytes == 50  # a running job still holds its input
    queued = svc.submit(sized("b" * 40))  # 90
    with pytest.raises(QueueFull, match="budget of 100 bytes"):
        svc.submit(sized("c" * 11))  # 101: over, although the job count has room
    assert (svc.queued, svc.held_bytes, len(svc._jobs)) == (1, 90, 2)  # nothing stored
    svc.submit(sized("d" * 10))  # exactly 100 fits
    gate.set()
    await svc.wait(running)
    await svc.wait(queued)
    await until(lambda: svc.queued == 0 and svc.running == 0)
    assert svc.held_bytes == 0
    svc.submit(sized("e" * 100))  # the whole budget is free again
    await svc.stop(drain_timeout=1)


async def test_a_finished_job_keeps_only_its_result(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=10, results_kept=10,
                  budget_bytes=10 * 1024 * 1024)
    await svc.start()
    job_id = svc.submit(sized("src", "i" * (1024 * 1024), "expected"))
    assert svc._jobs[job_id].submission is not None
    gate.set()
    result = await svc.wait(job_id)
    assert result.stdout == "src"
    job = svc._jobs[job_id]
    assert job.submission is None and job.result == result
    assert svc.held_bytes == 0
    await svc.stop(drain_timeout=1)


async def test_jobs_ended_by_shutdown_drop_their_input(gate: asyncio.Event) -> None:
    svc = Service(FakeRunner(gate), workers=1, queue_size=5, results_kept=10,
                  budget_bytes=1000)
    await svc.start()
    running = svc.submit(sized("r", "x" * 100))
    queued = svc.submit(sized("q", "y" * 100))
    await until(lambda: svc.running == 1)
    await svc.stop(drain_timeout=0.05)  # the gate never opens
    for job_id in (running, queued):
        assert svc._jobs[job_id].submission is None
    assert svc.held_bytes == 0
