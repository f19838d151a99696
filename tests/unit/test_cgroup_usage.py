"""Exec-time accounting API of both cgroup backends, on the fake cgroupfs of
test_cgroup_fake.py: accounting_files (opened by the supervisor, used by the box's init
through those descriptors: the box's CPU counter, the program's memory peak and limit
files), parse_cpu_usage_ns, and CgroupStats read from the program's memory cgroup only.
The real kernel's side of the same: tests/integration/test_cgroup_usage.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from tests.unit.test_cgroup_fake import LIMITS, MIB, FakeCgroupFs, make_v1, make_v2

V2_CPU_STAT = ("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n"
               "core_sched.force_idle_usec 0\nnr_periods 12\nnr_throttled 3\n"
               "throttled_usec 4500\nnr_bursts 0\nburst_usec 0\n")


# ------------------------------------------------------------------------------ parse


@pytest.mark.parametrize(("text", "ns"), [
    ("987654321\n", 987_654_321),  # v1 cpuacct.usage: ns
    ("0\n", 0),
    (V2_CPU_STAT, 1_234_567_000),  # v2 cpu.stat: usage_usec, in us
    ("user_usec 5\nusage_usec 7\n", 7000),  # wherever the line is
    ("usage_usec 3", 3000),  # no trailing newline (a short pread)
])
def test_parse_cpu_usage_ns(text, ns):
    assert cg.parse_cpu_usage_ns(text) == ns


@pytest.mark.parametrize("text", ["", "user_usec 5\nsystem_usec 1\n", "max 100000\n"])
def test_parse_cpu_usage_ns_rejects_text_without_a_counter(text):
    with pytest.raises(ValueError):
        cg.parse_cpu_usage_ns(text)


def test_importing_the_cgroup_module_opens_no_file_and_starts_nothing():
    """parse_cpu_usage_ns runs in a forked child between fork and exec: importing its module
    must not read /proc, cgroupfs or anything else (only Python's own module files)."""
    script = textwrap.dedent("""
        import sys, threading
        opened = []
        def hook(event, args):
            if event == "open" and isinstance(args[0], str) and not args[0].endswith(
                    (".py", ".pyc", ".so")) and "__pycache__" not in args[0]:
                opened.append(args[0])
            if event in ("subprocess.Popen", "os.fork", "os.system", "socket.connect"):
                opened.append(event)
        sys.addaudithook(hook)
        before = threading.active_count()
        from sandboxd.jail.cgroup import parse_cpu_usage_ns
        assert parse_cpu_usage_ns("usage_usec 2\\n") == 2000
        print(repr((opened, threading.active_count() - before)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    opened, new_threads = eval(out)
    assert [p for p in opened if not os.path.isdir(p)] == [] and new_threads == 0, out


# ------------------------------------------------------------------------------ accounting_files


def _v1(tmp_path, monkeypatch, **options) -> tuple[cg.V1Cgroup, Path, FakeCgroupFs]:
    backend, fs = make_v1(tmp_path, monkeypatch, **options)
    backend.prepare()
    box = backend.create(LIMITS)
    assert isinstance(box, cg.V1Cgroup)
    del fs.writes[:]
    return box, box.dirs["memory"], fs


def _v2(tmp_path, monkeypatch, **options) -> tuple[cg.V2Cgroup, Path, FakeCgroupFs]:
    backend, fs = make_v2(tmp_path, monkeypatch, **options)
    backend.prepare()
    box = backend.create(LIMITS)
    assert isinstance(box, cg.V2Cgroup)
    del fs.writes[:]
    return box, backend.root / box.name, fs


def test_v1_accounting_files_are_the_box_cpu_counter_and_the_programs_memory_files(
        tmp_path, monkeypatch):
    box, memory, fs = _v1(tmp_path, monkeypatch)
    program = memory / "program"
    assert box.accounting_files == (
        str(box.dirs["cpuacct"] / "cpuacct.usage"),  # the box: every process of it
        str(program / "memory.max_usage_in_bytes"),
        str(program / "memory.limit_in_bytes"),  # lowering: the limit first ...
        str(program / "memory.memsw.limit_in_bytes"),  # ... then memsw, never below it
    )


def test_v1_accounting_files_without_swap_accounting_name_the_limit_twice(
        tmp_path, monkeypatch):
    box, memory, fs = _v1(tmp_path, monkeypatch, memsw=False)
    limit = str(memory / "program" / "memory.limit_in_bytes")
    assert box.accounting_files[2:] == (limit, limit)


def test_v2_accounting_files_are_the_box_cpu_stat_and_the_programs_memory_files(
        tmp_path, monkeypatch):
    box, path, fs = _v2(tmp_path, monkeypatch)
    program = path / "program"
    assert box.accounting_files == (str(path / "cpu.stat"), str(program / "memory.peak"),
                                    str(program / "memory.max"), str(program / "memory.max"))


def test_v2_accounting_files_before_memory_peak_use_the_programs_memory_current(
        tmp_path, monkeypatch):
    box, path, fs = _v2(tmp_path, monkeypatch, peak=False)  # kernels before 5.19
    assert box.accounting_files[1] == str(path / "program" / "memory.current")


def _open_like_the_supervisor(box: cg.Cgroup) -> list[int]:
    """pipes.BoxFds: the counter read-only, the peak read-write, the limits write-only."""
    cpu, peak, limit, limit2 = box.accounting_files
    return [os.open(cpu, os.O_RDONLY | os.O_CLOEXEC), os.open(peak, os.O_RDWR | os.O_CLOEXEC),
            *(os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in (limit, limit2))]


def _forked_pread(fds: list[int]) -> tuple[int, int]:
    """The box's init: (CPU ns, peak bytes), re-read through descriptors opened earlier."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            cpu = cg.parse_cpu_usage_ns(os.pread(fds[0], 4096, 0).decode())
            os.write(w, f"{cpu} {int(os.pread(fds[1], 64, 0))}".encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 100).split()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return int(data[0]), int(data[1])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_accounting_descriptors_follow_the_box_cpu_and_the_programs_peak(
        tmp_path, monkeypatch, version):
    if version == "v1":
        box, memory, fs = _v1(tmp_path, monkeypatch)
        cpu_file, cpu_text = box.dirs["cpuacct"] / "cpuacct.usage", "42000000\n"
        peak_name = "memory.max_usage_in_bytes"
    else:
        box, memory, fs = _v2(tmp_path, monkeypatch)
        cpu_file, cpu_text = memory / "cpu.stat", V2_CPU_STAT
        peak_name = "memory.peak"
    fds = _open_like_the_supervisor(box)
    try:
        assert _forked_pread(fds) == (0, 0)
        # The kernel: the box ran; the program's, the keeper's and the box's memory
        # counters differ.
        cpu_file.write_text(cpu_text)
        (memory / "program" / peak_name).write_text(f"{48 * MIB}\n")
        (memory / "keeper" / peak_name).write_text(f"{30 * MIB}\n")
        (memory / peak_name).write_text(f"{78 * MIB}\n")
        cpu, peak = _forked_pread(fds)
        assert cpu == cg.parse_cpu_usage_ns(cpu_text) == box.cpu_ns()
        assert peak == 48 * MIB == box.stats().memory_peak_bytes
    finally:
        for fd in fds:
            os.close(fd)


def test_v1_the_limit_files_lower_the_programs_limit_in_their_order(tmp_path, monkeypatch):
    """What the box's init does at the execve (stage._narrow_memory_limit), with the
    kernel's rule that the memory limit never exceeds memsw (the fake enforces it)."""
    box, memory, fs = _v1(tmp_path, monkeypatch)
    program = memory / "program"
    _cpu, _peak, limit, limit2 = box.accounting_files
    with pytest.raises(OSError) as e:  # memsw first would go below the memory limit
        cg._write(Path(limit2), str(64 * MIB))
    assert e.value.errno == errno.EINVAL
    for path in (limit, limit2):
        cg._write(Path(path), str(64 * MIB))
    assert (program / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (program / "memory.memsw.limit_in_bytes").read_text() == str(64 * MIB)
    keeper = str(cg.KEEPER_MEMORY_BYTES)
    assert (memory / "keeper" / "memory.limit_in_bytes").read_text() == keeper
    # Over the new limit already: v1 refuses (EBUSY), the limit stays.
    (program / "memory.usage_in_bytes").write_text(f"{40 * MIB}\n")
    with pytest.raises(OSError) as e:
        cg._write(Path(limit), str(32 * MIB))
    assert e.value.errno == errno.EBUSY
    assert (program / "memory.limit_in_bytes").read_text() == str(64 * MIB)


# ------------------------------------------------------------------------------ stats


def test_v1_stats_file_cache_is_the_programs_hierarchical_file_lru(tmp_path, monkeypatch):
    box, memory, fs = _v1(tmp_path, monkeypatch)
    (memory / "program" / "memory.stat").write_text(
        "cache 111\nrss 222\nactive_file 1\ninactive_file 2\n"
        "total_cache 9000000\ntotal_rss 5000000\ntotal_active_anon 5000000\n"
        "total_inactive_anon 0\ntotal_active_file 4194304\ntotal_inactive_file 1048576\n"
        "total_unevictable 0\n")
    (memory / "program" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    for other in (memory, memory / "keeper"):  # the box's and the keeper's: not counted
        (other / "memory.stat").write_text("total_active_file 77777777\n"
                                           "total_inactive_file 1\n")
        (other / "memory.oom_control").write_text("oom_kill 5\n")
    stats = box.stats()
    assert stats.file_cache_bytes == 4194304 + 1048576
    assert stats.oom_kills == stats.oom_events == 2


def test_v2_stats_file_cache_and_oom_events_are_the_programs(tmp_path, monkeypatch):
    box, path, fs = _v2(tmp_path, monkeypatch)
    (path / "program" / "memory.stat").write_text(
        "anon 5000000\nfile 9000000\nkernel 100\nshmem 0\nfile_mapped 4096\n"
        "active_anon 5000000\ninactive_anon 0\nactive_file 3145728\ninactive_file 2097152\n"
        "unevictable 0\n")
    (path / "program" / "memory.events").write_text("low 0\nhigh 0\nmax 31\noom 3\n"
                                                    "oom_kill 1\noom_group_kill 7\n")
    for other in (path, path / "keeper"):  # the box's and the keeper's: not counted
        (other / "memory.stat").write_text("active_file 77777777\ninactive_file 1\n")
        (other / "memory.events").write_text("oom 6\noom_kill 4\n")
    stats = box.stats()
    assert stats.file_cache_bytes == 3145728 + 2097152
    assert (stats.oom_events, stats.oom_kills) == (3, 1)


def test_v2_cpu_is_the_whole_box(tmp_path, monkeypatch):
    box, path, fs = _v2(tmp_path, monkeypatch)
    (path / "cpu.stat").write_text(V2_CPU_STAT)  # hierarchical: the keeper and the program
    (path / "program" / "cpu.stat").write_text("usage_usec 1000000\n")
    (path / "keeper" / "cpu.stat").write_text("usage_usec 234567\n")
    assert box.cpu_ns() == box.stats().cpu_ns == 1_234_567_000


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_stats_of_a_fresh_box_are_zero_but_complete(tmp_path, monkeypatch, version):
    box = (_v1 if version == "v1" else _v2)(tmp_path, monkeypatch)[0]
    assert box.stats() == cg.CgroupStats(
        cpu_ns=0, memory_peak_bytes=0, oom_kills=0, oom_events=0, file_cache_bytes=0)
