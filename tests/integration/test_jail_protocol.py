"""The jail layer itself (no HTTP, no languages): setup failures, sync, fork server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from sandboxd.jail.spec import Bind, BoxLimits, JailSpec, Termination
from tests.conftest import SLOWDOWN

LIMITS = BoxLimits(cpu_ms=2000, wall_ms=5000, memory_bytes=128 << 20)


def spec_for(sandbox, registry, argv, **kw) -> JailSpec:
    rootfs = registry["c"].rootfs
    return JailSpec(argv=tuple(argv), limits=kw.pop("limits", LIMITS),
                    binds=rootfs.binds + kw.pop("binds", ()), symlinks=rootfs.symlinks,
                    env=(("PATH", "/usr/bin:/bin"),), **kw)


async def run_in_workspace(sandbox, registry, argv, **kw):
    async with sandbox.slot() as slot:
        ws = sandbox.workspace(slot, 64)
        try:
            binds = kw.pop("binds", ()) + ws.binds_for_next_step()
            spec = spec_for(sandbox, registry, argv, binds=binds, slot=slot, **kw)
            return await sandbox.run(spec)
        finally:
            ws.destroy()


async def test_a_failing_mount_step_is_a_setup_error_naming_step_and_errno(sandbox, registry):
    out = await run_in_workspace(sandbox, registry, ["/bin/true"],
                                 binds=(Bind("/nonexistent-sandboxd-path", "/x"),))
    assert out.termination is Termination.SETUP_ERROR
    assert out.setup_error.startswith("mounts:"), out.setup_error
    assert "/nonexistent-sandboxd-path" in out.setup_error and "ENOENT" in out.setup_error
    await sandbox.discard_warm_boxes()  # the pool's refill of that shape fails alike
    assert not [p for p in sandbox.cgroups.box_dirs() if p.name.startswith(f"box-{os.getpid()}-")]


async def test_a_missing_program_is_a_setup_error_from_execve(sandbox, registry):
    out = await run_in_workspace(sandbox, registry, ["/usr/bin/no-such-binary"])
    assert out.termination is Termination.SETUP_ERROR
    assert out.setup_error.startswith("execve:") and "ENOENT" in out.setup_error


async def test_stdout_and_exit_status_travel_back(sandbox, registry):
    out = await run_in_workspace(sandbox, registry,
                                 ["/bin/sh", "-c", "cat; echo err >&2; exit 5"], stdin=b"in\n")
    assert out.termination is Termination.EXITED
    assert (out.exit_code, out.signal) == (5, None)
    assert out.stdout == b"in\n" and out.stderr == b"err\n"


async def test_merged_stderr_keeps_order(sandbox, registry):
    out = await run_in_workspace(sandbox, registry,
                                 ["/bin/sh", "-c", "echo 1; echo 2 >&2; echo 3"],
                                 merge_stderr=True)
    assert out.stdout == b"1\n2\n3\n" and out.stderr == b""


async def test_a_dead_fork_server_is_replaced(sandbox, registry):
    os.kill(sandbox._forkserver.process.pid, signal.SIGKILL)
    sandbox._forkserver.process.wait()
    assert sandbox.healthy  # replaced on the spot
    out = await run_in_workspace(sandbox, registry, ["/bin/true"])
    assert out.termination is Termination.EXITED and out.exit_code == 0


async def test_planted_symlinks_never_make_the_daemon_touch_host_files(sandbox, registry,
                                                                       tmp_path):
    # A program plants symlinks named like the artifacts and outputs the daemon handles.
    victim = tmp_path / "victim"
    victim.write_text("host data\n")
    before = victim.stat()
    script = (f"ln -sf {victim} /box/main; ln -sf {victim} /box/main.c; "
              f"ln -sf /etc/passwd /box/Main.class; ln -sf {victim} /tmp/out; "
              f"cat /box/main 2>&1; echo done")
    out = await run_in_workspace(sandbox, registry, ["/bin/sh", "-c", script])
    assert out.exit_code == 0
    assert b"host data" not in out.stdout and b"done" in out.stdout
    after = victim.stat()
    assert victim.read_text() == "host data\n"
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


async def test_setup_time_is_not_charged_to_the_program(sandbox, registry):
    # /bin/true does almost nothing: its CPU time must not include the box's own setup.
    times = []
    for _ in range(3):
        out = await run_in_workspace(sandbox, registry, ["/bin/true"])
        times.append(out.cpu_ms)
    # The setup (namespaces, mounts, loopback) costs 15+ ms of CPU; the fork+exec of
    # the program itself a few.
    assert min(times) < 12 * SLOWDOWN, times


async def test_the_fork_server_reaps_every_box(sandbox, registry):
    for _ in range(5):
        await run_in_workspace(sandbox, registry, ["/bin/true"])
    fs = sandbox._forkserver.process.pid
    deadline = time.monotonic() + 5
    while True:
        zombies = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if stat[0] == "Z" and int(stat[1]) == fs:
                    zombies.append(entry)
        if not zombies or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not zombies


# --- allocations larger than the memory limit (seccomp user notification) -----------

MMAP_PROBE = r'''
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
FAILED = ctypes.c_void_p(-1).value
for line in sys.stdin:
    name, size, prot, flags = line.split()
    ctypes.set_errno(0)
    r = libc.mmap(None, int(size), int(prot), int(flags, 16), -1, 0)
    print(name, "failed" if r == FAILED else "ok", ctypes.get_errno() if r == FAILED else 0)
'''
PY_ROOTFS_ARGV = ["/usr/bin/python3", "-c", MMAP_PROBE]


async def test_writable_allocation_larger_than_the_limit_is_refused_with_evidence(
        sandbox, registry):
    # 128 MiB limit. Over it and writable: ENOMEM from the init, reported as evidence.
    # Reservations (PROT_NONE, MAP_NORESERVE: how JVMs, V8 and Go reserve address
    # space) and allocations within the limit pass, whatever their size.
    probes = ("big_rw 8589934592 3 22\n"          # 8 GiB, PROT_READ|WRITE, PRIVATE|ANON
              "huge_rw 85899345920 3 22\n"        # 80 GiB: refused the same way
              "at_limit 134217728 3 22\n"         # exactly the limit: allowed
              "reserve 8589934592 0 22\n"         # PROT_NONE
              "noreserve 8589934592 3 4022\n")    # MAP_NORESERVE
    out = await run_in_workspace(sandbox, registry, PY_ROOTFS_ARGV,
                                 stdin=probes.encode())
    assert out.termination is Termination.EXITED and out.exit_code == 0, out
    lines = dict(line.split(" ", 1) for line in out.stdout.decode().splitlines())
    assert lines == {"big_rw": "failed 12", "huge_rw": "failed 12", "at_limit": "ok 0",
                     "reserve": "ok 0", "noreserve": "ok 0"}, out.stdout
    assert out.memory_refused


async def test_no_refusal_no_evidence(sandbox, registry):
    out = await run_in_workspace(sandbox, registry, PY_ROOTFS_ARGV,
                                 stdin=b"small 1048576 3 22\n")
    assert out.stdout == b"small ok 0\n" and not out.memory_refused


async def test_refusal_is_evidence_even_when_another_limit_ends_the_run(sandbox, registry):
    # Refused, then floods stdout past the output cap: the box is killed for the output
    # limit, and the refusal was reported before the kill.
    argv = ["/usr/bin/python3", "-c", MMAP_PROBE + "\nwhile True: sys.stdout.write('x' * 65536)\n"]
    limits = BoxLimits(cpu_ms=int(5000 * SLOWDOWN), wall_ms=int(10_000 * SLOWDOWN),
                       memory_bytes=128 << 20, output_bytes=1 << 16)
    out = await run_in_workspace(sandbox, registry, argv, stdin=b"big 8589934592 3 22\n",
                                 limits=limits)
    assert out.output_exceeded and out.memory_refused, out


async def test_rlimit_data_on_request_fails_brk_growth_too(sandbox, registry):
    # glibc falls back to brk when a huge mmap is refused; RLIMIT_DATA (for runtimes
    # that tolerate it) makes that fail too, on every host alike.
    code = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
            "libc.sbrk.restype = ctypes.c_void_p; libc.sbrk.argtypes = [ctypes.c_long]; "
            "r = libc.sbrk(1 << 30); print('failed' if r == ctypes.c_void_p(-1).value "
            "else 'ok', ctypes.get_errno())")
    limits = BoxLimits(cpu_ms=2000, wall_ms=5000, memory_bytes=128 << 20,
                       data_bytes=256 << 20)
    out = await run_in_workspace(sandbox, registry, ["/usr/bin/python3", "-c", code],
                                 limits=limits)
    assert out.stdout == b"failed 12\n", out
    unlimited = await run_in_workspace(sandbox, registry, ["/usr/bin/python3", "-c", code])
    assert unlimited.stdout == b"ok 0\n", unlimited


# The named steps every traced box passes, in the order they must happen: the
# supervisor (S), the box's first process (D), its init (I) and the program (P).
BUILD_IN_ORDER = ("D forked", "D cgroup", "D unshare", "D usermap", "I mounts", "I loopback")
TAKE_IN_ORDER = ("S counter read", "I take", "I attach", "P release", "P seccomp", "I exec stop",
                 "I program ended", "D reaped I", "S box ended", "S killed", "S cgroup removed")


async def test_a_traced_box_reports_its_steps_on_one_timeline(sandbox, registry):
    await sandbox.discard_warm_boxes()  # a box built for this run: every step is seen
    out = await run_in_workspace(sandbox, registry, ["/bin/true"], trace_steps=True)
    assert out.termination is Termination.EXITED and out.exit_code == 0
    names = [name for name, _ in out.steps]
    times = [at for _, at in out.steps]
    assert times == sorted(times)
    expected = ("S run", *BUILD_IN_ORDER, "S STARTED read", *TAKE_IN_ORDER)
    assert [n for n in names if n in expected] == list(expected)
    # Each process's entries travel once.
    assert len(names) == len(set(names)) + names.count("D pdeathsig") - 1


async def test_a_warm_box_was_built_before_its_job_came(sandbox, registry):
    """A pre-warmed box is taken with its namespaces, mounts and loopback done: the run's
    trace holds the take and the program, none of the build."""
    async with sandbox.slot() as slot:
        ws = sandbox.workspace(slot, 64)
        try:
            spec = spec_for(sandbox, registry, ["/bin/sh", "-c", "cat /box/x; ls /tmp"],
                            binds=ws.binds_for_next_step(), slot=slot, trace_steps=True)
            await sandbox.prewarm(spec)
            ws.write_file("x", b"job data\n")  # written after the box was built
            out = await sandbox.run(spec)
        finally:
            ws.destroy()
    assert out.termination is Termination.EXITED and out.exit_code == 0, out
    assert out.stdout == b"job data\n"
    names = [name for name, _ in out.steps]
    assert names[:2] == ["S run", "S warm box taken"], names
    assert [n for n in names if n in TAKE_IN_ORDER] == list(TAKE_IN_ORDER)
    assert not set(BUILD_IN_ORDER) & set(names)


async def test_a_run_leaves_a_warm_box_for_its_slots_next_job(sandbox, registry):
    """No prewarm: a cold run's end builds the next box of its slot and shape, and the
    next run of that shape takes it."""
    await sandbox.discard_warm_boxes()
    async with sandbox.slot() as slot:
        outcomes = []
        for _ in range(2):
            ws = sandbox.workspace(slot, 64)
            try:
                spec = spec_for(sandbox, registry, ["/bin/true"],
                                binds=ws.binds_for_next_step(), slot=slot, trace_steps=True)
                outcomes.append(await sandbox.run(spec))
                for _ in range(500):  # the refill starts when the run ends, in the background
                    if sandbox.warm_box_names():
                        break
                    await asyncio.sleep(0.01)
                assert len(sandbox.warm_box_names()) == 1
                await sandbox.prewarm(spec)  # that box, built in a moment: nothing new
                assert len(sandbox.warm_box_names()) == 1
            finally:
                ws.destroy()
    first, second = outcomes
    assert "S box spawned" in {n for n, _ in first.steps}, first.steps
    assert second.exit_code == 0, second
    assert [n for n, _ in second.steps][:2] == ["S run", "S warm box taken"]


async def test_each_run_gets_its_own_box_never_a_used_one(sandbox, registry):
    """Single use: each run's box is a new one, never an earlier run's again, even with
    the pool on: a process an earlier run left running (in a box that was reused) would
    be visible; none is, and the program is PID 2 of its box's PID namespace each time."""
    for _ in range(3):
        out = await run_in_workspace(
            sandbox, registry,
            ["/bin/sh", "-c", 'echo "pid: $$"; echo "sleepers: $(cat /proc/[0-9]*/comm '
                              '2>/dev/null | grep -c "^sleep$")"; '
                              'setsid sleep 100 >/dev/null 2>&1 </dev/null &'])
        assert out.termination is Termination.EXITED and out.exit_code == 0, out
        lines = dict(line.split(": ", 1) for line in out.stdout.decode().splitlines())
        assert lines == {"pid": "2", "sleepers": "0"}, lines


