"""Configuration: frozen dataclasses, loaded from an optional TOML file.

Every default and every maximum lives here, in one place. A config file only
overrides what it names; an unknown key or a value of the wrong type is a
`ConfigError` that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent

MIB = 1024 * 1024


class ConfigError(Exception):
    """The configuration (file or value) is unusable; the message says where."""


@dataclass(frozen=True)
class Bound:
    """A client-settable limit: its default when absent, and the allowed range."""

    default: int
    min: int
    max: int


@dataclass(frozen=True)
class RunLimits:
    """Run-step limits a client may set (SPEC "Default limits")."""

    time_limit_ms: Bound = Bound(default=2000, min=1, max=10_000)
    # The wall default is derived from the CPU limit: 2 x time_limit_ms + 1000.
    wall_time_limit_ms: Bound = Bound(default=0, min=1, max=30_000)
    memory_limit_mb: Bound = Bound(default=256, min=4, max=1024)

    def default_wall_ms(self, time_limit_ms: int) -> int:
        return min(2 * time_limit_ms + 1000, self.wall_time_limit_ms.max)


@dataclass(frozen=True)
class StepLimits:
    """Limits not set by clients: the compile step's, and the fixed caps of every box."""

    cpu_ms: int
    wall_ms: int
    memory_mb: int
    processes: int


@dataclass(frozen=True)
class SandboxConfig:
    # Caps applied to every box.
    output_limit_bytes: int = 1 * MIB
    disk_limit_mb: int = 64
    processes: int = 64
    open_files: int = 256
    stack_limit_mb: int = 0  # 0: the stack may grow up to the memory limit
    cpu_share: float = 1.0  # CPUs a box may use at once (cgroup cpu.max)
    compile: StepLimits = StepLimits(cpu_ms=10_000, wall_ms=20_000, memory_mb=512, processes=64)
    # cgroups: "auto" detects v2 or v1/hybrid; `cgroup_root` overrides where boxes are created
    # (default: below the daemon's own cgroup, read from /proc/self/cgroup).
    cgroup_version: str = "auto"
    cgroup_root: str | None = None
    # Each box slot runs as its own host uid/gid: uid_base + slot.
    uid_base: int = 60_000
    # Boxes built ahead per worker slot, for the rootfs its last jobs used (namespaces,
    # mounts, pivot_root, loopback done; single use, never reused); 0: built per job.
    warm_boxes: int = 1
    state_dir: str = "/run/sandboxd"
    rootfs_dir: str = str(PROJECT_DIR / "rootfs")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    workers: int = 0  # jobs running at once; 0 = number of CPUs
    queue_size: int = 256  # jobs waiting at most
    # The memory the inputs (source, stdin, expected_output) of all unfinished jobs may
    # hold in the daemon; a job count alone let 256 queued 16 MiB jobs take 4 GiB.
    queue_budget_bytes: int = 256 * MIB
    results_kept: int = 10_000
    # Durability (service.py, journal.py): the journal file, or "none" for memory only.
    journal: str = "/var/lib/sandboxd/sandboxd.db"
    max_attempts: int = 3  # starts of a job before a daemon that keeps dying gives up on it
    result_ttl_s: float = 3600.0  # finished results are served this long
    results_max_bytes: int = 256 * MIB  # and bounded by count (results_kept) and bytes
    wait_cap_s: float = 30.0  # the longest ?wait=true holds a request
    shutdown_deadline_s: float = 30.0  # SIGTERM: running jobs get this long to finish
    max_source_bytes: int = 1 * MIB
    max_stdin_bytes: int = 16 * MIB
    max_body_bytes: int = 16 * MIB
    # Submissions in one POST /execute/batch, and ids in one GET /result?ids=.
    max_batch: int = 100
    # Tests in one submission's `tests` list (each runs in its own box).
    max_tests: int = 100
    # Extra files in one submission's `files` list (their bytes count with the source).
    max_files: int = 20
    languages_file: str = str(PROJECT_DIR / "languages.toml")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# One DNS label; the last label of a name must not be all digits ("127.1" is an address
# in inet_aton's eyes, not a name).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


@dataclass(frozen=True)
class AllowedHost:
    """One `webhooks.allowed_hosts` entry: a host name (lower case, no trailing dot) or
    an IP address, and the one port it allows (None: every port)."""

    name: str | None
    address: IPAddress | None
    port: int | None


def host_name_problem(name: str) -> str | None:
    """Why `name` (lower case, IDNA-encoded, no trailing dot) is not a DNS host name."""
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return "is not a valid host name"
    if labels[-1].isdigit():
        return "is neither a canonical IP address nor a host name"
    return None


