"""The API's edge against the real daemon over HTTP: 415, 413, 401 (and /health open),
batches, the ?wait=true cap, /metrics counters moving after real jobs, JSON log lines.

One daemon for the module, with tokens and small maxima so the limits are cheap to hit.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

TOKEN = "e2e-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = f"""
[server]
max_source_bytes = 2000
max_stdin_bytes = 2000
max_body_bytes = 100000
max_batch = 5
wait_cap_s = 2

[auth]
tokens = ["{TOKEN}"]

[sandbox]
state_dir = "/run/sandboxd-test"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    tmp = tmp_path_factory.mktemp("edge")
    d = start_daemon_with_token(tmp)
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)


def start_daemon_with_token(tmp) -> Daemon:
    # start_daemon polls /health to know the daemon is up: it stays open with tokens.
    return start_daemon(tmp, config_text=CONFIG, log_name="daemon.log", languages=("python3", "c"))


def call(daemon: Daemon, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, token: bool = True
         ) -> tuple[int, Any, dict[str, str]]:
    """(status, the decoded answer (JSON, or text for /metrics), headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = {"Content-Type": "application/json", **(AUTH if token else {}), **(headers or {})}
    request = urllib.request.Request(daemon.url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, text, got = resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, text, got = e.code, e.read().decode(), dict(e.headers)
    is_json = got.get("Content-Type", "").startswith("application/json")
    return status, json.loads(text) if is_json else text, got


def unique(source: str) -> str:
    """The same program, never answered from the result cache of an earlier test."""
    return f"# {uuid.uuid4().hex}\n{source}"


def final_results(daemon: Daemon, ids: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, results, _ = call(daemon, "GET", "/result?ids=" + ",".join(ids))
        assert status == 200, results
        if all(r["status"] not in ("Queued", "Running") for r in results):
            return results
        time.sleep(0.1)
    raise AssertionError(f"not final within 120 s: {results}")


def metric(text: str, series: str) -> float:
    """The value of one series (`name{labels}` exactly as exposed), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(daemon: Daemon) -> str:
    status, text, headers = call(daemon, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return text


HELLO = {"language": "python3", "source": "print('hello', input())", "stdin": "world"}


# -- 415, 413 ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_415(daemon, content_type):
    status, body, _ = call(daemon, "POST", "/execute", HELLO,
                           headers={"Content-Type": content_type})
    assert status == 415
    assert body["error"].startswith(f"Content-Type must be application/json, not "
                                    f"'{content_type}'")


def test_json_with_a_charset_is_accepted(daemon):
    status, body, _ = call(daemon, "POST", "/execute", {**HELLO, "source": unique("print(1)")},
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 202, body


def test_oversized_source_and_body_are_413_naming_the_limit(daemon):
    status, body, _ = call(daemon, "POST", "/execute", {**HELLO, "source": "#" * 2001})
    assert (status, body["error"]) == (
        413, "source: 2001 bytes, over the maximum of 2000 bytes (server.max_source_bytes)")
    status, body, _ = call(daemon, "POST", "/execute", {**HELLO, "padding": "x" * 100_001})
    assert (status, body["error"]) == (
        413, "request body is over the maximum of 100000 bytes (server.max_body_bytes)")


def test_validation_errors_name_field_and_rule(daemon):
    cases = [
        ({**HELLO, "memory_limit_mb": 2048},
         "memory_limit_mb: 2048 is out of range: allowed 4..1024 (limits.memory_limit_mb)"),
        ({**HELLO, "cache": "yes"}, "cache: must be true or false, not a string"),
        ({**HELLO, "colour": 1}, "unknown field(s): colour"),
        ({**HELLO, "interactor_source": "x"},
         "interactor_language: required with interactor_source"),
    ]
    for body, error in cases:
        status, answer, _ = call(daemon, "POST", "/execute", body)
        assert (status, answer) == (400, {"error": error})
    # Webhooks are off on this daemon (no allowed_hosts): a callback_url says so.
    status, answer, _ = call(daemon, "POST", "/execute",
                             {**HELLO, "callback_url": "http://127.0.0.1:9/hook"})
    assert status == 400
    assert answer["error"].startswith("callback_url: ")
    assert "webhooks.allowed_hosts" in answer["error"]


# -- 401 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/execute", HELLO),
    ("POST", "/execute/batch", {"submissions": [HELLO]}),
    ("GET", "/result/0123", None),
    ("GET", "/result?ids=0123", None),
    ("GET", "/languages", None),
    ("GET", "/metrics", None),
])
def test_every_endpoint_but_health_needs_the_token(daemon, method, path, body):
    status, answer, headers = call(daemon, method, path, body, token=False)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="sandboxd"'
    assert "Authorization" in answer["error"]
    status, answer, headers = call(daemon, method, path, body, token=False,
                                   headers={"Authorization": "Bearer not-the-token"})
    assert (status, answer) == (401, {"error": "invalid token"})
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


def test_health_needs_no_token(daemon):
    assert call(daemon, "GET", "/health", token=False)[:2] == (200, {"status": "ok"})


# -- batches and ?wait ------------------------------------------------------------------


