"""Webhooks: a finished job's result POSTed to its `callback_url`, reliably and safely.

A submission's `callback_format` picks the body and the method (`CallbackShape`): the
native result POSTed, or, for the Judge0 API, Judge0's submission object PUT (its
renderer is handed in by server.py, so this module knows nothing of the Judge0 API).
The body is rendered once, when the job finishes, and stored with the delivery.

Safety first: sandboxd runs next to internal services, so a callback must not become a
way to reach them (SSRF). A URL is accepted only for a host on `webhooks.allowed_hosts`;
at each attempt the name is resolved once, every address that is loopback, private,
link-local, a cloud metadata endpoint or otherwise not public is dropped unless that
exact address is itself on the allow-list, and the connection goes to an address that
was checked (the resolver below is the connector's only resolver, so nothing resolves
the name a second time: DNS rebinding cannot swap the address). Redirects are never
followed, proxies from the environment never used, cookies never kept.

Reliability: every delivery is recorded in a `DeliveryStore` (the journal, or memory)
before its first attempt; a failed attempt is recorded and retried with exponential
backoff and jitter on connection errors, timeouts, 5xx and 429 (honouring Retry-After
up to `max_backoff_s`), up to `max_attempts`; a 2xx is delivered, another status a
final failure. After a restart `Dispatcher.start()` resumes what the store still holds.
Delivery is at least once: an attempt cut short by a crash is made again, so receivers
deduplicate on the submission id (`X-Sandboxd-Submission`). docs/WEBHOOKS.md is the
user's side of all this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import enum
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sandboxd import __version__
from sandboxd.callbacks import Delivery, DeliveryStore
from sandboxd.config import AllowedHost, IPAddress, WebhookConfig, host_name_problem
from sandboxd.model import CallbackFormat, Result
from sandboxd.observer import Observer

log = logging.getLogger(__name__)

ALLOW_LIST_KEY = "webhooks.allowed_hosts"
MAX_URL_LENGTH = 2048
USER_AGENT = f"sandboxd/{__version__}"
SIGNATURE_HEADER = "X-Sandboxd-Signature"

# Endpoints that hand out cloud credentials. Most are link-local or private anyway; the
# Azure one (168.63.129.16) is a public address, so it needs this list.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task credentials
    "169.254.170.23",  # AWS EKS pod identity
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    "fd20:ce::254",  # GCP metadata over IPv6
    "168.63.129.16",  # Azure wire server
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
))

_net = ipaddress.ip_network
# Not public, with the reason a refusal names; the first match wins. ipaddress's own
# `is_global` is the last net, but its tables differ between Python releases.
REFUSED_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_net("0.0.0.0/8"), "in 0.0.0.0/8 (this host)"),
    (_net("127.0.0.0/8"), "a loopback address"),
    (_net("10.0.0.0/8"), "a private address"),
    (_net("172.16.0.0/12"), "a private address"),
    (_net("192.168.0.0/16"), "a private address"),
    (_net("169.254.0.0/16"), "a link-local address"),
    (_net("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (_net("192.0.0.0/24"), "a reserved address (IETF protocol assignments)"),
    (_net("192.0.2.0/24"), "a documentation address"),
    (_net("198.51.100.0/24"), "a documentation address"),
    (_net("203.0.113.0/24"), "a documentation address"),
    (_net("198.18.0.0/15"), "a benchmarking address"),
    (_net("224.0.0.0/4"), "a multicast address"),
    (_net("240.0.0.0/4"), "a reserved address"),
    (_net("::/128"), "the unspecified address"),
    (_net("::1/128"), "a loopback address"),
    (_net("::/96"), "a deprecated IPv4-compatible address"),
    (_net("fc00::/7"), "a private (unique local) address"),
    (_net("fe80::/10"), "a link-local address"),
    (_net("fec0::/10"), "a site-local address"),
    (_net("ff00::/8"), "a multicast address"),
    (_net("100::/64"), "a discard address"),
    (_net("2001:db8::/32"), "a documentation address"),
    (_net("2001::/23"), "a reserved address (IETF protocol assignments, Teredo)"),
    (_net("64:ff9b:1::/48"), "a private (local-use NAT64) address"),
)

# IPv6 addresses that reach an IPv4 address through a translator: that address decides.
_NAT64 = _net("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (::ffff:a.b.c.d),
    NAT64 (64:ff9b::a.b.c.d) or 6to4 (2002:AABB:CCDD::)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def classify(address: IPAddress) -> str | None:
    """Why a callback must not go to `address` ("a loopback address", ...), or None
    for a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = classify(inner)
        return f"{reason} (as {inner})" if reason else None
    for network, reason in REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not a public address"
    return None


