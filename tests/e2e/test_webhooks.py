"""Real deliveries: the dispatcher POSTs over TCP to an aiohttp receiver on 127.0.0.1
(allow-listed by address), through the same client, resolver and checks the daemon uses.
No root needed; nothing leaves the loopback interface."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from sandboxd import __version__
from sandboxd.config import WebhookConfig, load
from sandboxd.model import Result, Status
from sandboxd.observer import Observer
from sandboxd.webhooks import (
    CallbackClient,
    Dispatcher,
    MemoryDeliveryStore,
    signature,
    validate_callback_url,
)
from tests.e2e.conftest import free_port

RESULT = Result(status=Status.WRONG_ANSWER, stdout="41\n", exit_code=0, time_ms=3,
                wall_time_ms=5, memory_kb=2048)


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """Answers each POST with the next response of `script` (the last one repeats)."""

    port: int
    requests: list[Seen] = field(default_factory=list)
    script: list[Callable[[], web.StreamResponse]] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # "hang" waits for it

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(dict(request.headers), await request.read(), request.path))
        respond = self.script[min(len(self.requests), len(self.script)) - 1]
        if respond is hang:
            await self.hold.wait()
        return respond()


def status(code: int, **headers: str) -> Callable[[], web.StreamResponse]:
    return lambda: web.Response(status=code, headers=headers)


def hang() -> web.StreamResponse:
    return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(port=0, script=[status(200)])
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        rec.hold.set()
        await runner.cleanup()


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[bool, bool]] = []

    def webhook_delivery(self, ok: bool, final: bool) -> None:
        self.events.append((ok, final))


class RecordingStore(MemoryDeliveryStore):
    """Also lists every call, to prove what was recorded before each attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    async def add_delivery(self, job_id: str, url: str, body: bytes,
                           method: str = "POST") -> int:
        delivery_id = await super().add_delivery(job_id, url, body, method)
        self.calls.append(("add", delivery_id))
        return delivery_id

    async def record_attempt(self, delivery_id: int, attempts: int, error: str | None) -> None:
        self.calls.append(("attempt", delivery_id, attempts, error))
        await super().record_attempt(delivery_id, attempts, error)

    async def finish_delivery(self, delivery_id: int, *, delivered: bool, attempts: int,
                              error: str | None) -> None:
        self.calls.append(("finish", delivery_id, delivered, attempts, error))
        await super().finish_delivery(delivery_id, delivered=delivered, attempts=attempts,
                                      error=error)


def config(*allowed: str, **settings) -> WebhookConfig:
    fast = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0}
    return WebhookConfig(allowed_hosts=allowed or ("127.0.0.1",), **{**fast, **settings})


async def deliver(cfg: WebhookConfig, url: str, store: MemoryDeliveryStore | None = None,
                  observer: Observer | None = None, job_id: str = "job-1",
                  **kw) -> MemoryDeliveryStore:
    """One callback through a started dispatcher, until it is delivered or given up on."""
    store = store if store is not None else RecordingStore()
    dispatcher = Dispatcher(cfg, store, observer=observer, **kw)
    await dispatcher.start()
    try:
        assert validate_callback_url(url, cfg) is None
        dispatcher.notify(job_id, url, RESULT)
        await asyncio.wait_for(dispatcher.wait_idle(), 60)
    finally:
        await dispatcher.stop(5)
    return store


