"""The durability keys of the configuration ([server], [cache]), `serve --journal`, and
the start-up error for a journal that cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxd import __main__ as cli
from sandboxd import server
from sandboxd.config import CacheConfig, Config, ConfigError, ServerConfig, journal_path, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = Config()
    assert config.server.journal == "/var/lib/sandboxd/sandboxd.db"
    assert journal_path(config.server) == "/var/lib/sandboxd/sandboxd.db"
    assert (config.server.max_attempts, config.server.result_ttl_s) == (3, 3600.0)
    assert (config.server.wait_cap_s, config.server.shutdown_deadline_s) == (30.0, 30.0)
    assert config.server.results_max_bytes == 256 * 1024 * 1024
    assert config.cache == CacheConfig(enabled=True, max_entries=10_000,
                                       max_bytes=64 * 1024 * 1024, ttl_s=3600.0)


def test_keys_load_from_toml(tmp_path: Path) -> None:
    config = load(write(tmp_path, """
[server]
journal = "none"
max_attempts = 5
result_ttl_s = 60
results_max_bytes = 1000
wait_cap_s = 2.5
shutdown_deadline_s = 0
[cache]
enabled = false
max_entries = 7
max_bytes = 100
ttl_s = 10
"""))
    assert journal_path(config.server) is None
    assert config.server == ServerConfig(journal="none", max_attempts=5, result_ttl_s=60.0,
                                         results_max_bytes=1000, wait_cap_s=2.5,
                                         shutdown_deadline_s=0.0)
    assert config.cache == CacheConfig(enabled=False, max_entries=7, max_bytes=100, ttl_s=10.0)


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\njournal = ""', "server.journal"),
    ("[server]\njournal = 3", "server.journal"),
    ("[server]\nmax_attempts = 0", "server.max_attempts"),
    ("[server]\nresult_ttl_s = 0", "server.result_ttl_s"),
    ("[server]\nresult_ttl_s = nan", "server.result_ttl_s"),
    ("[server]\nresults_max_bytes = -1", "server.results_max_bytes"),
    ("[server]\nresults_kept = -1", "server.results_kept"),
    ("[server]\nwait_cap_s = 0", "server.wait_cap_s"),
    ("[server]\nshutdown_deadline_s = -1", "server.shutdown_deadline_s"),
    ("[cache]\nenabled = 1", "cache.enabled"),
    ("[cache]\nmax_entries = 0", "cache.max_entries"),
    ("[cache]\nmax_bytes = 0", "cache.max_bytes"),
    ("[cache]\nttl_s = -5", "cache.ttl_s"),
    ("[cache]\nsize = 5", "size"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, text))


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])


def test_serve_journal_flag_overrides_the_config(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, as_root: None) -> None:
    seen: list[Config] = []

    async def fake_serve(config: Config) -> None:
        seen.append(config)

    monkeypatch.setattr(server, "serve", fake_serve)
    config_file = write(tmp_path, '[server]\njournal = "/somewhere/else.db"\n')
    assert cli.main(["serve", "--config", str(config_file), "--journal",
                     str(tmp_path / "j.db")]) == 0
    assert cli.main(["serve", "--journal", "none"]) == 0
    assert cli.main(["serve", "--config", str(config_file)]) == 0
    assert [c.server.journal for c in seen] == [str(tmp_path / "j.db"), "none",
                                                "/somewhere/else.db"]


def test_serve_refuses_an_empty_journal_flag(capsys: pytest.CaptureFixture[str],
                                             as_root: None) -> None:
    assert cli.main(["serve", "--journal", ""]) == 2
    assert "--journal" in capsys.readouterr().err


async def test_an_unusable_journal_is_a_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config: Any = Config(server=ServerConfig(journal=str(blocker / "sandboxd.db")))
    with pytest.raises(server.StartupError, match=r"server\.journal, --journal.*cannot create"):
        await server.open_journal(config)
    assert await server.open_journal(Config(server=ServerConfig(journal="none"))) is None
    journal = await server.open_journal(Config(server=ServerConfig(
        journal=str(tmp_path / "new" / "dir" / "sandboxd.db"))))
    assert journal is not None and journal.path.exists()
    await journal.close()
