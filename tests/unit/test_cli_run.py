"""`sandboxd run` without a kernel: usage errors (exit 2, one line naming the flag), the
submission it builds, and how it prints a result. The real runs: tests/e2e/test_cli_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandboxd import __main__ as cli
from sandboxd.model import Result, Status


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    path = tmp_path / "hello.py"
    path.write_text("print(input())\n")
    return path


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_refuses_without_root(monkeypatch, capsys, hello):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    code, out, err = run_cli(capsys, "--language", "python3", str(hello))
    assert code == 2 and out == ""
    assert err.startswith("sandboxd: must run as root") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "error"), [
    (["--language", "python3", "/nonexistent/x.py"],
     "sandboxd: FILE: cannot read /nonexistent/x.py: No such file or directory"),
    (["--language", "cobol-74", "{hello}"],
     "sandboxd: --language: unknown language 'cobol-74'; known languages: "),
    (["--language", "python3", "--time-limit-ms", "0", "{hello}"],
     "sandboxd: --time-limit-ms: 0 is out of range: allowed 1..10000 (limits.time_limit_ms)"),
    (["--language", "python3", "--memory-limit-mb", "5000", "{hello}"],
     "sandboxd: --memory-limit-mb: 5000 is out of range: allowed 4..1024"),
    (["--language", "python3", "--wall-time-limit-ms", "-1", "{hello}"],
     "sandboxd: --wall-time-limit-ms: -1 is out of range"),
    (["--language", "python3", "--stdin", "/nonexistent/in", "{hello}"],
     "sandboxd: --stdin: cannot read /nonexistent/in: No such file or directory"),
    (["--language", "python3", "--stdin", "{binary}", "{hello}"],
     "sandboxd: --stdin: {binary} is not UTF-8 text (byte 0)"),
    (["--language", "python3", "--stdin", "-", "-"],
     "sandboxd: FILE and --stdin cannot both be '-' (standard input)"),
    (["--language", "python3", "--config", "/nonexistent/c.toml", "{hello}"],
     "sandboxd: cannot read config /nonexistent/c.toml: No such file or directory"),
])
def test_run_usage_errors_exit_2_naming_the_flag(as_root, capsys, hello, tmp_path, argv, error):
    binary = tmp_path / "binary.in"
    binary.write_bytes(b"\xff\xfe\x00")
    argv = [a.format(hello=hello, binary=binary) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(error.format(binary=binary)), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    [],  # no FILE, no --language
    ["x.py"],  # no --language
    ["--language", "python3", "--time-limit-ms", "fast", "x.py"],
    ["--language", "python3", "--bogus", "x.py"],
])
def test_run_argument_errors_are_argparse_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", *argv])
    assert e.value.code == 2
    assert "usage: sandboxd" in capsys.readouterr().err


def test_run_builds_the_submission_the_api_would(tmp_path, hello):
    stdin, expected = tmp_path / "in.txt", tmp_path / "out.txt"
    stdin.write_text("hi\n")
    expected.write_text("hi\n")
    args = cli.parser().parse_args([
        "run", "--language", "python3", "--stdin", str(stdin), "--expected-output",
        str(expected), "--time-limit-ms", "500", "--memory-limit-mb", "64", str(hello)])
    config = cli.load_config(args)
    from sandboxd import server

    submission = cli.build_submission(args, config, server.load_languages(config))
    assert submission.language == "python3" and submission.source == "print(input())\n"
    assert submission.stdin == b"hi\n" and submission.expected_output == b"hi\n"
    assert (submission.limits.time_limit_ms, submission.limits.wall_time_limit_ms,
            submission.limits.memory_limit_mb) == (500, 2000, 64)
    assert submission.callback_url is None


def test_a_language_whose_toolchain_is_missing_is_a_usage_error(as_root, capsys, hello,
                                                                 monkeypatch):
    from sandboxd import languages

    monkeypatch.setattr(languages, "missing_executables", lambda lang: ["/usr/bin/python3"])
    code, _, err = run_cli(capsys, "--language", "python3", str(hello))
    assert code == 2
    assert err == ("sandboxd: --language: 'python3' is unavailable on this server: toolchain "
                   "not installed (/usr/bin/python3 missing)\n")


# -- printing and exit status ----------------------------------------------------------------


def fake_run(monkeypatch: pytest.MonkeyPatch, result: Result) -> None:
    async def run_one(config, registry, submission):
        return result

    monkeypatch.setattr(cli, "run_one", run_one)


ACCEPTED = Result(status=Status.ACCEPTED, stdout="hello\n", exit_code=0, time_ms=3,
                  wall_time_ms=9, memory_kb=2048)


def test_accepted_prints_a_summary_and_the_output_and_exits_0(as_root, monkeypatch, capsys,
                                                               hello):
    fake_run(monkeypatch, ACCEPTED)
    code, out, err = run_cli(capsys, "--language", "python3", str(hello))
    assert (code, err) == (0, "")
    assert out == ("status:       Accepted\n"
                   "time:         3 ms CPU, 9 ms wall\n"
                   "memory:       2048 KiB\n"
                   "exit code:    0\n"
                   "--- stdout ---\n"
                   "hello\n")


@pytest.mark.parametrize(("result", "code"), [
    (Result(status=Status.WRONG_ANSWER, stdout="x\n", exit_code=0), 1),
    (Result(status=Status.RUNTIME_ERROR, stderr="Traceback\n", signal=6), 1),
    (Result(status=Status.COMPILE_ERROR, compile_output="main.c:1: error"), 1),
    (Result(status=Status.TIME_LIMIT_EXCEEDED), 1),
    (Result(status=Status.INTERNAL_ERROR, message="sandbox failure: mount: EPERM"), 2),
])
def test_other_verdicts_exit_1_and_a_sandbox_failure_2(as_root, monkeypatch, capsys, hello,
                                                       result, code):
    fake_run(monkeypatch, result)
    got, out, _ = run_cli(capsys, "--language", "python3", str(hello))
    assert got == code
    assert out.startswith(f"status:       {result.status.value}\n")
    for text in (result.stdout, result.stderr, result.compile_output, result.message):
        assert (text or "") in out
    if result.signal is not None:
        assert "exit code:    - (signal 6)" in out


def test_json_prints_the_result_object(as_root, monkeypatch, capsys, hello):
    fake_run(monkeypatch, ACCEPTED)
    code, out, _ = run_cli(capsys, "--language", "python3", "--json", str(hello))
    assert code == 0
    expected = ACCEPTED.to_json("unused")
    del expected["submission_id"]  # nothing was submitted anywhere
    assert json.loads(out) == expected


def test_run_boxes_use_uids_after_the_daemons_slots():
    from sandboxd.config import Config

    config = Config()
    daemon = config.server.worker_count
    cli_config = cli.cli_sandbox_config(config)
    assert cli_config.server.worker_count == 1
    # The daemon's slots use uid_base .. uid_base + 2 * workers - 1 (two ids each).
    assert cli_config.sandbox.uid_base == config.sandbox.uid_base + 2 * daemon
