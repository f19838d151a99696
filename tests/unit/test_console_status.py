"""The console's status summary: percentiles from histogram buckets, and rates and
verdict mixes from samples of the /metrics counters (a fake clock, a fake service)."""

from __future__ import annotations

import math

import pytest

from sandboxd.console import StatusHistory, quantile
from sandboxd.metrics import Metrics
from sandboxd.model import Limits, Result, Status, Submission
from sandboxd.service import Stats

INF = math.inf


class FakeService:
    def __init__(self) -> None:
        self.queued = 0
        self.running = 0

    def stats(self) -> Stats:
        return Stats(queued=self.queued, running=self.running, finished={})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finish(metrics: Metrics, status: Status, seconds: float) -> None:
    submission = Submission(language="python3", source="", limits=Limits(1000, 3000, 64))
    metrics.job_finished("id", submission, Result(status=status), total_s=seconds, run_s=None)


def test_quantile_interpolates_inside_the_bucket():
    buckets = [(0.1, 0.0), (1.0, 10.0), (10.0, 10.0), (INF, 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.55)
    assert quantile(1.0, buckets) == pytest.approx(1.0)


def test_quantile_of_nothing_is_none_and_the_inf_bucket_is_its_lower_bound():
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    assert quantile(0.99, [(1.0, 1.0), (INF, 100.0)]) == 1.0


def test_summary_gives_rates_and_verdicts_between_samples():
    metrics, service, clock = Metrics(), FakeService(), Clock()
    history = StatusHistory(metrics, service, clock=clock)
    history.sample()
    service.queued, service.running = 3, 1
    for _ in range(4):
        finish(metrics, Status.ACCEPTED, 0.2)
    finish(metrics, Status.TIME_LIMIT_EXCEEDED, 3.0)
    clock.now += 2.0
    history.sample()
    clock.now += 1.0
    summary = history.summary()
    assert summary["window_s"] == 3.0
    first, second = summary["series"]
    assert first == {"t": 1002.0, "queued": 3, "running": 1, "jobs_per_s": 2.5,
                     "verdicts": {"Accepted": 4, "Time Limit Exceeded": 1}}
    assert second["jobs_per_s"] == 0.0 and second["verdicts"] == {}
    assert summary["verdicts"] == {"Accepted": 4, "Time Limit Exceeded": 1}
    latency = summary["latency_s"]
    assert 0.1 < latency["p50"] <= 0.25
    assert 2.5 < latency["p99"] <= 5.0


def test_summary_counts_only_what_finished_inside_the_window():
    metrics, service, clock = Metrics(), FakeService(), Clock()
    finish(metrics, Status.RUNTIME_ERROR, 1.0)  # before the first sample
    history = StatusHistory(metrics, service, clock=clock)
    history.sample()
    clock.now += 1.0
    assert history.summary()["verdicts"] == {}
    assert history.summary()["latency_s"] == {"p50": None, "p90": None, "p99": None}
    finish(metrics, Status.ACCEPTED, 0.02)
    assert history.summary()["verdicts"] == {"Accepted": 1}