def address_refusal(address: IPAddress, port: int, allowed: Iterable[AllowedHost]) -> str | None:
    """Why no callback may connect to `address`:`port`, or None. A non-public address is
    permitted only when that exact address (and port, if the entry names one) is listed."""
    reason = classify(address)
    if reason is None:
        return None
    for entry in allowed:
        if entry.address == address and entry.port in (None, port):
            return None
    return f"{address} is {reason}, and that address is not on {ALLOW_LIST_KEY}"


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def validate_callback_url(url: str, config: WebhookConfig) -> str | None:
    """Why `url` cannot be a callback (the rule it breaks, for a 400), or None.

    The message names the rule, not the field: the API prefixes the field's path.
    Whether the host's addresses are acceptable is decided at delivery time, when the
    name is resolved."""
    if not config.allowed_hosts:
        return f"webhooks are off: no host is on the allow-list ({ALLOW_LIST_KEY})"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace or control characters"
    try:
        parsed = URL(url)
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, TypeError) as e:
        return f"is not a valid URL ({e})"
    if parsed.scheme not in ("http", "https") or not parsed.is_absolute() or not host:
        return "must be an absolute http:// or https:// URL with a host"
    if parsed.raw_user is not None or parsed.raw_password is not None:
        return "must not carry a user name or password"
    if not port:
        return "the port must be a number from 1 to 65535"
    address = _literal_address(host)
    if address is None:
        if "%" in host:
            return "an address with a zone (%...) is not supported"
        host = host.rstrip(".")
        problem = host_name_problem(host)
        if problem:
            return f"the host {host!r} {problem}"
    elif isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return "an address with a zone (%...) is not supported"
    for entry in config.allowed:
        same_host = entry.address == address if address is not None else entry.name == host
        if same_host and entry.port in (None, port):
            return None
    shown = f"[{host}]" if ":" in host else host
    return f"the host {shown}:{port} is not on the allow-list ({ALLOW_LIST_KEY})"


class AddressRefused(OSError):
    """Every address of a callback's host is one sandboxd must not connect to."""


GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class CheckingResolver(AbstractResolver):
    """The dispatcher's only resolver: resolves a name once and returns only the
    addresses `address_refusal` permits, so the connector connects to nothing else."""

    def __init__(self, allowed: tuple[AllowedHost, ...], getaddrinfo: GetAddrInfo | None = None):
        self._allowed = allowed
        self._getaddrinfo = getaddrinfo

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        lookup = self._getaddrinfo or asyncio.get_running_loop().getaddrinfo
        infos = await lookup(host, port, type=socket.SOCK_STREAM, family=family)
        permitted: list[ResolveResult] = []
        refusals: list[str] = []
        for info_family, _, proto, _, sockaddr in infos:
            if info_family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(sockaddr[0])
            refusal = address_refusal(address, port, self._allowed)
            if refusal is not None:
                refusals.append(refusal)
                continue
            permitted.append(ResolveResult(
                hostname=host, host=str(address), port=port, family=info_family, proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not permitted:
            why = refusals[0] if refusals else "it has no IPv4 or IPv6 address"
            raise AddressRefused(f"{host} resolves to no address a callback may use: {why}")
        return permitted

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class CallbackShape:
    """How a callback of one `CallbackFormat` is sent: the HTTP method, and the body
    rendered from the job's id and final result."""

    method: str  # "POST" or "PUT" (the journal's deliveries.method accepts only these)
    render: Callable[[str, Result], bytes]


def native_body(job_id: str, result: Result) -> bytes:
    """The native API's callback body: the result as GET /submissions/{id} shows it."""
    return orjson.dumps(result.to_json(job_id))


NATIVE_SHAPE = CallbackShape("POST", native_body)


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # worth another attempt
    GIVE_UP = "give up"  # another attempt would fare no better


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    verdict: Verdict
    error: str | None = None
    retry_after_s: float | None = None  # the receiver's Retry-After, in seconds


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; a date without a zone is not one
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempts: int, config: WebhookConfig, retry_after_s: float | None,
                rng: random.Random) -> float:
    """Seconds before attempt `attempts + 1`: `backoff_s` doubled per attempt made, at
    most `max_backoff_s`, with "equal jitter" (half fixed, half random) so receivers that
    failed together are not hit together again; never less than Retry-After, which is
    itself capped by `max_backoff_s`."""
    base = min(config.max_backoff_s, config.backoff_s * 2 ** (attempts - 1))
    delay = base / 2 + rng.uniform(0, base / 2)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, config.max_backoff_s)


