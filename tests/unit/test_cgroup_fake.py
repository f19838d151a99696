"""The cgroup v2 and v1 backends against a fake cgroupfs in tmp_path (no root needed).

`FakeCgroupFs` makes a plain directory behave like cgroupfs wherever the backends can
tell the difference, as checked on a real 6.x kernel:

- mkdir of a cgroup creates its interface files (with the kernel's initial values);
  mkdir of an existing cgroup fails with EEXIST;
- rmdir removes a cgroup with its interface files, but fails with EBUSY while
  processes are in it (`cgroup.procs` not empty) or child cgroups exist;
- opening an interface file that does not exist for writing fails with EACCES (kernfs
  has no `create`), and with ENOENT when the cgroup directory itself is gone;
- v2: a new cgroup's `cgroup.controllers` are its parent's `cgroup.subtree_control`,
  and a non-root cgroup has the interface files of those controllers only (`memory.*`
  only where memory is enabled by the parent; `cgroup.*` and `cpu.stat` always);
  writing "+c" there fails with ENOENT unless c is in the cgroup's own
  `cgroup.controllers`, and with EBUSY if the (non-root) cgroup holds processes; the
  file then reads "cpu memory pids" (kernel order, no "+") and the children gain (or
  lose) that controller's files; writing a pid into a `cgroup.procs` moves it out of
  every other cgroup, and fails with EBUSY where the (non-root) cgroup enables
  controllers for its children ("no internal processes");
- v1: writing a pid into a `cgroup.procs` moves it out of every other cgroup of the
  same hierarchy only (co-mounted controllers: one hierarchy);
- both: "0" written into a `cgroup.procs` is the writing process (this one);
- v1 memory: the limit may never exceed the memsw limit and vice versa (EINVAL), a
  limit below the usage is refused with EBUSY (nothing reclaimable without swap), and
  writing to `memory.max_usage_in_bytes` resets it to the usage;
- every write, mkdir and rmdir is recorded, so tests check what the backend told the
  "kernel", in order, and how often.

The test plays the kernel for everything else: it writes the statistics files and
removes pids from `cgroup.procs` the way the kernel would.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from sandboxd.jail.spec import JailError

MIB = 1024 * 1024
DEAD_PID = 999_999  # above any pid_max default (32768 / 4194304 is allowed, so we check)
KERNEL_ORDER = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")


def _dead_pid() -> int:
    assert not os.path.exists(f"/proc/{DEAD_PID}")
    return DEAD_PID


def _live_other_pid() -> int:
    pid = os.getppid()
    assert pid != os.getpid() and os.path.exists(f"/proc/{pid}")
    return pid


# ------------------------------------------------------------------------------ the fake


def v2_files(*, controllers: str = "cpu memory pids", swap: bool = True, peak: bool = True,
             kill: bool = True) -> Callable[[Path], dict[str, str]]:
    def files(_cgroup: Path) -> dict[str, str]:
        f = {
            "cgroup.procs": "",
            "cgroup.controllers": controllers,
            "cgroup.subtree_control": "",
            "cgroup.freeze": "0",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "memory.max": "max\n",
            "memory.current": "0\n",
            "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            "memory.stat": "anon 0\nfile 0\nactive_anon 0\ninactive_anon 0\n"
                           "active_file 0\ninactive_file 0\n",
            "pids.max": "max\n",
            "pids.current": "0\n",
            "cpu.max": "max 100000\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        if swap:
            f["memory.swap.max"] = "max\n"
        if peak:
            f["memory.peak"] = "0\n"
        if kill:
            f["cgroup.kill"] = ""
        return f

    return files


V1_FILES = {
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.stat": "cache 0\nrss 0\nactive_anon 0\ninactive_anon 0\nactive_file 0\n"
                       "inactive_file 0\ntotal_cache 0\ntotal_rss 0\ntotal_active_anon 0\n"
                       "total_inactive_anon 0\ntotal_active_file 0\ntotal_inactive_file 0\n",
    },
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n"},
    "cpuacct": {"cpuacct.usage": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}


def v1_files(root: Path, *, memsw: bool = True,
             missing: tuple[str, ...] = ()) -> Callable[[Path], dict[str, str]]:
    """Interface files of a v1 cgroup; the hierarchy is the first component below `root`
    (a co-mounted hierarchy such as "cpu,cpuacct" has every one of its controllers' files)."""

    def files(cgroup: Path) -> dict[str, str]:
        hierarchy = cgroup.relative_to(root).parts[0]
        f = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n"}
        for controller in hierarchy.split(","):
            f.update(V1_FILES.get(controller, {}))
        if not memsw:
            f.pop("memory.memsw.limit_in_bytes", None)
        for name in missing:
            f.pop(name, None)
        return f

    return files


def _oserror(code: int, path: os.PathLike | str) -> OSError:
    return OSError(code, os.strerror(code), str(path))


# v2 interface files that exist only where their controller is enabled (by the parent).
V2_CONTROLLER_FILES = (("memory.", "memory"), ("pids.", "pids"), ("cpu.max", "cpu"),
                       ("cpu.weight", "cpu"))


def _v2_controller(name: str) -> str | None:
    """The controller an interface file belongs to; None for core files (cgroup.*, and
    cpu.stat, which every v2 cgroup has)."""
    for prefix, controller in V2_CONTROLLER_FILES:
        if name.startswith(prefix):
            return controller
    return None


class FakeCgroupFs:
    def __init__(self, root: Path, files: Callable[[Path], dict[str, str]], *,
                 v2: bool = False) -> None:
        self.root = root
        self.files = files
        self.v2 = v2
        self.writes: list[tuple[str, str]] = []  # (path relative to root, value)
        self.mkdirs: list[str] = []  # every mkdir of a new cgroup (relative to root)
        self.rmdirs: list[str] = []  # every rmdir attempted (relative to root)
        self.removed: list[tuple[str, dict[str, str]]] = []  # (cgroup, its files at rmdir)
        self.refuse_mkdir: dict[str, int] = {}  # relative path -> errno mkdir fails with

    def owns(self, path: os.PathLike | str) -> bool:
        p = Path(os.path.abspath(path))
        return p == self.root or self.root in p.parents

    def rel(self, path: os.PathLike | str) -> str:
        return str(Path(os.path.abspath(path)).relative_to(self.root))

    def populate(self, cgroup: Path) -> None:
        files = self.files(cgroup)
        if self.v2 and cgroup != self.root:
            parent_control = cgroup.parent / "cgroup.subtree_control"
            controllers = parent_control.read_text() if parent_control.exists() else ""
            files["cgroup.controllers"] = controllers
            files = {name: content for name, content in files.items()
                     if _v2_controller(name) in (None, *controllers.split())}
        for name, content in files.items():
            (cgroup / name).write_text(content)

    def _v2_enabled_for_children(self, cgroup: Path, text: str) -> None:
        """The kernel, after a subtree_control change: each child's controllers and
        their interface files follow."""
        for child in cgroup.iterdir():
            if not child.is_dir():
                continue
            (child / "cgroup.controllers").write_text(text)
            for name, content in self.files(child).items():
                controller = _v2_controller(name)
                if controller is None:
                    continue
                if controller in text.split() and not (child / name).exists():
                    (child / name).write_text(content)
                elif controller not in text.split() and (child / name).exists():
                    (child / name).unlink()

    def _hierarchy(self, path: Path) -> str:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(self.root)).parts[0]

    def writes_to(self, name: str) -> list[str]:
        return [v for p, v in self.writes if Path(p).name == name]

    def _kernel_write(self, path: Path, value: str) -> bool:
        """The kernel's own handling of a write where a plain file would differ; True if
        the write was handled here."""
        cgroup, name = path.parent, path.name
        if self.v2 and name == "cgroup.subtree_control":
            available = (cgroup / "cgroup.controllers").read_text().split()
            enabled = set(path.read_text().split())
            for token in value.split():
                if token[1:] not in available:
                    raise _oserror(errno.ENOENT, path)
                (enabled.add if token[0] == "+" else enabled.discard)(token[1:])
            if cgroup != self.root and (cgroup / "cgroup.procs").read_text().split():
                raise _oserror(errno.EBUSY, path)
            text = " ".join(c for c in KERNEL_ORDER if c in enabled)
            path.write_text(text)
            self._v2_enabled_for_children(cgroup, text)
            return True
        if name == "cgroup.procs":
            pid = str(os.getpid()) if value.strip() == "0" else value.strip()
            if self.v2:
                if cgroup != self.root and (cgroup / "cgroup.subtree_control").read_text():
                    raise _oserror(errno.EBUSY, path)  # no internal processes
                scope = self.root
            else:
                scope = self.root / self._hierarchy(path)
            for procs in scope.rglob("cgroup.procs"):
                pids = procs.read_text().split()
                if procs != path and pid in pids:
                    procs.write_text("".join(f"{p}\n" for p in pids if p != pid))
            if pid not in path.read_text().split():
                path.write_text(path.read_text() + f"{pid}\n")
            return True
        if name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            new = int(value)
            usage = int((cgroup / "memory.usage_in_bytes").read_text())
            memsw = cgroup / "memory.memsw.limit_in_bytes"
            if name == "memory.limit_in_bytes":
                if memsw.exists() and new > int(memsw.read_text()):
                    raise _oserror(errno.EINVAL, path)
            elif new < int((cgroup / "memory.limit_in_bytes").read_text()):
                raise _oserror(errno.EINVAL, path)
            if new < usage:
                raise _oserror(errno.EBUSY, path)
            return False
        if name == "memory.max_usage_in_bytes":
            path.write_text((cgroup / "memory.usage_in_bytes").read_text())
            return True
        return False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCgroupFs:
        real_mkdir = Path.mkdir
        real_rmdir = os.rmdir
        real_write = cg._write
        fake = self

        def mkdir(path: Path, mode: int = 0o777, parents: bool = False,
                  exist_ok: bool = False) -> None:
            if fake.owns(path) and fake.rel(path) in fake.refuse_mkdir:
                raise _oserror(fake.refuse_mkdir[fake.rel(path)], path)
            existed = path.is_dir()
            real_mkdir(path, mode, parents, exist_ok)
            # pathlib's parents=True re-enters this function for the path itself: populated
            # there already, so count it once.
            if fake.owns(path) and not existed and not any(path.iterdir()):
                fake.mkdirs.append(fake.rel(path))
                fake.populate(path)

        def rmdir(path, *args, **kwargs) -> None:
            if not fake.owns(path):
                return real_rmdir(path, *args, **kwargs)
            fake.rmdirs.append(fake.rel(path))
            p = Path(path)
            if not p.is_dir():
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            if any(c.is_dir() for c in p.iterdir()):
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
            procs = p / "cgroup.procs"
            if procs.exists() and procs.read_text().split():
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
            fake.removed.append((fake.rel(p), {c.name: c.read_text() for c in p.iterdir()}))
            for child in p.iterdir():
                child.unlink()
            real_rmdir(path)

        def write(path: Path, value: str) -> None:
            if fake.owns(path) and not Path(path).exists():
                if Path(path).parent.is_dir():  # kernfs: no such interface file
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            if not (fake.owns(path) and fake._kernel_write(Path(path), value)):
                real_write(path, value)
            if fake.owns(path):
                fake.writes.append((fake.rel(path), value))

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(cg.os, "rmdir", rmdir)
        monkeypatch.setattr(cg, "_write", write)
        return self