async def test_delivered_with_its_headers_and_a_verifiable_signature(receiver: Receiver) -> None:
    observer = Recorder()
    store = await deliver(config(secret="shared secret"), receiver.url(), observer=observer)
    [seen] = receiver.requests
    assert orjson.loads(seen.body) == RESULT.to_json("job-1")
    assert seen.path == "/hook"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == f"sandboxd/{__version__}"
    assert seen.headers["X-Sandboxd-Submission"] == "job-1"
    assert seen.headers["X-Sandboxd-Delivery"] == "1"
    assert seen.headers["X-Sandboxd-Attempt"] == "1"
    # What a receiver does (docs/WEBHOOKS.md): HMAC-SHA256 of the raw body, compared in
    # constant time.
    expected = "sha256=" + hmac.new(b"shared secret", seen.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(seen.headers["X-Sandboxd-Signature"], expected)
    assert isinstance(store, RecordingStore)
    assert store.calls == [("add", 1), ("finish", 1, True, 1, None)]
    assert observer.events == [(True, True)]


async def test_no_signature_without_a_secret(receiver: Receiver) -> None:
    await deliver(config(), receiver.url())
    [seen] = receiver.requests
    assert "X-Sandboxd-Signature" not in seen.headers


async def test_a_500_is_retried_and_the_result_delivered_once(receiver: Receiver) -> None:
    receiver.script = [status(500), status(200)]
    observer = Recorder()
    store = await deliver(config(), receiver.url(), observer=observer)
    assert len(receiver.requests) == 2
    assert receiver.requests[0].body == receiver.requests[1].body
    assert [r.headers["X-Sandboxd-Attempt"] for r in receiver.requests] == ["1", "2"]
    assert isinstance(store, RecordingStore)
    assert store.calls == [("add", 1), ("attempt", 1, 1, "HTTP 500"),
                           ("finish", 1, True, 2, None)]
    assert observer.events == [(False, False), (True, True)]
    assert await store.pending_deliveries() == []


async def test_429_and_503_are_retried_honouring_retry_after(receiver: Receiver) -> None:
    receiver.script = [status(429, **{"Retry-After": "0"}), status(503, **{"Retry-After": "0"}),
                       status(204)]
    store = await deliver(config(), receiver.url())
    assert len(receiver.requests) == 3
    record = store.record(1)
    assert record is not None and (record.delivered, record.attempts) == (True, 3)


async def test_a_4xx_is_final(receiver: Receiver) -> None:
    receiver.script = [status(404)]
    observer = Recorder()
    store = await deliver(config(), receiver.url(), observer=observer)
    assert len(receiver.requests) == 1
    record = store.record(1)
    assert record is not None
    assert (record.delivered, record.attempts, record.error) == (False, 1, "HTTP 404")
    assert observer.events == [(False, True)]


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.script = [status(307, Location=receiver.url("/elsewhere"))]
    store = await deliver(config(), receiver.url())
    assert [r.path for r in receiver.requests] == ["/hook"]
    record = store.record(1)
    assert record is not None and record.delivered is False
    assert record.error == "HTTP 307: redirects are not followed"


async def test_every_attempt_times_out_then_it_is_given_up(receiver: Receiver) -> None:
    receiver.script = [hang]
    observer = Recorder()
    store = await deliver(config(timeout_s=0.2, max_attempts=2), receiver.url(),
                          observer=observer)
    assert len(receiver.requests) == 2
    record = store.record(1)
    assert record is not None and record.delivered is False
    assert record.error == "gave up after 2 attempts: no response within 0.2 s"
    assert observer.events == [(False, False), (False, True)]


async def test_connection_refused_is_retried_then_given_up() -> None:
    port = free_port()  # nothing listens there
    store = await deliver(config(max_attempts=3), f"http://127.0.0.1:{port}/hook")
    record = store.record(1)
    assert record is not None and (record.delivered, record.attempts) == (False, 3)
    assert record.error is not None and record.error.startswith(
        "gave up after 3 attempts: cannot connect:")


async def test_a_host_not_on_the_allow_list_is_refused(receiver: Receiver) -> None:
    cfg = config("127.0.0.1")
    for url in (receiver.url(host="127.0.0.2"), receiver.url(host="localhost")):
        problem = validate_callback_url(url, cfg)
        assert problem is not None and "is not on the allow-list (webhooks.allowed_hosts)" in (
            problem)
    # Accepted while the host was listed, refused at delivery once it is not.
    store = MemoryDeliveryStore()
    await store.add_delivery("job-1", receiver.url(), b"{}")
    dispatcher = Dispatcher(config("hooks.example.com"), store)
    await dispatcher.start()
    await asyncio.wait_for(dispatcher.wait_idle(), 60)
    await dispatcher.stop(5)
    assert receiver.requests == []
    record = store.record(1)
    assert record is not None and record.delivered is False
    assert record.error == (f"refused: the host 127.0.0.1:{receiver.port} is not on the "
                            "allow-list (webhooks.allowed_hosts)")


async def test_a_listed_name_resolving_to_loopback_is_refused(receiver: Receiver) -> None:
    # localhost resolves (via /etc/hosts, for real) to 127.0.0.1: a listed name does not
    # unlock the loopback address behind it.
    observer = Recorder()
    store = await deliver(config("localhost"), receiver.url(host="localhost"),
                          observer=observer)
    assert receiver.requests == []
    record = store.record(1)
    assert record is not None and (record.delivered, record.attempts) == (False, 1)
    assert record.error is not None
    assert record.error.startswith("refused: localhost resolves to no address a callback may "
                                   "use: ")
    assert "is a loopback address, and that address is not on webhooks.allowed_hosts" in (
        record.error)
    assert observer.events == [(False, True)]


async def test_a_listed_name_reaches_an_address_that_is_listed_too(receiver: Receiver) -> None:
    store = await deliver(config("localhost", "127.0.0.1"), receiver.url(host="localhost"))
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["Host"] == f"localhost:{receiver.port}"
    record = store.record(1)
    assert record is not None and record.delivered is True


async def test_a_name_resolving_to_a_private_address_is_refused(receiver: Receiver) -> None:
    # A name whose DNS answer is rebound to an internal address: the receiver's address
    # (127.0.0.1) is on the list, but the answer is 10.0.0.7, which is not.
    async def rebound(host: str, port: int, *, type: int, family: int):
        import socket
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    cfg = config("hooks.example.com", "127.0.0.1")
    store = await deliver(cfg, f"http://hooks.example.com:{receiver.port}/hook",
                          client=CallbackClient(cfg, getaddrinfo=rebound))
    assert receiver.requests == []
    record = store.record(1)
    assert record is not None and record.delivered is False
    assert record.error == ("refused: hooks.example.com resolves to no address a callback may "
                            "use: 10.0.0.7 is a private address, and that address is not on "
                            "webhooks.allowed_hosts")


async def test_a_restart_resumes_a_pending_delivery(receiver: Receiver) -> None:
    # The store as a daemon left it: one attempt made (a 500), the retry never made.
    store = MemoryDeliveryStore()
    body = orjson.dumps(RESULT.to_json("job-7"))
    delivery_id = await store.add_delivery("job-7", receiver.url(), body)
    await store.record_attempt(delivery_id, 1, "HTTP 500")
    dispatcher = Dispatcher(config(), store)
    await dispatcher.start()
    await asyncio.wait_for(dispatcher.wait_idle(), 60)
    await dispatcher.stop(5)
    [seen] = receiver.requests
    assert seen.body == body
    assert seen.headers["X-Sandboxd-Submission"] == "job-7"
    assert seen.headers["X-Sandboxd-Attempt"] == "2"
    record = store.record(delivery_id)
    assert record is not None and (record.delivered, record.attempts) == (True, 2)


async def test_stop_cuts_a_hanging_attempt_and_the_next_start_delivers_it(
        receiver: Receiver) -> None:
    receiver.script = [hang, status(200)]
    store = MemoryDeliveryStore()
    first = Dispatcher(config(), store)
    await first.start()
    first.notify("job-1", receiver.url(), RESULT)
    while not receiver.requests:
        await asyncio.sleep(0.01)
    await first.stop(0.1)  # the receiver has not answered: the attempt is cut short
    assert [d.id for d in await store.pending_deliveries()] == [1]
    second = Dispatcher(config(), store)
    await second.start()
    await asyncio.wait_for(second.wait_idle(), 60)
    await second.stop(5)
    assert len(receiver.requests) == 2  # at least once: the receiver deduplicates
    assert receiver.requests[0].headers["X-Sandboxd-Delivery"] == (
        receiver.requests[1].headers["X-Sandboxd-Delivery"])
    record = store.record(1)
    assert record is not None and record.delivered is True


async def test_a_backlog_overflow_delivers_everything_once_in_order(receiver: Receiver) -> None:
    store = MemoryDeliveryStore()
    dispatcher = Dispatcher(config(backlog=3, concurrency=1), store)
    await dispatcher.start()
    for i in range(12):
        dispatcher.notify(f"job-{i}", receiver.url(), RESULT)
    await asyncio.wait_for(dispatcher.wait_idle(), 60)
    await dispatcher.stop(5)
    assert [r.headers["X-Sandboxd-Submission"] for r in receiver.requests] == [
        f"job-{i}" for i in range(12)]
    assert all(r.delivered for r in store.records())


# -- docs/WEBHOOKS.md's examples work as written ------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md"
DOC_PORT = "9000"


def doc_blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(),
                                              flags=re.S | re.M) if lang == language]


