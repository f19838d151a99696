"""The command line: clear one-line errors and non-zero exits, never a traceback."""

from __future__ import annotations

import pytest

from sandboxd import __main__ as cli


def test_serve_refuses_without_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["serve", "--listen", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sandboxd: must run as root") and err.count("\n") == 1


def test_serve_refuses_without_capabilities(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: ["CAP_SYS_ADMIN"])
    assert cli.main(["serve"]) == 2
    assert "CAP_SYS_ADMIN" in capsys.readouterr().err


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:", "127.0.0.1:99999", ":80"])
def test_bad_listen_address(monkeypatch, capsys, listen):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    assert cli.main(["serve", "--listen", listen]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_bad_config_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    bad = tmp_path / "c.toml"
    bad.write_text("[server]\nworkerz = 3\n")
    assert cli.main(["serve", "--config", str(bad)]) == 2
    assert "workerz" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2


def test_languages_lists_the_table(capsys):
    assert cli.main(["languages"]) == 0
    out = capsys.readouterr().out
    for lang in ("c", "cpp", "python3", "java", "javascript"):
        assert lang in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


# -- the configuration file ------------------------------------------------------------


def test_default_config_file_is_read_when_present(monkeypatch, tmp_path):
    installed = tmp_path / "sandboxd.toml"
    installed.write_text('[server]\nlisten = "127.0.0.1:9999"\n')
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(installed))
    args = cli.parser().parse_args(["serve"])
    assert cli.load_config(args).server.listen == "127.0.0.1:9999"


def test_without_the_default_file_the_defaults_apply(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    assert cli.config_path(None) is None
    args = cli.parser().parse_args(["serve"])
    assert cli.load_config(args).server.listen == "127.0.0.1:8080"


def test_config_flag_wins_over_the_default_file_and_listen_over_both(monkeypatch, tmp_path):
    installed, given = tmp_path / "installed.toml", tmp_path / "given.toml"
    installed.write_text('[server]\nlisten = "127.0.0.1:1111"\nworkers = 1\n')
    given.write_text('[server]\nlisten = "127.0.0.1:2222"\n')
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(installed))
    config = cli.load_config(cli.parser().parse_args(["serve", "--config", str(given)]))
    assert (config.server.listen, config.server.workers) == ("127.0.0.1:2222", 0)
    config = cli.load_config(cli.parser().parse_args(
        ["serve", "--config", str(given), "--listen", "127.0.0.1:3333"]))
    assert config.server.listen == "127.0.0.1:3333"


def test_a_bad_default_file_is_an_error_naming_the_key(monkeypatch, capsys, tmp_path):
    installed = tmp_path / "sandboxd.toml"
    installed.write_text("[limits]\ntime_limit_ms = 5\n")
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(installed))
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "sandboxd: limits.time_limit_ms: expected a table\n"
    assert err.count("\n") == 1
