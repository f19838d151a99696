"""Parent side of every box, in the asyncio daemon: spawn, watch, measure, clean up.

`Sandbox` is the jail's public entry point. For one `JailSpec` it creates the
box cgroup, asks the fork server for a box, feeds stdin from a memfd (any size,
no deadlock), reads stdout/stderr concurrently up to their caps, and watches:

- wall clock: from the box's STARTED message (the program is about to run);
- CPU time: read from the cgroup. With `cpu.max` capping the box at `cpu_share`
  CPUs, CPU time cannot pass the limit sooner than remaining / cpu_share seconds
  from now, so that is exactly when the next look is due: no busy polling;
- output: a stream passing its cap kills the box at once.

What the program is charged, exactly: the supervisor notes the cgroup's CPU counter
at STARTED, while every box process sleeps (so the counter is up to date); the init
reports the program's own CPU time before execve (EXECED) and its own CPU time
after GO (EXITED), and reads the counter again when the program ends. The program's
CPU time is the counter's difference less those two: only what ran from the
program's execve on. Memory: the program has a memory cgroup of its own (cgroup.py);
its limit is the setup's headroom (`SETUP_HEADROOM_BYTES`) until the execve, when the
init narrows it to the exact limit and restarts the peak.

A caller may give the program's stdin and/or stdout as descriptors of its own
(`Sandbox.run(spec, stdin_fd=..., stdout_fd=...)`: e.g. the ends of pipes that cross
two boxes running at once); the run owns and closes them, and returns an empty
`stdout` for a passed one (pipes.py).

Whatever ends the run, every process of the box is killed through the cgroup
(v2 cgroup.kill, v1 freeze + SIGKILL + thaw), the cgroup is removed, and only
then is the outcome returned. The daemon never forks: see forkserver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from . import _libc, mounts, protocol, seccomp
from . import cgroup as cg
from .forkserver import ForkServerProcess
from .pipes import BoxFds, JobFds, OutputReader, ReportReader
from .spec import (
    Bind,
    BoxLimits,
    BoxShape,
    JailError,
    JailOutcome,
    JailSpec,
    SeccompProfile,
    Termination,
    split_binds,
)
from .userns import SlotIds
from .workspace import Workspace, prepare_instance_dir, release_instance_dir

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 30.0  # from spawn to STARTED: mounts and namespaces, not the user's time
DRAIN_TIMEOUT_S = 5.0  # after the kill, for the pipes' writers to be gone
REPORT_GRACE_S = 1.0  # after a limit killed the program, for the init's last report
MIN_POLL_S = 0.001
MAX_POLL_S = 0.25
# Memory the box's own setup (D, I, and P before execve: forked Python processes) may
# use on top of the program's limit; from the program's execve on, the limit is exact.
SETUP_HEADROOM_BYTES = 64 << 20
# A box's cgroup until it is taken: D and its init only (the program's cgroup is empty).
SETUP_LIMITS = cg.CgroupLimits(SETUP_HEADROOM_BYTES, processes=4, cpu_share=1.0)
FILTER_CACHE_SIZE = 32


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
                 cgroup_version: str = "auto", cgroup_root: str | None = None,
                 warm_boxes: int = 1) -> None:
        """`warm_boxes`: boxes kept built and waiting, per slot, for the shapes (rootfs)
        that slot ran last; 0: every box is built when its job comes."""
        self.state_dir = Path(state_dir)
        self.slot_count = slots
        self._pool = _WarmPool(warm_boxes)
        self._filters: dict[tuple[SeccompProfile, int], bytes] = {}
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
        self._bpf(SeccompProfile(), 256 << 20)  # compile once before the first box

    def close(self) -> None:
        self._pool.discard_all()
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

    def slot_ids(self, slot: int) -> SlotIds:
        return SlotIds.for_slot(self.uid_base, slot)

    def host_id(self, slot: int) -> int:
        """The host uid/gid the program of `slot` runs as (and owns its files)."""
        return self.slot_ids(slot).program

    def _bind_loop(self) -> None:
        # The slot queue and the fork server client belong to one event loop; a new loop
        # (a test suite's, say) gets fresh ones. The daemon only ever has one loop.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._forkserver is None:
                raise JailError("sandbox not started")
            self._pool.discard_all()  # warm boxes read their reports through the old loop
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
            self._pool.discard_all()  # they died with the old server

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

    def _bpf(self, profile: SeccompProfile, allocation_limit: int) -> bytes:
        """The seccomp filter, compiled once per (profile, memory limit): judges use a
        handful of limits."""
        key = (profile, allocation_limit)
        bpf = self._filters.pop(key, None)
        if bpf is None:
            bpf = seccomp.compile_profile(profile, allocation_limit)
            while len(self._filters) >= FILTER_CACHE_SIZE:
                del self._filters[next(iter(self._filters))]  # least recently used
        self._filters[key] = bpf
        return bpf

    async def _spawn(self, shape: BoxShape, slot: int, owner: set[_Box] | None = None,
                     limits: cg.CgroupLimits = SETUP_LIMITS) -> _Box:
        """A new box, built up to the moment it waits for its job (see stage.py);
        `owner`: the set that holds it while it is not a job's (the pool's); `limits`:
        its cgroup's, the job's already when the box is built for one."""
        self._ensure_forkserver()
        assert self._client is not None
        try:
            cgroup = self.cgroups.create(limits)
        except OSError as e:
            raise JailError(f"cannot create the box cgroup: {e}") from None
        box = _Box(cgroup, shape, slot, self._client)
        box.limits = limits
        if owner is not None:
            owner.add(box)
            box.owner = owner
        try:
            box.fds = BoxFds(cgroup.accounting_files, cgroup.program_procs_file)
            box.report = ReportReader(box.fds.rep_r, box.on_setup_message)
            box.fds.release(box.fds.rep_r)
            ids = self.slot_ids(slot)
            request = {"shape": shape.to_wire(), "procs_files": list(cgroup.procs_files),
                       "ids": {"keeper": ids.keeper, "program": ids.program}}
            await self._client.spawn(request, box.fds.child_ends)
        except BaseException:
            await box.discard()
            raise
        box.fds.close_child_ends()
        return box

    @property
    def warm_boxes(self) -> int:
        return self._pool.per_slot

    async def set_warm_boxes(self, per_slot: int) -> None:
        """Change how many boxes the pool keeps per slot (0: none, the pool emptied)."""
        self._pool.per_slot = per_slot
        if per_slot == 0:
            await self.discard_warm_boxes()

    async def discard_warm_boxes(self) -> None:
        """Tear down every warm box now (and the ones being built)."""
        self._bind_loop()  # boxes of another (closed) loop go first, synchronously
        await self._pool.discard()

    def warm_box_names(self) -> set[str]:
        """The cgroup names of the boxes the pool holds or is building (no job's)."""
        return {box.cgroup.name for box in self._pool.owned}

    async def prewarm(self, spec: JailSpec) -> None:
        """Make sure a warm box for `spec` (its slot and shape) is waiting, and wait until
        it and every other box the pool is building are built: the machine is then as
        quiet as the pool leaves it. For a daemon's start and for `make bench` (a warm
        run measured while another slot's refill is built would pay for that build's
        CPU); `run` refills on its own."""
        self._bind_loop()
        shape, _late = split_binds(spec, str(self.workspace_dir))
        if self._pool.find(spec.slot, shape) is None:
            self._pool.refill(spec.slot, shape, self._spawn)
        await self._pool.settled()
        for box in list(self._pool.owned):
            if box.report is not None:
                await asyncio.wait([box.started, box.report.done], timeout=SETUP_TIMEOUT_S,
                                   return_when=asyncio.FIRST_COMPLETED)

    async def run(self, spec: JailSpec, *, stdin_fd: int | None = None,
                  stdout_fd: int | None = None) -> JailOutcome:
        """Run `spec` in a fresh box: a warm one of its slot and shape if the pool has
        one, else one built now. `stdin_fd`/`stdout_fd`: the program's stdin/stdout
        instead of `spec.stdin` and the captured pipe; the run owns them (closes them
        whatever happens), and the outcome's stdout is empty for a passed stdout."""
        passed = [fd for fd in (stdin_fd, stdout_fd) if fd is not None]
        trace = [("S run", time.monotonic_ns())] if spec.trace_steps else None
        try:
            self._bind_loop()
            self._ensure_forkserver()
            shape, late = split_binds(spec, str(self.workspace_dir))
            bpf = self._bpf(spec.seccomp, spec.limits.memory_bytes)
            box = self._pool.take(spec.slot, shape)
            warm = box is not None
            if box is None:
                box = await self._spawn(shape, spec.slot, limits=_cgroup_limits(spec.limits))
        except BaseException:
            for fd in passed:
                os.close(fd)
            raise
        if trace is not None:
            trace.append(("S warm box taken" if warm else "S box spawned", time.monotonic_ns()))
        try:
            outcome = await _BoxRun(box, spec, late, bpf, trace, warm=warm,
                                    stdin_fd=stdin_fd, stdout_fd=stdout_fd).run()
        finally:
            await box.discard()
            if box.started.done():  # a shape whose box cannot be built gets no warm one
                self._pool.refill(spec.slot, shape, self._spawn)
        if trace is None:
            return outcome
        trace.append(("S cgroup removed", time.monotonic_ns()))
        return dataclasses.replace(outcome, steps=tuple(sorted(
            trace + list(outcome.steps), key=lambda step: step[1])))


class _Box:
    """One box from the supervisor's side, from its SPAWN until it is gone: its cgroup,
    its descriptors and its report reader. Warm once it said STARTED (it waits for
    its job); taken by exactly one run, then destroyed."""

    def __init__(self, cgroup: cg.Cgroup, shape: BoxShape, slot: int,
                 client: _ForkServerClient) -> None:
        self.cgroup = cgroup
        self.shape = shape
        self.slot = slot
        self.client = client
        self.fds: BoxFds | None = None
        self.report: ReportReader | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._discarded = False
        self.owner: set[_Box] | None = None  # the pool's set while it is the pool's
        self.limits = SETUP_LIMITS  # what its cgroup says now

    def on_setup_message(self, message: dict) -> None:
        if message.get("kind") == "STARTED" and not self.started.done():
            self.started.set_result(None)

    @property
    def alive(self) -> bool:
        return self.report is not None and not self.report.done.done()

    def close_fds(self) -> None:
        if self.report is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                self.report.close()
        if self.fds is not None:
            self.fds.close_all()

    def leave_owner(self) -> None:
        if self.owner is not None:
            self.owner.discard(self)
            self.owner = None

    async def discard(self) -> None:
        """Close its descriptors (a box still in its setup then fails on its own), kill
        whatever runs in it, remove its cgroup."""
        if self._discarded:
            return
        self._discarded = True
        self.close_fds()
        try:
            await _destroy(self.cgroup)
        finally:
            self.leave_owner()

    def discard_now(self) -> None:
        """`discard`, blocking: for a closing Sandbox or a loop that is gone."""
        if self._discarded:
            return
        self._discarded = True
        self.close_fds()
        self.leave_owner()
        try:
            cg.wait_empty(self.cgroup)
            self.cgroup.remove()
        except (OSError, JailError) as e:
            log.warning("warm box %s: %s", self.cgroup.name, e)


class _WarmPool:
    """Boxes built ahead, per slot: at most `per_slot`, of the shapes the slot ran last
    (a new shape evicts the oldest). Single-use: a box leaves the pool when a run takes
    it, and `Sandbox.run` asks for its replacement when that run ends, so the refill is
    built while nothing waits for it."""

    def __init__(self, per_slot: int) -> None:
        self.per_slot = per_slot
        self.boxes: dict[int, list[_Box]] = {}
        self.building: set[tuple[int, BoxShape]] = set()
        self.tasks: set[asyncio.Task] = set()
        self.owned: set[_Box] = set()  # every box of the pool's, built or being built

    def find(self, slot: int, shape: BoxShape) -> _Box | None:
        for box in self.boxes.get(slot, ()):
            if box.shape == shape and box.alive:
                return box
        return None

    def take(self, slot: int, shape: BoxShape) -> _Box | None:
        """A warm box (or one still being built: it is further along than a new one)."""
        box = self.find(slot, shape)
        if box is not None:
            self.boxes[slot].remove(box)
            box.leave_owner()
        return box

    def refill(self, slot: int, shape: BoxShape, spawn) -> None:
        if self.per_slot <= 0 or (slot, shape) in self.building or self.find(slot, shape):
            return
        self.building.add((slot, shape))
        task = asyncio.get_running_loop().create_task(self._build(slot, shape, spawn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _build(self, slot: int, shape: BoxShape, spawn) -> None:
        try:
            box = await spawn(shape, slot, self.owned)
        except (JailError, OSError) as e:
            log.warning("could not build a warm box: %s", e)
            return
        finally:
            self.building.discard((slot, shape))
        boxes = self.boxes.setdefault(slot, [])
        boxes.append(box)
        # A box that dies while it waits (its setup failed, the fork server died) leaves.
        assert box.report is not None
        box.report.done.add_done_callback(lambda _: self._died(box))
        while len(boxes) > self.per_slot:
            await boxes.pop(0).discard()

    def _died(self, box: _Box) -> None:
        boxes = self.boxes.get(box.slot, [])
        if box in boxes:
            boxes.remove(box)
            task = asyncio.get_running_loop().create_task(box.discard())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def settled(self) -> None:
        """Wait until every box being built was handed to the pool (or failed)."""
        while self.building:
            await asyncio.sleep(0.001)

    async def discard(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.building.clear()
        self.boxes.clear()
        for box in list(self.owned):
            await box.discard()

    def discard_all(self) -> None:
        for task in self.tasks:
            with contextlib.suppress(RuntimeError):  # a task of a loop that is closed
                task.cancel()
        self.tasks.clear()
        self.building.clear()
        self.boxes.clear()
        for box in list(self.owned):
            box.discard_now()


def _cgroup_limits(limits: BoxLimits) -> cg.CgroupLimits:
    """A job's box cgroup: the program's memory limit plus the setup's headroom (narrowed
    to the limit at the program's execve), its processes and CPU share."""
    return cg.CgroupLimits(limits.memory_bytes + SETUP_HEADROOM_BYTES, limits.processes,
                           limits.cpu_share)


async def _destroy(box: cg.Cgroup) -> None:
    """Kill every process of the box and remove its cgroup. A box discarded before its
    D joined the cgroup may join it meanwhile: it is killed on the next round."""
    deadline = time.monotonic() + 5.0
    while True:
        box.kill_all()
        if not box.pids():
            try:
                box.remove(timeout=0.05)
                return
            except JailError:
                if time.monotonic() > deadline:
                    raise
        elif time.monotonic() > deadline:
            raise JailError(f"box {box.name}: processes survive SIGKILL")
        await asyncio.sleep(0.002)



class _BoxRun:
    """One box from spawn to outcome: the protocol and the watchdog (pipes.py reads)."""

    def __init__(self, box: _Box, spec: JailSpec, late: tuple[Bind, ...], bpf: bytes,
                 trace: list[tuple[str, int]] | None = None, *, warm: bool = False,
                 stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
        self.trace = trace  # the supervisor's own step trace (JailSpec.trace_steps)
        self.client = box.client
        self.stdin_fd = stdin_fd  # owned from here on: JobFds closes them
        self.stdout_fd = stdout_fd
        self.built = box
        assert box.fds is not None and box.report is not None
        self.fds = box.fds
        self.report = box.report
        self.box = box.cgroup
        self.spec = spec
        self.late = late
        self.bpf = bpf
        self.warm = warm
        self.limits: BoxLimits = spec.limits
        self.taken = False
        self.take_error: str | None = None  # the supervisor's side of TAKE failed
        self.cpu_at_go = 0  # the cgroup's CPU counter at STARTED, every box process asleep
        self.cpu_baseline_ns = 0  # ... plus P's own CPU before execve (EXECED)
        self.started_at: float | None = None  # monotonic time of EXECED
        self.killed = False
        # Why we ended the box before its program did (a limit, the setup timeout), if so.
        self.ended_by: str | None = None
        self.cpu_exceeded = False
        # The most the watchdog saw the program use: a kernel-measured lower bound that
        # the final count must not undercut (the counter can lag a killed task's clock).
        self.cpu_seen_ns = 0
        self.wall_exceeded = False
        self.output_exceeded = False
        self.memory_exceeded = False  # the limit was already passed when it was set

    def _stamp(self, name: str) -> None:
        if self.trace is not None:
            self.trace.append((name, time.monotonic_ns()))

    def kill(self, reason: str | None = None) -> None:
        if reason is not None and self.ended_by is None:
            self.ended_by = reason
        if not self.killed:
            self.killed = True
            self.box.kill_all()

    def end_program(self, reason: str) -> None:
        """A limit ends the run: SIGKILL the program's processes only. The init then
        reports their end with exact numbers and exits, and the box goes after it; the
        teardown of the init and D (forked interpreters) is then never the program's."""
        if self.ended_by is None:
            self.ended_by = reason
        pids = self.box.program_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            self.kill()  # not in its cgroup yet: the whole box goes

    def _take(self) -> None:
        """Give the waiting box its job: limits on its cgroup, the CPU counter while every
        box process sleeps, then TAKE with the program's descriptors and the workspace's
        mount trees (made here: the daemon, not the box, resolves the host paths)."""
        self.taken = True
        lim = self.limits
        trees: list[int] = []
        try:
            wanted = _cgroup_limits(lim)
            if self.built.limits != wanted:  # a warm box: still the setup's
                self.box.set_limits(wanted)
                self.built.limits = wanted
            for bind in self.late:
                trees.append(_libc.detached_bind(
                    bind.source, mounts.RW_FLAGS if bind.writable else mounts.RO_FLAGS))
            job = {"argv": list(self.spec.argv), "env": [list(e) for e in self.spec.env],
                   "cwd": self.spec.cwd, "limits": dataclasses.asdict(lim),
                   "late": [bind.target for bind in self.late], "bpf": self.bpf.hex()}
            self.cpu_at_go = self.box.cpu_ns()
            self._stamp("S counter read")
            socket.send_fds(self._take_socket, [protocol.encode(job)],
                            self.job_fds.child_ends + trees)
        except OSError as e:
            self.take_error = f"take: {e}"
            self.kill()
        finally:
            for tree in trees:
                os.close(tree)
            self.job_fds.close_child_ends()
            self._take_socket.close()

    def _on_message(self, message: dict) -> None:
        self.built.on_setup_message(message)  # a cold box's STARTED: it was built
        kind = message.get("kind")
        if kind == "STARTED" and not self.taken:
            self._stamp("S STARTED read")
            self._take()
        elif kind == "EXECED" and self.started_at is None:
            self._stamp("S EXECED read")
            self.started_at = time.monotonic()
            self.cpu_baseline_ns = self.cpu_at_go + message["pre_exec_cpu_ns"]
            if message["limit_errno"]:
                # v1 refuses a limit below the usage (EBUSY): the program is over it
                # already. Any other errno is the sandbox's failure: ended either way.
                self.memory_exceeded = message["limit_errno"] == errno.EBUSY
                self.end_program("memory limit")

    def _on_overflow(self) -> None:
        self.output_exceeded = True
        if self.limits.output_overflow_kills:
            self.end_program("output limit")

    async def run(self) -> JailOutcome:
        # Owned by this run from here: closed once TAKE is sent, or with the run.
        self._take_socket = socket.socket(fileno=self.fds.take)
        self.fds.release(self.fds.take)
        self._take_socket.setblocking(False)
        try:
            self.job_fds = fds = JobFds(self.spec.stdin, self.limits.output_bytes,
                                        self.spec.merge_stderr, stdin_fd=self.stdin_fd,
                                        stdout_fd=self.stdout_fd)
        except BaseException:
            self._take_socket.close()
            self.kill()
            raise
        kills = self.limits.output_overflow_kills
        try:
            self.stdout: OutputReader | None = None
            if fds.out_r is not None:  # None: the caller's descriptor, not ours to read
                self.stdout = OutputReader(fds.out_r, self.limits.output_bytes, kills=kills,
                                           on_overflow=self._on_overflow)
                fds.release(fds.out_r)
            self.stderr = None
            if fds.err_r is not None:
                self.stderr = OutputReader(fds.err_r, self.limits.output_bytes, kills=kills,
                                           on_overflow=self._on_overflow)
                fds.release(fds.err_r)
            if self.warm:
                # Only this run's messages count: the warm-up's STARTED was long ago.
                self.report.forget()
            self.report.on_message = self._on_message
            if self.built.started.done() and not self.taken:
                self._take()  # a warm box: the job goes at once
        except BaseException:
            for reader in (self.stdout, self.stderr):
                if reader is not None:
                    reader.close()
            fds.close_all()
            self._take_socket.close()
            self.kill()
            raise
        try:
            await self._watch()
        except BaseException:
            self.kill()
            fds.close_all()
            raise
        if self.ended_by is not None and not self.killed:
            # The init reports the killed program and exits: then the rest goes.
            await asyncio.wait([self.report.done], timeout=REPORT_GRACE_S)
        self._stamp("S box ended")
        self.kill()  # anything the program left behind dies with the box
        self._stamp("S killed")
        readers = [r for r in (self.stdout, self.stderr, self.report) if r is not None]
        drains = [r.drain() for r in readers if isinstance(r, OutputReader)]
        await asyncio.wait([self.report.done, *drains], timeout=DRAIN_TIMEOUT_S)
        self._stamp("S output drained")
        for r in readers:
            r.close()
        try:
            return self._outcome()
        finally:
            fds.close_all()
            self._take_socket.close()

    async def _watch(self) -> None:
        """Wait for the report pipe's EOF (the box is gone), enforcing the limits."""
        spawned = time.monotonic()
        cpu_limit_ns = self.limits.cpu_ms * 1_000_000
        while not self.report.done.done() and self.ended_by is None and not self.killed:
            now = time.monotonic()
            if self.started_at is None:
                if now - spawned > SETUP_TIMEOUT_S:
                    self.kill("setup timeout")
                    break
                timeout = MAX_POLL_S
            else:
                wall_left = self.limits.wall_ms / 1000 - (now - self.started_at)
                if wall_left <= 0:
                    self.wall_exceeded = True
                    self.end_program("wall limit")
                    break
                self.cpu_seen_ns = max(self.cpu_seen_ns, self._program_cpu_now())
                cpu_left = cpu_limit_ns - self.cpu_seen_ns
                if cpu_left < 0:
                    self.cpu_exceeded = True
                    self.end_program("cpu limit")
                    break
                # With cpu.max capping the box at cpu_share CPUs, the limit cannot be
                # reached sooner than this: sleep exactly that long (then look every
                # millisecond until it is), no busy polling.
                cpu_left_s = cpu_left / 1e9 / self.limits.cpu_share
                timeout = max(MIN_POLL_S, min(wall_left, cpu_left_s, MAX_POLL_S * 8))
            await asyncio.wait([self.report.done], timeout=timeout)

    def _program_cpu_now(self) -> int:
        """The program's CPU time so far, for the watchdog.

        The cgroup's counter lags by up to a scheduler tick for tasks running right now
        (4 ms at HZ=250); the CPU clocks of the program's live processes do not (the
        kernel brings a running task's clock up to date when it is read). The larger of
        the two lower bounds: exact for a program whose processes are all alive.
        """
        counted = self.box.cpu_ns() - self.cpu_baseline_ns
        live = -(self.cpu_baseline_ns - self.cpu_at_go)  # P's clock includes its pre-exec
        for pid in self.box.program_pids():
            try:
                live += time.clock_gettime_ns(((~pid) << 3) | 2)  # its process CPU clock
            except OSError:
                pass  # it just ended: the counter has it
        return max(counted, live)

    def _program_cpu_ns(self, report: protocol.Report, stats: cg.CgroupStats) -> int:
        if not report.execed:
            return 0
        if report.exit_cpu_ns is not None:
            # Counter at the program's end, less the counter at GO, P's pre-exec CPU and
            # the init's own CPU since GO: what ran from the program's execve on.
            used = (report.exit_cpu_ns - self.cpu_at_go - report.pre_exec_cpu_ns
                    - report.init_cpu_ns)
            # P's own clock with its reaped children's, from its execve: exact for them,
            # blind to orphans (the counter has those). The larger of the two.
            used = max(used, report.program_cpu_ns - report.pre_exec_cpu_ns)
        else:  # killed before it ended: everything since its execve
            used = stats.cpu_ns - self.cpu_baseline_ns
        return max(0, used, self.cpu_seen_ns)

    def _program_memory(self, report: protocol.Report, stats: cg.CgroupStats) -> int:
        if not report.execed:
            return 0
        # The peak of the program's own memory cgroup since its execve, less the page
        # cache of files it merely read (reclaimable: never what runs a program out of
        # memory). D and the init are in a cgroup of their own: nothing to subtract.
        return max(0, self.fds.read_peak() - stats.file_cache_bytes)

    def _setup_error(self, report: protocol.Report, oom: bool) -> str | None:
        """Why the sandbox itself failed, or None when the program's fate is known."""
        if self.take_error is not None:
            return self.take_error
        if report.failed_step is not None:
            name = errno.errorcode.get(report.failed_errno, str(report.failed_errno))
            return f"{report.failed_step}: {report.failed_message} ({name})"
        if report.limit_errno and report.limit_errno != errno.EBUSY:
            return f"setting the program's memory limit failed ({os.strerror(report.limit_errno)})"
        if not report.execed:
            if report.wait_status is not None:
                return (f"the program's process ended before its execve "
                        f"(wait status {report.wait_status})")
            if self.ended_by == "setup timeout":
                return "box did not start within its setup timeout"
        if report.wait_status is not None or self.ended_by is not None:
            return None  # the program's status is known, or a limit ended it
        # No status from the init, and not by our kill. An OOM kill is the program's
        # doing (the init only dies in one when the program lowered its own priority).
        if oom:
            return None
        if not self.client.process.alive:
            return "the fork server died during the run; the box was killed with it"
        return "box ended without reporting its program's status"

    def _outcome(self) -> JailOutcome:
        stats = self.box.stats()
        report = protocol.parse_report(bytes(self.report.buf))
        cpu_ms = self._program_cpu_ns(report, stats) // 1_000_000
        # Finished, but over the limit between two looks (or within the last poll): still TLE.
        cpu_exceeded = self.cpu_exceeded or cpu_ms > self.limits.cpu_ms
        oom = stats.oom_kills > 0 or self.memory_exceeded
        exit_code = sig = None
        if report.wait_status is not None:
            if os.WIFEXITED(report.wait_status):
                exit_code = os.WEXITSTATUS(report.wait_status)
            elif os.WIFSIGNALED(report.wait_status):
                sig = os.WTERMSIG(report.wait_status)
        elif self.ended_by is not None and report.execed:
            sig = signal.SIGKILL.value  # killed by us for a limit before it could finish
        wall_ms = (report.wall_ns // 1_000_000 if report.wall_ns is not None
                   else int((time.monotonic() - self.started_at) * 1000) if self.started_at
                   else 0)
        setup_error = self._setup_error(report, oom)
        if setup_error is not None:
            termination = Termination.SETUP_ERROR
        elif self.wall_exceeded:
            termination = Termination.WALL_LIMIT
        elif cpu_exceeded:
            termination = Termination.CPU_LIMIT
        elif oom:
            termination = Termination.MEMORY_LIMIT
        elif self.output_exceeded and self.limits.output_overflow_kills:
            termination = Termination.OUTPUT_LIMIT
        elif sig is not None:
            termination = Termination.SIGNALED
        elif exit_code is not None:
            termination = Termination.EXITED
        else:
            termination = Termination.MEMORY_LIMIT if oom else Termination.SETUP_ERROR
            if not oom:
                setup_error = "box ended without reporting its program's status"
        return JailOutcome(
            termination=termination,
            exit_code=exit_code,
            signal=sig,
            cpu_ms=cpu_ms,
            wall_ms=wall_ms,
            memory_bytes=self._program_memory(report, stats),
            stdout=bytes(self.stdout.buf) if self.stdout else b"",
            stderr=bytes(self.stderr.buf) if self.stderr else b"",
            cpu_exceeded=cpu_exceeded,
            wall_exceeded=self.wall_exceeded,
            oom_killed=oom,
            output_exceeded=self.output_exceeded,
            memory_refused=report.refused_bytes > 0,
            setup_error=setup_error,
            steps=report.steps,
        )
