"""[queue] (Redis scale-out): each key validated with an error naming it, and
`serve --redis URL` checked the same way before anything starts."""

from __future__ import annotations

import pytest

from sandboxd import __main__ as cli
from sandboxd.config import ConfigError, load


def _load(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load(path)


def test_the_default_is_this_daemon_alone(tmp_path):
    config = _load(tmp_path, "")
    assert config.queue.redis_url == "" and config.queue.visibility_timeout_s == 60.0


def test_a_redis_url_and_a_visibility_timeout_are_read(tmp_path):
    config = _load(tmp_path, '[queue]\nredis_url = "redis://10.0.0.5:6379/2"\n'
                             "visibility_timeout_s = 5\n")
    assert config.queue.redis_url == "redis://10.0.0.5:6379/2"
    assert config.queue.visibility_timeout_s == 5.0


@pytest.mark.parametrize(("text", "message"), [
    ('redis_url = "http://10.0.0.5:6379"', "queue.redis_url: expected redis://HOST:PORT/DB"),
    ("redis_url = 6379", "queue.redis_url: expected str"),
    ("visibility_timeout_s = 0.5", "queue.visibility_timeout_s: must be at least 1 second"),
    ("visbility_timeout_s = 5", "queue: unknown key(s) visbility_timeout_s"),
])
def test_bad_queue_keys_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _load(tmp_path, f"[queue]\n{text}\n")


def test_serve_refuses_a_bad_redis_url_before_starting(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    assert cli.main(["serve", "--redis", "localhost:6379"]) == 2
    err = capsys.readouterr().err
    assert "queue.redis_url: expected redis://HOST:PORT/DB" in err and err.count("\n") == 1
