"""Messages between the supervisor, the fork server and the box.

    supervisor (asyncio)        fork server (one thread)         box: D -> I (pid 1) -> P
    -----------------------------------------------------------------------------------
    SPAWN {spec,...} + fds  -->
                                fork D ------------------------> join cgroup, setsid,
                                                                 stdio, rlimits, unshare
                                                   <- USERMAP_PLS (sync socket)
                                write uid/gid maps
                                USERMAP_ACK ------------------->  become box uid; fork I
                            <-- SPAWNED {pid of D}               I: mounts, pivot_root,
                                                                    lo up, hostname
                        <------------------------------------- STARTED   (report pipe)
    baselines, memory limit
    GO (go pipe) ----------------------------------------------> I forks P: caps, nnp,
                                                                 seccomp, execve
                        <------------------------------------- EXITED {wait status}
                        <------------------------------------- EOF: D, I, P all gone

Any step that fails sends FAILED {step, errno, message} on the report pipe and
exits; the supervisor turns it into an Internal Error. EOF without EXITED and
without FAILED means the box was killed (limits) before its program ended.
The report pipe is close-on-exec: the user's program never holds it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# Fork server socket: one SOCK_SEQPACKET message per request/reply.
MAX_MESSAGE = 1 << 20
USERMAP_PLS = b"U"
USERMAP_ACK = b"A"
GO = b"G"
# Descriptor order of a SPAWN request (SCM_RIGHTS).
FD_STDIN, FD_STDOUT, FD_STDERR, FD_REPORT, FD_GO = range(5)
SPAWN_FDS = 5


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict:
    return json.loads(raw)


def report(fd: int, message: dict) -> None:
    """Write one report line; used between fork and exec, so one write(2), no buffering."""
    os.write(fd, encode(message) + b"\n")


@dataclass(frozen=True)
class Report:
    """What the box said on its report pipe, parsed."""

    started: bool = False
    wait_status: int | None = None
    wall_ns: int | None = None
    failed_step: str | None = None
    failed_errno: int = 0
    failed_message: str = ""


def parse_report(raw: bytes) -> Report:
    started = False
    status = wall = None
    step = None
    err = 0
    message = ""
    for line in raw.splitlines():
        try:
            msg = decode(line)
        except ValueError:
            continue  # only our own code writes here; a torn line is ignored
        kind = msg.get("kind")
        if kind == "STARTED":
            started = True
        elif kind == "EXITED":
            status, wall = msg["status"], msg["wall_ns"]
        elif kind == "FAILED" and step is None:
            step, err, message = msg["step"], msg["errno"], msg["message"]
    return Report(started, status, wall, step, err, message)
