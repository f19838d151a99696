"""One small `Cgroup` interface, two backends: cgroup v2 and v1 (hybrid hosts).

Every box gets its own cgroup, created below the daemon's own cgroup (read
from /proc/self/cgroup) or below a configured root, never anywhere else:

    <base>/sandboxd/box-<daemon pid>-<seq>

The daemon pid in the name lets a new instance sweep the boxes a killed
instance left behind without touching those of an instance still running.

v2 (production; systemd `Delegate=yes`): a cgroup may not both hold processes
and enable controllers for its children ("no internal processes"), so the
daemon first moves itself into `<base>/daemon`, a leaf, then enables
`cpu memory pids` in `<base>` and `<base>/sandboxd`.

v1 (hybrid hosts such as our CI): one directory per hierarchy (memory, cpu,
cpuacct, pids, freezer); a process joins by writing to each `cgroup.procs`.

The box's first step, before any code of the user runs, is to write "0" into
every path of `procs_files` (see stage.py), so nothing runs unaccounted.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ._proc import mountinfo as _mountinfo
from ._proc import pid_alive
from .spec import JailError

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    processes: int
    cpu_share: float  # CPUs the box may use at once


@dataclass(frozen=True)
class CgroupStats:
    cpu_ns: int
    memory_peak_bytes: int
    oom_kills: int
    file_cache_bytes: int = 0
    oom_events: int = 0


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _file_cache(stat: Path, keys: tuple[str, ...]) -> int:
    try:
        text = _read(stat)
    except FileNotFoundError:
        return 0
    return sum(_keyed(text, k) for k in keys)


def _keyed(text: str, key: str) -> int:
    """The value of `key` in a flat-keyed file such as memory.events or cpu.stat."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class Cgroup(ABC):
    """One box's cgroup."""

    name: str

    @property
    @abstractmethod
    def procs_files(self) -> tuple[str, ...]:
        """Files a process writes "0" into to join this cgroup (all hierarchies)."""

    @abstractmethod
    def cpu_ns(self) -> int: ...

    @property
    @abstractmethod
    def accounting_files(self) -> tuple[str, str, str, str, str]:
        """Paths the supervisor opens for the box's init: the CPU counter and memory
        counter (read-only), the memory peak (read-write, restarted at the program's
        execve), and two memory limit files (v1 memory + memsw; v2 memory.max twice),
        written in that order when the limit is lowered."""

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    @abstractmethod
    def start_program(self, memory_limit: int) -> int:
        """The box's own setup is done and its program starts now: measure what the
        setup processes use, grant the program its full `memory_limit` on top of that,
        and restart the peak from here. Returns that baseline (bytes)."""

    @abstractmethod
    def pids(self) -> list[int]: ...

    @abstractmethod
    def kill_all(self) -> None:
        """Kill every process in the box; a process forking meanwhile cannot escape."""

    @abstractmethod
    def remove(self) -> None:
        """Remove the (empty) cgroup; raises JailError if it stays busy."""


class CgroupBackend(ABC):
    version: str

    def __init__(self) -> None:
        self._seq = itertools.count(1)

    def new_name(self) -> str:
        return f"box-{os.getpid()}-{next(self._seq)}"

    @abstractmethod
    def prepare(self) -> None:
        """Once at start: create the sandboxd subtree, enable controllers, sweep stale boxes."""

    @abstractmethod
    def create(self, limits: CgroupLimits) -> Cgroup: ...

    @abstractmethod
    def box_dirs(self) -> list[Path]:
        """Every box cgroup directory currently present (for sweeping and leak checks)."""

    def sweep_stale(self) -> int:
        """Kill and remove boxes whose daemon is gone. Returns how many were removed."""
        removed = 0
        for path in self.box_dirs():
            parts = path.name.split("-")
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid():
                if pid_alive(int(parts[1])):
                    continue
                cgroup = self.open(path.name)
                cgroup.kill_all()
                _wait_empty(cgroup)
                cgroup.remove()
                removed += 1
        return removed

    @abstractmethod
    def open(self, name: str) -> Cgroup: ...


