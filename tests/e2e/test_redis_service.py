"""RedisService (redis_backend.py) against a real redis-server, with the fake runner:
the rules the daemons' tests cannot reach quickly — attempts, the cluster's queue
bound, a stop cutting a job short, Redis lost and back — in seconds, not minutes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from sandboxd.model import CallbackFormat, Status, Submission
from sandboxd.redis_backend import GROUP, RedisService, RedisStartupError, connect
from sandboxd.service import JournalUnavailable, QueueFull, ResultExpired
from tests.e2e.conftest import free_port
from tests.e2e.redis_fixtures import RedisServer, require_redis_server
from tests.unit.service_fakes import FakeNotifier, FakeRunner, submission

BOUND_S = 60  # a generous bound for anything that should happen, not a measurement


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def services(redis_server: RedisServer) -> AsyncIterator[list[RedisService]]:
    """Started services are stopped (and their clients closed) at the end."""
    made: list[RedisService] = []
    yield made
    for service in made:
        await service.stop(0)


async def _service(made: list[RedisService], url: str, runner: FakeRunner, **kwargs):
    options = dict(workers=1, queue_size=100, result_ttl_s=600, max_attempts=3,
                   visibility_timeout_s=1.0, cache_ttl_s=600.0)
    options.update(kwargs)
    service = RedisService(runner, await connect(url), **options)
    await service.start()
    made.append(service)
    return service


async def test_a_job_runs_on_one_service_and_is_read_and_awaited_on_another(
        redis_server, services) -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate)
    a = await _service(services, redis_server.url, runner)
    b = await _service(services, redis_server.url, FakeRunner(asyncio.Event()), workers=1)
    job_id = await b.submit(submission("hello", cache=False))
    waiting = asyncio.ensure_future(b.wait(job_id, BOUND_S))
    # Woken by the notification, not by the timeout: the wait ends long before BOUND_S.
    await asyncio.sleep(0.2)
    assert not waiting.done()
    gate.set()
    result = await asyncio.wait_for(waiting, BOUND_S / 2)
    assert result.status is Status.ACCEPTED and result.stdout == "hello"
    assert await a.get(job_id) == result
    assert runner.sources.count("hello") + b._runner.sources.count("hello") == 1  # noqa: SLF001


async def test_an_id_never_issued_is_unknown_and_an_expired_one_says_so(
        redis_server, services) -> None:
    a = await _service(services, redis_server.url, FakeRunner(), result_ttl_s=0.5)
    assert await a.get("0" * 32) is None
    job_id = await a.submit(submission("x", cache=False))
    assert (await a.wait(job_id, BOUND_S)).status is Status.ACCEPTED
    client = redis.Redis.from_url(redis_server.url)
    await client.delete(f"sandboxd:job:{job_id}")  # what the TTL does, without the wait
    await client.aclose()
    with pytest.raises(ResultExpired, match="has expired"):
        await a.get(job_id)


async def test_the_queue_bound_is_the_clusters(redis_server, services) -> None:
    gate = asyncio.Event()
    a = await _service(services, redis_server.url, FakeRunner(gate), queue_size=2)
    b = await _service(services, redis_server.url, FakeRunner(gate), queue_size=2)
    ids = [await a.submit(submission(f"j{i}", cache=False)) for i in range(2)]
    # Both services took one each (nothing is left undelivered); two more wait, then
    # the cluster is full for both.
    for _ in range(BOUND_S * 10):
        if await a._waiting_now() == 0:  # noqa: SLF001
            break
        await asyncio.sleep(0.1)
    assert len(a._running) == len(b._running) == 1, ids  # noqa: SLF001
    await a.submit(submission("w1", cache=False))
    await b.submit(submission("w2", cache=False))
    for service in (a, b):
        with pytest.raises(QueueFull, match=r"the queue is full \(2 jobs waiting"):
            await service.submit(submission("over", cache=False))
    with pytest.raises(QueueFull, match="room for 0 more jobs"):
        await b.submit_many([submission("x", cache=False), submission("y", cache=False)])
    gate.set()


async def test_a_dead_consumers_job_is_claimed_and_given_up_after_max_attempts(
        redis_server, services) -> None:
    client = redis.Redis.from_url(redis_server.url)
    busy = FakeRunner(asyncio.Event())
    a = await _service(services, redis_server.url, busy, max_attempts=2)
    await a.submit(submission("blocker", cache=False))
    for _ in range(BOUND_S * 10):
        if busy.sources:
            break
        await asyncio.sleep(0.1)
    job_id = await a.submit(submission("again", cache=False))
    # A consumer that is not A takes the job first (A's one worker is busy)...
    await a.stop(0)
    services.remove(a)
    entries = await client.xreadgroup(GROUP, "dead-host", {"sandboxd:jobs": ">"}, count=1)
    assert entries and entries[0][1][0][1][b"id"].decode() == job_id
    await client.hset(f"sandboxd:job:{job_id}", "attempts", 1)
    # ...and dies: a live service takes it over after the visibility timeout and runs it.
    runner = FakeRunner()
    b = await _service(services, redis_server.url, runner, max_attempts=2)
    result = await b.wait(job_id, BOUND_S)
    assert result.status is Status.ACCEPTED and runner.sources.count("again") == 1
    assert await client.hget(f"sandboxd:job:{job_id}", "attempts") == b"2"

    # A job whose hosts died max_attempts times is not run again: Internal Error.
    await b.stop(0)
    services.remove(b)
    job_id = await _service_less_submit(redis_server.url, submission("deadly", cache=False))
    await client.xreadgroup(GROUP, "dead-host", {"sandboxd:jobs": ">"}, count=1)
    await client.hset(f"sandboxd:job:{job_id}", "attempts", 2)
    runner = FakeRunner()
    c = await _service(services, redis_server.url, runner, max_attempts=2)
    result = await c.wait(job_id, BOUND_S)
    assert result.status is Status.INTERNAL_ERROR
    assert "2 times (server.max_attempts = 2)" in (result.message or "")
    assert "deadly" not in runner.sources
    await client.aclose()


async def _service_less_submit(url: str, job: object) -> Any:
    """Submitted through a service that never runs a job (no free worker ever)."""
    hold = asyncio.Event()
    service = RedisService(FakeRunner(hold), await connect(url), workers=1, queue_size=100,
                           result_ttl_s=600, max_attempts=3, visibility_timeout_s=1.0,
                           cache_ttl_s=None)
    await service.start()
    await service._slots.acquire()  # noqa: SLF001 - its one worker taken: it reads nothing
    try:
        if isinstance(job, list):  # several at once
            return await service.submit_many(job)
        return await service.submit(job)  # type: ignore[arg-type]
    finally:
        await service.stop(0)


async def test_a_job_cut_short_by_stop_runs_again_without_counting_an_attempt(
        redis_server, services) -> None:
    a_runner = FakeRunner(asyncio.Event())  # never finishes
    a = await _service(services, redis_server.url, a_runner)
    job_id = await a.submit(submission("cut", cache=False))
    for _ in range(BOUND_S * 10):
        if a_runner.sources:
            break
        await asyncio.sleep(0.1)
    await a.stop(0)
    services.remove(a)
    assert a_runner.cancelled == ["cut"]
    runner = FakeRunner()
    b = await _service(services, redis_server.url, runner)
    result = await b.wait(job_id, BOUND_S)
    assert result.status is Status.ACCEPTED and runner.sources == ["cut"]
    client = redis.Redis.from_url(redis_server.url)
    assert await client.hget(f"sandboxd:job:{job_id}", "attempts") == b"1"
    await client.aclose()


async def test_redis_lost_refuses_new_jobs_and_keeps_the_running_ones_result(
        redis_server, services) -> None:
    gate = asyncio.Event()
    a = await _service(services, redis_server.url, FakeRunner(gate))
    job_id = await a.submit(submission("kept", cache=False))
    for _ in range(BOUND_S * 10):
        if (await a.get(job_id)).status is Status.RUNNING:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.1)
    redis_server.stop()
    with pytest.raises(JournalUnavailable, match="Redis"):
        await a.submit(submission("refused", cache=False))
    assert "Redis" in (a.health_problem() or "")
    gate.set()  # the job ends while Redis is away: its result waits for Redis
    await asyncio.sleep(0.5)
    redis_server.start()
    result = await a.wait(job_id, BOUND_S)
    assert result.status is Status.ACCEPTED and result.stdout == "kept"
    for _ in range(BOUND_S * 10):
        if a.health_problem() is None:
            break
        await asyncio.sleep(0.1)
    assert a.health_problem() is None


async def test_an_identical_submission_is_a_cache_hit_on_another_service(
        redis_server, services) -> None:
    runner = FakeRunner()
    a = await _service(services, redis_server.url, runner)
    b = await _service(services, redis_server.url, runner)
    first = await a.submit(submission("same"))
    assert (await a.wait(first, BOUND_S)).cached is False
    second = await b.submit(submission("same"))
    hit = await b.get(second)
    assert hit is not None and hit.cached is True and hit.stdout == "same"
    assert runner.sources == ["same"]


async def test_unreachable_redis_is_a_start_up_error() -> None:
    with pytest.raises(RedisStartupError, match="cannot reach Redis"):
        await connect(f"redis://127.0.0.1:{free_port()}/0")


async def test_a_judge0_callback_keeps_its_format_through_redis(redis_server, services) -> None:
    """The host that runs the job calls back in the shape of the API it came through:
    the format travels with the submission in Redis (codec.py)."""
    url = "http://127.0.0.1:1/hook"
    job_id = await _service_less_submit(redis_server.url, submission(
        "called back", cache=False, callback_url=url, callback_format=CallbackFormat.JUDGE0))
    notifier = FakeNotifier()
    runner = FakeRunner()
    a = await _service(services, redis_server.url, runner, notifier=notifier)
    result = await a.wait(job_id, BOUND_S)
    assert result.status is Status.ACCEPTED
    for _ in range(BOUND_S * 10):  # notified right after the result is stored
        if notifier.sent:
            break
        await asyncio.sleep(0.1)
    assert notifier.sent == [(job_id, url, result)]
    assert notifier.formats == [CallbackFormat.JUDGE0]


class TaggedRunner(FakeRunner):
    """A FakeRunner whose stdout says which host ran the job."""

    def __init__(self, tag: str, gate: asyncio.Event) -> None:
        super().__init__(gate)
        self.tag = tag

    async def run(self, job):  # type: ignore[no-untyped-def]
        result = await super().run(job)
        return dataclasses.replace(result, stdout=f"{self.tag}: {result.stdout}")


async def test_a_job_run_on_two_hosts_keeps_the_first_result_and_calls_back_once(
        redis_server, services) -> None:
    """A host cut off from Redis longer than the visibility timeout (here: its renewals
    stopped) still runs its job while another takes it over: the first result stored
    stands, the later one neither replaces it nor sends a second webhook."""
    url = "http://127.0.0.1:1/hook"
    a_gate, b_gate = asyncio.Event(), asyncio.Event()
    a_runner, b_runner = TaggedRunner("A", a_gate), TaggedRunner("B", b_gate)
    a_notifier, b_notifier = FakeNotifier(), FakeNotifier()
    a = await _service(services, redis_server.url, a_runner, notifier=a_notifier)
    job_id = await a.submit(submission("twice", cache=False, callback_url=url))
    for _ in range(BOUND_S * 10):
        if a_runner.sources:
            break
        await asyncio.sleep(0.1)
    a._loops[1].cancel()  # noqa: SLF001 - A's renewer: as if A could not reach Redis
    b = await _service(services, redis_server.url, b_runner, notifier=b_notifier)
    for _ in range(BOUND_S * 10):  # B takes the job over once A's claim is idle 1 s
        if b_runner.sources:
            break
        await asyncio.sleep(0.1)
    assert b_runner.sources == ["twice"]
    b_gate.set()  # B ends first: its result is stored and announced...
    first = await a.wait(job_id, BOUND_S)
    assert (first.status, first.stdout) == (Status.ACCEPTED, "B: twice")
    a_gate.set()  # ...then A ends too: it must not replace it
    for _ in range(BOUND_S * 10):
        if not a._tasks:  # noqa: SLF001 - A's job task has ended
            break
        await asyncio.sleep(0.1)
    assert not a._tasks  # noqa: SLF001
    assert await b.get(job_id) == first
    assert [(sent_id, sent) for sent_id, _, sent in b_notifier.sent] == [(job_id, first)]
    assert a_notifier.sent == []
    client = redis.Redis.from_url(redis_server.url)
    assert await client.xlen("sandboxd:jobs") == 0
    await client.aclose()


async def test_a_job_queued_by_the_previous_release_runs_on_its_text_input(
        redis_server, services, monkeypatch) -> None:
    """The previous release wrote stdin and expected_output as JSON strings into the
    stream; this one reads them as that text's UTF-8 bytes (journal.decode_submission),
    and writes its own as base64 bytes, whatever the bytes."""
    import orjson

    from sandboxd import redis_backend
    from sandboxd.codec import to_plain

    this_release = redis_backend.encode_submission

    def both_releases(job: Submission) -> bytes:
        """The job "old" as the previous release wrote it, any other as this one does."""
        if job.source != "old":
            return this_release(job)
        plain = to_plain(job)
        plain.update(stdin=job.stdin.decode(), expected_output=(job.expected_output or b"")
                     .decode())
        return orjson.dumps(plain)

    monkeypatch.setattr(redis_backend, "encode_submission", both_releases)
    old_id, new_id = await _service_less_submit(redis_server.url, [
        submission("old", stdin="é\n".encode(), expected_output=b"ok", cache=False),
        submission("new", stdin=b"\xff\x00\xfe", cache=False)])
    monkeypatch.undo()
    runner = FakeRunner()
    service = await _service(services, redis_server.url, runner)
    assert (await service.wait(old_id, BOUND_S)).status is Status.ACCEPTED
    assert (await service.wait(new_id, BOUND_S)).status is Status.ACCEPTED
    started = {s.source: s for s in runner.started}
    assert (started["old"].stdin, started["old"].expected_output) == ("é\n".encode(), b"ok")
    assert started["new"].stdin == b"\xff\x00\xfe"
