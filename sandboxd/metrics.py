"""Prometheus metrics and the per-job log line: the `Observer` the daemon runs with.

The service, the runner and the webhook dispatcher report events through the
`Observer` hooks; `Metrics` counts them in a registry of its own (never the
process-global one, so two daemons in one test process, or a library that registers
its own collectors, cannot collide) and writes one JSON log line per finished job.
Queue depth and running jobs are not events: they are read from the service's
`Stats` when `/metrics` is scraped (`render`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sandboxd.model import Result, Status, Submission
from sandboxd.observer import Observer
from sandboxd.service import Stats

# The Content-Type of `render`'s output: the text format every Prometheus version reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Seconds. A hello world through a box takes ~0.02-0.2 s, a compile 0.1-10 s, a job that
# waits in a busy queue minutes: the buckets cover all three.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# The logger of the one-line-per-job records (JSON on stderr, see logs.py).
JOB_LOG = "sandboxd.jobs"


class Metrics(Observer):
    """Every Observer hook, counted; `render(stats)` is the `/metrics` answer."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 job_log: logging.Logger | None = None) -> None:
        # No `<counter>_created` series (a timestamp beside every counter and histogram,
        # doubling what a scrape reads); a process-wide switch of the client library.
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._job_log = job_log if job_log is not None else logging.getLogger(JOB_LOG)
        r = self.registry
        self.queue_depth = Gauge(
            "sandboxd_queue_depth", "Jobs accepted and waiting for a worker.", registry=r)
        self.jobs_running = Gauge(
            "sandboxd_jobs_running", "Jobs a worker is running now.", registry=r)
        self.jobs_accepted = Counter(
            "sandboxd_jobs_accepted", "Submissions accepted (queued or answered from the "
            "cache).", ["language"], registry=r)
        self.jobs_started = Counter(
            "sandboxd_jobs_started", "Jobs a worker took from the queue.", ["language"],
            registry=r)
        self.jobs_finished = Counter(
            "sandboxd_jobs_finished", "Jobs that reached their final result, by verdict.",
            ["language", "status"], registry=r)
        self.cache_hits = Counter(
            "sandboxd_cache_hits", "Submissions answered from the result cache.", registry=r)
        self.cache_misses = Counter(
            "sandboxd_cache_misses", "Result-cache lookups that found nothing.", registry=r)
        self.compile_steps = Counter(
            "sandboxd_compile_steps", "Compile steps (compilers or syntax checks) run in a "
            "box.", ["language"], registry=r)
        self.artifact_lookups = Counter(
            "sandboxd_artifact_lookups", "Compiled-artifact cache lookups, by outcome (hit: "
            "the compile step was skipped).", ["language", "outcome"], registry=r)
        self.sandbox_failures = Counter(
            "sandboxd_sandbox_failures", "Boxes that could not be set up or ended without a "
            "verdict (Internal Error).", registry=r)
        self.webhook_attempts = Counter(
            "sandboxd_webhook_attempts", "Callback attempts (POST or PUT), by outcome (ok: a 2xx "
            "answer).", ["outcome"], registry=r)
        self.webhook_deliveries = Counter(
            "sandboxd_webhook_deliveries", "Callbacks finished: delivered, or failed after "
            "the last attempt.", ["outcome"], registry=r)
        self.job_seconds = Histogram(
            "sandboxd_job_seconds", "End-to-end latency: from acceptance to the final "
            "result.", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram(
            "sandboxd_queue_wait_seconds", "Time a job waited in the queue before a worker "
            "took it.", buckets=LATENCY_BUCKETS, registry=r)
        self.compile_step_seconds = Histogram(
            "sandboxd_compile_step_seconds", "A compile step's box, from spawn to outcome.",
            ["language"], buckets=LATENCY_BUCKETS, registry=r)
        self.run_step_seconds = Histogram(
            "sandboxd_run_step_seconds", "A run step's box, from spawn to outcome.",
            ["language"], buckets=LATENCY_BUCKETS, registry=r)
        # Series that exist before their first event read 0 instead of being absent,
        # so a rate() over a fresh daemon is 0, not "no data".
        for outcome in ("ok", "error"):
            self.webhook_attempts.labels(outcome)
        for outcome in ("delivered", "failed"):
            self.webhook_deliveries.labels(outcome)

    def watch_cluster(self, oldest_waiting_s: Callable[[], float]) -> None:
        """With a shared queue (Redis): the age of the cluster's oldest waiting job,
        read at each scrape (with queue_depth, what an autoscaler needs)."""
        Gauge("sandboxd_queue_oldest_waiting_seconds", "Age of the oldest job no host has "
              "taken yet (all hosts sharing the queue).",
              registry=self.registry).set_function(oldest_waiting_s)

    def watch_sandbox(self, warm_boxes: Callable[[], int]) -> None:
        """The boxes built ahead and waiting for a job (or being built), read at each
        scrape: at most sandbox.warm_boxes per worker slot."""
        Gauge("sandboxd_warm_boxes", "Boxes built ahead (namespaces, mounts, pivot_root "
              "done) waiting for a job, or being built.",
              registry=self.registry).set_function(warm_boxes)

    def render(self, stats: Stats) -> bytes:
        """The Prometheus text exposition, with the gauges read from `stats` now."""
        self.queue_depth.set(stats.queued)
        self.jobs_running.set(stats.running)
        return generate_latest(self.registry)

    # -- Observer hooks -------------------------------------------------------------

    def job_accepted(self, submission: Submission) -> None:
        self.jobs_accepted.labels(submission.language).inc()

    def job_started(self, submission: Submission, queued_s: float) -> None:
        self.jobs_started.labels(submission.language).inc()
        self.queue_wait_seconds.observe(max(queued_s, 0.0))

    def job_finished(self, job_id: str, submission: Submission, result: Result, *,
                     total_s: float, run_s: float | None) -> None:
        self.jobs_finished.labels(submission.language, result.status.value).inc()
        self.job_seconds.observe(max(total_s, 0.0))
        self._log_job(job_id, submission, result, total_s, run_s)

    def cache_lookup(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def compile_step(self, language: str, seconds: float) -> None:
        self.compile_steps.labels(language).inc()
        self.compile_step_seconds.labels(language).observe(max(seconds, 0.0))

    def artifact_lookup(self, language: str, hit: bool) -> None:
        self.artifact_lookups.labels(language, "hit" if hit else "miss").inc()

    def run_step(self, language: str, seconds: float) -> None:
        self.run_step_seconds.labels(language).observe(max(seconds, 0.0))

    def sandbox_failure(self, reason: str) -> None:
        self.sandbox_failures.inc()

    def webhook_delivery(self, ok: bool, final: bool) -> None:
        self.webhook_attempts.labels("ok" if ok else "error").inc()
        if ok:
            self.webhook_deliveries.labels("delivered").inc()
        elif final:
            self.webhook_deliveries.labels("failed").inc()

    # -- the job log ----------------------------------------------------------------

    def _log_job(self, job_id: str, submission: Submission, result: Result, total_s: float,
                 run_s: float | None) -> None:
        fields = {
            "event": "job_finished",
            "id": job_id,
            "language": submission.language,
            "status": result.status.value,
            "time_ms": result.time_ms,
            "wall_time_ms": result.wall_time_ms,
            "memory_kb": result.memory_kb,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "cached": result.cached,
            "total_s": round(total_s, 4),
            "run_s": None if run_s is None else round(run_s, 4),
        }
        if result.message is not None:
            fields["error"] = result.message
        # An Internal Error is the sandbox's failure: the operator's to look at.
        level = logging.ERROR if result.status is Status.INTERNAL_ERROR else logging.INFO
        self._job_log.log(level, "job %s finished: %s", job_id, result.status.value,
                          extra={"fields": fields})
