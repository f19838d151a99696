"""The descriptors of one box, parent side: sealed stdin, output pipes, report pipe.

    box fd   what                                  daemon keeps
    3        report pipe (close-on-exec)            read end (`ReportReader`)
    4        take socket (close-on-exec)            the other end: sends TAKE
    (BoxFds, at SPAWN: 0-2 are /dev/null until the job comes)
    6        the box's CPU counter, read-only       nothing
    7        the program's memory peak,             its own copy (same open file: a v2
             read-write: restarted at execve        peak reset is per open file)
    8, 9     the program's memory limit files,      nothing
             write-only: narrowed at execve
    10       the program's cgroup.procs, write-     nothing
             only: the program moves itself in
    (6-10 are close-on-exec and used by the box's init and the program before execve;
    see cgroup.py, accounting_files)

    with TAKE (JobFds), the program's own, put on 0-2 by P:
    0        stdin: a sealed memfd, read-only       nothing (the data lives in the memfd)
    1, 2     stdout/stderr pipes, sized to hold     read ends (`OutputReader`)
             the whole output cap

A caller may pass descriptors of its own for the program's stdin and/or stdout
(`stdin_fd`, `stdout_fd`: a pipe between two boxes, say) instead of the memfd and the
captured pipe. JobFds then owns them: they go to the box like the ends it made and are
closed with them. Nothing reads a passed stdout, so the output cap does not apply to it
(the box's other limits do); stderr is still captured with its cap.

Output pipes hold the whole cap: a runtime that writes its output and exits at once
(Node.js drops pending pipe writes on `process.exit`) never waits for the daemon, so
nothing is lost; only output past the cap can block, and that ends the run anyway.
The pipe pages are charged to the writer's memory cgroup: the box pays for them.
Because of that headroom the daemon reads output in batches (`OUTPUT_BATCH_S`), not
on every write: a program trickling one byte at a time costs the daemon a wakeup per
batch, not one per byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

from . import protocol

OUTPUT_BATCH_S = 0.02  # the daemon looks at a box's output at most 50 times a second
READ_CHUNK = 1 << 20
MAX_READS_PER_BATCH = 8
MIN_PIPE_BYTES = 1 << 16
STDIN_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_stdin(data: bytes) -> int:
    """A read-only descriptor of a sealed memfd holding `data`.

    Sealed and read-only: the box cannot write the pages (no MAP_SHARED|PROT_WRITE, so
    it cannot use the daemon-charged memfd as free memory), nor grow or shrink it.
    """
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, STDIN_SEALS)
        # A new open file description through /proc: read-only, offset 0.
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def output_pipe(cap: int) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        # Root may exceed /proc/sys/fs/pipe-max-size; the kernel rounds up to 2^n pages.
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, max(MIN_PIPE_BYTES, cap))
    except OSError:
        pass  # not root (unit tests): a smaller pipe only means earlier back-pressure
    return r, w


def _nothing() -> None:
    pass


def _ignore(_message: dict) -> None:
    pass


class _Owned:
    """Descriptors opened all-or-nothing, each closed exactly once."""

    def __init__(self) -> None:
        self._opened: list[int] = []

    def _keep(self, fd: int) -> int:
        self._opened.append(fd)
        return fd

    def _keep_pair(self, pair: tuple[int, int]) -> tuple[int, int]:
        self._opened.extend(pair)
        return pair

    def close_all(self) -> None:
        for fd in list(self._opened):
            self.close(fd)

    def close(self, fd: int) -> None:
        if fd in self._opened:
            self._opened.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self, fd: int) -> None:
        """`fd` is now owned (and closed) by a reader."""
        if fd in self._opened:
            self._opened.remove(fd)


class BoxFds(_Owned):
    """The descriptors a box is spawned with (before it has a job): its report pipe,
    its take socket and its cgroup files (see the module docstring)."""

    def __init__(self, accounting: tuple[str, str, str, str], program_procs: str) -> None:
        super().__init__()
        try:
            self.rep_r, self.rep_w = self._keep_pair(os.pipe2(os.O_CLOEXEC))
            take, take_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.take = self._keep(take.detach())
            self.take_child = self._keep(take_child.detach())
            cpu, peak, limit, limit2 = accounting
            self.cpu_usage = self._keep(os.open(cpu, os.O_RDONLY | os.O_CLOEXEC))
            self.memory_peak = self._keep(os.open(peak, os.O_RDWR | os.O_CLOEXEC))
            self.limits = [self._keep(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                           for path in (limit, limit2)]
            self.program_procs = self._keep(os.open(program_procs,
                                                    os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            self.close_all()
            raise

    @property
    def child_ends(self) -> list[int]:
        """In protocol.SPAWN_FDS order, as sent to the fork server."""
        return [self.rep_w, self.take_child, self.cpu_usage, self.memory_peak, *self.limits,
                self.program_procs]

    def close_child_ends(self) -> None:
        """The box has its copies now (or never will): ours go (the peak stays open)."""
        for fd in set(self.child_ends) - {self.memory_peak}:
            self.close(fd)

    def read_peak(self) -> int:
        return int(os.pread(self.memory_peak, 64, 0))


class JobFds(_Owned):
    """The program's stdin, stdout and stderr, sent to the box with its job (TAKE)."""

    def __init__(self, stdin: bytes, output_cap: int, merge_stderr: bool, *,
                 stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
        super().__init__()
        # The caller's descriptors are ours from here on, whatever happens next.
        self.out_r: int | None = None
        if stdout_fd is not None:
            self.out_w = self._keep(stdout_fd)
        if stdin_fd is not None:
            self.stdin = self._keep(stdin_fd)
        try:
            if merge_stderr and stdout_fd is not None:
                raise ValueError("merge_stderr needs the captured stdout, not a passed fd")
            if stdin_fd is None:
                self.stdin = self._keep(sealed_stdin(stdin))
            if stdout_fd is None:
                self.out_r, self.out_w = self._keep_pair(output_pipe(output_cap))
            if merge_stderr:
                self.err_r: int | None = None
                self.err_w = self.out_w
            else:
                self.err_r, self.err_w = self._keep_pair(output_pipe(output_cap))
        except BaseException:
            self.close_all()
            raise

    @property
    def child_ends(self) -> list[int]:
        return [self.stdin, self.out_w, self.err_w]

    def close_child_ends(self) -> None:
        for fd in set(self.child_ends):
            self.close(fd)


class OutputReader:
    """Reads one output pipe into memory up to `cap` bytes, in batches.

    Past the cap: with `kills`, `on_overflow` ends the box and the pipe is closed (the
    writer gets EPIPE); without, the rest is read and dropped (compile steps).
    """

    def __init__(self, fd: int, cap: int, *, kills: bool,
                 on_overflow: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = fd
        self.cap = cap
        self.kills = kills
        self.on_overflow = on_overflow
        self.buf = bytearray()
        self.overflow = False
        self.draining = False
        self._timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        for _ in range(MAX_READS_PER_BATCH):
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._take(data)
            if self.done.done():
                return
        if not self.draining:
            # Let output accumulate in the pipe for a while: one wakeup per batch.
            self.loop.remove_reader(self.fd)
            self._timer = self.loop.call_later(OUTPUT_BATCH_S, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if not self.done.done():
            self.loop.add_reader(self.fd, self._readable)

    def _take(self, data: bytes) -> None:
        room = self.cap - len(self.buf)
        if len(data) <= room:
            self.buf += data
            return
        self.buf += data[:max(room, 0)]
        if not self.overflow:
            self.overflow = True
            self.on_overflow()
        if self.kills:
            self.close()

    def drain(self) -> asyncio.Future[None]:
        """Read everything that is left, without batching (the box is ending)."""
        if not self.done.done() and not self.draining:
            self.draining = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self.loop.add_reader(self.fd, self._readable)
        return self.done

    def close(self) -> None:
        if self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        else:
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        # The callback is bound to the run that owns this reader: dropping it breaks the
        # cycle, so a finished run (and the stdin its spec holds) is freed at once.
        self.on_overflow = _nothing
        self.done.set_result(None)


class ReportReader:
    """The box's report pipe: every complete line goes to `on_message` at once."""

    def __init__(self, fd: int, on_message: Callable[[dict], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = fd
        self.on_message = on_message
        self.buf = bytearray()
        self._parsed = 0
        self.done: asyncio.Future[None] = self.loop.create_future()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or len(self.buf) + len(data) > protocol.MAX_MESSAGE:
            self.close()
            return
        self.buf += data
        while (end := self.buf.find(b"\n", self._parsed)) >= 0:
            line = bytes(self.buf[self._parsed:end])
            self._parsed = end + 1
            try:
                message = protocol.decode(line)
            except ValueError:
                continue  # only our own code writes here; a torn line is ignored
            self.on_message(message)

    def forget(self) -> None:
        """Drop the lines read so far (a warm box's build, before its job came)."""
        del self.buf[:self._parsed]
        self._parsed = 0

    def close(self) -> None:
        if not self.done.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.on_message = _ignore  # see OutputReader.close: no cycle with the run
            self.done.set_result(None)