OWN = "/sys.slice/x.service"


@pytest.fixture(autouse=True)
def _fresh_box_sequence(monkeypatch):
    """Box names count from 1 in each test (the sequence is per process: two Sandboxes in
    one process never pick one name)."""
    monkeypatch.setattr(cg, "_BOX_SEQUENCE", itertools.count(1))


def make_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str = OWN, *,
            cgroup_root: str | None = None, delegated: str | None = None,
            **files_options) -> tuple[cg.V2Backend, FakeCgroupFs]:
    """A cgroup2 mount with the daemon (this process) in `own`. Every cgroup from the
    mount down to `own`'s parent has `delegated` (default: all the mount's controllers)
    enabled, as systemd's Delegate=yes leaves it."""
    mount = tmp_path / "cgroup2"
    os.mkdir(mount)
    fs = FakeCgroupFs(mount, v2_files(**files_options), v2=True).install(monkeypatch)
    fs.populate(mount)
    if delegated is None:
        delegated = (mount / "cgroup.controllers").read_text()
    path = mount
    for part in Path(own).parts[1:]:
        (path / "cgroup.subtree_control").write_text(delegated)
        path = path / part
        path.mkdir()
    (path / "cgroup.procs").write_text(f"{os.getpid()}\n")
    del fs.mkdirs[:]
    backend = cg.V2Backend(mount, own, cgroup_root=cgroup_root)
    return backend, fs


