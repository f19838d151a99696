"""The jail layer itself (no HTTP, no languages): setup failures, sync, fork server."""

from __future__ import annotations

import os
import signal
import time

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
