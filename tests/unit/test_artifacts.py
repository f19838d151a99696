"""The compiled-artifact cache without boxes: the key, which compiles are kept, the
bounds (entries, bytes, TTL on a fake clock), single flight, and the copy of a /box
tree (only files and directories, bounded, no setuid, owned by the new slot)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from pathlib import Path

import pytest

from sandboxd import config as config_mod
from sandboxd import languages as languages_mod
from sandboxd.artifacts import (
    ENTRY_OVERHEAD_BYTES,
    Artifact,
    ArtifactCache,
    artifact_key,
    cacheable,
)
from sandboxd.config import ArtifactsConfig, Config, ConfigError
from sandboxd.jail.boxtree import MAX_DEPTH, BoxTree, Entry, Uncapturable, capture
from sandboxd.jail.spec import JailOutcome, Termination
from sandboxd.jail.workspace import Workspace
from sandboxd.metrics import Metrics
from sandboxd.model import Status
from sandboxd.observer import Observer
from sandboxd.runner import Runner
from tests.unit.test_metrics import SUBMISSION, FakeSandbox, value

COMPILED = JailOutcome(termination=Termination.EXITED, exit_code=0, stdout=b"ok\n")
FAILED = JailOutcome(termination=Termination.EXITED, exit_code=1, stdout=b"error: x\n")


# -- the key ---------------------------------------------------------------------------


def key(language: str = "cpp", source: bytes = b"int main(){}",
        files: tuple[tuple[str, bytes], ...] = (), options: tuple[str, ...] = ()) -> str:
    return artifact_key(language, source, files, options)


def test_the_key_is_stable_and_changes_with_every_input() -> None:
    assert key() == key()
    variants = [key(language="c"), key(source=b"int main(){ }"),
                key(files=(("a.h", b""),)), key(files=(("a.h", b"1"),)),
                key(files=(("b.h", b""),)), key(options=("-O0",)),
                key(files=(("a.h", b""), ("b.h", b""))), key(options=("-O0", "-Wall"))]
    assert len({key(), *variants}) == len(variants) + 1


@pytest.mark.parametrize(("one", "other"), [
    # Without length prefixes each pair would encode the same bytes.
    ({"files": (("ab", b"c"),)}, {"files": (("a", b"bc"),)}),
    ({"options": ("-Da b",)}, {"options": ("-Da", "b")}),
    ({"options": ("",)}, {"options": ()}),
    ({"files": (("a", b""), ("b", b"x"))}, {"files": (("a", b"b"), ("", b"x"))}),
    ({"language": "c", "source": b"pp"}, {"language": "cpp", "source": b"p"}),
    ({"source": b"x", "options": ("y",)}, {"source": b"xy"}),
])
def test_no_two_inputs_share_a_key(one: dict, other: dict) -> None:
    assert key(**one) != key(**other)


# -- what is kept ----------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "kept"), [
    (COMPILED, True),
    (FAILED, True),  # the compiler's own Compile Error
    (JailOutcome(termination=Termination.EXITED, exit_code=0, output_exceeded=True), True),
    (JailOutcome(termination=Termination.SIGNALED, signal=11), False),
    (JailOutcome(termination=Termination.CPU_LIMIT, cpu_exceeded=True), False),
    (JailOutcome(termination=Termination.WALL_LIMIT, wall_exceeded=True), False),
    (JailOutcome(termination=Termination.MEMORY_LIMIT, oom_killed=True), False),
    (JailOutcome(termination=Termination.EXITED, exit_code=1, oom_killed=True), False),
    (JailOutcome(termination=Termination.EXITED, exit_code=1, memory_refused=True), False),
    (JailOutcome(termination=Termination.SETUP_ERROR, setup_error="mount: EPERM"), False),
])
def test_only_outcomes_that_would_come_again_are_kept(outcome: JailOutcome,
                                                      kept: bool) -> None:
    assert cacheable(outcome) is kept


# -- bounds ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def artifact(content_bytes: int) -> Artifact:
    tree = BoxTree((Entry("main", 0o755, b"x" * content_bytes),))
    return Artifact(COMPILED, tree)


def size_of(content_bytes: int) -> int:
    return content_bytes + len("main") + len(COMPILED.stdout) + ENTRY_OVERHEAD_BYTES


def test_get_returns_what_was_put_and_counts_bytes() -> None:
    cache = ArtifactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60)
    stored = artifact(100)
    cache.put("k", stored)
    assert cache.get("k") is stored
    assert cache.get("other") is None
    assert cache.bytes == size_of(100)
    cache.put("k", artifact(50))  # replaced, not counted twice
    assert (len(cache), cache.bytes) == (1, size_of(50))


def test_the_least_recently_used_go_first_past_max_entries() -> None:
    cache = ArtifactCache(max_entries=2, max_bytes=1 << 20, ttl_s=60)
    cache.put("a", artifact(1))
    cache.put("b", artifact(1))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", artifact(1))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (
        True, None, True)


def test_entries_go_past_max_bytes_and_one_too_large_is_not_kept() -> None:
    cache = ArtifactCache(max_entries=100, max_bytes=2 * size_of(1000), ttl_s=60)
    cache.put("a", artifact(1000))
    cache.put("b", artifact(1000))
    cache.put("c", artifact(1000))
    assert (cache.get("a"), len(cache), cache.bytes) == (None, 2, 2 * size_of(1000))
    cache.put("huge", artifact(3 * size_of(1000)))
    assert cache.get("huge") is None
    assert len(cache) == 2  # nothing was evicted for it


def test_an_entry_past_its_ttl_is_never_served() -> None:
    clock = Clock()
    cache = ArtifactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60, clock=clock)
    cache.put("k", artifact(10))
    clock.now += 59.9
    assert cache.get("k") is not None
    clock.now += 0.1
    assert cache.get("k") is None
    assert (len(cache), cache.bytes) == (0, 0)


@pytest.mark.parametrize("bounds", [{"max_entries": 0}, {"max_bytes": 0}, {"ttl_s": 0}])
def test_bounds_must_be_positive(bounds: dict) -> None:
    with pytest.raises(ValueError):
        ArtifactCache(**{"max_entries": 1, "max_bytes": 1, "ttl_s": 1.0, **bounds})


async def test_identical_keys_fly_one_at_a_time_others_do_not_wait() -> None:
    cache = ArtifactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60)
    order: list[str] = []
    release = asyncio.Event()

    async def job(name: str, key: str) -> None:
        async with cache.flight(key):
            order.append(f"{name} in")
            if name == "first":
                await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(job("first", "k"))
    await asyncio.sleep(0)
    second = asyncio.create_task(job("second", "k"))
    other = asyncio.create_task(job("other", "j"))
    await other  # another key never waits for "k"
    await asyncio.sleep(0.01)
    assert order == ["first in", "other in", "other out"]
    release.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["first out", "second in", "second out"]
    assert cache._flights == {}  # nothing left behind once no one flies


# -- copying a /box tree ---------------------------------------------------------------


def make_box(tmp_path: Path) -> Path:
    box = tmp_path / "box"
    (box / "lib" / "deep").mkdir(parents=True)
    (box / "main").write_bytes(b"\x7fELF binary")
    (box / "main").chmod(0o4755)
    (box / "lib" / "deep" / "data").write_bytes(b"data")
    (box / "lib").chmod(0o711)
    (box / "empty").write_bytes(b"")
    return box


def test_capture_copies_files_and_directories_parents_first(tmp_path: Path) -> None:
    tree = capture(make_box(tmp_path), max_bytes=1 << 20, max_entries=100)
    assert tree.entries == (
        Entry("empty", 0o644, b""),
        Entry("lib", 0o711, None),
        Entry("lib/deep", 0o755, None),
        Entry("lib/deep/data", 0o644, b"data"),
        Entry("main", 0o755, b"\x7fELF binary"),  # setuid dropped
    )


@pytest.mark.parametrize("plant", [
    lambda box: os.symlink("/etc/shadow", box / "lib" / "main"),
    lambda box: os.symlink("/etc", box / "etc"),
    lambda box: os.mkfifo(box / "fifo"),
    lambda box: os.mknod(box / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
], ids=["file-link", "dir-link", "fifo", "device"])
def test_anything_but_files_and_directories_is_uncapturable(tmp_path: Path, plant) -> None:
    box = make_box(tmp_path)
    plant(box)
    with pytest.raises(Uncapturable):
        capture(box, max_bytes=1 << 20, max_entries=100)


def test_size_entries_and_depth_are_bounded(tmp_path: Path) -> None:
    box = make_box(tmp_path)
    capture(box, max_bytes=100, max_entries=5)
    with pytest.raises(Uncapturable, match="too many"):
        capture(box, max_bytes=100, max_entries=4)
    with pytest.raises(Uncapturable, match="too large"):
        capture(box, max_bytes=10, max_entries=100)
    with open(box / "sparse", "wb") as f:  # a terabyte that takes no room: never read
        f.truncate(1 << 40)
    with pytest.raises(Uncapturable, match="sparse: too large"):
        capture(box, max_bytes=1 << 20, max_entries=100)
    os.unlink(box / "sparse")
    deep = box
    for _ in range(MAX_DEPTH):
        deep = deep / "d"
        deep.mkdir()
    with pytest.raises(Uncapturable, match="too deep"):
        capture(box, max_bytes=1 << 20, max_entries=1000)


def test_restore_writes_the_tree_owned_by_the_new_slot(tmp_path: Path) -> None:
    tree = capture(make_box(tmp_path), max_bytes=1 << 20, max_entries=100)
    (tmp_path / "ws" / "box").mkdir(parents=True)
    tree.restore(Workspace(tmp_path / "ws", host_id=60_123))
    box = tmp_path / "ws" / "box"
    found = {}
    for path in sorted(box.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(box))] = (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777,
                                              info.st_uid, info.st_gid)
    assert found == {
        "empty": (stat.S_IFREG, 0o644, 60_123, 60_123),
        "lib": (stat.S_IFDIR, 0o711, 60_123, 60_123),
        "lib/deep": (stat.S_IFDIR, 0o755, 60_123, 60_123),
        "lib/deep/data": (stat.S_IFREG, 0o644, 60_123, 60_123),
        "main": (stat.S_IFREG, 0o755, 60_123, 60_123),
    }
    assert (box / "lib" / "deep" / "data").read_bytes() == b"data"
    assert (box / "main").read_bytes() == b"\x7fELF binary"


def test_restore_never_follows_or_overwrites(tmp_path: Path) -> None:
    # Restore is only ever called on a fresh box/; anything already there is refused.
    tree = BoxTree((Entry("main", 0o755, b"new"),))
    (tmp_path / "box").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "box" / "main")
    with pytest.raises(FileExistsError):
        tree.restore(Workspace(tmp_path, host_id=60_123))
    assert not (tmp_path / "target").exists()


# -- configuration, metrics, and the runner's use of it ---------------------------------


@pytest.mark.parametrize("table", ["max_entries = 0", "max_bytes = -1", "ttl_s = 0"])
def test_config_bounds_must_be_positive(tmp_path: Path, table: str) -> None:
    path = tmp_path / "sandboxd.toml"
    path.write_text(f"[artifacts]\n{table}\n")
    with pytest.raises(ConfigError, match=f"artifacts.{table.split()[0]}: must be positive"):
        config_mod.load(path)


def test_config_builds_the_cache_or_none(tmp_path: Path) -> None:
    path = tmp_path / "sandboxd.toml"
    path.write_text("[artifacts]\nmax_entries = 5\nmax_bytes = 4096\nttl_s = 9\n")
    cache = ArtifactCache.from_config(config_mod.load(path).artifacts)
    assert cache is not None
    assert (cache.max_entries, cache.max_bytes, cache.ttl_s) == (5, 4096, 9.0)
    path.write_text("[artifacts]\nenabled = false\n")
    assert ArtifactCache.from_config(config_mod.load(path).artifacts) is None


def test_metrics_count_lookups_by_language_and_outcome() -> None:
    m = Metrics()
    m.artifact_lookup("cpp", hit=False)
    m.artifact_lookup("cpp", hit=True)
    m.artifact_lookup("cpp", hit=True)
    assert value(m, "sandboxd_artifact_lookups_total", language="cpp", outcome="hit") == 2
    assert value(m, "sandboxd_artifact_lookups_total", language="cpp", outcome="miss") == 1


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def compile_step(self, language: str, seconds: float) -> None:
        self.events.append(("compile", language))

    def artifact_lookup(self, language: str, hit: bool) -> None:
        self.events.append(("lookup", hit))

    def run_step(self, language: str, seconds: float) -> None:
        self.events.append(("run", language))


def runner_over(*outcomes: JailOutcome, config: Config | None = None
                ) -> tuple[Runner, Recorder, FakeSandbox]:
    config = config or Config()
    registry = languages_mod.load(config.server.languages_file, config.sandbox.rootfs_dir)
    recorder = Recorder()
    sandbox = FakeSandbox(*outcomes)
    return Runner(sandbox, registry, config, recorder), recorder, sandbox  # type: ignore[arg-type]


RAN = JailOutcome(termination=Termination.EXITED, exit_code=0, stdout=b"1\n")


async def test_the_runner_skips_an_identical_compile_and_serves_its_output() -> None:
    warned = JailOutcome(termination=Termination.EXITED, exit_code=0, stdout=b"warning\n")
    runner, recorder, sandbox = runner_over(warned, RAN, RAN, warned, RAN)
    first = await runner.run(SUBMISSION)
    # A BOM is no part of the program: the same artifact.
    again = await runner.run(dataclasses.replace(SUBMISSION, source="\ufeff" + SUBMISSION.source,
                                                 stdin=b"other"))
    assert first.compile_output == again.compile_output == "warning\n"
    changed = await runner.run(dataclasses.replace(SUBMISSION, source="print(2)"))
    assert changed.status is Status.ACCEPTED
    assert recorder.events == [
        ("lookup", False), ("compile", "python3"), ("run", "python3"),
        ("lookup", True), ("run", "python3"),
        ("lookup", False), ("compile", "python3"), ("run", "python3")]
    assert sandbox.outcomes == []


async def test_the_runner_compiles_every_time_when_the_cache_is_off() -> None:
    off = Config(artifacts=ArtifactsConfig(enabled=False))
    runner, recorder, _ = runner_over(RAN, RAN, RAN, RAN, config=off)
    await runner.run(SUBMISSION)
    await runner.run(SUBMISSION)
    assert recorder.events == [("compile", "python3"), ("run", "python3")] * 2


async def test_a_failed_copy_into_the_workspace_is_an_internal_error_naming_it() -> None:
    runner, recorder, sandbox = runner_over()
    assert runner.artifacts is not None
    stored = Artifact(RAN, BoxTree((Entry("main.py", 0o644, b"print(1)"),)))
    runner.artifacts.put(artifact_key("python3", SUBMISSION.source.encode(), (), ()), stored)
    make_workspace = sandbox.workspace

    def without_box(slot: int, size_mb: int):
        workspace = make_workspace(slot, size_mb)
        (workspace.path / "box").rmdir()  # the copy has nowhere to go
        return workspace

    sandbox.workspace = without_box  # type: ignore[method-assign]
    failed = await runner.run(SUBMISSION)
    assert failed.status is Status.INTERNAL_ERROR
    assert failed.message is not None
    assert failed.message.startswith("sandbox failure: workspace: copying the compiled program")
    assert recorder.events == [("lookup", True)]  # no compile, no run
