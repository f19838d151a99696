"""Interactive problems in real boxes: a guessing game, the interactor in Python and the
solution in C, each in its own box, talking over pipes the daemon crossed."""

from __future__ import annotations

import asyncio
import os

import pytest

from sandboxd.interactive import Interactor, run_pair
from sandboxd.jail.spec import Bind
from sandboxd.model import JudgeCase, Limits, Result, Status, Submission
from sandboxd.runner import Runner
from tests.integration.hostile import describe
from tests.integration.test_cleanup import _assert_nothing_left, _fd_count

# A generous wall limit: the accepted pairs must never hit it on a loaded host.
LIMITS = Limits(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)

# argv[1]: the test's input, "secret max_guesses". Exit 0: found; 1: wrong answer.
GUESSING_INTERACTOR = r"""
import sys
secret, max_guesses = map(int, open(sys.argv[1]).read().split())
for guess_number in range(1, max_guesses + 1):
    line = sys.stdin.readline()
    if not line:
        print("the solution stopped guessing", file=sys.stderr)
        sys.exit(1)
    guess = int(line)
    if guess == secret:
        print("correct", flush=True)
        print(f"found {secret} in {guess_number} guesses", file=sys.stderr)
        sys.exit(0)
    print("higher" if guess < secret else "lower", flush=True)
print(f"no guess left after {max_guesses}", file=sys.stderr)
sys.exit(1)
"""

BINARY_SEARCH = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
    int low = 1, high = 1000000;
    char answer[16];
    while (low <= high) {
        int middle = low + (high - low) / 2;
        printf("%d\n", middle);
        fflush(stdout);
        if (scanf("%15s", answer) != 1) return 3;
        if (strcmp(answer, "correct") == 0) return 0;
        if (strcmp(answer, "higher") == 0) low = middle + 1; else high = middle - 1;
    }
    return 4;
}
"""

LINEAR_SEARCH = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
    char answer[16];
    for (int guess = 1; ; guess++) {
        printf("%d\n", guess);
        fflush(stdout);
        if (scanf("%15s", answer) != 1) return 3;
        if (strcmp(answer, "correct") == 0) return 0;
    }
}
"""

NEVER_ANSWERS = "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n"

# Reads first, like the interactor: both wait for the other.
READS_FIRST = r"""
#include <stdio.h>
int main(void) { char word[16]; if (scanf("%15s", word) != 1) return 3; puts("1"); return 0; }
"""

# Guesses without ever reading the answers: the answers fill its stdin pipe, the
# interactor blocks writing, stops reading, and the guesses fill the other pipe.
NEVER_READS = r"""
#include <stdio.h>
int main(void) { for (;;) { puts("1"); fflush(stdout); } }
"""

# Floods its stdout with guesses it never waits for, the interactor gives up after a few.
FLOODS = r"""
#include <string.h>
#include <unistd.h>
int main(void) {
    static char block[1 << 16];
    for (size_t i = 0; i + 1 < sizeof block; i += 2) memcpy(block + i, "1\n", 2);
    for (;;) write(1, block, sizeof block);
}
"""

# The same flood, deaf to SIGPIPE: it ends on the first EPIPE with its own exit code.
FLOODS_UNTIL_EPIPE = r"""
#include <signal.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    static char block[1 << 16];
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i + 1 < sizeof block; i += 2) memcpy(block + i, "1\n", 2);
    for (;;) if (write(1, block, sizeof block) < 0) return 5;
}
"""


async def play(runner: Runner, solution: str, stdin: str = "777777 30", *,
               interactor: str = GUESSING_INTERACTOR, interactor_language: str = "python3",
               tests: list[JudgeCase] | None = None, limits: Limits = LIMITS,
               **options: object) -> Result:
    submission = Submission(language="c", source=solution, limits=limits, stdin=stdin.encode(),
                            tests=tuple(tests) if tests is not None else None,
                            interactor_source=interactor,
                            interactor_language=interactor_language,
                            **options)  # type: ignore[arg-type]
    return await runner.run(submission)


async def test_binary_search_is_accepted(runner):
    result = await play(runner, BINARY_SEARCH)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.extra["interactor_message"] == "found 777777 in 17 guesses\n"
    assert result.exit_code == 0 and result.stdout == ""  # the stdout went to the interactor


