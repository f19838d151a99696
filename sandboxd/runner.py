"""A submission -> compile box -> run box -> verdict. Owns the workspace.

Both steps of a submission share one box slot (so one host uid) and one
workspace tmpfs: the compile box writes its binary into /box and the run box
finds it there. The daemon itself never reads what a box wrote (workspace.py), with one
exception: right after a compile, before any run box saw it, the compiled-artifact cache
copies /box out (artifacts.py, jail/boxtree.py), so an identical program later gets a
fresh copy instead of a compile step.

With `tests`, the program is compiled once and each test runs in a fresh box over
a fresh tmpfs of its own (/tmp, /dev/shm), the compiled /box bound read-only; a custom
checker is compiled once into a workspace of its own and runs the same way, its three
files written by the daemon into the new /tmp before the box starts. An interactor
(interactive problems) is compiled the same way, and each run is then a pair of boxes
talking over pipes: interactive.py.

The compile step is the language's compiler, or for an interpreted language its
syntax check (languages.toml `check`): either way a source that does not parse is a
Compile Error with the tool's message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from sandboxd.artifacts import Artifact, ArtifactCache, artifact_key, cacheable
from sandboxd.config import MIB, Config
from sandboxd.interactive import Interactor, run_pair
from sandboxd.jail.boxtree import Uncapturable, capture
from sandboxd.jail.spec import Bind, BoxLimits, JailError, JailOutcome, JailSpec, SeccompProfile
from sandboxd.jail.supervisor import Sandbox
from sandboxd.jail.workspace import Workspace, write_new_file
from sandboxd.languages import Language, Registry, StepSizes, parse_version
from sandboxd.model import (
    CUSTOM_CHECKER,
    ExtraFile,
    JudgeCase,
    Limits,
    Result,
    Status,
    Submission,
)
from sandboxd.observer import Observer
from sandboxd.outputs import BOM
from sandboxd.verdict import (
    decide,
    decided_by_compile,
    decode,
    internal_error_message,
    to_result,
)

log = logging.getLogger(__name__)

DATA_LIMIT_MARGIN_BYTES = 256 * MIB  # thread stacks (8 MiB each) count as data too

TESTS_OUTPUT_BUDGET_CHARS = 4 * MIB

# Files and directories a compile may leave in /box and still be cached (artifacts.py).
MAX_ARTIFACT_FILES = 1000

# A test not run: an earlier one failed (stop_on_first_failure) or the compile did.
SKIPPED = "Skipped"
SKIPPED_TEST: dict[str, Any] = {
    "status": SKIPPED, "stdout": "", "stderr": "", "exit_code": None, "signal": None,
    "time_ms": None, "wall_time_ms": None, "memory_kb": None,
}
_TEST_FIELDS = ("stdout", "stderr", "exit_code", "signal", "time_ms", "wall_time_ms",
                "memory_kb", "message")


def _test_entry(result: Result) -> dict[str, Any]:
    """One test's entry of the per-test list: its status and run fields."""
    entry: dict[str, Any] = {"status": result.status.value}
    for name in _TEST_FIELDS:
        value = getattr(result, name)
        if name != "message" or value is not None:
            entry[name] = value
    entry.update(result.extra)  # the custom checker's message
    return entry


def _trim_output(entry: dict[str, Any], budget: int) -> int:
    """Cut the entry's stdout and stderr to what is left of `budget` (marking the entry
    `output_truncated`); the characters kept."""
    kept = 0
    for name in ("stdout", "stderr"):
        text = entry[name]
        room = max(budget - kept, 0)
        if len(text) > room:
            entry[name] = text[:room]
            entry["output_truncated"] = True
        kept += len(entry[name])
    return kept


def _with_skipped_tests(result: Result, submission: Submission) -> Result:
    """`result` (the job ended before any test ran) with every test marked skipped."""
    if submission.tests is None:
        return result
    return dataclasses.replace(result, extra={"tests": [SKIPPED_TEST] * len(submission.tests)})


def _write_program(workspace: Workspace, lang: Language, source: bytes,
                   files: tuple[ExtraFile, ...]) -> None:
    workspace.write_file(lang.source, source)
    for extra in files:  # names checked by the API (api.py)
        workspace.write_file(extra.name, extra.content)


