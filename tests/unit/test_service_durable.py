"""The service over a journal: jobs journaled before their id is returned, recovery in
order after a crash, the attempts cap, results across a restart, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sandboxd.journal import Journal, NewJob
from sandboxd.model import Result, Status
from sandboxd.service import JournalUnavailable, ResultExpired, Service
from tests.unit.service_fakes import Clock, FakeNotifier, FakeRunner, submission, until


async def open_service(path: Path, runner: FakeRunner, **kwargs: object) -> Service:
    journal = await Journal.open(path)
    svc = Service(runner, workers=kwargs.pop("workers", 1), queue_size=20,  # type: ignore[arg-type]
                  journal=journal, **kwargs)  # type: ignore[arg-type]
    await svc.start()
    return svc


async def close_service(svc: Service, deadline_s: float = 1.0) -> None:
    await svc.stop(deadline_s)
    assert svc._journal is not None
    await svc._journal.close()


async def crash(svc: Service) -> None:
    """What SIGKILL leaves: the journal as it is now, nothing the service would do on
    its way out (no shutdown, no re-queueing)."""
    assert svc._journal is not None
    await svc._journal.close()  # commits what was already handed to it, then refuses
    for task in (svc._dispatcher, svc._housekeeper, *svc._tasks.values()):
        if task is not None:
            task.cancel()
    await asyncio.gather(*(t for t in (svc._dispatcher, svc._housekeeper,
                                        *svc._tasks.values()) if t), return_exceptions=True)


async def states(path: Path) -> dict[str, tuple[str, int]]:
    journal = await Journal.open(path)
    try:
        return {r.id: (r.state, r.attempts) for r in await journal.load()}
    finally:
        await journal.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sandboxd.db"


async def test_a_job_is_journaled_before_its_id_is_returned(path: Path) -> None:
    gate = asyncio.Event()
    svc = await open_service(path, FakeRunner(gate))
    job_id = await svc.submit(submission("x"))
    assert svc._journal is not None
    assert [r.id for r in await svc._journal.load()] == [job_id]
    await crash(svc)
    assert (await states(path))[job_id][0] in ("queued", "running")


async def test_queued_jobs_run_again_in_their_order_after_a_crash(path: Path) -> None:
    gate = asyncio.Event()
    first = FakeRunner(gate)
    svc = await open_service(path, first)
    ids = [await svc.submit(submission(str(i))) for i in range(6)]
    await until(lambda: first.sources == ["0"])
    await crash(svc)
    assert await states(path) == {ids[0]: ("running", 1),
                                  **{i: ("queued", 0) for i in ids[1:]}}

    second = FakeRunner()
    svc = await open_service(path, second)
    results = [await svc.wait(i) for i in ids]
    assert [r.stdout for r in results] == [str(i) for i in range(6)]
    assert second.sources == [str(i) for i in range(6)]  # the running one re-run first
    assert (await svc._journal.load())[0].attempts == 2  # type: ignore[union-attr]
    await close_service(svc)
    assert {s for s, _ in (await states(path)).values()} == {"finished"}


async def test_a_job_that_keeps_killing_the_daemon_ends_as_internal_error(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = FakeNotifier()
    job_id = None
    for attempt in range(1, 4):
        runner = FakeRunner(asyncio.Event())  # the run never ends: the daemon dies in it
        svc = await open_service(path, runner, max_attempts=3)
        if job_id is None:
            job_id = await svc.submit(submission("deadly", callback_url="http://127.0.0.1:1/"))
            other = await svc.submit(submission("innocent"))
        await until(lambda runner=runner: runner.sources[:1] == ["deadly"])
        await crash(svc)
        assert (await states(path))[job_id] == ("running", attempt)

    runner = FakeRunner()
    with caplog.at_level(logging.INFO, logger="sandboxd.service"):
        svc = await open_service(path, runner, max_attempts=3, notifier=notifier)
    result = svc.get(job_id)  # final before anything runs
    assert result is not None and result.status is Status.INTERNAL_ERROR
    assert result.message is not None
    assert "daemon died while running this job, 3 times" in result.message
    assert "server.max_attempts = 3" in result.message
    assert (await svc.wait(other)).stdout == "innocent"
    assert runner.sources == ["innocent"]
    assert notifier.sent == [(job_id, "http://127.0.0.1:1/", result)]
    assert any("1 given up" in r.getMessage() for r in caplog.records)
    await close_service(svc)


async def test_results_are_served_across_a_restart_until_their_ttl(path: Path) -> None:
    clock = Clock()
    svc = await open_service(path, FakeRunner(), result_ttl_s=100, clock=clock)
    old = await svc.submit(submission("old"))
    await svc.wait(old)
    clock.now += 60
    young = await svc.submit(submission("young"))
    young_result = await svc.wait(young)
    await close_service(svc)

    clock.now += 50  # old is 110 s old, young 50 s
    runner = FakeRunner()
    svc = await open_service(path, runner, result_ttl_s=100, clock=clock)
    assert svc.get(young) == young_result
    with pytest.raises(ResultExpired):  # the id key is in the journal: still "expired"
        svc.get(old)
    assert runner.started == []
    assert svc._journal is not None
    assert [r.id for r in await svc._journal.load()] == [young]  # the old row is pruned
    await close_service(svc)


async def test_results_over_the_bounds_are_pruned_at_start(path: Path) -> None:
    svc = await open_service(path, FakeRunner())
    ids = [await svc.submit(submission(str(i))) for i in range(4)]
    for i in ids:
        await svc.wait(i)
    await close_service(svc)
    svc = await open_service(path, FakeRunner(), results_kept=2)
    assert [svc.get(i).stdout for i in ids[2:]] == ["2", "3"]  # type: ignore[union-attr]
    for i in ids[:2]:
        with pytest.raises(ResultExpired):
            svc.get(i)
    await until(lambda: not svc._background)
    assert svc._journal is not None
    assert [r.id for r in await svc._journal.load()] == ids[2:]
    await close_service(svc)


async def test_evicted_results_leave_the_journal(path: Path) -> None:
    svc = await open_service(path, FakeRunner(), results_kept=1)
    ids = [await svc.submit(submission(str(i))) for i in range(3)]
    for i in ids:
        await svc.wait(i)
    await until(lambda: not svc._background)
    assert svc._journal is not None
    assert [r.id for r in await svc._journal.load()] == ids[2:]
    await close_service(svc)


async def test_stop_keeps_queued_and_cut_short_jobs_for_the_next_start(path: Path) -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    svc = await open_service(path, runner, workers=2)
    ids = [await svc.submit(submission(str(i))) for i in range(5)]
    await until(lambda: runner.sources == ["0", "1"])
    waiter = asyncio.create_task(svc.wait(ids[4]))
    await svc.stop(0.05)  # the gate never opens: both running jobs are cut short
    assert sorted(runner.cancelled) == ["0", "1"]
    assert await waiter == Result(status=Status.QUEUED)  # released, not left hanging
    for job_id in ids:
        assert svc.get(job_id) == Result(status=Status.QUEUED)
    assert svc._journal is not None
    await svc._journal.close()
    # Not counted as attempts: a shutdown is not a crash.
    assert await states(path) == {i: ("queued", 0) for i in ids}

    runner = FakeRunner()
    svc = await open_service(path, runner, workers=1)
    assert [(await svc.wait(i)).stdout for i in ids] == ["0", "1", "2", "3", "4"]
    assert runner.sources == ["0", "1", "2", "3", "4"]
    await close_service(svc)


async def test_stop_lets_running_jobs_finish_within_the_deadline(path: Path) -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    svc = await open_service(path, runner)
    running = await svc.submit(submission("r"))
    queued = await svc.submit(submission("q"))
    await until(lambda: runner.sources == ["r"])
    asyncio.get_running_loop().call_later(0.05, gate.set)
    await svc.stop(10)
    assert svc.get(running) == Result(status=Status.ACCEPTED, stdout="r", exit_code=0)
    assert svc.get(queued) == Result(status=Status.QUEUED)
    assert runner.sources == ["r"]
    assert svc._journal is not None
    await svc._journal.close()
    assert await states(path) == {running: ("finished", 1), queued: ("queued", 0)}


async def test_a_journal_that_cannot_write_accepts_nothing(path: Path) -> None:
    svc = await open_service(path, FakeRunner())
    assert svc._journal is not None
    await svc._journal.close()  # from now on every write fails
    with pytest.raises(JournalUnavailable, match="cannot record"):
        await svc.submit(submission())
    with pytest.raises(JournalUnavailable):
        await svc.submit_many([submission("a"), submission("b")])
    assert (len(svc._jobs), svc.queued, svc.held_bytes) == (0, 0, 0)
    await svc.stop(1)


async def test_an_unwritable_journal_is_a_health_problem(path: Path) -> None:
    svc = await open_service(path, FakeRunner())
    assert svc._journal is not None and svc.health_problem() is None
    svc._journal.problem = "disk I/O error"  # what a failed commit leaves
    assert svc.health_problem() == "the journal cannot be written: disk I/O error"
    await close_service(svc)


async def test_an_unreadable_journaled_job_ends_as_internal_error(path: Path) -> None:
    journal = await Journal.open(path)
    await journal.accept([NewJob("a" * 32, 1.0, submission("x"))])

    def damage(conn: object) -> None:
        conn.execute("UPDATE jobs SET submission = ?", (b'{"future_field": 1}',))  # type: ignore[attr-defined]

    await journal._call(damage)  # type: ignore[arg-type]
    await journal.close()
    runner = FakeRunner()
    svc = await open_service(path, runner)
    result = svc.get("a" * 32)
    assert result is not None and result.status is Status.INTERNAL_ERROR
    assert result.message is not None and "cannot be read" in result.message
    assert runner.started == []
    await close_service(svc)


async def test_a_batch_is_one_transaction(path: Path) -> None:
    gate = asyncio.Event()
    svc = await open_service(path, FakeRunner(gate))
    assert svc._journal is not None
    before = svc._journal.commits
    ids = await svc.submit_many([submission(str(i)) for i in range(10)])
    assert svc._journal.commits == before + 1
    assert [r.id for r in await svc._journal.load()][:10] == ids
    gate.set()
    await close_service(svc)


async def test_a_cancelled_submit_still_runs_its_journaled_job(path: Path) -> None:
    runner = FakeRunner()
    svc = await open_service(path, runner)
    task = asyncio.create_task(svc.submit(submission("orphan")))
    await asyncio.sleep(0)  # the journal write is under way
    task.cancel()
    await until(lambda: runner.sources == ["orphan"])
    [job_id] = list(svc._jobs)
    assert (await svc.wait(job_id)).stdout == "orphan"
    await close_service(svc)