def test_a_batch_runs_every_member_and_results_come_back_in_order(daemon):
    members = [
        {**HELLO, "source": unique("print('hello', input())"), "expected_output": "hello world"},
        {**HELLO, "source": unique("print('hello')"), "expected_output": "hello world"},
        {"language": "python3", "source": unique("raise SystemExit(3)")},
        {"language": "c", "source": "int main(void) { return 0 }"},  # compile error
    ]
    status, body, _ = call(daemon, "POST", "/execute/batch", {"submissions": members})
    assert status == 202, body
    ids = body["submission_ids"]
    assert len(ids) == 4 and len(set(ids)) == 4
    results = final_results(daemon, ids[::-1] + ["0" * 32])
    assert [r["submission_id"] for r in results] == ids[::-1] + ["0" * 32]
    assert [r["status"] for r in results] == [
        "Compile Error", "Runtime Error", "Wrong Answer", "Accepted", None]
    assert results[3]["stdout"] == "hello world\n"
    assert results[4]["error"] == f"no submission with id {'0' * 32!r}"


def test_an_invalid_batch_member_is_400_naming_it_and_nothing_is_queued(daemon):
    before = metric(scrape(daemon), 'sandboxd_jobs_accepted_total{language="python3"}')
    members = [{**HELLO, "source": unique("print(1)")}, {**HELLO, "source": unique("print(2)")},
               {**HELLO, "time_limit_ms": 0}]
    status, body, _ = call(daemon, "POST", "/execute/batch", {"submissions": members})
    assert (status, body) == (400, {"error": "submissions[2].time_limit_ms: 0 is out of range: "
                                              "allowed 1..10000 (limits.time_limit_ms)"})
    status, body, _ = call(daemon, "POST", "/execute/batch", {"submissions": [HELLO] * 6})
    assert (status, body) == (400, {"error": "submissions: 6 submissions, allowed 1..5 "
                                              "(server.max_batch)"})
    after = metric(scrape(daemon), 'sandboxd_jobs_accepted_total{language="python3"}')
    assert after == before


def test_wait_past_the_cap_answers_202_with_the_id_then_the_result_is_final(daemon):
    sleeper = {"language": "python3", "source": unique("import time; time.sleep(4); print(7)"),
               "cache": False}
    status, body, _ = call(daemon, "POST", "/execute?wait=true", sleeper)
    assert status == 202, body  # wait_cap_s = 2
    assert set(body) == {"submission_id", "status"}
    assert body["status"] in ("Queued", "Running")
    [result] = final_results(daemon, [body["submission_id"]])
    assert (result["status"], result["stdout"]) == ("Accepted", "7\n")


# -- metrics and logs ------------------------------------------------------------------------


def test_metrics_counters_move_after_a_real_job(daemon):
    before = scrape(daemon)
    for name in ("sandboxd_queue_depth", "sandboxd_jobs_running", "sandboxd_warm_boxes",
                 "sandboxd_cache_hits_total",
                 "sandboxd_sandbox_failures_total", "sandboxd_webhook_attempts_total",
                 "sandboxd_job_seconds_bucket", "sandboxd_run_step_seconds_bucket"):
        assert f"\n{name}" in before or f"# TYPE {name.removesuffix('_bucket')}" in before, name
    finished = 'sandboxd_jobs_finished_total{language="python3",status="Accepted"}'
    run_steps = 'sandboxd_run_step_seconds_count{language="python3"}'
    compiles = 'sandboxd_compile_steps_total{language="python3"}'  # the syntax check
    jobs = "sandboxd_job_seconds_count"

    status, result, _ = call(daemon, "POST", "/execute?wait=true",
                             {**HELLO, "source": unique("print('hello', input())"),
                              "cache": False})
    assert (status, result["status"]) == (200, "Accepted"), result
    after = scrape(daemon)
    assert metric(after, finished) == metric(before, finished) + 1
    assert metric(after, run_steps) == metric(before, run_steps) + 1
    assert metric(after, compiles) == metric(before, compiles) + 1
    assert metric(after, jobs) == metric(before, jobs) + 1
    assert metric(after, "sandboxd_queue_depth") >= 0
    # The run's slot got a box built for its next job (sandbox.warm_boxes = 1).
    assert metric(after, "sandboxd_warm_boxes") >= 1


def test_every_finished_job_is_one_json_log_line(daemon):
    status, result, _ = call(daemon, "POST", "/execute?wait=true",
                             {"language": "python3", "source": unique("raise SystemExit(5)"),
                              "cache": False})
    assert (status, result["status"]) == (200, "Runtime Error"), result
    job_id = result["submission_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in daemon.output().splitlines() if line.strip()]
        mine = [e for e in lines if e.get("id") == job_id]
        if mine:
            break
        time.sleep(0.1)
    [entry] = mine
    assert entry["event"] == "job_finished" and entry["level"] == "info"
    assert (entry["language"], entry["status"], entry["exit_code"]) == (
        "python3", "Runtime Error", 5)
    for key in ("time_ms", "wall_time_ms", "memory_kb", "cached", "total_s", "ts"):
        assert key in entry, key
    assert entry["time_ms"] == result["time_ms"] and entry["memory_kb"] == result["memory_kb"]
    # Every line the daemon wrote is JSON (the loads above would have failed otherwise),
    # the start-up lines included.
    assert any("listening on" in e["message"] for e in lines)
