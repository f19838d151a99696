"""The real daemon (`python -m sandboxd serve`) on a free loopback port, driven over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_kernel
from tests.e2e.receivers import Receiver

STATE_DIR = "/run/sandboxd-test"  # shared by test daemons: one private ws mount
# A daemon whose webhooks may reach a `receiver` on 127.0.0.1, retrying soon and often.
HOOKED_CONFIG = (f'[sandbox]\nstate_dir = "{STATE_DIR}"\n\n'
                 '[webhooks]\nallowed_hosts = ["127.0.0.1"]\nbackoff_s = 0.05\n'
                 'max_backoff_s = 0.2\nmax_attempts = 100\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    url: str
    process: subprocess.Popen
    state_dir: str
    port: int
    log_path: Path | None = None
    journal: str = "none"  # its --journal: a file path, or "none"

    def output(self) -> str:
        """What the daemon printed so far (its log file), or all of it once it exited."""
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace")
        if self.process.poll() is not None and self.process.stdout is not None:
            return self.process.stdout.read().decode(errors="replace")
        return "<output not available while it runs>"

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                timeout: float = 60,
                headers: dict[str, str] | None = None) -> tuple[int, dict | list, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def execute(self, **fields) -> dict:
        status, body, _ = self.request("POST", "/execute?wait=true", fields)
        assert status == 200, body
        return body


def _only_test_languages(tmp_path: Path, config_text: str,
                         languages: Sequence[str] | None = None) -> str:
    """With SANDBOXD_TEST_LANGUAGES (the VM lane), the daemon gets only those tables of
    languages.toml: it probes every language's toolchain before it serves, which under
    software emulation takes minutes for all of them. `languages`: only these (a test
    that needs no others starts its daemons faster)."""
    only = list(languages or ()) or os.environ.get("SANDBOXD_TEST_LANGUAGES", "").split()
    if not only or "languages_file" in config_text:
        return config_text
    text = (Path(__file__).resolve().parents[2] / "languages.toml").read_text()
    tables = re.split(r"^(?=\[)", text, flags=re.M)
    kept = [t for t in tables if re.match(r"\[([a-z0-9_+-]+)(\.tests)?\]", t)
            and re.match(r"\[([a-z0-9_+-]+)", t).group(1) in only]  # type: ignore[union-attr]
    path = tmp_path / f"languages-{'-'.join(sorted(only))}.toml"
    path.write_text("".join(kept))
    line = f'languages_file = "{path}"\n'
    if re.search(r"^\[server\]\n", config_text, flags=re.M):
        return re.sub(r"^\[server\]\n", lambda m: m.group(0) + line, config_text, count=1,
                      flags=re.M)
    return config_text + "\n[server]\n" + line


def start_daemon(tmp_path: Path, extra_config: str = "", *, state_dir: str = STATE_DIR,
                 config_text: str | None = None, preexec_fn=None,
                 log_name: str | None = None, journal: str | Path | None = None,
                 languages: Sequence[str] | None = None) -> Daemon:
    """A daemon on a free port. `extra_config` is appended to its `[sandbox]` table;
    `config_text` replaces the whole file (then `state_dir` is not written for it).
    With `log_name` the daemon's output goes to that file in `tmp_path` (never a pipe
    nobody reads while a long test runs) and `stop_daemon` returns its content.
    `journal`: its --journal (default: a new file in `tmp_path`, never the system's
    journal); pass the same path again to restart a daemon on it. `languages`: load
    only these."""
    port = free_port()
    config = tmp_path / f"sandboxd-{port}.toml"
    if config_text is None:
        config_text = f'[sandbox]\nstate_dir = "{state_dir}"\n{extra_config}'
    config_text = _only_test_languages(tmp_path, config_text, languages)
    journal = str(journal) if journal is not None else str(tmp_path / f"journal-{port}.db")
    config.write_text(config_text)
    log = open(tmp_path / log_name, "wb") if log_name else None  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxd", "serve", "--listen", f"127.0.0.1:{port}",
             "--config", str(config), "--journal", journal],
            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )
    finally:
        if log is not None:
            log.close()
    daemon = Daemon(f"http://127.0.0.1:{port}", process, state_dir, port,
                    log_path=tmp_path / log_name if log_name else None, journal=journal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited: {daemon.output()}")
        try:
            if daemon.request("GET", "/health", timeout=2)[0] == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"daemon did not become healthy within 60 s: {daemon.output()}")


def stop_daemon(daemon: Daemon, sig: int = signal.SIGTERM) -> str:
    daemon.process.send_signal(sig)
    out, _ = daemon.process.communicate(timeout=60)
    return daemon.output() if daemon.log_path is not None else out.decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    with running_daemon(tmp_path_factory.mktemp("daemon")) as d:
        yield d


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A callback receiver on 127.0.0.1 (receivers.py) that answers 500 first, then 204:
    a daemon must retry once."""
    rec = Receiver([500, 204])
    try:
        yield rec
    finally:
        rec.close()


@contextlib.contextmanager
def running_daemon(tmp_path: Path, **options: Any) -> Iterator[Daemon]:
    """`start_daemon(tmp_path, **options)`, stopped on the way out unless it is gone."""
    daemon = start_daemon(tmp_path, **options)
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            stop_daemon(daemon)


@pytest.fixture
def hooked_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon (python3 only) whose webhooks may reach a `receiver` (HOOKED_CONFIG)."""
    require_kernel()
    with running_daemon(tmp_path, config_text=HOOKED_CONFIG, log_name="daemon.log",
                        languages=["python3"]) as daemon:
        yield daemon