async def test_linear_search_is_a_wrong_answer(runner):
    result = await play(runner, LINEAR_SEARCH)
    assert result.status is Status.WRONG_ANSWER, describe(result)
    assert result.extra["interactor_message"] == "no guess left after 30\n"
    assert result.message is None


async def test_a_solution_that_never_answers_is_a_time_limit_exceeded(runner):
    result = await play(runner, NEVER_ANSWERS)
    assert result.status is Status.TIME_LIMIT_EXCEEDED, describe(result)
    assert result.wall_time_ms is not None and result.wall_time_ms >= LIMITS.wall_time_limit_ms


async def test_a_deadlocked_pair_is_a_time_limit_exceeded_at_the_wall_limit(runner):
    result = await play(runner, READS_FIRST)
    assert result.status is Status.TIME_LIMIT_EXCEEDED, describe(result)
    # The solution's wall limit ended it (not its CPU time: it only waited).
    assert result.wall_time_ms is not None and result.wall_time_ms >= LIMITS.wall_time_limit_ms
    assert result.time_ms is not None and result.time_ms < LIMITS.time_limit_ms


async def test_a_solution_that_never_reads_is_a_time_limit_exceeded(runner):
    result = await play(runner, NEVER_READS, "5 1000000000")
    assert result.status is Status.TIME_LIMIT_EXCEEDED, describe(result)


async def test_a_flood_after_the_interactor_gave_up_is_its_wrong_answer_not_a_hang(runner):
    result = await play(runner, FLOODS, "5 3")
    assert result.status is Status.WRONG_ANSWER, describe(result)
    assert result.signal == 13  # SIGPIPE: the interactor had closed its end
    assert result.extra["interactor_message"] == "no guess left after 3\n"


async def test_an_exit_on_epipe_after_the_interactor_gave_up_is_a_wrong_answer(runner):
    result = await play(runner, FLOODS_UNTIL_EPIPE, "5 3")
    assert result.status is Status.WRONG_ANSWER, describe(result)
    assert result.exit_code == 5


async def test_a_crash_of_the_solution_is_a_runtime_error(runner):
    crashes = "#include <stdlib.h>\nint main(void) { abort(); }\n"
    result = await play(runner, crashes)
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert result.signal == 6


@pytest.mark.parametrize("ending, why", [
    ("sys.exit(3)", "exit code 3"),
    ("os.abort()", "signal 6"),
])
async def test_an_interactor_that_fails_is_an_internal_error(runner, ending, why):
    interactor = f"import os, sys\nprint(input(), file=sys.stderr)\n{ending}\n"
    result = await play(runner, BINARY_SEARCH, interactor=interactor)
    assert result.status is Status.INTERNAL_ERROR, describe(result)
    assert result.message is not None and result.message.startswith("the interactor failed")
    assert why in result.message
    # Its stderr is kept: here the first guess it read.
    assert result.extra["interactor_message"] == "500000\n"


async def test_an_interactor_that_does_not_compile_is_an_internal_error(runner):
    tests = [JudgeCase(stdin=b"1 30"), JudgeCase(stdin=b"2 30")]
    result = await play(runner, BINARY_SEARCH, interactor="int main( { return 0; }",
                        interactor_language="c", tests=tests)
    assert result.status is Status.INTERNAL_ERROR, describe(result)
    assert result.message is not None
    assert result.message.startswith("the interactor did not compile: Compile Error")
    assert [t["status"] for t in result.extra["tests"]] == ["Skipped", "Skipped"]


