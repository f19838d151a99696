"""The result cache: a submission identical to one already judged gets that result at once.

The key is a SHA-256 over a canonical encoding of every field of the `Submission`
(language, source, stdin, expected output, every limit, and any field added later:
files, compiler options, arguments, checker settings) except those that cannot change
the result (`NOT_IN_KEY`). It is built from the dataclass's own fields, so a new field
is in the key unless someone excludes it on purpose.

Only deterministic final verdicts are stored (`is_cacheable`). The cache lives in
memory only, bounded by entries and bytes and with a TTL: after a restart (when the
toolchains may have been upgraded, too) every submission runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from sandboxd.codec import to_plain
from sandboxd.model import Result, Status, Submission

# Fields of Submission that do not change what the program does or how it is judged:
# where the result is POSTed, and whether the cache may be used.
NOT_IN_KEY = frozenset({"callback_url", "callback_format", "cache"})
# Changing the encoding changes every key: old entries simply stop matching.
# v2: stdin and expected output are bytes (base64 in the encoding), no longer text.
KEY_VERSION = b"sandboxd result cache v2\0"


def cache_key(submission: Submission) -> str:
    """SHA-256 (hex) over every field of `submission` that can change its result."""
    plain = {f.name: to_plain(getattr(submission, f.name))
             for f in dataclasses.fields(submission) if f.name not in NOT_IN_KEY}
    encoded = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(KEY_VERSION + encoded).hexdigest()


def is_cacheable(submission: Submission, result: Result) -> bool:
    """Whether running `submission` again would give `result`'s verdict again.

    Internal Error is the sandbox's fault of the moment, never the program's. A Time
    Limit Exceeded counts only when the CPU time reached the limit: CPU time is the
    program's own work, while a wall-clock TLE (the CPU time below the limit) can come
    from a loaded host as much as from the program, so it is run again next time. The
    other verdicts follow from the program, its input and its limits."""
    if not result.status.is_final or result.status is Status.INTERNAL_ERROR:
        return False
    if submission.tests is not None:
        # Every test's verdict is part of the result (the overall one is only the first
        # failure's): each must be one that would come again.
        entries = result.extra.get("tests", [])
        for case, entry in zip(submission.tests, entries, strict=False):
            limit = case.time_limit_ms or submission.limits.time_limit_ms
            if not _repeatable(entry.get("status"), entry.get("time_ms"), limit):
                return False
        return True
    return _repeatable(result.status.value, result.time_ms, submission.limits.time_limit_ms)


def _repeatable(status: str | None, time_ms: int | None, time_limit_ms: int) -> bool:
    if status == Status.INTERNAL_ERROR.value:
        return False
    if status == Status.TIME_LIMIT_EXCEEDED.value:
        return time_ms is not None and time_ms >= time_limit_ms
    return True


@dataclass
class _Entry:
    result: Result
    size: int
    stored_at: float


class ResultCache:
    """Results by key; the least recently used go first past `max_entries` or
    `max_bytes`, and an entry older than `ttl_s` is never served."""

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl_s <= 0:
            raise ValueError("need max_entries >= 1, max_bytes >= 1, ttl_s > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Result | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.stored_at >= self.ttl_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.result

    def put(self, key: str, result: Result, size: int) -> None:
        """Store `result` (`size`: its encoded bytes); one larger than the whole cache
        is not stored."""
        if key in self._entries:
            self._drop(key)
        if size > self.max_bytes:
            return
        self._entries[key] = _Entry(dataclasses.replace(result, cached=False), size,
                                    self._clock())
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def expire(self) -> None:
        """Drop the entries past their TTL (their memory back now, not at the next get)."""
        now = self._clock()
        stale = [k for k, e in self._entries.items() if now - e.stored_at >= self.ttl_s]
        for key in stale:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
