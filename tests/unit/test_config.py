"""Configuration defaults (SPEC "Default limits") and loading from TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.config import MIB, Bound, Config, ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    return path


def test_defaults_match_spec() -> None:
    config = load()
    assert config == Config()
    limits = config.limits
    assert (limits.time_limit_ms.default, limits.time_limit_ms.max) == (2000, 10_000)
    assert limits.wall_time_limit_ms.max == 30_000
    assert (limits.memory_limit_mb.default, limits.memory_limit_mb.max) == (256, 1024)
    box = config.sandbox
    assert box.output_limit_bytes == 1 * MIB
    assert box.disk_limit_mb == 64
    assert box.processes == 64
    compile = box.compile
    assert (compile.cpu_ms, compile.wall_ms, compile.memory_mb, compile.processes) == (
        10_000,
        20_000,
        512,
        64,
    )
    assert config.server.max_source_bytes == 1 * MIB
    assert config.server.max_body_bytes == 16 * MIB
    assert config.server.max_stdin_bytes == 16 * MIB
    assert config.server.queue_budget_bytes == 256 * MIB
    assert config.server.listen == "127.0.0.1:8080"


def test_worker_count_defaults_to_cpus() -> None:
    assert Config().server.worker_count >= 1


@pytest.mark.parametrize(("time_limit_ms", "wall_ms"), [(2000, 5000), (1, 1002), (10_000, 21_000)])
def test_default_wall_is_twice_cpu_plus_one_second(time_limit_ms: int, wall_ms: int) -> None:
    assert Config().limits.default_wall_ms(time_limit_ms) == wall_ms


def test_default_wall_never_exceeds_its_maximum(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[limits.time_limit_ms]\nmax = 20000\n"))
    assert config.limits.default_wall_ms(20_000) == 30_000


def test_load_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
listen = "0.0.0.0:9000"
workers = 3
queue_size = 10

[limits.time_limit_ms]
max = 5000

[limits.memory_limit_mb]
default = 128

[sandbox]
output_limit_bytes = 65536
cpu_share = 2

[sandbox.compile]
cpu_ms = 30000
wall_ms = 60000
memory_mb = 1024
processes = 128
""",
    )
    config = load(path)
    assert config.server.listen == "0.0.0.0:9000"
    assert config.server.worker_count == 3
    assert config.server.queue_size == 10
    assert config.server.results_kept == Config().server.results_kept
    # A partial Bound keeps the keys it does not name.
    assert config.limits.time_limit_ms == Bound(default=2000, min=1, max=5000)
    assert config.limits.memory_limit_mb == Bound(default=128, min=4, max=1024)
    assert config.sandbox.output_limit_bytes == 65536
    assert config.sandbox.cpu_share == 2.0 and isinstance(config.sandbox.cpu_share, float)
    assert config.sandbox.compile.cpu_ms == 30_000
    assert config.sandbox.compile.processes == 128
    assert config.sandbox.disk_limit_mb == 64


def test_optional_string(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[sandbox]\ncgroup_root = "/sys/fs/cgroup/sandboxd"\n'))
    assert config.sandbox.cgroup_root == "/sys/fs/cgroup/sandboxd"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nlisten_addr = 'x'\n", "listen_addr"),
        ("[limit]\n", "limit"),
        pytest.param("[limits.time_limit_ms]\nmaximum = 3\n", "maximum"),
        pytest.param("[sandbox.compile]\ncpu = 3\n", "cpu"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nqueue_size = '10'\n", "server.queue_size"),
        ("[server]\nworkers = true\n", "server.workers"),
        ("[server]\nlisten = 8080\n", "server.listen"),
        ("[sandbox]\ncpu_share = 'all'\n", "sandbox.cpu_share"),
        ("[sandbox]\ncgroup_root = 3\n", "sandbox.cgroup_root"),
        ("[sandbox]\ndisk_limit_mb = 1.5\n", "sandbox.disk_limit_mb"),
        pytest.param(
            "[limits.time_limit_ms]\nmax = '10s'\n",
            "limits.time_limit_ms.max",
        ),
        ("server = 3\n", "server"),
    ],
)
def test_wrong_type_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(write(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[limits.time_limit_ms]\nmin = 100\nmax = 10\n"),
        pytest.param("[limits.memory_limit_mb]\ndefault = 4096\n"),
        "[sandbox]\ncgroup_version = 'v3'\n",
        "[sandbox]\ncpu_share = 0\n",
        "[server]\nqueue_size = 0\n",
    ],
)
def test_inconsistent_values_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load(write(tmp_path, text))


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[server\n"))


def test_queue_budget_and_stdin_maximum_from_toml(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[server]\nqueue_budget_bytes = 67108864\n"
                                  "max_stdin_bytes = 1048576\n"))
    assert (config.server.queue_budget_bytes, config.server.max_stdin_bytes) == (64 * MIB, MIB)


def test_queue_budget_must_hold_the_largest_job(tmp_path: Path) -> None:
    # 1 MiB source + 16 MiB stdin + 1 MiB expected output (the output limit).
    with pytest.raises(ConfigError, match=r"server.queue_budget_bytes: must be at least 18874368"):
        load(write(tmp_path, "[server]\nqueue_budget_bytes = 1000\n"))
    with pytest.raises(ConfigError, match="server.max_stdin_bytes"):
        load(write(tmp_path, "[server]\nmax_stdin_bytes = 0\n"))
