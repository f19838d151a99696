"""A map bounded by entry count and bytes, whose entries expire: the one place the
daemon's in-memory caches (cache.py: results, artifacts.py: compiled programs) keep
their entries.

Past `max_entries` entries or `max_bytes` bytes (each entry's size is the caller's
count of it), the least recently used go first; an entry `ttl_s` seconds old or older
is never served, and is dropped when seen (`get`) or swept (`expire`). An entry larger
than the whole map is not kept, and nothing is evicted for it. Not thread-safe: the
daemon uses it from its one event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    size: int
    stored_at: float


class BoundedTTLMap(Generic[K, V]):
    """Values by key, least recently used first out; `clock` (seconds, monotonic) is
    injectable so tests can age entries without waiting."""

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl_s <= 0:
            raise ValueError("need max_entries >= 1, max_bytes >= 1, ttl_s > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self.bytes = 0  # the sum of the kept entries' sizes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value under `key`, now the most recently used; None if absent or expired
        (an expired one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._expired(entry, self._clock()):
            self.pop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: V, size: int) -> None:
        """Keep `value` (`size`: the bytes it counts for), replacing what `key` held;
        then evict the least recently used until within bounds. A value larger than
        `max_bytes` is not kept (what `key` held is gone all the same)."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.pop(key)
        if size > self.max_bytes:
            return
        self._entries[key] = _Entry(value, size, self._clock())
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self.pop(next(iter(self._entries)))

    def pop(self, key: K) -> V | None:
        """Drop `key`'s entry, expired or not; its value, or None if there was none."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry.size
        return entry.value

    def expire(self) -> int:
        """Drop every expired entry now (its memory back before the next `get`); how
        many went."""
        now = self._clock()
        stale = [key for key, entry in self._entries.items() if self._expired(entry, now)]
        for key in stale:
            self.pop(key)
        return len(stale)

    def _expired(self, entry: _Entry[V], now: float) -> bool:
        return now - entry.stored_at >= self.ttl_s
