"""What the service reports as it works, for metrics and logs (metrics.py).

The service, the runner and the webhook dispatcher call these hooks; they never
raise and never block. `Observer` does nothing: the default, and the base of the
real one, so a new hook needs no change anywhere else.
"""

from __future__ import annotations

from sandboxd.model import Result, Submission


class Observer:
    def job_accepted(self, submission: Submission) -> None:
        """A submission was accepted (journaled, queued): the 202 is on its way."""

    def job_started(self, submission: Submission, queued_s: float) -> None:
        """A worker took the job after `queued_s` seconds in the queue."""

    def job_finished(self, job_id: str, submission: Submission, result: Result, *,
                     total_s: float, run_s: float | None) -> None:
        """A job reached its final result: `total_s` since it was accepted, `run_s`
        the time a worker spent on it (None when it never ran: cached, shut down)."""

    def cache_lookup(self, hit: bool) -> None:
        """The result cache was asked for a submission."""

    def compile_step(self, language: str, seconds: float) -> None:
        """A compile step ran in a box (a compiled-artifact cache hit does not count)."""

    def artifact_lookup(self, language: str, hit: bool) -> None:
        """The compiled-artifact cache was asked for a program about to be compiled
        (a hit: the compile step is skipped)."""

    def run_step(self, language: str, seconds: float) -> None:
        """A run step ran in a box, `seconds` from spawn to outcome."""

    def sandbox_failure(self, reason: str) -> None:
        """A box could not be set up or ended without a verdict (Internal Error)."""

    def webhook_delivery(self, ok: bool, final: bool) -> None:
        """One delivery attempt of a callback; `final`: no retry follows."""
