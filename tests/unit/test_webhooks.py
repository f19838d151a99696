"""Webhooks without a network: configuration, URL validation, address classification,
the checking resolver, retry timing, and the dispatcher's backlog with scripted attempts.
Real deliveries over HTTP are in tests/e2e/test_webhooks.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import socket
from email.utils import formatdate
from pathlib import Path

import orjson
import pytest

from sandboxd.callbacks import Delivery
from sandboxd.config import (
    AllowedHost,
    Config,
    ConfigError,
    WebhookConfig,
    load,
    parse_allowed_host,
)
from sandboxd.model import Result, Status
from sandboxd.observer import Observer
from sandboxd.webhooks import (
    AddressRefused,
    CallbackClient,
    CheckingResolver,
    Dispatcher,
    MemoryDeliveryStore,
    Outcome,
    Verdict,
    address_refusal,
    classify,
    classify_status,
    parse_retry_after,
    retry_delay,
    signature,
    validate_callback_url,
)

ip = ipaddress.ip_address


def hooks(*allowed: str, **settings) -> WebhookConfig:
    return WebhookConfig(allowed_hosts=allowed, **settings)


# -- configuration ---------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    return path


def test_webhooks_are_off_by_default() -> None:
    config = Config().webhooks
    assert config.allowed_hosts == ()
    assert (config.timeout_s, config.max_attempts, config.concurrency) == (10.0, 5, 8)
    assert config.secret is None
    assert validate_callback_url("https://hooks.example.com/x", config) == (
        "webhooks are off: no host is on the allow-list (webhooks.allowed_hosts)")


def test_webhook_keys_load_from_toml(tmp_path: Path) -> None:
    config = load(write(tmp_path, """
