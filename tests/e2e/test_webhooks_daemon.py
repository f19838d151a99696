"""Webhooks through the real daemon over HTTP: a submission's result reaches a receiver on
127.0.0.1 (a 500 first, retried), a host not on the allow-list is a 400, and a daemon
without `[webhooks]` refuses every callback_url."""

from __future__ import annotations

import json

from tests.e2e.conftest import Daemon, stop_daemon
from tests.e2e.receivers import Receiver


def test_a_result_reaches_the_receiver_after_a_500(hooked_daemon: Daemon,
                                                   receiver: Receiver) -> None:
    status, body, _ = hooked_daemon.request("POST", "/execute", {
        "language": "python3", "source": "print(input())", "stdin": "hello",
        "callback_url": receiver.url("/sandboxd")})
    assert status == 202, body
    assert isinstance(body, dict)
    job_id = body["submission_id"]
    first, second = receiver.wait_for(2)
    assert (first.method, first.path, second.method) == ("POST", "/sandboxd", "POST")
    assert first.body == second.body  # the same result, sent again after the 500
    result = json.loads(second.body)
    first_headers, second_headers = first.headers, second.headers
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
