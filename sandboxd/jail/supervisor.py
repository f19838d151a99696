"""Parent side of every box, in the asyncio daemon: spawn, watch, measure, clean up.

`Sandbox` is the jail's public entry point. For one `JailSpec` it creates the
box cgroup, asks the fork server for a box, feeds stdin from a memfd (any size,
no deadlock), reads stdout/stderr concurrently up to their caps, and watches:

- wall clock: from the box's STARTED message (the program is about to run);
- CPU time: read from the cgroup. With `cpu.max` capping the box at `cpu_share`
  CPUs, CPU time cannot pass the limit sooner than remaining / cpu_share seconds
  from now, so that is exactly when the next look is due: no busy polling;
- output: a stream passing its cap kills the box at once.

Whatever ends the run, every process of the box is killed through the cgroup
(v2 cgroup.kill, v1 freeze + SIGKILL + thaw), the cgroup is removed, and only
then is the outcome returned. The daemon never forks: see forkserver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from . import cgroup as cg
from . import protocol
from .forkserver import ForkServerProcess
from .spec import BoxLimits, JailError, JailOutcome, JailSpec, Termination
from .workspace import Workspace, prepare_instance_dir, release_instance_dir

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 30.0  # from spawn to STARTED: mounts and namespaces, not the user's time
DRAIN_TIMEOUT_S = 5.0  # after the kill, for the pipes' writers to be gone
MIN_POLL_S = 0.002
MAX_POLL_S = 0.25


class _PipeReader:
    """Reads one pipe into memory up to `cap` bytes, without blocking the loop."""

    def __init__(self, fd: int, cap: int, on_data: Callable[[], None] | None = None,
                 on_overflow: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = fd
        self.cap = cap
        self.buf = bytearray()
        self.overflow = False
        self.on_data = on_data
        self.on_overflow = on_overflow
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
        if not data:
            self.close()
            return
        room = self.cap - len(self.buf)
        if len(data) > room:
            self.buf += data[:room]
            self.overflow = True
            self.close()  # the writer now gets EPIPE; the box is being killed anyway
            if self.on_overflow:
                self.on_overflow()
            return
        self.buf += data
        if self.on_data:
            self.on_data()

    def close(self) -> None:
        if not self.done.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.done.set_result(None)


class _ForkServerClient:
    """Serialised SPAWN requests over the fork server's socket."""

    def __init__(self, process: ForkServerProcess) -> None:
        self.process = process
        self.sock = process.sock
        self.sock.setblocking(False)
        self.lock = asyncio.Lock()

    async def spawn(self, request: dict, fds: list[int]) -> int:
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                socket.send_fds(self.sock, [protocol.encode(request)], fds)
                raw = await asyncio.wait_for(loop.sock_recv(self.sock, protocol.MAX_MESSAGE),
                                             SPAWN_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                raise JailError(f"fork server unreachable: {e}") from None
        if not raw:
            raise JailError("fork server exited")
        reply = protocol.decode(raw)
        if "error" in reply:
            raise JailError(f"fork server: {reply['error']}")
        return int(reply["pid"])


class Sandbox:
    """Runs JailSpecs in fresh boxes. Create with `start()`; `close()` when done."""

    def __init__(self, *, state_dir: str, slots: int, uid_base: int = 60_000,
                 cgroup_version: str = "auto", cgroup_root: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.slot_count = slots
        self.uid_base = uid_base
        self.cgroups = cg.detect(cgroup_version, cgroup_root)
        self._forkserver: ForkServerProcess | None = None
        self._client: _ForkServerClient | None = None
        self._free_slots: asyncio.Queue[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workspaces = 0

    @property
    def cgroup_version(self) -> str:
        return self.cgroups.version

    def start(self) -> None:
        """Prepare cgroups and directories (sweeping a dead instance's leftovers) and
        start the fork server. Synchronous; call before serving."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cgroups.prepare()
        self.workspace_dir = prepare_instance_dir(self.state_dir / "ws")
        root = self.state_dir / "root"
        root.mkdir(exist_ok=True)
        self._forkserver_root = str(root)
        self._forkserver = ForkServerProcess(self._forkserver_root)

    def close(self) -> None:
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None
        release_instance_dir(self.workspace_dir)

    @property
    def healthy(self) -> bool:
        """Started, with a live fork server (a dead one is replaced right here)."""
        if self._forkserver is None:
            return False
        try:
            self._ensure_forkserver()
        except OSError:
            return False
        return self._forkserver.alive

    # -- slots and workspaces ---------------------------------------------------------

    def host_id(self, slot: int) -> int:
        return self.uid_base + slot

    def _bind_loop(self) -> None:
        # The slot queue and the fork server client belong to one event loop; a new loop
        # (a test suite's, say) gets fresh ones. The daemon only ever has one loop.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._forkserver is None:
                raise JailError("sandbox not started")
            self._loop = loop
            self._client = _ForkServerClient(self._forkserver)
            self._free_slots = asyncio.Queue()
            for s in range(self.slot_count):
                self._free_slots.put_nowait(s)

    def _ensure_forkserver(self) -> None:
        """A fork server that died (killed by an operator, a bug) is replaced, so one
        failure costs the boxes that were being spawned, not the service."""
        assert self._forkserver is not None
        if not self._forkserver.alive:
            log.error("fork server exited (status %s); starting a new one",
                      self._forkserver.process.returncode)
            self._forkserver.close()
            self._forkserver = ForkServerProcess(self._forkserver_root)
            self._client = _ForkServerClient(self._forkserver)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """A box slot: its host uid/gid is used by no other box while held."""
        self._bind_loop()
        assert self._free_slots is not None
        slot = await self._free_slots.get()
        try:
            yield slot
        finally:
            self._free_slots.put_nowait(slot)

    def workspace(self, slot: int, size_mb: int) -> Workspace:
        self._workspaces += 1
        return Workspace.create(self.workspace_dir, f"{slot}-{self._workspaces}", size_mb,
                                self.host_id(slot))

    # -- running a box ----------------------------------------------------------------

    async def run(self, spec: JailSpec) -> JailOutcome:
        self._bind_loop()
        self._ensure_forkserver()
        assert self._client is not None
        lim = spec.limits
        try:
            box = self.cgroups.create(cg.CgroupLimits(lim.memory_bytes, lim.processes,
                                                      lim.cpu_share))
        except OSError as e:
            raise JailError(f"cannot create the box cgroup: {e}") from None
        try:
            return await _BoxRun(self._client, box, spec, self.host_id(spec.slot)).run()
        finally:
            await _destroy(box)


async def _destroy(box: cg.Cgroup) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        box.kill_all()
        if not box.pids():
            break
        if time.monotonic() > deadline:
            raise JailError(f"box {box.name}: processes survive SIGKILL")
        await asyncio.sleep(0.002)
    box.remove()


class _BoxRun:
    """One box from spawn to outcome."""

    def __init__(self, client: _ForkServerClient, box: cg.Cgroup, spec: JailSpec,
                 host_id: int) -> None:
        self.client = client
        self.box = box
        self.spec = spec
        self.limits: BoxLimits = spec.limits
        self.host_id = host_id
        self.started_at: float | None = None
        self.cpu_baseline_ns = 0
        self.memory_baseline = 0
        self.go_fd = -1
        self.killed = False
        self.cpu_exceeded = False
        self.wall_exceeded = False
        self.output_exceeded = False

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            self.box.kill_all()

    def _on_report(self) -> None:
        if self.started_at is None and b'"STARTED"' in self.report.buf:
            # The box's setup is done and waits for GO: take the baselines now, so the
            # program's CPU time and memory exclude the milliseconds the setup took.
            try:
                self.cpu_baseline_ns = self.box.cpu_ns()
                self.memory_baseline = self.box.start_program(self.limits.memory_bytes)
                os.write(self.go_fd, protocol.GO)
            except OSError:
                self.kill()  # the box died meanwhile; its report says why
            self.started_at = time.monotonic()
            os.close(self.go_fd)
            self.go_fd = -1

    def _on_overflow(self) -> None:
        self.output_exceeded = True
        self.kill()

    async def run(self) -> JailOutcome:
        fds = self._open_fds()
        child_ends = fds["child"]
        try:
            out_r, err_r, rep_r, self.go_fd = fds["parent"]
            self.stdout = _PipeReader(out_r, self.limits.output_bytes,
                                      on_overflow=self._on_overflow)
            self.stderr = (_PipeReader(err_r, self.limits.output_bytes,
                                       on_overflow=self._on_overflow)
                           if err_r is not None else None)
            self.report = _PipeReader(rep_r, protocol.MAX_MESSAGE, on_data=self._on_report)
            request = {"spec": self.spec.to_wire(), "procs_files": list(self.box.procs_files),
                       "host_id": self.host_id}
            await self.client.spawn(request, child_ends)
        except BaseException:
            for reader in (getattr(self, n, None) for n in ("stdout", "stderr", "report")):
                if reader is not None:
                    reader.close()
            os.close(self.go_fd)
            self.go_fd = -1
            raise
        finally:
            for fd in set(child_ends):
                os.close(fd)
        try:
            await self._watch()
        finally:
            if self.go_fd >= 0:
                os.close(self.go_fd)
                self.go_fd = -1
        self.kill()  # anything the program left behind dies with the box
        readers = [r for r in (self.stdout, self.stderr, self.report) if r is not None]
        await asyncio.wait([r.done for r in readers], timeout=DRAIN_TIMEOUT_S)
        for r in readers:
            r.close()
        return self._outcome()

    def _open_fds(self) -> dict:
        stdin = os.memfd_create("stdin", os.MFD_CLOEXEC)
        view = memoryview(self.spec.stdin)
        while view:
            view = view[os.write(stdin, view):]
        os.lseek(stdin, 0, os.SEEK_SET)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        if self.spec.merge_stderr:
            err_r, err_w = None, out_w
        else:
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        return {"child": [stdin, out_w, err_w, rep_w, go_r], "parent": (out_r, err_r, rep_r, go_w)}

    async def _watch(self) -> None:
        """Wait for the report pipe's EOF (the box is gone), enforcing the limits."""
        spawned = time.monotonic()
        cpu_limit_ns = self.limits.cpu_ms * 1_000_000
        while not self.report.done.done() and not self.killed:
            now = time.monotonic()
            if self.started_at is None:
                if now - spawned > SETUP_TIMEOUT_S:
                    self.kill()
                    break
                timeout = MAX_POLL_S
            else:
                wall_left = self.limits.wall_ms / 1000 - (now - self.started_at)
                if wall_left <= 0:
                    self.wall_exceeded = True
                    self.kill()
                    break
                cpu_left = cpu_limit_ns - (self.box.cpu_ns() - self.cpu_baseline_ns)
                if cpu_left < 0:
                    self.cpu_exceeded = True
                    self.kill()
                    break
                cpu_left_s = cpu_left / 1e9 / self.limits.cpu_share
                timeout = max(MIN_POLL_S, min(wall_left, cpu_left_s + MIN_POLL_S, MAX_POLL_S * 8))
            await asyncio.wait([self.report.done], timeout=timeout)

    def _outcome(self) -> JailOutcome:
        stats = self.box.stats()
        report = protocol.parse_report(bytes(self.report.buf))
        cpu_ns = max(0, stats.cpu_ns - self.cpu_baseline_ns) if self.started_at else 0
        cpu_ms = cpu_ns // 1_000_000
        # Finished, but over the limit between two looks (or within the last poll): still TLE.
        cpu_exceeded = self.cpu_exceeded or cpu_ms > self.limits.cpu_ms
        oom = stats.oom_kills > 0
        exit_code = sig = None
        if report.wait_status is not None:
            if os.WIFEXITED(report.wait_status):
                exit_code = os.WEXITSTATUS(report.wait_status)
            elif os.WIFSIGNALED(report.wait_status):
                sig = os.WTERMSIG(report.wait_status)
        elif self.cpu_exceeded or self.wall_exceeded or self.output_exceeded:
            sig = signal.SIGKILL.value  # killed by us for a limit before it could finish
        wall_ms = (report.wall_ns // 1_000_000 if report.wall_ns is not None
                   else int((time.monotonic() - self.started_at) * 1000) if self.started_at
                   else 0)
        setup_error = None
        if report.failed_step is not None:
            name = errno.errorcode.get(report.failed_errno, str(report.failed_errno))
            setup_error = f"{report.failed_step}: {report.failed_message} ({name})"
            termination = Termination.SETUP_ERROR
        elif self.wall_exceeded:
            termination = Termination.WALL_LIMIT
        elif cpu_exceeded:
            termination = Termination.CPU_LIMIT
        elif oom:
            termination = Termination.MEMORY_LIMIT
        elif self.output_exceeded:
            termination = Termination.OUTPUT_LIMIT
        elif sig is not None:
            termination = Termination.SIGNALED
        elif exit_code is not None:
            termination = Termination.EXITED
        else:
            termination = Termination.SETUP_ERROR
            setup_error = ("box did not start within its setup timeout" if not self.started_at
                           else "box ended without reporting its program's status")
        return JailOutcome(
            termination=termination,
            exit_code=exit_code,
            signal=sig,
            cpu_ms=cpu_ms,
            wall_ms=wall_ms,
            memory_bytes=max(0, stats.memory_peak_bytes - self.memory_baseline),
            stdout=bytes(self.stdout.buf),
            stderr=bytes(self.stderr.buf) if self.stderr else b"",
            cpu_exceeded=cpu_exceeded,
            wall_exceeded=self.wall_exceeded,
            oom_killed=oom,
            output_exceeded=self.output_exceeded,
            setup_error=setup_error,
        )
