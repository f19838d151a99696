"""One small `Cgroup` interface, two backends: cgroup v2 and v1 (hybrid hosts).

Every box gets its own cgroup, created below the daemon's own cgroup (read
from /proc/self/cgroup) or below a configured root (`sandbox.cgroup_root`),
never anywhere else:

    <own cgroup>/sandboxd/box-<daemon pid>-<seq>     (default)
    <cgroup_root>/box-<daemon pid>-<seq>             (cgroup_root configured)

The daemon pid in the name lets a new instance sweep the boxes a killed
instance left behind without touching those of an instance still running.

v2 (production; systemd `Delegate=yes`): a cgroup may not both hold processes
and enable controllers for its children ("no internal processes"). Default:
the daemon first moves itself into `<own>/daemon`, a leaf, then enables
`cpu memory pids` in `<own>` and `<own>/sandboxd`. With `cgroup_root`: the root
is created if missing and the controllers are enabled, where they are not yet,
in every cgroup from the mount root down to it; the daemon stays where it is.

v1 (hybrid hosts such as our CI): one directory per hierarchy; a process joins
by writing to each `cgroup.procs`. Controllers may share a hierarchy (systemd
co-mounts `cpu,cpuacct`): such controllers map to the same directory, and every
operation (mkdir, join, kill, rmdir) touches each distinct directory once.

Memory is split one level further, so that the kernel's OOM killer and the memory
limit only ever see the program:

    box-<pid>-<seq>/            pids and CPU limits, CPU accounting, freezer / kill
        keeper/                 memory of the box's own processes (D and its init)
        program/                memory of the program and everything it starts: the limit

The box's first step, before any code of the user runs, is to write "0" into
every path of `procs_files` (see stage.py), so nothing runs unaccounted; the
program moves itself into `program/` (through a descriptor the supervisor opened)
before its execve.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ._proc import mountinfo as _mountinfo
from ._proc import pid_alive
from .spec import JailError

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("cpu", "memory", "pids")
KEEPER = "keeper"
PROGRAM = "program"
# D and the init are forked interpreters of ~30 MiB; a bound, never reached in practice.
KEEPER_MEMORY_BYTES = 256 << 20
CPU_PERIOD_US = 100_000
ROOT_KEY = "sandbox.cgroup_root"
_BOX_SEQUENCE = itertools.count(1)  # the config key named in set-up errors


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    processes: int
    cpu_share: float  # CPUs the box may use at once


@dataclass(frozen=True)
class CgroupStats:
    cpu_ns: int
    memory_peak_bytes: int
    oom_kills: int  # processes the kernel OOM-killed in the box
    oom_events: int  # times the memory limit was hit and reclaim could not help
    file_cache_bytes: int  # page cache of files the box read: reclaimable, not the program's


def parse_cpu_usage_ns(text: str) -> int:
    """CPU time in ns from the text of `accounting_files[0]`: v1 cpuacct.usage is a plain
    number of ns, v2 cpu.stat has a `usage_usec` line. Pure (runs between fork and exec)."""
    for line in text.splitlines():
        if line.startswith("usage_usec "):
            return int(line[11:]) * 1000
    return int(text)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str, key: str) -> int:
    """The value of `key` in a flat-keyed file such as memory.events or cpu.stat."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _os_error(e: OSError) -> str:
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "?"
    return f"{e.strerror or e} ({name})"


