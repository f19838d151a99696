"""Judging through the real runner and real boxes: many tests compiled once, per-test
results, the first failure deciding, skipped tests, checkers, and tests that cannot
reach one another (each in a fresh box, the compiled /box read-only)."""

from __future__ import annotations

import dataclasses

import pytest

from sandboxd.model import ExtraFile, JudgeCase, Limits, Result, Status, Submission
from sandboxd.observer import Observer
from sandboxd.runner import Runner
from tests.integration.hostile import describe
from tests.integration.test_languages import LANGUAGE_IDS

LIMITS = Limits(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)


class StepCounter(Observer):
    def __init__(self) -> None:
        self.compiles: list[str] = []
        self.runs: list[str] = []

    def compile_step(self, language: str, seconds: float) -> None:
        self.compiles.append(language)

    def run_step(self, language: str, seconds: float) -> None:
        self.runs.append(language)


@pytest.fixture
def counted(runner: Runner) -> tuple[Runner, StepCounter]:
    counter = StepCounter()
    return Runner(runner.sandbox, runner.languages, runner.config, counter), counter


async def judge(runner: Runner, language: str, source: str, tests: list[JudgeCase],
                **options: object) -> Result:
    submission = Submission(language=language, source=source, limits=LIMITS,
                            tests=tuple(tests), **options)  # type: ignore[arg-type]
    return await runner.run(submission)


SQUARE_CPP = """
#include <iostream>
int main() { long long n; std::cin >> n; std::cout << n * n << "\\n"; }
"""


async def test_cpp_against_20_tests_compiles_once(counted):
    runner, counter = counted
    tests = [JudgeCase(stdin=f"{n}\n".encode(), expected_output=f"{n * n}\n".encode())
             for n in range(20)]
    result = await judge(runner, "cpp", SQUARE_CPP, tests)
    assert result.status is Status.ACCEPTED, describe(result)
    entries = result.extra["tests"]
    assert [e["status"] for e in entries] == ["Accepted"] * 20, entries
    assert entries[7]["stdout"] == "49\n"
    assert counter.compiles == ["cpp"]
    assert counter.runs == ["cpp"] * 20


# Squares its input, except for 7, where it answers wrong.
SQUARE_BUT_7_C = """
#include <stdio.h>
int main(void) { long long n; scanf("%lld", &n); printf("%lld\\n", n == 7 ? 0 : n * n); }
"""


async def test_failing_test_7_of_10_decides_and_the_rest_are_skipped(counted):
    runner, counter = counted
    tests = [JudgeCase(stdin=f"{n}".encode(), expected_output=f"{n * n}\n".encode())
             for n in range(1, 11)]
    result = await judge(runner, "c", SQUARE_BUT_7_C, tests)
    assert result.status is Status.WRONG_ANSWER, describe(result)
    assert result.stdout == "0\n"  # the deciding test's own output
    statuses = [e["status"] for e in result.extra["tests"]]
    assert statuses == ["Accepted"] * 6 + ["Wrong Answer"] + ["Skipped"] * 3
    assert counter.runs == ["c"] * 7


async def test_without_stop_on_first_failure_every_test_runs(runner):
    tests = [JudgeCase(stdin=f"{n}".encode(), expected_output=f"{n * n}\n".encode())
             for n in range(1, 11)]
    result = await judge(runner, "c", SQUARE_BUT_7_C, tests, stop_on_first_failure=False)
    assert result.status is Status.WRONG_ANSWER, describe(result)
    statuses = [e["status"] for e in result.extra["tests"]]
    assert statuses == ["Accepted"] * 6 + ["Wrong Answer"] + ["Accepted"] * 3


