"""The exec-time accounting API on the real kernel, for whichever backend the host has.

A worker process (our child, moved into a real box cgroup) burns CPU, allocates and
writes files on command; a forked reader plays the box's init: it only has descriptors
the parent opened beforehand and re-reads them with pread at offset 0.

Measured on the 2-core CI host (Linux 6.18, v1): pread(fd, 4096, 0) returns the current
value of cpuacct.usage and memory.usage_in_bytes every time (cgroup files are seq_files,
regenerated at offset 0), while a second plain read() returns EOF.
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

WORKER = r"""
import os, sys, time
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "cpu":
        t = time.process_time()
        while time.process_time() - t < int(arg) / 1000:
            pass
    elif cmd == "alloc":
        b = bytearray(int(arg) << 20)
        b[::4096] = b"x" * (len(b) // 4096)
        held.append(b)
    elif cmd == "free":
        held.clear()
    elif cmd == "write":
        with open(arg, "wb") as f:
            for _ in range(16):
                f.write(os.urandom(1 << 20))
    print("ok", flush=True)
"""


class Worker:
    def __init__(self, box: cg.Cgroup) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        for path in box.procs_files:  # what the box's first step does, for this pid
            with open(path, "w") as f:
                f.write(str(self.proc.pid))

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n", f"worker died on {command!r}"


@pytest.fixture
def box(sandbox) -> Iterator[cg.Cgroup]:
    b = sandbox.cgroups.create(LIMITS)
    try:
        yield b
    finally:
        b.kill_all()
        cg._wait_empty(b)
        b.remove()


@pytest.fixture
def worker(box) -> Iterator[Worker]:
    w = Worker(box)
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()


def _reader(fds: list[int]) -> tuple[int, int]:
    """Fork a process that has only `fds`, reads them as the box's init will, reports."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: pread + parse, nothing else
        try:
            cpu = cg.parse_cpu_usage_ns(os.pread(fds[0], 4096, 0).decode())
            memory = int(os.pread(fds[1], 4096, 0))
            os.write(w, f"{cpu} {memory}".encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 100).split()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return int(data[0]), int(data[1])


def test_usage_files_reread_with_pread_from_a_forked_reader(box, worker):
    fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in box.usage_files]
    try:
        cpu0, memory0 = _reader(fds)
        worker.do("cpu 200")
        worker.do("alloc 64")
        cpu1, memory1 = _reader(fds)
        worker.do("cpu 100")
        cpu2, memory2 = _reader(fds)
        assert cpu1 - cpu0 >= 190_000_000, (cpu0, cpu1)  # the worker's own 200 ms
        assert memory1 - memory0 >= 63 * MIB, (memory0, memory1)
        assert cpu2 - cpu1 >= 95_000_000, (cpu1, cpu2)
        # The same descriptors agree with a fresh open (the supervisor's view).
        assert 0 <= box.cpu_ns() - cpu2 < 50_000_000 * SLOWDOWN
        assert abs(box.memory_usage() - memory2) < 8 * MIB
        # Why pread at offset 0: a plain read after the first one is at EOF.
        assert os.read(fds[0], 4096) != b""
        assert os.read(fds[0], 4096) == b""
    finally:
        for fd in fds:
            os.close(fd)


def _peak_resets(sandbox) -> bool:
    if sandbox.cgroups.version == "v1":
        return True  # memory.max_usage_in_bytes has always been resettable
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    return release >= (6, 12)  # memory.peak takes "reset" since 6.12


def test_program_started_sets_the_limit_and_restarts_the_peak(sandbox, box, worker):
    worker.do("alloc 64")
    worker.do("free")
    baseline = box.memory_usage()
    box.program_started(baseline, 100 * MIB)
    limit_file = "memory.max" if sandbox.cgroups.version == "v2" else "memory.limit_in_bytes"
    memory_dir = Path(box.usage_files[1]).parent
    assert int((memory_dir / limit_file).read_text()) == (baseline + 100 * MIB) // 4096 * 4096
    worker.do("alloc 16")
    stats = box.stats()
    assert stats.memory_peak_bytes >= baseline + 15 * MIB
    if _peak_resets(sandbox):
        # The 64 MiB allocated and freed before program_started are not in the peak.
        assert stats.memory_peak_bytes < baseline + 40 * MIB, (baseline, stats)
    assert stats.oom_kills == stats.oom_events == 0


def test_program_started_below_the_usage(sandbox, box, worker):
    worker.do("alloc 64")
    if sandbox.cgroups.version == "v1":
        # v1 cannot reclaim anonymous memory without swap: it refuses the limit.
        with pytest.raises(OSError) as e:
            box.program_started(0, 16 * MIB)
        assert e.value.errno == errno.EBUSY
        assert worker.proc.poll() is None
        assert box.stats().oom_events == 0
    else:
        # v2 takes the limit, then the OOM killer takes the worker: the evidence is kept.
        box.program_started(0, 16 * MIB)
        assert worker.proc.wait(timeout=10 * SLOWDOWN) == -signal.SIGKILL
        stats = box.stats()
        assert stats.oom_events >= 1 and stats.oom_kills >= 1, stats


def _fstype(path: str) -> str:
    best = ("", "")
    for point, fstype, _ in mountinfo():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best[0]):
            best = (point, fstype)
    return best[1]


def test_file_cache_bytes_counts_the_page_cache_of_files_the_box_wrote(box, worker):
    directory = tempfile.gettempdir()
    if _fstype(directory) in ("tmpfs", "overlay", "9p", ""):
        pytest.skip(f"{directory} is {_fstype(directory) or 'unknown'}: no disk page cache")
    with tempfile.TemporaryDirectory() as d:
        before = box.stats().file_cache_bytes
        worker.do(f"write {d}/data")
        after = box.stats().file_cache_bytes
    assert after - before >= 15 * MIB, (before, after)