class Cgroup(ABC):
    """One box's cgroup."""

    name: str

    @property
    @abstractmethod
    def procs_files(self) -> tuple[str, ...]:
        """Files a process writes "0" into to join this cgroup (each directory once)."""

    @property
    @abstractmethod
    def program_procs_file(self) -> str:
        """The program's memory cgroup's cgroup.procs: the program writes "0" into it
        (through a descriptor opened by the supervisor: Linux 5.16+ checks the opener's
        credentials) before its execve."""

    @property
    @abstractmethod
    def accounting_files(self) -> tuple[str, str, str, str]:
        """(box CPU counter, program memory peak, program memory limit, second limit
        file) for the box's init: the counter read-only, re-read with `os.pread(fd,
        4096, 0)` and `parse_cpu_usage_ns`; the peak read-write (any write restarts a v1
        peak; "reset" a v2 one, Linux 6.12+, for reads through the same open file); the
        limit files write-only, written in order when lowering (v1: memory limit, then
        memsw; v2: memory.max twice).

        Checked on Linux 6.18 v1 and 6.1 v2 (VM lane): cgroup files are seq_files,
        regenerated on every read at offset 0, so one fd opened before the box starts
        follows the counter. tests/integration/test_cgroup_usage.py."""

    @abstractmethod
    def set_limits(self, limits: CgroupLimits) -> None:
        """The program's memory limit, the box's process count and CPU share: written
        when the box is created and again when a warm box is taken for a job (memory
        only ever raised then: a warm box waits under the setup's headroom)."""

    @abstractmethod
    def cpu_ns(self) -> int: ...

    def program_pids(self) -> list[int]:
        """The processes in the program's memory cgroup (host pids)."""
        try:
            return [int(p) for p in _read(Path(self.program_procs_file)).split()]
        except FileNotFoundError:
            return []

    @abstractmethod
    def stats(self) -> CgroupStats:
        """CPU of the whole box; memory of the program's cgroup only."""

    @abstractmethod
    def pids(self) -> list[int]: ...

    @abstractmethod
    def kill_all(self) -> None:
        """Kill every process in the box; a process forking meanwhile cannot escape."""

    @abstractmethod
    def remove(self, timeout: float = 2.0) -> None:
        """Remove the (empty) cgroup; raises JailError if it stays busy."""


class CgroupBackend(ABC):
    version: str
    cgroup_root: str | None

    def new_name(self) -> str:
        # One sequence per process: two backends (two Sandboxes) never pick one name.
        return f"box-{os.getpid()}-{next(_BOX_SEQUENCE)}"

    def prepare(self) -> None:
        """Once at start: create the box parent, enable controllers, sweep stale boxes.
        Every failure is a JailError naming the path (and the config key, if set)."""
        try:
            self._prepare()
            self.sweep_stale()
        except (JailError, OSError) as e:
            raise JailError(f"{self._where()}{e}") from None

    def _where(self) -> str:
        if self.cgroup_root is None:
            return f"cgroup {self.version}: "
        return f'cgroup {self.version}, {ROOT_KEY} = "{self.cgroup_root}": '

    @abstractmethod
    def _prepare(self) -> None: ...

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
                wait_empty(cgroup)
                cgroup.remove()
                removed += 1
        return removed

    @abstractmethod
    def open(self, name: str) -> Cgroup: ...


def wait_empty(cgroup: Cgroup, timeout: float = 5.0) -> None:
    """Kill every process of `cgroup` until none is left (blocking); JailError if some
    survive `timeout` seconds."""
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


def _mkdir(path: Path, *, parents: bool) -> None:
    try:
        path.mkdir(parents=parents, exist_ok=True)
    except OSError as e:
        raise JailError(f"cannot create cgroup {path}: {_os_error(e)}") from None


def _check_root(root: str) -> None:
    parts = root.split("/")
    if not root.startswith("/") or any(p in (".", "..") for p in parts):
        raise JailError(f'{ROOT_KEY} = "{root}": must be an absolute cgroup path '
                        'without "." or ".." (e.g. "/sandboxd")')


# --------------------------------------------------------------------------- v2


def _enable_all(path: Path) -> None:
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        _write(path / "cgroup.subtree_control", enable)
    except OSError as e:
        raise JailError(
            f"cannot enable {enable} in {path / 'cgroup.subtree_control'}: {_os_error(e)} "
            f"(other processes in that cgroup? use systemd Delegate=yes or {ROOT_KEY})"
        ) from None