async def test_per_test_time_limit_and_verdicts(runner):
    source = "import sys\nn = int(input())\nwhile n == 0: pass\nsys.exit(n - 1)\n"
    tests = [JudgeCase(stdin=b"1", expected_output=b""),
             JudgeCase(stdin=b"0", time_limit_ms=200),
             JudgeCase(stdin=b"4")]
    result = await judge(runner, "python3", source, tests, stop_on_first_failure=False)
    assert result.status is Status.TIME_LIMIT_EXCEEDED, describe(result)
    entries = result.extra["tests"]
    assert [e["status"] for e in entries] == ["Accepted", "Time Limit Exceeded",
                                              "Runtime Error"]
    assert entries[2]["exit_code"] == 3


async def test_compile_error_skips_every_test(counted):
    runner, counter = counted
    result = await judge(runner, "c", "int main(void) { return 0 }",
                         [JudgeCase(stdin=b"1"), JudgeCase(stdin=b"2")])
    assert result.status is Status.COMPILE_ERROR, describe(result)
    assert "error" in result.compile_output
    assert [e["status"] for e in result.extra["tests"]] == ["Skipped", "Skipped"]
    assert counter.runs == []


# Test "1": tries to replace its own binary with a symlink to a host file, to leave a
# file in the working directory and one in /tmp. Test "2": reports what it finds.
TAMPER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int n = 0;
    if (scanf("%d", &n) != 1) return 2;
    if (n == 1) {
        int gone = unlink("main") == 0;
        int linked = symlink("/etc/shadow", "main") == 0;
        FILE *f = fopen("note", "w");
        FILE *t = fopen("/tmp/note", "w");
        if (t) { fputs("left", t); fclose(t); }
        printf("%d %d %d %d\n", gone, linked, f != NULL, t != NULL);
        return 0;
    }
    printf("%d %d\n", access("note", F_OK) == 0, access("/tmp/note", F_OK) == 0);
    return 0;
}
"""


async def test_a_test_cannot_change_the_program_or_leave_anything_for_the_next(runner):
    tests = [JudgeCase(stdin=b"1", expected_output=b"0 0 0 1\n"),
             JudgeCase(stdin=b"2", expected_output=b"0 0\n")]
    result = await judge(runner, "c", TAMPER_C, tests, stop_on_first_failure=False)
    # Test 1: /box is read-only (no unlink, no symlink, no file), its own /tmp writable.
    # Test 2: the original binary ran again, and neither file is there.
    assert result.status is Status.ACCEPTED, describe(result)


DIVIDE_PY = "a, b = map(int, input().split())\nprint(f'{a / b:.7f}')\n"


@pytest.mark.parametrize(("checker", "expected", "status"), [
    ("float", "0.3333333333\n", Status.ACCEPTED),
    ("float", "0.34\n", Status.WRONG_ANSWER),
    ("exact", "0.3333333\n", Status.ACCEPTED),
    ("exact", "0.3333333", Status.WRONG_ANSWER),
    ("tokens", "  0.3333333  ", Status.ACCEPTED),
    ("tokens", "0.333333", Status.WRONG_ANSWER),
])
async def test_checkers_judge_a_real_run(runner, checker, expected, status):
    result = await judge(runner, "python3", DIVIDE_PY,
                         [JudgeCase(stdin=b"1 3", expected_output=expected.encode())],
                         checker=checker)
    assert result.status is status, describe(result)


async def test_single_run_honours_the_checker(runner):
    submission = Submission(language="python3", source="print(3, 1, 2, sep='\\n')",
                            limits=LIMITS, expected_output=b"1\n2\n3\n",
                            checker="unordered-lines")
    assert (await runner.run(submission)).status is Status.ACCEPTED
    wrong = dataclasses.replace(submission, expected_output=b"1\n2\n4\n")
    assert (await runner.run(wrong)).status is Status.WRONG_ANSWER


# Every language still runs with its working directory read-only (the tests mode).
@pytest.mark.parametrize("language", LANGUAGE_IDS)
async def test_every_language_runs_tests_over_a_read_only_box(runner, registry, language):
    lang = registry[language]
    tests = [JudgeCase(stdin=b"19 23\n", expected_output=b"42\n"),
             JudgeCase(stdin=b"1 2\n", expected_output=b"3\n")]
    result = await judge(runner, language, lang.test_program("sum"), tests)
    assert result.status is Status.ACCEPTED, describe(result)


# A header and a data file beside the source, the arguments in argv.
WITH_FILES_C = r"""
#include <stdio.h>
#include "square.h"
int main(int argc, char **argv) {
    FILE *f = fopen("data.bin", "rb");
    int first = f ? fgetc(f) : -1, second = f ? fgetc(f) : -1;
    long long n;
    if (scanf("%lld", &n) != 1) return 2;
    printf("%lld %d %d", square(n), first, second);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    printf("\n");
    return 0;
}
"""


async def test_files_are_present_for_compile_and_every_run_and_arguments_reach_argv(runner):
    files = (ExtraFile("square.h", b"static long long square(long long n) { return n * n; }\n"),
             ExtraFile("data.bin", b"\x00\xff"))
    arguments = ("-x", "two words", "")
    result = await judge(runner, "c", WITH_FILES_C,
                         [JudgeCase(stdin=b"3", expected_output=b"9 0 255 [-x] [two words] []\n"),
                          JudgeCase(stdin=b"4", expected_output=b"16 0 255 [-x] [two words] []")],
                         files=files, command_line_arguments=arguments)
    assert result.status is Status.ACCEPTED, describe(result)
    single = Submission(language="c", source=WITH_FILES_C, limits=LIMITS, stdin=b"5",
                        files=files, command_line_arguments=arguments)
    ran = await runner.run(single)
    assert ran.stdout == "25 0 255 [-x] [two words] []\n", describe(ran)


async def test_python_imports_a_module_given_as_a_file(runner):
    result = await judge(runner, "python3", "import helper\nprint(helper.twice(int(input())))",
                         [JudgeCase(stdin=b"21", expected_output=b"42")],
                         files=(ExtraFile("helper.py", b"def twice(n):\n    return 2 * n\n"),))
    assert result.status is Status.ACCEPTED, describe(result)


# -- custom checkers ---------------------------------------------------------------------------

# Accepts any pair of factors of the input number, greater than 1; says why not otherwise.
FACTORS_CHECKER_PY = """
import sys
n = int(open(sys.argv[1]).read())
words = open(sys.argv[2]).read().split()
expected = open(sys.argv[3]).read().strip()
try:
    a, b = map(int, words)
