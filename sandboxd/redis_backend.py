"""The job service over Redis: several sandboxd hosts share one queue and result store.

The same interface as service.Service (what api.JobService names), so API, runner and
jail do not know which one runs. The mechanism is Redis Streams:

- a submission is appended to the stream `{prefix}:jobs` (its id, submission, time)
  with its pending result written first, so any host can answer for it at once;
- every daemon is one consumer of the group `sandboxd` and reads a new entry only
  when one of its own workers is free (each host runs at most its worker count);
- a running job's entry is re-claimed by its host every third of the visibility
  timeout, which keeps its idle time low; the entries of a host that stopped doing so
  (killed, hung, cut off) are taken over by the others with XAUTOCLAIM and run again
  from scratch, with an attempt count (after `server.max_attempts`: Internal Error);
- a job is acknowledged (XACK + XDEL) only in the transaction (a Lua script) that
  stores its final result (with the result TTL) and publishes its id on
  `{prefix}:done`, where every host's `?wait=true` waiters are woken; if a host that
  was only cut off finishes a job another host took over, the first result stored
  stands (the later one is dropped, and sends no webhook);
- the result cache is shared (`{prefix}:cache:KEY`, with the cache TTL), so an
  identical submission on another host is a hit;
- the queue bound is the cluster's: entries not yet delivered to any host.

If Redis goes away, submissions and /health answer 503 with the reason; jobs that run
keep running and their results are written once Redis answers again (retried with
backoff, never dropped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from sandboxd.cache import cache_key, is_cacheable
from sandboxd.callbacks import CallbackNotifier
from sandboxd.codec import DecodeError
from sandboxd.config import Config
from sandboxd.journal import decode_result, decode_submission, encode_result, encode_submission
from sandboxd.model import Result, Status, Submission, pending
from sandboxd.observer import Observer
from sandboxd.service import (
    JobIds,
    JournalUnavailable,
    QueueFull,
    ResultExpired,
    Runner,
    ShuttingDown,
    Stats,
)

log = logging.getLogger(__name__)

GROUP = "sandboxd"
# How long one XREADGROUP blocks; also how soon a stopping host stops reading.
READ_BLOCK_MS = 1000
# Cluster gauges (queue depth, oldest waiting job) are refreshed this often.
GAUGES_S = 1.0
MAX_BACKOFF_S = 5.0
STOP_GRACE_S = 5.0

T = TypeVar("T")

# A job taken over from a host that was only cut off (not dead) may end on both hosts.
# The first final result stored stands: a later one neither replaces it nor is
# announced (so its host sends no webhook). The entry is acknowledged and deleted either
# way. KEYS: the job's hash, the stream, the cache key (or the job's hash again, unused);
# ARGV: group, entry id, result, finished_at, result TTL ms, channel, job id, cached
# result ('' for none), cache TTL ms. Returns 1 if stored, 0 if one was there already.
STORE_FIRST_RESULT = """
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[3], 'finished_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if ARGV[8] ~= '' then redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[9]) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""
# Marks a job Running unless its final result is stored already (by a host that ended
# it while this one was taking it over): a final result is never turned back.
MARK_RUNNING = """
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[1])
return 1
"""


class RedisStartupError(Exception):
    """Redis cannot be used at start-up; the message says why."""


