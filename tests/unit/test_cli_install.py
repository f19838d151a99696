"""`make install` and the commented default configuration it installs.

The configuration file shows every key of config.py with its default, so an operator
reads the whole surface in one place; this is checked in both directions: every key
is there, and uncommenting everything changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sandboxd.config import PROJECT_DIR, Config, _build, load, validate

EXAMPLE = PROJECT_DIR / "systemd" / "sandboxd.toml"
UNIT = PROJECT_DIR / "systemd" / "sandboxd.service"
DEFAULT_LINE = re.compile(r"^# ([a-z_]+ = .*)$")
# Keys whose default cannot be written in TOML (None): explained in prose instead.
UNSET_BY_DEFAULT = {"sandbox.cgroup_root", "webhooks.secret"}


def uncommented(text: str) -> str:
    """The file with every "# key = value" line made live."""
    return "\n".join(DEFAULT_LINE.sub(r"\1", line) for line in text.splitlines()) + "\n"


def keys_of(defaults: Any, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not _is_inline(value):
            keys |= keys_of(value, f"{path}.")
        else:
            keys.add(path)
    return keys


def _is_inline(value: Any) -> bool:
    # Limits are written as inline tables: `time_limit_ms = { default = ..., max = ... }`.
    return type(value).__name__ == "Bound"


def example_keys(text: str) -> set[str]:
    keys, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^\[([a-z0-9_.]+)\]$", line)
        if header:
            table = header.group(1) + "."
        match = DEFAULT_LINE.match(line)
        if match:
            keys.add(table + match.group(1).split(" = ")[0])
    return keys


def test_the_example_shows_every_key_of_the_configuration() -> None:
    shown = example_keys(EXAMPLE.read_text())
    expected = keys_of(Config()) - UNSET_BY_DEFAULT
    assert not expected - shown, (
        f"keys missing from {EXAMPLE.name} (add them, commented, with their default): "
        f"{sorted(expected - shown)}")
    assert not shown - expected, f"keys {EXAMPLE.name} shows that do not exist: " \
                                 f"{sorted(shown - expected)}"
    for key in UNSET_BY_DEFAULT:
        assert key.split(".")[-1] in EXAMPLE.read_text()


def test_uncommenting_every_default_changes_nothing() -> None:
    text = uncommented(EXAMPLE.read_text()).replace("@PROJECT_DIR@", str(PROJECT_DIR))
    config = _build(Config(), tomllib.loads(text), "")
    validate(config)
    assert config == Config()


def test_the_example_as_shipped_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sandboxd.toml"
    path.write_text(EXAMPLE.read_text())
    assert load(path) == Config()


def test_unit_runs_the_installed_command_and_takes_listen_from_the_config() -> None:
    text = UNIT.read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", text, flags=re.M)
    assert exec_start == "@PREFIX@/bin/sandboxd serve"  # --listen would override the file
    assert "Delegate=yes" in text and "KillSignal=SIGTERM" in text
    assert "StateDirectory=sandboxd" in text  # /var/lib/sandboxd, the journal's default


def make_install(destdir: Path, **variables: str) -> str:
    args = [f"{k}={v}" for k, v in {"DESTDIR": str(destdir), **variables}.items()]
    # -o deps: treat the dependencies as made (this tests the install recipe, not apt).
    proc = subprocess.run(["make", "-s", "-o", "deps", "install", *args], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_puts_command_unit_and_config_in_place(tmp_path: Path) -> None:
    out = make_install(tmp_path)
    link = tmp_path / "usr/local/bin/sandboxd"
    assert link.is_symlink() and link.readlink() == PROJECT_DIR / ".venv/bin/sandboxd"
    unit = (tmp_path / "etc/systemd/system/sandboxd.service").read_text()
    assert "ExecStart=/usr/local/bin/sandboxd serve" in unit
    assert "@" not in unit.replace("# ", "")  # every placeholder filled
    config = tmp_path / "etc/sandboxd/sandboxd.toml"
    assert config.stat().st_mode & 0o777 == 0o640  # it may hold tokens
    assert "@PROJECT_DIR@" not in config.read_text()
    assert uncommented(config.read_text()) != config.read_text()
    assert load(config) == Config()
    installed_defaults = tmp_path / "live.toml"
    installed_defaults.write_text(uncommented(config.read_text()))
    assert load(installed_defaults) == Config()  # its paths are this checkout's
    assert "systemctl enable --now sandboxd" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_never_overwrites_an_existing_config(tmp_path: Path) -> None:
    config = tmp_path / "etc/sandboxd/sandboxd.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[server]\nlisten = "127.0.0.1:9000"\n')
    out = make_install(tmp_path)
    assert config.read_text() == '[server]\nlisten = "127.0.0.1:9000"\n'
    assert f"kept the existing {config}" in out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # PREFIX = the virtualenv, so ExecStart names a program that exists on this host.
    make_install(tmp_path, PREFIX=str(PROJECT_DIR / ".venv"))
    unit = tmp_path / "etc/systemd/system/sandboxd.service"
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if "sandboxd.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_the_readme_documents_every_key_with_its_default() -> None:
    text = (PROJECT_DIR / "README.md").read_text()
    start = text.index("\n## Configuration")
    section = text[start:text.index("\n## ", start + 1)]
    rows = dict(re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]+) \|", section, flags=re.M))
    missing = keys_of(Config()) - set(rows)
    assert not missing, f"README.md's Configuration table lacks: {sorted(missing)}"
    assert not set(rows) - keys_of(Config()), sorted(set(rows) - keys_of(Config()))
    assert all(default.strip() for default in rows.values())
