"""Judge0's callback_url through the real daemon: a receiver (aiohttp, on 127.0.0.1,
allow-listed) gets a PUT whose body is the submission in Judge0's shape, text in base64,
retried after a 5xx, still sent after a daemon restart; the official `judge0` SDK passes
the callback_url unmodified; with webhooks off the Judge0 API refuses it with a 422."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import judge0  # the official SDK, from the test extra

from sandboxd.judge0 import DEFAULT_FIELDS
from tests.conftest import require_kernel
from tests.e2e.conftest import HOOKED_CONFIG, Daemon, start_daemon, stop_daemon
from tests.e2e.receivers import Receiver

LANGUAGES = ["python3"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_receiver_gets_a_put_of_the_judge0_submission(hooked_daemon: Daemon,
                                                          receiver: Receiver) -> None:
    # Not base64 in the request: the callback is base64 anyway, as Judge0's is.
    status, created, _ = hooked_daemon.request(
        "POST", "/submissions?base64_encoded=false",
        {"language_id": 71, "source_code": "print(input()[::-1])", "stdin": "olleh",
         "callback_url": receiver.url("/judge0?id=7")})
    assert status == 201, created
    assert isinstance(created, dict)
    token = created["token"]
    first, second = receiver.wait_for(2)
    assert (first.method, second.method) == ("PUT", "PUT")
    assert first.path == second.path == "/judge0?id=7"
    assert first.body == second.body  # the same body, sent again after the 500
    body = json.loads(second.body)
    headers = second.headers
    assert list(body) == list(DEFAULT_FIELDS)
    assert body["token"] == token
    assert body["status"] == {"id": 3, "description": "Accepted"}
    assert body["stdout"] == b64("hello\n")
    assert body["stderr"] is None and body["compile_output"] is None
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Sandboxd-Submission"] == token.replace("-", "")
    assert headers["X-Sandboxd-Attempt"] == "2"
    # Exactly what GET /submissions/{token}?base64_encoded=true shows.
    status, shown, _ = hooked_daemon.request(
        "GET", f"/submissions/{token}?base64_encoded=true")
    assert status == 200 and shown == body
    stop_daemon(hooked_daemon)
    assert len(receiver.requests) == 2  # delivered: never sent again


def test_the_official_sdk_passes_a_callback_url(hooked_daemon: Daemon,
                                                receiver: Receiver) -> None:
    receiver.statuses = [200]
    client = judge0.Client(hooked_daemon.url)
    submission = judge0.Submission(source_code="import sys; sys.exit(3)",
                                   language=judge0.PYTHON, callback_url=receiver.url("/judge0"))
    client.create_submission(submission)
    (called,) = receiver.wait_for(1)
    assert called.method == "PUT"
    called_back = judge0.Submission()
    called_back.set_attributes(json.loads(called.body))  # the SDK's own reading of a Judge0 body
    assert called_back.token == submission.token
    assert called_back.status == judge0.Status.RUNTIME_ERROR_NZEC


def test_a_pending_put_is_sent_after_a_restart(tmp_path: Path) -> None:
    require_kernel()
    rec = Receiver([503])  # down until the daemon has been restarted
    journal = tmp_path / "journal.db"
    daemon = start_daemon(tmp_path, config_text=HOOKED_CONFIG, log_name="first.log",
                          languages=LANGUAGES, journal=journal)
    try:
        status, created, _ = daemon.request(
            "POST", "/submissions",
            {"language_id": 71, "source_code": "print('kept')", "callback_url": rec.url("/judge0")})
        assert status == 201, created
        assert isinstance(created, dict)
        before = rec.wait_for(1)[0]
        assert before.method == "PUT"
        stop_daemon(daemon)
        with rec.lock:
            rec.statuses = [204]
            sent_before = len(rec.requests)
        daemon = start_daemon(tmp_path, config_text=HOOKED_CONFIG, log_name="second.log",
                              languages=LANGUAGES, journal=journal)
        requests = rec.wait_for(sent_before + 1)
        after = requests[sent_before]
        # The body rendered before the restart.
        assert after.method == "PUT" and after.body == before.body
        body = json.loads(after.body)
        assert body["token"] == created["token"] and body["stdout"] == b64("kept\n")
    finally:
        if daemon.process.poll() is None:
            stop_daemon(daemon)
        rec.close()


def test_without_webhooks_the_judge0_api_refuses_a_callback_url(tmp_path: Path) -> None:
    require_kernel()
    daemon = start_daemon(tmp_path, languages=LANGUAGES)
    try:
        status, body, _ = daemon.request("POST", "/submissions", {
            "language_id": 71, "source_code": "print(1)",
            "callback_url": "http://127.0.0.1:9/judge0"})
        assert status == 422, body
        rule = "webhooks are off: no host is on the allow-list (webhooks.allowed_hosts)"
        assert body == {"callback_url": [rule], "error": f"callback_url: {rule}"}
        status, info, _ = daemon.request("GET", "/config_info")
        assert status == 200 and isinstance(info, dict) and info["enable_callbacks"] is False
    finally:
        stop_daemon(daemon)
