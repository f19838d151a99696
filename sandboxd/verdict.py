"""From what the jail measured to a verdict: one explicit precedence table, no I/O.

`decide` walks `PRECEDENCE` top to bottom and the first row whose predicate holds
wins, so "which verdict beats which" is read off the table instead of being hidden in
statement order (a program killed by SIGKILL because it hit a limit is a limit verdict,
never a Runtime Error). `to_result` then shapes the outcome into SPEC's JSON fields;
output comparison is outputs.py.

Memory Limit Exceeded needs evidence, never a guess from how much memory a failed
program had used: the kernel's OOM kill in the box; or a failed program whose
allocation larger than the limit the kernel refused (`memory_refused`); or a failed
program that ended the way its runtime reports running out of memory (the language's
`OutOfMemory` signature from languages.toml, e.g. Java's OutOfMemoryError exit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.model import (
    DEFAULT_CHECKER,
    DEFAULT_CHECKER_EPSILON,
    Result,
    Status,
    decode_output,
)
from sandboxd.outputs import as_text, check_output, outputs_match  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class OutOfMemory:
    """How a runtime ends when it runs out of memory (languages.toml `out_of_memory`).

    It matches a failed run whose exit code is one of `exit_codes` or whose signal is
    one of `signals`, *and* whose stderr matches one of the `stderr` patterns (searched
    with re.MULTILINE): neither an exit status a program can choose nor a message it
    can print is evidence on its own.
    """

    exit_codes: frozenset[int] = frozenset()
    signals: frozenset[int] = frozenset()
    stderr: tuple[re.Pattern[str], ...] = ()

    def matches(self, o: JailOutcome) -> bool:
        ended = (o.signal in self.signals if o.signal is not None
                 else o.exit_code in self.exit_codes)
        if not ended:
            return False
        text = decode(o.stderr)
        return any(p.search(text) for p in self.stderr)


@dataclass(frozen=True)
class Steps:
    """What the predicates look at: both steps' outcomes and the expected output."""

    compile: JailOutcome | None  # None: the language has no compile step
    run: JailOutcome | None  # None: the run step never happened (compile failed)
    expected_output: bytes | None
    out_of_memory: OutOfMemory | None = None  # the language's runtime OOM signature
    checker: str = DEFAULT_CHECKER  # how stdout is compared (outputs.check_output)
    checker_epsilon: float = DEFAULT_CHECKER_EPSILON


def _setup_failed(outcome: JailOutcome | None) -> bool:
    return outcome is not None and (
        outcome.setup_error is not None or outcome.termination is Termination.SETUP_ERROR
    )


def _compile_failed(s: Steps) -> bool:
    # The compiler's exit status and its time and memory limits decide. Its output is
    # information: past the cap it is truncated, never a failure by itself (a valid
    # program can make gcc print megabytes of warnings).
    c = s.compile
    return c is not None and (c.exit_code != 0 or c.signal is not None
                              or _time_exceeded(c) or _killed_for_memory(c))


# Limit flags are checked together with the termination reason so that an outcome that
# names its limit only one way still gets the limit verdict.
def _time_exceeded(o: JailOutcome) -> bool:
    return (
        o.cpu_exceeded
        or o.wall_exceeded
        or o.termination in (Termination.CPU_LIMIT, Termination.WALL_LIMIT)
    )


def _killed_for_memory(o: JailOutcome) -> bool:
    return o.oom_killed or o.termination is Termination.MEMORY_LIMIT


def _memory_exceeded(s: Steps) -> bool:
    o = s.run
    if o is None:
        return False
    if _killed_for_memory(o):
        return True  # any OOM kill in the box, also of a child the program survived
    if not _crashed(o):
        return False
    return o.memory_refused or (s.out_of_memory is not None and s.out_of_memory.matches(o))


def _output_exceeded(o: JailOutcome) -> bool:
    return o.output_exceeded or o.termination is Termination.OUTPUT_LIMIT


def _crashed(o: JailOutcome) -> bool:
    return o.exit_code != 0 or o.signal is not None


def _wrong_answer(s: Steps) -> bool:
    assert s.run is not None
    # Both sides as lossless text (outputs.as_text): bytes that are not UTF-8 match
    # only the same bytes.
    return s.expected_output is not None and not check_output(
        s.checker, as_text(s.run.stdout), as_text(s.expected_output), s.checker_epsilon
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
    (_memory_exceeded, Status.MEMORY_LIMIT_EXCEEDED),
    (_run(_output_exceeded), Status.OUTPUT_LIMIT_EXCEEDED),
    (_run(_crashed), Status.RUNTIME_ERROR),
    (_wrong_answer, Status.WRONG_ANSWER),
    (lambda s: True, Status.ACCEPTED),
)


