"""The Judge0-compatible API over a fake service and catalog: field mapping and unit
conversions, Judge0's error shape, statuses, tokens, ?fields, batches, /languages
negotiation, X-Auth-Token, and the zip safety of additional_files."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import stat
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from judge0 import base_types as sdk_types  # the official SDK (test extra)
from judge0 import data as sdk_data

from sandboxd import judge0
from sandboxd.api import create_app
from sandboxd.config import Config, Judge0Config
from sandboxd.judge0 import ZipLimits, extract_zip
from sandboxd.metrics import Metrics
from sandboxd.model import Result, Status
from tests.unit.test_api import FakeCatalog, FakeService, make_config

TOKEN = "0123456789abcdef0123456789abcdef0"[:32]


class Catalog(FakeCatalog):
    """The fake catalog with what GET /languages/{id} shows (commands, availability)."""

    def __init__(self) -> None:
        super().__init__()
        self._languages = [
            {"id": "python3", "name": "Python 3.11.2", "compiled": False, "available": True,
             "source_file": "main.py", "compile_command": None,
             "run_command": ["/usr/bin/python3", "main.py"]},
            {"id": "c", "name": "C (GCC) 12.2.0", "compiled": True, "available": True,
             "source_file": "main.c",
             "compile_command": ["/usr/bin/gcc", "-O2", "-o", "main", "main.c"],
             "run_command": ["./main"]},
            {"id": "java", "name": "Java (OpenJDK)", "compiled": True, "available": False,
             "source_file": "Main.java", "compile_command": ["/usr/bin/javac", "Main.java"],
             "run_command": ["/usr/bin/java", "Main"]},
        ]
        self.unavailable = {"java": "toolchain not installed"}


@dataclasses.dataclass
class Env:
    client: Any
    service: FakeService


async def make(aiohttp_client: Any, config: Config | None = None) -> Env:
    config = config or make_config()
    service, catalog = FakeService(), Catalog()
    app = create_app(service, catalog, config, metrics=Metrics())
    judge0.add_judge0_routes(app, service=service, languages=catalog, config=config)
    return Env(await aiohttp_client(app), service)


@pytest.fixture
async def env(aiohttp_client: Any) -> Env:
    return await make(aiohttp_client)


async def call(env: Env, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await env.client.request(method, path, json=body, headers=headers)
    assert resp.content_type == "application/json", await resp.text()
    return resp.status, await resp.json()


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def zipped(*entries: tuple[str, bytes], mode: int | None = None,
           method: int = zipfile.ZIP_DEFLATED) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, content in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, content)
    return base64.b64encode(buffer.getvalue()).decode()


LIMITS = ZipLimits(max_archive_bytes=1 << 20, max_entries=20, max_expanded_bytes=1 << 20)
GOOD = {"language_id": 71, "source_code": "print(input())", "stdin": "hi"}


# -- POST /submissions: mapping onto the native submission ------------------------------


async def test_create_answers_201_with_a_uuid_token(env: Env) -> None:
    status, body = await call(env, "POST", "/submissions", GOOD)
    assert status == 201 and set(body) == {"token"}
    assert judge0._TOKEN.fullmatch(body["token"])
    submission = env.service.submitted[0]
    assert (submission.language, submission.source, submission.stdin) == (
        "python3", "print(input())", b"hi")


async def test_judge0_defaults_apply_when_limits_are_absent(env: Env) -> None:
    await call(env, "POST", "/submissions", GOOD)
    limits = env.service.submitted[0].limits
    # Judge0's defaults: 5 s CPU, 10 s wall, 128000 KB (rounded up to whole MiB).
    assert (limits.time_limit_ms, limits.wall_time_limit_ms, limits.memory_limit_mb) == (
        5000, 10_000, 125)


async def test_limits_convert_seconds_and_kilobytes(env: Env) -> None:
    body = {**GOOD, "cpu_time_limit": 1.5, "wall_time_limit": 3, "memory_limit": 65536.5}
    status, _ = await call(env, "POST", "/submissions", body)
    assert status == 201
    limits = env.service.submitted[0].limits
    assert (limits.time_limit_ms, limits.wall_time_limit_ms, limits.memory_limit_mb) == (
        1500, 3000, 65)


async def test_defaults_never_exceed_the_configured_maximum(aiohttp_client: Any) -> None:
    base = make_config()
    config = dataclasses.replace(base, limits=dataclasses.replace(
        base.limits, time_limit_ms=dataclasses.replace(base.limits.time_limit_ms, max=3000)))
    env = await make(aiohttp_client, config)
    await call(env, "POST", "/submissions", GOOD)
    assert env.service.submitted[0].limits.time_limit_ms == 3000
    status, info = await call(env, "GET", "/config_info")
    assert (info["cpu_time_limit"], info["max_cpu_time_limit"]) == (3.0, 3.0)


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("cpu_time_limit", 0, "out of range"),
    ("cpu_time_limit", 11, "out of range: allowed 0.001..10 seconds"),
    ("cpu_time_limit", 1e308, "out of range"),  # times 1000 is not finite: was a 500
    ("cpu_time_limit", -1e308, "out of range"),
    ("wall_time_limit", 1.7976931348623157e308, "out of range"),
    ("memory_limit", 1e308, "out of range"),
    ("cpu_time_limit", 0.0004, "out of range"),
    ("cpu_time_limit", "2", "must be a number"),
    ("cpu_time_limit", True, "must be a number"),
    ("wall_time_limit", 31, "out of range"),
    ("memory_limit", 1024, "out of range: allowed 4096..1048576 KB"),
    ("memory_limit", 2_000_000, "out of range"),
    ("language_id", 999, "language with id 999 doesn't exist"),
    ("language_id", "71", "must be an integer"),
    ("source_code", 5, "must be a string"),
    ("stdin", ["x"], "must be a string"),
    ("compiler_options", "-O2", "only for languages compiled by gcc or clang"),
    ("command_line_arguments", "'unbalanced", "cannot be split"),
    ("cpu_extra_time", 1, "not supported"),
    ("stack_limit", 64000, "not supported"),
    ("max_processes_and_or_threads", 60, "not supported"),
    ("max_file_size", 1024, "not supported"),
    ("callback_url", "http://127.0.0.1:9/", "webhooks are off"),
    ("number_of_runs", 3, "only 1 is supported"),
    ("enable_network", True, "only false is supported"),
    ("redirect_stderr_to_stdout", True, "only false is supported"),
    ("enable_per_process_and_thread_time_limit", True, "only false is supported"),
    ("colour", "blue", "unknown field"),
])
async def test_refusals_are_422_in_judge0_shape(env: Env, field: str, value: Any,
                                                rule: str) -> None:
    status, body = await call(env, "POST", "/submissions", {**GOOD, field: value})
    assert status == 422, body
    assert list(body) == [field, "error"] and rule in body[field][0], body
    assert body["error"].startswith(f"{field}: ")
    assert env.service.submitted == []


@pytest.mark.parametrize("missing", ["language_id", "source_code"])
async def test_required_fields_are_422_cant_be_blank(env: Env, missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    status, answer = await call(env, "POST", "/submissions", body)
    assert (status, answer[missing]) == (422, ["can't be blank"])


async def test_fixed_values_and_nulls_are_accepted(env: Env) -> None:
    body = {**GOOD, "number_of_runs": 1, "enable_network": False, "stack_limit": None,
            "redirect_stderr_to_stdout": False, "callback_url": None, "expected_output": None}
    status, _ = await call(env, "POST", "/submissions", body)
    assert status == 201
    assert env.service.submitted[0].expected_output is None


async def test_an_unavailable_language_is_refused(env: Env) -> None:
    env_catalog_unavailable = {**GOOD, "language_id": 62}
    status, body = await call(env, "POST", "/submissions", env_catalog_unavailable)
    assert status == 422 and "language_id" in body


async def test_compiler_options_and_arguments_are_split_into_words(env: Env) -> None:
    body = {"language_id": 50, "source_code": "int main(){}",
            "compiler_options": "-O0 -DNAME=x", "command_line_arguments": "a 'b c' \"d\""}
    status, answer = await call(env, "POST", "/submissions", body)
    assert status == 201, answer
    submission = env.service.submitted[0]
    assert submission.compiler_options == ("-O0", "-DNAME=x")
    assert submission.command_line_arguments == ("a", "b c", "d")
    status, answer = await call(env, "POST", "/submissions",
                                {**body, "compiler_options": "-O2 -fplugin=evil.so"})
    assert status == 422 and "compiler_options[1]: '-fplugin=evil.so' is not an allowed" in (
        answer["compiler_options"][0])


async def test_base64_fields_are_decoded(env: Env) -> None:
    body = {"language_id": 71, "source_code": b64("print(1)\n"), "stdin": b64("é\x00\n"),
            "expected_output": b64("1\n")}
    status, _ = await call(env, "POST", "/submissions?base64_encoded=true", body)
    assert status == 201
    submission = env.service.submitted[0]
    assert (submission.source, submission.stdin, submission.expected_output) == (
        "print(1)\n", "é\x00\n".encode(), b"1\n")


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("stdin", "not base64!", "must be base64"),
    ("expected_output", "YWJj$", "must be base64"),
    # Input may be any bytes; source code must be text a compiler reads as UTF-8.
    ("source_code", b64(b"print(1)\xff\xfe"), "not UTF-8 (byte 8)"),
])
async def test_bad_base64_is_422(env: Env, field: str, value: str, rule: str) -> None:
    status, body = await call(env, "POST", "/submissions?base64_encoded=true",
                              {**GOOD, "source_code": b64("print(1)"), "stdin": b64("hi"),
                               field: value})
    assert status == 422 and rule in body[field][0], body
    assert env.service.submitted == []


async def test_bad_query_flags_and_bodies_are_400(env: Env) -> None:
    status, body = await call(env, "POST", "/submissions?base64_encoded=maybe", GOOD)
    assert status == 400 and "base64_encoded" in body
    resp = await env.client.post("/submissions", data=b"{not json")
    assert resp.status == 400 and "error" in await resp.json()
    status, body = await call(env, "POST", "/submissions", [GOOD])
    assert status == 400 and "JSON object" in body["error"]


async def test_wait_returns_the_result_with_fields(env: Env) -> None:
    status, body = await call(env, "POST", "/submissions?wait=true", GOOD)
    assert status == 201
    assert set(body) == set(judge0.DEFAULT_FIELDS)
    assert body["stdout"] == "hi" and body["status"] == {"id": 3, "description": "Accepted"}
    assert (body["time"], body["memory"]) == ("0.042", 8192)
    status, body = await call(env, "POST", "/submissions?wait=true&fields=stdout,token", GOOD)
    assert set(body) == {"stdout", "token"}


ARBITRARY = bytes(range(256)) + b"\xff\x00\xfe\x80"


async def test_base64_carries_any_bytes_in_and_out(env: Env) -> None:
    # The fake judge echoes stdin as stdout: the bytes come back exactly in base64,
    # and as text (U+FFFD for what is not UTF-8) without ?base64_encoded.
    body = {**GOOD, "source_code": b64("print(input())"), "stdin": b64(ARBITRARY),
            "expected_output": b64(b"\x80\xff\n")}
    status, answer = await call(env, "POST", "/submissions?base64_encoded=true&wait=true", body)
    assert status == 201, answer
    submission = env.service.submitted[0]
    assert (submission.stdin, submission.expected_output) == (ARBITRARY, b"\x80\xff\n")
    assert base64.b64decode(answer["stdout"]) == ARBITRARY
    status, shown = await call(env, "GET", f"/submissions/{answer['token']}")
    assert shown["stdout"] == ARBITRARY.decode("utf-8", errors="replace")
    status, batch = await call(env, "POST", "/submissions/batch?base64_encoded=true",
                               {"submissions": [body, {**body, "stdin": b64(b"\x81")}]})
    assert status == 201 and all("token" in item for item in batch), batch
    assert [s.stdin for s in env.service.submitted[1:]] == [ARBITRARY, b"\x81"]
    tokens = ",".join(item["token"] for item in batch)
    status, shown_batch = await call(
        env, "GET", f"/submissions/batch?tokens={tokens}&base64_encoded=true&fields=stdout")
    assert [base64.b64decode(item["stdout"]) for item in shown_batch["submissions"]] == [
        ARBITRARY, b"\x81"]


def test_the_callback_carries_the_exact_bytes() -> None:
    result = Result(status=Status.RUNTIME_ERROR, exit_code=1, stdout="\ufffd",
                    exact_stdout=b"\xff", stderr="\ufffd(", exact_stderr=b"\xc3(",
                    compile_output="ok \ufffd", exact_compile_output=b"ok \x80")
    body = orjson.loads(judge0.callback_body("ab" * 16, result))
    assert [base64.b64decode(body[name]) for name in judge0.OUTPUT_FIELDS] == [
        b"\xff", b"\xc3(", b"ok \x80"]
    assert base64.b64decode(body["message"]) == b"Exited with error status 1"


async def test_wait_past_the_cap_shows_in_queue(env: Env) -> None:
    env.service.hold = True
    status, body = await call(env, "POST", "/submissions?wait=true", GOOD)
    assert status == 201 and body["status"] == {"id": 1, "description": "In Queue"}


async def test_a_full_queue_is_503_with_retry_after(env: Env) -> None:
    from sandboxd.service import QueueFull

    env.service.refusal = QueueFull("queue is full (256 jobs)")
    resp = await env.client.post("/submissions", json=GOOD)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert "queue is full" in (await resp.json())["error"]


# -- GET /submissions/{token} -------------------------------------------------------------


async def test_show_by_token_in_both_forms(env: Env) -> None:
    _, created = await call(env, "POST", "/submissions", GOOD)
    token = created["token"]
    for form in (token, token.replace("-", ""), token.upper()):
        status, body = await call(env, "GET", f"/submissions/{form}")
        assert status == 200 and body["token"] == token and body["stdout"] == "hi"


async def test_fields_star_and_selection(env: Env) -> None:
    _, created = await call(env, "POST", "/submissions", GOOD)
    token = created["token"]
    _, body = await call(env, "GET", f"/submissions/{token}?fields=*")
    assert set(body) == set(judge0.RESPONSE_FIELDS)
    _, body = await call(env, "GET", f"/submissions/{token}?fields=status,exit_code")
    assert body == {"status": {"id": 3, "description": "Accepted"}, "exit_code": 0}
    status, body = await call(env, "GET", f"/submissions/{token}?fields=stdout,bogus")
    assert status == 400 and body["error"] == "fields: invalid fields: [bogus]"
    status, body = await call(env, "GET", f"/submissions/{token}?fields=source_code")
    assert status == 400 and "not kept by sandboxd" in body["error"]


async def test_show_base64_encodes_outputs_and_message(env: Env) -> None:
    env.service.results[TOKEN] = Result(status=Status.MEMORY_LIMIT_EXCEEDED, stdout="ünï\n",
                                        stderr="", exit_code=None, signal=9)
    _, body = await call(env, "GET", f"/submissions/{TOKEN}?base64_encoded=true&fields=*")
    assert base64.b64decode(body["stdout"]).decode() == "ünï\n"
    assert body["stderr"] is None
    assert base64.b64decode(body["message"]).decode() == "Memory Limit Exceeded"


async def test_unknown_and_expired_tokens_are_404(env: Env) -> None:
    status, body = await call(env, "GET", "/submissions/nope")
    assert status == 404 and "nope" in body["error"]
    env.service.expired.add(TOKEN)
    status, body = await call(env, "GET", f"/submissions/{TOKEN}")
    assert status == 404 and "expired" in body["error"]


@pytest.mark.parametrize(("result", "status_id", "message"), [
    (Result(status=Status.QUEUED), 1, None),
    (Result(status=Status.RUNNING), 2, None),
    (Result(status=Status.ACCEPTED, exit_code=0), 3, None),
    (Result(status=Status.WRONG_ANSWER, exit_code=0), 4, None),
    (Result(status=Status.TIME_LIMIT_EXCEEDED, signal=9), 5, None),
    (Result(status=Status.COMPILE_ERROR), 6, None),
    (Result(status=Status.RUNTIME_ERROR, signal=11), 7, None),
    (Result(status=Status.RUNTIME_ERROR, signal=25), 8, None),
    (Result(status=Status.RUNTIME_ERROR, signal=8), 9, None),
    (Result(status=Status.RUNTIME_ERROR, signal=6), 10, None),
    (Result(status=Status.RUNTIME_ERROR, exit_code=3), 11, "Exited with error status 3"),
    (Result(status=Status.RUNTIME_ERROR, signal=31), 12, None),
    (Result(status=Status.OUTPUT_LIMIT_EXCEEDED), 8, "Output Limit Exceeded"),
    (Result(status=Status.MEMORY_LIMIT_EXCEEDED), 12, "Memory Limit Exceeded"),
    (Result(status=Status.INTERNAL_ERROR, message="the box failed"), 13, "the box failed"),
])
def test_status_mapping(result: Result, status_id: int, message: str | None) -> None:
    shown = judge0.render(TOKEN, result, ("status", "message"), encoded=False)
    assert shown["status"] == {"id": status_id,
                               "description": judge0.STATUS_DESCRIPTION[status_id]}
    assert shown["message"] == message


def test_every_native_status_has_a_judge0_status() -> None:
    for status in Status:
        assert judge0.status_id(Result(status=status)) in judge0.STATUS_DESCRIPTION


# -- batches ------------------------------------------------------------------------------


async def test_batch_create_and_show(env: Env) -> None:
    items = [GOOD, {**GOOD, "language_id": 999}, {**GOOD, "stdin": "two"}]
    status, answers = await call(env, "POST", "/submissions/batch", {"submissions": items})
    assert status == 201
    assert "token" in answers[0] and "token" in answers[2]
    assert "language_id" in answers[1]
    tokens = f"{answers[0]['token']},{TOKEN},{answers[2]['token']}"
    status, body = await call(env, "GET", f"/submissions/batch?tokens={tokens}&fields=stdout")
    assert status == 200
    assert body == {"submissions": [{"stdout": "hi"}, None, {"stdout": "two"}]}
    # Judge0 takes the tokens from a header too.
    resp = await env.client.get("/submissions/batch", headers={"tokens": answers[0]["token"]})
    assert (await resp.json())["submissions"][0]["token"] == answers[0]["token"]


async def test_batch_with_no_valid_submission_is_422(env: Env) -> None:
    status, answers = await call(env, "POST", "/submissions/batch",
                                 {"submissions": [{"language_id": 1}]})
    assert status == 422 and "language_id" in answers[0]
    assert env.service.submitted == []


@pytest.mark.parametrize("body", [{}, {"submissions": []}, {"submissions": "x"},
                                  {"submissions": [GOOD] * 101}])
async def test_batch_bounds_are_400(env: Env, body: Any) -> None:
    status, answer = await call(env, "POST", "/submissions/batch", body)
    assert status == 400 and "submissions" in answer


async def test_batch_show_bounds_are_400(env: Env) -> None:
    status, body = await call(env, "GET", "/submissions/batch")
    assert status == 400 and "tokens" in body
    status, body = await call(env, "GET", "/submissions/batch?tokens=" + ",".join(["a"] * 101))
    assert status == 400 and "tokens" in body


# -- languages, statuses, about, config_info ---------------------------------------------


async def test_languages_negotiation(env: Env) -> None:
    status, native = await call(env, "GET", "/languages")
    assert status == 200 and native[0]["id"] == "python3"
    for headers in ({"X-Judge0-App": "Judge0 Python SDK"}, {"X-Auth-Token": "x"}):
        _, shown = await call(env, "GET", "/languages", headers=headers)
        assert {"id": 71, "name": "Python 3.11.2"} in shown
        assert all(isinstance(entry["id"], int) for entry in shown)
    _, prefixed = await call(env, "GET", "/judge0/languages")
    assert prefixed == shown
    # Java is known but not available on this host: not listed, shown as archived.
    assert 62 not in {entry["id"] for entry in shown}
    _, java = await call(env, "GET", "/languages/62")
    assert java["is_archived"] is True


async def test_language_detail(env: Env) -> None:
    status, body = await call(env, "GET", "/languages/50")
    assert status == 200
    assert body == {"id": 50, "name": "C (GCC) 12.2.0", "is_archived": False,
                    "source_file": "main.c", "compile_cmd": "/usr/bin/gcc -O2 -o main main.c",
                    "run_cmd": "./main"}
    for unknown in ("1", "abc", "99999999999999"):
        status, body = await call(env, "GET", f"/languages/{unknown}")
        assert status == 404 and "error" in body


async def test_statuses_about_and_config_info(env: Env) -> None:
    _, statuses = await call(env, "GET", "/statuses")
    assert statuses[0] == {"id": 1, "description": "In Queue"}
    assert statuses[-1] == {"id": 14, "description": "Exec Format Error"}
    _, about = await call(env, "GET", "/judge0/about")
    assert about["version"] == "1.13.1"
    _, info = await call(env, "GET", "/config_info")
    assert info["max_submission_batch_size"] == 100
    assert info["allowed_languages_for_compile_options"] == ["C (GCC) 12.2.0"]
    assert (info["memory_limit"], info["max_memory_limit"]) == (128_000, 1024 * 1024)


def test_config_info_has_every_key_the_sdk_requires() -> None:
    catalog = Catalog()
    languages = judge0.Judge0Languages(catalog, Config(), judge0.load_language_table())
    info = judge0.config_info(Config(), languages)
    assert set(info) == set(sdk_types.Config.model_fields)
    sdk_types.Config(**info)


def test_the_language_table_covers_the_sdk_aliases_of_our_languages() -> None:
    table = judge0.load_language_table()
    aliases = sdk_data.LANGUAGE_TO_LANGUAGE_ID[judge0.JUDGE0_VERSION]
    names = {alias.name for alias in aliases}
    for alias in ("C", "CPP", "JAVA", "JAVASCRIPT", "PYTHON", "PYTHON3", "C_CLANG", "RUST"):
        assert alias in names
        assert table[aliases[next(a for a in aliases if a.name == alias)]]


async def test_disabled_means_404(aiohttp_client: Any) -> None:
    config = dataclasses.replace(make_config(), judge0=Judge0Config(enabled=False))
    assert config.judge0.enabled is False
    service, catalog = FakeService(), Catalog()
    app = create_app(service, catalog, config, metrics=Metrics())
    client = await aiohttp_client(app)  # server.py mounts nothing when disabled
    resp = await client.post("/submissions", json=GOOD)
    assert resp.status == 404
    resp = await client.get("/languages", headers={"X-Judge0-App": "Judge0 Python SDK"})
    assert (await resp.json())[0]["id"] == "python3"


# -- X-Auth-Token ------------------------------------------------------------------------


async def test_x_auth_token_is_accepted_as_well_as_bearer(aiohttp_client: Any) -> None:
    token = "t" * 32
    env = await make(aiohttp_client, make_config(tokens=(token,)))
    assert (await env.client.get("/statuses")).status == 401
    assert (await env.client.get("/statuses", headers={"X-Auth-Token": "wrong" * 4})
            ).status == 401
    assert (await env.client.get("/statuses", headers={"X-Auth-Token": token})).status == 200
    assert (await env.client.get(
        "/statuses", headers={"Authorization": f"Bearer {token}"})).status == 200
    resp = await env.client.post("/execute", json={"language": "python3", "source": "1"},
                                 headers={"X-Auth-Token": token})
    assert resp.status == 202


# -- additional_files: zip safety --------------------------------------------------------


async def test_additional_files_become_native_files(env: Env) -> None:
    archive = zipped(("data.txt", b"42\n"), ("helper.py", b"X = 1\n"))
    status, body = await call(env, "POST", "/submissions", {**GOOD, "additional_files": archive})
    assert status == 201, body
    files = env.service.submitted[0].files
    assert {(f.name, f.content) for f in files} == {("data.txt", b"42\n"),
                                                     ("helper.py", b"X = 1\n")}


def test_extract_keeps_bytes_exactly() -> None:
    content = bytes(range(256)) * 4
    assert extract_zip(zipped(("blob.bin", content)), LIMITS) == [("blob.bin", content)]
    assert extract_zip(zipped(("s.txt", b"abc"), method=zipfile.ZIP_STORED), LIMITS) == [
        ("s.txt", b"abc")]


@pytest.mark.parametrize(("archive", "rule"), [
    (zipped(("/etc/passwd", b"x")), "absolute paths"),
    (zipped(("C:/x.txt", b"x")), "absolute paths"),
    (zipped(("..\\x.txt", b"x")), "absolute paths"),
    (zipped(("../x.txt", b"x")), "'..'"),
    (zipped(("a/../../x.txt", b"x")), "'..'"),
    (zipped(("dir/", b"")), "directories are not supported"),
    (zipped(("dir/x.txt", b"x")), "directories are not supported"),
    (zipped(("link", b"/etc/passwd"), mode=stat.S_IFLNK | 0o777), "symbolic link"),
    (zipped(("dev", b""), mode=stat.S_IFCHR | 0o666), "device, fifo or socket"),
    (zipped(("fifo", b""), mode=stat.S_IFIFO | 0o666), "device, fifo or socket"),
    ("@@@", "must be base64"),
    (b64(b"PK\x03\x04 not really a zip"), "not a readable zip"),
    (b64(b""), "not a readable zip"),
])
def test_unsafe_archives_are_refused(archive: str, rule: str) -> None:
    with pytest.raises(judge0.Judge0Error) as e:
        extract_zip(archive, LIMITS)
    assert e.value.field == "additional_files" and rule in e.value.rule, e.value.rule


def test_entry_count_is_bounded() -> None:
    archive = zipped(*((f"f{i}.txt", b"x") for i in range(21)))
    with pytest.raises(judge0.Judge0Error, match="21 entries"):
        extract_zip(archive, LIMITS)


def test_expanded_size_is_bounded_by_the_headers() -> None:
    # A zip bomb: a megabyte of zeros deflates to about a kilobyte.
    archive = zipped(("zeros", bytes(LIMITS.max_expanded_bytes + 1)))
    assert len(archive) < 10_000
    with pytest.raises(judge0.Judge0Error) as e:
        extract_zip(archive, LIMITS)
    assert e.value.status == 413 and "bytes extracted" in e.value.rule


def test_a_header_that_understates_the_size_is_caught_while_inflating() -> None:
    # The central directory says 10 bytes; the data inflates to 100 KB.
    real = base64.b64decode(zipped(("zeros", bytes(100_000))))
    size = (100_000).to_bytes(4, "little")
    lied = real.replace(size, (10).to_bytes(4, "little"))
    assert lied != real
    with pytest.raises(judge0.Judge0Error) as e:
        extract_zip(base64.b64encode(lied).decode(), LIMITS)
    assert e.value.field == "additional_files"


def test_the_archive_itself_is_bounded() -> None:
    small = ZipLimits(max_archive_bytes=100, max_entries=20, max_expanded_bytes=1 << 20)
    with pytest.raises(judge0.Judge0Error) as e:
        extract_zip(zipped(("a.bin", bytes(range(256)) * 2)), small)
    assert e.value.status == 413


def test_encrypted_entries_are_refused() -> None:
    raw = bytearray(base64.b64decode(zipped(("a.txt", b"x"))))
    # Set the "encrypted" flag bit in the local header and the central directory.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(signature) + offset
        raw[at] |= 0x1
    with pytest.raises(judge0.Judge0Error, match="encrypted"):
        extract_zip(base64.b64encode(bytes(raw)).decode(), LIMITS)


async def test_zip_names_the_native_rules_refuse_are_422(env: Env) -> None:
    for name in (".hidden", "main.py"):
        archive = zipped((name, b"x"))
        status, body = await call(env, "POST", "/submissions",
                                  {**GOOD, "additional_files": archive})
        assert status == 422 and "additional_files" in body, body


# -- docs/JUDGE0.md says what the code does ----------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "JUDGE0.md"


def _doc_section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_the_doc_lists_every_status_as_defined() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", _doc_section("Statuses"), flags=re.M)
    assert [(int(i), d.strip()) for i, d in rows] == list(judge0.STATUSES)


def test_the_doc_lists_every_request_field() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \|", _doc_section("Submission fields"), flags=re.M)
    assert set(rows) == (set(judge0.REQUEST_FIELDS) | set(judge0.FIXED_FIELDS)
                         | set(judge0.UNSUPPORTED_FIELDS))


# -- seeded random requests: never a 500 --------------------------------------------------

JUDGE0_FIELDS = sorted(set(judge0.REQUEST_FIELDS) | set(judge0.FIXED_FIELDS)
                       | set(judge0.UNSUPPORTED_FIELDS)) + ["", "x", "status", "token"]


def _random_judge0_submission(rng: Any) -> Any:
    from tests.unit.test_api_fuzz import random_value

    if rng.random() < 0.1:
        return random_value(rng)
    body: dict[str, Any] = dict(GOOD) if rng.random() < 0.7 else {}
    for _ in range(rng.randrange(0, 5)):
        name = rng.choice(JUDGE0_FIELDS)
        body[name] = (rng.choice([1e308, -1e308, 5e-324, 0.001, 15.0, 128000.5, 2**70])
                      if rng.random() < 0.2 else random_value(rng))
    return body


async def test_random_judge0_requests_never_get_a_500(env: Env) -> None:
    import random

    from tests.unit.test_api_fuzz import random_string

    rng = random.Random(20261207)
    statuses: set[int] = set()
    queries = ["", "?base64_encoded=true", "?wait=true", "?wait=true&fields=*",
               "?fields=x", "?base64_encoded=yes"]
    for _ in range(400):
        if rng.random() < 0.3:
            path = "/submissions/batch"
            payload: Any = {"submissions": [_random_judge0_submission(rng)
                                            for _ in range(rng.randrange(4))]}
        else:
            path, payload = "/submissions", _random_judge0_submission(rng)
        resp = await env.client.post(path + rng.choice(queries), json=payload)
        statuses.add(resp.status)
        assert resp.content_type == "application/json"
        assert resp.status in (201, 400, 413, 422), (payload, await resp.text())
    for _ in range(100):
        token = random_string(rng)[:60] or "x"
        for path in (f"/submissions/{quote(token, safe='')}?fields=*",
                     f"/submissions/batch?tokens={quote(token)}",
                     f"/languages/{quote(token, safe='')}"):
            resp = await env.client.get(path)
            assert resp.status in (200, 400, 404), (path, await resp.text())
    assert {201, 400, 422} <= statuses, statuses
