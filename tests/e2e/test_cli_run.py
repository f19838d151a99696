"""`sandboxd run FILE`: one submission through the real jail from the command line.

Exit status 0 only for Accepted, 1 for another verdict, 2 for a usage or set-up error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import STATE_DIR


@pytest.fixture
def files(tmp_path: Path) -> Path:
    require_kernel()
    (tmp_path / "config.toml").write_text(f'[sandbox]\nstate_dir = "{STATE_DIR}"\n')
    (tmp_path / "hello.py").write_text('print("Hello, " + input())\n')
    (tmp_path / "in.txt").write_text("World\n")
    (tmp_path / "right.txt").write_text("Hello, World\n")
    (tmp_path / "wrong.txt").write_text("Goodbye\n")
    (tmp_path / "broken.c").write_text("int main(void) { return 0 }\n")
    return tmp_path


def sandboxd_run(files: Path, *argv: str, stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxd", "run", "--config", str(files / "config.toml"),
         *argv], capture_output=True, text=True, timeout=120, input=stdin, cwd=files)


def test_python_hello_world_is_accepted_exit_0_with_its_output(files):
    proc = sandboxd_run(files, "--language", "python3", "--stdin", "in.txt", "hello.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "status:       Accepted"
    assert lines[-2:] == ["--- stdout ---", "Hello, World"]
    assert proc.stderr == ""


def test_json_output_is_the_result_object(files):
    proc = sandboxd_run(files, "--language", "python3", "--stdin", "in.txt",
                        "--expected-output", "right.txt", "--json", "hello.py")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "Accepted" and result["stdout"] == "Hello, World\n"
    assert result["exit_code"] == 0 and result["time_ms"] is not None
    assert "submission_id" not in result


def test_wrong_answer_exits_1(files):
    proc = sandboxd_run(files, "--language", "python3", "--stdin", "in.txt",
                        "--expected-output", "wrong.txt", "hello.py")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("status:       Wrong Answer\n")
    assert "Hello, World" in proc.stdout


def test_source_and_stdin_from_standard_input(files):
    proc = sandboxd_run(files, "--language", "python3", "-", stdin="print(6 * 7)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("--- stdout ---\n42\n")


def test_compile_error_exits_1_with_the_compilers_message(files):
    proc = sandboxd_run(files, "--language", "c", "broken.c")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("status:       Compile Error\n")
    assert "--- compile output ---" in proc.stdout and "error" in proc.stdout


def test_time_limit_flag_is_applied(files):
    (files / "spin.py").write_text("while True:\n    pass\n")
    proc = sandboxd_run(files, "--language", "python3", "--time-limit-ms", "200", "spin.py")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("status:       Time Limit Exceeded\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--language", "nope", "hello.py"], "sandboxd: --language: unknown language 'nope'"),
    (["--language", "python3", "missing.py"], "sandboxd: FILE: cannot read missing.py"),
    (["--language", "python3", "--memory-limit-mb", "1", "hello.py"],
     "sandboxd: --memory-limit-mb: 1 is out of range: allowed 4..1024"),
])
def test_bad_arguments_exit_2_with_a_message(files, argv, message):
    proc = sandboxd_run(files, *argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_missing_arguments_exit_2_with_usage(files):
    proc = sandboxd_run(files, "hello.py")
    assert proc.returncode == 2
    assert "usage: sandboxd" in proc.stderr and "--language" in proc.stderr