[webhooks]
allowed_hosts = ["hooks.example.com", "127.0.0.1:9000", "[::1]"]
timeout_s = 2
max_attempts = 3
backoff_s = 0.5
max_backoff_s = 60
concurrency = 4
backlog = 50
secret = "s3cret"
""")).webhooks
    assert config.allowed_hosts == ("hooks.example.com", "127.0.0.1:9000", "[::1]")
    assert config.allowed == (AllowedHost("hooks.example.com", None, None),
                              AllowedHost(None, ip("127.0.0.1"), 9000),
                              AllowedHost(None, ip("::1"), None))
    assert config.timeout_s == 2.0 and isinstance(config.timeout_s, float)
    assert (config.max_attempts, config.backoff_s, config.max_backoff_s) == (3, 0.5, 60.0)
    assert (config.concurrency, config.backlog, config.secret) == (4, 50, "s3cret")


@pytest.mark.parametrize(("text", "message"), [
    ('allowed_hosts = "hooks.example.com"',
     r"webhooks\.allowed_hosts: expected an array of strings"),
    ("allowed_hosts = [1]", r"webhooks\.allowed_hosts: expected an array of strings"),
    ('allowed_hosts = ["ok.example", "*.example.com"]',
     r"webhooks\.allowed_hosts\[1\]: '\*\.example\.com': wildcards are not supported"),
    ('allowed_hosts = ["h:0"]', r"webhooks\.allowed_hosts\[0\]: 'h:0': the port must be"),
    ('allowed_hosts = ["http://h/"]', r"webhooks\.allowed_hosts\[0\]"),
    ("timeout_s = 0", r"webhooks\.timeout_s: must be more than 0"),
    ("timeout_s = 'fast'", r"webhooks\.timeout_s: expected float"),
    ("max_attempts = 0", r"webhooks\.max_attempts: must be from 1 to 100"),
    ("backoff_s = -1", r"webhooks\.backoff_s: must be from 0"),
    ("backoff_s = 10\nmax_backoff_s = 5", r"webhooks\.backoff_s: must be from 0 to webhooks\."),
    ("max_backoff_s = 100000", r"webhooks\.max_backoff_s: must be at most 86400"),
    ("concurrency = 0", r"webhooks\.concurrency: must be from 1 to 1024"),
    ("backlog = 0", r"webhooks\.backlog: must be at least 1"),
    ('secret = ""', r"webhooks\.secret: must not be empty"),
    ("secret = 3", r"webhooks\.secret: expected a string"),
    ("retries = 3", r"webhooks: unknown key\(s\) retries"),
])
def test_bad_webhook_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, f"[webhooks]\n{text}\n"))


@pytest.mark.parametrize(("entry", "parsed"), [
    ("Hooks.Example.COM", AllowedHost("hooks.example.com", None, None)),
    ("hooks.example.com.", AllowedHost("hooks.example.com", None, None)),
    ("hooks.example.com:8443", AllowedHost("hooks.example.com", None, 8443)),
    ("localhost", AllowedHost("localhost", None, None)),
    ("203.0.113.7", AllowedHost(None, ip("203.0.113.7"), None)),
    ("127.0.0.1:9000", AllowedHost(None, ip("127.0.0.1"), 9000)),
    ("::1", AllowedHost(None, ip("::1"), None)),
    ("[0:0::1]", AllowedHost(None, ip("::1"), None)),
    ("[fd00::5]:80", AllowedHost(None, ip("fd00::5"), 80)),
])
def test_allow_list_entries(entry: str, parsed: AllowedHost) -> None:
    assert parse_allowed_host(entry) == parsed


@pytest.mark.parametrize(("entry", "rule"), [
    ("", "is not a valid host name"),
    ("a..b", "is not a valid host name"),
    ("-a.example", "is not a valid host name"),
    ("bücher.de", "IDNA"),
    ("*.example.com", "wildcards"),
    ("127.1", "neither a canonical IP address nor a host name"),
    ("0127.0.0.1", "neither a canonical IP address nor a host name"),
    ("h:65536", "port must be a number from 1 to 65535"),
    ("[::1", "expected [IPv6] or [IPv6]:port"),
    ("[1.2.3.4]", "is not an IPv6 address"),
    ("fe80::1%eth0", "zone"),
    ("1::2::3", "is not an IPv6 address"),
])
def test_bad_allow_list_entries_say_why(entry: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule.replace("[", r"\[").replace("(", r"\(")):
        parse_allowed_host(entry)


# -- callback_url validation -------------------------------------------------------------

ALLOWED = hooks("hooks.example.com", "api.example.org:8443", "203.0.113.7", "[2001:db8::7]:9000",
                "127.0.0.1")


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/sandboxd",
    "http://hooks.example.com:8080/any/path?q=1",
    "https://HOOKS.Example.com./x",  # case and the root's trailing dot do not matter
    "https://api.example.org:8443/cb",
    "http://203.0.113.7/cb",
    "http://203.0.113.7:81/cb",
    "http://[2001:db8::7]:9000/cb",
    "http://[2001:db8:0::7]:9000/cb",  # the same address, written differently
    "http://127.0.0.1:5000/cb",
])
def test_allowed_urls(url: str) -> None:
    assert validate_callback_url(url, ALLOWED) is None


@pytest.mark.parametrize(("url", "rule"), [
    ("https://evil.example.com/x", "the host evil.example.com:443 is not on the allow-list "
                                   "(webhooks.allowed_hosts)"),
    ("https://sub.hooks.example.com/x", "sub.hooks.example.com:443 is not on the allow-list"),
    ("https://example.com/x", "is not on the allow-list"),
    ("https://api.example.org/cb", "api.example.org:443 is not on the allow-list"),
    ("http://[2001:db8::7]:9001/cb", "[2001:db8::7]:9001 is not on the allow-list"),
    ("http://127.0.0.2:5000/cb", "127.0.0.2:5000 is not on the allow-list"),
    ("http://localhost:5000/cb", "localhost:5000 is not on the allow-list"),
    ("http://127.1:5000/cb", "neither a canonical IP address nor a host name"),
    ("http://2130706433/cb", "neither a canonical IP address nor a host name"),
    ("ftp://hooks.example.com/x", "must be an absolute http:// or https:// URL"),
    ("hooks.example.com/x", "must be an absolute http:// or https:// URL"),
    ("//hooks.example.com/x", "must be an absolute http:// or https:// URL"),
    ("/relative", "must be an absolute http:// or https:// URL"),
    ("", "must be an absolute http:// or https:// URL"),
    ("http:///x", "must be an absolute http:// or https:// URL with a host"),
    ("http://:80/x", "is not a valid URL (Invalid URL: host is required"),
    ("https://user:pw@hooks.example.com/x", "must not carry a user name or password"),
    ("https://user@hooks.example.com/x", "must not carry a user name or password"),
    ("https://hooks.example.com:0/x", "the port must be a number from 1 to 65535"),
    ("https://hooks.example.com:99999/x", "is not a valid URL"),
    ("http://[::1/x", "is not a valid URL"),
    ("https://hooks.example.com/a b", "must not contain whitespace or control characters"),
    ("https://hooks.example.com/\x00", "must not contain whitespace or control characters"),
    ("https://hooks.example.com/\n", "must not contain whitespace or control characters"),
    ("http://[fe80::1%25eth0]/x", "zone"),
    ("https://hooks.example.com/" + "a" * 2048, "must be at most 2048 characters"),
])
def test_refused_urls_say_why(url: str, rule: str) -> None:
    problem = validate_callback_url(url, ALLOWED)
    assert problem is not None and rule in problem, problem


def test_a_name_entry_never_matches_an_address_and_back() -> None:
    assert validate_callback_url("http://localhost/", hooks("127.0.0.1")) is not None
    assert validate_callback_url("http://127.0.0.1/", hooks("localhost")) is not None


# -- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "reason"), [
    ("10.0.0.1", "a private address"),
    ("10.255.255.255", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.254", "a private address"),
    ("192.168.1.1", "a private address"),
    ("127.0.0.1", "a loopback address"),
    ("127.255.0.9", "a loopback address"),
    ("0.0.0.0", "in 0.0.0.0/8 (this host)"),
    ("169.254.1.1", "a link-local address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address"),
    ("224.0.0.1", "a multicast address"),
    ("255.255.255.255", "a reserved address"),
    ("198.18.0.1", "a benchmarking address"),
    ("::1", "a loopback address"),
    ("::", "the unspecified address"),
    ("fc00::1", "a private (unique local) address"),
    ("fdff:ffff::1", "a private (unique local) address"),
    ("fe80::1", "a link-local address"),
    ("febf::1", "a link-local address"),
    ("fec0::1", "a site-local address"),
    ("ff02::1", "a multicast address"),
    ("2001::1", "a reserved address (IETF protocol assignments, Teredo)"),
    ("::7f00:1", "a deprecated IPv4-compatible address"),
    # IPv6 forms of an IPv4 address are judged by that address.
    ("::ffff:127.0.0.1", "a loopback address (as 127.0.0.1)"),
    ("::ffff:10.1.2.3", "a private address (as 10.1.2.3)"),
    ("::ffff:169.254.169.254", "a cloud metadata address (as 169.254.169.254)"),
    ("64:ff9b::7f00:1", "a loopback address (as 127.0.0.1)"),
    ("2002:c0a8:101::1", "a private address (as 192.168.1.1)"),
    # Metadata endpoints, public ones included.
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("168.63.129.16", "a cloud metadata address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("192.0.0.192", "a cloud metadata address"),
])
def test_non_public_addresses_are_classified(address: str, reason: str) -> None:
    assert classify(ip(address)) == reason


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "11.0.0.1", "169.255.0.1",
    "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
])
def test_public_addresses_pass(address: str) -> None:
    assert classify(ip(address)) is None
    assert address_refusal(ip(address), 443, ()) is None


def test_allow_listing_an_address_unlocks_exactly_that_address() -> None:
    allowed = hooks("127.0.0.1", "10.0.0.5:8080", "169.254.169.254").allowed
    assert address_refusal(ip("127.0.0.1"), 5000, allowed) is None
    assert address_refusal(ip("169.254.169.254"), 80, allowed) is None
    assert address_refusal(ip("10.0.0.5"), 8080, allowed) is None
    refusals = {
        "127.0.0.2": 5000,
        "::1": 5000,  # another loopback address
        "::ffff:127.0.0.1": 5000,  # another spelling is another address
        "10.0.0.6": 8080,
        "169.254.169.253": 80,
    }
    for address, port in refusals.items():
        problem = address_refusal(ip(address), port, allowed)
        assert problem is not None and "not on webhooks.allowed_hosts" in problem, address
    problem = address_refusal(ip("10.0.0.5"), 8081, allowed)  # listed for 8080 only
    assert problem == ("10.0.0.5 is a private address, and that address is not on "
                       "webhooks.allowed_hosts")


def getaddrinfo_returning(*addresses: str):
    calls: list[tuple[str, int]] = []

    async def fake(host: str, port: int, *, type: int, family: int):
        calls.append((host, port))
        out = []
        for a in addresses:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr = (a, port, 0, 0) if fam == socket.AF_INET6 else (a, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


async def test_resolver_returns_only_permitted_addresses() -> None:
    lookup = getaddrinfo_returning("10.0.0.1", "93.184.216.34", "::1", "2606:2800::1")
    resolver = CheckingResolver(hooks("hooks.example.com").allowed, lookup)
    results = await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert [(r["host"], r["port"], r["hostname"]) for r in results] == [
        ("93.184.216.34", 443, "hooks.example.com"), ("2606:2800::1", 443, "hooks.example.com")]
    assert lookup.calls == [("hooks.example.com", 443)]  # type: ignore[attr-defined]


async def test_resolver_refuses_a_name_that_resolves_only_to_private_addresses() -> None:
    resolver = CheckingResolver(hooks("hooks.example.com").allowed,
                                getaddrinfo_returning("10.1.2.3", "fd00::3"))
    with pytest.raises(AddressRefused, match=r"hooks\.example\.com resolves to no address a "
                       r"callback may use: 10\.1\.2\.3 is a private address"):
        await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)


async def test_resolver_permits_a_private_address_that_is_itself_listed() -> None:
    resolver = CheckingResolver(hooks("hooks.internal", "10.1.2.3").allowed,
                                getaddrinfo_returning("10.1.2.3", "10.1.2.4"))
    results = await resolver.resolve("hooks.internal", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["10.1.2.3"]


# -- attempts: status codes, Retry-After, backoff, signature -------------------------------


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (204, Verdict.DELIVERED),
    (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY), (429, Verdict.RETRY),
    (400, Verdict.GIVE_UP), (401, Verdict.GIVE_UP), (404, Verdict.GIVE_UP),
    (410, Verdict.GIVE_UP), (301, Verdict.GIVE_UP), (307, Verdict.GIVE_UP),
])
def test_status_codes(status: int, verdict: Verdict) -> None:
    outcome = classify_status(status, None)
    assert outcome.verdict is verdict
    if verdict is not Verdict.DELIVERED:
        assert outcome.error is not None and f"HTTP {status}" in outcome.error


def test_retry_after_is_read_from_retryable_responses() -> None:
    assert classify_status(429, "7").retry_after_s == 7.0
    assert classify_status(503, "120").retry_after_s == 120.0
    assert classify_status(500, None).retry_after_s is None


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after(" 30 ", now) == 30.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5", "Mon, 32 Foo 2023 99:00:00 GMT"):
        assert parse_retry_after(bad, now) is None, bad


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    config = hooks("h.example", backoff_s=1.0, max_backoff_s=10.0)
    rng = random.Random(7)
    for attempts, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)]:
        delays = [retry_delay(attempts, config, None, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered, not one fixed value


def test_retry_after_is_honoured_within_the_cap() -> None:
    config = hooks("h.example", backoff_s=1.0, max_backoff_s=60.0)
    rng = random.Random(1)
    assert retry_delay(1, config, 30.0, rng) == 30.0
    assert retry_delay(1, config, 3600.0, rng) == 60.0
    assert 0.5 <= retry_delay(1, config, 0.0, rng) <= 1.0  # never sooner than the backoff
    assert retry_delay(3, hooks("h.example", backoff_s=0.0), None, rng) == 0.0


def test_signature_is_hmac_sha256_of_the_body() -> None:
    # RFC 4231, test case 2.
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


# -- the in-memory store -------------------------------------------------------------------


async def test_memory_store_keeps_pending_until_finished() -> None:
    store = MemoryDeliveryStore(finished_kept=1)
    a = await store.add_delivery("job-a", "http://h.example/", b"{}")
    b = await store.add_delivery("job-b", "http://h.example/", b"[]")
    assert a != b
    await store.record_attempt(a, 1, "HTTP 500")
    assert await store.pending_deliveries() == [
        Delivery(a, "job-a", "http://h.example/", b"{}", 1),
        Delivery(b, "job-b", "http://h.example/", b"[]", 0)]
    await store.finish_delivery(a, delivered=True, attempts=2, error=None)
    assert [d.id for d in await store.pending_deliveries()] == [b]
    record = store.record(a)
    assert record is not None and (record.delivered, record.attempts, record.error) == (
        True, 2, None)
    await store.finish_delivery(b, delivered=False, attempts=1, error="HTTP 404")
    assert store.record(a) is None  # only the last `finished_kept` stay readable
    assert await store.pending_deliveries() == []
    await store.record_attempt(a, 3, "late")  # unknown ids are ignored


# -- the dispatcher, attempts scripted ---------------------------------------------------


class ScriptedClient(CallbackClient):
    """Attempts answered from a script instead of the network; each attempt waits until
    the test lets it go when `gate` is given."""

    def __init__(self, config: WebhookConfig, script, gate: asyncio.Event | None = None):
        super().__init__(config)
        self.script = script
        self.gate = gate
        self.dispatcher: Dispatcher | None = None
        self.attempted: list[tuple[int, int]] = []  # (delivery id, attempt number)
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_held = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def post(self, delivery: Delivery) -> Outcome:
        self.attempted.append((delivery.id, delivery.attempts + 1))
        assert self.dispatcher is not None
        self.max_held = max(self.max_held, self.dispatcher.held)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            return self.script(delivery)
        finally:
            self.in_flight -= 1


def scripted(config: WebhookConfig, store, script, gate: asyncio.Event | None = None,
             **kw) -> tuple[Dispatcher, ScriptedClient]:
    client = ScriptedClient(config, script, gate)
    dispatcher = Dispatcher(config, store, client=client, **kw)
    client.dispatcher = dispatcher
    return dispatcher, client


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[bool, bool]] = []

    def webhook_delivery(self, ok: bool, final: bool) -> None:
        self.events.append((ok, final))


RESULT = Result(status=Status.ACCEPTED, stdout="hi\n", exit_code=0, time_ms=1)
FAST = {"backoff_s": 0.0, "max_backoff_s": 0.0}


async def idle(dispatcher: Dispatcher) -> None:
    await asyncio.wait_for(dispatcher.wait_idle(), 30)


async def test_retries_until_max_attempts_then_gives_up() -> None:
    store, observer = MemoryDeliveryStore(), Recorder()
    d, c = scripted(hooks("h.example", max_attempts=3, **FAST), store,
                           lambda _: Outcome(Verdict.RETRY, "HTTP 502"), observer=observer)
    await d.start()
    d.notify("job-1", "http://h.example/", RESULT)
    await idle(d)
    await d.stop(1)
    assert c.attempted == [(1, 1), (1, 2), (1, 3)]
    assert observer.events == [(False, False), (False, False), (False, True)]
    record = store.record(1)
    assert record is not None
    assert (record.delivered, record.attempts) == (False, 3)
    assert record.error == "gave up after 3 attempts: HTTP 502"
    assert orjson.loads(record.body) == RESULT.to_json("job-1")


async def test_a_final_failure_is_not_retried() -> None:
    store, observer = MemoryDeliveryStore(), Recorder()
    d, c = scripted(hooks("h.example", **FAST), store,
                           lambda _: Outcome(Verdict.GIVE_UP, "HTTP 404"), observer=observer)
    await d.start()
    d.notify("job-1", "http://h.example/", RESULT)
    await idle(d)
    await d.stop(1)
    assert c.attempted == [(1, 1)] and observer.events == [(False, True)]
    record = store.record(1)
    assert record is not None and (record.delivered, record.error) == (False, "HTTP 404")


async def test_backlog_bounds_memory_and_the_store_holds_the_rest() -> None:
    store = MemoryDeliveryStore()
    gate = asyncio.Event()
    d, c = scripted(hooks("h.example", backlog=3, concurrency=2, **FAST), store,
                           lambda _: Outcome(Verdict.DELIVERED), gate=gate)
    await d.start()
    for i in range(20):
        d.notify(f"job-{i}", "http://h.example/", RESULT)
    for _ in range(50):  # let every notification reach the store
        await asyncio.sleep(0)
    assert len(await store.pending_deliveries()) == 20
    assert d.held == 3  # the rest waits in the store only
    gate.set()
    await idle(d)
    await d.stop(1)
    assert sorted(i for i, _ in c.attempted) == list(range(1, 21))  # each exactly once
    assert c.max_held <= 3 and c.max_in_flight <= 2
    assert all(r.delivered for r in store.records()) and len(store.records()) == 20


async def test_start_resumes_what_the_store_holds() -> None:
    store = MemoryDeliveryStore()
    first = await store.add_delivery("job-1", "http://h.example/", b"{}")
    await store.record_attempt(first, 2, "HTTP 500")
    second = await store.add_delivery("job-2", "http://h.example/", b"{}")
    done = await store.add_delivery("job-3", "http://h.example/", b"{}")
    await store.finish_delivery(done, delivered=True, attempts=1, error=None)
    d, c = scripted(hooks("h.example", **FAST), store,
                           lambda _: Outcome(Verdict.DELIVERED))
    await d.start()
    await idle(d)
    await d.stop(1)
    assert c.attempted == [(first, 3), (second, 1)]  # oldest first, counts carried on
    assert await store.pending_deliveries() == []


async def test_stop_leaves_unfinished_deliveries_pending() -> None:
    store = MemoryDeliveryStore()
    gate = asyncio.Event()  # never set: attempts hang until the deadline cuts them
    d, c = scripted(hooks("h.example", concurrency=1, **FAST), store,
                           lambda _: Outcome(Verdict.DELIVERED), gate=gate)
    await d.start()
    d.notify("job-1", "http://h.example/", RESULT)
    d.notify("job-2", "http://h.example/", RESULT)
    while not c.attempted:
        await asyncio.sleep(0)
    await d.stop(0.05)
    assert c.attempted == [(1, 1)]  # the second was never started
    assert [p.id for p in await store.pending_deliveries()] == [1, 2]
    d.notify("job-3", "http://h.example/", RESULT)  # after stop: refused, never raises
    assert len(await store.pending_deliveries()) == 2


async def test_a_retry_waiting_at_stop_stays_pending_with_its_attempts() -> None:
    store = MemoryDeliveryStore()
    d, c = scripted(hooks("h.example", backoff_s=3600, max_backoff_s=3600), store,
                           lambda _: Outcome(Verdict.RETRY, "HTTP 503"))
    await d.start()
    d.notify("job-1", "http://h.example/", RESULT)
    while not d.retries_waiting:
        await asyncio.sleep(0)
    await d.stop(1)
    assert await store.pending_deliveries() == [
        Delivery(1, "job-1", "http://h.example/", orjson.dumps(RESULT.to_json("job-1")), 1)]


class FailingStore(MemoryDeliveryStore):
    async def add_delivery(self, job_id: str, url: str, body: bytes,
                           method: str = "POST") -> int:
        raise OSError("disk full")


async def test_a_store_failure_is_logged_never_raised(caplog) -> None:
    d, c = scripted(hooks("h.example", **FAST), FailingStore(),
                           lambda _: Outcome(Verdict.DELIVERED))
    await d.start()
    d.notify("job-1", "http://h.example/", RESULT)
    await idle(d)
    await d.stop(1)
    assert c.attempted == []
    assert "webhook for job job-1 not recorded: the store failed" in caplog.text


def test_hmac_header_matches_what_a_receiver_computes() -> None:
    body = orjson.dumps(RESULT.to_json("job-1"))
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature("k", body) == f"sha256={expected}"


class SnapshotThenYieldStore(MemoryDeliveryStore):
    """Takes its snapshot of pending deliveries, sets `snapshot_taken`, then lets other
    tasks run before it answers (as a journal thread answers late)."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_taken = asyncio.Event()

    async def pending_deliveries(self) -> list[Delivery]:
        snapshot = await super().pending_deliveries()
        self.snapshot_taken.set()
        for _ in range(20):
            await asyncio.sleep(0)
        return snapshot