def parse_allowed_host(entry: str) -> AllowedHost:
    """`name`, `name:port`, `1.2.3.4`, `1.2.3.4:port`, `::1`, `[::1]` or `[::1]:port`;
    a ValueError saying which rule `entry` breaks."""
    text = entry.lower()
    port: str | None = None
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6] or [IPv6]:port")
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address: no port (write [address]:port for one)
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("the port must be a number from 1 to 65535")
    number = int(port) if port is not None else None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if (text.startswith("[") or ":" in host) and not isinstance(address, ipaddress.IPv6Address):
        raise ValueError(f"{host!r} is not an IPv6 address")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError("an address with a zone (%...) is not supported")
    if address is not None:
        return AllowedHost(None, address, number)
    if "*" in host:
        raise ValueError("wildcards are not supported: list every host")
    if not host.isascii():
        raise ValueError("write an international name in its IDNA (xn--) form")
    problem = host_name_problem(host.rstrip("."))
    if problem:
        raise ValueError(f"{host!r} {problem}")
    return AllowedHost(host.rstrip("."), None, number)


@dataclass(frozen=True)
class WebhookConfig:
    """Callbacks (webhooks.py): where results may be POSTed, and how hard to try."""

    # Empty: webhooks are off, and a callback_url is refused.
    allowed_hosts: tuple[str, ...] = ()
    timeout_s: float = 10.0  # per attempt: connect, send, response headers
    max_attempts: int = 5
    backoff_s: float = 1.0  # before the 2nd attempt; doubled each time, with jitter
    max_backoff_s: float = 300.0  # the longest wait between attempts (also caps Retry-After)
    concurrency: int = 8  # attempts in flight at once
    backlog: int = 1000  # deliveries held in memory; more wait in the store
    secret: str | None = None  # set: every callback carries an HMAC-SHA256 signature

    @functools.cached_property
    def allowed(self) -> tuple[AllowedHost, ...]:
        return tuple(parse_allowed_host(entry) for entry in self.allowed_hosts)


@dataclass(frozen=True)
class CacheConfig:
    """The result cache (cache.py): memory only, bounded, with a TTL."""

    enabled: bool = True
    max_entries: int = 10_000
    max_bytes: int = 64 * MIB
    ttl_s: float = 3600.0


@dataclass(frozen=True)
class ArtifactsConfig:
    """The compiled-artifact cache (artifacts.py): compile outputs in memory, bounded,
    with a TTL."""

    enabled: bool = True
    max_entries: int = 1000
    max_bytes: int = 128 * MIB
    ttl_s: float = 3600.0


@dataclass(frozen=True)
class QueueConfig:
    """Where jobs wait and results are kept: "" is this daemon alone (memory and the
    journal); a redis:// URL shares queue, results and cache with every daemon using it."""

    redis_url: str = ""
    # A job whose host has not renewed its claim for this long runs again elsewhere.
    visibility_timeout_s: float = 60.0


@dataclass(frozen=True)
class AuthConfig:
    # API tokens (`Authorization: Bearer <token>`); empty: no authentication.
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsoleConfig:
    # The web console at `/` (its page and static files need no token; the API calls
    # it makes do). false: `/` and `/console/*` answer 404.
    enabled: bool = True


@dataclass(frozen=True)
class Judge0Config:
    # The Judge0-compatible API (docs/JUDGE0.md) at Judge0's root paths and under
    # /judge0. false: those routes answer 404 and GET /languages is only the native list.
    enabled: bool = True


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: RunLimits = field(default_factory=RunLimits)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    judge0: Judge0Config = field(default_factory=Judge0Config)


def _build(defaults: Any, data: Any, where: str) -> Any:
    """`defaults` (a dataclass instance) overridden by a TOML table; unknown keys and
    wrong types are rejected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        current = getattr(defaults, name)
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(current):
            value = _build(current, value, path)
        elif isinstance(current, bool) or isinstance(value, bool):
            if type(value) is not type(current):
                raise ConfigError(f"{path}: expected {type(current).__name__}")
        elif isinstance(current, list | tuple):
            # A TOML array of strings, kept as the default's (immutable) type.
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: expected an array of strings")
            value = type(current)(value)
        elif isinstance(current, float) and isinstance(value, int):
            value = float(value)
        elif current is None:
            if not isinstance(value, str):
                raise ConfigError(f"{path}: expected a string")
        elif not isinstance(value, type(current)):
            raise ConfigError(f"{path}: expected {type(current).__name__}")
        values[name] = value
    return dataclasses.replace(defaults, **values)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """The defaults, overridden by the TOML file at `path` if given."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    config = _build(Config(), data, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    for name in ("time_limit_ms", "wall_time_limit_ms", "memory_limit_mb"):
        b: Bound = getattr(config.limits, name)
        if not (b.min <= b.max) or (b.default and not b.min <= b.default <= b.max):
            raise ConfigError(f"limits.{name}: need min <= default <= max")
    if config.sandbox.cgroup_version not in ("auto", "v1", "v2"):
        raise ConfigError("sandbox.cgroup_version: expected auto, v1 or v2")
    if config.sandbox.cpu_share <= 0:
        raise ConfigError("sandbox.cpu_share: must be positive")
    if not 0 <= config.sandbox.warm_boxes <= 8:
        raise ConfigError(f"sandbox.warm_boxes: must be 0 to 8, not "
                          f"{config.sandbox.warm_boxes}")
    validate_queue(config.queue)
    if config.server.workers < 0 or config.server.queue_size < 1:
        raise ConfigError("server.workers must be >= 0 and server.queue_size >= 1")
    server = config.server
    for name in ("max_source_bytes", "max_stdin_bytes", "max_body_bytes"):
        if getattr(server, name) < 1:
            raise ConfigError(f"server.{name}: must be positive")
    if server.max_batch < 1:
        raise ConfigError(f"server.max_batch: must be at least 1, not {server.max_batch}")
    if server.max_tests < 1:
        raise ConfigError(f"server.max_tests: must be at least 1, not {server.max_tests}")
    if server.max_files < 0:
        raise ConfigError(f"server.max_files: must be 0 or more, not {server.max_files}")
    if not 0 < server.wait_cap_s <= 3600:
        raise ConfigError(f"server.wait_cap_s: must be in (0, 3600] seconds, not "
                          f"{server.wait_cap_s}")
    for i, token in enumerate(config.auth.tokens):
        problem = token_problem(token)
        if problem:
            raise ConfigError(f"auth.tokens[{i}]: {problem}")
    _validate_durability(config)
    # The largest job the API accepts must fit an empty queue, or it would be refused
    # with 503 "retry later" forever.
    largest = largest_job_bytes(config)
    if server.queue_budget_bytes < largest:
        raise ConfigError(
            f"server.queue_budget_bytes: must be at least {largest} (max_source_bytes + "
            "max_stdin_bytes + sandbox.output_limit_bytes, the largest job), not "
            f"{server.queue_budget_bytes}")
    validate_webhooks(config.webhooks)


