"""A real `redis-server` on a free loopback port in a temporary directory, and daemons
pointed at it (`sandboxd serve --redis`).

The server keeps an append-only file fsynced at every write, so a restart loses
nothing that was acknowledged (what the README asks of production Redis too).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MUST_WORK
from tests.e2e.conftest import Daemon, free_port, start_daemon, stop_daemon

WORKERS = 2
# Box slot N runs as uid_base + 2N and + 1: each daemon here has a range of its own,
# away from the other test modules' (60000-62999), varied by pid across test sessions,
# and below 65534 (`nobody`): 19 ranges of 128 end at 65431.
UID_BASE = 63_000 + 128 * (os.getpid() % 19)  # 8 daemons of 16 uids
STATE_DIR = "/run/sandboxd-test-redis"


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is not None:
        return path
    reason = "redis-server is not installed (make deps installs it)"
    if MUST_WORK:
        pytest.fail(f"SANDBOXD_MUST_WORK=1 but {reason}")
    pytest.skip(reason)


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [require_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--daemonize", "no", "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: "
                                   + (self.directory / "redis.log").read_text())
            if self.command("PING") == "+PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def command(self, *args: str) -> str | None:
        """One command over RESP: a bulk string's value, else the reply's first line
        (`+PONG`, `:0`); None if Redis is not there."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(request.encode())
                lines = s.recv(65536).decode(errors="replace").split("\r\n")
        except OSError:
            return None
        if lines[0].startswith("$") and lines[0] != "$-1":
            return lines[1]
        return lines[0]


def redis_config(index: int, redis_url: str, *, visibility_timeout_s: float = 60.0,
                 extra: str = "") -> str:
    """A daemon's config: its own uid range (`index`), the shared Redis."""
    return (f'[sandbox]\nstate_dir = "{STATE_DIR}"\nuid_base = {UID_BASE + 16 * index}\n'
            f"[server]\nworkers = {WORKERS}\n"
            f'[queue]\nredis_url = "{redis_url}"\n'
            f"visibility_timeout_s = {visibility_timeout_s}\n{extra}")


def start_redis_daemon(tmp_path: Path, index: int, redis_url: str, **kwargs) -> Daemon:
    extra = kwargs.pop("extra", "")
    return start_daemon(tmp_path, config_text=redis_config(index, redis_url, extra=extra,
                                                           **kwargs),
                        state_dir=STATE_DIR, journal="none", log_name=f"daemon-{index}-"
                        f"{free_port()}.log", languages=["python3", "c"])


@contextmanager
def redis_daemon_pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """A redis-server of the test's own and two daemons sharing it, stopped after."""
    require_redis_server()
    server = RedisServer(free_port(), tmp_path)
    server.start()
    daemons: list[Daemon] = []
    try:
        daemons = [start_redis_daemon(tmp_path, index, server.url) for index in (0, 1)]
        yield daemons[0], daemons[1]
    finally:
        for d in daemons:
            stop_daemon(d)
        server.stop()
