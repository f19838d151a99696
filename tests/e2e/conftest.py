"""The real daemon (`python -m sandboxd serve`) on a free loopback port, driven over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_kernel


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

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                timeout: float = 60) -> tuple[int, dict | list, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def execute(self, **fields) -> dict:
        status, body, _ = self.request("POST", "/execute?wait=true", fields)
        assert status == 200, body
        return body


def start_daemon(tmp_path: Path, extra_config: str = "") -> Daemon:
    port = free_port()
    state_dir = "/run/sandboxd-test"
    config = tmp_path / f"sandboxd-{port}.toml"
    config.write_text(f'[sandbox]\nstate_dir = "{state_dir}"\n{extra_config}')
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxd", "serve", "--listen", f"127.0.0.1:{port}",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    daemon = Daemon(f"http://127.0.0.1:{port}", process, state_dir, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited: {process.stdout.read().decode()}")
        try:
            if daemon.request("GET", "/health", timeout=2)[0] == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("daemon did not become healthy within 60 s")


def stop_daemon(daemon: Daemon) -> str:
    daemon.process.send_signal(signal.SIGTERM)
    out, _ = daemon.process.communicate(timeout=60)
    return out.decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)