def make_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str = "process_api/abc",
            *, comount: tuple[str, ...] = (), cgroup_root: str | None = None,
            **files_options) -> tuple[cg.V1Backend, FakeCgroupFs]:
    """One hierarchy per controller, except the co-mounted groups in `comount` (e.g.
    "cpu,cpuacct"): one directory, each of its controllers a symlink to it, as systemd
    lays them out. The daemon's memory cgroup is `own` (so is that of every controller
    sharing memory's hierarchy: one cgroup per hierarchy), its others the root."""
    root = tmp_path / "cgroup"
    os.mkdir(root)
    fs = FakeCgroupFs(root, v1_files(root, **files_options)).install(monkeypatch)
    mounts: dict[str, Path] = {}
    for group in comount:
        os.mkdir(root / group)
        fs.populate(root / group)
        for c in group.split(","):
            os.symlink(group, root / c)
            mounts[c] = root / c
    for c in cg.V1_CONTROLLERS:
        if c not in mounts:
            os.mkdir(root / c)
            fs.populate(root / c)
            mounts[c] = root / c
    (mounts["memory"] / own).mkdir(parents=True)
    del fs.mkdirs[:]
    with_memory = next((g.split(",") for g in comount if "memory" in g.split(",")),
                       ["memory"])
    owns = {c: f"/{own}" if c in with_memory else "/" for c in cg.V1_CONTROLLERS}
    return cg.V1Backend(mounts, owns, cgroup_root=cgroup_root), fs


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A real process for kill tests (our own child: no privileges needed)."""
    proc = subprocess.Popen(["sleep", "100"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _wait_exit(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


# Not KEEPER_MEMORY_BYTES: a test must tell the program's limit from the keeper's.
LIMITS = cg.CgroupLimits(memory_bytes=96 * MIB, processes=64, cpu_share=1.0)
assert LIMITS.memory_bytes != cg.KEEPER_MEMORY_BYTES


# ------------------------------------------------------------------------------ v2: prepare


def test_v2_prepare_moves_us_to_a_leaf_and_enables_controllers(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    base = backend.base
    assert base == tmp_path / "cgroup2" / "sys.slice" / "x.service"
    assert (base / "daemon" / "cgroup.procs").read_text().split() == [str(os.getpid())]
    assert (base / "cgroup.procs").read_text() == ""
    assert (base / "cgroup.subtree_control").read_text() == "cpu memory pids"
    assert backend.root == base / "sandboxd" and backend.root.is_dir()
    assert (backend.root / "cgroup.subtree_control").read_text() == "cpu memory pids"
    # No internal processes: we leave the base before enabling its controllers.
    assert [Path(p).name for p, _ in fs.writes] == [
        "cgroup.procs", "cgroup.subtree_control", "cgroup.subtree_control"]
    assert fs.writes[0][0] == "sys.slice/x.service/daemon/cgroup.procs"


def test_v2_prepare_at_the_mount_root_does_not_move(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, "/")
    backend.prepare()
    assert backend.base == backend.mount
    assert not (backend.base / "daemon").exists()
    assert fs.writes_to("cgroup.procs") == []


def test_v2_prepare_refuses_without_the_memory_controller(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, controllers="cpu pids")
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert re.search(r"lacks controller\(s\) memory;", message), message
    assert "Delegate=yes" in message
    assert fs.writes == []  # refused before touching anything
    assert not backend.root.exists()


def test_v2_prepare_reports_when_controllers_cannot_be_enabled(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    (backend.base / "cgroup.subtree_control").unlink()  # the write now fails (EACCES)
    with pytest.raises(JailError, match=r"cannot enable \+cpu \+memory \+pids"):
        backend.prepare()


def test_v2_prepare_sweeps_stale_boxes(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.root.mkdir()
    (backend.root / f"box-{_dead_pid()}-3").mkdir()
    backend.prepare()
    assert backend.box_dirs() == []
    assert fs.removed[-1][0].endswith(f"sandboxd/box-{DEAD_PID}-3")


# ------------------------------------------------------------------------------ v2: boxes


def _v2_box(tmp_path, monkeypatch, limits: cg.CgroupLimits = LIMITS, **options
            ) -> tuple[cg.V2Backend, FakeCgroupFs, cg.V2Cgroup, Path]:
    """A prepared backend and one box created with `limits`; the fake's records start
    with the create."""
    backend, fs = make_v2(tmp_path, monkeypatch, **options)
    backend.prepare()
    del fs.writes[:], fs.mkdirs[:], fs.rmdirs[:]
    box = backend.create(limits)
    assert isinstance(box, cg.V2Cgroup)
    return backend, fs, box, backend.root / box.name


def test_box_names_are_box_pid_seq(tmp_path, monkeypatch):
    backend, _ = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    names = [backend.create(LIMITS).name for _ in range(3)]
    assert names == [f"box-{os.getpid()}-{i}" for i in (1, 2, 3)]
    assert [p.name for p in backend.box_dirs()] == names


@pytest.mark.parametrize(("share", "cpu_max"), [
    (1.0, "100000 100000"), (0.5, "50000 100000"), (2.0, "200000 100000"),
    (0.001, "1000 100000"),  # never below 1 ms per period
])
def test_v2_create_limits_the_box_and_its_two_memory_leaves(tmp_path, monkeypatch, share,
                                                            cpu_max):
    limits = cg.CgroupLimits(memory_bytes=128 * MIB, processes=64, cpu_share=share)
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch, limits)
    rel = fs.rel(path)
    assert fs.mkdirs == [rel, f"{rel}/keeper", f"{rel}/program"]
    # Box level: processes and CPU; then memory for the leaves, each with its limit and
    # no swap. In this order: a leaf's memory files exist only once +memory is on.
    assert fs.writes == [
        (f"{rel}/pids.max", "64"),
        (f"{rel}/cpu.max", cpu_max),
        (f"{rel}/cgroup.subtree_control", "+memory"),
        (f"{rel}/keeper/memory.max", str(cg.KEEPER_MEMORY_BYTES)),
        (f"{rel}/keeper/memory.swap.max", "0"),
        (f"{rel}/program/memory.max", str(128 * MIB)),
        (f"{rel}/program/memory.swap.max", "0"),
    ]
    assert (path / "memory.max").read_text() == "max\n"  # the box's memory: unlimited
    assert (path / "cgroup.subtree_control").read_text() == "memory"
    assert (path / "keeper" / "memory.max").read_text() == str(cg.KEEPER_MEMORY_BYTES)
    assert (path / "program" / "memory.max").read_text() == str(128 * MIB)
    assert box.procs_files == (str(path / "keeper" / "cgroup.procs"),)
    assert box.program_procs_file == str(path / "program" / "cgroup.procs")
    assert [p.name for p in backend.box_dirs()] == [box.name]  # the leaves are no boxes


def test_v2_create_without_swap_accounting_skips_memory_swap_max(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch, swap=False)
    for leaf in ("keeper", "program"):
        assert not (path / leaf / "memory.swap.max").exists()
        assert (path / leaf / "memory.max").read_text() != "max\n"
    assert fs.writes_to("memory.swap.max") == []


def _without(fs: FakeCgroupFs, name: str) -> None:
    real_files = fs.files
    fs.files = lambda c: {k: v for k, v in real_files(c).items() if k != name}


@pytest.mark.parametrize(("failure", "rolled_back"), [
    ("no pids.max", ["B"]),
    ("no cgroup.subtree_control", ["B"]),
    ("no memory.max", ["B/keeper", "B"]),
    ("program mkdir refused", ["B/keeper", "B"]),
])
def test_v2_create_removes_what_it_made_when_a_step_fails(tmp_path, monkeypatch, failure,
                                                          rolled_back):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    box_rel = fs.rel(backend.root / f"box-{os.getpid()}-1")
    if failure == "program mkdir refused":
        fs.refuse_mkdir[f"{box_rel}/program"] = errno.EACCES
    else:
        _without(fs, failure.removeprefix("no "))
    del fs.rmdirs[:]
    with pytest.raises(OSError):
        backend.create(LIMITS)
    assert fs.rmdirs == [r.replace("B", box_rel) for r in rolled_back]  # children first
    assert backend.box_dirs() == []
    assert [p for p in backend.root.iterdir() if p.is_dir()] == []


def test_v2_box_processes_join_the_keeper_and_the_program_moves_itself(tmp_path, monkeypatch):
    """No internal processes: the box enables memory for its leaves, so only they can hold
    processes. D joins through procs_files, the program through program_procs_file."""
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    with pytest.raises(OSError) as e:
        cg._write(path / "cgroup.procs", "0")
    assert e.value.errno == errno.EBUSY
    me = str(os.getpid())
    for procs in box.procs_files:
        cg._write(Path(procs), "0")  # D's first step
    assert (path / "keeper" / "cgroup.procs").read_text().split() == [me]
    assert (backend.base / "daemon" / "cgroup.procs").read_text().split() == []
    cg._write(Path(box.program_procs_file), "0")  # the program, before its execve
    assert (path / "keeper" / "cgroup.procs").read_text().split() == []
    assert (path / "program" / "cgroup.procs").read_text().split() == [me]
    assert box.pids() == [os.getpid()]


def test_v2_stats_read_box_cpu_and_the_programs_memory(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    # The kernel, after the program ran. The box's and the keeper's own memory numbers
    # differ from the program's: stats must take the program's.
    (path / "cpu.stat").write_text("usage_usec 1234567\nuser_usec 1000000\n"
                                   "system_usec 234567\nnr_periods 12\n")
    (path / "program" / "cpu.stat").write_text("usage_usec 1000\n")
    program, keeper = path / "program", path / "keeper"
    (program / "memory.peak").write_text("52428800\n")
    (program / "memory.current").write_text("4096\n")
    (program / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n"
                                           "oom_group_kill 5\n")
    (keeper / "memory.peak").write_text("31457280\n")
    (keeper / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 9\noom_kill 9\n")
    (path / "memory.peak").write_text("83886080\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 11\noom_kill 10\n")
    assert box.cpu_ns() == 1_234_567_000
    assert box.stats() == cg.CgroupStats(cpu_ns=1_234_567_000, memory_peak_bytes=52428800,
                                         oom_kills=1, oom_events=2, file_cache_bytes=0)


def test_v2_stats_fall_back_to_the_programs_memory_current_without_memory_peak(
        tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch, peak=False)  # before 5.19
    (path / "program" / "memory.current").write_text("9999\n")
    (path / "keeper" / "memory.current").write_text("7777\n")
    (path / "memory.current").write_text("17776\n")
    assert box.stats().memory_peak_bytes == 9999
    assert box.stats().oom_kills == 0


def test_v2_pids_list_both_leaves_and_kill_all_kills_the_whole_box(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    (path / "keeper" / "cgroup.procs").write_text("12\n")
    (path / "program" / "cgroup.procs").write_text("34\n56\n")
    assert sorted(box.pids()) == [12, 34, 56]
    del fs.writes[:]
    box.kill_all()
    assert fs.writes == [(fs.rel(path / "cgroup.kill"), "1")]  # the subtree, at once


def test_v2_kill_all_without_cgroup_kill_freezes_and_kills(tmp_path, monkeypatch, sleeper):
    """Kernels 5.2-5.13 have cgroup.freeze but no cgroup.kill: the fallback must run, at
    the box (the freeze covers both leaves), and find the program in its leaf.

    On a real cgroupfs, opening a missing interface file for writing fails with EACCES
    (checked on 6.18: PermissionError), not ENOENT."""
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch, kill=False)
    (path / "program" / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    del fs.writes[:]
    box.kill_all()
    assert fs.writes == [(fs.rel(path / "cgroup.freeze"), "1"),
                         (fs.rel(path / "cgroup.freeze"), "0")]
    assert _wait_exit(sleeper) == -signal.SIGKILL


def test_v2_kill_all_and_pids_of_a_removed_box_are_harmless(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    box.remove()
    assert backend.box_dirs() == []
    box.kill_all()
    assert box.pids() == []


def test_v2_remove_removes_the_leaves_before_the_box(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    rel = fs.rel(path)
    box.remove()
    assert fs.rmdirs == [f"{rel}/program", f"{rel}/keeper", rel]
    assert not path.exists() and backend.box_dirs() == []


def test_v2_remove_retries_while_the_kernel_releases_tasks(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    procs = path / "program" / "cgroup.procs"
    procs.write_text("4242\n")
    releaser = threading.Timer(0.1, procs.write_text, args=("",))
    releaser.start()
    started = time.monotonic()
    box.remove()
    releaser.join()
    assert 0.05 < time.monotonic() - started < 2
    assert backend.box_dirs() == []


def test_v2_remove_gives_up_with_jail_error_when_the_box_stays_busy(tmp_path, monkeypatch):
    backend, fs, box, path = _v2_box(tmp_path, monkeypatch)
    (path / "keeper" / "cgroup.procs").write_text("4242\n")
    with pytest.raises(JailError, match=re.escape(f"cannot remove cgroup {path / 'keeper'}")):
        box.remove()
    assert path.is_dir()  # never the box while a leaf stays


def test_v2_sweep_removes_dead_daemons_boxes_only(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    mine = backend.create(LIMITS).name
    for name in (f"box-{_dead_pid()}-1", f"box-{DEAD_PID}-2", f"box-{_live_other_pid()}-1",
                 "box-notapid-1", "box-1-2-3"):
        (backend.root / name).mkdir()
    for leaf in ("keeper", "program"):  # one of the dead boxes as create() leaves it
        (backend.root / f"box-{DEAD_PID}-2" / leaf).mkdir()
    assert backend.sweep_stale() == 2
    assert sorted(p.name for p in backend.box_dirs()) == sorted(
        [mine, f"box-{os.getppid()}-1", "box-notapid-1", "box-1-2-3"])
    swept = {Path(rel).name: files for rel, files in fs.removed
             if Path(rel).name.startswith("box-")}
    assert set(swept) == {f"box-{DEAD_PID}-1", f"box-{DEAD_PID}-2"}
    for files in swept.values():
        assert files["cgroup.kill"] == "1"  # killed before removal
    assert [rel for rel, _ in fs.removed][-3:] == [
        fs.rel(backend.root / f"box-{DEAD_PID}-2" / leaf) for leaf in ("program", "keeper")
    ] + [fs.rel(backend.root / f"box-{DEAD_PID}-2")]


# ------------------------------------------------------------------------------ v1


def _v1_box(tmp_path, monkeypatch, limits: cg.CgroupLimits = LIMITS, **options
            ) -> tuple[cg.V1Backend, FakeCgroupFs, cg.V1Cgroup]:
    backend, fs = make_v1(tmp_path, monkeypatch, **options)
    backend.prepare()
    del fs.writes[:], fs.mkdirs[:], fs.rmdirs[:]
    box = backend.create(limits)
    assert isinstance(box, cg.V1Cgroup)
    return backend, fs, box


def test_v1_prepare_creates_sandboxd_in_every_hierarchy_and_sweeps(tmp_path, monkeypatch):
    backend, fs = make_v1(tmp_path, monkeypatch)
    assert set(backend.roots) == set(cg.V1_CONTROLLERS)
    for c, root in backend.roots.items():
        own = "process_api/abc/" if c == "memory" else ""
        assert root == tmp_path / "cgroup" / c / f"{own}sandboxd"
    (backend.roots["memory"]).mkdir()
    (backend.roots["memory"] / f"box-{_dead_pid()}-9").mkdir()
    backend.prepare()
    assert all(root.is_dir() for root in backend.roots.values())
    assert backend.box_dirs() == []


@pytest.mark.parametrize(("share", "quota"), [(1.0, "100000"), (0.5, "50000"),
                                              (0.001, "1000")])
def test_v1_create_limits_the_box_and_its_two_memory_leaves(tmp_path, monkeypatch, share,
                                                            quota):
    limits = cg.CgroupLimits(memory_bytes=128 * MIB, processes=64, cpu_share=share)
    backend, fs, box = _v1_box(tmp_path, monkeypatch, limits)
    assert box.name == f"box-{os.getpid()}-1"
    dirs = {c: backend.roots[c] / box.name for c in cg.V1_CONTROLLERS}
    assert box.dirs == dirs
    memory = dirs["memory"]
    rel = {c: fs.rel(d) for c, d in dirs.items()}
    # One box directory per hierarchy, then the leaves in the memory hierarchy only.
    assert fs.mkdirs == [rel[c] for c in cg.V1_CONTROLLERS] + [
        f"{rel['memory']}/keeper", f"{rel['memory']}/program"]
    for c in ("cpu", "cpuacct", "pids", "freezer"):
        assert sorted(p.name for p in dirs[c].iterdir() if p.is_dir()) == []
    # Each leaf: memory limit first, then memsw equal to it (no swap); the box: pids, CPU.
    assert fs.writes == [
        (f"{rel['memory']}/keeper/memory.limit_in_bytes", str(cg.KEEPER_MEMORY_BYTES)),
        (f"{rel['memory']}/keeper/memory.memsw.limit_in_bytes", str(cg.KEEPER_MEMORY_BYTES)),
        (f"{rel['memory']}/program/memory.limit_in_bytes", str(128 * MIB)),
        (f"{rel['memory']}/program/memory.memsw.limit_in_bytes", str(128 * MIB)),
        (f"{rel['pids']}/pids.max", "64"),
        (f"{rel['cpu']}/cpu.cfs_period_us", "100000"),
        (f"{rel['cpu']}/cpu.cfs_quota_us", quota),
    ]
    unlimited = V1_FILES["memory"]["memory.limit_in_bytes"]
    assert (memory / "memory.limit_in_bytes").read_text() == unlimited  # the box: no limit
    assert (memory / "program" / "memory.limit_in_bytes").read_text() == str(128 * MIB)
    assert (memory / "program" / "memory.memsw.limit_in_bytes").read_text() == str(128 * MIB)
    # D joins the keeper in the memory hierarchy, the box itself in every other one.
    assert box.procs_files == tuple(str(d / "cgroup.procs") for d in (
        memory / "keeper", dirs["cpu"], dirs["cpuacct"], dirs["pids"], dirs["freezer"]))
    assert box.program_procs_file == str(memory / "program" / "cgroup.procs")
    assert [p.name for p in backend.box_dirs()] == [box.name]


def test_v1_create_without_swap_accounting(tmp_path, monkeypatch):
    backend, fs, box = _v1_box(tmp_path, monkeypatch, memsw=False)
    memory = box.dirs["memory"]
    for leaf in ("keeper", "program"):
        assert not (memory / leaf / "memory.memsw.limit_in_bytes").exists()
    assert fs.writes_to("memory.memsw.limit_in_bytes") == []
    assert fs.writes_to("memory.limit_in_bytes") == [str(cg.KEEPER_MEMORY_BYTES),
                                                     str(LIMITS.memory_bytes)]


@pytest.mark.parametrize(("failure", "made_before"), [
    ("no cpu.cfs_quota_us", ["program", "keeper"]),
    ("no memory.limit_in_bytes", ["keeper"]),
    ("program mkdir refused", ["keeper"]),
])
def test_v1_create_rolls_back_every_hierarchy_on_failure(tmp_path, monkeypatch, failure,
                                                         made_before):
    options = {} if failure == "program mkdir refused" else {
        "missing": (failure.removeprefix("no "),)}
    backend, fs = make_v1(tmp_path, monkeypatch, **options)
    backend.prepare()
    name = f"box-{os.getpid()}-1"
    memory_rel = fs.rel(backend.roots["memory"] / name)
    fs.refuse_mkdir[f"{memory_rel}/program"] = errno.EACCES
    if failure != "program mkdir refused":
        del fs.refuse_mkdir[f"{memory_rel}/program"]
    del fs.rmdirs[:]
    with pytest.raises(OSError):
        backend.create(LIMITS)
    # The leaves, then every box directory, in the reverse order of their creation.
    assert fs.rmdirs == [f"{memory_rel}/{leaf}" for leaf in made_before] + [
        fs.rel(backend.roots[c] / name) for c in reversed(cg.V1_CONTROLLERS)]
    assert backend.box_dirs() == []
    assert [p for root in backend.roots.values() for p in root.iterdir() if p.is_dir()] == []


def test_v1_the_program_moves_in_the_memory_hierarchy_only(tmp_path, monkeypatch):
    backend, fs, box = _v1_box(tmp_path, monkeypatch)
    me = str(os.getpid())
    for procs in box.procs_files:
        cg._write(Path(procs), "0")  # D's first step
    cg._write(Path(box.program_procs_file), "0")  # the program, before its execve
    memory = box.dirs["memory"]
    assert (memory / "program" / "cgroup.procs").read_text().split() == [me]
    assert (memory / "keeper" / "cgroup.procs").read_text().split() == []
    for c in ("cpu", "cpuacct", "pids", "freezer"):  # still the box's, in the others
        assert (box.dirs[c] / "cgroup.procs").read_text().split() == [me], c
    assert box.pids() == [os.getpid()]


def test_v1_stats_read_box_cpu_and_the_programs_memory(tmp_path, monkeypatch):
    backend, fs, box = _v1_box(tmp_path, monkeypatch)
    memory = box.dirs["memory"]
    (box.dirs["cpuacct"] / "cpuacct.usage").write_text("987654321\n")
    (memory / "program" / "memory.max_usage_in_bytes").write_text("134217728\n")
    (memory / "program" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n")
    for other in (memory, memory / "keeper"):  # not the program's: never in its stats
        (other / "memory.max_usage_in_bytes").write_text("999999999\n")
        (other / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n"
                                                  "oom_kill 8\n")
    assert box.cpu_ns() == 987654321
    assert box.stats() == cg.CgroupStats(cpu_ns=987654321, memory_peak_bytes=134217728,
                                         oom_kills=3, oom_events=3, file_cache_bytes=0)


def test_v1_pids_come_from_the_freezer_and_kill_all_freezes(tmp_path, monkeypatch, sleeper):
    backend, fs, box = _v1_box(tmp_path, monkeypatch)
    for procs in box.procs_files:
        cg._write(Path(procs), str(sleeper.pid))
    cg._write(Path(box.program_procs_file), str(sleeper.pid))
    assert box.pids() == [sleeper.pid]
    del fs.writes[:]
    box.kill_all()
    freezer = fs.rel(box.dirs["freezer"] / "freezer.state")
    assert fs.writes == [(freezer, "FROZEN"), (freezer, "THAWED")]
    assert _wait_exit(sleeper) == -signal.SIGKILL


def test_v1_remove_removes_the_leaves_first_then_every_box_directory(tmp_path, monkeypatch):
    backend, fs, box = _v1_box(tmp_path, monkeypatch)
    memory = fs.rel(box.dirs["memory"])
    box.remove()
    assert fs.rmdirs == [f"{memory}/program", f"{memory}/keeper"] + [
        fs.rel(box.dirs[c]) for c in cg.V1_CONTROLLERS]
    assert backend.box_dirs() == []
    assert all(not (root / box.name).exists() for root in backend.roots.values())
    box.kill_all()
    assert box.pids() == []


def test_v1_remove_gives_up_with_jail_error_while_the_program_stays(tmp_path, monkeypatch):
    backend, fs, box = _v1_box(tmp_path, monkeypatch)
    program = box.dirs["memory"] / "program"
    (program / "cgroup.procs").write_text("4242\n")
    with pytest.raises(JailError, match=re.escape(f"cannot remove cgroup {program}")):
        box.remove()
    assert all(d.is_dir() for d in box.dirs.values())


def test_v1_sweep_removes_dead_daemons_boxes_in_all_hierarchies(tmp_path, monkeypatch):
    backend, fs = make_v1(tmp_path, monkeypatch)
    backend.prepare()
    mine = backend.create(LIMITS).name
    dead = f"box-{_dead_pid()}-1"
    alive = f"box-{_live_other_pid()}-4"
    partial = f"box-{DEAD_PID}-2"  # a daemon killed half-way through create()
    for root in backend.roots.values():
        (root / dead).mkdir()
        (root / alive).mkdir()
    for leaf in ("keeper", "program"):
        (backend.roots["memory"] / dead / leaf).mkdir()
    for c in ("memory", "cpu"):
        (backend.roots[c] / partial).mkdir()
    assert backend.sweep_stale() == 2
    assert sorted(p.name for p in backend.box_dirs()) == sorted([mine, alive])
    for root in backend.roots.values():
        assert not (root / dead).exists() and not (root / partial).exists()
        assert (root / alive).is_dir()
    assert fs.writes_to("freezer.state") == []  # the dead box was empty: nothing to freeze


# ------------------------------------------------------------------------------ v1 co-mounted

# systemd's cpu,cpuacct; pids with the freezer; something sharing the memory hierarchy.
COMOUNTS = [("cpu,cpuacct",), ("cpu,cpuacct", "freezer,pids"), ("memory,pids", "cpu,cpuacct")]


def _distinct_hierarchies(comount: tuple[str, ...]) -> int:
    return len(cg.V1_CONTROLLERS) - sum(len(g.split(",")) - 1 for g in comount)


@pytest.mark.parametrize("comount", COMOUNTS, ids=lambda g: "+".join(g))
def test_v1_comounted_box_lifecycle_touches_each_directory_once(tmp_path, monkeypatch, sleeper,
                                                                comount):
    """systemd co-mounts cpu,cpuacct: create, join, limits, kill and remove must each touch
    that one directory once (a second mkdir of it is EEXIST: every box used to fail)."""
    backend, fs = make_v1(tmp_path, monkeypatch, comount=comount)
    hierarchies = _distinct_hierarchies(comount)
    cpu_dir = tmp_path / "cgroup" / "cpu,cpuacct" / "sandboxd"
    assert backend.roots["cpu"] == backend.roots["cpuacct"] == cpu_dir
    assert len(backend.root_dirs) == hierarchies
    backend.prepare()
    assert len(fs.mkdirs) == hierarchies and len(set(fs.mkdirs)) == hierarchies
    del fs.mkdirs[:], fs.writes[:]

    box = backend.create(LIMITS)
    assert isinstance(box, cg.V1Cgroup)
    memory = box.dirs["memory"]
    assert len(box.distinct_dirs) == hierarchies
    assert fs.mkdirs == [fs.rel(d) for d in box.distinct_dirs] + [
        fs.rel(memory / "keeper"), fs.rel(memory / "program")]
    # Each hierarchy joined once; the memory hierarchy (and whatever shares it) only
    # through the keeper.
    assert box.procs_files == tuple(
        str((d / "keeper" if d == memory else d) / "cgroup.procs") for d in box.distinct_dirs)
    assert len(set(box.procs_files)) == hierarchies
    assert str(memory / "cgroup.procs") not in box.procs_files
    assert str(cpu_dir / box.name / "cgroup.procs") in box.procs_files
    assert box.program_procs_file == str(memory / "program" / "cgroup.procs")
    assert fs.writes_to("cpu.cfs_quota_us") == ["100000"]
    assert (cpu_dir / box.name / "cpu.cfs_quota_us").read_text() == "100000"
    # pids.max once, on the box (covers both leaves where pids shares memory's hierarchy).
    assert [p for p, _ in fs.writes if Path(p).name == "pids.max"] == [
        fs.rel(box.dirs["pids"] / "pids.max")]
    assert box.accounting_files[0] == str(cpu_dir / box.name / "cpuacct.usage")

    for procs in box.procs_files:  # D's first step, for the sleeper
        cg._write(Path(procs), str(sleeper.pid))
    cg._write(Path(box.program_procs_file), str(sleeper.pid))  # the program moves
    assert box.pids() == [sleeper.pid]
    (cpu_dir / box.name / "cpuacct.usage").write_text("5000000\n")
    assert box.cpu_ns() == 5_000_000
    assert box.stats().cpu_ns == 5_000_000

    box.kill_all()
    assert fs.writes_to("freezer.state") == ["FROZEN", "THAWED"]
    assert _wait_exit(sleeper) == -signal.SIGKILL
    for procs in fs.root.rglob("cgroup.procs"):  # the kernel: the dead process left
        procs.write_text("")
    box.remove()
    assert fs.rmdirs == [fs.rel(memory / "program"), fs.rel(memory / "keeper")] + [
        fs.rel(d) for d in box.distinct_dirs]
    assert all(not (root / box.name).exists() for root in backend.root_dirs)
    assert backend.box_dirs() == []


@pytest.mark.parametrize("comount", [("memory,freezer",), ("memory,cpu,cpuacct,pids,freezer",)],
                         ids=["memory+freezer", "one-hierarchy"])
def test_v1_freezer_sharing_the_memory_hierarchy_still_finds_and_kills_the_box(
        tmp_path, monkeypatch, sleeper, comount):
    backend, fs = make_v1(tmp_path, monkeypatch, comount=comount)
    backend.prepare()
    box = backend.create(LIMITS)
    for procs in box.procs_files:
        cg._write(Path(procs), str(sleeper.pid))
    cg._write(Path(box.program_procs_file), str(sleeper.pid))
    assert box.pids() == [sleeper.pid]
    box.kill_all()
    assert _wait_exit(sleeper) == -signal.SIGKILL


@pytest.mark.parametrize("comount", COMOUNTS, ids=lambda g: "+".join(g))
def test_v1_comounted_sweep_and_rollback(tmp_path, monkeypatch, comount):
    backend, fs = make_v1(tmp_path, monkeypatch, comount=comount,
                          missing=("cpu.cfs_quota_us",))
    backend.prepare()
    for root in backend.root_dirs:
        (root / f"box-{_dead_pid()}-1").mkdir()
    for leaf in ("keeper", "program"):
        (backend.roots["memory"] / f"box-{DEAD_PID}-1" / leaf).mkdir()
    assert [p.name for p in backend.box_dirs()] == [f"box-{DEAD_PID}-1"]
    del fs.rmdirs[:]
    assert backend.sweep_stale() == 1
    assert len(fs.rmdirs) == len(set(fs.rmdirs)) == _distinct_hierarchies(comount) + 2
    assert fs.writes_to("freezer.state") == []  # empty: nothing to freeze
    del fs.rmdirs[:]
    with pytest.raises(OSError):  # cpu.cfs_quota_us cannot be written: rolled back
        backend.create(LIMITS)
    assert len(fs.rmdirs) == len(set(fs.rmdirs)) == _distinct_hierarchies(comount) + 2
    assert [Path(p).name for p in fs.rmdirs[:2]] == ["program", "keeper"]
    assert [p for root in backend.root_dirs for p in root.iterdir() if p.is_dir()] == []


# ------------------------------------------------------------------------------ cgroup_root


@pytest.mark.parametrize("comount", [(), ("cpu,cpuacct",)], ids=["separate", "cpu+cpuacct"])
def test_v1_cgroup_root_is_created_with_parents_and_boxes_live_directly_below(
        tmp_path, monkeypatch, comount):
    backend, fs = make_v1(tmp_path, monkeypatch, comount=comount, cgroup_root="/judge/boxes")
    root = tmp_path / "cgroup"
    expected = {c: root / ("cpu,cpuacct" if comount and c in ("cpu", "cpuacct") else c)
                / "judge" / "boxes" for c in cg.V1_CONTROLLERS}
    assert backend.roots == expected
    backend.prepare()
    distinct = sorted({str(p.relative_to(root)) for p in expected.values()})
    parents = sorted({str(p.parent.relative_to(root)) for p in expected.values()})
    assert sorted(fs.mkdirs) == sorted(distinct + parents)  # each directory once
    box = backend.create(LIMITS)
    assert isinstance(box, cg.V1Cgroup)
    for c in cg.V1_CONTROLLERS:
        assert box.dirs[c] == expected[c] / box.name  # no "sandboxd" level
        assert box.dirs[c].is_dir()
    memory = expected["memory"] / box.name
    assert sorted(box.procs_files) == sorted(
        {str(d / box.name / "cgroup.procs") for c, d in expected.items() if c != "memory"}
        | {str(memory / "keeper" / "cgroup.procs")})
    assert box.program_procs_file == str(memory / "program" / "cgroup.procs")
    assert (memory / "program" / "memory.limit_in_bytes").read_text() == str(96 * MIB)
    assert not any(p.name == "sandboxd" for p in root.rglob("*"))
    assert backend.box_dirs() == [expected["memory"] / box.name]
    backend.prepare()  # a second start finds the root in place
    box.remove()
    assert all(p.is_dir() for p in expected.values())  # the root itself stays
    assert [p for p in root.rglob("box-*")] == []


def test_v1_cgroup_root_error_names_the_key_the_path_and_the_os_error(tmp_path, monkeypatch):
    backend, fs = make_v1(tmp_path, monkeypatch, cgroup_root="/sandboxd")
    fs.refuse_mkdir["pids/sandboxd"] = errno.EACCES
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert 'sandbox.cgroup_root = "/sandboxd"' in message, message
    assert f"{tmp_path / 'cgroup' / 'pids' / 'sandboxd'}: Permission denied (EACCES)" in message
    assert "sandboxd/sandboxd" not in message


def test_v1_default_root_error_names_the_path_not_the_key(tmp_path, monkeypatch):
    backend, fs = make_v1(tmp_path, monkeypatch)
    (tmp_path / "cgroup" / "memory" / "process_api" / "abc").rmdir()  # our cgroup vanished
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert "cgroup_root" not in message
    missing = tmp_path / "cgroup" / "memory" / "process_api" / "abc" / "sandboxd"
    assert f"cannot create cgroup {missing}: No such file or directory (ENOENT)" in message


def test_v2_cgroup_root_is_created_and_controllers_enabled_from_the_mount_down(
        tmp_path, monkeypatch):
    # Like the VM lane's guest: nothing enabled anywhere yet; the daemon stays in its own.
    backend, fs = make_v2(tmp_path, monkeypatch, "/", cgroup_root="/judge/boxes",
                          delegated="")
    mount = backend.mount
    assert backend.base == backend.root == mount / "judge" / "boxes"
    assert backend.move_self is False
    backend.prepare()
    assert fs.mkdirs == ["judge", "judge/boxes"]
    assert fs.writes == [("cgroup.subtree_control", "+cpu +memory +pids"),
                         ("judge/cgroup.subtree_control", "+cpu +memory +pids"),
                         ("judge/boxes/cgroup.subtree_control", "+cpu +memory +pids")]
    box = backend.create(LIMITS)
    path = mount / "judge" / "boxes" / box.name
    assert box.procs_files == (str(path / "keeper" / "cgroup.procs"),)
    assert box.program_procs_file == str(path / "program" / "cgroup.procs")
    assert (path / "program" / "memory.max").read_text() == str(96 * MIB)
    assert (path / "keeper" / "memory.max").read_text() == str(cg.KEEPER_MEMORY_BYTES)
    assert (path / "pids.max").read_text() == "64"
    assert backend.box_dirs() == [path]
    assert not (mount / "judge" / "boxes" / "sandboxd").exists()
    del fs.writes[:]
    backend.prepare()  # everything in place: nothing written
    assert fs.writes == []


def test_v2_cgroup_root_enables_only_what_is_missing(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, OWN, cgroup_root="/judge",
                          delegated="cpu memory")
    (backend.mount / "judge").mkdir()
    (backend.mount / "judge" / "cgroup.subtree_control").write_text("memory")
    del fs.mkdirs[:]
    backend.prepare()
    assert fs.mkdirs == []
    assert fs.writes == [("cgroup.subtree_control", "+pids"),
                         ("judge/cgroup.subtree_control", "+cpu +pids")]
    assert (backend.root / "cgroup.subtree_control").read_text() == "cpu memory pids"
    # The daemon was not moved: it is still in its own cgroup.
    assert (backend.mount / OWN.lstrip("/") / "cgroup.procs").read_text().split() == [
        str(os.getpid())]


def test_v2_cgroup_root_mkdir_error_names_the_key_the_path_and_the_os_error(
        tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, cgroup_root="/judge/boxes")
    fs.refuse_mkdir["judge/boxes"] = errno.EACCES
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert 'sandbox.cgroup_root = "/judge/boxes"' in message, message
    path = backend.mount / "judge" / "boxes"
    assert f"cannot create cgroup {path}: Permission denied (EACCES)" in message, message


def test_v2_cgroup_root_holding_processes_cannot_enable_controllers(tmp_path, monkeypatch):
    # The root given is the daemon's own cgroup: no internal processes, the kernel says EBUSY.
    backend, fs = make_v2(tmp_path, monkeypatch, OWN, cgroup_root=OWN, delegated="cpu memory pids")
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    control = backend.root / "cgroup.subtree_control"
    assert f'sandbox.cgroup_root = "{OWN}"' in message, message
    assert f"cannot enable +cpu +memory +pids in {control}: " in message, message
    assert "(EBUSY)" in message and "no internal processes" in message, message


def test_v2_cgroup_root_without_memory_controller_names_key_and_path(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, cgroup_root="/judge", controllers="cpu pids")
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert 'sandbox.cgroup_root = "/judge"' in message, message
    assert f"{backend.mount} lacks controller(s) memory" in message, message
    assert fs.writes == [] and fs.mkdirs == []


def test_v2_cgroup_root_sweeps_stale_boxes_directly_below_it(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch, cgroup_root="/judge")
    backend.prepare()
    (backend.root / f"box-{_dead_pid()}-4").mkdir()
    (backend.root / "not-a-box").mkdir()
    backend.prepare()
    assert [rel for rel, _ in fs.removed] == [f"judge/box-{DEAD_PID}-4"]
    assert (backend.root / "not-a-box").is_dir()


@pytest.mark.parametrize("root", ["judge", "/judge/../etc", "/./judge", ".."])
def test_cgroup_root_must_be_an_absolute_path_without_dot_components(tmp_path, monkeypatch,
                                                                     root):
    _patch_host(monkeypatch, _v1_mounts(tmp_path), HYBRID_OWN)
    for make in (lambda: cg.detect("auto", root),
                 lambda: cg.V2Backend(tmp_path, "/", cgroup_root=root)):
        with pytest.raises(JailError, match=re.escape(f'sandbox.cgroup_root = "{root}"')):
            make()


# ------------------------------------------------------------------------------ detect()


def _controllers_file(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(text)
    return path


def _v1_mounts(tmp_path: Path, combined_cpu: bool = False) -> list[tuple[str, str, str]]:
    mounts = []
    if combined_cpu:
        mounts.append((str(tmp_path / "cpu,cpuacct"), "cgroup", "rw,cpu,cpuacct"))
        names = ["memory", "pids", "freezer", "devices"]
    else:
        names = ["cpu", "cpuacct", "memory", "pids", "freezer", "devices"]
    mounts += [(str(tmp_path / n), "cgroup", f"rw,{n}") for n in names]
    mounts.append((str(tmp_path / "systemd"), "cgroup", "rw,xattr,name=systemd"))
    return mounts


def _patch_host(monkeypatch, mounts, own) -> None:
    monkeypatch.setattr(cg, "_mountinfo", lambda: mounts)
    monkeypatch.setattr(cg, "_own_cgroups", lambda: own)


HYBRID_OWN = {"": "/", "memory": "/process_api/abc", "cpu": "/", "cpuacct": "/", "pids": "/",
              "freezer": "/", "devices": "/", "name=systemd": "/"}


def test_detect_hybrid_host_with_empty_cgroup2_is_v1(tmp_path, monkeypatch):
    unified = _controllers_file(tmp_path / "unified", "")
    mounts = [("/sys/fs/cgroup", "tmpfs", "rw"), (str(unified), "cgroup2", "rw")]
    _patch_host(monkeypatch, mounts + _v1_mounts(tmp_path), HYBRID_OWN)
    backend = cg.detect()
    assert isinstance(backend, cg.V1Backend) and backend.version == "v1"
    assert backend.roots["memory"] == tmp_path / "memory" / "process_api" / "abc" / "sandboxd"
    for c in ("cpu", "cpuacct", "pids", "freezer"):
        assert backend.roots[c] == tmp_path / c / "sandboxd"


def test_detect_v1_with_cpu_and_cpuacct_comounted(tmp_path, monkeypatch):
    _patch_host(monkeypatch, _v1_mounts(tmp_path, combined_cpu=True), HYBRID_OWN)
    backend = cg.detect("v1")
    assert isinstance(backend, cg.V1Backend)
    assert backend.roots["cpu"] == backend.roots["cpuacct"] == tmp_path / "cpu,cpuacct" / "sandboxd"


def test_detect_v1_with_a_configured_root(tmp_path, monkeypatch):
    _patch_host(monkeypatch, _v1_mounts(tmp_path), HYBRID_OWN)
    backend = cg.detect("auto", "/judge")
    # Boxes directly below the configured root, in every hierarchy: no "sandboxd" level.
    assert all(backend.roots[c] == tmp_path / c / "judge" for c in cg.V1_CONTROLLERS)
    assert backend.cgroup_root == "/judge"


def test_detect_pure_v2_with_controllers_is_v2(tmp_path, monkeypatch):
    mount = _controllers_file(tmp_path / "cg2", "cpuset cpu io memory hugetlb pids rdma misc")
    _patch_host(monkeypatch, [(str(mount), "cgroup2", "rw,nsdelegate")],
                {"": "/system.slice/sandboxd.service"})
    backend = cg.detect()
    assert isinstance(backend, cg.V2Backend) and backend.version == "v2"
    assert backend.mount == mount
    assert backend.base == mount / "system.slice" / "sandboxd.service"
    assert backend.root == backend.base / "sandboxd"
    assert backend.move_self is True


def test_detect_v2_with_a_configured_root_does_not_move_the_daemon(tmp_path, monkeypatch):
    mount = _controllers_file(tmp_path / "cg2", "cpu memory pids")
    _patch_host(monkeypatch, [(str(mount), "cgroup2", "rw")], {"": "/system.slice/x"})
    backend = cg.detect("v2", "/delegated/judge")
    assert isinstance(backend, cg.V2Backend)
    assert backend.base == mount / "delegated" / "judge"
    assert backend.move_self is False


def test_detect_v2_requested_on_a_hybrid_host_is_an_error(tmp_path, monkeypatch):
    unified = _controllers_file(tmp_path / "unified", "")
    _patch_host(monkeypatch, [(str(unified), "cgroup2", "rw")] + _v1_mounts(tmp_path),
                HYBRID_OWN)
    with pytest.raises(JailError, match="cgroup v2 requested"):
        cg.detect("v2")


def test_detect_neither_usable_is_an_error(tmp_path, monkeypatch):
    unified = _controllers_file(tmp_path / "unified", "cpu pids")  # no memory
    v1_without_freezer = [m for m in _v1_mounts(tmp_path) if not m[0].endswith("freezer")]
    _patch_host(monkeypatch, [(str(unified), "cgroup2", "rw")] + v1_without_freezer,
                HYBRID_OWN)
    with pytest.raises(JailError, match="freezer"):
        cg.detect()


def test_detect_v1_requested_on_a_pure_v2_host_is_an_error(tmp_path, monkeypatch):
    mount = _controllers_file(tmp_path / "cg2", "cpu memory pids")
    _patch_host(monkeypatch, [(str(mount), "cgroup2", "rw")], {"": "/"})
    with pytest.raises(JailError, match="no usable cgroups"):
        cg.detect("v1")
