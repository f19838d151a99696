"""The box cgroup's memory split and exec-time accounting on the real kernel, for whichever
backend the host has (v1 here, v2 in the VM lane).

    box-<pid>-<seq>/     pids, CPU quota, CPU accounting, freezer / kill
        keeper/          D and the box's init (procs_files)
        program/         the program (program_procs_file): the memory limit, the peak,
                         the OOM killer

Worker processes (our children, placed in a real box) burn CPU, allocate and write files
on command; a worker moves itself into program/ the way the program does, writing "0"
through a descriptor opened beforehand. A forked reader plays the box's init: it only
has the descriptors opened like pipes.BoxFds opens `accounting_files`, and re-reads them
with pread at offset 0.

Measured on the 2-core CI host (Linux 6.18, v1): pread(fd, 4096, 0) returns the current
value of cpuacct.usage and memory.max_usage_in_bytes every time (cgroup files are
seq_files, regenerated at offset 0), while a second plain read() returns EOF.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from sandboxd.jail._proc import mountinfo
from tests.conftest import SLOWDOWN

MIB = 1 << 20
LIMITS = cg.CgroupLimits(memory_bytes=512 * MIB, processes=16, cpu_share=1.0)
NOBODY = 65534

WORKER = r"""
import os, sys, time
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "cpu":
        t = time.process_time()
        while time.process_time() - t < int(arg) / 1000:
            pass
    elif cmd == "alloc":  # no other reference: "free" must return it all
        held.append(bytearray(int(arg) << 20))
        held[-1][::4096] = b"x" * (len(held[-1]) // 4096)
    elif cmd == "free":
        held.clear()
    elif cmd == "write":
        with open(arg, "wb") as f:
            for _ in range(16):
                f.write(os.urandom(1 << 20))
    elif cmd == "join":  # what the program does before its execve
        os.write(int(arg), b"0")
        os.close(int(arg))
    print("ok", flush=True)
"""


class Worker:
    """A process in the box: in keeper/ like D and the init, then (`join`) in program/."""

    def __init__(self, box: cg.Cgroup, *, program: bool = True) -> None:
        # The supervisor opens the program's cgroup.procs; the program writes through it.
        self.program_fd = os.open(box.program_procs_file, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True,
                                         pass_fds=(self.program_fd,))
        except BaseException:
            os.close(self.program_fd)
            raise
        self.pid = self.proc.pid
        for path in box.procs_files:  # what the box's first step does, for this pid
            with open(path, "w") as f:
                f.write(str(self.pid))
        if program:
            self.join()

    def join(self) -> None:
        self.do(f"join {self.program_fd}")
        os.close(self.program_fd)

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n", f"worker died on {command!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            os.close(self.program_fd)
        except OSError:
            pass


@pytest.fixture
def box(sandbox) -> Iterator[cg.Cgroup]:
    b = sandbox.cgroups.create(LIMITS)
    try:
        yield b
    finally:
        b.kill_all()
        cg.wait_empty(b)
        b.remove()


@pytest.fixture
def workers(box) -> Iterator[list[Worker]]:
    """Workers a test starts (`Worker(box)`) and appends here are stopped afterwards."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.fixture
def worker(box, workers) -> Worker:
    workers.append(Worker(box))
    return workers[-1]


def _program_dir(box: cg.Cgroup) -> Path:
    return Path(box.program_procs_file).parent


def _keeper_dir(box: cg.Cgroup) -> Path:
    return _program_dir(box).parent / cg.KEEPER


def _v2(box: cg.Cgroup) -> bool:
    return isinstance(box, cg.V2Cgroup)


def _limit(leaf: Path, box: cg.Cgroup) -> int:
    return int((leaf / ("memory.max" if _v2(box) else "memory.limit_in_bytes")).read_text())


def _usage(leaf: Path, box: cg.Cgroup) -> int:
    return int((leaf / ("memory.current" if _v2(box) else "memory.usage_in_bytes")).read_text())


def _procs(leaf: Path) -> list[int]:
    return [int(p) for p in (leaf / "cgroup.procs").read_text().split()]


def _cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as controller ("" for v2) -> path."""
    lines = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            lines[c] = path
    return lines


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()))


class Accounting:
    """The four accounting descriptors, opened as pipes.BoxFds opens them."""

    def __init__(self, box: cg.Cgroup) -> None:
        cpu, peak, limit, limit2 = box.accounting_files
        self.fds: list[int] = []
        self.cpu = self._open(cpu, os.O_RDONLY)
        self.peak = self._open(peak, os.O_RDWR)
        self.limits = [self._open(p, os.O_WRONLY) for p in (limit, limit2)]

    def _open(self, path: str, flags: int) -> int:
        self.fds.append(os.open(path, flags | os.O_CLOEXEC))
        return self.fds[-1]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def read(self) -> tuple[int, int]:
        """Fork a process that has only these descriptors, reads them as the box's init
        does, and reports (CPU ns, peak bytes)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: pread + parse, nothing else
            try:
                cpu = cg.parse_cpu_usage_ns(os.pread(self.cpu, 4096, 0).decode())
                peak = int(os.pread(self.peak, 64, 0))
                os.write(w, f"{cpu} {peak}".encode())
            finally:
                os._exit(0)
        os.close(w)
        try:
            data = os.read(r, 100).split()
        finally:
            os.close(r)
            os.waitpid(pid, 0)
        return int(data[0]), int(data[1])

    def narrow(self, limit: int) -> None:
        """stage._narrow_memory_limit: every limit descriptor, in order (v1: memory, then
        memsw, which may never be below it; v2: memory.max twice)."""
        for fd in self.limits:
            os.write(fd, str(limit).encode())


@pytest.fixture
def accounting(box) -> Iterator[Accounting]:
    a = Accounting(box)
    try:
        yield a
    finally:
        a.close()


# ------------------------------------------------------------------------------ the layout


def test_create_makes_the_keeper_and_program_memory_cgroups_with_their_limits(box):
    program, keeper = _program_dir(box), _keeper_dir(box)
    assert _limit(keeper, box) == cg.KEEPER_MEMORY_BYTES
    assert _limit(program, box) == LIMITS.memory_bytes
    if isinstance(box, cg.V2Cgroup):
        assert program.parent == box.path
        assert "memory" in (box.path / "cgroup.subtree_control").read_text().split()
        assert (box.path / "pids.max").read_text() == "16\n"
        assert (box.path / "cpu.max").read_text() == "100000 100000\n"
        assert (box.path / "memory.max").read_text() == "max\n"
        for leaf in (keeper, program):
            if (leaf / "memory.swap.max").exists():
                assert (leaf / "memory.swap.max").read_text() == "0\n"
        assert box.procs_files == (str(keeper / "cgroup.procs"),)
    else:
        assert isinstance(box, cg.V1Cgroup)
        memory = box.dirs["memory"]
        assert program.parent == memory
        for d in box.distinct_dirs:  # the leaves exist in the memory hierarchy only
            children = sorted(p.name for p in d.iterdir() if p.is_dir())
            assert children == (["keeper", "program"] if d == memory else []), d
        for leaf in (keeper, program):  # memsw = memory: no swap
            memsw = leaf / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                assert int(memsw.read_text()) == _limit(leaf, box)
        assert int((memory / "memory.limit_in_bytes").read_text()) > 1 << 60  # unlimited
        assert (box.dirs["pids"] / "pids.max").read_text() == "16\n"
        assert (box.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "100000\n"
        assert box.procs_files == tuple(
            str((keeper if d == memory else d) / "cgroup.procs") for d in box.distinct_dirs)
    assert box.program_procs_file == str(program / "cgroup.procs")


def test_box_processes_are_in_the_keeper_until_the_program_moves_itself(box, workers):
    w = Worker(box, program=False)
    workers.append(w)
    keeper, program = _keeper_dir(box), _program_dir(box)
    box_rel = "/" + str(keeper.parent.relative_to(_cgroup_mount(keeper.parent)))
    memory_key = "" if _v2(box) else "memory"
    assert _cgroup_lines(w.pid)[memory_key] == f"{box_rel}/keeper"
    assert (_procs(keeper), _procs(program)) == ([w.pid], [])
    w.join()
    assert _cgroup_lines(w.pid)[memory_key] == f"{box_rel}/program"
    assert (_procs(keeper), _procs(program)) == ([], [w.pid])
    assert box.pids() == [w.pid]
    if isinstance(box, cg.V1Cgroup):  # every other hierarchy: still the box itself
        for c, d in box.dirs.items():
            if d != box.dirs["memory"]:
                assert _cgroup_lines(w.pid)[c] == "/" + str(d.relative_to(_cgroup_mount(d)))
    else:
        # No internal processes: with memory enabled for its leaves, the box holds none.
        fd = os.open(keeper.parent / "cgroup.procs", os.O_WRONLY)
        try:
            with pytest.raises(OSError) as e:
                os.write(fd, str(w.pid).encode())
        finally:
            os.close(fd)
        assert e.value.errno == errno.EBUSY
        assert _procs(program) == [w.pid]


def _cgroup_mount(path: Path) -> Path:
    best = Path("/")
    for point, fstype, _ in mountinfo():
        if fstype in ("cgroup", "cgroup2") and (path == Path(point) or Path(point) in path.parents):
            if len(point) > len(str(best)):
                best = Path(point)
    return best


def test_an_unprivileged_process_moves_itself_into_program_through_a_root_opened_descriptor(
        box):
    """The program: no privilege left, only the descriptor the supervisor opened (Linux
    5.16+ checks the opener's credentials). It could not open the file itself."""
    fd = os.open(box.program_procs_file, os.O_WRONLY | os.O_CLOEXEC)
    go_r, go_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(rep_r)
            os.read(go_r, 1)  # placed in the box by the parent
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                os.close(os.open(box.program_procs_file, os.O_WRONLY))
                own = "opened"
            except OSError as e:
                own = errno.errorcode.get(e.errno or 0, "?")
            try:
                os.write(fd, b"0")
                through_fd = "moved"
            except OSError as e:
                through_fd = errno.errorcode.get(e.errno or 0, "?")
            os.write(rep_w, f"{os.geteuid()} {own} {through_fd}".encode())
            os.read(go_r, 1)  # stay until the parent has looked
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(rep_w)
    os.close(fd)
    try:
        for path in box.procs_files:  # the box's first step, for the child
            with open(path, "w") as f:
                f.write(str(pid))
        assert _procs(_keeper_dir(box)) == [pid]
        os.write(go_w, b"g")
        report = os.read(rep_r, 100).decode().split()
        assert report == [str(NOBODY), "EACCES", "moved"], report
        assert _procs(_program_dir(box)) == [pid]
        assert _procs(_keeper_dir(box)) == []
        assert pid in box.pids()
    finally:
        os.write(go_w, b"g")
        os.close(go_w)
        os.close(rep_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------------------ accounting


def test_accounting_files_read_through_descriptors_by_a_forked_reader(box, workers,
                                                                      accounting):
    program = Worker(box)
    keeper = Worker(box, program=False)  # D and the init: their CPU is the box's too
    workers += [program, keeper]
    cpu0, peak0 = accounting.read()
    program.do("cpu 200")
    program.do("alloc 64")
    cpu1, peak1 = accounting.read()
    keeper.do("cpu 100")
    keeper.do("alloc 64")  # not the program's memory
    cpu2, peak2 = accounting.read()
    assert cpu1 - cpu0 >= 190_000_000, (cpu0, cpu1)  # the program's own 200 ms
    assert peak1 - peak0 >= 63 * MIB, (peak0, peak1)
    assert cpu2 - cpu1 >= 95_000_000, (cpu1, cpu2)  # the keeper's 100 ms: the box's CPU
    assert peak2 - peak1 < 4 * MIB, (peak1, peak2)  # the keeper's 64 MiB: not the program's
    # The same descriptors agree with a fresh open (the supervisor's view).
    assert 0 <= box.cpu_ns() - cpu2 < 50_000_000 * SLOWDOWN
    assert abs(box.stats().memory_peak_bytes - peak2) < MIB
    assert _usage(_keeper_dir(box), box) >= 63 * MIB
    # Why pread at offset 0: a plain read after the first one is at EOF.
    assert os.read(accounting.cpu, 4096) != b""
    assert os.read(accounting.cpu, 4096) == b""


def test_memory_allocated_in_the_keeper_is_never_the_programs(box, workers, accounting):
    w = Worker(box, program=False)
    workers.append(w)
    w.do("alloc 64")  # charged to the keeper, where it was allocated ...
    w.join()  # ... and it stays there (charges never move with a process)
    program = _program_dir(box)
    assert _usage(program, box) < 8 * MIB, _usage(program, box)
    assert _usage(_keeper_dir(box), box) >= 63 * MIB
    # So a program limit below what the keeper holds is no problem (v1 would say EBUSY,
    # v2 would OOM-kill, if the keeper's memory counted).
    accounting.narrow(32 * MIB)
    assert _limit(program, box) == 32 * MIB
    w.do("alloc 16")
    stats = box.stats()
    assert 15 * MIB <= stats.memory_peak_bytes < 32 * MIB, stats
    assert stats.oom_kills == stats.oom_events == 0
    assert w.proc.poll() is None


def test_the_limit_descriptors_lower_the_programs_limit_in_their_order(box, worker,
                                                                       accounting):
    program = _program_dir(box)
    cpu, peak, limit, limit2 = box.accounting_files
    if limit2 != limit:
        # v1 with swap accounting: memsw may never be below the memory limit, so the
        # order of accounting_files is the only one that can lower them.
        assert Path(limit2).name == "memory.memsw.limit_in_bytes"
        with pytest.raises(OSError) as e:
            os.write(accounting.limits[1], str(64 * MIB).encode())
        assert e.value.errno == errno.EINVAL
        assert int(Path(limit2).read_text()) == LIMITS.memory_bytes
    accounting.narrow(64 * MIB)
    assert _limit(program, box) == 64 * MIB
    assert int(Path(limit2).read_text()) == 64 * MIB
    assert _limit(_keeper_dir(box), box) == cg.KEEPER_MEMORY_BYTES  # untouched


def test_the_peak_restarts_through_the_peak_descriptor(box, worker, accounting):
    worker.do("alloc 64")
    worker.do("free")
    _, before = accounting.read()
    assert before >= 63 * MIB, before
    if _v2(box) and _kernel() < (6, 12):
        # memory.peak takes "reset" since 6.12; before, the init's write fails (and is
        # ignored: the peak then also covers the program's few pre-exec MiB).
        with pytest.raises(OSError):
            os.write(accounting.peak, b"reset")
        return
    os.write(accounting.peak, b"reset")  # stage._restart_peak (v1: any write)
    _, restarted = accounting.read()
    assert restarted < 16 * MIB, restarted
    worker.do("alloc 16")
    _, peak = accounting.read()
    assert 15 * MIB <= peak < 40 * MIB, peak  # the 64 MiB before the reset are gone
    fresh = box.stats().memory_peak_bytes
    if _v2(box):
        assert fresh >= 63 * MIB, fresh  # v2: reset for reads through that one file only
    else:
        assert abs(fresh - peak) < 4 * MIB, (fresh, peak)  # v1: the cgroup's, for all


def test_over_the_new_limit_v1_refuses_it_and_v2_oom_kills_the_program(box, worker,
                                                                       accounting):
    worker.do("alloc 64")
    program = _program_dir(box)
    if not _v2(box):
        # v1 cannot reclaim anonymous memory without swap: it refuses the limit.
        with pytest.raises(OSError) as e:
            accounting.narrow(16 * MIB)
        assert e.value.errno == errno.EBUSY
        assert _limit(program, box) == LIMITS.memory_bytes
        assert worker.proc.poll() is None
        assert box.stats().oom_events == 0
    else:
        # v2 takes the limit, then the OOM killer takes the program: the evidence stays.
        accounting.narrow(16 * MIB)
        assert worker.proc.wait(timeout=10 * SLOWDOWN) == -signal.SIGKILL
        stats = box.stats()
        assert stats.oom_events >= 1 and stats.oom_kills >= 1, stats


def test_the_oom_killer_sees_only_the_program(box, workers, accounting):
    """The keeper's processes are never OOM victims of the program's limit, even when
    they are the fattest and most killable processes in the box."""
    keeper = Worker(box, program=False)
    program = Worker(box)
    workers += [keeper, program]
    keeper.do("alloc 96")
    Path(f"/proc/{keeper.pid}/oom_score_adj").write_text("1000")
    accounting.narrow(48 * MIB)
    program.proc.stdin.write("alloc 64\n")
    program.proc.stdin.flush()
    assert program.proc.wait(timeout=20 * SLOWDOWN) == -signal.SIGKILL
    keeper.do("cpu 1")  # alive and well
    stats = box.stats()
    assert stats.oom_kills >= 1 and stats.oom_events >= 1, stats
    assert stats.memory_peak_bytes <= 48 * MIB


def _fstype(path: str) -> str:
    best = ("", "")
    for point, fstype, _ in mountinfo():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best[0]):
            best = (point, fstype)
    return best[1]


def test_file_cache_bytes_counts_the_page_cache_of_files_the_program_wrote(box, worker):
    directory = tempfile.gettempdir()
    if _fstype(directory) in ("tmpfs", "overlay", "9p", ""):
        pytest.skip(f"{directory} is {_fstype(directory) or 'unknown'}: no disk page cache")
    with tempfile.TemporaryDirectory() as d:
        before = box.stats().file_cache_bytes
        worker.do(f"write {d}/data")
        after = box.stats().file_cache_bytes
    assert after - before >= 15 * MIB, (before, after)
