"""docs/DURABILITY.md says what the code does: every key of its table exists with the
default it states, its TOML example is the defaults, and no durability key is missing."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from sandboxd.config import CacheConfig, Config, QueueConfig, load

DOC = Path(__file__).resolve().parents[2] / "docs" / "DURABILITY.md"
SERVER_KEYS = {"journal", "max_attempts", "result_ttl_s", "results_kept", "results_max_bytes",
               "wait_cap_s", "shutdown_deadline_s"}


def table() -> dict[str, str]:
    """`key` -> its default cell, from the rows of the configuration table."""
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]+)`", DOC.read_text(), flags=re.M)
    return dict(rows)


def test_the_table_lists_every_durability_key() -> None:
    documented = set(table())
    expected = {f"server.{k}" for k in SERVER_KEYS} | {
        f"cache.{f.name}" for f in dataclasses.fields(CacheConfig)} | {
        f"queue.{f.name}" for f in dataclasses.fields(QueueConfig)}
    assert documented == expected


def test_the_tables_defaults_are_the_codes() -> None:
    config = Config()
    for key, shown in table().items():
        section, name = key.split(".")
        actual = getattr(getattr(config, section), name)
        assert tomllib.loads(f"v = {shown}")["v"] == actual, key


def test_the_toml_example_is_the_defaults(tmp_path: Path) -> None:
    [block] = re.findall(r"^```toml\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    path = tmp_path / "example.toml"
    path.write_text(block)
    loaded = load(path)
    assert loaded.cache == Config().cache
    assert loaded.queue == Config().queue
    for name in SERVER_KEYS:
        assert getattr(loaded.server, name) == getattr(Config().server, name), name