class RedisService:
    """service.Service's interface over Redis Streams (see the module docstring)."""

    def __init__(self, runner: Runner, client: redis.Redis, *, workers: int, queue_size: int,
                 result_ttl_s: float, max_attempts: int, visibility_timeout_s: float,
                 cache_ttl_s: float | None, observer: Observer | None = None,
                 notifier: CallbackNotifier | None = None, prefix: str = "sandboxd",
                 clock: Callable[[], float] = time.time):
        """`cache_ttl_s` None: no result cache."""
        if workers < 1 or queue_size < 1 or max_attempts < 1 or not visibility_timeout_s > 0:
            raise ValueError("need workers >= 1, queue_size >= 1, max_attempts >= 1, "
                             "visibility_timeout_s > 0")
        self._runner = runner
        self._redis = client
        self._workers = workers
        self._queue_size = queue_size
        self._result_ttl_s = result_ttl_s
        self._max_attempts = max_attempts
        self._visibility_ms = int(visibility_timeout_s * 1000)
        self._cache_ttl_s = cache_ttl_s
        self._observer = observer or Observer()
        self._notifier = notifier
        self._prefix = prefix
        self._clock = clock
        self._stream = f"{prefix}:jobs"
        self._channel = f"{prefix}:done"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._ids = JobIds()
        self._slots = asyncio.Semaphore(workers)
        self._running: dict[str, str] = {}  # job id -> stream entry id, on this host
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._problem: str | None = "the service has not started"
        self._accepting = True
        self._stopping = False
        self._stopped = asyncio.Event()
        self._queued = 0  # the cluster's waiting jobs, as last read
        self.oldest_waiting_s = 0.0
        self._finished_by_status: Counter[Status] = Counter()
        self._scripts: dict[str, Any] = {}  # Lua source -> registered script

    @classmethod
    def from_config(cls, runner: Runner, config: Config, client: redis.Redis, *,
                    observer: Observer | None = None,
                    notifier: CallbackNotifier | None = None) -> RedisService:
        server = config.server
        return cls(runner, client, workers=server.worker_count, queue_size=server.queue_size,
                   result_ttl_s=server.result_ttl_s, max_attempts=server.max_attempts,
                   visibility_timeout_s=config.queue.visibility_timeout_s,
                   cache_ttl_s=config.cache.ttl_s if config.cache.enabled else None,
                   observer=observer, notifier=notifier)

    # -- keys -------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _cache_key(self, key: str) -> str:
        return f"{self._prefix}:cache:{key}"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (RedisStartupError if Redis cannot be used), then consume."""
        try:
            await self._redis.ping()
            await self._ensure_group()
            # One id key for the cluster: any host tells an expired id from a made-up one.
            await self._redis.set(f"{self._prefix}:id_key", secrets.token_bytes(32), nx=True)
            key = await self._redis.get(f"{self._prefix}:id_key")
        except RedisError as e:
            raise RedisStartupError(f"cannot use Redis: {e}") from None
        self._ids = JobIds(key if isinstance(key, bytes) else None)
        self._problem = None
        listening = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._consume(), name="sandboxd-redis-consumer"),
            asyncio.create_task(self._renew(), name="sandboxd-redis-renewer"),
            asyncio.create_task(self._listen(listening), name="sandboxd-redis-listener"),
            asyncio.create_task(self._watch(), name="sandboxd-redis-watch"),
        ]
        await listening.wait()

    async def stop(self, deadline_s: float) -> None:
        """Refuse new jobs, take no more, let the running ones finish for `deadline_s`;
        those still running then are left pending in Redis (another host, or this one
        after its restart, runs them again once their visibility timeout passes)."""
        if self._stopping:
            return
        self._accepting = False
        self._stopping = True
        consumer = self._loops[0] if self._loops else None
        if consumer is not None:
            consumer.cancel()
            await asyncio.wait([consumer], timeout=STOP_GRACE_S)
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=deadline_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=STOP_GRACE_S)
        for task in self._loops[1:]:
            task.cancel()
        # Bounded: a connection stuck in a read must not hold the daemon's exit.
        if self._loops[1:]:
            await asyncio.wait(self._loops[1:], timeout=STOP_GRACE_S)
        self._stopped.set()
        self._wake_all()
        try:
            await asyncio.wait_for(self._redis.aclose(), STOP_GRACE_S)
        except (RedisError, TimeoutError):
            pass

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- submissions ----------------------------------------------------------------

    async def submit(self, submission: Submission) -> str:
        return (await self.submit_many([submission]))[0]

    async def submit_many(self, submissions: list[Submission]) -> list[str]:
        """All or none: one transaction appends the batch (MULTI/EXEC)."""
        if not submissions:
            return []
        if not self._accepting:
            raise ShuttingDown("the service is shutting down")
        if self._problem is not None:
            raise JournalUnavailable(f"the job store is unavailable: {self._problem}")
        try:
            return await self._submit(submissions)
        except RedisError as e:
            self._lost(e)
            raise JournalUnavailable(f"the job store (Redis) cannot record the job: {e}") \
                from None

    async def _submit(self, submissions: list[Submission]) -> list[str]:
        keys = [cache_key(s) if s.cache and self._cache_ttl_s is not None else None
                for s in submissions]
        hits: list[Result | None] = [None] * len(submissions)
        wanted = [k for k in keys if k is not None]
        if wanted:
            stored = dict(zip(wanted, await self._redis.mget(
                [self._cache_key(k) for k in wanted]), strict=True))
            for i, k in enumerate(keys):
                if k is not None and stored.get(k) is not None:
                    hits[i] = dataclasses.replace(_decode_or_none(stored[k]) or pending(
                        Status.QUEUED), cached=True)
                    if not hits[i].status.is_final:  # type: ignore[union-attr]
                        hits[i] = None
        count = sum(h is None for h in hits)
        waiting = await self._waiting_now()
        if waiting + count > self._queue_size:
            if len(submissions) == 1:
                raise QueueFull(f"the queue is full ({self._queue_size} jobs waiting across "
                                "all hosts)")
            raise QueueFull(f"the queue has room for {max(0, self._queue_size - waiting)} "
                            f"more jobs (of {self._queue_size}), the batch needs {count}")
        ids = [self._ids.new() for _ in submissions]
        now = self._clock()
        ttl = _ttl_ms(self._result_ttl_s)
        async with self._redis.pipeline(transaction=True) as pipe:
            for job_id, submission, hit in zip(ids, submissions, hits, strict=True):
                if hit is not None:
                    pipe.hset(self._job_key(job_id), mapping={
                        "result": encode_result(hit), "finished_at": repr(now)})
                    pipe.pexpire(self._job_key(job_id), ttl)
                    continue
                pipe.hset(self._job_key(job_id), mapping={
                    "result": encode_result(pending(Status.QUEUED)), "attempts": 0})
                pipe.xadd(self._stream, {"id": job_id, "submission":
                                         encode_submission(submission),
                                         "accepted_at": repr(now)})
            await pipe.execute()
        for submission, hit in zip(submissions, hits, strict=True):
            self._observer.job_accepted(submission)
            if self._cache_ttl_s is not None and submission.cache:
                self._observer.cache_lookup(hit is not None)
        for job_id, submission, hit in zip(ids, submissions, hits, strict=True):
            if hit is not None:
                self._count_finished(job_id, submission, hit, now, run_s=None, at=now)
        return ids

    async def _waiting_now(self) -> int:
        """Entries of the stream not delivered to any host yet: acknowledged entries are
        deleted, so it is the stream's length less the entries pending on a host."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xlen(self._stream)
            pipe.xpending(self._stream, GROUP)
            length, summary = await pipe.execute()
        return max(0, int(length) - int(summary["pending"]))

    async def get(self, job_id: str) -> Result | None:
        """The job's result (pending or final) from Redis, whichever host ran it."""
        try:
            raw = await self._redis.hget(self._job_key(job_id), "result")
        except RedisError as e:
            self._lost(e)
            raise JournalUnavailable(f"the job store (Redis) cannot be read: {e}") from None
        if raw is None:
            if self._ids.issued(job_id):
                raise ResultExpired(self._expired_message(job_id))
            return None
        return _decode_or_none(raw) or _internal_error("the stored result cannot be read")

    async def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """Waits for the `done` notification (any host's), not by polling."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            result = await self.get(job_id)
            if result is None:
                raise KeyError(job_id)
            if result.status.is_final or self._stopped.is_set():
                return result
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                pass
            result = await self.get(job_id)
            if result is None:
                raise KeyError(job_id)
            return result
        finally:
            futures = self._waiters.get(job_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiters.pop(job_id, None)

    # -- health and counters --------------------------------------------------------

    def health_problem(self) -> str | None:
        if self._stopping:
            return "the service is shutting down"
        if self._problem is not None:
            return self._problem
        if any(t.done() for t in self._loops):
            return "a Redis worker loop stopped (see the log)"
        if not self._runner.healthy:
            return "the sandbox cannot run jobs (fork server down or cgroups unusable)"
        return None

    @property
    def healthy(self) -> bool:
        return self.health_problem() is None

    def stats(self) -> Stats:
        """Queued: the cluster's waiting jobs (as of the last refresh, at most a second
        old); running: this host's."""
        return Stats(queued=self._queued, running=len(self._running),
                     finished=dict(self._finished_by_status))

    def _lost(self, error: Exception) -> None:
        if self._problem is None:
            log.error("Redis unavailable: %s", error)
        self._problem = f"Redis unavailable: {error}"

    def _back(self) -> None:
        if self._problem is not None and not self._problem.startswith("the service"):
            log.info("Redis reachable again")
            self._problem = None

    async def _retrying(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        """`work` until Redis answers it, with backoff: what a job produced is kept."""
        delay = 0.1
        while True:
            try:
                value = await work()
            except RedisError as e:
                self._lost(e)
                log.warning("%s: Redis error (%s); retrying in %.1f s", what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self._back()
            return value

    # -- consuming --------------------------------------------------------------------

    async def _consume(self) -> None:
        """Whenever a worker of this host is free: first a job whose host stopped
        renewing its claim (looked for every third of the visibility timeout), else a
        new entry. One loop, so a free worker is never held by two readers at once."""
        delay = 0.1
        claim_every = max(self._visibility_ms / 3000, 0.2)
        next_claim = 0.0
        while True:
            await self._slots.acquire()
            try:
                if time.monotonic() >= next_claim:
                    taken = await self._claim_one()
                    if taken is not None:
                        self._start(*taken)
                        continue
                    next_claim = time.monotonic() + claim_every
                entries = await self._redis.xreadgroup(
                    GROUP, self.consumer, {self._stream: ">"}, count=1,
                    block=int(min(READ_BLOCK_MS, claim_every * 1000)))
            except ResponseError as e:
                self._slots.release()
                if "NOGROUP" in str(e):  # Redis lost its data: start the group again
                    await self._retrying("recreate the consumer group", self._ensure_group)
                    continue
                raise
            except RedisError as e:
                self._slots.release()
                self._lost(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            delay = 0.1
            self._back()
            replies: list[Any] = list(entries or [])
            messages = [m for _, stream_messages in replies for m in stream_messages]
            if not messages:
                self._slots.release()
                continue
            entry_id, fields = messages[0]
            self._start(entry_id, fields)

    async def _claim_one(self) -> tuple[Any, dict[bytes, bytes]] | None:
        """One entry idle longer than the visibility timeout, now ours; or None."""
        cursor: Any = "0-0"
        while True:
            reply: list[Any] = list(await self._redis.xautoclaim(
                self._stream, GROUP, self.consumer, self._visibility_ms, start_id=cursor,
                count=1))
            cursor, claimed = reply[0], reply[1]
            claimed = [(e, f) for e, f in claimed if f]  # f None: the entry was deleted
            if claimed:
                entry_id, fields = claimed[0]
                log.warning("job %s: its host stopped answering; running it here",
                            _text(fields.get(b"id", b"?")))
                return entry_id, fields
            if _text(cursor) == "0-0":
                return None

    async def _renew(self) -> None:
        """Renew this host's claims on the jobs it runs: XCLAIM of its own entries
        resets their idle time, so no other host takes them over."""
        interval = max(self._visibility_ms / 3000, 0.2)
        while True:
            await asyncio.sleep(interval)
            if not self._running:
                continue
            try:
                await self._redis.xclaim(self._stream, GROUP, self.consumer, 0,
                                         list(self._running.values()), justid=True)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
            except RedisError as e:
                self._lost(e)

    def _start(self, entry_id: Any, fields: dict[bytes, bytes]) -> None:
        job_id = _text(fields.get(b"id", b""))
        self._running[job_id] = _text(entry_id)
        task = asyncio.create_task(self._run(job_id, _text(entry_id), fields),
                                   name=f"sandboxd-job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Runs with one of this host's slots, taken by the caller; gives it back."""
        started = time.monotonic()
        released = False
        counted = False  # this start is in the attempt count

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._running.pop(job_id, None)
                self._slots.release()

        try:
            try:
                submission = decode_submission(fields[b"submission"])
                accepted_at = float(fields[b"accepted_at"])
            except (KeyError, ValueError, DecodeError) as e:
                await self._finish(job_id, entry_id, None, _internal_error(
                    f"the queued job cannot be read: {e}"), None, 0.0)
                return
            attempts = await self._retrying(
                f"job {job_id}: count its start",
                lambda: self._redis.hincrby(self._job_key(job_id), "attempts", 1))
            counted = True
            if attempts > self._max_attempts:
                await self._finish(job_id, entry_id, submission, _internal_error(
                    f"the host running this job stopped answering, {attempts - 1} times "
                    f"(server.max_attempts = {self._max_attempts}): it is not run again"),
                    None, accepted_at)
                return
            running = encode_result(pending(Status.RUNNING))
            await self._retrying(f"job {job_id}: mark it running", lambda: self._eval(
                MARK_RUNNING, [self._job_key(job_id)], [running]))
            self._observer.job_started(submission, max(0.0, self._clock() - accepted_at))
            try:
                result = await self._runner.run(submission)
                if not result.status.is_final:
                    raise RuntimeError(f"runner returned non-final status {result.status.value}")
            except Exception as e:
                log.exception("runner failed on submission %s", job_id)
                result = _internal_error(f"runner failed: {type(e).__name__}: {e}")
            # The slot is free for the next job while the result is being stored; the
            # entry stays claimed (renewed) until the store succeeds.
            self._slots.release()
            released = True
            counted = False  # ran to its end: a stop now only delays storing the result
            await self._finish(job_id, entry_id, submission, result,
                               time.monotonic() - started, accepted_at)
            self._running.pop(job_id, None)
        except asyncio.CancelledError:
            # Cut short by stop(): left pending, it runs again elsewhere; not a crash.
            if counted:
                try:
                    await asyncio.wait_for(self._redis.hincrby(
                        self._job_key(job_id), "attempts", -1), STOP_GRACE_S)
                except (RedisError, TimeoutError):
                    pass
            raise
        finally:
            release()

    async def _finish(self, job_id: str, entry_id: str, submission: Submission | None,
                      result: Result, run_s: float | None, accepted_at: float) -> None:
        """Store the result (with its TTL), acknowledge and delete the entry, announce
        it: one transaction, retried until Redis takes it."""
        finished_at = self._clock()
        encoded = encode_result(result)
        ttl = _ttl_ms(self._result_ttl_s)
        cache = None
        if submission is not None and self._cache_ttl_s is not None and submission.cache \
                and is_cacheable(submission, result):
            cache = self._cache_key(cache_key(submission))
        cached = encode_result(dataclasses.replace(result, cached=True)) \
            if cache is not None else b""
        job_key = self._job_key(job_id)

        def store() -> Awaitable[Any]:
            return self._eval(STORE_FIRST_RESULT, [job_key, self._stream, cache or job_key], [
                GROUP, entry_id, encoded, repr(finished_at), ttl, self._channel, job_id,
                cached, _ttl_ms(self._cache_ttl_s or 1)])

        stored = await asyncio.shield(self._retrying(f"job {job_id}: store its result", store))
        if not stored:
            log.warning("job %s: another host stored its result first; this run's result "
                        "is dropped", job_id)
            return
        if submission is not None:
            self._count_finished(job_id, submission, result, accepted_at, run_s, finished_at)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Run a Lua `script` (atomic in Redis), sent by its SHA once Redis knows it."""
        return self._scripts.setdefault(script, self._redis.register_script(script))(
            keys=keys, args=args)

    def _count_finished(self, job_id: str, submission: Submission, result: Result,
                        accepted_at: float, run_s: float | None, at: float) -> None:
        self._finished_by_status[result.status] += 1
        self._observer.job_finished(job_id, submission, result,
                                    total_s=max(0.0, at - accepted_at), run_s=run_s)
        # Only the host that stored the result notifies: a webhook is delivered once.
        if submission.callback_url is not None and self._notifier is not None:
            self._notifier.notify(job_id, submission.callback_url, result,
                                  submission.callback_format)

    # -- notifications and gauges -----------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        """Wake this host's waiters when any host announces a result."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                listening.set()
                delay = 0.1
                # A result may have been stored while we were not subscribed.
                self._wake_all()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake(_text(message["data"]))
            except RedisError as e:
                self._lost(e)
                listening.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, AttributeError):
                    pass

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._wake(job_id)

    async def _watch(self) -> None:
        """Refresh the cluster gauges; notice Redis going and coming back."""
        while True:
            try:
                self._queued = await self._waiting_now()
                self.oldest_waiting_s = await self._oldest_waiting_s()
                self._back()
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    await self._retrying("recreate the consumer group", self._ensure_group)
                else:
                    self._lost(e)
            except RedisError as e:
                self._lost(e)
            await asyncio.sleep(GAUGES_S)

    async def _oldest_waiting_s(self) -> float:
        """Age of the oldest entry not delivered yet (stream ids start with the ms)."""
        groups = await self._redis.xinfo_groups(self._stream)
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None:
            return 0.0
        last = _text(group["last-delivered-id"])
        entries = await self._redis.xrange(self._stream, min=f"({last}", count=1)
        if not entries:
            return 0.0
        ms = int(_text(entries[0][0]).split("-")[0])
        return max(0.0, self._clock() - ms / 1000)

    def _expired_message(self, job_id: str) -> str:
        return (f"the result of submission {job_id!r} has expired: finished results are kept "
                f"{self._result_ttl_s:g} s (server.result_ttl_s)")


def _ttl_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_or_none(raw: bytes | str | None) -> Result | None:
    if raw is None:
        return None
    try:
        return decode_result(raw.encode() if isinstance(raw, str) else raw)
    except (ValueError, DecodeError):
        return None


def _internal_error(message: str) -> Result:
    return Result(status=Status.INTERNAL_ERROR, message=message)


async def connect(url: str) -> redis.Redis:
    """A client for `url`; RedisStartupError if Redis does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
        await client.ping()
    except (RedisError, ValueError) as e:
        raise RedisStartupError(f"cannot reach Redis at {url}: {e}") from None
    return client
