"""The HTTP API against a fake runner and catalog: validation, status codes, JSON errors."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from sandboxd.api import LATER_FIELDS, create_app
from sandboxd.config import Config
from sandboxd.model import Result, Status, Submission
from sandboxd.service import Service

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


class FakeRunner:
    """Accepted with the stdin echoed; "compile error" as source gives a Compile Error."""

    def __init__(self) -> None:
        self.healthy = True
        self.gate: asyncio.Event | None = None
        self.submissions: list[Submission] = []
        self.one_started = asyncio.Event()

    async def run(self, submission: Submission) -> Result:
        self.submissions.append(submission)
        self.one_started.set()
        if self.gate is not None:
            await self.gate.wait()
        if submission.source == "compile error":
            return Result(status=Status.COMPILE_ERROR, compile_output="main.c:1: error\n")
        return Result(
            status=Status.ACCEPTED,
            stdout=submission.stdin,
            stderr="",
            exit_code=0,
            signal=None,
            time_ms=42,
            wall_time_ms=50,
            memory_kb=8192,
        )


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
    service: Service
    runner: FakeRunner
    catalog: FakeCatalog


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(aiohttp_client: Any) -> AsyncIterator[MakeEnv]:
    services: list[Service] = []

    async def make(queue_size: int = 8, budget_bytes: int | None = None,
                   sandbox: dict[str, Any] | None = None, **server: Any) -> Env:
        base = Config()
        config = dataclasses.replace(base, server=dataclasses.replace(base.server, **server),
                                     sandbox=dataclasses.replace(base.sandbox, **(sandbox or {})))
        runner, catalog = FakeRunner(), FakeCatalog()
        service = Service(runner, workers=1, queue_size=queue_size, results_kept=100,
                          budget_bytes=budget_bytes)
        await service.start()
        services.append(service)
        client = await aiohttp_client(create_app(service, catalog, config))
        return Env(client, service, runner, catalog)

    yield make
    for service in services:
        await service.stop(drain_timeout=0.1)


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


async def post(env: Env, body: Any, path: str = "/execute") -> tuple[int, Any]:
    resp = await env.client.post(path, json=body)
    return resp.status, await resp.json()


async def post_raw(env: Env, data: bytes) -> tuple[int, Any]:
    resp = await env.client.post("/execute", data=data)
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


GOOD = {"language": "python3", "source": "print(input())", "stdin": "hello"}


# -- POST /execute: accepted -------------------------------------------------------------


async def test_execute_queues_with_defaults(env: Env) -> None:
    status, body = await post(env, {"language": "python3", "source": "x"})
    assert status == 202
    assert set(body) == {"submission_id"}
    result = await env.service.wait(body["submission_id"])
    assert result.status is Status.ACCEPTED
    submission = env.runner.submissions[0]
    assert submission.stdin == "" and submission.expected_output is None
    limits = submission.limits
    assert (limits.time_limit_ms, limits.wall_time_limit_ms, limits.memory_limit_mb) == (
        2000,
        5000,
        256,
    )


async def test_execute_passes_every_field(env: Env) -> None:
    body = {
        **GOOD,
        "time_limit_ms": 1000,
        "wall_time_limit_ms": 1500,
        "memory_limit_mb": 128,
        "expected_output": "hello\n",
    }
    resp = await env.client.post("/execute?wait=true", json=body)
    assert resp.status == 200
    submission = env.runner.submissions[0]
    assert submission.language == "python3" and submission.source == "print(input())"
    assert submission.stdin == "hello" and submission.expected_output == "hello\n"
    assert (submission.limits.time_limit_ms, submission.limits.wall_time_limit_ms) == (1000, 1500)
    assert submission.limits.memory_limit_mb == 128


async def test_wall_default_follows_time_limit(env: Env) -> None:
    await env.client.post("/execute?wait=1", json={**GOOD, "time_limit_ms": 3000})
    assert env.runner.submissions[0].limits.wall_time_limit_ms == 7000


async def test_expected_output_null_is_absent(env: Env) -> None:
    resp = await env.client.post("/execute?wait=true", json={**GOOD, "expected_output": None})
    assert resp.status == 200
    assert env.runner.submissions[0].expected_output is None


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


async def test_wait_nonsense_is_400(env: Env) -> None:
    resp = await env.client.post("/execute?wait=maybe", json=GOOD)
    assert resp.status == 400
    assert "wait" in (await resp.json())["error"]


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
    ],
)
async def test_malformed_body(env: Env, data: bytes, words: list[str]) -> None:
    status, body = await post_raw(env, data)
    assert status == 400
    for word in words:
        assert word in body["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"source": "x"}, ["missing", "language"]),
        ({"language": "python3"}, ["missing", "source"]),
        ({}, ["missing", "language, source"]),
        ({"language": 3, "source": "x"}, ["language", "string"]),
        ({"language": None, "source": "x"}, ["language", "string", "null"]),
        ({"language": "python3", "source": ["x"]}, ["source", "string", "array"]),
        ({**GOOD, "stdin": 5}, ["stdin", "string"]),
        ({**GOOD, "stdin": None}, ["stdin", "string"]),
        ({**GOOD, "expected_output": 1}, ["expected_output", "string or null"]),
        ({**GOOD, "time_limit_ms": "1000"}, ["time_limit_ms", "integer"]),
        ({**GOOD, "time_limit_ms": 1000.0}, ["time_limit_ms", "integer"]),
        ({**GOOD, "time_limit_ms": 1000.5}, ["time_limit_ms", "integer"]),
        ({**GOOD, "time_limit_ms": True}, ["time_limit_ms", "integer", "boolean"]),
        ({**GOOD, "memory_limit_mb": False}, ["memory_limit_mb", "integer"]),
        ({**GOOD, "wall_time_limit_ms": None}, ["wall_time_limit_ms", "integer"]),
        ({**GOOD, "wall_time_limit_ms": {}}, ["wall_time_limit_ms", "integer"]),
        ({**GOOD, "language": "cobol"}, ["cobol", "c, python3"]),
    ],
)
async def test_bad_fields(env: Env, body: dict[str, Any], words: list[str]) -> None:
    status, answer = await post(env, body)
    assert status == 400
    for word in words:
        assert word in answer["error"], answer
    assert env.runner.submissions == []


async def test_unknown_fields_all_named(env: Env) -> None:
    status, body = await post(env, {**GOOD, "lang": "c", "timeout": 5, "memory": 1})
    assert status == 400
    assert "lang, memory, timeout" in body["error"]


@pytest.mark.parametrize("field", sorted(LATER_FIELDS))
async def test_later_fields_not_supported_yet(env: Env, field: str) -> None:
    status, body = await post(env, {**GOOD, field: None})
    assert status == 400
    assert body["error"] == f"{field} is not supported yet"


async def test_later_fields_spec_list() -> None:
    assert LATER_FIELDS == {
        "tests",
        "checker",
        "checker_epsilon",
        "checker_source",
        "checker_language",
        "interactor_source",
        "interactor_language",
        "files",
        "compiler_options",
        "command_line_arguments",
        "callback_url",
        "cache",
    }


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
    assert field in body["error"] and str(value) in body["error"] and bounds in body["error"]


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
    assert getattr(env.runner.submissions[0].limits, field) == value


# -- 413, 503 --------------------------------------------------------------------------


async def test_source_too_large(make_env: MakeEnv) -> None:
    env = await make_env(max_source_bytes=10)
    status, body = await post(env, {**GOOD, "source": "é" * 6})  # 12 bytes, 6 characters
    assert status == 413
    assert "12" in body["error"] and "10" in body["error"]
    status, _ = await post(env, {**GOOD, "source": "x" * 10})
    assert status == 202


async def test_default_source_maximum_is_one_mib(env: Env) -> None:
    # A file-like body: aiohttp warns about sending megabytes of raw bytes at once.
    data = io.BytesIO(orjson.dumps({**GOOD, "source": "x" * (1024 * 1024 + 1)}))
    resp = await env.client.post("/execute", data=data)
    status, body = resp.status, await resp.json()
    assert status == 413
    assert "source" in body["error"]


async def test_body_too_large(make_env: MakeEnv) -> None:
    env = await make_env(max_body_bytes=1000)
    resp = await env.client.post("/execute", json={**GOOD, "stdin": "x" * 2000})
    assert resp.status == 413
    assert resp.content_type == "application/json"
    assert "1000" in (await resp.json())["error"]
    assert env.runner.submissions == []


async def test_stdin_too_large_is_413_naming_field_and_setting(make_env: MakeEnv) -> None:
    env = await make_env(max_stdin_bytes=10)
    status, body = await post(env, {**GOOD, "stdin": "é" * 6})  # 12 bytes, 6 characters
    assert status == 413
    assert body["error"].startswith("stdin is 12 bytes")
    assert "10" in body["error"] and "server.max_stdin_bytes" in body["error"]
    assert env.runner.submissions == []
    assert (await post(env, {**GOOD, "stdin": "x" * 10}))[0] == 202


async def test_default_stdin_maximum_is_16_mib() -> None:
    assert Config().server.max_stdin_bytes == 16 * 1024 * 1024


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
        assert error.startswith("expected_output is") and "output limit of 100" in error
        assert "sandbox.output_limit_bytes" in error
        assert env.runner.submissions == []
    else:
        await env.service.wait(body["submission_id"])
        # Passed on unchanged: the verdict applies the comparison rule itself.
        assert env.runner.submissions[0].expected_output == expected


async def test_expected_output_over_the_default_output_limit_is_400(env: Env) -> None:
    data = io.BytesIO(orjson.dumps({**GOOD, "expected_output": "7" * (1024 * 1024 + 1)}))
    resp = await env.client.post("/execute", data=data)
    assert resp.status == 400
    assert "expected_output" in (await resp.json())["error"]


async def test_queue_over_its_byte_budget_is_503_with_retry_after(make_env: MakeEnv) -> None:
    env = await make_env(budget_bytes=100)
    env.runner.gate = asyncio.Event()
    body = {"language": "python3", "source": "s" * 10, "stdin": "i" * 50}  # 60 bytes
    assert (await post(env, body))[0] == 202
    await asyncio.wait_for(env.runner.one_started.wait(), 2)
    resp = await env.client.post("/execute", json=body)  # 120 > 100
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    assert "budget of 100 bytes" in (await resp.json())["error"]
    assert len(env.service._jobs) == 1  # nothing half-accepted
    small = {"language": "python3", "source": "s" * 10, "stdin": "i" * 30}  # 40: fits
    assert (await post(env, small))[0] == 202
    env.runner.gate.set()


async def test_queue_full_is_503_with_retry_after(make_env: MakeEnv) -> None:
    env = await make_env(queue_size=1)
    env.runner.gate = asyncio.Event()
    assert (await post(env, GOOD))[0] == 202
    await asyncio.wait_for(env.runner.one_started.wait(), 2)
    assert (await post(env, GOOD))[0] == 202  # waits in the queue
    resp = await env.client.post("/execute", json=GOOD)
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    assert "queue" in (await resp.json())["error"]
    assert len(env.service._jobs) == 2  # nothing half-accepted
    env.runner.gate.set()


async def test_shutting_down_is_503(env: Env) -> None:
    await env.service.stop(drain_timeout=0.1)
    resp = await env.client.post("/execute", json=GOOD)
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert "error" in await resp.json()


# -- GET /result -----------------------------------------------------------------------


async def test_result_lifecycle(env: Env) -> None:
    env.runner.gate = asyncio.Event()
    _, body = await post(env, GOOD)
    submission_id = body["submission_id"]
    await asyncio.wait_for(env.runner.one_started.wait(), 2)
    resp = await env.client.get(f"/result/{submission_id}")
    running = await resp.json()
    assert resp.status == 200 and set(running) == RESULT_KEYS
    assert running["status"] == "Running" and running["submission_id"] == submission_id
    assert running["exit_code"] is None and running["time_ms"] is None

    env.runner.gate.set()
    await env.service.wait(submission_id)
    final = await (await env.client.get(f"/result/{submission_id}")).json()
    assert final["status"] == "Accepted" and final["stdout"] == "hello"


async def test_result_queued(make_env: MakeEnv) -> None:
    env = await make_env()
    env.runner.gate = asyncio.Event()
    await post(env, GOOD)
    await asyncio.wait_for(env.runner.one_started.wait(), 2)
    _, body = await post(env, GOOD)
    queued = await (await env.client.get(f"/result/{body['submission_id']}")).json()
    assert queued["status"] == "Queued"
    env.runner.gate.set()


async def test_result_unknown_id_is_404_json(env: Env) -> None:
    resp = await env.client.get("/result/0123abc")
    assert resp.status == 404
    assert "0123abc" in (await resp.json())["error"]


# -- other endpoints and generic errors --------------------------------------------------


async def test_languages(env: Env) -> None:
    resp = await env.client.get("/languages")
    assert resp.status == 200
    config = Config()
    assert await resp.json() == env.catalog.describe(config)
    # The catalog fills commands for the daemon's own configuration (its defaults).
    assert env.catalog.described_with == config


async def test_health(env: Env) -> None:
    resp = await env.client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    env.runner.healthy = False
    resp = await env.client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable" and body["error"]


async def test_health_after_stop(env: Env) -> None:
    await env.service.stop(drain_timeout=0.1)
    assert (await env.client.get("/health")).status == 503


@pytest.mark.parametrize("path", ["/", "/nope", "/result", "/result/a/b", "/execute/batch"])
async def test_unknown_route_is_404_json(env: Env, path: str) -> None:
    resp = await env.client.get(path)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert path in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/execute", "POST"), ("POST", "/health", "GET"), ("DELETE", "/result/x", "GET")],
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


async def test_unavailable_language_is_a_clear_400(env: Env) -> None:
    env.catalog.unavailable["c"] = "toolchain not installed (/usr/bin/gcc missing)"
    status, body = await post(env, {"language": "c", "source": "x"})
    assert status == 400
    assert "'c' is unavailable" in body["error"] and "/usr/bin/gcc missing" in body["error"]
    assert env.runner.submissions == []
    status, _ = await post(env, {"language": "python3", "source": "x"})
    assert status == 202
