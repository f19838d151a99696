"""The verdict precedence table, output matching and the shaping of results."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

from sandboxd import languages
from sandboxd.config import Config
from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.model import Status
from sandboxd.verdict import (
    COMPILE_OUTPUT_TRUNCATED,
    PRECEDENCE,
    OutOfMemory,
    decide,
    outputs_match,
    to_result,
)

SIGKILL = int(signal.SIGKILL)
SIGSEGV = int(signal.SIGSEGV)
SIGABRT = int(signal.SIGABRT)
MIB = 1 << 20


def ok(**changes: Any) -> JailOutcome:
    """A run that exited 0 within every limit, with `changes` applied."""
    fields: dict[str, Any] = {
        "termination": Termination.EXITED,
        "exit_code": 0,
        "cpu_ms": 10,
        "wall_ms": 12,
        "memory_bytes": 4 << 20,
        "stdout": b"hello\n",
    }
    return JailOutcome(**{**fields, **changes})


def killed(**changes: Any) -> JailOutcome:
    """Killed by SIGKILL, as the supervisor does when a limit is hit."""
    return ok(
        **{"termination": Termination.SIGNALED, "exit_code": None, "signal": SIGKILL, **changes}
    )


def setup_failed(**changes: Any) -> JailOutcome:
    fields: dict[str, Any] = {
        "termination": Termination.SETUP_ERROR,
        "exit_code": None,
        "setup_error": "pivot_root: Operation not permitted",
    }
    return ok(**{**fields, **changes})


COMPILE_FAILED = ok(exit_code=1, stdout=b"main.c:1: error: expected ';'\n")


# -- the table itself ----------------------------------------------------------------


def test_table_order_is_specs_precedence() -> None:
    order = [status for _, status in PRECEDENCE]
    # Internal Error appears twice: a setup error, then "compiled but no run outcome".
    assert order == [
        Status.INTERNAL_ERROR,
        Status.COMPILE_ERROR,
        Status.INTERNAL_ERROR,
        Status.TIME_LIMIT_EXCEEDED,
        Status.MEMORY_LIMIT_EXCEEDED,
        Status.OUTPUT_LIMIT_EXCEEDED,
        Status.RUNTIME_ERROR,
        Status.WRONG_ANSWER,
        Status.ACCEPTED,
    ]


@pytest.mark.parametrize(
    ("compile", "run", "expected", "status"),
    [
        # Accepted / Wrong Answer
        (None, ok(), None, Status.ACCEPTED),
        (None, ok(), "hello", Status.ACCEPTED),
        (ok(stdout=b""), ok(), "hello\n", Status.ACCEPTED),
        (None, ok(), "bye", Status.WRONG_ANSWER),
        (None, ok(stdout=b""), "hello", Status.WRONG_ANSWER),
        (None, ok(stdout=b"anything"), "", Status.WRONG_ANSWER),
        (None, ok(stdout=b"\n\n"), "", Status.ACCEPTED),
        # Runtime Error: non-zero exit or a signal that no limit explains
        (None, ok(exit_code=1), None, Status.RUNTIME_ERROR),
        (None, ok(exit_code=1), "hello", Status.RUNTIME_ERROR),  # RE beats WA
        (None, ok(exit_code=None, signal=SIGSEGV), None, Status.RUNTIME_ERROR),
        (None, killed(), None, Status.RUNTIME_ERROR),
        # Time Limit Exceeded: CPU or wall
        (None, killed(cpu_exceeded=True), None, Status.TIME_LIMIT_EXCEEDED),
        (None, killed(wall_exceeded=True), None, Status.TIME_LIMIT_EXCEEDED),
        (None, ok(cpu_exceeded=True), None, Status.TIME_LIMIT_EXCEEDED),
        (None, killed(termination=Termination.WALL_LIMIT), None, Status.TIME_LIMIT_EXCEEDED),
        # Memory Limit Exceeded: the kernel's OOM kill anywhere in the box
        (None, killed(oom_killed=True), None, Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(exit_code=137, oom_killed=True), None, Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(oom_killed=True), "hello", Status.MEMORY_LIMIT_EXCEEDED),  # a child was OOM
        (None, killed(termination=Termination.MEMORY_LIMIT), None, Status.MEMORY_LIMIT_EXCEEDED),
        # ... or an allocation over the limit refused, and the program failed
        (None, ok(exit_code=None, signal=SIGSEGV, memory_refused=True), None,
         Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(exit_code=1, memory_refused=True), "hello", Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(memory_refused=True), "hello", Status.ACCEPTED),  # it coped: no failure
        (None, ok(memory_refused=True), "bye", Status.WRONG_ANSWER),
        # Most of the memory used, then a failure of its own: never a guess at MLE
        (None, ok(exit_code=None, signal=SIGSEGV, memory_bytes=122 * MIB), None,
         Status.RUNTIME_ERROR),
        (None, ok(exit_code=None, signal=SIGABRT, memory_bytes=255 * MIB), None,
         Status.RUNTIME_ERROR),
        (None, ok(exit_code=1, memory_bytes=256 * MIB), None, Status.RUNTIME_ERROR),
        # Output Limit Exceeded
        (None, killed(output_exceeded=True), None, Status.OUTPUT_LIMIT_EXCEEDED),
        (None, ok(output_exceeded=True), "bye", Status.OUTPUT_LIMIT_EXCEEDED),
        (None, ok(exit_code=3, output_exceeded=True), None, Status.OUTPUT_LIMIT_EXCEEDED),
        # Combinations: the higher row wins
        (None, killed(cpu_exceeded=True, oom_killed=True), None, Status.TIME_LIMIT_EXCEEDED),
        (None, killed(wall_exceeded=True, output_exceeded=True), None, Status.TIME_LIMIT_EXCEEDED),
        (None, killed(oom_killed=True, output_exceeded=True), None, Status.MEMORY_LIMIT_EXCEEDED),
        (
            None,
            killed(cpu_exceeded=True, wall_exceeded=True, oom_killed=True, output_exceeded=True),
            "bye",
            Status.TIME_LIMIT_EXCEEDED,
        ),
        # Compile step
        (COMPILE_FAILED, None, None, Status.COMPILE_ERROR),
        (COMPILE_FAILED, None, "hello", Status.COMPILE_ERROR),
        (killed(wall_exceeded=True), None, None, Status.COMPILE_ERROR),
        (ok(oom_killed=True), None, None, Status.COMPILE_ERROR),
        (ok(exit_code=None, signal=SIGSEGV), None, None, Status.COMPILE_ERROR),
        (ok(), killed(cpu_exceeded=True), None, Status.TIME_LIMIT_EXCEEDED),
        # ... judged by its exit status and time/memory limits: output past the cap is
        # truncated information, not a failure
        (ok(output_exceeded=True), ok(), "hello", Status.ACCEPTED),
        (ok(output_exceeded=True, termination=Termination.OUTPUT_LIMIT), ok(), None,
         Status.ACCEPTED),
        (ok(output_exceeded=True, exit_code=1), None, None, Status.COMPILE_ERROR),
        # Internal Error: the sandbox failed, whatever else happened
        (None, setup_failed(), None, Status.INTERNAL_ERROR),
        (None, setup_failed(cpu_exceeded=True, oom_killed=True), None, Status.INTERNAL_ERROR),
        (setup_failed(), None, None, Status.INTERNAL_ERROR),
        (setup_failed(exit_code=1), None, None, Status.INTERNAL_ERROR),  # not a Compile Error
        (ok(), setup_failed(), "hello", Status.INTERNAL_ERROR),
        (COMPILE_FAILED, setup_failed(), None, Status.INTERNAL_ERROR),
        (None, ok(setup_error="cgroup: No space left on device"), None, Status.INTERNAL_ERROR),
        (ok(), None, None, Status.INTERNAL_ERROR),  # compiled, but no run outcome
        (None, None, None, Status.INTERNAL_ERROR),
    ],
)
def test_decide(
    compile: JailOutcome | None, run: JailOutcome | None, expected: str | None, status: Status
) -> None:
    assert decide(compile, run, None if expected is None else expected.encode()) is status


# -- a runtime's own out-of-memory failure ---------------------------------------------

SHIPPED = languages.load(Config().server.languages_file, Config().sandbox.rootfs_dir)


def failed(exit_code: int | None = None, sig: int | None = None, stderr: str = "") -> JailOutcome:
    return ok(exit_code=exit_code, signal=sig, stderr=stderr.encode(), stdout=b"")


# What each runtime printed when it ran out of memory in a box (captured from real runs),
# and failures that look alike but are not the runtime running out of memory.
JAVA_OOM = "Terminating due to java.lang.OutOfMemoryError: Java heap space\n"
NODE_OOM = ("\n<--- Last few GCs --->\n\n[2:0x341cc2d0]  443 ms: Mark-Compact 197.2 (241.8) -> "
            "197.2 (242.0) MB\n\n<--- JS stacktrace --->\n\nFATAL ERROR: Reached heap limit "
            "Allocation failed - JavaScript heap out of memory\n 1: 0xb78db3 "
            "node::OOMErrorHandler(char const*, v8::OOMDetails const&) [/usr/bin/node]\n")
CPP_OOM = ("terminate called after throwing an instance of 'std::bad_alloc'\n"
           "  what():  std::bad_alloc\n")
PY_OOM = ('Traceback (most recent call last):\n  File "/box/main.py", line 1, in <module>\n'
          "    x = [0] * 10**12\n        ~~~~^~~~~~~\nMemoryError\n")


@pytest.mark.parametrize(("language", "run", "status"), [
    ("java", failed(3, stderr=JAVA_OOM), Status.MEMORY_LIMIT_EXCEEDED),
    ("java", failed(3, stderr="Terminating due to java.lang.OutOfMemoryError: Metaspace\n"),
     Status.MEMORY_LIMIT_EXCEEDED),
    ("java", failed(3), Status.RUNTIME_ERROR),  # System.exit(3)
    ("java", failed(1, stderr='Exception in thread "main" ' + JAVA_OOM), Status.RUNTIME_ERROR),
    # A thread the pids cap refused is no memory failure (exit 1, no ExitOnOutOfMemory).
    ("java", failed(1, stderr='Exception in thread "main" java.lang.OutOfMemoryError: unable '
                              "to create native thread: possibly out of memory or process/"
                              "resource limits reached\n"), Status.RUNTIME_ERROR),
    ("javascript", failed(sig=SIGABRT, stderr=NODE_OOM), Status.MEMORY_LIMIT_EXCEEDED),
    ("javascript", failed(sig=SIGABRT, stderr="process.abort()\n"), Status.RUNTIME_ERROR),
    ("javascript", failed(1, stderr=NODE_OOM), Status.RUNTIME_ERROR),
    ("cpp", failed(sig=SIGABRT, stderr=CPP_OOM), Status.MEMORY_LIMIT_EXCEEDED),
    ("cpp", failed(sig=SIGABRT, stderr="terminate called after throwing an instance of "
                                       "'std::length_error'\n"), Status.RUNTIME_ERROR),
    ("cpp", failed(sig=SIGSEGV, stderr=CPP_OOM), Status.RUNTIME_ERROR),
    ("python3", failed(1, stderr=PY_OOM), Status.MEMORY_LIMIT_EXCEEDED),
    ("python3", failed(1, stderr=PY_OOM.replace("MemoryError\n", "MemoryError: oops")),
     Status.MEMORY_LIMIT_EXCEEDED),
    # MemoryError handled, then another exception: the last line is what failed.
    ("python3", failed(1, stderr=PY_OOM + "\nDuring handling of the above exception, another "
                                          "exception occurred:\n\nKeyError: 'x'\n"),
     Status.RUNTIME_ERROR),
    ("python3", failed(1, stderr="KeyError: 'MemoryError'\n"), Status.RUNTIME_ERROR),
    ("python3", failed(1, stderr="MemoryErrors are rare\n"), Status.RUNTIME_ERROR),
    ("python3", ok(stderr=PY_OOM.encode()), Status.ACCEPTED),  # printed, did not fail
    ("c", failed(sig=SIGABRT, stderr=CPP_OOM), Status.RUNTIME_ERROR),  # C declares none
])
def test_shipped_out_of_memory_signatures(language: str, run: JailOutcome,
                                          status: Status) -> None:
    assert decide(None, run, None, SHIPPED[language].out_of_memory) is status


def test_out_of_memory_needs_exit_status_and_message() -> None:
    rule = OutOfMemory(exit_codes=frozenset({3}), signals=frozenset({SIGABRT}),
                       stderr=(re.compile("^out of memory$", re.MULTILINE),))
    assert rule.matches(failed(3, stderr="x\nout of memory\n"))
    assert rule.matches(failed(sig=SIGABRT, stderr="out of memory"))
    assert not rule.matches(failed(4, stderr="out of memory"))
    assert not rule.matches(failed(sig=SIGSEGV, stderr="out of memory"))
    assert not rule.matches(failed(3, stderr="not out of memory"))
    assert not rule.matches(failed(3))
    # A runtime OOM does not outrank a time limit (SPEC precedence).
    assert decide(None, killed(cpu_exceeded=True, stderr=b"out of memory"), None,
                  rule) is Status.TIME_LIMIT_EXCEEDED


# -- output matching -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ("hello\n", "hello\n"),
        ("hello", "hello\n"),
        ("hello\n", "hello"),
        ("hello  \t\n", "hello"),
        ("hello\r\nworld\r\n", "hello\nworld\n"),
        ("a b \nc\t\n", "a b\nc"),
        ("1\n2\n\n\n", "1\n2"),
        ("1\n2\n \n\t\n", "1\n2\n"),
        ("", ""),
        ("\n\n", ""),
    ],
)
def test_outputs_match(actual: str, expected: str) -> None:
    assert outputs_match(actual, expected)
    assert outputs_match(expected, actual)


def test_bom_at_the_start_of_expected_output_is_ignored() -> None:
    assert outputs_match("42\n", "\ufeff42\n")
    assert outputs_match("", "\ufeff")
    assert outputs_match("\n", "\ufeff\r\n")
    assert not outputs_match("43\n", "\ufeff42\n")
    # Only a leading BOM of the expected output is an editor's mark.
    assert not outputs_match("42\n", "4\ufeff2\n")
    assert not outputs_match("\ufeff42\n", "42\n")
    assert decide(None, ok(stdout=b"42\n"), "\ufeff42\r\n".encode()) is Status.ACCEPTED


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ("hello\n", "world\n"),
        (" hello", "hello"),  # leading whitespace matters
        ("\thello", "hello"),
        ("hello world", "hello  world"),  # inner whitespace matters
        ("1\n\n2", "1\n2"),  # blank lines in the middle matter
        ("\n1", "1"),  # ... and at the start
        ("1\n2", "1"),
        ("", "x"),
        ("x\u00a0", "x"),  # only spaces, tabs and CR are trailing whitespace
    ],
)
def test_outputs_mismatch(actual: str, expected: str) -> None:
    assert not outputs_match(actual, expected)
    assert not outputs_match(expected, actual)


# -- results -------------------------------------------------------------------------


def test_result_of_accepted_run() -> None:
    run = ok(
        stdout=b"hi\n", stderr=b"warn\n", cpu_ms=42, wall_ms=50, memory_bytes=8 * 1024 * 1024 + 1023
    )
    result = to_result(Status.ACCEPTED, None, run)
    assert result.to_json("abc") == {
        "submission_id": "abc",
        "status": "Accepted",
        "stdout": "hi\n",
        "stderr": "warn\n",
        "exit_code": 0,
        "signal": None,
        "time_ms": 42,
        "wall_time_ms": 50,
        "memory_kb": 8192,
        "compile_output": "",
        "cached": False,
    }


def test_result_of_signaled_run_has_null_exit_code() -> None:
    result = to_result(Status.TIME_LIMIT_EXCEEDED, None, killed(cpu_exceeded=True))
    assert result.exit_code is None
    assert result.signal == SIGKILL
    assert result.time_ms == 10


def test_result_keeps_nonzero_exit_code() -> None:
    result = to_result(Status.RUNTIME_ERROR, None, ok(exit_code=3))
    assert (result.exit_code, result.signal) == (3, None)


def test_result_of_compile_error_has_null_run_fields() -> None:
    compile = ok(exit_code=1, stdout=b"main.c:1: error\n", stderr=b"cc1: note\n")
    result = to_result(Status.COMPILE_ERROR, compile, None)
    body = result.to_json("x")
    assert body["status"] == "Compile Error"
    assert body["compile_output"] == "main.c:1: error\ncc1: note\n"
    assert (body["stdout"], body["stderr"]) == ("", "")
    for name in ("exit_code", "signal", "time_ms", "wall_time_ms", "memory_kb"):
        assert body[name] is None, name


def test_compile_error_by_limit_says_which() -> None:
    result = to_result(Status.COMPILE_ERROR, killed(wall_exceeded=True, stdout=b"partial"), None)
    assert result.compile_output.startswith("partial\n")
    assert "time limit" in result.compile_output
    result = to_result(Status.COMPILE_ERROR, killed(oom_killed=True, stdout=b""), None)
    assert result.compile_output == "[sandboxd: the compile step exceeded its memory limit]\n"


def test_compile_output_past_the_cap_ends_with_a_truncation_marker() -> None:
    compile = ok(stdout=b"main.c:2: warning: unused\n  int x; /* xxxx", output_exceeded=True)
    result = to_result(Status.ACCEPTED, compile, ok())
    assert result.compile_output == (
        "main.c:2: warning: unused\n  int x; /* xxxx\n" + COMPILE_OUTPUT_TRUNCATED)
    assert "limit]" not in result.compile_output.replace(COMPILE_OUTPUT_TRUNCATED, "")


def test_compile_warnings_kept_on_success() -> None:
    result = to_result(Status.ACCEPTED, ok(stdout=b"warning: unused\n"), ok())
    assert result.compile_output == "warning: unused\n"
    assert result.stdout == "hello\n"


def test_invalid_utf8_is_replaced() -> None:
    result = to_result(Status.ACCEPTED, None, ok(stdout=b"a\xffb", stderr=b"\xc3"))
    assert result.stdout == "a\ufffdb"
    assert result.stderr == "\ufffd"


def test_output_that_is_not_utf8_is_compared_byte_for_byte() -> None:
    # Bytes that are not UTF-8 match only the same bytes: never the U+FFFD shown for
    # them, never whitespace (0x85 and 0xa0 are in Latin-1), never part of a number.
    assert decide(None, ok(stdout=b"\xff"), b"\xff") is Status.ACCEPTED
    assert decide(None, ok(stdout=b"\xff"), "\ufffd".encode()) is Status.WRONG_ANSWER
    assert decide(None, ok(stdout=b"\xff"), b"\xfe") is Status.WRONG_ANSWER
    assert decide(None, ok(stdout=b"\xff"), b"x") is Status.WRONG_ANSWER
    assert decide(None, ok(stdout=b"\x80\xff \t\r\n\n"), b"\x80\xff") is Status.ACCEPTED
    for checker in ("tokens", "unordered-lines", "float", "exact"):
        assert decide(None, ok(stdout=b"1\xa02\n"), b"1\xa02\n", checker=checker) \
            is Status.ACCEPTED, checker
    assert decide(None, ok(stdout=b"1\x852"), b"1 2", checker="tokens") is Status.WRONG_ANSWER
    assert decide(None, ok(stdout=b"1\xa0"), b"1", checker="float") is Status.WRONG_ANSWER
    assert decide(None, ok(stdout=b"\xef\xbb\xbf\xff"), b"\xff") is Status.WRONG_ANSWER


def test_output_keeps_its_exact_bytes_only_when_the_text_is_not_exact() -> None:
    text = to_result(Status.ACCEPTED, None, ok(stdout="é\ufffd\n".encode(), stderr=b""))
    assert (text.stdout, text.exact_stdout) == ("é\ufffd\n", None)
    assert text.output_bytes("stdout") == "é\ufffd\n".encode()
    raw = to_result(Status.RUNTIME_ERROR, None,
                    ok(exit_code=1, stdout=b"\x80\xff", stderr=b"\xc3(\n"))
    assert (raw.stdout, raw.exact_stdout) == ("\ufffd\ufffd", b"\x80\xff")
    assert (raw.stderr, raw.exact_stderr) == ("\ufffd(\n", b"\xc3(\n")
    assert raw.output_bytes("stderr") == b"\xc3(\n" and raw.output_bytes("compile_output") == b""
    assert "exact_stdout" not in raw.to_json("x")  # the native API shows text
    # Compile output: stdout then stderr, then the daemon's own notes, exact.
    compiled = ok(exit_code=1, stdout=b"a.c: \xe9t\xe9\n", stderr=b"\xff", output_exceeded=True)
    failed_compile = to_result(Status.COMPILE_ERROR, compiled, None)
    assert failed_compile.compile_output.startswith("a.c: \ufffdt\ufffd\n\ufffd\n[sandboxd:")
    assert failed_compile.output_bytes("compile_output") == (
        b"a.c: \xe9t\xe9\n\xff\n" + COMPILE_OUTPUT_TRUNCATED.encode())
    with pytest.raises(ValueError):
        raw.output_bytes("message")


def test_internal_error_carries_setup_error() -> None:
    run = setup_failed()
    status = decide(None, run, None)
    result = to_result(status, None, run)
    assert result.status is Status.INTERNAL_ERROR
    assert result.message is not None
    assert "pivot_root: Operation not permitted" in result.message
    assert result.to_json("x")["message"] == result.message
    assert result.exit_code is None and result.time_ms is None


def test_internal_error_names_the_compile_step() -> None:
    result = to_result(Status.INTERNAL_ERROR, setup_failed(), None)
    assert result.message is not None and result.message.startswith("compile step:")


def test_internal_error_without_run_outcome_says_so() -> None:
    result = to_result(decide(ok(), None, None), ok(), None)
    assert result.status is Status.INTERNAL_ERROR
    assert result.message is not None and "no outcome" in result.message


def test_final_status_needs_a_run() -> None:
    with pytest.raises(ValueError):
        to_result(Status.ACCEPTED, ok(), None)
