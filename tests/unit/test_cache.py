"""The result cache: a key over everything that can change a result, only deterministic
verdicts stored, bounded by entries and bytes, with a TTL."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sandboxd.cache import NOT_IN_KEY, ResultCache, cache_key, is_cacheable
from sandboxd.model import ExtraFile, JudgeCase, Limits, Result, Status, Submission

LIMITS = Limits(time_limit_ms=1000, wall_time_limit_ms=3000, memory_limit_mb=128)
BASE = Submission(language="python3", source="print(input())", limits=LIMITS, stdin=b"hi",
                  expected_output=b"hi\n")

# For every field of Submission that is in the key: another value. A field added to
# Submission fails test_every_field_is_in_the_key_or_excluded until it is listed here
# (proving it changes the key) or in cache.NOT_IN_KEY (on purpose).
VARIANTS: dict[str, Any] = {
    "language": "pypy3",
    "source": "print(input()) ",
    "stdin": "hi\n",
    "expected_output": None,
    "limits": dataclasses.replace(LIMITS, time_limit_ms=1001),
    "tests": (JudgeCase(stdin=b"hi", expected_output=b"hi\n"),),
    "stop_on_first_failure": False,
    "checker": "tokens",
    "checker_epsilon": 1e-3,
    "checker_source": "import sys",
    "checker_language": "python3",
    "interactor_source": "import sys",
    "interactor_language": "c",
    "files": (ExtraFile(name="data.txt", content=b"1"),),
    "command_line_arguments": ("-v",),
    "compiler_options": ("-O0",),
}
LIMIT_VARIANTS: dict[str, int] = {
    "time_limit_ms": 999,
    "wall_time_limit_ms": 2999,
    "memory_limit_mb": 127,
}


def test_every_field_is_in_the_key_or_excluded() -> None:
    names = {f.name for f in dataclasses.fields(Submission)}
    assert names == set(VARIANTS) | NOT_IN_KEY, (
        "a Submission field is neither in the cache key test (VARIANTS) nor excluded "
        "(cache.NOT_IN_KEY)")
    assert {f.name for f in dataclasses.fields(Limits)} == set(LIMIT_VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_key_part_changes_the_key(name: str) -> None:
    changed = dataclasses.replace(BASE, **{name: VARIANTS[name]})
    assert cache_key(changed) != cache_key(BASE)


@pytest.mark.parametrize("name", sorted(LIMIT_VARIANTS))
def test_each_limit_changes_the_key(name: str) -> None:
    limits = dataclasses.replace(LIMITS, **{name: LIMIT_VARIANTS[name]})
    assert cache_key(dataclasses.replace(BASE, limits=limits)) != cache_key(BASE)


def test_excluded_fields_do_not_change_the_key() -> None:
    other = dataclasses.replace(BASE, callback_url="http://127.0.0.1:1/hook", cache=False)
    assert cache_key(other) == cache_key(BASE)


def test_the_key_is_a_stable_sha256() -> None:
    key = cache_key(BASE)
    assert key == cache_key(dataclasses.replace(BASE))
    assert len(key) == 64 and int(key, 16) >= 0
    # No ambiguity between where one field ends and the next begins.
    a = dataclasses.replace(BASE, source="ab", stdin=b"c")
    b = dataclasses.replace(BASE, source="a", stdin=b"bc")
    assert cache_key(a) != cache_key(b)
    assert cache_key(dataclasses.replace(BASE, expected_output=b"")) != cache_key(
        dataclasses.replace(BASE, expected_output=None))


@pytest.mark.parametrize(("status", "time_ms", "cacheable"), [
    (Status.ACCEPTED, 5, True),
    (Status.WRONG_ANSWER, 5, True),
    (Status.COMPILE_ERROR, None, True),
    (Status.RUNTIME_ERROR, 5, True),
    (Status.MEMORY_LIMIT_EXCEEDED, 5, True),
    (Status.OUTPUT_LIMIT_EXCEEDED, 5, True),
    (Status.TIME_LIMIT_EXCEEDED, 1000, True),  # CPU time reached the limit
    (Status.TIME_LIMIT_EXCEEDED, 1013, True),
    (Status.TIME_LIMIT_EXCEEDED, 20, False),  # wall clock: the host's load may be why
    (Status.TIME_LIMIT_EXCEEDED, None, False),
    (Status.INTERNAL_ERROR, None, False),
    (Status.QUEUED, None, False),
    (Status.RUNNING, None, False),
])
def test_only_deterministic_final_verdicts_are_cacheable(status: Status, time_ms: int | None,
                                                         cacheable: bool) -> None:
    assert is_cacheable(BASE, Result(status=status, time_ms=time_ms)) is cacheable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ok(n: int) -> Result:
    return Result(status=Status.ACCEPTED, stdout=str(n))


def test_least_recently_used_go_first_past_max_entries() -> None:
    cache = ResultCache(max_entries=2, max_bytes=1000, ttl_s=60)
    cache.put("a", ok(1), 10)
    cache.put("b", ok(2), 10)
    assert cache.get("a") == ok(1)  # a is now the most recently used
    cache.put("c", ok(3), 10)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (ok(1), ok(3))
    assert (len(cache), cache.bytes) == (2, 20)


def test_bytes_bound() -> None:
    cache = ResultCache(max_entries=100, max_bytes=100, ttl_s=60)
    cache.put("a", ok(1), 40)
    cache.put("b", ok(2), 40)
    cache.put("c", ok(3), 40)  # 120 > 100: a goes
    assert cache.get("a") is None and cache.bytes == 80
    cache.put("huge", ok(4), 101)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("b", ok(5), 10)  # replacing an entry replaces its size
    assert cache.get("b") == ok(5) and cache.bytes == 50


def test_ttl() -> None:
    clock = Clock()
    cache = ResultCache(max_entries=10, max_bytes=1000, ttl_s=30, clock=clock)
    cache.put("a", ok(1), 10)
    clock.now += 20
    cache.put("b", ok(2), 10)
    assert cache.get("a") == ok(1)  # a read does not extend the TTL
    clock.now += 10
    assert cache.get("a") is None
    assert cache.get("b") == ok(2)
    clock.now += 25
    cache.expire()
    assert (len(cache), cache.bytes) == (0, 0)


def test_entries_are_stored_without_the_cached_flag() -> None:
    cache = ResultCache(max_entries=10, max_bytes=1000, ttl_s=30)
    cache.put("a", dataclasses.replace(ok(1), cached=True), 10)
    assert cache.get("a") == ok(1)


def test_nonsense_bounds_are_refused() -> None:
    for bad in ({"max_entries": 0}, {"max_bytes": 0}, {"ttl_s": 0}):
        with pytest.raises(ValueError):
            ResultCache(**{"max_entries": 1, "max_bytes": 1, "ttl_s": 1.0, **bad})


def _tests_result(*entries: dict[str, Any]) -> Result:
    return Result(status=Status.WRONG_ANSWER, time_ms=1, extra={"tests": list(entries)})


def test_a_multi_test_result_is_cached_only_if_every_test_would_repeat() -> None:
    cases = (JudgeCase(stdin=b"1"), JudgeCase(stdin=b"2", time_limit_ms=500))
    submission = dataclasses.replace(BASE, stdin=b"", expected_output=None, tests=cases,
                                     stop_on_first_failure=False)
    wrong = {"status": "Wrong Answer", "time_ms": 1}
    assert is_cacheable(submission, _tests_result(wrong, {"status": "Accepted", "time_ms": 1}))
    # A later test's Internal Error, or a wall-clock TLE under that test's own limit: the
    # result could differ next time even though the overall verdict would not.
    assert not is_cacheable(submission, _tests_result(wrong, {"status": "Internal Error"}))
    assert not is_cacheable(
        submission, _tests_result(wrong, {"status": "Time Limit Exceeded", "time_ms": 499}))
    assert is_cacheable(
        submission, _tests_result(wrong, {"status": "Time Limit Exceeded", "time_ms": 500}))
    assert is_cacheable(submission, _tests_result(wrong, {"status": "Skipped"}))