def decide(
    compile: JailOutcome | None,
    run: JailOutcome | None,
    expected_output: bytes | None,
    out_of_memory: OutOfMemory | None = None,
    checker: str = DEFAULT_CHECKER,
    checker_epsilon: float = DEFAULT_CHECKER_EPSILON,
) -> Status:
    steps = Steps(compile, run, expected_output, out_of_memory, checker, checker_epsilon)
    for predicate, status in PRECEDENCE:
        if predicate(steps):
            return status
    raise AssertionError("unreachable: the last PRECEDENCE row always matches")


def decided_by_compile(compile: JailOutcome) -> Status | None:
    """The verdict when the compile step alone decides the submission, else None."""
    status = decide(compile, None, None)
    return None if status is Status.INTERNAL_ERROR and not _setup_failed(compile) else status


def decode(data: bytes) -> str:
    # Output that is not valid UTF-8 is shown with U+FFFD, never an error.
    return data.decode("utf-8", errors="replace")


def internal_error_message(compile: JailOutcome | None, run: JailOutcome | None) -> str:
    for step, outcome in (("compile", compile), ("run", run)):
        if outcome is not None and _setup_failed(outcome):
            return f"{step} step: {outcome.setup_error or 'sandbox setup failed'}"
    if run is None:
        return "run step: the sandbox reported no outcome"
    return "the sandbox failed"


COMPILE_OUTPUT_TRUNCATED = "[sandboxd: compile output truncated at the output limit]\n"


def _compile_output(compile: JailOutcome | None) -> tuple[str, bytes | None]:
    """The compile step's output as text, and its exact bytes when the text is not
    (Result.exact_compile_output)."""
    # Compile steps merge stderr into stdout to keep messages in order; append whatever
    # still came on stderr so nothing is lost.
    if compile is None:
        return "", None
    stdout, exact_stdout = decode_output(compile.stdout)
    stderr, exact_stderr = decode_output(compile.stderr)
    text = stdout + stderr
    lossy = exact_stdout is not None or exact_stderr is not None
    exact = compile.stdout + compile.stderr
    # Past the cap the jail drops the rest: say so, or the cut looks like the end.
    # A compiler stopped by a limit often printed nothing: say which limit, or the
    # user sees a Compile Error with no reason.
    notes = [note for hit, note in _compile_notes(compile) if hit]
    if notes:
        note = ("" if not text or text.endswith("\n") else "\n") + "".join(notes)
        text += note
        exact += note.encode()
    return text, (exact if lossy else None)


def _compile_notes(c: JailOutcome) -> tuple[tuple[bool, str], ...]:
    return (
        (_output_exceeded(c), COMPILE_OUTPUT_TRUNCATED),
        (_time_exceeded(c), "[sandboxd: the compile step exceeded its time limit]\n"),
        (_killed_for_memory(c), "[sandboxd: the compile step exceeded its memory limit]\n"),
    )


def to_result(status: Status, compile: JailOutcome | None, run: JailOutcome | None) -> Result:
    """SPEC's result fields for a decided `status`; fields that do not apply are null."""
    compile_output, exact_compile_output = _compile_output(compile)
    if status is Status.INTERNAL_ERROR:
        return Result(
            status=status,
            compile_output=compile_output,
            exact_compile_output=exact_compile_output,
            message=internal_error_message(compile, run),
        )
    if status is Status.COMPILE_ERROR:
        return Result(status=status, compile_output=compile_output,
                      exact_compile_output=exact_compile_output)
    if run is None:
        raise ValueError(f"{status.value} needs a run outcome")
    stdout, exact_stdout = decode_output(run.stdout)
    stderr, exact_stderr = decode_output(run.stderr)
    return Result(
        status=status,
        stdout=stdout,
        stderr=stderr,
        exact_stdout=exact_stdout,
        exact_stderr=exact_stderr,
        exact_compile_output=exact_compile_output,
        # SPEC: a program killed by a signal has exit_code null and signal set.
        exit_code=None if run.signal is not None else run.exit_code,
        signal=run.signal,
        time_ms=run.cpu_ms,
        wall_time_ms=run.wall_ms,
        memory_kb=run.memory_bytes // 1024,
        compile_output=compile_output,
    )