def signature(secret: str, body: bytes) -> str:
    """The `X-Sandboxd-Signature` value: HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def classify_status(status: int, retry_after: str | None) -> Outcome:
    if 200 <= status < 300:
        return Outcome(Verdict.DELIVERED)
    if status == 429 or status >= 500:
        return Outcome(Verdict.RETRY, f"HTTP {status}", parse_retry_after(retry_after))
    if 300 <= status < 400:
        return Outcome(Verdict.GIVE_UP, f"HTTP {status}: redirects are not followed")
    return Outcome(Verdict.GIVE_UP, f"HTTP {status}")


@dataclass
class DeliveryRecord:
    """A delivery as `MemoryDeliveryStore` keeps it; `delivered` None while pending."""

    id: int
    job_id: str
    url: str
    body: bytes
    method: str = "POST"
    attempts: int = 0
    error: str | None = None
    delivered: bool | None = None


class MemoryDeliveryStore:
    """A `DeliveryStore` in memory (`--journal none`, tests): pending deliveries are kept
    until finished; the last `finished_kept` finished ones stay readable via `record`."""

    def __init__(self, finished_kept: int = 1000):
        self._next_id = 1
        self._pending: OrderedDict[int, DeliveryRecord] = OrderedDict()
        self._finished: OrderedDict[int, DeliveryRecord] = OrderedDict()
        self._finished_kept = finished_kept

    async def add_delivery(self, job_id: str, url: str, body: bytes,
                           method: str = "POST") -> int:
        delivery_id = self._next_id
        self._next_id += 1
        self._pending[delivery_id] = DeliveryRecord(delivery_id, job_id, url, body, method)
        return delivery_id

    async def record_attempt(self, delivery_id: int, attempts: int, error: str | None) -> None:
        record = self._pending.get(delivery_id)
        if record is not None:
            record.attempts, record.error = attempts, error

    async def finish_delivery(self, delivery_id: int, *, delivered: bool, attempts: int,
                              error: str | None) -> None:
        record = self._pending.pop(delivery_id, None)
        if record is None:
            return
        record.attempts, record.error, record.delivered = attempts, error, delivered
        self._finished[delivery_id] = record
        while len(self._finished) > self._finished_kept:
            self._finished.popitem(last=False)

    async def pending_deliveries(self) -> list[Delivery]:
        return [Delivery(r.id, r.job_id, r.url, r.body, r.attempts, r.method)
                for r in self._pending.values()]

    def record(self, delivery_id: int) -> DeliveryRecord | None:
        """A pending or recently finished delivery, as stored."""
        return self._pending.get(delivery_id) or self._finished.get(delivery_id)

    def records(self) -> list[DeliveryRecord]:
        """Every delivery still known, by id."""
        return sorted([*self._pending.values(), *self._finished.values()], key=lambda r: r.id)


class CallbackClient:
    """The HTTP side: one request of a delivery (its method) per `post`, over a client
    session whose only resolver is `CheckingResolver`, so it connects to checked
    addresses only."""

    def __init__(self, config: WebhookConfig, getaddrinfo: GetAddrInfo | None = None):
        """`getaddrinfo` replaces the event loop's (tests)."""
        self._config = config
        self._getaddrinfo = getaddrinfo
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckingResolver(self._config.allowed, self._getaddrinfo),
            use_dns_cache=False, limit=self._config.concurrency, family=socket.AF_UNSPEC)
        # No cookie jar: one receiver's cookies must never reach another. trust_env off:
        # an environment proxy would resolve (and reach) what we refused.
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, delivery: Delivery) -> Outcome:
        """One attempt (never raises for anything the network or the receiver does)."""
        problem = validate_callback_url(delivery.url, self._config)
        if problem is not None:  # the allow-list may have changed since it was accepted
            return Outcome(Verdict.GIVE_UP, f"refused: {problem}")
        # The connector resolves a name through CheckingResolver but takes an address
        # literal as it is: that needs no other check, because validate_callback_url let
        # it through only if that exact address (and port) is listed, which is also what
        # permits a non-public address.
        assert self._session is not None, "open() first"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Sandboxd-Submission": delivery.job_id,
            "X-Sandboxd-Delivery": str(delivery.id),
            "X-Sandboxd-Attempt": str(delivery.attempts + 1),
        }
        if self._config.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._config.secret, delivery.body)
        try:
            async with self._session.request(delivery.method, delivery.url,
                                             data=delivery.body, headers=headers,
                                             allow_redirects=False) as response:
                return classify_status(response.status, response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, AddressRefused):
                return Outcome(Verdict.GIVE_UP, f"refused: {e.os_error}")
            return Outcome(Verdict.RETRY, f"cannot connect: {e.os_error}")
        except TimeoutError:
            return Outcome(Verdict.RETRY, f"no response within {self._config.timeout_s:g} s")
        except aiohttp.InvalidURL as e:
            return Outcome(Verdict.GIVE_UP, f"invalid URL: {e}")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(Verdict.RETRY, f"request failed: {type(e).__name__}: {e}")


Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class Backlog:
    """The deliveries held in memory — queued, in flight or waiting for a retry — at most
    `limit`. Beyond it, new ones wait in the store only, and are loaded from there, oldest
    first, once the backlog has drained to half."""

    def __init__(self, store: DeliveryStore, limit: int, spawn: Spawn,
                 on_change: Callable[[], None]):
        """`spawn` runs a refill in the background; `on_change` hears of every release."""
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()  # ready for an attempt
        self._store = store
        self._limit = limit
        self._spawn = spawn
        self._on_change = on_change
        self._held: dict[int, Delivery] = {}
        # Deliveries were left in the store only: load them when there is room.
        self._overflow = False
        self._refilling = False
        # Ids released while a refill reads the store: its snapshot may still list them.
        self._released_during_refill: set[int] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._held)

    @property
    def busy(self) -> bool:
        """Something is held, or waits in the store to be loaded."""
        return bool(self._held or self._overflow or self._refilling)

    def offer(self, delivery: Delivery) -> None:
        """A new delivery, already in the store: held, unless older ones wait there."""
        if self._overflow or not self._admit(delivery):
            self._overflow = True
            self._maybe_refill()

    def hold(self, delivery: Delivery) -> None:
        """Keep `delivery` (its new attempt count) while it waits for its retry."""
        self._held[delivery.id] = delivery

    def release(self, delivery: Delivery) -> None:
        """`delivery` is finished, or left to the store (shutdown)."""
        self._held.pop(delivery.id, None)
        if self._refilling:
            self._released_during_refill.add(delivery.id)
        self._maybe_refill()
        self._on_change()

    async def load(self) -> None:
        """Load what the store holds now (on start); its errors are the caller's."""
        self._overflow = self._refilling = True
        await self._refill()

    def _admit(self, delivery: Delivery) -> bool:
        if delivery.id in self._held:
            return True
        if len(self._held) >= self._limit:
            return False
        self._held[delivery.id] = delivery
        self.queue.put_nowait(delivery)
        return True

    def _maybe_refill(self) -> None:
        if (self._overflow and not self._refilling and not self.closed
                and len(self._held) <= self._limit // 2):
            self._refilling = True
            self._spawn(self._refill(), "webhook-refill")

    async def _refill(self) -> None:
        try:
            while self._overflow and not self.closed:
                self._overflow = False  # set again by whatever is left behind meanwhile
                self._released_during_refill.clear()
                pending = await self._store.pending_deliveries()
                released = self._released_during_refill
                for delivery in pending:
                    if delivery.id not in released and not self._admit(delivery):
                        self._overflow = True
                        return  # full: the next release comes back here
        except Exception:
            self._overflow = True
            log.exception("webhooks: cannot read pending deliveries from the store")
            raise
        finally:
            self._refilling = False
            self._released_during_refill = set()
            self._on_change()


class Dispatcher:
    """Delivers callbacks (implements `callbacks.CallbackNotifier`): records each in the
    store, holds at most `backlog` in memory (`Backlog`), runs at most `concurrency`
    attempts at once through its `CallbackClient`, and schedules the retries. Stop the
    service before the dispatcher: a job finishing while the service drains still has
    its callback recorded.
    """

    def __init__(self, config: WebhookConfig, store: DeliveryStore, *,
                 observer: Observer | None = None, client: CallbackClient | None = None,
                 rng: random.Random | None = None,
                 shapes: Mapping[CallbackFormat, CallbackShape] | None = None):
        """`client` makes the attempts (default: a `CallbackClient` of `config`); `rng`
        draws the jitter; `shapes` adds callback formats to the native one."""
        self._config = config
        self._store = store
        self._observer = observer or Observer()
        self._client = client or CallbackClient(config)
        self._rng = rng or random.Random()
        self._shapes = {CallbackFormat.NATIVE: NATIVE_SHAPE, **(shapes or {})}
        self._backlog = Backlog(store, config.backlog, self._spawn, self._check_idle)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._retry_timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # recording new ones, attempts, refills
        self._recording = 0  # new deliveries being written to the store
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        """Deliveries in memory: queued, in flight or waiting for a retry."""
        return len(self._backlog)

    @property
    def retries_waiting(self) -> int:
        return len(self._retry_timers)

    # -- the CallbackNotifier side --------------------------------------------------

    def notify(self, job_id: str, url: str, result: Result,
               callback_format: CallbackFormat = CallbackFormat.NATIVE) -> None:
        """Record a callback and deliver it in the background; never blocks or raises."""
        if self._stopping:
            log.error("webhook for job %s not recorded: the dispatcher has stopped", job_id)
            return
        shape = self._shapes.get(callback_format)
        if shape is None:
            log.error("webhook for job %s not recorded: no renderer for callback format %r",
                      job_id, str(callback_format))
            return
        try:
            body = shape.render(job_id, result)
        except (TypeError, ValueError, KeyError, orjson.JSONEncodeError) as e:
            log.error("webhook for job %s not recorded: result not serializable: %s", job_id, e)
            return
        self._recording += 1
        self._idle.clear()
        self._spawn(self._record_new(job_id, url, body, shape.method), "webhook-record")

    async def _record_new(self, job_id: str, url: str, body: bytes, method: str) -> None:
        try:
            delivery_id = await self._store.add_delivery(job_id, url, body, method)
            self._backlog.offer(Delivery(delivery_id, job_id, url, body, attempts=0,
                                         method=method))
        except Exception:
            log.exception("webhook for job %s not recorded: the store failed", job_id)
        finally:
            self._recording -= 1
            self._check_idle()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and resume the deliveries the store holds."""
        await self._client.open()
        self._pump_task = asyncio.create_task(self._pump(), name="webhook-pump")
        self._idle.clear()
        await self._backlog.load()  # a store that cannot be read: the caller's start-up error

    async def stop(self, deadline_s: float) -> None:
        """Let attempts in flight finish for up to `deadline_s`, then cut them short.
        Everything not finished stays pending in the store for the next start."""
        self._stopping = self._backlog.closed = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        for timer in self._retry_timers.values():
            timer.cancel()
        self._retry_timers.clear()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=deadline_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("webhooks: %d attempt(s) cut short by the shutdown deadline; "
                            "they are made again after the next start", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        await self._client.close()

    async def wait_idle(self) -> None:
        """Until nothing is left to deliver (everything delivered or given up on)."""
        await self._idle.wait()

    def _check_idle(self) -> None:
        if not (self._backlog.busy or self._recording):
            self._idle.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._idle.clear()
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("webhooks: %s failed: %r", name, t.exception())

        task.add_done_callback(done)

    # -- attempts -------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                delivery = await self._backlog.queue.get()
            except BaseException:
                self._slots.release()
                raise
            self._spawn(self._deliver(delivery), "webhook-attempt")

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            outcome = await self._client.post(delivery)
        except Exception as e:  # a bug here must not strand the delivery
            log.exception("webhook delivery %d: attempt failed", delivery.id)
            outcome = Outcome(Verdict.RETRY, f"internal error: {e!r}")
        finally:
            self._slots.release()
        await self._settle(delivery, outcome)

    async def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Record an attempt's outcome, then retry, or let the delivery go."""
        attempts = delivery.attempts + 1
        retry = outcome.verdict is Verdict.RETRY and attempts < self._config.max_attempts
        final = not retry
        self._observer.webhook_delivery(outcome.verdict is Verdict.DELIVERED, final)
        error = outcome.error
        if outcome.verdict is Verdict.RETRY and final:
            error = f"gave up after {attempts} attempts: {error}"
        try:
            if final:
                await self._store.finish_delivery(
                    delivery.id, delivered=outcome.verdict is Verdict.DELIVERED,
                    attempts=attempts, error=error)
            else:
                await self._store.record_attempt(delivery.id, attempts, error)
        except Exception:
            # Still pending in the store: the next start tries it again.
            log.exception("webhook delivery %d: cannot record its attempt", delivery.id)
        if outcome.verdict is Verdict.DELIVERED:
            log.info("webhook for job %s delivered to %s (attempt %d)",
                     delivery.job_id, delivery.url, attempts)
        elif final:
            log.warning("webhook for job %s to %s failed: %s", delivery.job_id, delivery.url,
                        error)
        if final or self._stopping:
            self._backlog.release(delivery)
            return
        delay = retry_delay(attempts, self._config, outcome.retry_after_s, self._rng)
        again = dataclasses.replace(delivery, attempts=attempts)
        self._backlog.hold(again)
        self._retry_timers[delivery.id] = asyncio.get_running_loop().call_later(
            delay, self._retry, again)

    def _retry(self, delivery: Delivery) -> None:
        self._retry_timers.pop(delivery.id, None)
        if not self._stopping:
            self._backlog.queue.put_nowait(delivery)
