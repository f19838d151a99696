"""The HTTP API against a fake service and catalog: validation, status codes, JSON errors."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from sandboxd.api import WEBHOOKS_OFF, CallbackCheck, create_app
from sandboxd.config import AuthConfig, Config
from sandboxd.metrics import Metrics
from sandboxd.model import Result, Status, Submission, decode_output, pending
from sandboxd.service import QueueFull, ResultExpired, ShuttingDown, Stats

RESULT_KEYS = {
    "submission_id",
    "status",
    "stdout",
    "stderr",
    "exit_code",
    "signal",
    "time_ms",
    "wall_time_ms",
    "memory_kb",
    "compile_output",
    "cached",
}


def judged(submission: Submission) -> Result:
    """Accepted with the stdin echoed; "compile error" as source gives a Compile Error."""
    if submission.source == "compile error":
        return Result(status=Status.COMPILE_ERROR, compile_output="main.c:1: error\n")
    stdout, exact_stdout = decode_output(submission.stdin)
    return Result(status=Status.ACCEPTED, stdout=stdout, exact_stdout=exact_stdout, exit_code=0,
                  time_ms=42, wall_time_ms=50, memory_kb=8192)


class FakeService:
    """The service interface the API codes against, answering from memory.

    A submission is judged at once (`judged`) unless `hold` is set: then it stays
    Queued and `wait` returns it pending, as the real one does once its timeout passes."""

    def __init__(self) -> None:
        self.results: dict[str, Result] = {}
        self.expired: set[str] = set()
        self.submitted: list[Submission] = []
        self.hold = False
        self.refusal: Exception | None = None
        self.problem: str | None = None
        self.wait_timeouts: list[float | None] = []
        self.stats_value = Stats(queued=0, running=0, finished={})

    def _accept(self, submission: Submission) -> str:
        job_id = uuid.uuid4().hex
        self.submitted.append(submission)
        self.results[job_id] = pending(Status.QUEUED) if self.hold else judged(submission)
        return job_id

    async def submit(self, submission: Submission) -> str:
        if self.refusal is not None:
            raise self.refusal
        return self._accept(submission)

    async def submit_many(self, submissions: list[Submission]) -> list[str]:
        if self.refusal is not None:
            raise self.refusal
        return [self._accept(s) for s in submissions]

    def get(self, job_id: str) -> Result | None:
        if job_id in self.expired:
            raise ResultExpired(f"the result of {job_id} expired (server.result_ttl_s)")
        return self.results.get(job_id)

    async def wait(self, job_id: str, timeout: float | None) -> Result:
        self.wait_timeouts.append(timeout)
        if job_id in self.expired:
            raise ResultExpired(f"the result of {job_id} expired (server.result_ttl_s)")
        return self.results[job_id]

    def stats(self) -> Stats:
        return self.stats_value

    def health_problem(self) -> str | None:
        return self.problem


class FakeCatalog:
    def __init__(self) -> None:
        self.broken = False
        self.unavailable: dict[str, str] = {}
        self._languages = [
            {"id": "python3", "name": "Python 3.11", "compiled": False},
            {"id": "c", "name": "C (gcc 12)", "compiled": True},
        ]

    def __contains__(self, language_id: str) -> bool:
        return any(d["id"] == language_id for d in self._languages)

    def unavailable_reason(self, language_id: str) -> str | None:
        return self.unavailable.get(language_id)

    def describe(self, config: Config) -> list[dict[str, Any]]:
        self.described_with = config
        if self.broken:
            raise RuntimeError("languages.toml vanished")
        return self._languages


@dataclasses.dataclass
class Env:
    client: TestClient[Any, Any]
    service: FakeService
    catalog: FakeCatalog
    metrics: Metrics
    config: Config


MakeEnv = Callable[..., Awaitable[Env]]


def make_config(sandbox: dict[str, Any] | None = None, tokens: tuple[str, ...] = (),
                **server: Any) -> Config:
    base = Config()
    return dataclasses.replace(base, server=dataclasses.replace(base.server, **server),
                               sandbox=dataclasses.replace(base.sandbox, **(sandbox or {})),
                               auth=AuthConfig(tokens=tokens))


async def new_env(aiohttp_client: Any, sandbox: dict[str, Any] | None = None,
                  tokens: tuple[str, ...] = (), callback_check: CallbackCheck | None = None,
                  **server: Any) -> Env:
    """An app over a fake service and catalog, and a test client for it (also used by
    the other test_api_* modules, with their own `aiohttp_client`)."""
    config = make_config(sandbox, tokens, **server)
    service, catalog, metrics = FakeService(), FakeCatalog(), Metrics()
    app = create_app(service, catalog, config, metrics=metrics, callback_check=callback_check)
    return Env(await aiohttp_client(app), service, catalog, metrics, config)


@pytest.fixture
async def make_env(aiohttp_client: Any) -> AsyncIterator[MakeEnv]:
    async def make(**kwargs: Any) -> Env:
        return await new_env(aiohttp_client, **kwargs)

    yield make


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


async def post(env: Env, body: Any, path: str = "/execute") -> tuple[int, Any]:
    resp = await env.client.post(path, json=body)
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


async def post_raw(env: Env, data: bytes, path: str = "/execute",
                   content_type: str | None = None) -> tuple[int, Any]:
    # Without a type given, none is sent (aiohttp would add application/octet-stream).
    if content_type is None:
        resp = await env.client.post(path, data=data, skip_auto_headers=["Content-Type"])
    else:
        resp = await env.client.post(path, data=data, headers={"Content-Type": content_type})
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


GOOD = {"language": "python3", "source": "print(input())", "stdin": "hello"}
JSON = {"Content-Type": "application/json"}


# -- POST /execute: accepted -------------------------------------------------------------


async def test_execute_queues_with_defaults(env: Env) -> None:
    status, body = await post(env, {"language": "python3", "source": "x"})
    assert status == 202
    assert set(body) == {"submission_id"}
    [submission] = env.service.submitted
    assert submission.stdin == b"" and submission.expected_output is None
    assert submission.callback_url is None and submission.cache is True
    limits = submission.limits
    assert (limits.time_limit_ms, limits.wall_time_limit_ms, limits.memory_limit_mb) == (
        2000, 5000, 256)


async def test_execute_passes_every_field(make_env: MakeEnv) -> None:
    env = await make_env(callback_check=lambda url: None)
    body = {
        **GOOD,
        "time_limit_ms": 1000,
        "wall_time_limit_ms": 1500,
        "memory_limit_mb": 128,
        "expected_output": "hello\n",
        "callback_url": "https://judge.example/hook?x=1",
        "cache": False,
    }
    resp = await env.client.post("/execute?wait=true", json=body)
    assert resp.status == 200
    [submission] = env.service.submitted
    assert submission.language == "python3" and submission.source == "print(input())"
    assert submission.stdin == b"hello" and submission.expected_output == b"hello\n"
    assert (submission.limits.time_limit_ms, submission.limits.wall_time_limit_ms) == (1000, 1500)
    assert submission.limits.memory_limit_mb == 128
    assert submission.callback_url == "https://judge.example/hook?x=1"
    assert submission.cache is False


async def test_wall_default_follows_time_limit(env: Env) -> None:
    await env.client.post("/execute?wait=1", json={**GOOD, "time_limit_ms": 3000})
    assert env.service.submitted[0].limits.wall_time_limit_ms == 7000


async def test_expected_output_null_is_absent(env: Env) -> None:
    resp = await env.client.post("/execute?wait=true", json={**GOOD, "expected_output": None})
    assert resp.status == 200
    assert env.service.submitted[0].expected_output is None


@pytest.mark.parametrize("wait", ["true", "1", "True"])
async def test_wait_returns_full_result(env: Env, wait: str) -> None:
    resp = await env.client.post(f"/execute?wait={wait}", json=GOOD)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == RESULT_KEYS
    assert len(body.pop("submission_id")) == 32
    assert body == {
        "status": "Accepted",
        "stdout": "hello",
        "stderr": "",
        "exit_code": 0,
        "signal": None,
        "time_ms": 42,
        "wall_time_ms": 50,
        "memory_kb": 8192,
        "compile_output": "",
        "cached": False,
    }


async def test_wait_uses_the_configured_cap(make_env: MakeEnv) -> None:
    env = await make_env(wait_cap_s=7.5)
    await env.client.post("/execute?wait=true", json=GOOD)
    assert env.service.wait_timeouts == [7.5]


async def test_wait_past_the_cap_is_202_with_id_and_pending_status(env: Env) -> None:
    env.service.hold = True
    resp = await env.client.post("/execute?wait=true", json=GOOD)
    assert resp.status == 202
    body = await resp.json()
    assert body == {"submission_id": body["submission_id"], "status": "Queued"}
    assert body["submission_id"] in env.service.results


async def test_wait_on_a_cached_result_says_cached(env: Env) -> None:
    cached = Result(status=Status.ACCEPTED, stdout="hi\n", exit_code=0, cached=True)

    async def submit(submission: Submission) -> str:
        env.service.results["c" * 32] = cached
        return "c" * 32

    env.service.submit = submit  # type: ignore[method-assign]
    resp = await env.client.post("/execute?wait=true", json=GOOD)
    assert resp.status == 200
    assert (await resp.json())["cached"] is True


async def test_wait_on_a_result_evicted_at_once_is_404_saying_so(env: Env) -> None:
    async def submit(submission: Submission) -> str:
        env.service.expired.add("d" * 32)
        return "d" * 32

    env.service.submit = submit  # type: ignore[method-assign]
    resp = await env.client.post("/execute?wait=true", json=GOOD)
    assert resp.status == 404
    assert (await resp.json())["error"] == f"the result of {'d' * 32} expired (server.result_ttl_s)"


async def test_wait_compile_error_has_nulls(env: Env) -> None:
    resp = await env.client.post("/execute?wait=true", json={**GOOD, "source": "compile error"})
    body = await resp.json()
    assert set(body) == RESULT_KEYS
    assert body["status"] == "Compile Error"
    assert body["compile_output"] == "main.c:1: error\n"
    assert (body["stdout"], body["stderr"]) == ("", "")
    for name in ("exit_code", "signal", "time_ms", "wall_time_ms", "memory_kb"):
        assert body[name] is None, name


async def test_wait_false_is_async(env: Env) -> None:
    resp = await env.client.post("/execute?wait=false", json=GOOD)
    assert resp.status == 202
    assert env.service.wait_timeouts == []


async def test_wait_nonsense_is_400(env: Env) -> None:
    resp = await env.client.post("/execute?wait=maybe", json=GOOD)
    assert resp.status == 400
    assert (await resp.json())["error"] == "wait: must be true or false, not 'maybe'"


# -- Content-Type: 415 -------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "text/plain",
    "application/x-www-form-urlencoded",  # what `curl -d` sends without -H
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/jsonx",
    "text/json",
    "application/json; charset=latin-1",
    "application/octet-stream",
    "nonsense",
])
@pytest.mark.parametrize("path", ["/execute", "/execute/batch"])
async def test_non_json_content_type_is_415(env: Env, content_type: str, path: str) -> None:
    body = orjson.dumps({"submissions": [GOOD]} if path.endswith("batch") else GOOD)
    status, answer = await post_raw(env, body, path, content_type)
    assert status == 415
    assert "Content-Type" in answer["error"]
    assert env.service.submitted == []


@pytest.mark.parametrize("content_type", [
    None,  # no Content-Type at all: read as JSON
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON;charset=UTF-8",
    "application/vnd.api+json",
    "application/problem+json",
])
async def test_json_content_types_are_accepted(env: Env, content_type: str | None) -> None:
    status, body = await post_raw(env, orjson.dumps(GOOD), content_type=content_type)
    assert status == 202, body


async def test_415_comes_before_the_body_is_judged(env: Env) -> None:
    status, body = await post_raw(env, b"not json at all", content_type="text/plain")
    assert status == 415
    assert body["error"].startswith("Content-Type must be application/json, not 'text/plain'")


# -- POST /execute: 400s -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"language": "python3",', ["not valid JSON"]),
        (b"", ["not valid JSON"]),
        (b"\xff\xfe{}", ["UTF-8"]),
        (b'"\xc3\x28"', ["UTF-8"]),
        (b"[1, 2]", ["JSON object", "array"]),
        (b'"source"', ["JSON object", "string"]),
        (b"null", ["JSON object", "null"]),
        (b"42", ["JSON object"]),
        (b'{"language": "c", "source": "\\ud800"}', ["not valid JSON", "surrogate"]),
        (b"[" * 5000 + b"]" * 5000, ["not valid JSON"]),
    ],
)
async def test_malformed_body(env: Env, data: bytes, words: list[str]) -> None:
    status, body = await post_raw(env, data)
    assert status == 400
    for word in words:
        assert word in body["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"source": "x"}, "missing required field(s): language"),
        ({"language": "python3"}, "missing required field(s): source"),
        ({}, "missing required field(s): language, source"),
        ({"language": 3, "source": "x"}, "language: must be a string, not a number"),
        ({"language": None, "source": "x"}, "language: must be a string, not null"),
        ({"language": "python3", "source": ["x"]}, "source: must be a string, not an array"),
        ({"language": "python3", "source": None}, "source: must be a string, not null"),
        ({**GOOD, "stdin": 5}, "stdin: must be a string, not a number"),
        ({**GOOD, "stdin": None}, "stdin: must be a string, not null"),
        ({**GOOD, "expected_output": 1},
         "expected_output: must be a string or null, not a number"),
        ({**GOOD, "expected_output": []},
         "expected_output: must be a string or null, not an array"),
        ({**GOOD, "time_limit_ms": "1000"}, "time_limit_ms: must be an integer, not a string"),
        ({**GOOD, "time_limit_ms": 1000.0}, "time_limit_ms: must be an integer, not a number"),
        ({**GOOD, "time_limit_ms": 1000.5}, "time_limit_ms: must be an integer, not a number"),
        ({**GOOD, "time_limit_ms": True}, "time_limit_ms: must be an integer, not a boolean"),
        ({**GOOD, "memory_limit_mb": False}, "memory_limit_mb: must be an integer, not a boolean"),
        ({**GOOD, "wall_time_limit_ms": None}, "wall_time_limit_ms: must be an integer, not null"),
        ({**GOOD, "wall_time_limit_ms": {}},
         "wall_time_limit_ms: must be an integer, not an object"),
        ({**GOOD, "language": "cobol"},
         "language: unknown language 'cobol'; known languages: c, python3"),
        ({**GOOD, "cache": "no"}, "cache: must be true or false, not a string"),
        ({**GOOD, "cache": 0}, "cache: must be true or false, not a number"),
        ({**GOOD, "cache": None}, "cache: must be true or false, not null"),
        ({**GOOD, "callback_url": 5}, "callback_url: must be a string or null, not a number"),
        ({**GOOD, "callback_url": "ftp://judge.example/x"},
         "callback_url: must be an absolute http:// or https:// URL"),
        ({**GOOD, "callback_url": "/relative/path"},
         "callback_url: must be an absolute http:// or https:// URL"),
        ({**GOOD, "callback_url": "http://[::1/x"},
         "callback_url: must be an absolute http:// or https:// URL"),
        ({**GOOD, "callback_url": "https://" + "a" * 2100},
         "callback_url: 2108 characters, over the maximum of 2048"),
    ],
)
async def test_bad_fields(env: Env, body: dict[str, Any], error: str) -> None:
    status, answer = await post(env, body)
    assert status == 400
    assert answer == {"error": error}
    assert env.service.submitted == []


async def test_unknown_fields_all_named(env: Env) -> None:
    status, body = await post(env, {**GOOD, "lang": "c", "timeout": 5, "memory": 1})
    assert status == 400
    assert body["error"] == "unknown field(s): lang, memory, timeout"


@pytest.mark.parametrize(
    ("field", "value", "bounds"),
    [
        ("time_limit_ms", 0, "1..10000"),
        ("time_limit_ms", -5, "1..10000"),
        ("time_limit_ms", 10001, "1..10000"),
        ("wall_time_limit_ms", 0, "1..30000"),
        ("wall_time_limit_ms", 30001, "1..30000"),
        ("memory_limit_mb", 3, "4..1024"),
        ("memory_limit_mb", 1025, "4..1024"),
    ],
)
async def test_limits_out_of_range(env: Env, field: str, value: int, bounds: str) -> None:
    status, body = await post(env, {**GOOD, field: value})
    assert status == 400
    assert body["error"] == (f"{field}: {value} is out of range: allowed {bounds} "
                             f"(limits.{field})")


async def test_huge_integer_is_400(env: Env) -> None:
    # Beyond 64 bits the JSON parser itself refuses the number: still a 400, not a 500.
    status, body = await post_raw(env, b'{"language": "c", "source": "", "time_limit_ms": 1e999}')
    assert status == 400 and "error" in body
    status, body = await post(env, {**GOOD, "time_limit_ms": 2**70})
    assert status == 400 and "error" in body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_limit_ms", 1),
        ("time_limit_ms", 10000),
        ("wall_time_limit_ms", 30000),
        ("memory_limit_mb", 4),
        ("memory_limit_mb", 1024),
    ],
)
async def test_limits_at_the_edges_are_kept(env: Env, field: str, value: int) -> None:
    resp = await env.client.post("/execute?wait=true", json={**GOOD, field: value})
    assert resp.status == 200
    assert getattr(env.service.submitted[0].limits, field) == value


async def test_unavailable_language_is_a_clear_400(env: Env) -> None:
    env.catalog.unavailable["c"] = "toolchain not installed (/usr/bin/gcc missing)"
    status, body = await post(env, {"language": "c", "source": "x"})
    assert status == 400
    assert body["error"] == ("language: 'c' is unavailable on this server: toolchain not "
                             "installed (/usr/bin/gcc missing)")
    assert env.service.submitted == []
    status, _ = await post(env, {"language": "python3", "source": "x"})
    assert status == 202


# -- callback_url ------------------------------------------------------------------------


async def test_callback_url_is_refused_while_webhooks_are_off(env: Env) -> None:
    status, body = await post(env, {**GOOD, "callback_url": "https://judge.example/hook"})
    assert status == 400
    assert body["error"] == f"callback_url: {WEBHOOKS_OFF}"
    assert "webhooks.allowed_hosts" in body["error"]


async def test_callback_url_check_decides_and_its_reason_is_the_error(make_env: MakeEnv) -> None:
    asked: list[str] = []

    def check(url: str) -> str | None:
        asked.append(url)
        return None if "judge.example" in url else "host 'evil.example' is not on the allow-list"

    env = await make_env(callback_check=check)
    status, body = await post(env, {**GOOD, "callback_url": "http://evil.example/x"})
    assert (status, body["error"]) == (
        400, "callback_url: host 'evil.example' is not on the allow-list")
    status, _ = await post(env, {**GOOD, "callback_url": "http://judge.example:8000/x"})
    assert status == 202
    assert asked == ["http://evil.example/x", "http://judge.example:8000/x"]
    assert env.service.submitted[0].callback_url == "http://judge.example:8000/x"


async def test_callback_url_null_is_absent(env: Env) -> None:
    status, _ = await post(env, {**GOOD, "callback_url": None})
    assert status == 202
    assert env.service.submitted[0].callback_url is None


# -- 413, 503 --------------------------------------------------------------------------


async def test_source_too_large(make_env: MakeEnv) -> None:
    env = await make_env(max_source_bytes=10)
    status, body = await post(env, {**GOOD, "source": "é" * 6})  # 12 bytes, 6 characters
    assert status == 413
    assert body["error"] == ("source: 12 bytes, over the maximum of 10 bytes "
                             "(server.max_source_bytes)")
    status, _ = await post(env, {**GOOD, "source": "x" * 10})
    assert status == 202


async def test_default_source_maximum_is_one_mib(env: Env) -> None:
    # A file-like body: aiohttp warns about sending megabytes of raw bytes at once.
    data = io.BytesIO(orjson.dumps({**GOOD, "source": "x" * (1024 * 1024 + 1)}))
    resp = await env.client.post("/execute", data=data, headers=JSON)
    assert resp.status == 413
    assert (await resp.json())["error"].startswith("source: 1048577 bytes")


async def test_body_too_large(make_env: MakeEnv) -> None:
    env = await make_env(max_body_bytes=1000)
    resp = await env.client.post("/execute", json={**GOOD, "stdin": "x" * 2000})
    assert resp.status == 413
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == (
        "request body is over the maximum of 1000 bytes (server.max_body_bytes)")
    assert env.service.submitted == []


async def test_stdin_too_large_is_413_naming_field_and_setting(make_env: MakeEnv) -> None:
    env = await make_env(max_stdin_bytes=10)
    status, body = await post(env, {**GOOD, "stdin": "é" * 6})  # 12 bytes, 6 characters
    assert status == 413
    assert body["error"] == "stdin: 12 bytes, over the maximum of 10 bytes (server.max_stdin_bytes)"
    assert env.service.submitted == []
    assert (await post(env, {**GOOD, "stdin": "x" * 10}))[0] == 202


@pytest.mark.parametrize(("expected", "status"), [
    ("x" * 101, 400),
    ("é" * 51, 400),  # 102 bytes
    ("x" * 100, 202),
    ("x" * 100 + " \t\r\n" * 500, 202),  # trailing whitespace is not compared
    ("x \n" * 50, 202),  # 150 bytes, 99 as compared ("x\n" * 49 + "x")
    ("\ufeff" + "x" * 100, 202),  # nor is a leading BOM
])
async def test_expected_output_longer_than_the_output_limit_is_400(
        make_env: MakeEnv, expected: str, status: int) -> None:
    env = await make_env(sandbox={"output_limit_bytes": 100})
    got, body = await post(env, {**GOOD, "expected_output": expected})
    assert got == status, body
    if status == 400:
        error = body["error"]
        assert error.startswith("expected_output: ") and "output limit of 100" in error
        assert "sandbox.output_limit_bytes" in error
        assert env.service.submitted == []
    else:
        # Passed on unchanged: the verdict applies the comparison rule itself.
        assert env.service.submitted[0].expected_output == expected.encode()


async def test_expected_output_over_the_default_output_limit_is_400(env: Env) -> None:
    data = io.BytesIO(orjson.dumps({**GOOD, "expected_output": "7" * (1024 * 1024 + 1)}))
    resp = await env.client.post("/execute", data=data, headers=JSON)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("expected_output: 1048577 bytes")


@pytest.mark.parametrize(("refusal", "words"), [
    (QueueFull("the queue is full (256 jobs waiting)"), "the queue is full (256 jobs waiting)"),
    (ShuttingDown("the service is shutting down"),
     "not accepting jobs: the service is shutting down"),
])
@pytest.mark.parametrize("path", ["/execute", "/execute/batch"])
async def test_unavailable_service_is_503_with_retry_after(
        env: Env, refusal: Exception, words: str, path: str) -> None:
    env.service.refusal = refusal
    body = {"submissions": [GOOD, GOOD]} if path.endswith("batch") else GOOD
    resp = await env.client.post(path, json=body)
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    assert (await resp.json()) == {"error": words}
    assert env.service.submitted == []


# -- GET /result/{id} ----------------------------------------------------------------------


async def test_result_pending_then_final(env: Env) -> None:
    env.service.hold = True
    _, body = await post(env, GOOD)
    submission_id = body["submission_id"]
    resp = await env.client.get(f"/result/{submission_id}")
    queued = await resp.json()
    assert resp.status == 200 and set(queued) == RESULT_KEYS
    assert queued["status"] == "Queued" and queued["submission_id"] == submission_id
    assert queued["exit_code"] is None and queued["time_ms"] is None

    env.service.results[submission_id] = judged(env.service.submitted[0])
    final = await (await env.client.get(f"/result/{submission_id}")).json()
    assert final["status"] == "Accepted" and final["stdout"] == "hello"


async def test_result_unknown_id_is_404_json(env: Env) -> None:
    resp = await env.client.get("/result/0123abc")
    assert resp.status == 404
    assert (await resp.json()) == {"error": "no submission with id '0123abc'"}


async def test_result_expired_id_is_404_saying_it_expired(env: Env) -> None:
    env.service.expired.add("e" * 32)
    resp = await env.client.get("/result/" + "e" * 32)
    assert resp.status == 404
    assert (await resp.json())["error"] == f"the result of {'e' * 32} expired (server.result_ttl_s)"


# -- batches ---------------------------------------------------------------------------


async def test_batch_queues_every_member_in_order(env: Env) -> None:
    members = [{**GOOD, "stdin": str(i)} for i in range(5)]
    status, body = await post(env, {"submissions": members}, "/execute/batch")
    assert status == 202
    assert set(body) == {"submission_ids"} and len(body["submission_ids"]) == 5
    assert len(set(body["submission_ids"])) == 5
    assert [s.stdin for s in env.service.submitted] == [b"0", b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize(("member", "error", "code"), [
    ({**GOOD, "time_limit_ms": 0},
     "submissions[3].time_limit_ms: 0 is out of range: allowed 1..10000 (limits.time_limit_ms)",
     400),
    ({**GOOD, "language": 7}, "submissions[3].language: must be a string, not a number", 400),
    ({"language": "c"}, "submissions[3]: missing required field(s): source", 400),
    ({**GOOD, "colour": "red"}, "submissions[3]: unknown field(s): colour", 400),
    ({"language": "python3", "source": "", "tests": []},
     "submissions[3].tests: 0 tests, allowed 1..100 (server.max_tests)", 400),
    ("print(1)", "submissions[3]: must be a JSON object, not a string", 400),
    (None, "submissions[3]: must be a JSON object, not null", 400),
    ({**GOOD, "source": "x" * 21},
     "submissions[3].source: 21 bytes, over the maximum of 20 bytes (server.max_source_bytes)",
     413),
])
async def test_batch_member_error_names_index_and_field_and_queues_nothing(
        make_env: MakeEnv, member: Any, error: str, code: int) -> None:
    env = await make_env(max_source_bytes=20)
    members = [{**GOOD, "source": "ok"}] * 3 + [member] + [{**GOOD, "source": "ok"}]
    status, body = await post(env, {"submissions": members}, "/execute/batch")
    assert (status, body) == (code, {"error": error})
    assert env.service.submitted == []


@pytest.mark.parametrize(("body", "error"), [
    ({}, "missing required field(s): submissions"),
    ({"submissions": []}, "submissions: 0 submissions, allowed 1..3 (server.max_batch)"),
    ({"submissions": [GOOD] * 4}, "submissions: 4 submissions, allowed 1..3 (server.max_batch)"),
    ({"submissions": GOOD}, "submissions: must be an array, not an object"),
    ({"submissions": None}, "submissions: must be an array, not null"),
    ({"submissions": [GOOD], "wait": True},
     'unknown field(s): wait (a batch is {"submissions": [...]})'),
    ([GOOD], "request body must be a JSON object, not an array"),
])
async def test_batch_shape_errors(make_env: MakeEnv, body: Any, error: str) -> None:
    env = await make_env(max_batch=3)
    status, answer = await post(env, body, "/execute/batch")
    assert (status, answer) == (400, {"error": error})
    assert env.service.submitted == []


async def test_batch_of_exactly_max_batch_is_accepted(make_env: MakeEnv) -> None:
    env = await make_env(max_batch=3)
    status, body = await post(env, {"submissions": [GOOD] * 3}, "/execute/batch")
    assert status == 202 and len(body["submission_ids"]) == 3


async def test_batch_with_wait_is_400(env: Env) -> None:
    resp = await env.client.post("/execute/batch?wait=true", json={"submissions": [GOOD]})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("wait: not supported on /execute/batch")
    assert env.service.submitted == []


# -- GET /result?ids= ------------------------------------------------------------------


async def test_results_by_ids_in_the_order_asked(env: Env) -> None:
    _, body = await post(env, {"submissions": [{**GOOD, "stdin": str(i)} for i in range(3)]},
                         "/execute/batch")
    a, b, c = body["submission_ids"]
    resp = await env.client.get(f"/result?ids={c},{a},{b},{a}")
    assert resp.status == 200
    results = await resp.json()
    assert [r["submission_id"] for r in results] == [c, a, b, a]
    assert [r["stdout"] for r in results] == ["2", "0", "1", "0"]
    assert all(set(r) == RESULT_KEYS for r in results)


async def test_results_unknown_and_expired_ids_are_entries_with_an_error(env: Env) -> None:
    _, body = await post(env, GOOD)
    known = body["submission_id"]
    env.service.expired.add("old")
    resp = await env.client.get(f"/result?ids=nope,{known},old")
    assert resp.status == 200
    nope, found, old = await resp.json()
    assert nope == {"submission_id": "nope", "status": None,
                    "error": "no submission with id 'nope'"}
    assert found["status"] == "Accepted"
    assert old == {"submission_id": "old", "status": None,
                   "error": "the result of old expired (server.result_ttl_s)"}


async def test_results_ids_may_repeat_the_parameter(env: Env) -> None:
    _, body = await post(env, GOOD)
    resp = await env.client.get(f"/result?ids={body['submission_id']}&ids=x,y")
    assert [r["submission_id"] for r in await resp.json()] == [body["submission_id"], "x", "y"]


@pytest.mark.parametrize(("query", "error"), [
    ("", "ids: required query parameter (GET /result?ids=a,b,c)"),
    ("?id=a", "ids: required query parameter (GET /result?ids=a,b,c)"),
    ("?ids=", "ids: id 0 is empty"),
    ("?ids=a,,b", "ids: id 1 is empty"),
    ("?ids=a,b,c,d", "ids: 4 ids, allowed 1..3 (server.max_batch)"),
])
async def test_results_bad_ids(make_env: MakeEnv, query: str, error: str) -> None:
    env = await make_env(max_batch=3)
    resp = await env.client.get(f"/result{query}")
    assert resp.status == 400
    assert await resp.json() == {"error": error}


# -- other endpoints and generic errors --------------------------------------------------


async def test_languages(env: Env) -> None:
    resp = await env.client.get("/languages")
    assert resp.status == 200
    config = Config()
    assert await resp.json() == env.catalog.describe(config)
    # The catalog fills commands for the daemon's own configuration (its defaults).
    assert env.catalog.described_with == config


async def test_health_reports_the_services_problem(env: Env) -> None:
    resp = await env.client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    env.service.problem = "the fork server is down"
    resp = await env.client.get("/health")
    assert resp.status == 503
    assert await resp.json() == {"status": "unavailable", "error": "the fork server is down"}


@pytest.mark.parametrize("path", ["/", "/nope", "/result/a/b", "/execute/batch/x"])
async def test_unknown_route_is_404_json(env: Env, path: str) -> None:
    resp = await env.client.get(path)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert path in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/execute", "POST"), ("POST", "/health", "GET"), ("DELETE", "/result/x", "GET"),
     ("GET", "/execute/batch", "POST"), ("POST", "/metrics", "GET"),
     ("PUT", "/result", "GET")],
)
async def test_wrong_method_is_405_json(env: Env, method: str, path: str, allowed: str) -> None:
    resp = await env.client.request(method, path)
    assert resp.status == 405
    assert resp.content_type == "application/json"
    assert allowed in resp.headers["Allow"]
    assert method in (await resp.json())["error"]


async def test_handler_crash_is_500_json(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.catalog.broken = True
    resp = await env.client.get("/languages")
    assert resp.status == 500
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert "vanished" not in body["error"]  # internals are logged, not shown
    assert any(r.exc_info for r in caplog.records)


def test_api_does_not_import_the_jail() -> None:
    # A fresh interpreter: this test session has imported sandboxd.jail elsewhere.
    code = (
        "import sys, sandboxd.api; "
        "bad = [m for m in sys.modules if m.startswith('sandboxd.jail')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
