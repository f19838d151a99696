"""The official `judge0` SDK from PyPI, unmodified, against a live daemon; raw Judge0
HTTP against the same daemon (additional_files in the workspace, the negotiated
/languages); and the README's "Switching from Judge0" example, run as written."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import judge0  # the official SDK, from the test extra
import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

README = Path(__file__).resolve().parents[2] / "README.md"
LANGUAGES = ["c", "python3"]

HELLO_C = '#include <stdio.h>\nint main(void){printf("hello from C\\n");return 0;}\n'


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("judge0"), languages=LANGUAGES)
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)


@pytest.fixture(scope="module")
def client(daemon: Daemon):
    return judge0.Client(daemon.url)


def test_the_sdk_sees_a_judge0_it_knows(client) -> None:
    assert client.version == "1.13.1"
    assert client.is_language_supported(judge0.PYTHON)
    assert client.is_language_supported(judge0.C)
    assert not client.is_language_supported(judge0.COBOL)  # not loaded by this daemon
    assert {s["id"] for s in client.get_statuses()} == set(range(1, 15))
    assert client.get_language(71).name.startswith("Python")


def test_run_python3(client) -> None:
    result = judge0.run(client=client, source_code="print(input()[::-1])", stdin="olleh",
                        language=judge0.PYTHON)
    assert result.status == judge0.Status.ACCEPTED
    assert result.stdout == "hello\n"
    assert result.exit_code == 0 and result.time is not None and result.memory > 0


def test_run_c(client) -> None:
    result = judge0.run(client=client, source_code=HELLO_C, language=judge0.C)
    assert result.status == judge0.Status.ACCEPTED
    assert result.stdout == "hello from C\n"


@pytest.mark.parametrize(("source", "language", "fields", "status"), [
    ("int main(void){ return }", judge0.C, {}, judge0.Status.COMPILATION_ERROR),
    ("import sys\nsys.exit(3)", judge0.PYTHON, {}, judge0.Status.RUNTIME_ERROR_NZEC),
    ("int main(void){ int *p = 0; return *p; }", judge0.C, {},
     judge0.Status.RUNTIME_ERROR_SIGSEGV),
    ("while True: pass", judge0.PYTHON, {"cpu_time_limit": 0.5},
     judge0.Status.TIME_LIMIT_EXCEEDED),
    ("print(41)", judge0.PYTHON, {"expected_output": "42"}, judge0.Status.WRONG_ANSWER),
    ("print(42)", judge0.PYTHON, {"expected_output": "42"}, judge0.Status.ACCEPTED),
])
def test_verdicts_come_back_with_judge0_status_ids(client, source, language, fields,
                                                   status) -> None:
    result = judge0.run(client=client, source_code=source, language=language, **fields)
    assert result.status == status, (result.status, result.stderr, result.compile_output)
    if status == judge0.Status.COMPILATION_ERROR:
        assert "error" in result.compile_output
    if status == judge0.Status.RUNTIME_ERROR_NZEC:
        # Judge0 base64-encodes `message` with the outputs; the SDK leaves it as sent.
        assert result.exit_code == 3
        assert base64.b64decode(result.message) == b"Exited with error status 3"


def test_memory_limit_exceeded_is_runtime_error_other_with_the_exact_verdict(client) -> None:
    result = judge0.run(client=client, language=judge0.PYTHON, memory_limit=65536,
                        source_code="x = bytearray(512 * 1024 * 1024)\nprint(len(x))")
    assert result.status == judge0.Status.RUNTIME_ERROR_OTHER
    # The SDK leaves `message` as sent: base64 of sandboxd's verdict.
    assert base64.b64decode(result.message).decode() == "Memory Limit Exceeded"


def test_batch_submit_and_fetch(client) -> None:
    submissions = [judge0.Submission(source_code=f"print({n} * {n})", language=judge0.PYTHON)
                   for n in range(5)]
    results = judge0.run(client=client, submissions=submissions)
    assert [r.stdout for r in results] == [f"{n * n}\n" for n in range(5)]
    assert all(r.status == judge0.Status.ACCEPTED for r in results)
    # The batch GET answers every token again, in order.
    again = client.get_submissions(results, fields=["stdout", "status"])
    assert [r.stdout for r in again] == [f"{n * n}\n" for n in range(5)]


def test_base64_round_trips_every_character(client) -> None:
    # Every Unicode scalar class: NUL and control characters, Latin-1, BMP, astral.
    text = "".join(map(chr, range(0, 0x250))) + "\ufffd\u20ac\U0001f600\n"
    program = "import sys\nsys.stdout.write(sys.stdin.read())\nsys.stderr.write('e\\x00')"
    result = judge0.run(client=client, source_code=program, stdin=text,
                        language=judge0.PYTHON)
    assert result.status == judge0.Status.ACCEPTED, result.stderr
    assert result.stdout == text
    assert result.stderr == "e\x00"


def test_test_cases_run_as_separate_submissions(client) -> None:
    results = judge0.run(client=client, source_code="a, b = map(int, input().split())\n"
                         "print(a + b)", language=judge0.PYTHON,
                         test_cases=[("1 2", "3"), ("2 2", "5")])
    assert [r.status for r in results] == [judge0.Status.ACCEPTED, judge0.Status.WRONG_ANSWER]


# -- raw HTTP against the live daemon ---------------------------------------------------


def _zip(**files: bytes) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return base64.b64encode(buffer.getvalue()).decode()


def test_additional_files_are_in_the_workspace(daemon: Daemon) -> None:
    body = {"language_id": 71, "additional_files": _zip(**{"data.txt": b"21\n"}),
            "source_code": "print(2 * int(open('data.txt').read()))"}
    status, answer, _ = daemon.request("POST", "/submissions?wait=true", body)
    assert status == 201, answer
    assert answer["stdout"] == "42\n" and answer["status"]["id"] == 3


def test_a_hostile_zip_never_reaches_a_box(daemon: Daemon) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (0o120777) << 16  # a symlink to the host's /etc/passwd
        zf.writestr(link, "/etc/passwd")
    body = {"language_id": 71, "source_code": "print(open('passwd').read())",
            "additional_files": base64.b64encode(buffer.getvalue()).decode()}
    status, answer, _ = daemon.request("POST", "/submissions", body)
    assert status == 422 and "symbolic link" in answer["additional_files"][0]


def test_plain_text_mode_and_fields(daemon: Daemon) -> None:
    status, created, _ = daemon.request(
        "POST", "/submissions?wait=true&fields=token,stdout,status,time,wall_time,exit_code",
        {"language_id": 50, "source_code": HELLO_C, "compiler_options": "-O0 -Wall",
         "command_line_arguments": "x y"})
    assert status == 201, created
    assert set(created) == {"token", "stdout", "status", "time", "wall_time", "exit_code"}
    assert created["stdout"] == "hello from C\n"
    assert re.fullmatch(r"\d+\.\d{3}", created["time"])
    status, shown, _ = daemon.request("GET", f"/submissions/{created['token']}?fields=*")
    assert status == 200 and shown["stdout"] == "hello from C\n"


def test_languages_keep_their_native_shape_for_native_clients(daemon: Daemon) -> None:
    _, native, _ = daemon.request("GET", "/languages")
    assert {entry["id"] for entry in native} == set(LANGUAGES)
    _, shown, _ = daemon.request("GET", "/languages", headers={"X-Judge0-App": "any"})
    _, prefixed, _ = daemon.request("GET", "/judge0/languages")
    assert shown == prefixed and {entry["id"] for entry in shown} == {48, 49, 50, 71}


def test_the_judge0_api_can_be_switched_off(tmp_path: Path) -> None:
    require_kernel()
    d = start_daemon(tmp_path, "\n[judge0]\nenabled = false\n", languages=["python3"])
    try:
        status, body, _ = d.request("POST", "/submissions",
                                    {"language_id": 71, "source_code": "print(1)"})
        assert status == 404 and "no such endpoint" in body["error"]
        _, native, _ = d.request("GET", "/languages", headers={"X-Judge0-App": "any"})
        assert native[0]["id"] == "python3"
    finally:
        stop_daemon(d)


# -- the README's example, word for word -------------------------------------------------


def _readme_judge0_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index("\n## Switching from Judge0")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^```(\w*)\n(.*?)^```$", text[start:end], flags=re.S | re.M)


def test_readme_switching_from_judge0_example_works_as_written(daemon: Daemon) -> None:
    blocks = _readme_judge0_blocks()
    index = next(i for i, (lang, body) in enumerate(blocks) if lang == "python")
    script = blocks[index][1]
    lang, shown = blocks[index + 1]
    assert lang == "text", "the README shows what the example prints right after it"
    assert "127.0.0.1:8080" in script
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{daemon.port}")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown


# -- the same API on the Redis service -------------------------------------------------


def test_the_sdk_works_against_daemons_sharing_redis(tmp_path: Path) -> None:
    """A token issued by one daemon is answered by another: the Judge0 face goes through
    the same JobService, whichever backs it."""
    require_kernel()
    from tests.e2e.redis_fixtures import redis_daemon_pair

    with redis_daemon_pair(tmp_path) as daemons:
        first, second = (judge0.Client(d.url) for d in daemons)
        submissions = [judge0.Submission(source_code=f"print({n} + 1)", language=judge0.PYTHON)
                       for n in range(3)]
        submissions = judge0.async_run(client=first, submissions=submissions)
        done = judge0.wait(client=second, submissions=submissions)
        assert [s.stdout for s in done] == ["1\n", "2\n", "3\n"]
        assert all(s.status == judge0.Status.ACCEPTED for s in done)


def test_the_sdk_authenticates_with_x_auth_token(tmp_path: Path) -> None:
    require_kernel()
    token = "judge0-token-0123456789abcdef"
    d = start_daemon(tmp_path, f'\n[auth]\ntokens = ["{token}"]\n', languages=["python3"])
    try:
        with pytest.raises(RuntimeError):  # the SDK's words for a 401 at start-up
            judge0.Client(d.url)
        client = judge0.Client(d.url, headers={"X-Auth-Token": token})
        result = judge0.run(client=client, source_code="print('in')", language=judge0.PYTHON)
        assert result.status == judge0.Status.ACCEPTED and result.stdout == "in\n"
    finally:
        stop_daemon(d)
