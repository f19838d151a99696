"""The service core: accepted jobs, their queue, the jobs running, results, the cache.

A submission goes Queued -> Running -> final. At most `workers` jobs run at once (SPEC:
CPU-heavy jobs must not turn each other into wall-clock TLEs); the rest wait in
acceptance order. Whatever a runner does, every accepted job ends with a final Result:
a runner exception becomes an Internal Error, never a lost job or a dead worker.

Durability (with a journal, journal.py): a job is in the journal before `submit`
returns its id, its start (with the attempt count) before it runs, its result before
anyone sees it. `start()` recovers: queued jobs run again in their order, jobs that
were running run again from scratch unless they have been started `max_attempts`
times already (then they end as Internal Error: a job that kills the daemon must not
kill it forever), finished results are served until their TTL.

Bounds: the jobs waiting (`queue_size`) and the input bytes unfinished jobs hold
(`budget_bytes`) bound what is accepted; finished results are kept for `result_ttl_s`
and at most `results_kept` of them and `results_max_bytes` bytes, oldest first.
Unfinished jobs are never evicted, and a finished job keeps only its result.

Expired or never issued? Ids carry a MAC under a key kept in the journal (JobIds):
an id this daemon issued that it no longer holds has expired. Unlike a table of
tombstones, this costs no memory and never forgets.

The result cache (cache.py): a submission identical to a judged one gets its result
at once (`cached: true`, a new id, no queue); identical submissions arriving while one
of them waits or runs share that one run (single flight).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sandboxd.cache import ResultCache, cache_key, is_cacheable
from sandboxd.callbacks import CallbackNotifier
from sandboxd.config import Config
from sandboxd.journal import FinishedJob, JobRecord, Journal, JournalError, NewJob, encode_result
from sandboxd.model import Result, Status, Submission, pending
from sandboxd.observer import Observer

log = logging.getLogger(__name__)

# How often expired results and cache entries are dropped (at most), and how soon a
# journal that failed a write is tried again.
HOUSEKEEPING_S = 5.0


class Runner(Protocol):
    """Runs one submission to its final Result (runner.py, or a fake in tests)."""

    async def run(self, submission: Submission) -> Result: ...

    @property
    def healthy(self) -> bool: ...


class Unavailable(Exception):
    """The service cannot take a submission right now; the client may retry later."""


class QueueFull(Unavailable):
    pass


class ShuttingDown(Unavailable):
    pass


class JournalUnavailable(Unavailable):
    """The journal could not record the submission, so it was not accepted."""


class ResultExpired(KeyError):
    """The id was issued here, but its result is gone (TTL or bounds)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return self.message


class JobIds:
    """Ids that prove where they come from: 80 random bits and a 48-bit HMAC of them.

    An id whose MAC is right was issued under this key (the journal keeps it across
    restarts), so one that is not held any more has expired rather than never existed.
    """

    RANDOM_BYTES = 10
    MAC_BYTES = 6

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def new(self) -> str:
        nonce = secrets.token_bytes(self.RANDOM_BYTES)
        return (nonce + self._mac(nonce)).hex()

    def issued(self, job_id: str) -> bool:
        if len(job_id) != 2 * (self.RANDOM_BYTES + self.MAC_BYTES):
            return False
        try:
            raw = bytes.fromhex(job_id)
        except ValueError:
            return False
        nonce, mac = raw[:self.RANDOM_BYTES], raw[self.RANDOM_BYTES:]
        return hmac.compare_digest(mac, self._mac(nonce))

    def _mac(self, nonce: bytes) -> bytes:
        return hmac.new(self._key, nonce, hashlib.sha256).digest()[:self.MAC_BYTES]