class V2Cgroup(Cgroup):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.program = path / PROGRAM
        self.keeper = path / KEEPER

    @property
    def procs_files(self) -> tuple[str, ...]:
        # "No internal processes": with memory enabled for its children, the box itself
        # holds none; D joins the keeper leaf.
        return (str(self.keeper / "cgroup.procs"),)

    @property
    def program_procs_file(self) -> str:
        return str(self.program / "cgroup.procs")

    @property
    def accounting_files(self) -> tuple[str, str, str, str]:
        peak = self.program / "memory.peak"  # Linux 5.19
        return (str(self.path / "cpu.stat"),
                str(peak if peak.exists() else self.program / "memory.current"),
                str(self.program / "memory.max"), str(self.program / "memory.max"))

    def _set_box_limits(self, limits: CgroupLimits) -> None:
        _write(self.path / "pids.max", str(limits.processes))
        quota = max(1000, int(limits.cpu_share * CPU_PERIOD_US))
        _write(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def set_limits(self, limits: CgroupLimits) -> None:
        self._set_box_limits(limits)
        _write(self.program / "memory.max", str(limits.memory_bytes))

    def cpu_ns(self) -> int:
        return parse_cpu_usage_ns(_read(self.path / "cpu.stat"))

    def stats(self) -> CgroupStats:
        events = _read(self.program / "memory.events")
        stat = _read(self.program / "memory.stat")
        return CgroupStats(
            cpu_ns=self.cpu_ns(),
            memory_peak_bytes=int(_read(Path(self.accounting_files[1]))),
            oom_kills=_keyed(events, "oom_kill"),
            oom_events=_keyed(events, "oom"),
            file_cache_bytes=_keyed(stat, "active_file") + _keyed(stat, "inactive_file"),
        )

    def pids(self) -> list[int]:
        found: list[int] = []
        for leaf in (self.keeper, self.program, self.path):
            try:
                found += [int(p) for p in _read(leaf / "cgroup.procs").split()]
            except FileNotFoundError:
                pass
        return found

    def kill_all(self) -> None:
        if not self.path.exists():
            return
        # A missing interface file answers EACCES on cgroupfs, not ENOENT: test first.
        if (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")  # Linux 5.14: the whole subtree at once
        else:
            _freeze_kill_thaw(self.path / "cgroup.freeze", "1", "0", self.pids)

    def remove(self, timeout: float = 2.0) -> None:
        for path in (self.program, self.keeper, self.path):
            _rmdir_retry(path, timeout)


class V2Backend(CgroupBackend):
    version = "v2"

    def __init__(self, mount: Path, own: str, *, cgroup_root: str | None = None) -> None:
        """`own`: the daemon's cgroup (boxes go below `<own>/sandboxd`), unless
        `cgroup_root` is set: then boxes live directly below `<mount><cgroup_root>`."""
        super().__init__()
        self.mount = mount
        self.cgroup_root = cgroup_root
        if cgroup_root is None:
            self.base = mount / own.lstrip("/")
            self.root = self.base / "sandboxd"
        else:
            _check_root(cgroup_root)
            self.base = self.root = mount / cgroup_root.lstrip("/")
        # Only a daemon creating below its own cgroup must leave it (no internal processes).
        self.move_self = cgroup_root is None

    def _prepare(self) -> None:
        if self.cgroup_root is None:
            self._prepare_own()
        else:
            self._prepare_root()

    def _controllers(self, path: Path) -> list[str]:
        try:
            available = _read(path / "cgroup.controllers").split()
        except OSError as e:
            raise JailError(f"cannot read {path / 'cgroup.controllers'}: {_os_error(e)}") from None
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise JailError(
                f"{path} lacks controller(s) {' '.join(missing)}; "
                f"run under systemd with Delegate=yes or set {ROOT_KEY}"
            )
        return available

    def _prepare_own(self) -> None:
        self._controllers(self.base)
        if self.move_self and self.base != self.mount:
            # No internal processes: our own cgroup must be empty before it can enable
            # controllers for its children, so the daemon moves into a leaf of its own.
            leaf = self.base / "daemon"
            _mkdir(leaf, parents=False)
            for pid in _read(self.base / "cgroup.procs").split():
                try:
                    _write(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    pass
        _enable_all(self.base)
        _mkdir(self.root, parents=False)
        _enable_all(self.root)

    def _prepare_root(self) -> None:
        # Controllers reach a cgroup only through its parent's subtree_control: walk from
        # the mount root down, creating what is missing, enabling only what is not yet on.
        path = self.mount
        for part in [None, *self.root.relative_to(self.mount).parts]:
            if part is not None:
                path = path / part
                _mkdir(path, parents=False)
            self._controllers(path)
            control = path / "cgroup.subtree_control"
            try:
                enabled = _read(control).split()
            except OSError as e:
                raise JailError(f"cannot read {control}: {_os_error(e)}") from None
            missing = " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in enabled)
            if not missing:
                continue
            try:
                _write(control, missing)
            except OSError as e:
                hint = (" (that cgroup holds processes: no internal processes)"
                        if e.errno == errno.EBUSY else "")
                raise JailError(f"cannot enable {missing} in {control}: "
                                f"{_os_error(e)}{hint}") from None

    def box_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("box-"))

    def open(self, name: str) -> Cgroup:
        return V2Cgroup(self.root / name)

    def create(self, limits: CgroupLimits) -> Cgroup:
        cgroup = V2Cgroup(self.root / self.new_name())
        made: list[Path] = []
        try:
            cgroup.path.mkdir()
            made.append(cgroup.path)
            cgroup._set_box_limits(limits)
            _write(cgroup.path / "cgroup.subtree_control", "+memory")
            for leaf, memory in ((cgroup.keeper, KEEPER_MEMORY_BYTES),
                                 (cgroup.program, limits.memory_bytes)):
                leaf.mkdir()
                made.append(leaf)
                _write(leaf / "memory.max", str(memory))
                if (leaf / "memory.swap.max").exists():
                    _write(leaf / "memory.swap.max", "0")
        except OSError:
            for path in reversed(made):
                os.rmdir(path)
            raise
        return cgroup


# --------------------------------------------------------------------------- v1


def _freeze_kill_thaw(state_file: Path, frozen: str, thawed: str,
                      pids: Callable[[], list[int]]) -> None:
    """SIGKILL all at once (a program over its CPU limit stops now, not after the freeze
    settles), then freeze so nothing forked meanwhile escapes, SIGKILL all, thaw to let
    them die."""
    victims = pids()
    if not victims:
        return  # an empty cgroup gains no process by itself: nothing to freeze
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
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


def _distinct(paths: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _set_v1_memory(leaf: Path, memory: int) -> None:
    """memsw = memory + swap; equal to the memory limit: no swap at all. v1 refuses a
    memory limit above memsw (EINVAL): raising, memsw goes first."""
    memsw = leaf / "memory.memsw.limit_in_bytes"
    if not memsw.exists():
        _write(leaf / "memory.limit_in_bytes", str(memory))
        return
    try:
        _write(leaf / "memory.limit_in_bytes", str(memory))
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _write(memsw, str(memory))
        _write(leaf / "memory.limit_in_bytes", str(memory))
    _write(memsw, str(memory))


class V1Cgroup(Cgroup):
    def __init__(self, dirs: dict[str, Path]) -> None:
        """`dirs`: controller -> directory; co-mounted controllers share one."""
        self.dirs = dirs
        self.distinct_dirs = _distinct(dirs.values())
        self.name = dirs["memory"].name
        self.program = dirs["memory"] / PROGRAM
        self.keeper = dirs["memory"] / KEEPER

    @property
    def procs_files(self) -> tuple[str, ...]:
        # In the memory hierarchy (whatever is co-mounted with it) D joins the keeper.
        return tuple(str((self.keeper if d == self.dirs["memory"] else d) / "cgroup.procs")
                     for d in self.distinct_dirs)

    @property
    def program_procs_file(self) -> str:
        return str(self.program / "cgroup.procs")

    @property
    def accounting_files(self) -> tuple[str, str, str, str]:
        memsw = self.program / "memory.memsw.limit_in_bytes"
        limit = self.program / "memory.limit_in_bytes"
        return (str(self.dirs["cpuacct"] / "cpuacct.usage"),
                str(self.program / "memory.max_usage_in_bytes"),
                str(limit), str(memsw if memsw.exists() else limit))

    def _set_box_limits(self, limits: CgroupLimits) -> None:
        _write(self.dirs["pids"] / "pids.max", str(limits.processes))
        cpu = self.dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_share * CPU_PERIOD_US))))

    def set_limits(self, limits: CgroupLimits) -> None:
        _set_v1_memory(self.program, limits.memory_bytes)
        self._set_box_limits(limits)

    def cpu_ns(self) -> int:
        return parse_cpu_usage_ns(_read(self.dirs["cpuacct"] / "cpuacct.usage"))

    def stats(self) -> CgroupStats:
        oom_kills = _keyed(_read(self.program / "memory.oom_control"), "oom_kill")
        stat = _read(self.program / "memory.stat")
        return CgroupStats(
            cpu_ns=self.cpu_ns(),
            memory_peak_bytes=int(_read(self.program / "memory.max_usage_in_bytes")),
            oom_kills=oom_kills,
            oom_events=oom_kills,  # v1 counts no separate "limit hit" event
            file_cache_bytes=(_keyed(stat, "total_active_file")
                              + _keyed(stat, "total_inactive_file")),
        )

    def pids(self) -> list[int]:
        freezer = self.dirs["freezer"]
        # Where the freezer shares the memory hierarchy, the box's processes sit in its
        # keeper/ and program/ children, not in the box directory itself.
        leaves = [freezer] + ([self.keeper, self.program]
                              if freezer == self.dirs["memory"] else [])
        found: list[int] = []
        for leaf in leaves:
            try:
                found += [int(p) for p in _read(leaf / "cgroup.procs").split()]
            except FileNotFoundError:
                pass
        return found

    def kill_all(self) -> None:
        if self.dirs["freezer"].exists():
            _freeze_kill_thaw(self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED",
                              self.pids)

    def remove(self, timeout: float = 2.0) -> None:
        for path in (self.program, self.keeper, *self.distinct_dirs):
            _rmdir_retry(path, timeout)


