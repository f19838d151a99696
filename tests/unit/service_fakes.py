"""Fakes for the service's tests: a runner, a clock, an observer and a callback notifier."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sandboxd.model import CallbackFormat, Limits, Result, Status, Submission
from sandboxd.observer import Observer

LIMITS = Limits(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)


def submission(source: str = "ok", **fields: Any) -> Submission:
    return Submission(language="python3", source=source, limits=LIMITS, **fields)


def sized(source: str, stdin: str = "", expected: str | None = None) -> Submission:
    return Submission(language="python3", source=source, limits=LIMITS, stdin=stdin.encode(),
                      expected_output=None if expected is None else expected.encode())


class FakeRunner:
    """Echoes the source as stdout. Source "boom" raises, "pending" returns Running,
    "internal" returns an Internal Error, "slow-tle" a wall-clock TLE.

    While `gate` is set to an unset Event, every run waits on it first.
    """

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.healthy = True
        self.started: list[Submission] = []
        self.cancelled: list[str] = []

    async def run(self, submission: Submission) -> Result:
        self.started.append(submission)
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(submission.source)
            raise
        if submission.source == "boom":
            raise RuntimeError("cgroup vanished")
        if submission.source == "pending":
            return Result(status=Status.RUNNING)
        if submission.source == "internal":
            return Result(status=Status.INTERNAL_ERROR, message="the box failed")
        if submission.source == "slow-tle":
            return Result(status=Status.TIME_LIMIT_EXCEEDED, time_ms=3, wall_time_ms=5000)
        return Result(status=Status.ACCEPTED, stdout=submission.source, exit_code=0)

    @property
    def sources(self) -> list[str]:
        return [s.source for s in self.started]


class Clock:
    """Wall time that moves only when a test moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def job_accepted(self, submission: Submission) -> None:
        self.events.append(("accepted", submission.source))

    def job_started(self, submission: Submission, queued_s: float) -> None:
        assert queued_s >= 0
        self.events.append(("started", submission.source))

    def job_finished(self, job_id: str, submission: Submission, result: Result, *,
                     total_s: float, run_s: float | None) -> None:
        assert total_s >= 0
        self.events.append(("finished", submission.source, result.status, result.cached,
                            run_s is not None))

    def cache_lookup(self, hit: bool) -> None:
        self.events.append(("cache", hit))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Result]] = []
        self.formats: list[CallbackFormat] = []  # each notification's, in order

    def notify(self, job_id: str, url: str, result: Result,
               callback_format: CallbackFormat = CallbackFormat.NATIVE) -> None:
        self.sent.append((job_id, url, result))
        self.formats.append(callback_format)


async def until(condition: Callable[[], object], timeout: float = 2.0) -> None:
    """Yield to the loop until `condition()` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)
