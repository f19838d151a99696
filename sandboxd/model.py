"""Pure data that crosses layers: submissions, limits, statuses and results.

Nothing here does I/O. `Status` values are the API's exact strings, so they serialize as-is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    ACCEPTED = "Accepted"
    WRONG_ANSWER = "Wrong Answer"
    COMPILE_ERROR = "Compile Error"
    RUNTIME_ERROR = "Runtime Error"
    TIME_LIMIT_EXCEEDED = "Time Limit Exceeded"
    MEMORY_LIMIT_EXCEEDED = "Memory Limit Exceeded"
    OUTPUT_LIMIT_EXCEEDED = "Output Limit Exceeded"
    INTERNAL_ERROR = "Internal Error"

    @property
    def is_final(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


class CallbackFormat(StrEnum):
    """The shape of a submission's callback (webhooks.py): sandboxd's result POSTed
    (the native API), or Judge0's submission object PUT (the Judge0 API, docs/JUDGE0.md)."""

    NATIVE = "native"
    JUDGE0 = "judge0"


@dataclass(frozen=True)
class Limits:
    """Limits of the run step, as the client asked for them (already validated)."""

    time_limit_ms: int
    wall_time_limit_ms: int
    memory_limit_mb: int


# The outputs a Result shows as text and keeps as exact bytes (Result.output_bytes).
OUTPUT_NAMES = ("stdout", "stderr", "compile_output")


def decode_output(data: bytes) -> tuple[str, bytes | None]:
    """A program's output as a Result keeps it: its text (invalid UTF-8 shown as
    U+FFFD, never an error) and, only when that text is not exact, the bytes."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), bytes(data)


def utf8_size(text: str) -> int:
    """len(text.encode()), without the copy for ASCII text (isascii() is O(1))."""
    return len(text) if text.isascii() else len(text.encode())


CHECKERS = ("exact", "lines", "tokens", "float", "unordered-lines")
# A program of the client's, run in its own box, decides (runner.py).
CUSTOM_CHECKER = "custom"
# What a language can be used for (GET /languages `usable_as`).
LANGUAGE_ROLES = ("program", "checker", "interactor")
DEFAULT_CHECKER = "lines"
DEFAULT_CHECKER_EPSILON = 1e-6


@dataclass(frozen=True)
class JudgeCase:
    """One test of a multi-test submission: its input, and what its output must match
    (bytes, exactly as given: the native API's text as UTF-8, the Judge0 API's base64
    decoded, whatever the bytes)."""

    stdin: bytes = b""
    expected_output: bytes | None = None
    time_limit_ms: int | None = None  # None: the submission's time limit
    wall_time_limit_ms: int | None = None  # None: the submission's (or derived from the above)


@dataclass(frozen=True)
class ExtraFile:
    """A file put into the working directory beside the source (a plain name, checked
    by the API), present for the compile step and every run."""

    name: str
    content: bytes


@dataclass(frozen=True)
class Submission:
    language: str
    source: str
    limits: Limits
    # Bytes, exactly as given (JudgeCase): a program may read input that is not UTF-8.
    stdin: bytes = b""
    expected_output: bytes | None = None
    # The final result is POSTed here (webhooks.py); only hosts on the allow-list.
    callback_url: str | None = None
    # What is sent there, and how: set by the API the submission came through.
    callback_format: CallbackFormat = CallbackFormat.NATIVE
    # False: never answered from the result cache, and the result is not stored there.
    cache: bool = True
    # Several tests instead of `stdin`/`expected_output`: compiled once, each test run in
    # a fresh box (runner.py). None: a single run.
    tests: tuple[JudgeCase, ...] | None = None
    # With `tests`: after the first test that is not Accepted, the rest are skipped.
    stop_on_first_failure: bool = True
    # How stdout is compared with an expected output (outputs.py).
    checker: str = DEFAULT_CHECKER
    checker_epsilon: float = DEFAULT_CHECKER_EPSILON
    # With checker "custom": the checker program and its language.
    checker_source: str | None = None
    checker_language: str | None = None
    # An interactive problem: the interactor program and its language (interactive.py).
    interactor_source: str | None = None
    interactor_language: str | None = None
    files: tuple[ExtraFile, ...] = ()
    # Appended to the language's compile command (argv items on the API's allow-list).
    compiler_options: tuple[str, ...] = ()
    # Appended to the language's run command (argv items, never a shell string).
    command_line_arguments: tuple[str, ...] = ()

    def input_bytes(self) -> int:
        """What the job holds until it has run: source, stdin and expected output (of
        every test), in bytes, text as UTF-8 (the unit of the API's limits and of the
        queue's budget)."""
        size = utf8_size(self.source) + len(self.stdin) + len(self.expected_output or b"")
        size += utf8_size(self.checker_source or "")
        size += utf8_size(self.interactor_source or "")
        size += sum(len(f.content) for f in self.files)
        size += sum(utf8_size(a) for a in self.command_line_arguments)
        size += sum(utf8_size(a) for a in self.compiler_options)
        for case in self.tests or ():
            size += len(case.stdin) + len(case.expected_output or b"")
        return size


@dataclass(frozen=True)
class Result:
    """The final (or pending) state of a submission, shaped like the native API's JSON.

    `stdout`, `stderr` and `compile_output` are text: the program's bytes decoded as
    UTF-8, an invalid sequence shown as U+FFFD. Only when that replacement lost
    something do the `exact_*` fields keep the bytes as the program wrote them (the
    Judge0 API's base64 shows those); None: the text's UTF-8 is the exact output.
    """

    status: Status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    time_ms: int | None = None
    wall_time_ms: int | None = None
    memory_kb: int | None = None
    compile_output: str = ""
    # Why the sandbox failed (Internal Error only); never set for the program's own faults.
    message: str | None = None
    # Served from the result cache, not run for this submission.
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    exact_stdout: bytes | None = None
    exact_stderr: bytes | None = None
    exact_compile_output: bytes | None = None

    def output_bytes(self, name: str) -> bytes:
        """The exact bytes of the output `name` (stdout, stderr or compile_output)."""
        if name not in OUTPUT_NAMES:
            raise ValueError(f"not an output: {name!r}")
        exact: bytes | None = getattr(self, f"exact_{name}")
        return exact if exact is not None else str(getattr(self, name)).encode()

    def to_json(self, submission_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "submission_id": submission_id,
            "status": self.status.value,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "time_ms": self.time_ms,
            "wall_time_ms": self.wall_time_ms,
            "memory_kb": self.memory_kb,
            "compile_output": self.compile_output,
            "cached": self.cached,
        }
        if self.message is not None:
            body["message"] = self.message
        body.update(self.extra)
        return body


def pending(status: Status) -> Result:
    """A Queued/Running placeholder: run fields are null until the job ends."""
    return Result(status=status)
