"""Judging over HTTP against a real daemon: a C++ solution against 20 tests compiles
once (the metrics count one compile step and 20 run steps), per-test results in the
JSON, the first failure deciding with the rest skipped, checkers, and refusals."""

from __future__ import annotations

import uuid

from tests.e2e.test_api_edge import metric, scrape

SQUARE_CPP = """
#include <iostream>
int main() { long long n; std::cin >> n; std::cout << (n == %d ? 0 : n * n) << "\\n"; }
// %s
"""


def square(wrong_at: int) -> str:
    # A fresh source each run: neither the result cache nor any other shortcut applies.
    return SQUARE_CPP % (wrong_at, uuid.uuid4().hex)


def test_cpp_against_20_tests_compiles_once(daemon):
    before = scrape(daemon)
    tests = [{"stdin": f"{n}\n", "expected_output": f"{n * n}\n"} for n in range(1, 21)]
    result = daemon.execute(language="cpp", source=square(-1), tests=tests)
    assert result["status"] == "Accepted", result
    assert [t["status"] for t in result["tests"]] == ["Accepted"] * 20
    assert result["tests"][4]["stdout"] == "25\n"
    assert {"stdout", "stderr", "exit_code", "signal", "time_ms", "wall_time_ms",
            "memory_kb"} <= set(result["tests"][0])
    after = scrape(daemon)
    compiles = 'sandboxd_compile_steps_total{language="cpp"}'
    runs = 'sandboxd_run_step_seconds_count{language="cpp"}'
    assert metric(after, compiles) == metric(before, compiles) + 1
    assert metric(after, runs) == metric(before, runs) + 20


def test_failing_test_7_of_10_decides_and_the_rest_are_skipped(daemon):
    tests = [{"stdin": f"{n}", "expected_output": f"{n * n}\n"} for n in range(1, 11)]
    result = daemon.execute(language="cpp", source=square(7), tests=tests)
    assert result["status"] == "Wrong Answer", result
    statuses = [t["status"] for t in result["tests"]]
    assert statuses == ["Accepted"] * 6 + ["Wrong Answer"] + ["Skipped"] * 3
    assert result["tests"][9] == {"status": "Skipped", "stdout": "", "stderr": "",
                                  "exit_code": None, "signal": None, "time_ms": None,
                                  "wall_time_ms": None, "memory_kb": None}


def test_float_checker_over_http(daemon):
    source = f"print(f'{{1/3:.7f}}')  # {uuid.uuid4().hex}"
    right = daemon.execute(language="python3", source=source, expected_output="0.333333333",
                           checker="float")
    assert right["status"] == "Accepted", right
    wrong = daemon.execute(language="python3", source=source, expected_output="0.34",
                           checker="float")
    assert wrong["status"] == "Wrong Answer", wrong


def test_judging_refusals_name_the_field(daemon):
    status, body, _ = daemon.request("POST", "/execute", {
        "language": "python3", "source": "print(1)", "tests": [{"stdin": "1"}, {"in": "2"}]})
    assert status == 400
    assert body["error"].startswith("tests[1]: unknown field(s): in")


def test_readme_judging_example_answers_what_the_readme_shows(daemon):
    from tests.e2e.test_readme import _blocks, _run_example, _section

    blocks = _blocks(_section("### Judging: tests and checkers"))
    [script] = [body for lang, body in blocks if lang == "sh"]
    [result] = _run_example(daemon, script)
    assert result["status"] == "Wrong Answer", result
    assert [t["status"] for t in result["tests"]] == ["Accepted", "Accepted", "Wrong Answer"]
    assert result["stdout"] == result["tests"][2]["stdout"] == "0.125000000\n"


def test_files_refused_over_http_name_the_file(daemon):
    cases = [
        ({"name": "main.c", "content": ""}, "files[0].name: 'main.c' is the source file's name"),
        ({"name": "../x", "content": ""}, "files[0].name: '../x' is not a plain file name"),
        ({"name": "/etc/passwd", "content": ""},
         "files[0].name: '/etc/passwd' is not a plain file name"),
    ]
    for file, error in cases:
        status, body, _ = daemon.request("POST", "/execute", {
            "language": "c", "source": "int main(void){return 0;}", "files": [file]})
        assert status == 400 and body["error"].startswith(error), body
    status, body, _ = daemon.request("POST", "/execute", {
        "language": "c", "source": "int main(void){return 0;}",
        "files": [{"name": f"f{i}", "content": ""} for i in range(21)]})
    assert (status, body) == (400, {"error": "files: 21 files, allowed 0..20 (server.max_files)"})


def test_a_file_and_arguments_over_http(daemon):
    result = daemon.execute(
        language="python3", source="import sys\nprint(open('in.txt').read().strip(), sys.argv[1:])",
        files=[{"name": "in.txt", "content": "aGVsbG8=", "encoding": "base64"}],
        command_line_arguments=["a b", "-c"], cache=False)
    assert result["status"] == "Accepted", result
    assert result["stdout"] == "hello ['a b', '-c']\n"
