"""Arbitrary bytes through the Judge0 API's base64, against live daemons: stdin,
expected_output and the program's stdout, stderr and compile_output come back exactly
as the bytes they are (not only UTF-8), through the SQLite journal across restarts and
through the Redis backend; the official SDK sees them too. Raw HTTP for the bytes the
SDK cannot send (it takes input as str)."""

from __future__ import annotations

import base64
import io
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import judge0  # the official SDK, from the test extra
import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

LANGUAGES = ["c", "python3"]
PYTHON, C = 71, 50
# Every byte value, then the brief's example: none of it needs to be UTF-8.
ANY_BYTES = bytes(range(256)) + b"\xff\x00\xfe\x80"
ECHO_PY = ("import sys\n"
           "data = sys.stdin.buffer.read()\n"
           "sys.stdout.buffer.write(data)\n"
           "sys.stderr.buffer.write(data[::-1])\n")
HIGH_BYTES_C = ("#include <stdio.h>\n"
                "int main(void){ for (int c = 0x80; c <= 0xff; c++) putchar(c); return 0; }\n")
POLL_S = 0.05


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(value: str | None) -> bytes:
    return base64.b64decode(value) if value is not None else b""


def submit(daemon: Daemon, language_id: int, source: str, *, wait: bool = True,
           **fields: bytes | str) -> dict:
    body = {"language_id": language_id, "source_code": b64(source),
            **{name: value if name == "additional_files" else b64(value)
               for name, value in fields.items()}}
    query = "base64_encoded=true&fields=*" + ("&wait=true" if wait else "")
    status, answer, _ = daemon.request("POST", f"/submissions?{query}", body)
    assert status == 201, answer
    assert isinstance(answer, dict)
    return answer


def show(daemon: Daemon, token: str, encoded: bool = True) -> dict:
    status, answer, _ = daemon.request(
        "GET", f"/submissions/{token}?fields=*&base64_encoded={str(encoded).lower()}")
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def wait_final(daemon: Daemon, token: str, within_s: float = 120) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        answer = show(daemon, token)
        if answer["status"]["id"] > 2:
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("judge0-bytes"), languages=LANGUAGES)
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)


def test_stdin_stdout_and_stderr_are_the_exact_bytes(daemon: Daemon) -> None:
    answer = submit(daemon, PYTHON, ECHO_PY, stdin=ANY_BYTES)
    assert answer["status"]["id"] == 3, answer
    assert unb64(answer["stdout"]) == ANY_BYTES
    assert unb64(answer["stderr"]) == ANY_BYTES[::-1]
    again = show(daemon, answer["token"])
    assert (unb64(again["stdout"]), unb64(again["stderr"])) == (ANY_BYTES, ANY_BYTES[::-1])
    # Without base64 the same output is text: what is not UTF-8 shows as U+FFFD.
    text = show(daemon, answer["token"], encoded=False)
    assert text["stdout"] == ANY_BYTES.decode("utf-8", errors="replace")
    # The native API shows the same job as text too.
    status, native, _ = daemon.request("GET", f"/result/{answer['token'].replace('-', '')}")
    assert status == 200 and native["stdout"] == text["stdout"], native


def test_a_c_program_printing_bytes_0x80_to_0xff(daemon: Daemon) -> None:
    answer = submit(daemon, C, HIGH_BYTES_C)
    assert answer["status"]["id"] == 3, answer
    assert unb64(answer["stdout"]) == bytes(range(0x80, 0x100))


def test_the_sdk_receives_the_exact_bytes(daemon: Daemon) -> None:
    # The SDK decodes base64 with errors="backslashreplace": bytes that are not UTF-8
    # reach it as \xNN escapes, which is only possible when they arrived exactly (a
    # U+FFFD would reach it as U+FFFD).
    result = judge0.run(client=judge0.Client(daemon.url), source_code=HIGH_BYTES_C,
                        language=judge0.C)
    assert result.status == judge0.Status.ACCEPTED
    assert result.stdout == bytes(range(0x80, 0x100)).decode(errors="backslashreplace")


@pytest.mark.parametrize(("expected", "status_id"), [
    (ANY_BYTES, 3),
    (ANY_BYTES + b"  \n\n", 3),  # the default checker: trailing whitespace is not compared
    (ANY_BYTES[:-1] + b"\x81", 4),  # one byte off
    (ANY_BYTES.decode("utf-8", errors="replace").encode(), 4),  # U+FFFD is not the bytes
])
def test_expected_output_is_compared_byte_for_byte(daemon: Daemon, expected: bytes,
                                                   status_id: int) -> None:
    answer = submit(daemon, PYTHON, ECHO_PY, stdin=ANY_BYTES, expected_output=expected)
    assert answer["status"]["id"] == status_id, answer


