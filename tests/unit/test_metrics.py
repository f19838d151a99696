"""metrics.py: every Observer hook moves its series; /metrics serves them; the runner
reports its steps; one JSON log line per finished job (logs.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxd import languages as languages_mod
from sandboxd.config import Config
from sandboxd.jail.spec import JailError, JailOutcome, JailSpec, Termination
from sandboxd.logs import JsonFormatter, configure
from sandboxd.metrics import CONTENT_TYPE, JOB_LOG, Metrics
from sandboxd.model import Limits, Result, Status, Submission
from sandboxd.observer import Observer
from sandboxd.runner import Runner
from sandboxd.service import Stats
from tests.unit.test_api import GOOD, new_env

SUBMISSION = Submission(language="python3", source="print(1)",
                        limits=Limits(time_limit_ms=1000, wall_time_limit_ms=3000,
                                      memory_limit_mb=64))
ACCEPTED = Result(status=Status.ACCEPTED, stdout="1\n", exit_code=0, time_ms=12,
                  wall_time_ms=20, memory_kb=3072)
EMPTY = Stats(queued=0, running=0, finished={})


def value(metrics: Metrics, name: str, **labels: str) -> float:
    sample = metrics.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def test_every_observer_hook_is_implemented() -> None:
    hooks = {name for name in vars(Observer) if not name.startswith("_")}
    assert hooks, "observer.py defines no hooks?"
    mine = {name for name in hooks if name in vars(Metrics)}
    assert mine == hooks, f"Metrics does not implement: {sorted(hooks - mine)}"


def test_job_hooks_count_by_language_and_status() -> None:
    m = Metrics()
    m.job_accepted(SUBMISSION)
    m.job_accepted(SUBMISSION)
    m.job_started(SUBMISSION, queued_s=0.3)
    m.job_finished("id1", SUBMISSION, ACCEPTED, total_s=0.5, run_s=0.2)
    m.job_finished("id2", SUBMISSION, Result(status=Status.TIME_LIMIT_EXCEEDED),
                   total_s=2.5, run_s=2.1)
    assert value(m, "sandboxd_jobs_accepted_total", language="python3") == 2
    assert value(m, "sandboxd_jobs_started_total", language="python3") == 1
    assert value(m, "sandboxd_jobs_finished_total", language="python3",
                 status="Accepted") == 1
    assert value(m, "sandboxd_jobs_finished_total", language="python3",
                 status="Time Limit Exceeded") == 1
    assert value(m, "sandboxd_job_seconds_count") == 2
    assert value(m, "sandboxd_job_seconds_sum") == pytest.approx(3.0)
    assert value(m, "sandboxd_job_seconds_bucket", le="1.0") == 1
    assert value(m, "sandboxd_queue_wait_seconds_count") == 1


def test_cache_compile_run_failure_and_webhook_hooks() -> None:
    m = Metrics()
    m.cache_lookup(hit=True)
    m.cache_lookup(hit=False)
    m.cache_lookup(hit=False)
    m.compile_step("c", 0.4)
    m.run_step("c", 0.02)
    m.run_step("c", 0.03)
    m.sandbox_failure("mount: EPERM")
    m.webhook_delivery(ok=False, final=False)
    m.webhook_delivery(ok=True, final=True)
    m.webhook_delivery(ok=False, final=True)
    assert value(m, "sandboxd_cache_hits_total") == 1
    assert value(m, "sandboxd_cache_misses_total") == 2
    assert value(m, "sandboxd_compile_steps_total", language="c") == 1
    assert value(m, "sandboxd_compile_step_seconds_count", language="c") == 1
    assert value(m, "sandboxd_run_step_seconds_count", language="c") == 2
    assert value(m, "sandboxd_run_step_seconds_bucket", language="c", le="0.025") == 1
    assert value(m, "sandboxd_sandbox_failures_total") == 1
    assert value(m, "sandboxd_webhook_attempts_total", outcome="ok") == 1
    assert value(m, "sandboxd_webhook_attempts_total", outcome="error") == 2
    assert value(m, "sandboxd_webhook_deliveries_total", outcome="delivered") == 1
    assert value(m, "sandboxd_webhook_deliveries_total", outcome="failed") == 1


def test_render_reads_queue_and_running_from_stats_and_lists_every_series() -> None:
    m = Metrics()
    text = m.render(Stats(queued=7, running=2, finished={Status.ACCEPTED: 3})).decode()
    assert "sandboxd_queue_depth 7.0" in text
    assert "sandboxd_jobs_running 2.0" in text
    for name in ("sandboxd_jobs_accepted_total", "sandboxd_jobs_finished_total",
                 "sandboxd_cache_hits_total", "sandboxd_cache_misses_total",
                 "sandboxd_compile_steps_total", "sandboxd_sandbox_failures_total",
                 "sandboxd_webhook_attempts_total", "sandboxd_webhook_deliveries_total",
                 "sandboxd_job_seconds", "sandboxd_run_step_seconds",
                 "sandboxd_compile_step_seconds", "sandboxd_queue_wait_seconds"):
        assert f"# TYPE {name} " in text, name
    # Present at 0 before any event: a fresh daemon's rate() is 0, not "no data".
    assert 'sandboxd_webhook_deliveries_total{outcome="failed"} 0.0' in text
    assert "_created" not in text
    text = m.render(Stats(queued=0, running=1, finished={})).decode()
    assert "sandboxd_queue_depth 0.0" in text and "sandboxd_jobs_running 1.0" in text


def test_two_instances_never_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.sandbox_failure("x")
    assert value(a, "sandboxd_sandbox_failures_total") == 1
    assert value(b, "sandboxd_sandbox_failures_total") == 0


async def test_metrics_endpoint_serves_the_text_format_and_moves(aiohttp_client: Any) -> None:
    env = await new_env(aiohttp_client)
    env.service.stats_value = Stats(queued=3, running=1, finished={})
    resp = await env.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    before = await resp.text()
    assert "sandboxd_queue_depth 3.0" in before and "sandboxd_jobs_running 1.0" in before
    assert 'sandboxd_jobs_finished_total{language="python3",status="Accepted"}' not in before

    await env.client.post("/execute", json=GOOD)
    # The service reports the job (the fake does not; the real one calls these hooks).
    env.metrics.job_finished("x", env.service.submitted[0], ACCEPTED, total_s=0.1, run_s=0.05)
    after = await (await env.client.get("/metrics")).text()
    assert 'sandboxd_jobs_finished_total{language="python3",status="Accepted"} 1.0' in after


# -- the job log ---------------------------------------------------------------------------


def test_one_log_record_per_finished_job_with_its_fields(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    with caplog.at_level(logging.INFO, logger=JOB_LOG):
        m.job_finished("abc", SUBMISSION, ACCEPTED, total_s=0.51234, run_s=0.2)
        m.job_finished("def", SUBMISSION, Result(status=Status.ACCEPTED, cached=True),
                       total_s=0.001, run_s=None)
    first, second = [r for r in caplog.records if r.name == JOB_LOG]
    assert first.levelno == logging.INFO
    assert first.fields == {  # type: ignore[attr-defined]
        "event": "job_finished", "id": "abc", "language": "python3", "status": "Accepted",
        "time_ms": 12, "wall_time_ms": 20, "memory_kb": 3072, "exit_code": 0, "signal": None,
        "cached": False, "total_s": 0.5123, "run_s": 0.2}
    assert second.fields["cached"] is True and second.fields["run_s"] is None  # type: ignore


def test_an_internal_error_is_logged_as_an_error_with_its_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    failed = Result(status=Status.INTERNAL_ERROR, message="sandbox failure: mount: EPERM")
    with caplog.at_level(logging.INFO, logger=JOB_LOG):
        m.job_finished("x", SUBMISSION, failed, total_s=0.1, run_s=0.1)
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.fields["error"] == "sandbox failure: mount: EPERM"  # type: ignore


def test_json_formatter_writes_one_object_per_line_with_the_fields() -> None:
    stream = io.StringIO()
    configure(logging.INFO, stream)
    try:
        Metrics().job_finished("abc", SUBMISSION, ACCEPTED, total_s=0.5, run_s=0.2)
        logging.getLogger("sandboxd").warning("listening on %s", "0.0.0.0:8080")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logging.getLogger("sandboxd.service").exception("runner failed on %s", "j1")
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    job, warning, error = (json.loads(line) for line in lines)
    assert job["level"] == "info" and job["logger"] == JOB_LOG
    assert job["message"] == "job abc finished: Accepted"
    assert (job["id"], job["status"], job["time_ms"], job["memory_kb"], job["cached"]) == (
        "abc", "Accepted", 12, 3072, False)
    assert job["ts"].endswith("Z")
    assert warning == {"ts": warning["ts"], "level": "warning", "logger": "sandboxd",
                       "message": "listening on 0.0.0.0:8080"}
    assert error["level"] == "error" and "ValueError: boom" in error["exception"]


def test_json_formatter_keeps_its_own_keys_and_survives_odd_values() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.fields = {"message": "overwritten?", "level": "x", "path": Path("/a"),  # type: ignore
                     "status": Status.ACCEPTED}
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["message"], entry["level"]) == ("m", "info")
    assert entry["path"] == "/a" and entry["status"] == "Accepted"


# -- the runner's hooks --------------------------------------------------------------------


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def compile_step(self, language: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("compile", language))

    def run_step(self, language: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("run", language))

    def sandbox_failure(self, reason: str) -> None:
        self.events.append(("failure", reason))


class FakeWorkspace:
    """An empty directory for box/: the runner may copy a compiled program out of it
    and into another (its compiled-artifact cache, artifacts.py)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name)
        (self.path / "box").mkdir()
        self.host_id = os.getuid()

    def write_file(self, name: str, content: bytes, mode: int = 0o644) -> None:
        pass

    def binds_for_next_step(self) -> tuple[()]:
        return ()

    def destroy(self) -> None:
        self._dir.cleanup()


