"""Exec-time accounting API of both cgroup backends, on the fake cgroupfs of
test_cgroup_fake.py: usage_files + parse_cpu_usage_ns (read by the box's init through
descriptors opened beforehand), program_started (the memory limit and the peak from the
program's execve on), and the memory evidence in CgroupStats."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from tests.unit.test_cgroup_fake import LIMITS, MIB, make_v1, make_v2

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


# ------------------------------------------------------------------------------ usage_files


def _pread_all(paths: tuple[str, str]) -> tuple[str, str]:
    fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]
    try:
        return os.pread(fds[0], 4096, 0).decode(), os.pread(fds[1], 4096, 0).decode()
    finally:
        for fd in fds:
            os.close(fd)


def test_v1_usage_files_are_cpuacct_usage_and_memory_usage_in_bytes(tmp_path, monkeypatch):
    backend, fs = make_v1(tmp_path, monkeypatch)
    backend.prepare()
    box = backend.create(LIMITS)
    cpu_file, memory_file = box.usage_files
    assert cpu_file == str(backend.roots["cpuacct"] / box.name / "cpuacct.usage")
    assert memory_file == str(backend.roots["memory"] / box.name / "memory.usage_in_bytes")
    Path(cpu_file).write_text("42000000\n")
    Path(memory_file).write_text("3145728\n")
    cpu_text, memory_text = _pread_all(box.usage_files)
    assert cg.parse_cpu_usage_ns(cpu_text) == 42_000_000 == box.cpu_ns()
    assert int(memory_text) == 3145728 == box.memory_usage()


def test_v2_usage_files_are_cpu_stat_and_memory_current(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    box = backend.create(LIMITS)
    path = backend.root / box.name
    assert box.usage_files == (str(path / "cpu.stat"), str(path / "memory.current"))
    (path / "cpu.stat").write_text(V2_CPU_STAT)
    (path / "memory.current").write_text("2097152\n")
    cpu_text, memory_text = _pread_all(box.usage_files)
    assert cg.parse_cpu_usage_ns(cpu_text) == 1_234_567_000 == box.cpu_ns()
    assert int(memory_text) == 2097152 == box.memory_usage()


# ------------------------------------------------------------------------------ v1 program_started


def _v1_box(tmp_path, monkeypatch, **options):
    backend, fs = make_v1(tmp_path, monkeypatch, **options)
    backend.prepare()
    box = backend.create(LIMITS)  # memory.limit_in_bytes = memsw = 256 MiB
    del fs.writes[:]
    return box, box.dirs["memory"], fs


def test_v1_program_started_raising_writes_memsw_first(tmp_path, monkeypatch):
    box, memory, fs = _v1_box(tmp_path, monkeypatch)
    (memory / "memory.usage_in_bytes").write_text(f"{5 * MIB}\n")
    box.program_started(8 * MIB, 256 * MIB)  # 264 MiB > 256 MiB: raising
    limit = str(264 * MIB)
    assert [(Path(p).name, v) for p, v in fs.writes] == [
        ("memory.memsw.limit_in_bytes", limit),  # memory limit <= memsw at every step
        ("memory.limit_in_bytes", limit),
        ("memory.max_usage_in_bytes", "0"),
    ]
    assert (memory / "memory.max_usage_in_bytes").read_text() == f"{5 * MIB}\n"  # from now


def test_v1_program_started_lowering_writes_the_limit_first(tmp_path, monkeypatch):
    # The create-time limit includes a setup allowance; the program's may be lower.
    box, memory, fs = _v1_box(tmp_path, monkeypatch)
    (memory / "memory.usage_in_bytes").write_text(f"{3 * MIB}\n")
    box.program_started(3 * MIB, 64 * MIB)
    limit = str(67 * MIB)
    assert [(Path(p).name, v) for p, v in fs.writes] == [
        ("memory.limit_in_bytes", limit),
        ("memory.memsw.limit_in_bytes", limit),
        ("memory.max_usage_in_bytes", "0"),
    ]
    assert (memory / "memory.limit_in_bytes").read_text() == limit
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == limit


def test_v1_program_started_above_the_new_limit_raises_ebusy(tmp_path, monkeypatch):
    box, memory, fs = _v1_box(tmp_path, monkeypatch)
    (memory / "memory.usage_in_bytes").write_text(f"{100 * MIB}\n")  # setup grew meanwhile
    with pytest.raises(OSError) as e:
        box.program_started(2 * MIB, 64 * MIB)
    assert e.value.errno == errno.EBUSY
    # Nothing changed: both limits as created, the peak not reset.
    assert (memory / "memory.limit_in_bytes").read_text() == str(256 * MIB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(256 * MIB)
    assert fs.writes == []


@pytest.mark.parametrize(("baseline", "limit"), [(MIB, 256 * MIB), (MIB, 16 * MIB)],
                         ids=["raising", "lowering"])
def test_v1_program_started_without_swap_accounting(tmp_path, monkeypatch, baseline, limit):
    box, memory, fs = _v1_box(tmp_path, monkeypatch, memsw=False)
    box.program_started(baseline, limit)
    assert [(Path(p).name, v) for p, v in fs.writes] == [
        ("memory.limit_in_bytes", str(baseline + limit)),
        ("memory.max_usage_in_bytes", "0")]


# ------------------------------------------------------------------------------ v2 program_started


def test_v2_program_started_sets_memory_max_and_reads_the_peak_through_the_reset_fd(
        tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    box = backend.create(LIMITS)
    path = backend.root / box.name
    box.program_started(4 * MIB, 64 * MIB)
    assert (path / "memory.max").read_text() == str(68 * MIB)
    assert fs.writes_to("memory.max") == [str(256 * MIB), str(68 * MIB)]
    assert (path / "memory.peak").read_text() == "reset"  # written through the fd
    # The kernel (6.12+): the reset fd sees the peak since the reset, a new open the
    # cgroup's lifetime peak. The fake: that fd's inode vs. a new file at the path.
    (path / "memory.peak").write_text("52428800\n")
    lifetime = path / "memory.peak.new"
    lifetime.write_text("99999999\n")
    os.rename(lifetime, path / "memory.peak")
    assert box.stats().memory_peak_bytes == 52428800
    assert box.stats().memory_peak_bytes == 99999999  # the fd was used once, then closed


def test_v2_program_started_twice_keeps_one_peak_fd(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    box = backend.create(LIMITS)
    fds_before = len(os.listdir("/proc/self/fd"))
    box.program_started(MIB, 64 * MIB)
    box.program_started(MIB, 32 * MIB)
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1
    box.remove()
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_v2_program_started_without_memory_peak(tmp_path, monkeypatch):
    # Before 5.19 there is no memory.peak: the limit is still set, the peak falls back.
    backend, fs = make_v2(tmp_path, monkeypatch, peak=False)
    backend.prepare()
    box = backend.create(LIMITS)
    path = backend.root / box.name
    box.program_started(MIB, 10 * MIB)
    assert (path / "memory.max").read_text() == str(11 * MIB)
    (path / "memory.current").write_text("7340032\n")
    assert box.stats().memory_peak_bytes == 7340032


# ------------------------------------------------------------------------------ stats


def test_v1_stats_file_cache_is_the_hierarchical_file_lru_and_oom_events_are_oom_kills(
        tmp_path, monkeypatch):
    box, memory, fs = _v1_box(tmp_path, monkeypatch)
    (memory / "memory.stat").write_text(
        "cache 111\nrss 222\nactive_file 1\ninactive_file 2\n"
        "total_cache 9000000\ntotal_rss 5000000\ntotal_active_anon 5000000\n"
        "total_inactive_anon 0\ntotal_active_file 4194304\ntotal_inactive_file 1048576\n"
        "total_unevictable 0\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    stats = box.stats()
    assert stats.file_cache_bytes == 4194304 + 1048576
    assert stats.oom_kills == stats.oom_events == 2


def test_v2_stats_file_cache_and_oom_events_from_memory_events(tmp_path, monkeypatch):
    backend, fs = make_v2(tmp_path, monkeypatch)
    backend.prepare()
    box = backend.create(LIMITS)
    path = backend.root / box.name
    (path / "memory.stat").write_text(
        "anon 5000000\nfile 9000000\nkernel 100\nshmem 0\nfile_mapped 4096\n"
        "active_anon 5000000\ninactive_anon 0\nactive_file 3145728\ninactive_file 2097152\n"
        "unevictable 0\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 31\noom 3\noom_kill 1\n"
                                        "oom_group_kill 7\n")
    stats = box.stats()
    assert stats.file_cache_bytes == 3145728 + 2097152
    assert (stats.oom_events, stats.oom_kills) == (3, 1)


def test_stats_of_a_fresh_box_are_zero_but_complete(tmp_path, monkeypatch):
    box, memory, fs = _v1_box(tmp_path, monkeypatch)
    assert box.stats() == cg.CgroupStats(
        cpu_ns=0, memory_peak_bytes=0, oom_kills=0, oom_events=0, file_cache_bytes=0)