def doc_config(tmp_path: Path, port: int | None = None) -> WebhookConfig:
    """The doc's [webhooks] table, loaded as the daemon loads its file."""
    [toml] = doc_blocks("toml")
    if port is not None:
        assert f":{DOC_PORT}" in toml
        toml = toml.replace(f":{DOC_PORT}", f":{port}")
    path = tmp_path / "sandboxd.toml"
    path.write_text(toml)
    return load(path).webhooks


def test_the_doc_url_examples_are_what_validation_says(tmp_path: Path) -> None:
    cfg = doc_config(tmp_path)
    rows = re.findall(r"^\| `(https?://[^`]*)` \| (accepted|refused)(.*)\|$", DOC.read_text(),
                      flags=re.M)
    assert len(rows) >= 6
    for url, verdict, detail in rows:
        problem = validate_callback_url(url, cfg)
        if verdict == "accepted":
            assert problem is None, (url, problem)
        else:
            assert problem is not None, url
            quoted = re.search(r"`([^`]+)`", detail)
            if quoted:
                assert quoted.group(1) == problem, (url, problem)


def test_the_doc_signature_check_accepts_our_signature_only() -> None:
    [snippet] = [b for b in doc_blocks("python") if "def signature_ok" in b]
    namespace: dict = {}
    exec(snippet, namespace)
    body = orjson.dumps(RESULT.to_json("job-1"))
    ok = namespace["signature_ok"]
    assert ok(b"k", body, signature("k", body))
    assert not ok(b"k", body + b" ", signature("k", body))
    assert not ok(b"other", body, signature("k", body))


async def test_the_doc_receiver_gets_a_signed_delivery_once(tmp_path: Path) -> None:
    [receiver_code] = [b for b in doc_blocks("python") if "serve_forever" in b]
    port = free_port()
    script = tmp_path / "receiver.py"
    script.write_text(receiver_code.replace(f", {DOC_PORT})", f", {port})"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        cfg = doc_config(tmp_path, port)
        url = f"http://127.0.0.1:{port}/sandboxd"
        for _ in range(500):  # until it listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        store = await deliver(cfg, url, job_id="job-doc")
        again = await deliver(cfg, url, job_id="job-doc")  # a repeat: printed once
        unsigned = await deliver(dataclasses.replace(cfg, secret="wrong"), url,
                                 job_id="job-forged")
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.decode() == f"job-doc {RESULT.status.value}\n"
    finally:
        process.terminate()
        rest, _ = await process.communicate()
    assert rest == b""  # the repeat and the forged one printed nothing
    for s in (store, again):
        record = s.record(1)
        assert record is not None and record.delivered is True
    record = unsigned.record(1)
    assert record is not None and (record.delivered, record.error) == (False, "HTTP 401")
