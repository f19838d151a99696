"""Interactive problems: the solution and the interactor in two boxes at once, pipes crossed.

For each run (the single `stdin`, or each of `tests`) the daemon creates two kernel
pipes and hands their ends to the two boxes (`Sandbox.run(stdin_fd=, stdout_fd=)`):
the solution's stdout is the interactor's stdin and the interactor's stdout is the
solution's stdin. The daemon relays no bytes and holds no end once both boxes have
theirs, so either side ending is seen by the other at once (EOF on read, SIGPIPE or
EPIPE on write) — with one exception: the daemon keeps a read end of the solution's
stdin, and once the solution has ended it reads and discards whatever the interactor
still writes there. An interactor's last words to a solution that did not wait for them
(a final "correct" after the last guess) are no failure of the interactor's, and no
race decides them. Each box has its own cgroup and limits: the solution the
submission's, the interactor generous ones like the custom checker's (the maximum CPU
time, the default memory) and a wall limit `INTERACTOR_WALL_GRACE_MS` longer than the
solution's, so when both wait for each other (a deadlock, a solution that never
answers or never reads) the solution's wall limit ends it first: Time Limit Exceeded
(idleness), then the interactor sees EOF and ends too. Nothing waits forever.

The interactor follows testlib's conventions: argv[1] is the test's input
(/tmp/input.txt), argv[2] a file it may write (/tmp/output.txt, never read back),
argv[3] the expected output (/tmp/expected.txt) when the test has one; the input and
expected files are written by the daemon into the interactor box's new /tmp before it
starts, read-only. Its exit code: 0 Accepted, 1 Wrong Answer, 2 (presentation error)
Wrong Answer; anything else (another code, a signal, a limit) is the interactor's
failure: an Internal Error that says so, never a verdict against the solution. Its
stdout is the protocol (the solution read it); its stderr is the result's
`interactor_message`.

The verdict, first row that applies (`decide_pair`):

1. either box failed to set up: Internal Error;
2. the solution was killed by SIGPIPE: it wrote after the interactor had closed its
   end, so the interactor had finished: the interactor's verdict (rows 4-5);
3. the solution broke a limit or failed (Time Limit / Memory Limit / Runtime Error):
   that verdict; except that a Runtime Error by exit code (not a signal) with an
   interactor that said Wrong Answer is Wrong Answer (the solution typically failed on
   the closed pipe; which end the daemon saw first does not matter), any Runtime
   Error with an interactor that failed is an Internal Error (never a verdict against
   the solution), and a crash by signal after the interactor had already ended with
   Wrong Answer is Wrong Answer;
4. the interactor failed: Internal Error;
5. the interactor's exit code: Accepted or Wrong Answer.

"Already ended" is the order in which the daemon saw the boxes end, best effort: a
process's pipe ends close when it exits, before its box is torn down, so the other box
can end (and be seen ending) first. Only a solution killed by a signal (other than
SIGPIPE) with an interactor's Wrong Answer depends on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandboxd.jail.spec import Bind, JailOutcome, JailSpec
from sandboxd.jail.workspace import write_new_file
from sandboxd.languages import Language, StepSizes
from sandboxd.model import Limits, Result, Status, Submission
from sandboxd.verdict import OutOfMemory, decide, decode, internal_error_message, to_result

if TYPE_CHECKING:
    from sandboxd.runner import Runner

# The interactor outlives the solution's wall limit by this much, so a pair waiting
# on each other ends with the solution's Time Limit Exceeded, not the interactor's.
INTERACTOR_WALL_GRACE_MS = 1000
# The interactor's stderr kept in the result.
INTERACTOR_MESSAGE_CHARS = 4000
INTERACTOR_ARGS = ("/tmp/input.txt", "/tmp/output.txt", "/tmp/expected.txt")


@dataclass(frozen=True)
class Interactor:
    """A compiled interactor: its language, and its /box to bind read-only."""

    language: Language
    box: Bind


@dataclass(frozen=True)
class InteractorVerdict:
    """What the interactor's own end says: Accepted, Wrong Answer or (its failure)
    Internal Error, with why, and its stderr."""

    status: Status
    failure: str | None
    stderr: str


def interactor_verdict(outcome: JailOutcome, out_of_memory: OutOfMemory | None = None
                       ) -> InteractorVerdict:
    """Exit 0: Accepted; 1 or 2: Wrong Answer; anything else: the interactor failed
    (`out_of_memory`: its language's signature, to name a memory limit as such)."""
    ended = decide(None, outcome, None, out_of_memory)
    stderr = decode(outcome.stderr)[:INTERACTOR_MESSAGE_CHARS]
    if ended is Status.ACCEPTED:
        return InteractorVerdict(Status.ACCEPTED, None, stderr)
    if ended is Status.RUNTIME_ERROR and outcome.signal is None and outcome.exit_code in (1, 2):
        return InteractorVerdict(Status.WRONG_ANSWER, None, stderr)
    why = (internal_error_message(None, outcome) if ended is Status.INTERNAL_ERROR
           else f"{ended.value} (exit code {outcome.exit_code}, signal {outcome.signal})")
    return InteractorVerdict(Status.INTERNAL_ERROR, f"the interactor failed: {why}", stderr)


def decide_pair(solution: Status, solution_signal: int | None, interactor: InteractorVerdict,
                interactor_ended_first: bool) -> Status:
    """The verdict of one interactive run: the table of the module docstring, rows
    2-5 (row 1, a box that failed to set up, is the caller's: it has no outcome to
    judge). `solution` is the solution's own status (verdict.decide without an expected
    output: Accepted for a clean exit)."""
    if solution_signal == signal.SIGPIPE:
        return interactor.status
    if solution is not Status.ACCEPTED:
        if solution is Status.RUNTIME_ERROR:
            # An exit with an error code (a program that handles EPIPE: Python's
            # BrokenPipeError, a checked write in C) and an interactor that said Wrong
            # Answer: whichever end the daemon saw first, the answer was wrong.
            if solution_signal is None and interactor.status is Status.WRONG_ANSWER:
                return Status.WRONG_ANSWER
            # An interactor that failed: never a verdict against the solution, which
            # may only have failed on the closed pipe.
            if interactor.status is Status.INTERNAL_ERROR:
                return Status.INTERNAL_ERROR
            # A crash after the interactor had ended (best effort, see above).
            if interactor_ended_first and interactor.status is not Status.ACCEPTED:
                return interactor.status
        return solution
    return interactor.status


async def run_pair(runner: Runner, lang: Language, submission: Submission, limits: Limits,
                   slot: int, binds: tuple[Bind, ...], stdin: bytes, expected: bytes | None,
                   compiled: JailOutcome | None, interactor: Interactor) -> Result:
    """Run the solution (`binds`: its /box and scratch dirs) against the interactor,
    the test's `stdin` and `expected` given to the interactor as files; the verdict."""
    scratch = runner._workspace(slot)
    try:
        interactor_binds = tuple(b for b in scratch.binds_for_next_step() if b.target != "/box")
        [tmp] = [b.source for b in interactor_binds if b.target == "/tmp"]
        files = [("input.txt", stdin)]
        if expected is not None:
            files.append(("expected.txt", expected))
        for name, content in files:
            write_new_file(os.path.join(tmp, name), content)
        args = INTERACTOR_ARGS if expected is not None else INTERACTOR_ARGS[:2]
        solution_spec = runner._spec(
            lang, lang.run_argv(StepSizes.run(runner.config, limits.memory_limit_mb))
            + submission.command_line_arguments, runner._run_limits(lang, limits), slot, binds)
        ilang = interactor.language
        config_limits = runner.config.limits
        ilimits = Limits(time_limit_ms=config_limits.time_limit_ms.max,
                         wall_time_limit_ms=limits.wall_time_limit_ms + INTERACTOR_WALL_GRACE_MS,
                         memory_limit_mb=config_limits.memory_limit_mb.default)
        interactor_spec = runner._spec(
            ilang, ilang.run_argv(StepSizes.run(runner.config, ilimits.memory_limit_mb)) + args,
            runner._run_limits(ilang, ilimits), slot, (interactor.box, *interactor_binds))
        ran, talked, interactor_first = await _run_both(runner, solution_spec, interactor_spec)
        runner.observer.run_step(lang.id, ran.wall_ms / 1000)
        runner.observer.run_step(ilang.id, talked.wall_ms / 1000)
    finally:
        scratch.destroy()
    solution_status = decide(compiled, ran, None, lang.out_of_memory)
    if solution_status is Status.INTERNAL_ERROR:
        return to_result(solution_status, compiled, ran)
    verdict = interactor_verdict(talked, ilang.out_of_memory)
    if talked.setup_error is not None:
        return Result(status=Status.INTERNAL_ERROR, message=verdict.failure)
    status = decide_pair(solution_status, ran.signal, verdict, interactor_first)
    # The solution's run fields whatever the verdict (an interactor's failure too), but
    # no stdout: it was the protocol, and the interactor read it.
    run_fields = to_result(Status.ACCEPTED, compiled, ran)
    return dataclasses.replace(
        run_fields, status=status, stdout="", exact_stdout=None,
        message=verdict.failure if status is Status.INTERNAL_ERROR else None,
        extra={**run_fields.extra, "interactor_message": verdict.stderr})


async def _run_both(runner: Runner, solution_spec: JailSpec, interactor_spec: JailSpec
                    ) -> tuple[JailOutcome, JailOutcome, bool]:
    """Both boxes at once over two crossed pipes; their outcomes, and whether the
    interactor's box ended first. Each run owns the pipe ends it was given."""
    to_interactor_r, to_interactor_w = os.pipe2(os.O_CLOEXEC)
    try:
        to_solution_r, to_solution_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        os.close(to_interactor_r)
        os.close(to_interactor_w)
        raise
    ended: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    try:
        # The daemon's read end of the solution's stdin: a new open file description
        # (a dup would share O_NONBLOCK with the solution's own stdin).
        leftover = os.open(f"/proc/self/fd/{to_solution_r}",
                           os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        for fd in (to_interactor_r, to_interactor_w, to_solution_r, to_solution_w):
            os.close(fd)
        raise
    discarding = False

    def discard() -> None:
        nonlocal discarding
        try:
            if os.read(leftover, 1 << 16):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(leftover)  # EOF: the interactor has closed its stdout
        discarding = False

    def solution_ended(_: object) -> None:
        nonlocal discarding
        if not discarding and "interactor" not in ended:
            discarding = True
            loop.add_reader(leftover, discard)

    def run(name: str, spec: JailSpec, stdin_fd: int, stdout_fd: int) -> asyncio.Task[JailOutcome]:
        task = asyncio.ensure_future(
            runner.sandbox.run(spec, stdin_fd=stdin_fd, stdout_fd=stdout_fd))
        task.add_done_callback(lambda _: ended.setdefault(name, time.monotonic()))
        return task

    tasks = [run("solution", solution_spec, to_solution_r, to_interactor_w),
             run("interactor", interactor_spec, to_interactor_r, to_solution_w)]
    tasks[0].add_done_callback(solution_ended)
    try:
        await asyncio.wait(tasks)
    except BaseException:
        # Cancelled (the daemon is stopping): both boxes are killed, never left running.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    finally:
        if discarding:
            loop.remove_reader(leftover)
        os.close(leftover)
    failed = [e for task in tasks if (e := task.exception()) is not None]
    if failed:
        raise failed[0]  # a JailError: the runner's Internal Error
    solution, interactor = (task.result() for task in tasks)
    return solution, interactor, ended["interactor"] < ended["solution"]
