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

import orjson

from sandboxd.codec import to_plain
from sandboxd.lru import BoundedTTLMap
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


class ResultCache(BoundedTTLMap[str, Result]):
    """Results by key; the least recently used go first past `max_entries` or
    `max_bytes`, and an entry older than `ttl_s` is never served (lru.py)."""

    def put(self, key: str, value: Result, size: int) -> None:
        """Store a result (`size`: its encoded bytes) as it would be served fresh; one
        larger than the whole cache is not stored."""
        super().put(key, dataclasses.replace(value, cached=False), size)