def validate_queue(queue: QueueConfig) -> None:
    url = queue.redis_url
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"queue.redis_url: expected redis://HOST:PORT/DB (or rediss://, "
                          f"unix://), got {url!r}")
    if not queue.visibility_timeout_s >= 1:
        raise ConfigError("queue.visibility_timeout_s: must be at least 1 second")


def validate_webhooks(hooks: WebhookConfig) -> None:
    for i, entry in enumerate(hooks.allowed_hosts):
        try:
            parse_allowed_host(entry)
        except ValueError as e:
            raise ConfigError(f"webhooks.allowed_hosts[{i}]: {entry!r}: {e}") from None
    if not 0 < hooks.timeout_s <= 300:
        raise ConfigError("webhooks.timeout_s: must be more than 0 and at most 300")
    if not 1 <= hooks.max_attempts <= 100:
        raise ConfigError("webhooks.max_attempts: must be from 1 to 100")
    if not 0 <= hooks.backoff_s <= hooks.max_backoff_s:
        raise ConfigError("webhooks.backoff_s: must be from 0 to webhooks.max_backoff_s")
    if hooks.max_backoff_s > 86_400:
        raise ConfigError("webhooks.max_backoff_s: must be at most 86400 (a day)")
    if not 1 <= hooks.concurrency <= 1024:
        raise ConfigError("webhooks.concurrency: must be from 1 to 1024")
    if hooks.backlog < 1:
        raise ConfigError("webhooks.backlog: must be at least 1")
    if hooks.secret is not None and not hooks.secret:
        raise ConfigError("webhooks.secret: must not be empty (leave it out to sign nothing)")


def _validate_durability(config: Config) -> None:
    server, cache, artifacts = config.server, config.cache, config.artifacts
    if not server.journal:
        raise ConfigError('server.journal: must be a file path, or "none" for memory only')
    positive = {"server.max_attempts": server.max_attempts,
                "server.result_ttl_s": server.result_ttl_s,
                "server.results_max_bytes": server.results_max_bytes,
                "server.wait_cap_s": server.wait_cap_s,
                "cache.max_entries": cache.max_entries, "cache.max_bytes": cache.max_bytes,
                "cache.ttl_s": cache.ttl_s, "artifacts.max_entries": artifacts.max_entries,
                "artifacts.max_bytes": artifacts.max_bytes, "artifacts.ttl_s": artifacts.ttl_s}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be positive, not {value}")
    if server.results_kept < 0:
        raise ConfigError(f"server.results_kept: must be >= 0, not {server.results_kept}")
    if not server.shutdown_deadline_s >= 0:
        raise ConfigError("server.shutdown_deadline_s: must be >= 0, not "
                          f"{server.shutdown_deadline_s}")


def journal_path(server: ServerConfig) -> str | None:
    """The journal file, or None when the journal is off (`journal = "none"`)."""
    return None if server.journal == "none" else server.journal


def largest_job_bytes(config: Config) -> int:
    """The most input one accepted job can hold (an expected_output longer than the
    output limit is refused: no output could match it)."""
    s = config.server
    return s.max_source_bytes + s.max_stdin_bytes + config.sandbox.output_limit_bytes


MIN_TOKEN_LENGTH = 16


def token_problem(token: str) -> str | None:
    """Why `token` cannot be an API token, or None. Tokens travel in an HTTP header,
    so only visible ASCII; short ones could be guessed."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`)"
    if not all("!" <= c <= "~" for c in token):
        return "only visible ASCII characters, no spaces"
    return None
