"""What a jail is asked to run (`JailSpec`) and what came of it (`JailOutcome`).

Pure data, shared by the parent side (supervisor) and the child side (stage).
The jail knows nothing of HTTP, languages or verdicts: a spec is an argv, an
environment, a mount plan and limits; an outcome is what the kernel measured.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

BOX_UID = 1000  # uid and gid of the program inside every box (mapped to a per-slot host id)
BOX_HOSTNAME = "sandbox"
BOX_WORKDIR = "/box"


@dataclass(frozen=True)
class Bind:
    """A host path made visible in the box. Read-only unless `writable`."""

    source: str
    target: str
    writable: bool = False


@dataclass(frozen=True)
class BoxLimits:
    cpu_ms: int
    wall_ms: int
    memory_bytes: int
    processes: int = 64
    output_bytes: int = 1 << 20  # per stream
    open_files: int = 256
    file_size_bytes: int = 64 << 20
    stack_bytes: int = 0  # 0: unlimited (bounded by the memory limit)
    cpu_share: float = 1.0  # CPUs the box may use at once
    # False (compile steps): output past the cap is read and dropped, the box keeps
    # running; `output_exceeded` still says it happened. True: the cap kills the box.
    output_overflow_kills: bool = True
    # RLIMIT_DATA of the program (0: none). For runtimes that tolerate it (native code,
    # CPython): with the over-limit mmap refusal of seccomp.py, even glibc's brk
    # fallback for a huge malloc then fails the same way on every host.
    data_bytes: int = 0


@dataclass(frozen=True)
class SeccompProfile:
    """The allow-list is fixed in seccomp.py; a runtime may add syscalls by name."""

    extra_syscalls: tuple[str, ...] = ()


@dataclass(frozen=True)
class JailSpec:
    argv: tuple[str, ...]
    limits: BoxLimits
    binds: tuple[Bind, ...] = ()
    # Host paths that are symlinks on the host (e.g. /bin -> usr/bin on a merged-/usr
    # system) are recreated as the same symlink inside: (link path, target).
    symlinks: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = BOX_WORKDIR
    seccomp: SeccompProfile = field(default_factory=SeccompProfile)
    stdin: bytes = b""
    merge_stderr: bool = False  # compile steps: one stream keeps gcc's messages in order
    slot: int = 0  # the box slot; picks the host uid/gid the program runs as
    # Record when each setup step of the box ends (JailOutcome.steps): for `make bench`.
    trace_steps: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The child-side part of the spec (no stdin: it travels as a file descriptor)."""
        wire = asdict(self)
        del wire["stdin"]
        return wire

    @staticmethod
    def from_wire(data: dict[str, Any]) -> JailSpec:
        return JailSpec(
            argv=tuple(data["argv"]),
            limits=BoxLimits(**data["limits"]),
            binds=tuple(Bind(**b) for b in data["binds"]),
            symlinks=tuple((a, b) for a, b in data["symlinks"]),
            env=tuple((k, v) for k, v in data["env"]),
            cwd=data["cwd"],
            seccomp=SeccompProfile(extra_syscalls=tuple(data["seccomp"]["extra_syscalls"])),
            merge_stderr=data["merge_stderr"],
            slot=data["slot"],
            trace_steps=data.get("trace_steps", False),
        )


@dataclass(frozen=True)
class BoxShape:
    """What a box is built with before it knows its job: the rootfs (read-only binds,
    symlinks) and the mount points of the job's own mounts (`late`: the workspace's
    /box, /tmp, /dev/shm), which are attached only when the box is taken.

    Boxes of one shape and one slot are interchangeable: the warm pool's key.
    """

    binds: tuple[Bind, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()
    late: tuple[tuple[str, bool], ...] = ()  # (mount point, is a directory)
    trace_steps: bool = False

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_wire(data: dict[str, Any]) -> BoxShape:
        return BoxShape(
            binds=tuple(Bind(**b) for b in data["binds"]),
            symlinks=tuple((a, b) for a, b in data["symlinks"]),
            late=tuple((t, bool(d)) for t, d in data["late"]),
            trace_steps=data["trace_steps"],
        )


def split_binds(spec: JailSpec, late_root: str) -> tuple[BoxShape, tuple[Bind, ...]]:
    """The spec's shape, and the binds attached at take time: those of a host path
    below `late_root` (the daemon's workspaces) mounted where no other bind is above or
    below them. Whether such a source is a directory is read here, on the host."""
    prefix = late_root.rstrip("/") + "/"

    def nested(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

    late: list[Bind] = []
    early: list[Bind] = []
    for bind in spec.binds:
        others = [o.target for o in spec.binds if o is not bind]
        if bind.source.startswith(prefix) and not any(nested(bind.target, t) for t in others):
            late.append(bind)
        else:
            early.append(bind)
    late.sort(key=lambda b: b.target)
    points = tuple((b.target, os.path.isdir(b.source)) for b in late)
    shape = BoxShape(binds=tuple(early), symlinks=spec.symlinks, late=points,
                     trace_steps=spec.trace_steps)
    return shape, tuple(late)


class Termination(StrEnum):
    """Why the box ended; when several apply, each is also a flag on the outcome."""

    EXITED = "exited"
    SIGNALED = "signaled"
    CPU_LIMIT = "cpu limit"
    WALL_LIMIT = "wall limit"
    MEMORY_LIMIT = "memory limit"
    OUTPUT_LIMIT = "output limit"
    SETUP_ERROR = "setup error"


@dataclass(frozen=True)
class JailOutcome:
    termination: Termination
    exit_code: int | None = None
    signal: int | None = None
    cpu_ms: int = 0
    wall_ms: int = 0
    memory_bytes: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    # Every limit that was hit, whichever ended the run first.
    cpu_exceeded: bool = False
    wall_exceeded: bool = False
    oom_killed: bool = False
    output_exceeded: bool = False
    # The kernel refused an allocation larger than the memory limit (evidence for MLE
    # when the program then failed), see stage.py.
    memory_refused: bool = False
    setup_error: str | None = None  # "step: strerror" when the sandbox itself failed
    # JailSpec.trace_steps: ("<who> <step>", CLOCK_MONOTONIC ns when it ended), in time
    # order; who is S (supervisor), F (fork server), D, I or P (stage.py). Else empty.
    steps: tuple[tuple[str, int], ...] = ()


class JailError(Exception):
    """The sandbox could not be built or run: never the program's fault."""