async def test_a_delivery_finished_while_a_refill_reads_is_not_sent_again() -> None:
    store = SnapshotThenYieldStore()
    d, c = scripted(hooks("h.example", backlog=2, concurrency=2, **FAST), store,
                           lambda _: Outcome(Verdict.DELIVERED))
    await d.start()
    store.snapshot_taken.clear()  # start() read the store once already
    plain_post = c.post

    async def post(delivery: Delivery) -> Outcome:
        if delivery.id == 2:  # still in flight when the refill takes its snapshot
            await store.snapshot_taken.wait()
        return await plain_post(delivery)

    c.post = post  # type: ignore[method-assign]
    for i in range(6):
        d.notify(f"job-{i}", "http://h.example/", RESULT)
    await idle(d)
    await d.stop(1)
    attempted = [i for i, _ in c.attempted]
    assert sorted(attempted) == list(range(1, 7)), attempted


@pytest.mark.parametrize("allowed", [("127.0.0.1",), ("10.0.0.5:8080",), ("::1", "fd00::1"),
                                     ("169.254.169.254",), ("203.0.113.7:443",)])
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "10.0.0.5", "[::1]", "[fd00::1]",
                                  "[::ffff:127.0.0.1]", "169.254.169.254", "203.0.113.7"])
@pytest.mark.parametrize("port", [443, 8080])
def test_an_address_url_that_validates_may_be_connected_to(allowed, host, port) -> None:
    """The dispatcher connects to an address literal without a resolver: it relies on
    validation permitting only what `address_refusal` permits."""
    config = hooks(*allowed)
    if validate_callback_url(f"https://{host}:{port}/", config) is None:
        assert address_refusal(ip(host.strip("[]")), port, config.allowed) is None
