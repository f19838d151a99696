"""Interactive problems without a kernel: the API's validation of the interactor fields,
the interactor's exit codes, and the verdict precedence of a pair (interactive.py)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sandboxd.interactive import InteractorVerdict, decide_pair, interactor_verdict
from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.model import Status
from tests.unit.test_api import Env, new_env, post

BASE = {"language": "python3", "source": "print(input())"}
INTERACTOR = {"interactor_source": "import sys", "interactor_language": "c"}


@pytest.fixture
async def env(aiohttp_client: Any) -> AsyncIterator[Env]:
    yield await new_env(aiohttp_client, max_tests=3, max_source_bytes=40,
                        sandbox={"output_limit_bytes": 8})


async def test_interactor_fields_are_passed(env: Env) -> None:
    body = {**BASE, **INTERACTOR, "stdin": "5 30", "expected_output": "5"}
    assert (await post(env, body))[0] == 202
    [submission] = env.service.submitted
    assert (submission.interactor_source, submission.interactor_language) == ("import sys", "c")
    assert (submission.stdin, submission.expected_output) == (b"5 30", b"5")


async def test_an_expected_output_for_the_interactor_is_not_bound_by_the_output_limit(
        env: Env) -> None:
    # Over the output limit of 8 bytes: refused for a checker, a file for an interactor.
    long = "1 2 3 4 5 6 7 8 9"
    assert (await post(env, {**BASE, "expected_output": long}))[0] == 400
    assert (await post(env, {**BASE, **INTERACTOR, "expected_output": long}))[0] == 202
    tests = [{"stdin": "1", "expected_output": long}]
    assert (await post(env, {**BASE, **INTERACTOR, "tests": tests}))[0] == 202
    assert [s.tests[0].expected_output if s.tests else s.expected_output
            for s in env.service.submitted] == [long.encode(), long.encode()]


async def test_interactor_with_tests_is_passed(env: Env) -> None:
    body = {**BASE, **INTERACTOR, "tests": [{"stdin": "1"}, {"stdin": "2"}]}
    assert (await post(env, body))[0] == 202
    [submission] = env.service.submitted
    assert submission.interactor_language == "c" and len(submission.tests or ()) == 2


@pytest.mark.parametrize(("extra", "error", "code"), [
    ({"interactor_source": "x"}, "interactor_language: required with interactor_source", 400),
    ({"interactor_language": "c"}, "interactor_source: required with interactor_language",
     400),
    ({"interactor_source": 1, "interactor_language": "c"},
     "interactor_source: must be a string, not a number", 400),
    ({"interactor_source": "", "interactor_language": "c"},
     "interactor_source: must not be empty", 400),
    ({"interactor_source": "x", "interactor_language": None},
     "interactor_language: must be a string, not null", 400),
    ({"interactor_source": "x", "interactor_language": "cobol"},
     "interactor_language: unknown language 'cobol'; known languages: c, python3", 400),
    ({**INTERACTOR, "checker": "tokens"},
     "checker: does not apply to an interactive problem: the interactor decides", 400),
    ({**INTERACTOR, "checker": "custom", "checker_source": "x", "checker_language": "c"},
     "checker: does not apply to an interactive problem: the interactor decides", 400),
    ({"interactor_source": "x" * 30, "interactor_language": "c"},
     "interactor_source: source, files, command_line_arguments and interactor_source are 44 "
     "bytes together, over the maximum of 40 bytes (server.max_source_bytes)", 413),
])
async def test_interactor_fields_refused_with_field_and_rule(env: Env, extra: dict[str, Any],
                                                            error: str, code: int) -> None:
    status, answer = await post(env, {**BASE, **extra})
    assert (status, answer) == (code, {"error": error})
    assert env.service.submitted == []


# -- the interactor's exit ---------------------------------------------------------------------

def exited(code: int, stderr: bytes = b"") -> JailOutcome:
    return JailOutcome(termination=Termination.EXITED, exit_code=code, stderr=stderr)


@pytest.mark.parametrize(("outcome", "status", "why"), [
    (exited(0), Status.ACCEPTED, None),
    (exited(1), Status.WRONG_ANSWER, None),
    (exited(2), Status.WRONG_ANSWER, None),  # testlib's presentation error
    (exited(3), Status.INTERNAL_ERROR, "exit code 3"),  # testlib's _fail
    (JailOutcome(termination=Termination.SIGNALED, signal=11), Status.INTERNAL_ERROR,
     "signal 11"),
    (JailOutcome(termination=Termination.WALL_LIMIT, signal=9, wall_exceeded=True),
     Status.INTERNAL_ERROR, "Time Limit Exceeded"),
    (JailOutcome(termination=Termination.SETUP_ERROR, setup_error="mounts: x (ENOENT)"),
     Status.INTERNAL_ERROR, "mounts: x (ENOENT)"),
])
def test_the_interactors_exit_says(outcome: JailOutcome, status: Status,
                                   why: str | None) -> None:
    verdict = interactor_verdict(outcome)
    assert verdict.status is status
    if why is None:
        assert verdict.failure is None
    else:
        assert verdict.failure is not None and verdict.failure.startswith(
            "the interactor failed: ") and why in verdict.failure


def test_the_interactors_stderr_is_its_message() -> None:
    assert interactor_verdict(exited(1, b"wrong \xff")).stderr == "wrong \ufffd"


# -- the pair's precedence ---------------------------------------------------------------------

AC = InteractorVerdict(Status.ACCEPTED, None, "")
WA = InteractorVerdict(Status.WRONG_ANSWER, None, "")
FAILED = InteractorVerdict(Status.INTERNAL_ERROR, "the interactor failed: exit code 3", "")
RE, TLE, MLE = Status.RUNTIME_ERROR, Status.TIME_LIMIT_EXCEEDED, Status.MEMORY_LIMIT_EXCEEDED
SIGPIPE = signal.SIGPIPE.value


@pytest.mark.parametrize(("solution", "solution_signal", "interactor", "interactor_first",
                          "verdict"), [
    # A clean solution: the interactor decides.
    (Status.ACCEPTED, None, AC, False, Status.ACCEPTED),
    (Status.ACCEPTED, None, WA, True, Status.WRONG_ANSWER),
    (Status.ACCEPTED, None, FAILED, False, Status.INTERNAL_ERROR),
    # The solution's limits and crashes come first...
    (TLE, 9, WA, False, TLE),
    (TLE, 9, WA, True, TLE),
    (MLE, 9, WA, True, MLE),
    (TLE, 9, FAILED, True, TLE),
    (RE, 11, WA, False, RE),
    (RE, 11, AC, True, RE),
    (RE, None, AC, True, RE),
    # ... except a failure on the closed pipe after the interactor had finished.
    (RE, None, WA, True, Status.WRONG_ANSWER),
    (RE, None, WA, False, Status.WRONG_ANSWER),  # the end order is no evidence here
    (RE, None, FAILED, False, Status.INTERNAL_ERROR),  # an interactor's failure: never RE
    (RE, 11, FAILED, False, Status.INTERNAL_ERROR),
    (RE, 6, WA, True, Status.WRONG_ANSWER),  # abort() after the interactor's WA
    (RE, 6, WA, False, RE),  # a crash by signal, seen first: the solution's own
    (RE, None, FAILED, True, Status.INTERNAL_ERROR),
    (RE, SIGPIPE, WA, True, Status.WRONG_ANSWER),
    (RE, SIGPIPE, WA, False, Status.WRONG_ANSWER),  # SIGPIPE: the interactor closed first
    (RE, SIGPIPE, AC, False, Status.ACCEPTED),
    (RE, SIGPIPE, FAILED, False, Status.INTERNAL_ERROR),
])
def test_pair_precedence(solution: Status, solution_signal: int | None,
                         interactor: InteractorVerdict, interactor_first: bool,
                         verdict: Status) -> None:
    assert decide_pair(solution, solution_signal, interactor, interactor_first) is verdict
