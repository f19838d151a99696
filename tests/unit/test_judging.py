"""Judging without a kernel: the built-in checkers (outputs.check_output), the
refusable expected outputs, and the API's validation of tests/checker fields."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sandboxd.codec import from_plain, to_plain
from sandboxd.model import CHECKERS, ExtraFile, JudgeCase, Limits, Submission
from sandboxd.outputs import check_output, shortest_match_size
from tests.unit.test_api import Env, new_env, post

# -- checkers ------------------------------------------------------------------------------

# (checker, actual, expected): each accepted by its checker.
RIGHT = [
    ("exact", "1 2\n3\n", "1 2\n3\n"),
    ("exact", "x\n", "\ufeffx\n"),  # a BOM in expected is never content
    ("lines", "1 2  \r\n3\n\n\n", "1 2\n3"),
    ("tokens", "  1\n2\t\t3  ", "1 2 3\n"),
    ("float", "0.3333333\n", "0.333333333333"),
    ("float", "1000001 x", "1000000 x"),  # 1e-6 relative to the expected value
    ("float", "1e-3 -2.50", "0.001 -2.5"),
    ("unordered-lines", "b\na  \nc\n", "a\nb\nc\n\n"),
]
# Each rejected by its checker.
WRONG = [
    ("exact", "1 2\n3", "1 2\n3\n"),
    ("exact", "1 2 \n3\n", "1 2\n3\n"),
    ("lines", "1  2\n3\n", "1 2\n3\n"),
    ("lines", "3\n1 2\n", "1 2\n3\n"),
    ("tokens", "1 2", "1 2 3"),
    ("tokens", "12 3", "1 23"),
    ("float", "0.34", "0.333333333333"),
    ("float", "0.3333333 1", "0.3333333"),
    ("float", "nan", "0.5"),
    ("float", "1_000", "1000"),  # Python's float() would take it; no judge does
    ("float", "abc", "abd"),
    ("unordered-lines", "a\na\nb\n", "a\nb\nb\n"),
    ("unordered-lines", " a\nb\n", "a\nb\n"),
]


@pytest.mark.parametrize(("checker", "actual", "expected"), RIGHT)
def test_checker_accepts_a_right_answer(checker: str, actual: str, expected: str) -> None:
    assert check_output(checker, actual, expected, 1e-6)


@pytest.mark.parametrize(("checker", "actual", "expected"), WRONG)
def test_checker_rejects_a_wrong_answer(checker: str, actual: str, expected: str) -> None:
    assert not check_output(checker, actual, expected, 1e-6)


def test_every_checker_has_a_right_and_a_wrong_case() -> None:
    assert {c for c, _, _ in RIGHT} == {c for c, _, _ in WRONG} == set(CHECKERS)


def test_float_epsilon_is_the_callers() -> None:
    assert check_output("float", "0.34", "0.3333333", 0.01)
    assert not check_output("float", "0.3333", "0.3333333", 0.0)
    assert check_output("float", "0.3333333", "0.3333333", 0.0)


def test_shortest_match_size_per_checker() -> None:
    assert shortest_match_size("exact", "ab  \n\n") == 6
    assert shortest_match_size("lines", "ab  \n\n") == 2
    assert shortest_match_size("unordered-lines", "ab  \n\n") == 2
    assert shortest_match_size("tokens", " a \n b \n") == 3
    assert shortest_match_size("float", "0.333333333333") is None


def test_a_multi_test_submission_survives_the_journal_codec() -> None:
    submission = Submission(
        language="c", source="x", limits=Limits(1000, 3000, 64),
        tests=(JudgeCase(stdin=b"1", expected_output=b"1\n", time_limit_ms=500,
                         wall_time_limit_ms=2000), JudgeCase()),
        stop_on_first_failure=False, checker="float", checker_epsilon=1e-3)
    assert from_plain(Submission, to_plain(submission)) == submission
    assert submission.input_bytes() == len("x") + len("1") + len("1\n")


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
async def env(aiohttp_client: Any) -> AsyncIterator[Env]:
    yield await new_env(aiohttp_client, max_tests=3, max_stdin_bytes=10,
                        sandbox={"output_limit_bytes": 8})


BASE = {"language": "python3", "source": "print(input())"}


async def test_tests_are_passed_with_their_own_limits(env: Env) -> None:
    body = {**BASE, "time_limit_ms": 1000, "stop_on_first_failure": False, "tests": [
        {"stdin": "1", "expected_output": "1\n"},
        {"stdin": "2", "time_limit_ms": 500},
        {"time_limit_ms": 400, "wall_time_limit_ms": 900},
    ], "checker": "float", "checker_epsilon": 0.5}
    status, answer = await post(env, body)
    assert status == 202, answer
    [submission] = env.service.submitted
    assert submission.tests == (
        JudgeCase(stdin=b"1", expected_output=b"1\n"),
        # A test's own time limit brings the default wall limit for it (2 x + 1 s).
        JudgeCase(stdin=b"2", time_limit_ms=500, wall_time_limit_ms=2000),
        JudgeCase(time_limit_ms=400, wall_time_limit_ms=900),
    )
    assert submission.stop_on_first_failure is False
    assert (submission.checker, submission.checker_epsilon) == ("float", 0.5)


async def test_defaults_without_judging_fields(env: Env) -> None:
    assert (await post(env, BASE))[0] == 202
    [submission] = env.service.submitted
    assert submission.tests is None and submission.stop_on_first_failure is True
    assert (submission.checker, submission.checker_epsilon) == ("lines", 1e-6)


@pytest.mark.parametrize(("extra", "error", "code"), [
    ({"tests": {}}, "tests: must be an array, not an object", 400),
    ({"tests": []}, "tests: 0 tests, allowed 1..3 (server.max_tests)", 400),
    ({"tests": [{}] * 4}, "tests: 4 tests, allowed 1..3 (server.max_tests)", 400),
    ({"tests": [{}, "1"]}, "tests[1]: must be a JSON object, not a string", 400),
    ({"tests": [{"input": "1"}]},
     "tests[0]: unknown field(s): input (a test has expected_output, stdin, time_limit_ms, "
     "wall_time_limit_ms)", 400),
    ({"tests": [{"stdin": 1}]}, "tests[0].stdin: must be a string, not a number", 400),
    ({"tests": [{"expected_output": []}]},
     "tests[0].expected_output: must be a string or null, not an array", 400),
    ({"tests": [{"time_limit_ms": 0}]},
     "tests[0].time_limit_ms: 0 is out of range: allowed 1..10000 (limits.time_limit_ms)", 400),
    ({"tests": [{"expected_output": "123456789"}]},
     "tests[0].expected_output: 9 bytes (as the lines checker compares), longer than the "
     "output limit of 8 bytes (sandbox.output_limit_bytes): no program's output could "
     "match it", 400),
    ({"tests": [{"stdin": "123456"}, {"stdin": "12345"}]},
     "tests: 11 bytes of stdin and expected output, over the maximum of 10 bytes "
     "(server.max_stdin_bytes)", 413),
    ({"tests": [{}], "stdin": "1"}, "stdin: not allowed with tests (each test has its own)",
     400),
    ({"tests": [{}], "expected_output": "1"},
     "expected_output: not allowed with tests (each test has its own)", 400),
    ({"stop_on_first_failure": False}, "stop_on_first_failure: only applies with tests", 400),
    ({"tests": [{}], "stop_on_first_failure": 0},
     "stop_on_first_failure: must be true or false, not a number", 400),
    ({"checker": "regex"},
     "checker: unknown checker 'regex'; known: exact, lines, tokens, float, unordered-lines, "
     "custom", 400),
    ({"checker": "custom", "checker_language": "python3"},
     'checker_source: required with "checker": "custom"', 400),
    ({"checker": "custom", "checker_source": "x"},
     'checker_language: required with "checker": "custom"', 400),
    ({"checker_source": "x", "checker_language": "python3"},
     'checker_source: only applies with "checker": "custom"', 400),
    ({"checker": "custom", "checker_source": 1, "checker_language": "python3"},
     "checker_source: must be a string, not a number", 400),
    ({"checker": "custom", "checker_source": "x", "checker_language": "cobol"},
     "checker_language: unknown language 'cobol'; known languages: c, python3", 400),
    ({"checker": None}, "checker: must be a string, not null", 400),
    ({"checker": "float", "checker_epsilon": "0.1"},
     "checker_epsilon: must be a number, not a string", 400),
    ({"checker": "float", "checker_epsilon": -1}, "checker_epsilon: -1 is out of range: "
                                                   "allowed 0..1.0", 400),
    ({"checker": "float", "checker_epsilon": 2.5}, "checker_epsilon: 2.5 is out of range: "
                                                    "allowed 0..1.0", 400),
    ({"checker_epsilon": 0.1}, 'checker_epsilon: only applies with "checker": "float"', 400),
])
async def test_judging_fields_refused_with_field_and_rule(env: Env, extra: dict[str, Any],
                                                         error: str, code: int) -> None:
    status, answer = await post(env, {**BASE, **extra})
    assert (status, answer) == (code, {"error": error})
    assert env.service.submitted == []


async def test_expected_output_bound_follows_the_checker(env: Env) -> None:
    # 12 bytes exactly, but 5 as tokens ("1 2 3") and unbounded as floats.
    expected = "1   2   3   "
    for checker, code in (("exact", 400), ("tokens", 202), ("float", 202)):
        status, answer = await post(env, {**BASE, "stdin": "", "expected_output": expected,
                                          "checker": checker})
        assert status == code, (checker, answer)


async def test_batch_members_name_their_test(env: Env) -> None:
    body = {"submissions": [BASE, {**BASE, "tests": [{}, {"stdin": 5}]}]}
    status, answer = await post(env, body, "/execute/batch")
    assert (status, answer) == (400, {"error": "submissions[1].tests[1].stdin: must be a "
                                               "string, not a number"})


# -- files and command_line_arguments ----------------------------------------------------------


@pytest.fixture
async def files_env(aiohttp_client: Any) -> AsyncIterator[Env]:
    yield await new_env(aiohttp_client, max_files=2, max_source_bytes=40)


async def test_files_and_arguments_are_passed(files_env: Env) -> None:
    body = {**BASE, "files": [{"name": "data.txt", "content": "1 2\n"},
                              {"name": "blob.bin", "content": "AAH/", "encoding": "base64"}],
            "command_line_arguments": ["-n", "3", ""]}
    status, answer = await post(files_env, body)
    assert status == 202, answer
    [submission] = files_env.service.submitted
    assert submission.files == (ExtraFile("data.txt", b"1 2\n"),
                                ExtraFile("blob.bin", b"\x00\x01\xff"))
    assert submission.command_line_arguments == ("-n", "3", "")


NOT_PLAIN = ("is not a plain file name: 1-128 of A-Z a-z 0-9 . _ + -, not starting with a "
             "dot (no directories, no absolute paths, no '..')")


@pytest.mark.parametrize(("extra", "error", "code"), [
    ({"files": [{"name": "../x", "content": ""}]}, f"files[0].name: '../x' {NOT_PLAIN}", 400),
    ({"files": [{"name": "/etc/passwd", "content": ""}]},
     f"files[0].name: '/etc/passwd' {NOT_PLAIN}", 400),
    ({"files": [{"name": "a/b", "content": ""}]}, f"files[0].name: 'a/b' {NOT_PLAIN}", 400),
    ({"files": [{"name": "..", "content": ""}]}, f"files[0].name: '..' {NOT_PLAIN}", 400),
    ({"files": [{"name": ".hidden", "content": ""}]},
     f"files[0].name: '.hidden' {NOT_PLAIN}", 400),
    ({"files": [{"name": "", "content": ""}]}, f"files[0].name: '' {NOT_PLAIN}", 400),
    ({"files": [{"name": "a", "content": ""}] * 3}, "files: 3 files, allowed 0..2 "
                                                    "(server.max_files)", 400),
    ({"files": [{"name": "a", "content": ""}, {"name": "a", "content": ""}]},
     "files[1].name: 'a' is given twice: names must be unique", 400),
    ({"files": {"a": ""}}, "files: must be an array, not an object", 400),
    ({"files": ["a"]}, "files[0]: must be a JSON object, not a string", 400),
    ({"files": [{"name": "a"}]}, "files[0]: missing required field(s): content", 400),
    ({"files": [{"name": "a", "content": "", "mode": 7}]},
     "files[0]: unknown field(s): mode (a file has name, content, encoding)", 400),
    ({"files": [{"name": "a", "content": "!!", "encoding": "base64"}]},
     "files[0].content: is not valid base64", 400),
    ({"files": [{"name": "a", "content": "", "encoding": "hex"}]},
     "files[0].encoding: must be one of utf8, base64, not 'hex'", 400),
    ({"files": [{"name": "a", "content": "x" * 30}]},
     "files: source, files, command_line_arguments and checker_source are 44 bytes together, "
     "over the maximum of 40 bytes (server.max_source_bytes)", 413),
    ({"command_line_arguments": "-v"},
     "command_line_arguments: must be an array of strings (argv items), not a string", 400),
    ({"command_line_arguments": ["-v", 1]},
     "command_line_arguments[1]: must be a string, not a number", 400),
    ({"command_line_arguments": ["a\0b"]},
     "command_line_arguments[0]: must not contain a NUL character", 400),
    ({"command_line_arguments": ["x"] * 65}, "command_line_arguments: 65 items, allowed 0..64",
     400),
])
async def test_files_and_arguments_refused(files_env: Env, extra: dict[str, Any], error: str,
                                           code: int) -> None:
    status, answer = await post(files_env, {**BASE, **extra})
    assert (status, answer) == (code, {"error": error})
    assert files_env.service.submitted == []


async def test_custom_checker_fields_are_passed(env: Env) -> None:
    body = {**BASE, "tests": [{"stdin": "1", "expected_output": "1"}], "checker": "custom",
            "checker_source": "import sys", "checker_language": "c"}
    assert (await post(env, body))[0] == 202
    [submission] = env.service.submitted
    assert (submission.checker, submission.checker_source, submission.checker_language) == (
        "custom", "import sys", "c")


async def test_checker_source_counts_with_the_source(files_env: Env) -> None:
    status, answer = await post(files_env, {**BASE, "checker": "custom",
                                            "checker_source": "x" * 30,
                                            "checker_language": "python3"})
    assert (status, answer) == (413, {"error": (
        "checker_source: source, files, command_line_arguments and checker_source are 44 "
        "bytes together, over the maximum of 40 bytes (server.max_source_bytes)")})


# -- compiler_options ----------------------------------------------------------------------------

GCC = {"id": "c", "name": "C", "compiled": True, "source_file": "main.c",
       "compile_command": ["/usr/bin/gcc", "-O2", "-o", "main", "main.c"]}
PYTHON = {"id": "python3", "name": "Python", "compiled": False, "source_file": "main.py",
          "compile_command": ["/usr/bin/python3", "-c", "..."]}


@pytest.fixture
def gcc_env(env: Env) -> Env:
    env.catalog._languages = [GCC, PYTHON]
    return env


ALLOWED = ["-O0", "-O3", "-Ofast", "-std=c11", "-std=gnu++20", "-Wall", "-Wextra", "-Werror",
           "-Wno-unused-result", "-w", "-pedantic-errors", "-g", "-DLOCAL", "-DN=100",
           "-UNDEBUG", "-lm", "-lstdc++", "-pthread", "-march=native", "-fno-exceptions",
           "-funroll-loops"]
# Each makes the compiler read, load or run something the request chose, or write
# elsewhere.
REFUSED = ["-fplugin=/tmp/evil.so", "-specs=/tmp/specs", "-wrapper", "gdb,--args", "-B/tmp",
           "-I/etc", "-L/tmp", "-Wl,-rpath,/tmp", "-Wl", "-Wa,-adhln", "-Wp,-MD,/box/x",
           "-o", "/box/main", "-xc", "@/tmp/options", "-include/etc/passwd", "--sysroot=/tmp",
           "-fopenmp", "-lfoo", "-DX=$(id)", "-O2 -fplugin=x", "-save-temps", "-E", ""]


async def test_allowed_compiler_options_are_passed(gcc_env: Env) -> None:
    status, answer = await post(gcc_env, {"language": "c", "source": "x",
                                          "compiler_options": ALLOWED})
    assert status == 202, answer
    assert gcc_env.service.submitted[0].compiler_options == tuple(ALLOWED)


@pytest.mark.parametrize("option", REFUSED)
async def test_dangerous_compiler_options_are_refused(gcc_env: Env, option: str) -> None:
    status, answer = await post(gcc_env, {"language": "c", "source": "x",
                                          "compiler_options": ["-O2", option]})
    assert status == 400
    assert answer["error"].startswith(f"compiler_options[1]: {option!r} is not an allowed "
                                      "option"), answer


async def test_compiler_options_only_for_gcc_and_clang(gcc_env: Env) -> None:
    status, answer = await post(gcc_env, {**BASE, "compiler_options": ["-O2"]})
    assert (status, answer) == (400, {"error": "compiler_options: not supported for 'python3' "
                                               "(only for languages compiled by gcc or "
                                               "clang)"})
    assert (await post(gcc_env, {**BASE, "compiler_options": []}))[0] == 202