async def test_an_untraced_box_reports_no_steps(sandbox, registry):
    out = await run_in_workspace(sandbox, registry, ["/bin/true"])
    assert out.termination is Termination.EXITED and out.steps == ()


def _freezer(box) -> tuple[Path, str, str]:
    """(state file, frozen value, thawed value) of a box cgroup, v1 or v2."""
    if box.__class__.__name__ == "V2Cgroup":
        return box.path / "cgroup.freeze", "1", "0"
    return box.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED"


async def test_a_box_stuck_in_its_setup_does_not_hold_up_the_fork_server(sandbox, registry,
                                                                         monkeypatch):
    """The first box's cgroup is frozen before it is spawned: its D stops on joining it,
    before asking for its id maps. The fork server must serve the next box meanwhile,
    and still answer the first box's id-map request once it is thawed."""
    create = sandbox.cgroups.create
    frozen = []

    def create_frozen_once(limits):
        box = create(limits)
        if not frozen:
            state, freeze, _ = _freezer(box)
            state.write_text(freeze)
            frozen.append(box)
        return box

    monkeypatch.setattr(sandbox.cgroups, "create", create_frozen_once)
    first = asyncio.create_task(run_in_workspace(sandbox, registry, ["/bin/true"]))
    while not (frozen and frozen[0].pids()):  # D has joined (and so stopped in) it
        await asyncio.sleep(0.01)
    second = await run_in_workspace(sandbox, registry, ["/bin/true"])
    assert second.termination is Termination.EXITED and second.exit_code == 0
    assert not first.done()
    state, _, thaw = _freezer(frozen[0])
    state.write_text(thaw)
    out = await first
    assert out.termination is Termination.EXITED and out.exit_code == 0, out.setup_error


async def test_closing_the_sandbox_tears_its_warm_boxes_down(registry):
    """Warm boxes are the sandbox's: `close()` kills them and removes their cgroups."""
    from sandboxd.jail.supervisor import Sandbox

    own = Sandbox(state_dir="/run/sandboxd-test-close", slots=1)
    own.start()
    try:
        async with own.slot() as slot:
            ws = own.workspace(slot, 64)
            try:
                spec = spec_for(own, registry, ["/bin/true"], binds=ws.binds_for_next_step(),
                                slot=slot)
                await own.prewarm(spec)
            finally:
                ws.destroy()
        names = own.warm_box_names()
        assert len(names) == 1
        assert {p.name for p in own.cgroups.box_dirs()} >= names
        pids = [pid for name in names for pid in own.cgroups.open(name).pids()]
        assert pids  # D and the init, waiting for a job
    finally:
        own.close()
    assert not {p.name for p in own.cgroups.box_dirs()} & names
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
