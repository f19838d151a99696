"""Configuration: frozen dataclasses, loaded from an optional TOML file.

Every default and every maximum lives here, in one place. A config file only
overrides what it names; an unknown key or a value of the wrong type is a
`ConfigError` that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
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
    languages_file: str = str(PROJECT_DIR / "languages.toml")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class CacheConfig:
    """The result cache (cache.py): memory only, bounded, with a TTL."""

    enabled: bool = True
    max_entries: int = 10_000
    max_bytes: int = 64 * MIB
    ttl_s: float = 3600.0


@dataclass(frozen=True)
class AuthConfig:
    # API tokens (`Authorization: Bearer <token>`); empty: no authentication.
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: RunLimits = field(default_factory=RunLimits)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


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
    if config.server.workers < 0 or config.server.queue_size < 1:
        raise ConfigError("server.workers must be >= 0 and server.queue_size >= 1")
    server = config.server
    for name in ("max_source_bytes", "max_stdin_bytes", "max_body_bytes"):
        if getattr(server, name) < 1:
            raise ConfigError(f"server.{name}: must be positive")
    if server.max_batch < 1:
        raise ConfigError(f"server.max_batch: must be at least 1, not {server.max_batch}")
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


def _validate_durability(config: Config) -> None:
    server, cache = config.server, config.cache
    if not server.journal:
        raise ConfigError('server.journal: must be a file path, or "none" for memory only')
    positive = {"server.max_attempts": server.max_attempts,
                "server.result_ttl_s": server.result_ttl_s,
                "server.results_max_bytes": server.results_max_bytes,
                "server.wait_cap_s": server.wait_cap_s,
                "cache.max_entries": cache.max_entries, "cache.max_bytes": cache.max_bytes,
                "cache.ttl_s": cache.ttl_s}
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
