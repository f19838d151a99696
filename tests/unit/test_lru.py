"""The bounded, expiring LRU map both in-memory caches keep their entries in."""

from __future__ import annotations

import pytest

from sandboxd.lru import BoundedTTLMap
from tests.unit.service_fakes import Clock


def new_map(clock: Clock | None = None, *, max_entries: int = 10, max_bytes: int = 1000,
            ttl_s: float = 60) -> BoundedTTLMap[str, str]:
    return BoundedTTLMap(max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl_s,
                         clock=clock or Clock())


def test_get_returns_what_was_put_and_counts_entries_and_bytes() -> None:
    lru = new_map()
    lru.put("a", "A", 10)
    lru.put("b", "B", 15)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == ("A", "B", None)
    assert (len(lru), lru.bytes) == (2, 25)


def test_replacing_a_key_replaces_its_size() -> None:
    lru = new_map()
    lru.put("a", "A", 100)
    lru.put("a", "A2", 30)
    assert (lru.get("a"), len(lru), lru.bytes) == ("A2", 1, 30)


def test_the_least_recently_used_go_first_past_max_entries() -> None:
    lru = new_map(max_entries=3)
    for key in "abc":
        lru.put(key, key.upper(), 1)
    assert lru.get("a") == "A"  # order of use now: b, c, a
    lru.put("d", "D", 1)
    lru.put("e", "E", 1)
    assert [k for k in "abcde" if lru.get(k) is not None] == ["a", "d", "e"]
    assert (len(lru), lru.bytes) == (3, 3)


def test_as_many_as_needed_go_past_max_bytes_oldest_first() -> None:
    lru = new_map(max_bytes=100)
    lru.put("a", "A", 30)
    lru.put("b", "B", 30)
    lru.put("c", "C", 30)
    lru.put("d", "D", 70)  # 160 > 100: a and b go, c stays (c + d = 100)
    assert [k for k in "abcd" if lru.get(k) is not None] == ["c", "d"]
    assert lru.bytes == 100


def test_one_larger_than_the_whole_map_is_not_kept_and_evicts_nothing() -> None:
    lru = new_map(max_bytes=100)
    lru.put("a", "A", 60)
    lru.put("huge", "H", 101)
    assert (lru.get("huge"), lru.get("a"), lru.bytes) == (None, "A", 60)
    lru.put("a", "A2", 101)  # too large to replace it: the key holds nothing now
    assert (lru.get("a"), len(lru), lru.bytes) == (None, 0, 0)


def test_an_entry_is_served_until_its_ttl_and_dropped_when_seen_after() -> None:
    clock = Clock()
    lru = new_map(clock, ttl_s=30)
    lru.put("a", "A", 10)
    clock.now += 29.9
    assert lru.get("a") == "A"  # using it does not make it younger
    clock.now += 0.1
    assert lru.get("a") is None
    assert (len(lru), lru.bytes) == (0, 0)


def test_expire_sweeps_only_the_expired() -> None:
    clock = Clock()
    lru = new_map(clock, ttl_s=30)
    lru.put("old", "O", 10)
    clock.now += 20
    lru.put("new", "N", 5)
    clock.now += 10
    assert lru.expire() == 1
    assert (len(lru), lru.bytes, lru.get("new")) == (1, 5, "N")


def test_pop_drops_an_entry_expired_or_not() -> None:
    clock = Clock()
    lru = new_map(clock, ttl_s=30)
    lru.put("a", "A", 10)
    lru.put("b", "B", 20)
    assert (lru.pop("a"), lru.pop("a"), len(lru), lru.bytes) == ("A", None, 1, 20)
    clock.now += 31
    assert (lru.pop("b"), len(lru), lru.bytes) == ("B", 0, 0)


@pytest.mark.parametrize("bounds", [{"max_entries": 0}, {"max_bytes": 0}, {"ttl_s": 0},
                                    {"ttl_s": -1}])
def test_bounds_must_be_positive(bounds: dict) -> None:
    with pytest.raises(ValueError):
        BoundedTTLMap(**{"max_entries": 1, "max_bytes": 1, "ttl_s": 1.0, **bounds})


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        new_map().put("a", "A", -1)