except ValueError:
    print("not two integers")
    sys.exit(1)
if a > 1 and b > 1 and a * b == n:
    print("ok, expected was", expected)
    sys.exit(0)
print(f"{a} * {b} != {n}")
sys.exit(1)
"""

# Prints the smallest factor pair, or for 35 a wrong one.
FACTORS_C = r"""
#include <stdio.h>
int main(void) {
    long n; scanf("%ld", &n);
    if (n == 35) { printf("5 8\n"); return 0; }
    for (long d = 2; d * d <= n; d++) if (n % d == 0) { printf("%ld %ld\n", d, n / d); return 0; }
    return 1;
}
"""


def custom(checker: str = FACTORS_CHECKER_PY, language: str = "python3") -> dict[str, object]:
    return {"checker": "custom", "checker_source": checker, "checker_language": language}


async def test_a_python_custom_checker_judges_a_c_solution(runner):
    tests = [JudgeCase(stdin=b"12", expected_output=b"3 4"),
             JudgeCase(stdin=b"35", expected_output=b"5 7"),
             JudgeCase(stdin=b"77", expected_output=b"7 11")]
    result = await judge(runner, "c", FACTORS_C, tests, stop_on_first_failure=False,
                         **custom())
    assert result.status is Status.WRONG_ANSWER, describe(result)
    entries = result.extra["tests"]
    assert [e["status"] for e in entries] == ["Accepted", "Wrong Answer", "Accepted"]
    # The checker's stdout is its message; it saw the input, the output and the answer.
    assert entries[0]["checker_message"] == "ok, expected was 3 4\n"
    assert entries[1]["checker_message"] == "5 * 8 != 35\n"
    assert entries[0]["stdout"] == "2 6\n"  # another answer than expected, accepted


async def test_a_custom_checker_on_a_single_run(runner):
    submission = Submission(language="c", source=FACTORS_C, limits=LIMITS, stdin=b"15",
                            expected_output=b"3 5", **custom())  # type: ignore[arg-type]
    result = await runner.run(submission)
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.extra["checker_message"] == "ok, expected was 3 5\n"


async def test_the_checker_runs_only_after_a_clean_run(runner):
    result = await judge(runner, "c", FACTORS_C, [JudgeCase(stdin=b"13")], **custom())
    assert result.status is Status.RUNTIME_ERROR, describe(result)  # 13 is prime: exit 1


@pytest.mark.parametrize(("checker", "language", "why"), [
    ("import sys\nraise SystemExit(3)\n", "python3", "Runtime Error (exit code 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "python3",
     "Runtime Error (exit code None, signal 9"),
    ("while True: pass\n", "python3", "Time Limit Exceeded"),
])
async def test_a_checker_that_fails_is_an_internal_error_not_a_verdict(runner, checker,
                                                                      language, why):
    result = await judge(runner, "c", FACTORS_C, [JudgeCase(stdin=b"12")],
                         **custom(checker, language))
    assert result.status is Status.INTERNAL_ERROR, describe(result)
    assert result.message is not None and result.message.startswith(
        f"the custom checker failed: {why}"), result.message


async def test_a_checker_that_does_not_compile_fails_before_any_run(counted):
    runner, counter = counted
    result = await judge(runner, "c", FACTORS_C, [JudgeCase(stdin=b"12"), JudgeCase(stdin=b"6")],
                         **custom("int main(void) { return 0 }", "c"))
    assert result.status is Status.INTERNAL_ERROR, describe(result)
    assert result.message is not None
    assert result.message.startswith("the custom checker did not compile: Compile Error")
    assert [e["status"] for e in result.extra["tests"]] == ["Skipped", "Skipped"]
    assert counter.runs == []


# -- compiler_options ------------------------------------------------------------------------------

MACRO_C = r"""
#include <stdio.h>
int main(void) { int unused; printf("%d\n", ANSWER); return 0; }
"""


async def test_compiler_options_reach_the_compiler_after_its_defaults(runner):
    ok = Submission(language="c", source=MACRO_C, limits=LIMITS,
                    compiler_options=("-DANSWER=42", "-O0", "-lm"))
    result = await runner.run(ok)
    assert (result.status, result.stdout) == (Status.ACCEPTED, "42\n"), describe(result)
    # -Werror after the default -Wall: the unused variable is now an error.
    strict = dataclasses.replace(ok, compiler_options=("-DANSWER=1", "-Werror"))
    result = await runner.run(strict)
    assert result.status is Status.COMPILE_ERROR, describe(result)
    assert "unused" in result.compile_output


async def test_per_test_output_kept_in_the_result_is_bounded(runner, monkeypatch):
    from sandboxd import runner as runner_module

    monkeypatch.setattr(runner_module, "TESTS_OUTPUT_BUDGET_CHARS", 10)
    source = "import sys\nprint(input() * 4)\nprint('e', file=sys.stderr)"
    tests = [JudgeCase(stdin=b"ab", expected_output=b"abababab"),
             JudgeCase(stdin=b"cd", expected_output=b"cdcdcdcd"),
             JudgeCase(stdin=b"ef", expected_output=b"efefefef")]
    result = await judge(runner, "python3", source, tests)
    # Every verdict saw the whole output; the result keeps the first 10 characters.
    assert result.status is Status.ACCEPTED, describe(result)
    entries = result.extra["tests"]
    assert [(e["stdout"], e["stderr"], e.get("output_truncated")) for e in entries] == [
        ("abababab\n", "e", True), ("", "", True), ("", "", True)]