def _seal(compiled: JailOutcome, workspace: Workspace, max_bytes: int) -> Artifact | None:
    """The artifact of a compile that just ended in `workspace`, before any other box
    has seen it; None if it is not one to keep (artifacts.py)."""
    if not cacheable(compiled):
        return None
    if decided_by_compile(compiled) is not None:
        return Artifact(compiled, None)  # a Compile Error: nothing will run
    try:
        tree = capture(workspace.path / "box", max_bytes=max_bytes,
                       max_entries=MAX_ARTIFACT_FILES)
    except Uncapturable as e:
        log.info("compiled program not cached: %s", e)
        return None
    return Artifact(compiled, tree)


@dataclass(frozen=True)
class _Checker:
    """A compiled custom checker: its language, and its /box to bind read-only."""

    language: Language
    box: Bind


class Runner:
    def __init__(self, sandbox: Sandbox, languages: Registry, config: Config,
                 observer: Observer | None = None) -> None:
        self.sandbox = sandbox
        self.languages = languages
        self.config = config
        # Told of every compile and run step and every sandbox failure (metrics.py).
        self.observer = observer if observer is not None else Observer()
        # Compiled programs by what was compiled (artifacts.py); None: always compile.
        self.artifacts = ArtifactCache.from_config(config.artifacts)

    @property
    def healthy(self) -> bool:
        return self.sandbox.healthy

    async def run(self, submission: Submission) -> Result:
        lang = self.languages[submission.language]
        try:
            result = await self._run(lang, submission)
        except JailError as e:
            log.error("sandbox failure for %s: %s", submission.language, e)
            result = Result(status=Status.INTERNAL_ERROR, message=f"sandbox failure: {e}")
        if result.status is Status.INTERNAL_ERROR:
            # A box that failed to set up (a JailError, or a setup error the box reported).
            self.observer.sandbox_failure(result.message or "internal error")
        return result

    async def _run(self, lang: Language, submission: Submission) -> Result:
        async with self.sandbox.slot() as slot:
            workspaces: list[Workspace] = []
            try:
                checker: _Checker | None = None
                if submission.checker == CUSTOM_CHECKER:
                    # First: a checker that does not compile fails the job before any run.
                    checker_or_error = await self._compile_checker(submission, slot, workspaces)
                    if isinstance(checker_or_error, Result):
                        return _with_skipped_tests(checker_or_error, submission)
                    checker = checker_or_error
                interactor: Interactor | None = None
                if submission.interactor_source is not None:
                    # Like the checker: an interactor that does not compile fails the job.
                    assert submission.interactor_language is not None
                    helper = await self._compile_helper(
                        submission.interactor_language, submission.interactor_source,
                        "the interactor", slot, workspaces)
                    if isinstance(helper, Result):
                        return _with_skipped_tests(helper, submission)
                    interactor = Interactor(*helper)
                workspace = self._workspace(slot)
                workspaces.append(workspace)
                compiled = await self._build(lang, slot, workspace, submission.source,
                                             submission.files, submission.compiler_options)
                if compiled is not None:
                    verdict = decided_by_compile(compiled)
                    if verdict is not None:
                        return _with_skipped_tests(to_result(verdict, compiled, None),
                                                   submission)
                if submission.tests is not None:
                    return await self._run_tests(lang, submission, submission.tests, compiled,
                                                 slot, workspace, checker, interactor)
                if interactor is not None:
                    return await run_pair(self, lang, submission, submission.limits, slot,
                                          workspace.binds_for_next_step(), submission.stdin,
                                          submission.expected_output, compiled, interactor)
                ran = await self._run_step(lang, submission, submission.limits, slot,
                                           workspace.binds_for_next_step(), submission.stdin)
                return await self._judge(lang, submission, compiled, ran, submission.stdin,
                                         submission.expected_output, slot, checker)
            finally:
                for workspace in workspaces:
                    workspace.destroy()

    async def _build(self, lang: Language, slot: int, workspace: Workspace, source: str,
                     files: tuple[ExtraFile, ...] = (), options: tuple[str, ...] = ()
                     ) -> JailOutcome | None:
        """Put the program into `workspace` (fresh: no box has seen it) and compile it;
        or, when an identical program compiled before, copy in its artifact instead
        (artifacts.py). The compile step's outcome either way; None if it has none."""
        # A UTF-8 BOM (Windows editors) is no part of the program: javac calls it
        # an illegal character, and no toolchain needs it.
        program = source.removeprefix(BOM).encode()
        cache = self.artifacts
        if cache is None or lang.compile_step is None:
            _write_program(workspace, lang, program, files)
            return await self._compile(lang, slot, workspace, options)
        key = artifact_key(lang.id, program, ((f.name, f.content) for f in files), options)
        async with cache.flight(key):
            artifact = cache.get(key)
            self.observer.artifact_lookup(lang.id, artifact is not None)
            if artifact is not None:
                if artifact.tree is not None:
                    try:
                        artifact.tree.restore(workspace)
                    except OSError as e:  # the daemon's own write failed (ENOSPC, ...)
                        raise JailError(f"workspace: copying the compiled program: {e}"
                                        ) from None
                return artifact.compiled
            _write_program(workspace, lang, program, files)
            compiled = await self._compile(lang, slot, workspace, options)
            assert compiled is not None
            artifact = _seal(compiled, workspace, cache.max_bytes)
            if artifact is not None:
                cache.put(key, artifact)
            return compiled

    async def _compile(self, lang: Language, slot: int, workspace: Workspace,
                       options: tuple[str, ...] = ()) -> JailOutcome | None:
        """The language's compile step (or syntax check) in `workspace`, `options` at the
        end (so they override the defaults, and libraries come after the sources); None
        if it has none."""
        compile_step = lang.compile_step
        if compile_step is None:
            return None
        started = time.monotonic()
        compiled = await self.sandbox.run(self._spec(
            lang, lang.argv(compile_step, StepSizes.compile(self.config, lang)) + options,
            self._compile_limits(lang), slot, workspace.binds_for_next_step(),
            merge_stderr=True))
        self.observer.compile_step(lang.id, time.monotonic() - started)
        return compiled

    async def _compile_checker(self, submission: Submission, slot: int,
                               workspaces: list[Workspace]) -> _Checker | Result:
        assert submission.checker_language is not None and submission.checker_source is not None
        helper = await self._compile_helper(submission.checker_language,
                                            submission.checker_source, "the custom checker",
                                            slot, workspaces)
        return helper if isinstance(helper, Result) else _Checker(*helper)

    async def _compile_helper(self, language: str, source: str, what: str, slot: int,
                              workspaces: list[Workspace]) -> tuple[Language, Bind] | Result:
        """Compile a program of the problem's (a checker, an interactor) into a workspace
        of its own: its language and its /box to bind read-only, or the Internal Error
        saying it did not compile (never a verdict against the solution)."""
        lang = self.languages[language]
        workspace = self._workspace(slot)
        workspaces.append(workspace)
        compiled = await self._build(lang, slot, workspace, source)
        if compiled is not None:
            verdict = decided_by_compile(compiled)
            if verdict is not None:
                failed = to_result(verdict, compiled, None)
                why = failed.message if verdict is Status.INTERNAL_ERROR else (
                    f"{verdict.value}:\n{failed.compile_output}")
                return Result(status=Status.INTERNAL_ERROR,
                              message=f"{what} did not compile: {why}")
        return lang, Bind(str(workspace.path / "box"), "/box", writable=False)

    async def _judge(self, lang: Language, submission: Submission,
                     compiled: JailOutcome | None, ran: JailOutcome, stdin: bytes,
                     expected_output: bytes | None, slot: int,
                     checker: _Checker | None) -> Result:
        """The verdict of one run: the table of verdict.py, then (a run that ended
        cleanly, with a custom checker) the checker's."""
        if checker is None:
            status = decide(compiled, ran, expected_output, lang.out_of_memory,
                            submission.checker, submission.checker_epsilon)
            return to_result(status, compiled, ran)
        status = decide(compiled, ran, None, lang.out_of_memory)
        result = to_result(status, compiled, ran)
        if status is not Status.ACCEPTED:
            return result
        verdict, message = await self._run_checker(checker, slot, stdin, ran.stdout,
                                                   expected_output or b"")
        if verdict is Status.INTERNAL_ERROR:
            return dataclasses.replace(result, status=verdict, message=message)
        return dataclasses.replace(result, status=verdict,
                                   extra={**result.extra, "checker_message": message})

    async def _run_checker(self, checker: _Checker, slot: int, stdin: bytes, output: bytes,
                           expected: bytes) -> tuple[Status, str]:
        """Run the custom checker in a fresh box: argv[1..3] are the test's input, the
        program's output and the expected output, as files the daemon wrote into the
        box's new /tmp before it started. Exit 0: Accepted, 1: Wrong Answer; anything
        else (another exit code, a signal, a limit) is the checker's failure, an
        Internal Error, never a verdict against the program."""
        scratch = self._workspace(slot)
        try:
            binds = tuple(b for b in scratch.binds_for_next_step() if b.target != "/box")
            [tmp] = [b.source for b in binds if b.target == "/tmp"]
            paths = []
            for name, content in (("input.txt", stdin), ("output.txt", output),
                                  ("expected.txt", expected)):
                write_new_file(os.path.join(tmp, name), content)
                paths.append(f"/tmp/{name}")
            lang = checker.language
            limits = self.config.limits
            box = Limits(time_limit_ms=limits.time_limit_ms.max,
                         wall_time_limit_ms=limits.wall_time_limit_ms.max,
                         memory_limit_mb=limits.memory_limit_mb.default)
            sizes = StepSizes.run(self.config, box.memory_limit_mb)
            started = time.monotonic()
            outcome = await self.sandbox.run(self._spec(
                lang, lang.run_argv(sizes) + tuple(paths), self._run_limits(lang, box), slot,
                (checker.box, *binds)))
            self.observer.run_step(lang.id, time.monotonic() - started)
        finally:
            scratch.destroy()
        ended = decide(None, outcome, None, lang.out_of_memory)
        message = decode(outcome.stdout)
        if ended is Status.ACCEPTED:
            return Status.ACCEPTED, message
        if ended is Status.RUNTIME_ERROR and outcome.signal is None and outcome.exit_code == 1:
            return Status.WRONG_ANSWER, message
        why = (internal_error_message(None, outcome) if ended is Status.INTERNAL_ERROR
               else f"{ended.value} (exit code {outcome.exit_code}, signal {outcome.signal})")
        stderr = decode(outcome.stderr)[:2000]
        return Status.INTERNAL_ERROR, f"the custom checker failed: {why}" + (
            f"; its stderr: {stderr}" if stderr else "")

    async def _run_tests(self, lang: Language, submission: Submission,
                         tests: tuple[JudgeCase, ...], compiled: JailOutcome | None, slot: int,
                         workspace: Workspace, checker: _Checker | None,
                         interactor: Interactor | None = None) -> Result:
        """Each test in a fresh box over its own fresh tmpfs (/tmp, /dev/shm), the
        compiled /box bound read-only: no test can change the program or leave anything
        for the next one."""
        program = Bind(str(workspace.path / "box"), "/box", writable=False)
        entries: list[dict[str, Any]] = []
        # 100 tests may each print up to the output limit: the result keeps at most this
        # much of their stdout and stderr together (the verdicts saw all of it).
        output_budget = TESTS_OUTPUT_BUDGET_CHARS
        deciding: Result | None = None  # the first test that is not Accepted
        last: Result | None = None
        for case in tests:
            if deciding is not None and submission.stop_on_first_failure:
                entries.append(SKIPPED_TEST)
                continue
            limits = Limits(
                time_limit_ms=case.time_limit_ms or submission.limits.time_limit_ms,
                wall_time_limit_ms=(case.wall_time_limit_ms
                                    or submission.limits.wall_time_limit_ms),
                memory_limit_mb=submission.limits.memory_limit_mb)
            scratch = self._workspace(slot)
            try:
                binds = tuple(b for b in scratch.binds_for_next_step() if b.target != "/box")
                if interactor is not None:  # a fresh pair of boxes for each test
                    judged = await run_pair(self, lang, submission, limits, slot,
                                            (program, *binds), case.stdin,
                                            case.expected_output, compiled, interactor)
                else:
                    ran = await self._run_step(lang, submission, limits, slot,
                                               (program, *binds), case.stdin)
            finally:
                scratch.destroy()
            if interactor is None:
                judged = await self._judge(lang, submission, compiled, ran, case.stdin,
                                           case.expected_output, slot, checker)
            last = judged
            entry = _test_entry(last)
            output_budget -= _trim_output(entry, output_budget)
            entries.append(entry)
            if deciding is None and last.status is not Status.ACCEPTED:
                deciding = last
        overall = deciding or last
        assert overall is not None  # the API refuses an empty list of tests
        return dataclasses.replace(overall, extra={**overall.extra, "tests": entries})

    async def _run_step(self, lang: Language, submission: Submission, limits: Limits,
                        slot: int, binds: tuple[Bind, ...], stdin: bytes) -> JailOutcome:
        sizes = StepSizes.run(self.config, limits.memory_limit_mb)
        argv = lang.run_argv(sizes) + submission.command_line_arguments
        started = time.monotonic()
        ran = await self.sandbox.run(self._spec(
            lang, argv, self._run_limits(lang, limits), slot, binds, stdin=stdin))
        self.observer.run_step(lang.id, time.monotonic() - started)
        return ran

    def _workspace(self, slot: int) -> Workspace:
        try:
            return self.sandbox.workspace(slot, self.config.sandbox.disk_limit_mb)
        except OSError as e:
            raise JailError(f"workspace: {e}") from None

    async def version(self, lang: Language) -> str | None:
        """The toolchain's version, asked in a real box (doubles as a start-up self-test)."""
        ok, version, _ = await self.probe(lang)
        return version if ok else None

    async def probe(self, lang: Language) -> tuple[bool, str | None, str]:
        """Run the version command in a real box: (it exited 0, the version in its
        output, the output). A toolchain that cannot run here fails this."""
        assert lang.version_command is not None
        async with self.sandbox.slot() as slot:
            workspace = self.sandbox.workspace(slot, self.config.sandbox.disk_limit_mb)
            try:
                outcome = await self.sandbox.run(self._spec(
                    lang, lang.argv(lang.version_command, StepSizes.compile(self.config, lang)),
                    self._compile_limits(lang), slot, workspace.binds_for_next_step(),
                    merge_stderr=True))
            finally:
                workspace.destroy()
        output = outcome.stdout.decode(errors="replace")
        return outcome.exit_code == 0, parse_version(output), output

    def _box_limits(self, *, cpu_ms: int, wall_ms: int, memory_mb: int,
                    processes: int) -> BoxLimits:
        sb = self.config.sandbox
        return BoxLimits(
            cpu_ms=cpu_ms,
            wall_ms=wall_ms,
            memory_bytes=memory_mb * MIB,
            processes=processes,
            output_bytes=sb.output_limit_bytes,
            open_files=sb.open_files,
            file_size_bytes=sb.disk_limit_mb * MIB,
            stack_bytes=sb.stack_limit_mb * MIB,
            cpu_share=sb.cpu_share,
        )

    def _compile_limits(self, lang: Language) -> BoxLimits:
        c = lang.compile_limits(self.config)
        limits = self._box_limits(cpu_ms=c.cpu_ms, wall_ms=c.wall_ms, memory_mb=c.memory_mb,
                                  processes=c.processes)
        # Compiler output is information: past the cap it is dropped and the compiler
        # keeps running, so only its exit status and time/memory limits judge it.
        return dataclasses.replace(limits, output_overflow_kills=False)

    def _run_limits(self, lang: Language, limits: Limits) -> BoxLimits:
        box = self._box_limits(
            cpu_ms=limits.time_limit_ms, wall_ms=limits.wall_time_limit_ms,
            memory_mb=limits.memory_limit_mb,
            processes=lang.processes or self.config.sandbox.processes)
        if lang.data_limit:
            # The jail refuses any single writable mapping larger than the memory limit;
            # glibc then tries brk, which this bounds. Twice the limit plus a margin:
            # memory touched up to the limit always meets the OOM killer first.
            data = 2 * box.memory_bytes + DATA_LIMIT_MARGIN_BYTES
            box = dataclasses.replace(box, data_bytes=data)
        return box

    def _spec(self, lang: Language, argv: tuple[str, ...], limits: BoxLimits, slot: int,
              binds: tuple[Bind, ...], *, stdin: bytes = b"", merge_stderr: bool = False
              ) -> JailSpec:
        return JailSpec(
            argv=argv,
            limits=limits,
            binds=lang.rootfs.binds + binds,
            symlinks=lang.rootfs.symlinks,
            env=lang.env,
            seccomp=SeccompProfile(lang.extra_syscalls),
            stdin=stdin,
            merge_stderr=merge_stderr,
            slot=slot,
        )