class FakeSandbox:
    """Answers each box with the next outcome (or raises it, if it is an exception)."""

    healthy = True

    def __init__(self, *outcomes: JailOutcome | Exception) -> None:
        self.outcomes = list(outcomes)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        yield 0

    def workspace(self, slot: int, size_mb: int) -> FakeWorkspace:
        return FakeWorkspace()

    async def run(self, spec: JailSpec) -> JailOutcome:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


OK = JailOutcome(termination=Termination.EXITED, exit_code=0, stdout=b"1\n")


def runner_with(*outcomes: JailOutcome | Exception) -> tuple[Runner, RecordingObserver]:
    config = Config()
    registry = languages_mod.load(config.server.languages_file, config.sandbox.rootfs_dir)
    observer = RecordingObserver()
    runner = Runner(FakeSandbox(*outcomes), registry, config,  # type: ignore[arg-type]
                    observer=observer)
    return runner, observer


async def test_runner_reports_compile_and_run_steps() -> None:
    runner, observer = runner_with(OK, OK)  # python3: syntax check, then the run
    result = await runner.run(SUBMISSION)
    assert result.status is Status.ACCEPTED
    assert observer.events == [("compile", "python3"), ("run", "python3")]


async def test_runner_reports_a_failing_box_as_a_sandbox_failure() -> None:
    runner, observer = runner_with(OK, JailError("cannot create the box cgroup: EACCES"))
    result = await runner.run(SUBMISSION)
    assert result.status is Status.INTERNAL_ERROR
    assert observer.events == [
        ("compile", "python3"),
        ("failure", "sandbox failure: cannot create the box cgroup: EACCES")]


async def test_runner_reports_a_setup_error_outcome_as_a_sandbox_failure() -> None:
    setup = JailOutcome(termination=Termination.SETUP_ERROR, setup_error="mount: EPERM")
    runner, observer = runner_with(OK, setup)
    result = await runner.run(SUBMISSION)
    assert result.status is Status.INTERNAL_ERROR
    assert observer.events[:2] == [("compile", "python3"), ("run", "python3")]
    assert observer.events[2][0] == "failure" and "mount: EPERM" in observer.events[2][1]


async def test_runner_without_an_observer_uses_the_no_op_one() -> None:
    config = Config()
    registry = languages_mod.load(config.server.languages_file, config.sandbox.rootfs_dir)
    runner = Runner(FakeSandbox(OK, OK), registry, config)  # type: ignore[arg-type]
    assert type(runner.observer) is Observer
    assert (await runner.run(SUBMISSION)).status is Status.ACCEPTED
