"""The job queue: a bounded asyncio.Queue, a job store and a fixed pool of worker tasks.

A submission goes Queued -> Running -> final. The number of workers is the number of
jobs running at once (SPEC: CPU-heavy jobs must not turn each other into wall-clock
TLEs), everything else waits in the queue. Whatever a runner does, every accepted job
ends with a final Result: a runner exception becomes an Internal Error, never a lost
job or a dead worker.

The queue is bounded twice: by a number of jobs and by the bytes of input (source,
stdin, expected output) the unfinished jobs hold, so a few large inputs cannot take
the daemon's memory. A finished job keeps only its Result: its input is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from sandboxd.model import Result, Status, Submission, pending

log = logging.getLogger(__name__)


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


@dataclass
class _Job:
    # None once the job has run: the result is all a finished job keeps.
    submission: Submission | None
    input_bytes: int
    result: Result = field(default_factory=lambda: pending(Status.QUEUED))
    # Set once `result` is final; waiters hold the job, so eviction cannot strand them.
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Stats:
    """A snapshot for metrics: jobs waiting, jobs running, finished jobs by status."""

    queued: int
    running: int
    finished: dict[Status, int]


class Service:
    def __init__(self, runner: Runner, *, workers: int, queue_size: int, results_kept: int,
                 budget_bytes: int | None = None):
        """`budget_bytes`: the input bytes all unfinished jobs may hold (None: no bound)."""
        if workers < 1 or queue_size < 1 or results_kept < 0:
            raise ValueError("need workers >= 1, queue_size >= 1, results_kept >= 0")
        if budget_bytes is not None and budget_bytes < 1:
            raise ValueError("need budget_bytes >= 1")
        self._runner = runner
        self._worker_count = workers
        self._results_kept = results_kept
        self._budget_bytes = budget_bytes
        self._held_bytes = 0  # input of jobs not finished yet
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._jobs: dict[str, _Job] = {}
        # Finished ids in the order they finished: the eviction order.
        self._finished_ids: OrderedDict[str, None] = OrderedDict()
        self._workers: list[asyncio.Task[None]] = []
        self._accepting = True
        self._running = 0
        self._finished_by_status: Counter[Status] = Counter()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self._workers:
            raise RuntimeError("service already started")
        self._workers = [
            asyncio.create_task(self._work(), name=f"sandboxd-worker-{i}")
            for i in range(self._worker_count)
        ]

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting; let queued and running jobs finish for up to `drain_timeout`
        seconds, then cancel the workers. Jobs cut short end as Internal Error, so
        every waiter gets an answer."""
        self._accepting = False
        if self._workers and not all(w.done() for w in self._workers):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for job_id, job in list(self._jobs.items()):
            if not job.result.status.is_final:
                self._finish(job_id, _internal_error("the daemon shut down before the job ran"))

    # -- submissions ----------------------------------------------------------------

    def submit(self, submission: Submission) -> str:
        """Queue `submission` and return its new id; nothing is stored if it raises."""
        if not self._accepting:
            raise ShuttingDown("the service is shutting down")
        if self._queue.full():
            raise QueueFull(f"the queue is full ({self._queue.maxsize} jobs waiting)")
        size = submission.input_bytes()
        if self._budget_bytes is not None and self._held_bytes + size > self._budget_bytes:
            raise QueueFull(
                f"the queue is full: unfinished jobs hold {self._held_bytes} bytes of input, "
                f"this one {size} more, over the budget of {self._budget_bytes} bytes")
        job_id = uuid.uuid4().hex
        # put_nowait cannot fail after the full() check: nothing awaits in between.
        self._queue.put_nowait(job_id)
        self._jobs[job_id] = _Job(submission, size)
        self._held_bytes += size
        return job_id

    def get(self, job_id: str) -> Result | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.result

    async def wait(self, job_id: str) -> Result:
        """The final result of `job_id`; KeyError if the id is unknown (or evicted)."""
        job = self._jobs[job_id]
        await job.done.wait()
        return job.result

    # -- health and counters --------------------------------------------------------

    @property
    def healthy(self) -> bool:
        workers_alive = bool(self._workers) and not any(w.done() for w in self._workers)
        return self._accepting and workers_alive and self._runner.healthy

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running

    @property
    def held_bytes(self) -> int:
        """Input bytes of the jobs not finished yet (what the budget bounds)."""
        return self._held_bytes

    def stats(self) -> Stats:
        return Stats(
            queued=self.queued, running=self._running, finished=dict(self._finished_by_status)
        )

    # -- workers --------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run_one(job_id)
            finally:
                self._queue.task_done()

    async def _run_one(self, job_id: str) -> None:
        job = self._jobs[job_id]
        if job.submission is None:
            return  # finished while it waited (the daemon shut down)
        job.result = pending(Status.RUNNING)
        self._running += 1
        try:
            result = await self._runner.run(job.submission)
            if not result.status.is_final:
                raise RuntimeError(f"runner returned non-final status {result.status.value}")
        except asyncio.CancelledError:
            self._finish(job_id, _internal_error("the daemon shut down while the job ran"))
            raise
        except Exception as e:
            # The sandbox's fault, not the program's: log it whole, answer with the gist.
            log.exception("runner failed on submission %s", job_id)
            result = _internal_error(f"runner failed: {type(e).__name__}: {e}")
        finally:
            self._running -= 1
        self._finish(job_id, result)

    def _finish(self, job_id: str, result: Result) -> None:
        job = self._jobs[job_id]
        job.result = result
        if job.submission is not None:
            job.submission = None
            self._held_bytes -= job.input_bytes
        job.done.set()
        self._finished_by_status[result.status] += 1
        self._finished_ids[job_id] = None
        # Only finished jobs are evicted, oldest first; queued and running ones never are.
        while len(self._finished_ids) > self._results_kept:
            old_id, _ = self._finished_ids.popitem(last=False)
            del self._jobs[old_id]


def _internal_error(message: str) -> Result:
    return Result(status=Status.INTERNAL_ERROR, message=message)
