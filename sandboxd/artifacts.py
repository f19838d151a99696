"""The compiled-artifact cache: an identical program is compiled once.

"Identical" is the key: a SHA-256 over the language id, the source (as written into
the box, without a UTF-8 BOM), every extra file (name and bytes, in order) and the
compiler options, each length-prefixed so that no two different inputs share an
encoding. stdin, limits and tests are not in it: a resubmission against other input,
a batch of the same program or a `tests` list resubmitted all find the artifact.

An artifact is the compile step's outcome (its output is the result's
`compile_output`) and, for a successful compile, a copy of the box's /box tree as the
compile left it (jail/boxtree.py), held in this daemon's memory. Only outcomes that
would come again are kept (`cacheable`): a successful compile, or a Compile Error
that is the compiler's own verdict (a non-zero exit, no limit hit); never a compile
that hit a limit or failed to set up. A tree holding anything but files and
directories is not kept either. Nothing is shared between daemons and nothing
survives a restart (when the toolchains may have changed too); entries, bytes and
age are bounded.

Single flight: while one job compiles a program, an identical one waits for it and
then finds the artifact (or compiles itself, if the first was not cacheable).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from sandboxd.config import ArtifactsConfig
from sandboxd.jail.boxtree import BoxTree
from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.lru import BoundedTTLMap

# Changing the encoding changes every key: old entries simply stop matching.
KEY_VERSION = b"sandboxd compiled artifact v1\0"
# Bytes counted for an entry besides its tree and compile output (bookkeeping).
ENTRY_OVERHEAD_BYTES = 512


def artifact_key(language: str, source: bytes, files: Iterable[tuple[str, bytes]],
                 compiler_options: Iterable[str]) -> str:
    """SHA-256 (hex) over everything that decides what the compile step produces."""
    digest = hashlib.sha256(KEY_VERSION)

    def put(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    def put_list(items: list[bytes]) -> None:
        digest.update(len(items).to_bytes(8, "big"))
        for item in items:
            put(item)

    put(language.encode())
    put(source)
    files = list(files)
    put_list([name.encode("utf-8", "surrogateescape") for name, _ in files])
    put_list([content for _, content in files])
    put_list([option.encode("utf-8", "surrogateescape") for option in compiler_options])
    return digest.hexdigest()


def cacheable(compiled: JailOutcome) -> bool:
    """Whether compiling again would give this outcome again: the compiler exited on
    its own (0, or a non-zero Compile Error) with no limit hit and no setup failure.
    A truncated compile output is fine: the cap is the same next time."""
    return (compiled.termination is Termination.EXITED and compiled.setup_error is None
            and compiled.signal is None and compiled.exit_code is not None
            and not (compiled.cpu_exceeded or compiled.wall_exceeded
                     or compiled.oom_killed or compiled.memory_refused))


@dataclass(frozen=True)
class Artifact:
    compiled: JailOutcome  # the compile step's outcome, as the first job saw it
    tree: BoxTree | None  # /box after a successful compile; None after a Compile Error

    @property
    def size(self) -> int:
        tree = self.tree.size if self.tree is not None else 0
        return (tree + len(self.compiled.stdout) + len(self.compiled.stderr)
                + ENTRY_OVERHEAD_BYTES)


@dataclass
class _Flight:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0  # jobs holding or waiting for the lock


class ArtifactCache:
    """Artifacts by key; the least recently used go first past `max_entries` or
    `max_bytes`, and one older than `ttl_s` is never served."""

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: BoundedTTLMap[str, Artifact] = BoundedTTLMap(
            max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl_s, clock=clock)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._flights: dict[str, _Flight] = {}

    @classmethod
    def from_config(cls, config: ArtifactsConfig) -> ArtifactCache | None:
        """The configured cache, or None when it is off."""
        if not config.enabled:
            return None
        return cls(max_entries=config.max_entries, max_bytes=config.max_bytes,
                   ttl_s=config.ttl_s)

    @property
    def bytes(self) -> int:
        return self._entries.bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Artifact | None:
        return self._entries.get(key)

    def put(self, key: str, artifact: Artifact) -> None:
        """Keep `artifact`; one larger than the whole cache is not kept."""
        self._entries.put(key, artifact, artifact.size)

    @contextlib.asynccontextmanager
    async def flight(self, key: str) -> AsyncIterator[None]:
        """Held while one job looks `key` up and, on a miss, compiles and stores it:
        an identical job waits here, then finds the artifact."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
        flight.holders += 1
        try:
            async with flight.lock:
                yield
        finally:
            flight.holders -= 1
            if flight.holders == 0:
                del self._flights[key]