async def test_an_interactor_in_c_judges_a_solution_in_python(runner):
    interactor = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    FILE *input = fopen(argv[1], "r"), *expected = fopen(argv[3], "r");
    long a, b, want, got;
    if (!input || !expected || fscanf(input, "%ld %ld", &a, &b) != 2
        || fscanf(expected, "%ld", &want) != 1) return 3;
    printf("%ld %ld\n", a, b);
    fflush(stdout);
    if (scanf("%ld", &got) != 1) return 2;
    fprintf(stderr, "got %ld, want %ld\n", got, want);
    return got == want ? 0 : 1;
}
"""
    submission = Submission(language="python3", source="a, b = map(int, input().split())\n"
                            "print(a + b)\n", limits=LIMITS, stdin=b"2 3",
                            expected_output=b"5", interactor_source=interactor,
                            interactor_language="c")
    result = await runner.run(submission)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.extra["interactor_message"] == "got 5, want 5\n"


async def test_tests_mode_runs_a_fresh_pair_per_test(runner):
    tests = [JudgeCase(stdin=b"1 30"), JudgeCase(stdin=b"1000000 30"),
             JudgeCase(stdin=b"424242 30")]
    result = await play(runner, BINARY_SEARCH, tests=tests)
    assert result.status is Status.ACCEPTED, describe(result)
    entries = result.extra["tests"]
    assert [e["status"] for e in entries] == ["Accepted"] * 3, entries
    assert entries[0]["interactor_message"].startswith("found 1 in ")
    assert entries[2]["interactor_message"].startswith("found 424242 in ")


async def test_tests_mode_stops_at_the_first_failing_pair(runner):
    tests = [JudgeCase(stdin=b"3 30"), JudgeCase(stdin=b"31 30"), JudgeCase(stdin=b"2 30")]
    result = await play(runner, LINEAR_SEARCH, tests=tests)
    assert result.status is Status.WRONG_ANSWER, describe(result)
    assert [e["status"] for e in result.extra["tests"]] == [
        "Accepted", "Wrong Answer", "Skipped"]


async def test_an_interactors_last_words_to_a_solution_that_left_are_no_failure(runner):
    # The interactor writes (a lot) after the solution has ended, without reading it:
    # the daemon discards it, so the interactor neither dies of SIGPIPE nor blocks.
    interactor = (
        "import sys\n"
        "assert input() == 'hi'\n"
        "sys.stdin.read()  # EOF: the solution has ended\n"
        "sys.stdout.write('bye\\n' * (1 << 18))\n"
        "sys.stdout.flush()\n"
        "print('said goodbye', file=sys.stderr)\n")
    leaves = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'
    result = await play(runner, leaves, interactor=interactor)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.extra["interactor_message"] == "said goodbye\n"


async def test_the_solution_cannot_signal_the_interactor(runner):
    # Both boxes run as the same slot's host uid, each in its own PID namespace: a
    # kill(-1) from the solution reaches nothing outside its own box.
    hostile = BINARY_SEARCH.replace("int main(void) {", "int main(void) {\n"
                                    "    kill(-1, SIGKILL); kill(-1, SIGSTOP);")
    hostile = "#include <signal.h>\n" + hostile
    result = await play(runner, hostile)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.extra["interactor_message"] == "found 777777 in 17 guesses\n"


async def test_an_interactor_box_that_cannot_start_is_an_internal_error(runner, sandbox):
    lang = runner.languages["python3"]
    broken = Interactor(lang, Bind("/nonexistent-sandboxd-path", "/box"))
    submission = Submission(language="python3", source="print(input())", limits=LIMITS)
    async with sandbox.slot() as slot:
        workspace = runner._workspace(slot)
        try:
            workspace.write_file(lang.source, submission.source.encode())
            result = await run_pair(runner, lang, submission, LIMITS, slot,
                                    workspace.binds_for_next_step(), b"5", None, None, broken)
        finally:
            workspace.destroy()
    assert result.status is Status.INTERNAL_ERROR, describe(result)
    assert result.message is not None and result.message.startswith("the interactor failed: ")
    assert "/nonexistent-sandboxd-path" in result.message
    _assert_nothing_left(sandbox)


async def test_a_cancelled_pair_kills_both_boxes(runner, sandbox):
    # The daemon stopping cancels a running job: neither box outlives it.
    job = asyncio.ensure_future(play(runner, NEVER_ANSWERS))
    await asyncio.sleep(0.5)  # whether or not the boxes are up yet, the end is the same
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    _assert_nothing_left(sandbox)


async def test_a_pair_leaves_nothing_behind(runner, sandbox):
    # Descriptors counted without warm boxes (each holds three until taken or torn down).
    await sandbox.discard_warm_boxes()
    fds = _fd_count()
    for solution in (BINARY_SEARCH, NEVER_ANSWERS, FLOODS):
        await play(runner, solution, limits=Limits(time_limit_ms=500, wall_time_limit_ms=1000,
                                                   memory_limit_mb=64))
        _assert_nothing_left(sandbox)
    await sandbox.discard_warm_boxes()
    assert _fd_count() == fds, os.listdir("/proc/self/fd")