class _State(enum.Enum):
    NEW = "new"  # being accepted: a cache hit goes from here straight to finished
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class _Job:
    id: str
    # None once the job is finished: the result is all a finished job keeps.
    submission: Submission | None
    input_bytes: int  # what `submission` holds, counted against the byte budget
    accepted_at: float  # wall clock (journaled; TTLs and latencies span restarts)
    state: _State = _State.QUEUED
    result: Result = field(default_factory=lambda: pending(Status.QUEUED))
    # Set once `result` is final; waiters hold the job, so eviction cannot strand them.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0  # starts so far, crashed ones included (journaled)
    cache_key: str | None = None  # None: the cache is not used for this job
    following: bool = False  # waits for an identical job's run (single flight)
    finished_at: float | None = None
    result_bytes: int = 0


@dataclass(frozen=True)
class Stats:
    """A snapshot for metrics: jobs waiting, jobs running, finished jobs by status."""

    queued: int
    running: int
    finished: dict[Status, int]


@dataclass(frozen=True)
class _Plan:
    """How one submission of a `submit_many` is taken: from the cache, or queued."""

    submission: Submission
    key: str | None
    hit: Result | None


class Service:
    def __init__(self, runner: Runner, *, workers: int, queue_size: int,
                 results_kept: int = 10_000, budget_bytes: int | None = None,
                 results_max_bytes: int | None = None, result_ttl_s: float = 3600.0,
                 max_attempts: int = 3, journal: Journal | None = None,
                 cache: ResultCache | None = None, observer: Observer | None = None,
                 notifier: CallbackNotifier | None = None,
                 clock: Callable[[], float] = time.time):
        """`budget_bytes`, `results_max_bytes`: None is no bound. `journal` None: memory
        only. `cache` None: no result cache. `clock`: wall time (TTLs; tests fake it)."""
        if workers < 1 or queue_size < 1 or results_kept < 0 or max_attempts < 1:
            raise ValueError("need workers >= 1, queue_size >= 1, results_kept >= 0, "
                             "max_attempts >= 1")
        if (budget_bytes is not None and budget_bytes < 1) or (
                results_max_bytes is not None and results_max_bytes < 1):
            raise ValueError("need budget_bytes >= 1 and results_max_bytes >= 1")
        if not result_ttl_s > 0:
            raise ValueError("need result_ttl_s > 0")
        self._runner = runner
        self._worker_count = workers
        self._queue_size = queue_size
        self._budget_bytes = budget_bytes
        self._results_kept = results_kept
        self._results_max_bytes = results_max_bytes
        self._result_ttl_s = result_ttl_s
        self._max_attempts = max_attempts
        self._journal = journal
        self._cache = cache
        self._observer = observer or Observer()
        self._notifier = notifier
        self._clock = clock
        self._ids = JobIds(journal.id_key if journal is not None else None)

        self._jobs: dict[str, _Job] = {}
        self._ready: deque[str] = deque()  # ids of queued jobs to start, in order
        self._wakeup = asyncio.Event()  # a job is ready or a worker slot is free
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the jobs being run or finished
        # Jobs holding a worker slot: from their start until their runner returns. The
        # journal write of a result does not hold one, so the next job's start is
        # committed together with it (a group commit) instead of after it.
        self._busy = 0
        # Single flight: the job running for a cache key, and the jobs waiting on it.
        self._flights: dict[str, str] = {}
        self._followers: dict[str, list[_Job]] = {}
        # Finished ids in the order they finished: the eviction order.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._result_bytes = 0
        self._waiting = 0  # queued jobs, and places reserved for jobs being journaled
        self._running = 0
        self._held_bytes = 0  # input of unfinished jobs (and of those being journaled)
        self._finished_by_status: Counter[Status] = Counter()
        self._dispatcher: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._stopping = False
        self._stopped = asyncio.Event()

    @classmethod
    def from_config(cls, runner: Runner, config: Config, *, journal: Journal | None,
                    observer: Observer | None = None,
                    notifier: CallbackNotifier | None = None) -> Service:
        server, cache = config.server, config.cache
        result_cache = None
        if cache.enabled:
            result_cache = ResultCache(max_entries=cache.max_entries,
                                       max_bytes=cache.max_bytes, ttl_s=cache.ttl_s)
        return cls(runner, workers=server.worker_count, queue_size=server.queue_size,
                   results_kept=server.results_kept, budget_bytes=server.queue_budget_bytes,
                   results_max_bytes=server.results_max_bytes,
                   result_ttl_s=server.result_ttl_s, max_attempts=server.max_attempts,
                   journal=journal, cache=result_cache, observer=observer, notifier=notifier)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what the journal holds, then start running jobs."""
        if self._dispatcher is not None:
            raise RuntimeError("service already started")
        if self._journal is not None:
            await self._recover(await self._journal.load())
        self._dispatcher = asyncio.create_task(self._dispatch(), name="sandboxd-dispatcher")
        self._housekeeper = asyncio.create_task(self._housekeep(), name="sandboxd-housekeeper")

    async def stop(self, deadline_s: float) -> None:
        """Graceful shutdown: refuse new jobs (ShuttingDown), start no queued one, let
        the running ones finish for up to `deadline_s` seconds, then cancel them (the
        runner kills their boxes). With a journal, queued jobs and those cut short stay
        queued in it for the next start (a cut-short start is not counted as a crash
        attempt); without one they end as Internal Error. Waiters are released."""
        if self._stopping:
            return
        self._accepting = False
        self._stopping = True
        for task in (self._dispatcher, self._housekeeper):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._dispatcher, self._housekeeper) if t),
                             return_exceptions=True)
        if self._journal is None:
            message = ("the service stopped before the job ran (without a journal, "
                       "queued jobs do not outlive the daemon)")
            for job in [j for j in self._jobs.values() if j.state is _State.QUEUED]:
                await self._finish(job, _internal_error(message), run_s=None)
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=deadline_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        self._stopped.set()

    # -- submissions ----------------------------------------------------------------

    async def submit(self, submission: Submission) -> str:
        """Accept `submission` and return its new id, once it is in the journal.
        Raises an Unavailable (QueueFull, ShuttingDown, JournalUnavailable) with
        nothing stored. A result-cache hit is final at once (`cached`)."""
        return (await self._accept([submission]))[0]

    async def submit_many(self, submissions: list[Submission]) -> list[str]:
        """All of them or none: capacity is checked for the whole batch, and the batch
        is journaled in one transaction. Ids in the order of `submissions`."""
        if not submissions:
            return []
        return await self._accept(list(submissions))

    def get(self, job_id: str) -> Result | None:
        """The current result of `job_id` (Queued, Running or final); None for an id
        never issued; ResultExpired for one whose result is gone."""
        job = self._jobs.get(job_id)
        if job is None:
            if self._ids.issued(job_id):
                raise ResultExpired(self._expired_message(job_id))
            return None
        if job.state is _State.FINISHED and self._is_stale(job):
            self._evict([job])
            raise ResultExpired(self._expired_message(job_id))
        return job.result

    async def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """The final result of `job_id`, or its pending one once `timeout` seconds pass
        (or the service stops first). KeyError for an unknown id (ResultExpired, a
        KeyError, for an expired one)."""
        job = self._jobs.get(job_id)
        if job is None:
            if self._ids.issued(job_id):
                raise ResultExpired(self._expired_message(job_id))
            raise KeyError(job_id)
        if job.state is not _State.FINISHED and not self._stopped.is_set():
            waits = [asyncio.ensure_future(job.done.wait()),
                     asyncio.ensure_future(self._stopped.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return job.result

    # -- health and counters --------------------------------------------------------

    def health_problem(self) -> str | None:
        """Why jobs cannot run right now, or None when they can."""
        if self._stopping:
            return "the service is shutting down"
        if self._dispatcher is None:
            return "the service has not started"
        if self._dispatcher.done():
            error = None if self._dispatcher.cancelled() else self._dispatcher.exception()
            return f"the job dispatcher stopped ({error!r})"
        if not self._runner.healthy:
            return "the sandbox cannot run jobs (fork server down or cgroups unusable)"
        if self._journal is not None and self._journal.problem is not None:
            return f"the journal cannot be written: {self._journal.problem}"
        return None

    @property
    def healthy(self) -> bool:
        return self.health_problem() is None

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    @property
    def held_bytes(self) -> int:
        """Input bytes of the jobs not finished yet (what the budget bounds)."""
        return self._held_bytes

    @property
    def results_held(self) -> tuple[int, int]:
        """Finished results kept: how many, and their encoded bytes."""
        return len(self._finished), self._result_bytes

    def stats(self) -> Stats:
        return Stats(queued=self._waiting, running=self._running,
                     finished=dict(self._finished_by_status))

    # -- accepting --------------------------------------------------------------------

    async def _accept(self, submissions: list[Submission]) -> list[str]:
        if not self._accepting:
            raise ShuttingDown("the service is shutting down")
        plans = [self._plan(s) for s in submissions]
        queued = [p.submission for p in plans if p.hit is None]
        size = sum(s.input_bytes() for s in queued)
        self._check_capacity(len(queued), size, batch=len(submissions) > 1)
        # Reserved now: other submissions arriving while this one is journaled see it.
        self._waiting += len(queued)
        self._held_bytes += size
        ids = [self._ids.new() for _ in plans]
        now = self._clock()
        hits = {job_id: dataclasses.replace(p.hit, cached=True)
                for job_id, p in zip(ids, plans, strict=True) if p.hit is not None}
        encoded = {job_id: encode_result(r) for job_id, r in hits.items()}
        if self._journal is None:
            self._register(plans, ids, now, hits, encoded)
            return ids
        records = [NewJob(job_id, now, p.submission, encoded.get(job_id),
                          now if job_id in encoded else None)
                   for job_id, p in zip(ids, plans, strict=True)]
        # Journaled jobs are registered even if the caller is cancelled meanwhile (a
        # client gone): they are accepted, and must run now, not after a restart.
        work = asyncio.ensure_future(self._journal_then_register(records, plans, ids, now,
                                                                 hits, encoded, size))
        return await asyncio.shield(work)

    async def _journal_then_register(self, records: list[NewJob], plans: list[_Plan],
                                     ids: list[str], now: float, hits: dict[str, Result],
                                     encoded: dict[str, bytes], size: int) -> list[str]:
        assert self._journal is not None
        try:
            await self._journal.accept(records)
        except JournalError as e:
            self._waiting -= len(plans) - len(hits)
            self._held_bytes -= size
            raise JournalUnavailable(f"the journal cannot record the job: {e}") from None
        self._register(plans, ids, now, hits, encoded)
        return ids

    def _plan(self, submission: Submission) -> _Plan:
        if self._cache is None or not submission.cache:
            return _Plan(submission, None, None)
        key = cache_key(submission)
        return _Plan(submission, key, self._cache.get(key))

    def _check_capacity(self, count: int, size: int, *, batch: bool) -> None:
        what = "the batch" if batch else "this job"
        if self._waiting + count > self._queue_size:
            if not batch:
                raise QueueFull(f"the queue is full ({self._queue_size} jobs waiting)")
            room = max(0, self._queue_size - self._waiting)
            raise QueueFull(f"the queue has room for {room} more jobs (of "
                            f"{self._queue_size}), {what} needs {count}")
        if self._budget_bytes is not None and self._held_bytes + size > self._budget_bytes:
            raise QueueFull(
                f"the queue is full: unfinished jobs hold {self._held_bytes} bytes of input, "
                f"{what} {size} more, over the budget of {self._budget_bytes} bytes")

    def _register(self, plans: list[_Plan], ids: list[str], now: float,
                  hits: dict[str, Result], encoded: dict[str, bytes]) -> None:
        """Make journaled jobs live: cache hits finished, the others queued."""
        for plan, job_id in zip(plans, ids, strict=True):
            self._observer.job_accepted(plan.submission)
            if job_id in hits:
                self._observer.cache_lookup(True)
                job = _Job(job_id, plan.submission, 0, now, state=_State.NEW)
                self._jobs[job_id] = job
                self._publish(job, hits[job_id], encoded[job_id], now, run_s=None)
                continue
            size = plan.submission.input_bytes()
            job = _Job(job_id, plan.submission, size, now, cache_key=plan.key)
            self._jobs[job_id] = job
            self._enqueue(job)

    def _enqueue(self, job: _Job, *, front: bool = False) -> None:
        """Make a queued job ready to start, or let it follow an identical job that is
        already waiting or running (single flight)."""
        key = job.cache_key
        if key is not None:
            leader = self._flights.get(key)
            if leader is not None and leader != job.id:
                job.following = True
                self._followers.setdefault(key, []).append(job)
                return
            self._flights[key] = job.id
            self._observer.cache_lookup(False)
        job.following = False
        if front:
            self._ready.appendleft(job.id)
        else:
            self._ready.append(job.id)
        self._wakeup.set()

    # -- running ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            while self._ready and self._busy < self._worker_count and not self._stopping:
                job = self._jobs.get(self._ready.popleft())
                if job is None or job.state is not _State.QUEUED or job.following:
                    continue
                job.state = _State.RUNNING
                job.result = pending(Status.RUNNING)
                self._waiting -= 1
                self._running += 1
                self._busy += 1
                task = asyncio.create_task(self._run(job), name=f"sandboxd-job-{job.id}")
                self._tasks[job.id] = task
                task.add_done_callback(functools.partial(self._run_ended, job.id))
            self._wakeup.clear()
            await self._wakeup.wait()

    def _run_ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: the service failed around it", job_id,
                      exc_info=task.exception())
        self._wakeup.set()

    async def _run(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            result = await self._attempt(job)
        except asyncio.CancelledError:
            # Only stop() cancels a job: the shutdown deadline passed.
            self._release_slot()
            await self._cut_short(job, time.monotonic() - started)
            return
        self._release_slot()
        # A result in hand is recorded and published even if the deadline passes now.
        finishing = asyncio.ensure_future(self._finish(job, result, time.monotonic() - started))
        try:
            await asyncio.shield(finishing)
        except asyncio.CancelledError:
            await finishing

    async def _attempt(self, job: _Job) -> Result:
        """One start of `job`, journaled first, to its final result."""
        submission = job.submission
        assert submission is not None
        job.attempts += 1
        if self._journal is not None:
            # Before the run: a job that kills the daemon has this start counted.
            try:
                await self._journal.mark_running(job.id, job.attempts)
            except JournalError as e:
                log.error("job %s: cannot journal its start: %s", job.id, e)
        self._observer.job_started(submission, max(0.0, self._clock() - job.accepted_at))
        try:
            result = await self._runner.run(submission)
            if not result.status.is_final:
                raise RuntimeError(f"runner returned non-final status {result.status.value}")
        except Exception as e:
            # The sandbox's fault, not the program's: log it whole, answer with the gist.
            log.exception("runner failed on submission %s", job.id)
            result = _internal_error(f"runner failed: {type(e).__name__}: {e}")
        return result

    def _release_slot(self) -> None:
        self._busy -= 1
        self._wakeup.set()

    async def _cut_short(self, job: _Job, run_s: float) -> None:
        job.attempts -= 1  # a shutdown is not a crash: the next start is not counted
        if self._journal is None:
            await self._finish(job, _internal_error(
                "the service stopped while the job ran (without a journal, jobs do not "
                "outlive the daemon)"), run_s)
            return
        job.state = _State.QUEUED
        job.result = pending(Status.QUEUED)
        self._running -= 1
        self._waiting += 1
        try:
            await self._journal.mark_queued(job.id, job.attempts)
        except JournalError as e:
            log.error("job %s: cannot journal it as queued again: %s", job.id, e)

    # -- finishing --------------------------------------------------------------------

    async def _finish(self, job: _Job, result: Result, run_s: float | None) -> None:
        """Record `result` (journal first), then publish it; a job leading a single
        flight passes its result on to the jobs that followed it."""
        submission = job.submission
        finished_at = self._clock()
        encoded = encode_result(result)
        if self._journal is not None:
            try:
                await self._journal.finish([FinishedJob(job.id, encoded, finished_at)])
            except JournalError as e:
                log.error("job %s: cannot journal its result: %s", job.id, e)
        if job.state is _State.FINISHED:
            return  # finished meanwhile (a shutdown without journal)
        self._publish(job, result, encoded, finished_at, run_s)
        if job.cache_key is not None and submission is not None:
            await self._end_flight(job, job.cache_key, submission, result, len(encoded))

    def _publish(self, job: _Job, result: Result, encoded: bytes, finished_at: float,
                 run_s: float | None) -> None:
        if job.state is _State.QUEUED:
            self._waiting -= 1
        elif job.state is _State.RUNNING:
            self._running -= 1
        submission = job.submission
        job.submission = None
        self._held_bytes -= job.input_bytes
        job.input_bytes = 0
        job.state = _State.FINISHED
        job.result = result
        job.finished_at = finished_at
        job.result_bytes = len(encoded)
        job.done.set()
        self._finished_by_status[result.status] += 1
        self._finished[job.id] = None
        self._result_bytes += job.result_bytes
        if submission is not None:  # None: unreadable in the journal
            self._observer.job_finished(job.id, submission, result,
                                        total_s=max(0.0, finished_at - job.accepted_at),
                                        run_s=run_s)
            if submission.callback_url is not None and self._notifier is not None:
                self._notifier.notify(job.id, submission.callback_url, result,
                                      submission.callback_format)
        self._evict_over_bounds()

    async def _end_flight(self, leader: _Job, key: str, submission: Submission,
                          result: Result, size: int) -> None:
        if self._flights.get(key) != leader.id:
            return
        del self._flights[key]
        followers = [f for f in self._followers.pop(key, []) if f.state is _State.QUEUED]
        if not is_cacheable(submission, result):
            # Nothing to share: the first of them runs next, the others follow it.
            for follower in followers:
                self._enqueue(follower, front=follower is followers[0])
            return
        assert self._cache is not None
        self._cache.put(key, result, size)
        if not followers:
            return
        shared = dataclasses.replace(result, cached=True)
        encoded = encode_result(shared)
        finished_at = self._clock()
        if self._journal is not None:
            try:
                await self._journal.finish([FinishedJob(f.id, encoded, finished_at)
                                            for f in followers])
            except JournalError as e:
                log.error("cannot journal the shared result of %d jobs: %s", len(followers), e)
        for follower in followers:
            if follower.state is _State.QUEUED:
                self._observer.cache_lookup(True)
                self._publish(follower, shared, encoded, finished_at, run_s=None)

    # -- results: TTL and bounds ------------------------------------------------------

    def _is_stale(self, job: _Job) -> bool:
        assert job.finished_at is not None
        return self._clock() - job.finished_at >= self._result_ttl_s

    def _expired_message(self, job_id: str) -> str:
        bound = f"{self._results_max_bytes} bytes" if self._results_max_bytes else "no byte bound"
        return (f"the result of submission {job_id!r} has expired: finished results are kept "
                f"{self._result_ttl_s:g} s, at most {self._results_kept} results and {bound} "
                "(server.result_ttl_s, server.results_kept, server.results_max_bytes)")

    def _evict_over_bounds(self) -> None:
        """Only finished jobs are evicted, oldest first; queued and running ones never."""
        over = []
        count, size = len(self._finished), self._result_bytes
        for job_id in self._finished:
            if count <= self._results_kept and (self._results_max_bytes is None
                                                or size <= self._results_max_bytes):
                break
            job = self._jobs[job_id]
            over.append(job)
            count -= 1
            size -= job.result_bytes
        if over:
            self._evict(over)

    def _expire(self) -> None:
        stale = []
        for job_id in self._finished:
            job = self._jobs[job_id]
            if not self._is_stale(job):
                break  # finish order: the rest are younger
            stale.append(job)
        if stale:
            self._evict(stale)

    def _evict(self, jobs: list[_Job]) -> None:
        for job in jobs:
            del self._jobs[job.id]
            del self._finished[job.id]
            self._result_bytes -= job.result_bytes
        if self._journal is not None and not self._stopped.is_set():
            self._in_background(self._journal.forget([j.id for j in jobs]), "forget results")

    def _in_background(self, work: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except JournalError as e:
                log.error("journal: cannot %s: %s", what, e)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _housekeep(self) -> None:
        """Expire results and cache entries on time (their memory back), drop old
        webhook deliveries from the journal, and retry a failed journal."""
        interval = min(max(self._result_ttl_s / 10, 0.05), HOUSEKEEPING_S)
        while True:
            await asyncio.sleep(interval)
            self._expire()
            if self._cache is not None:
                self._cache.expire()
            if self._journal is None:
                continue
            try:
                if self._journal.problem is not None:
                    await self._journal.probe()
                await self._journal.forget_deliveries(self._clock() - self._result_ttl_s)
            except JournalError as e:
                log.error("journal housekeeping failed: %s", e)

    # -- recovery ---------------------------------------------------------------------

    async def _recover(self, records: list[JobRecord]) -> None:
        now = self._clock()
        forget: list[str] = []
        finished = sorted((r for r in records if r.state == "finished"),
                          key=_finish_time)
        for r in finished:
            if r.result is None or r.finished_at is None:
                log.error("journal: the result of %s cannot be read (%s); dropped", r.id,
                          r.unreadable)
                forget.append(r.id)
            elif now - r.finished_at >= self._result_ttl_s:
                forget.append(r.id)
            else:
                job = _Job(r.id, None, 0, r.accepted_at, state=_State.FINISHED, result=r.result,
                           attempts=r.attempts, finished_at=r.finished_at,
                           result_bytes=r.result_bytes)
                job.done.set()
                self._jobs[r.id] = job
                self._finished[r.id] = None
                self._result_bytes += r.result_bytes
        gave_up: list[tuple[_Job, str]] = []
        again = 0
        for r in (r for r in records if r.state != "finished"):
            submission = r.submission
            size = submission.input_bytes() if submission is not None else 0
            key = None
            if submission is not None and submission.cache and self._cache is not None:
                key = cache_key(submission)
            job = _Job(r.id, submission, size, r.accepted_at, attempts=r.attempts,
                       cache_key=key)
            self._jobs[r.id] = job
            self._waiting += 1
            self._held_bytes += size
            if submission is None:
                gave_up.append((job, f"the journaled job cannot be read: {r.unreadable}"))
            elif r.state == "running" and r.attempts >= self._max_attempts:
                gave_up.append((job, (
                    f"the daemon died while running this job, {r.attempts} times "
                    f"(server.max_attempts = {self._max_attempts}): it is not run again")))
            else:
                again += r.state == "running"
                self._enqueue(job)
        kept = len(self._finished)
        for job, message in gave_up:
            await self._finish(job, _internal_error(message), run_s=None)
        self._evict_over_bounds()
        if forget:
            await self._journal_forget(forget)
        if records:
            log.info("journal: %d queued jobs recovered (%d were running), %d given up, "
                     "%d results kept, %d expired", self._waiting, again, len(gave_up),
                     kept, len(forget))

    async def _journal_forget(self, job_ids: list[str]) -> None:
        assert self._journal is not None
        try:
            await self._journal.forget(job_ids)
        except JournalError as e:
            log.error("journal: cannot forget %d old results: %s", len(job_ids), e)


def _finish_time(record: JobRecord) -> float:
    return record.finished_at or 0.0


def _internal_error(message: str) -> Result:
    return Result(status=Status.INTERNAL_ERROR, message=message)