def _wait_empty(cgroup: Cgroup, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while cgroup.pids():
        if time.monotonic() > deadline:
            raise JailError(f"cgroup {cgroup.name}: processes survive SIGKILL")
        cgroup.kill_all()
        time.sleep(0.005)


def _rmdir_retry(path: Path, timeout: float = 2.0) -> None:
    # A killed task leaves the cgroup only once it is fully released: retry on EBUSY.
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise JailError(f"cannot remove cgroup {path}: {e.strerror}") from None
            time.sleep(0.002)


# --------------------------------------------------------------------------- v2


class V2Cgroup(Cgroup):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self._peak_fd: int | None = None

    @property
    def accounting_files(self) -> tuple[str, str, str, str, str]:
        peak = self.path / "memory.peak"
        return (str(self.path / "cpu.stat"), str(self.path / "memory.current"),
                str(peak if peak.exists() else self.path / "memory.current"),
                str(self.path / "memory.max"), str(self.path / "memory.max"))

    def start_program(self, memory_limit: int, baseline: int | None = None) -> int:
        if baseline is None:
            baseline = int(_read(self.path / "memory.current"))
        _write(self.path / "memory.max", str(memory_limit + baseline))
        # Linux 6.12: writing to memory.peak restarts it for reads through the same fd.
        try:
            fd = os.open(self.path / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return baseline
        try:
            os.write(fd, b"reset")
        except OSError:
            os.close(fd)
        else:
            self._peak_fd = fd
        return baseline

    def _peak(self) -> int:
        if self._peak_fd is not None:
            try:
                return int(os.pread(self._peak_fd, 64, 0))
            finally:
                os.close(self._peak_fd)
                self._peak_fd = None
        try:
            return int(_read(self.path / "memory.peak"))
        except FileNotFoundError:  # kernels before 5.19 have no memory.peak
            return int(_read(self.path / "memory.current"))

    @property
    def procs_files(self) -> tuple[str, ...]:
        return (str(self.path / "cgroup.procs"),)

    def cpu_ns(self) -> int:
        return _keyed(_read(self.path / "cpu.stat"), "usage_usec") * 1000

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu_ns=self.cpu_ns(),
            memory_peak_bytes=self._peak(),
            oom_kills=_keyed(_read(self.path / "memory.events"), "oom_kill"),
            file_cache_bytes=_file_cache(self.path / "memory.stat",
                                         ("active_file", "inactive_file")),
        )

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.path / "cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def kill_all(self) -> None:
        if not self.path.exists():
            return
        # A missing interface file answers EACCES on cgroupfs, not ENOENT: test first.
        if (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")  # Linux 5.14: the whole subtree at once
        else:
            _freeze_kill_thaw(self.path / "cgroup.freeze", "1", "0", self.pids)

    def remove(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        _rmdir_retry(self.path)


class V2Backend(CgroupBackend):
    version = "v2"

    def __init__(self, mount: Path, base: str, *, move_self: bool) -> None:
        super().__init__()
        self.mount = mount
        self.base = mount / base.lstrip("/")
        self.root = self.base / "sandboxd"
        self.move_self = move_self

    def prepare(self) -> None:
        available = _read(self.base / "cgroup.controllers").split()
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise JailError(
                f"cgroup v2: {self.base} lacks controller(s) {' '.join(missing)}; "
                "run under systemd with Delegate=yes or set sandbox.cgroup_root"
            )
        if self.move_self and self.base != self.mount:
            # No internal processes: our own cgroup must be empty before it can enable
            # controllers for its children, so the daemon moves into a leaf of its own.
            leaf = self.base / "daemon"
            leaf.mkdir(exist_ok=True)
            for pid in _read(self.base / "cgroup.procs").split():
                try:
                    _write(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    pass
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        try:
            _write(self.base / "cgroup.subtree_control", enable)
            self.root.mkdir(exist_ok=True)
            _write(self.root / "cgroup.subtree_control", enable)
        except OSError as e:
            raise JailError(
                f"cgroup v2: cannot enable {enable} below {self.base}: {e.strerror} "
                "(other processes in that cgroup? use systemd Delegate=yes or sandbox.cgroup_root)"
            ) from None
        self.sweep_stale()

    def box_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("box-"))

    def open(self, name: str) -> Cgroup:
        return V2Cgroup(self.root / name)

    def create(self, limits: CgroupLimits) -> Cgroup:
        path = self.root / self.new_name()
        path.mkdir()
        try:
            _write(path / "memory.max", str(limits.memory_bytes))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
            _write(path / "pids.max", str(limits.processes))
            quota = max(1000, int(limits.cpu_share * CPU_PERIOD_US))
            _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        except OSError:
            os.rmdir(path)
            raise
        return V2Cgroup(path)


# --------------------------------------------------------------------------- v1


def _freeze_kill_thaw(state_file: Path, frozen: str, thawed: str, pids) -> None:
    """Freeze so nothing forks between listing and killing, SIGKILL all, thaw to let them die."""
    try:
        _write(state_file, frozen)
        for pid in pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        try:
            _write(state_file, thawed)
        except FileNotFoundError:
            pass


class V1Cgroup(Cgroup):
    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self.name = dirs["memory"].name

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in self.dirs.values())

    def cpu_ns(self) -> int:
        return int(_read(self.dirs["cpuacct"] / "cpuacct.usage"))

    @property
    def accounting_files(self) -> tuple[str, str, str, str, str]:
        memory = self.dirs["memory"]
        memsw = memory / "memory.memsw.limit_in_bytes"
        limit = memory / "memory.limit_in_bytes"
        return (str(self.dirs["cpuacct"] / "cpuacct.usage"),
                str(memory / "memory.usage_in_bytes"),
                str(memory / "memory.max_usage_in_bytes"),
                str(limit), str(memsw if memsw.exists() else limit))

    def start_program(self, memory_limit: int, baseline: int | None = None) -> int:
        memory = self.dirs["memory"]
        if baseline is None:
            baseline = int(_read(memory / "memory.usage_in_bytes"))
        limit = str(memory_limit + baseline)
        # Raising: memsw (memory + swap) first, as it may never be below the memory limit.
        memsw = memory / "memory.memsw.limit_in_bytes"
        lowering = int(limit) < int(_read(memory / "memory.limit_in_bytes"))
        # memsw (memory + swap) may never be below the memory limit: order the writes.
        if memsw.exists() and not lowering:
            _write(memsw, limit)
        _write(memory / "memory.limit_in_bytes", limit)
        if memsw.exists() and lowering:
            _write(memsw, limit)
        _write(memory / "memory.max_usage_in_bytes", "0")  # restart the peak from now
        return baseline

    def stats(self) -> CgroupStats:
        memory = self.dirs["memory"]
        return CgroupStats(
            cpu_ns=self.cpu_ns(),
            memory_peak_bytes=int(_read(memory / "memory.max_usage_in_bytes")),
            oom_kills=_keyed(_read(memory / "memory.oom_control"), "oom_kill"),
            file_cache_bytes=_file_cache(memory / "memory.stat",
                                         ("total_active_file", "total_inactive_file")),
        )

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.dirs["freezer"] / "cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def kill_all(self) -> None:
        if self.dirs["freezer"].exists():
            _freeze_kill_thaw(self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED",
                              self.pids)

    def remove(self) -> None:
        for path in self.dirs.values():
            _rmdir_retry(path)


class V1Backend(CgroupBackend):
    version = "v1"

    def __init__(self, hierarchies: dict[str, Path]) -> None:
        """`hierarchies` maps each controller to the directory boxes live under."""
        super().__init__()
        self.roots = {c: path / "sandboxd" for c, path in hierarchies.items()}

    def prepare(self) -> None:
        for root in self.roots.values():
            root.mkdir(exist_ok=True)
        self.sweep_stale()

    def box_dirs(self) -> list[Path]:
        names: set[str] = set()
        for root in self.roots.values():
            if root.is_dir():
                names.update(p.name for p in root.iterdir()
                             if p.is_dir() and p.name.startswith("box-"))
        return [self.roots["memory"] / n for n in sorted(names)]

    def open(self, name: str) -> Cgroup:
        return V1Cgroup({c: root / name for c, root in self.roots.items()})

    def create(self, limits: CgroupLimits) -> Cgroup:
        name = self.new_name()
        cgroup = V1Cgroup({c: root / name for c, root in self.roots.items()})
        made: list[Path] = []
        try:
            for path in cgroup.dirs.values():
                path.mkdir()
                made.append(path)
            memory = cgroup.dirs["memory"]
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                # memsw = memory + swap; equal to the memory limit means no swap at all.
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            _write(cgroup.dirs["pids"] / "pids.max", str(limits.processes))
            cpu = cgroup.dirs["cpu"]
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_share * CPU_PERIOD_US))))
        except OSError:
            for path in reversed(made):
                os.rmdir(path)
            raise
        return cgroup


