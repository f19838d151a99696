"""Messages between the supervisor, the fork server and the box.

    supervisor (asyncio)        fork server (one thread)         box: D -> I (pid 1) -> P
    -----------------------------------------------------------------------------------
    SPAWN {shape,...} + fds -->
                                fork D ------------------------> join cgroup, setsid,
                            <-- SPAWNED {pid of D}               stdio, rlimits, keeper
                                (serves other SPAWNs meanwhile)  id, unshare
                                                   <- USERMAP_PLS (sync socket)
                                write uid/gid maps
                                USERMAP_ACK ------------------->  fork I
                                                                 I: setsid, mounts,
                                                                    pivot_root, lo up
                        <------------------------------------- STARTED   (report pipe)
    (a warm box waits here, in the pool, for a job)
    cgroup limits; CPU counter (all asleep)
    TAKE {job} + stdio, mount trees (take socket) -------------> I: attach the mounts,
                                                                 fork P, trace it,
                                                                 release it: stdio,
                                                                 rlimits, program cgroup,
                                                                 identity, caps, nnp,
                                                                 seccomp, execve
                        <------------------------------------- EXECED {P's pre-exec CPU}
                        <------------------------------------- REFUSED {bytes} (an over-
                                                                 limit allocation, if any)
                        <------------------------------------- EXITED {wait status, CPU
                                                                 counter, I's own CPU}
                        <------------------------------------- EOF: D, I, P all gone

Any step that fails sends FAILED {step, errno, message} on the report pipe and
exits; the supervisor turns it into an Internal Error. EOF without EXITED and
without FAILED means the box was killed (limits) before its program ended.
The report pipe is close-on-exec: the user's program never holds it.
With JailSpec.trace_steps, STARTED carries D's and I's step trace ("steps"), and P
(before its execve) and I (when the program ended) each send theirs in a STEPS line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# Fork server socket: one SOCK_SEQPACKET message per request/reply.
MAX_MESSAGE = 1 << 20
USERMAP_PLS = b"U"
USERMAP_ACK = b"A"
GO = b"G"  # I to P: released (P's trace is set)
# Descriptor order of a SPAWN request (SCM_RIGHTS): report, take socket; the box's CPU
# counter, the program's memory peak, its two memory limit files (v1 memory + memsw,
# v2 memory.max twice), its cgroup.procs.
SPAWN_FDS = 7
# A TAKE message: the job as JSON, with stdin, stdout, stderr and then one detached
# mount tree per late mount point of the box's shape.
TAKE_MAX_FDS = 3 + 16


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
    execed: bool = False
    pre_exec_cpu_ns: int = 0
    limit_errno: int = 0  # setting the program's memory limit failed (EBUSY: over it)
    wait_status: int | None = None
    wall_ns: int | None = None
    exit_cpu_ns: int | None = None  # the cgroup's CPU counter when the program ended
    init_cpu_ns: int = 0  # the init's own CPU time from GO to the program's end
    program_cpu_ns: int = 0  # P's own and its reaped children's CPU time (wait4 rusage)
    refused_bytes: int = 0  # the largest allocation refused for passing the memory limit
    failed_step: str | None = None
    failed_errno: int = 0
    failed_message: str = ""
    steps: tuple[tuple[str, int], ...] = ()  # JailSpec.trace_steps: the box's step trace


def parse_report(raw: bytes) -> Report:
    fields: dict = {}
    steps: list[tuple[str, int]] = []
    for line in raw.splitlines():
        try:
            msg = decode(line)
        except ValueError:
            continue  # only our own code writes here; a torn line is ignored
        kind = msg.get("kind")
        steps.extend((str(name), int(at)) for name, at in msg.get("steps", ()))
        if kind == "STARTED":
            fields["started"] = True
        elif kind == "EXECED":
            fields.update(execed=True, pre_exec_cpu_ns=msg["pre_exec_cpu_ns"],
                          limit_errno=msg["limit_errno"])
        elif kind == "EXITED":
            fields.update(wait_status=msg["status"], wall_ns=msg["wall_ns"],
                          exit_cpu_ns=msg["cpu_ns"], init_cpu_ns=msg["init_cpu_ns"],
                          program_cpu_ns=msg["program_cpu_ns"])
        elif kind == "REFUSED":
            fields["refused_bytes"] = max(fields.get("refused_bytes", 0), msg["bytes"])
        elif kind == "FAILED" and "failed_step" not in fields:
            fields.update(failed_step=msg["step"], failed_errno=msg["errno"],
                          failed_message=msg["message"])
    return Report(**fields, steps=tuple(steps))
