"""Webhooks through the real daemon over HTTP: a submission's result reaches a receiver on
127.0.0.1 (a 500 first, retried), a host not on the allow-list is a 400, and a daemon
without `[webhooks]` refuses every callback_url."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import STATE_DIR, Daemon, start_daemon, stop_daemon


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread; answers POSTs from `statuses` in turn
    (the last one repeats) and keeps what it got."""

    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers), body))
                    status = receiver.statuses[min(len(receiver.requests),
                                                   len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 120) -> list[tuple[dict[str, str], bytes]]:
        """Until `count` requests came (a generous bound, not a measurement)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.requests)} request(s), expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver([500, 200])
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture
def hooked_daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_kernel()
    config = (f'[sandbox]\nstate_dir = "{STATE_DIR}"\n\n'
              '[webhooks]\nallowed_hosts = ["127.0.0.1"]\nbackoff_s = 0.05\n'
              'max_backoff_s = 0.2\n')
    daemon = start_daemon(tmp_path, config_text=config, log_name="daemon.log")
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            stop_daemon(daemon)


def test_a_result_reaches_the_receiver_after_a_500(hooked_daemon: Daemon,
                                                   receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}/sandboxd"
    status, body, _ = hooked_daemon.request("POST", "/execute", {
        "language": "python3", "source": "print(input())", "stdin": "hello",
        "callback_url": url})
    assert status == 202, body
    assert isinstance(body, dict)
    job_id = body["submission_id"]
    (first_headers, first), (second_headers, second) = receiver.wait_for(2)
    assert first == second  # the same result, sent again after the 500
    result = json.loads(second)
    assert (result["submission_id"], result["status"], result["stdout"]) == (
        job_id, "Accepted", "hello\n")
    assert second_headers["Content-Type"] == "application/json"
    assert second_headers["X-Sandboxd-Submission"] == job_id
    assert (first_headers["X-Sandboxd-Attempt"], second_headers["X-Sandboxd-Attempt"]) == (
        "1", "2")
    status, polled, _ = hooked_daemon.request("GET", f"/result/{job_id}")
    assert status == 200 and polled == result
    # Delivered: no third request (the receiver would answer it, so it would show).
    stop_daemon(hooked_daemon)
    assert len(receiver.requests) == 2


def test_a_host_not_on_the_allow_list_is_a_400(hooked_daemon: Daemon,
                                               receiver: Receiver) -> None:
    for host in ("127.0.0.2", "localhost"):
        url = f"http://{host}:{receiver.port}/sandboxd"
        status, body, _ = hooked_daemon.request("POST", "/execute", {
            "language": "python3", "source": "print(1)", "callback_url": url})
        assert status == 400, body
        assert body == {"error": f"callback_url: the host {host}:{receiver.port} is not on "
                                 "the allow-list (webhooks.allowed_hosts)"}
    assert receiver.requests == []


def test_without_webhooks_every_callback_url_is_refused(daemon: Daemon) -> None:
    status, body, _ = daemon.request("POST", "/execute", {
        "language": "python3", "source": "print(1)",
        "callback_url": "http://127.0.0.1:9/sandboxd"})
    assert status == 400, body
    assert body == {"error": "callback_url: webhooks are off: no host is on the allow-list "
                             "(webhooks.allowed_hosts)"}