def test_compile_output_keeps_the_compilers_bytes(daemon: Daemon) -> None:
    # gcc quotes the offending line as it is: a header (sent in the zip, which may hold
    # any bytes) whose #error line is not UTF-8.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("bad.h", b"#error not \xff\xfe utf-8\n")
    answer = submit(daemon, C, '#include "bad.h"\nint main(void){return 0;}\n',
                    additional_files=base64.b64encode(buffer.getvalue()).decode())
    assert answer["status"]["id"] == 6, answer
    assert b"not \xff\xfe utf-8" in unb64(answer["compile_output"]), answer
    text = show(daemon, answer["token"], encoded=False)
    assert "not \ufffd\ufffd utf-8" in text["compile_output"]


def test_source_code_that_is_not_utf8_is_refused_by_name(daemon: Daemon) -> None:
    status, answer, _ = daemon.request(
        "POST", "/submissions?base64_encoded=true",
        {"language_id": PYTHON, "source_code": b64(b"print(1) # \xff")})
    assert status == 422 and "not UTF-8" in answer["source_code"][0], answer


def test_batch_items_carry_any_bytes(daemon: Daemon) -> None:
    inputs = [ANY_BYTES, b"\x80", b""]
    items = [{"language_id": PYTHON, "source_code": b64(ECHO_PY), "stdin": b64(data),
              "expected_output": b64(data)} for data in inputs]
    status, answer, _ = daemon.request("POST", "/submissions/batch?base64_encoded=true",
                                       {"submissions": items})
    assert status == 201, answer
    tokens = [item["token"] for item in answer]
    for token in tokens:
        wait_final(daemon, token)
    status, shown, _ = daemon.request(
        "GET", f"/submissions/batch?tokens={','.join(tokens)}&base64_encoded=true"
               "&fields=stdout,status")
    assert status == 200, shown
    assert [unb64(s["stdout"]) for s in shown["submissions"]] == inputs
    assert [s["status"]["id"] for s in shown["submissions"]] == [3, 3, 3]


# -- the journal: a restart while queued, and after finishing ----------------------------


def test_bytes_survive_the_journal_across_restarts(tmp_path: Path) -> None:
    require_kernel()
    journal = tmp_path / "bytes.db"
    # One worker, busy with a sleeper: the bytes job is still queued at the shutdown.
    config = "[server]\nworkers = 1\nshutdown_deadline_s = 1\n"
    first = start_daemon(tmp_path, config, journal=journal, languages=LANGUAGES,
                         log_name="first.log")
    try:
        sleeper = submit(first, PYTHON, "import time\ntime.sleep(5)\n", wait=False)
        deadline = time.monotonic() + 60
        while show(first, sleeper["token"])["status"]["id"] != 2:
            assert time.monotonic() < deadline
            time.sleep(POLL_S)
        queued = submit(first, PYTHON, ECHO_PY, wait=False, stdin=ANY_BYTES,
                        expected_output=ANY_BYTES)
        assert show(first, queued["token"])["status"]["id"] == 1
        first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=60)
    finally:
        if first.process.poll() is None:
            stop_daemon(first)
    second = start_daemon(tmp_path, config, journal=journal, languages=LANGUAGES,
                          log_name="second.log")
    try:
        finished = wait_final(second, queued["token"])
        assert finished["status"]["id"] == 3, finished  # compared with the stored bytes
        assert unb64(finished["stdout"]) == ANY_BYTES
    finally:
        stop_daemon(second)
    third = start_daemon(tmp_path, config, journal=journal, languages=LANGUAGES,
                         log_name="third.log")
    try:
        kept = show(third, queued["token"])  # the stored result, read back
        assert (unb64(kept["stdout"]), unb64(kept["stderr"])) == (ANY_BYTES, ANY_BYTES[::-1])
    finally:
        stop_daemon(third)


# -- Redis ------------------------------------------------------------------------------


def test_bytes_survive_the_redis_backend(tmp_path: Path) -> None:
    """Submitted to one daemon, run by whichever takes it, read from the other."""
    require_kernel()
    from tests.e2e.redis_fixtures import redis_daemon_pair

    with redis_daemon_pair(tmp_path) as (first, second):
        answer = submit(first, PYTHON, ECHO_PY, wait=False, stdin=ANY_BYTES,
                        expected_output=ANY_BYTES[:-1] + b"\x81")
        shown = wait_final(second, answer["token"])
        assert shown["status"]["id"] == 4, shown  # compared with the stored bytes
        assert (unb64(shown["stdout"]), unb64(shown["stderr"])) == (ANY_BYTES,
                                                                     ANY_BYTES[::-1])