class V1Backend(CgroupBackend):
    version = "v1"

    def __init__(self, mounts: dict[str, Path], own: dict[str, str], *,
                 cgroup_root: str | None = None) -> None:
        """`mounts`: controller -> its hierarchy's mount point (co-mounted controllers:
        the same one); `own`: controller -> the daemon's cgroup. Boxes go below
        `<own>/sandboxd`, or directly below `<cgroup_root>` when that is set."""
        super().__init__()
        self.cgroup_root = cgroup_root
        if cgroup_root is not None:
            _check_root(cgroup_root)
        self.roots: dict[str, Path] = {}
        for c in V1_CONTROLLERS:
            # A symlinked mount point (systemd's cpu -> cpu,cpuacct) is the same hierarchy.
            mount = Path(os.path.realpath(mounts[c]))
            if cgroup_root is None:
                self.roots[c] = mount / own.get(c, "/").lstrip("/") / "sandboxd"
            else:
                self.roots[c] = mount / cgroup_root.lstrip("/")
        self.root_dirs = _distinct(self.roots.values())

    def _prepare(self) -> None:
        for root in self.root_dirs:
            # Our own cgroup exists; a configured root may need its parents created.
            _mkdir(root, parents=self.cgroup_root is not None)

    def box_dirs(self) -> list[Path]:
        names: set[str] = set()
        for root in self.root_dirs:
            if root.is_dir():
                names.update(p.name for p in root.iterdir()
                             if p.is_dir() and p.name.startswith("box-"))
        return [self.roots["memory"] / n for n in sorted(names)]

    def open(self, name: str) -> Cgroup:
        return V1Cgroup(self._dirs(name))

    def create(self, limits: CgroupLimits) -> Cgroup:
        cgroup = V1Cgroup(self._dirs(self.new_name()))
        made: list[Path] = []
        try:
            for path in cgroup.distinct_dirs:
                path.mkdir()
                made.append(path)
            for leaf, memory in ((cgroup.keeper, KEEPER_MEMORY_BYTES),
                                 (cgroup.program, limits.memory_bytes)):
                leaf.mkdir()
                made.append(leaf)
                _set_v1_memory(leaf, memory)
            cgroup._set_box_limits(limits)
        except OSError:
            for path in reversed(made):
                os.rmdir(path)
            raise
        return cgroup

    def _dirs(self, name: str) -> dict[str, Path]:
        return {c: root / name for c, root in self.roots.items()}


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


def _v2_mount(mounts: list[tuple[str, str, str]]) -> Path | None:
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
    """The backend this host supports ("auto": v2 when its controllers are usable, else v1).
    `root`: the configured `sandbox.cgroup_root`, or None for below our own cgroup."""
    if root is not None:
        _check_root(root)
    mounts = _mountinfo()
    own = _own_cgroups()
    if version in ("auto", "v2"):
        mount = _v2_mount(mounts)
        if mount is not None:
            return V2Backend(mount, own.get("", "/"), cgroup_root=root)
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
    return V1Backend(v1_points, own, cgroup_root=root)
