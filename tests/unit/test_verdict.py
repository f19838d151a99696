"""The verdict precedence table, output matching and the shaping of results."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.model import Status
from sandboxd.verdict import PRECEDENCE, decide, outputs_match, to_result

SIGKILL = int(signal.SIGKILL)
SIGSEGV = int(signal.SIGSEGV)


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
        # Memory Limit Exceeded
        (None, killed(oom_killed=True), None, Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(exit_code=137, oom_killed=True), None, Status.MEMORY_LIMIT_EXCEEDED),
        (None, ok(oom_killed=True), "hello", Status.MEMORY_LIMIT_EXCEEDED),  # a child was OOM
        (None, killed(termination=Termination.MEMORY_LIMIT), None, Status.MEMORY_LIMIT_EXCEEDED),
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
    assert decide(compile, run, expected) is status


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


def test_compile_warnings_kept_on_success() -> None:
    result = to_result(Status.ACCEPTED, ok(stdout=b"warning: unused\n"), ok())
    assert result.compile_output == "warning: unused\n"
    assert result.stdout == "hello\n"


def test_invalid_utf8_is_replaced() -> None:
    result = to_result(Status.ACCEPTED, None, ok(stdout=b"a\xffb", stderr=b"\xc3"))
    assert result.stdout == "a\ufffdb"
    assert result.stderr == "\ufffd"


def test_wrong_answer_on_invalid_utf8_output() -> None:
    assert decide(None, ok(stdout=b"\xff"), "\ufffd") is Status.ACCEPTED
    assert decide(None, ok(stdout=b"\xff"), "x") is Status.WRONG_ANSWER


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
