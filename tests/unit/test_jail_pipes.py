"""The box's descriptors (jail/pipes.py) and report parsing (jail/protocol.py), no root."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os

import pytest

from sandboxd.jail import pipes, protocol


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stdin_is_sealed_and_read_only():
    fd = pipes.sealed_stdin(b"x" * 10000)
    try:
        assert os.read(fd, 20000) == b"x" * 10000
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & pipes.STDIN_SEALS == pipes.STDIN_SEALS
        with pytest.raises(OSError) as e:
            os.write(fd, b"y")
        assert e.value.errno == errno.EBADF
        # A shared writable mapping would let a box dirty pages charged to the daemon.
        with pytest.raises(OSError):
            mmap.mmap(fd, 10000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # Through /proc, a new writable open of the same memfd still cannot write.
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                os.pwrite(rw, b"y", 0)
            assert e.value.errno == errno.EPERM
        finally:
            os.close(rw)
    finally:
        os.close(fd)


def test_box_fds_close_everything_they_opened_when_one_open_fails(tmp_path):
    (tmp_path / "cpu").write_text("0")
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        pipes.BoxFds((str(tmp_path / "cpu"), str(tmp_path / "cpu"), str(tmp_path / "cpu"),
                      str(tmp_path / "cpu")), str(tmp_path / "missing"))
    assert open_fds() == before


def test_box_fds_close_everything_when_the_report_pipe_cannot_be_made(tmp_path, monkeypatch):
    for name in ("cpu", "mem", "peak", "limit"):
        (tmp_path / name).write_text("0")

    def failing_pipe2(flags):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pipe2", failing_pipe2)
    before = open_fds()
    with pytest.raises(OSError) as e:
        pipes.BoxFds(tuple(str(tmp_path / n) for n in ("cpu", "peak", "limit", "limit")),
                     str(tmp_path / "mem"))
    assert e.value.errno == errno.EMFILE
    assert open_fds() == before


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_job_fds_close_everything_when_a_descriptor_cannot_be_made(monkeypatch, fail_at):
    """stdin's memfd, stdout's pipe, stderr's pipe: whichever fails, nothing is left open,
    a passed descriptor included (the run owns it from the call on)."""
    real_pipe2, real_memfd = os.pipe2, os.memfd_create
    calls = []

    def counted(real):
        def call(*args):
            calls.append(real)
            if len(calls) == fail_at:
                raise OSError(errno.EMFILE, "Too many open files")
            return real(*args)
        return call

    monkeypatch.setattr(os, "pipe2", counted(real_pipe2))
    monkeypatch.setattr(os, "memfd_create", counted(real_memfd))
    before = open_fds()
    with pytest.raises(OSError) as e:
        pipes.JobFds(b"in", 1 << 20, False)
    assert e.value.errno == errno.EMFILE
    assert open_fds() == before


def test_job_fds_own_a_passed_descriptor_even_when_they_fail():
    before = open_fds()
    r, w = os.pipe2(os.O_CLOEXEC)
    with pytest.raises(ValueError):
        pipes.JobFds(b"", 1 << 20, True, stdout_fd=w, stdin_fd=r)  # merge needs our pipe
    assert open_fds() == before


async def _read_all(reader: pipes.OutputReader, w: int, data: bytes) -> None:
    os.write(w, data)
    await asyncio.sleep(pipes.OUTPUT_BATCH_S * 3)
    os.close(w)
    await asyncio.wait_for(reader.drain(), 5)


async def test_output_over_the_cap_kills_when_asked():
    r, w = pipes.output_pipe(1 << 16)
    hits = []
    reader = pipes.OutputReader(r, 100, kills=True, on_overflow=lambda: hits.append(1))
    os.write(w, b"a" * 150)
    await asyncio.wait_for(reader.done, 5)
    assert bytes(reader.buf) == b"a" * 100 and reader.overflow and hits == [1]
    os.close(w)


async def test_output_over_the_cap_is_dropped_but_read_when_not_killing():
    # Compile steps: the compiler keeps running and is judged by its exit status.
    r, w = pipes.output_pipe(1 << 16)
    hits = []
    reader = pipes.OutputReader(r, 100, kills=False, on_overflow=lambda: hits.append(1))
    await _read_all(reader, w, b"b" * 5000)
    assert bytes(reader.buf) == b"b" * 100 and reader.overflow and hits == [1]


async def test_a_trickle_is_read_in_batches_not_per_write():
    r, w = pipes.output_pipe(1 << 16)
    reader = pipes.OutputReader(r, 1 << 20, kills=True, on_overflow=lambda: None)
    reads = []
    real_read = os.read

    def counting_read(fd, n):
        if fd == r:
            reads.append(n)
        return real_read(fd, n)

    os.read = counting_read  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for _ in range(200):
            os.write(w, b"z")
            await asyncio.sleep(0.0005)
        os.close(w)
        await asyncio.wait_for(reader.drain(), 5)
    finally:
        os.read = real_read  # type: ignore[assignment]
    elapsed = loop.time() - started
    assert bytes(reader.buf) == b"z" * 200
    # One wakeup per batch interval (its read, and the read that finds the pipe empty),
    # plus the final drain: never one per write.
    assert len(reads) <= 2 * (elapsed / pipes.OUTPUT_BATCH_S + 2), (len(reads), elapsed)
    assert len(reads) < 200


def test_output_pipe_holds_the_whole_cap():
    r, w = pipes.output_pipe(1 << 20)
    try:
        if os.geteuid() == 0:
            assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= 1 << 20
    finally:
        os.close(r)
        os.close(w)


def test_report_parsing_reads_every_message():
    raw = b"\n".join(protocol.encode(m) for m in (
        {"kind": "STARTED"},
        {"kind": "EXECED", "pre_exec_cpu_ns": 5, "limit_errno": 0},
        {"kind": "REFUSED", "bytes": 100},
        {"kind": "REFUSED", "bytes": 50},
        {"kind": "EXITED", "status": 256, "wall_ns": 9, "cpu_ns": 11, "init_cpu_ns": 2,
         "program_cpu_ns": 7},
    )) + b"\n{torn"
    rep = protocol.parse_report(raw)
    assert rep.started and rep.execed
    assert (rep.pre_exec_cpu_ns, rep.limit_errno) == (5, 0)
    assert rep.refused_bytes == 100
    assert (rep.wait_status, rep.wall_ns, rep.exit_cpu_ns, rep.init_cpu_ns,
            rep.program_cpu_ns) == (256, 9, 11, 2, 7)
    assert rep.failed_step is None


def test_the_first_failure_is_the_one_reported():
    raw = (protocol.encode({"kind": "FAILED", "step": "mounts", "errno": 2, "message": "a"})
           + b"\n" + protocol.encode({"kind": "FAILED", "step": "go", "errno": 1,
                                     "message": "b"}))
    rep = protocol.parse_report(raw)
    assert (rep.failed_step, rep.failed_errno, rep.failed_message) == ("mounts", 2, "a")
    assert not rep.execed and rep.wait_status is None
