"""From what the jail measured to a verdict: one explicit precedence table, no I/O.

`decide` walks `PRECEDENCE` top to bottom and the first row whose predicate holds
wins, so "which verdict beats which" is read off the table instead of being hidden in
statement order (a program killed by SIGKILL because it hit a limit is a limit verdict,
never a Runtime Error). `to_result` then shapes the outcome into SPEC's JSON fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.model import Result, Status


@dataclass(frozen=True)
class Steps:
    """What the predicates look at: both steps' outcomes and the expected output."""

    compile: JailOutcome | None  # None: the language has no compile step
    run: JailOutcome | None  # None: the run step never happened (compile failed)
    expected_output: str | None


def _setup_failed(outcome: JailOutcome | None) -> bool:
    return outcome is not None and (
        outcome.setup_error is not None or outcome.termination is Termination.SETUP_ERROR
    )


def _compile_failed(s: Steps) -> bool:
    c = s.compile
    return c is not None and (c.exit_code != 0 or c.signal is not None or _hit_any_limit(c))


def _hit_any_limit(o: JailOutcome) -> bool:
    return _time_exceeded(o) or _memory_exceeded(o) or _output_exceeded(o)


# Limit flags are checked together with the termination reason so that an outcome that
# names its limit only one way still gets the limit verdict.
def _time_exceeded(o: JailOutcome) -> bool:
    return (
        o.cpu_exceeded
        or o.wall_exceeded
        or o.termination in (Termination.CPU_LIMIT, Termination.WALL_LIMIT)
    )


def _memory_exceeded(o: JailOutcome) -> bool:
    return o.oom_killed or o.termination is Termination.MEMORY_LIMIT


def _output_exceeded(o: JailOutcome) -> bool:
    return o.output_exceeded or o.termination is Termination.OUTPUT_LIMIT


def _crashed(o: JailOutcome) -> bool:
    return o.exit_code != 0 or o.signal is not None


def _wrong_answer(s: Steps) -> bool:
    assert s.run is not None
    return s.expected_output is not None and not outputs_match(
        decode(s.run.stdout), s.expected_output
    )


def _run(check: Callable[[JailOutcome], bool]) -> Callable[[Steps], bool]:
    """Lift a predicate on the run outcome; rows below `run is None` may rely on it."""
    return lambda s: s.run is not None and check(s.run)


Predicate = Callable[[Steps], bool]

# First match wins. SPEC: Internal Error > (compile step) > Time Limit Exceeded >
# Memory Limit Exceeded > Output Limit Exceeded > Runtime Error > Wrong Answer > Accepted.
PRECEDENCE: tuple[tuple[Predicate, Status], ...] = (
    (lambda s: _setup_failed(s.compile) or _setup_failed(s.run), Status.INTERNAL_ERROR),
    (_compile_failed, Status.COMPILE_ERROR),
    # Compiled (or nothing to compile) but no run outcome: the sandbox lost the run.
    (lambda s: s.run is None, Status.INTERNAL_ERROR),
    (_run(_time_exceeded), Status.TIME_LIMIT_EXCEEDED),
    (_run(_memory_exceeded), Status.MEMORY_LIMIT_EXCEEDED),
    (_run(_output_exceeded), Status.OUTPUT_LIMIT_EXCEEDED),
    (_run(_crashed), Status.RUNTIME_ERROR),
    (_wrong_answer, Status.WRONG_ANSWER),
    (lambda s: True, Status.ACCEPTED),
)


def decide(
    compile: JailOutcome | None, run: JailOutcome | None, expected_output: str | None
) -> Status:
    steps = Steps(compile, run, expected_output)
    for predicate, status in PRECEDENCE:
        if predicate(steps):
            return status
    raise AssertionError("unreachable: the last PRECEDENCE row always matches")


def decided_by_compile(compile: JailOutcome) -> Status | None:
    """The verdict when the compile step alone decides the submission, else None."""
    status = decide(compile, None, None)
    return None if status is Status.INTERNAL_ERROR and not _setup_failed(compile) else status


_TRAILING = " \t\r"


def _normalized_lines(text: str) -> list[str]:
    lines = [line.rstrip(_TRAILING) for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing spaces/tabs/CR on each line and blank lines at the end.

    Leading whitespace and blank lines elsewhere still count.
    """
    return _normalized_lines(actual) == _normalized_lines(expected)


def decode(data: bytes) -> str:
    # SPEC: output that is not valid UTF-8 is returned with U+FFFD, never an error.
    return data.decode("utf-8", errors="replace")


def internal_error_message(compile: JailOutcome | None, run: JailOutcome | None) -> str:
    for step, outcome in (("compile", compile), ("run", run)):
        if outcome is not None and _setup_failed(outcome):
            return f"{step} step: {outcome.setup_error or 'sandbox setup failed'}"
    if run is None:
        return "run step: the sandbox reported no outcome"
    return "the sandbox failed"


def _compile_output(compile: JailOutcome | None) -> str:
    # Compile steps merge stderr into stdout to keep messages in order; append whatever
    # still came on stderr so nothing is lost.
    if compile is None:
        return ""
    text = decode(compile.stdout) + decode(compile.stderr)
    # A compiler stopped by a limit often printed nothing: say which limit, or the
    # user sees a Compile Error with no reason.
    notes = [note for hit, note in _compile_limit_notes(compile) if hit]
    if notes:
        text += ("" if not text or text.endswith("\n") else "\n") + "".join(notes)
    return text


def _compile_limit_notes(c: JailOutcome) -> tuple[tuple[bool, str], ...]:
    return (
        (_time_exceeded(c), "[sandboxd: the compile step exceeded its time limit]\n"),
        (_memory_exceeded(c), "[sandboxd: the compile step exceeded its memory limit]\n"),
        (_output_exceeded(c), "[sandboxd: the compile step exceeded its output limit]\n"),
    )


def to_result(status: Status, compile: JailOutcome | None, run: JailOutcome | None) -> Result:
    """SPEC's result fields for a decided `status`; fields that do not apply are null."""
    compile_output = _compile_output(compile)
    if status is Status.INTERNAL_ERROR:
        return Result(
            status=status,
            compile_output=compile_output,
            message=internal_error_message(compile, run),
        )
    if status is Status.COMPILE_ERROR:
        return Result(status=status, compile_output=compile_output)
    if run is None:
        raise ValueError(f"{status.value} needs a run outcome")
    return Result(
        status=status,
        stdout=decode(run.stdout),
        stderr=decode(run.stderr),
        # SPEC: a program killed by a signal has exit_code null and signal set.
        exit_code=None if run.signal is not None else run.exit_code,
        signal=run.signal,
        time_ms=run.cpu_ms,
        wall_time_ms=run.wall_ms,
        memory_kb=run.memory_bytes // 1024,
        compile_output=compile_output,
    )
