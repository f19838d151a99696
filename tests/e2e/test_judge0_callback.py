"""Judge0's callback_url through the real daemon: a receiver (aiohttp, on 127.0.0.1,
allow-listed) gets a PUT whose body is the submission in Judge0's shape, text in base64,
retried after a 5xx, still sent after a daemon restart; the official `judge0` SDK passes
the callback_url unmodified; with webhooks off the Judge0 API refuses it with a 422."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import judge0  # the official SDK, from the test extra
import pytest
from aiohttp import web

from sandboxd.judge0 import DEFAULT_FIELDS
from tests.conftest import require_kernel
from tests.e2e.conftest import STATE_DIR, Daemon, start_daemon, stop_daemon

BOUND_S = 120  # a generous bound for what should happen, not a measurement
LANGUAGES = ["python3"]


class Receiver:
    """An aiohttp server on 127.0.0.1, in a thread with its own event loop: answers each
    request with the next of `statuses` (the last one repeats) and keeps what it got."""

    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.requests.append((request.method, request.path_qs, dict(request.headers), body))
            status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        return web.Response(status=status)

    def url(self, path: str = "/judge0") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int) -> list[tuple[str, str, dict[str, str], bytes]]:
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.requests)} request(s), expected {count}")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver([500, 204])
    try:
        yield rec
    finally:
        rec.close()


HOOKED = (f'[sandbox]\nstate_dir = "{STATE_DIR}"\n\n'
          '[webhooks]\nallowed_hosts = ["127.0.0.1"]\nbackoff_s = 0.05\nmax_backoff_s = 0.2\n'
          'max_attempts = 100\n')


@pytest.fixture
def hooked_daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_kernel()
    daemon = start_daemon(tmp_path, config_text=HOOKED, log_name="daemon.log",
                          languages=LANGUAGES)
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            stop_daemon(daemon)


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
    (method1, path1, _, first), (method2, path2, headers, second) = receiver.wait_for(2)
    assert (method1, method2) == ("PUT", "PUT")
    assert path1 == path2 == "/judge0?id=7"
    assert first == second  # the same body, sent again after the 500
    body = json.loads(second)
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
                                   language=judge0.PYTHON, callback_url=receiver.url())
    client.create_submission(submission)
    ((method, _, _, raw),) = receiver.wait_for(1)
    assert method == "PUT"
    called_back = judge0.Submission()
    called_back.set_attributes(json.loads(raw))  # the SDK's own reading of a Judge0 body
    assert called_back.token == submission.token
    assert called_back.status == judge0.Status.RUNTIME_ERROR_NZEC


def test_a_pending_put_is_sent_after_a_restart(tmp_path: Path) -> None:
    require_kernel()
    rec = Receiver([503])  # down until the daemon has been restarted
    journal = tmp_path / "journal.db"
    daemon = start_daemon(tmp_path, config_text=HOOKED, log_name="first.log",
                          languages=LANGUAGES, journal=journal)
    try:
        status, created, _ = daemon.request(
            "POST", "/submissions",
            {"language_id": 71, "source_code": "print('kept')", "callback_url": rec.url()})
        assert status == 201, created
        assert isinstance(created, dict)
        ((method, _, _, before),) = rec.wait_for(1)[:1]
        assert method == "PUT"
        stop_daemon(daemon)
        with rec.lock:
            rec.statuses = [204]
            sent_before = len(rec.requests)
        daemon = start_daemon(tmp_path, config_text=HOOKED, log_name="second.log",
                              languages=LANGUAGES, journal=journal)
        requests = rec.wait_for(sent_before + 1)
        method, _, _, after = requests[sent_before]
        assert method == "PUT" and after == before  # the body rendered before the restart
        body = json.loads(after)
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