# --------------------------------------------------------------------------- detection


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for the v2 unified entry) -> this process's cgroup path."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


def _v2_mount(mounts) -> Path | None:
    for point, fstype, _ in mounts:
        if fstype == "cgroup2":
            path = Path(point)
            try:
                available = _read(path / "cgroup.controllers").split()
            except OSError:
                continue
            if all(c in available for c in V2_CONTROLLERS):
                return path
    return None


def detect(version: str = "auto", root: str | None = None) -> CgroupBackend:
    """The backend this host supports ("auto": v2 when its controllers are usable, else v1)."""
    mounts = _mountinfo()
    own = _own_cgroups()
    if version in ("auto", "v2"):
        mount = _v2_mount(mounts)
        if mount is not None:
            return V2Backend(mount, root or own.get("", "/"), move_self=root is None)
        if version == "v2":
            raise JailError("cgroup v2 requested, but no cgroup2 mount has cpu, memory and pids")
    v1_points = {}
    for point, fstype, options in mounts:
        if fstype == "cgroup":
            for c in options.split(","):
                if c in V1_CONTROLLERS:
                    v1_points[c] = Path(point)
    missing = [c for c in V1_CONTROLLERS if c not in v1_points]
    if missing:
        raise JailError(
            "no usable cgroups: cgroup2 lacks cpu/memory/pids and cgroup v1 lacks "
            + " ".join(missing)
        )
    return V1Backend({
        c: v1_points[c] / (root or own.get(c, "/")).lstrip("/") for c in V1_CONTROLLERS
    })
