"""The walking skeleton over HTTP: the real daemon, real sandboxes, SPEC's JSON."""

from __future__ import annotations

import time

from tests.e2e.conftest import start_daemon, stop_daemon

C_ECHO = '#include <stdio.h>\nint main(void){char b[64];scanf("%63s",b);printf("%s\\n",b);}'
RESULT_KEYS = {"submission_id", "status", "stdout", "stderr", "exit_code", "signal", "time_ms",
               "wall_time_ms", "memory_kb", "compile_output"}


def test_python_hello_world_with_stdin_is_accepted(daemon):
    body = daemon.execute(language="python3", source="print(input())", stdin="hello")
    assert body["status"] == "Accepted"
    assert body["stdout"] == "hello\n"
    assert RESULT_KEYS <= set(body)
    assert body["exit_code"] == 0 and body["signal"] is None
    assert 0 < body["time_ms"] < 2000 and 0 < body["memory_kb"] < 256 * 1024
    assert body["wall_time_ms"] >= 1


def test_c_hello_world_with_stdin_is_accepted(daemon):
    body = daemon.execute(language="c", source=C_ECHO, stdin="hello\n")
    assert body["status"] == "Accepted", body
    assert body["stdout"] == "hello\n"
    # Measured by the kernel from the execve on: a hello world costs well under 2 ms.
    assert 0 <= body["time_ms"] <= 2 and body["memory_kb"] >= 0


def test_infinite_loop_is_time_limit_exceeded(daemon):
    body = daemon.execute(language="c", source="int main(void){for(;;);}", time_limit_ms=500)
    assert body["status"] == "Time Limit Exceeded"
    assert 500 <= body["time_ms"] < 2000


def test_c_syntax_error_is_compile_error(daemon):
    body = daemon.execute(language="c", source="int main(void){ return 0 }")
    assert body["status"] == "Compile Error"
    assert "error:" in body["compile_output"]
    assert body["exit_code"] is None and body["time_ms"] is None


def test_exit_3_is_runtime_error(daemon):
    body = daemon.execute(language="c", source="#include <stdlib.h>\nint main(void){exit(3);}")
    assert body["status"] == "Runtime Error"
    assert body["exit_code"] == 3


def test_async_submission_then_result(daemon):
    status, body, _ = daemon.request("POST", "/execute",
                                     {"language": "python3", "source": "print(6*7)"})
    assert status == 202 and set(body) == {"submission_id"}
    sid = body["submission_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, result, _ = daemon.request("GET", f"/result/{sid}")
        assert status == 200 and result["submission_id"] == sid
        assert result["status"] in ("Queued", "Running", "Accepted")
        if result["status"] == "Accepted":
            assert result["stdout"] == "42\n"
            return
        time.sleep(0.05)
    raise AssertionError("no final result within 60 s")


def test_unknown_result_is_404_json(daemon):
    status, body, _ = daemon.request("GET", "/result/does-not-exist")
    assert status == 404 and "error" in body


def test_malformed_input_is_400_json(daemon):
    status, body, _ = daemon.request("POST", "/execute", raw=b"{not json")
    assert status == 400 and "error" in body
    status, body, _ = daemon.request("POST", "/execute",
                                     {"language": "no-such-language", "source": "x"})
    assert status == 400 and "no-such-language" in body["error"]
    status, body, _ = daemon.request("POST", "/execute",
                                     {"language": "c", "source": "x", "time_limit_ms": 10**9})
    assert status == 400 and "time_limit_ms" in body["error"]


def test_languages_and_health(daemon):
    status, langs, _ = daemon.request("GET", "/languages")
    ids = {lang["id"] for lang in langs}
    assert {"c", "cpp", "python3", "java", "javascript"} <= ids
    assert all(lang["version"] for lang in langs), langs
    # `make deps` installs every language's toolchain: none is unavailable here.
    assert [lang["id"] for lang in langs if not lang["available"]] == [], langs
    assert daemon.request("GET", "/health")[0] == 200


def test_sigterm_drains_and_cleans_up(tmp_path):
    from pathlib import Path

    from sandboxd.jail import cgroup

    d = start_daemon(tmp_path)
    assert d.execute(language="python3", source="print(1)")["status"] == "Accepted"
    pid = d.process.pid
    stop_daemon(d)
    assert d.process.returncode == 0
    backend = cgroup.detect()
    assert not [p for p in backend.box_dirs() if p.name.startswith(f"box-{pid}-")]
    assert not (Path(d.state_dir) / "ws" / str(pid)).exists()
