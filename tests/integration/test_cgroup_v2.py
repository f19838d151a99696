"""cgroup v2 specifics, for real: delegation, the files each box and its keeper/ and
program/ leaves get, kill, no leftovers.

Runs where the host offers cgroup v2 with controllers: production hosts, and the VM
lane (`make test-v2`, Debian 12's kernel under qemu). On a hybrid host such as our CI
machine it skips, saying so; every other kernel test (isolation, limits, cleanup) runs
on both backends unchanged.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandboxd.jail import cgroup
from sandboxd.model import Status
from tests.conftest import SLOWDOWN

MIB = 2**20


@pytest.fixture
def v2(sandbox):
    if sandbox.cgroups.version != "v2":
        pytest.skip("host cgroups are v1/hybrid (no usable cgroup2 controllers); "
                    "this file runs in the VM lane, make test-v2")
    return sandbox.cgroups


def own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError("no cgroup2 entry in /proc/self/cgroup")


def test_delegation_daemon_in_a_leaf_and_controllers_enabled(v2):
    assert isinstance(v2, cgroup.V2Backend)
    if v2.base != v2.mount:
        # Like systemd Delegate=yes: the daemon lives in <base>/daemon, a leaf.
        assert own_cgroup().endswith("/daemon")
    for path in (v2.base, v2.root):
        enabled = (path / "cgroup.subtree_control").read_text().split()
        assert {"cpu", "memory", "pids"} <= set(enabled), (path, enabled)


async def test_box_cgroup_carries_the_limits_while_running(v2, execute):
    """box/ holds the pids and CPU limits and no process of its own; keeper/ holds D and
    the init, program/ the program with exactly its memory limit."""
    seen: dict[str, str] = {}
    names = ["pids.max", "cpu.max", "memory.max", "cgroup.subtree_control", "cgroup.procs"]
    for leaf in (cgroup.KEEPER, cgroup.PROGRAM):
        names += [f"{leaf}/memory.max", f"{leaf}/memory.swap.max", f"{leaf}/cgroup.procs"]

    async def inspect():
        for _ in range(400):
            dirs = [p for p in v2.box_dirs() if p.name.startswith(f"box-{os.getpid()}-")]
            if dirs:
                box = dirs[0]
                try:
                    for name in names:
                        seen[name] = (box / name).read_text().strip()
                    # The setup runs with headroom; at the program's execve the init
                    # narrows the program's memory.max to exactly its limit.
                    if seen["program/memory.max"] == str(100 * MIB) and seen[
                            "program/cgroup.procs"]:
                        return
                except FileNotFoundError:
                    pass
            await asyncio.sleep(0.01)

    result, _ = await asyncio.gather(
        execute("python3", "import time; time.sleep(1.5)", memory_limit_mb=100,
                time_limit_ms=5000, wall_time_limit_ms=10_000),
        inspect())
    assert result.status is Status.ACCEPTED
    assert seen["program/memory.max"] == str(100 * MIB), seen
    assert seen["keeper/memory.max"] == str(cgroup.KEEPER_MEMORY_BYTES), seen
    assert seen["program/memory.swap.max"] == seen["keeper/memory.swap.max"] == "0", seen
    assert seen["memory.max"] == "max", seen  # the box: its leaves carry the limits
    assert "memory" in seen["cgroup.subtree_control"].split(), seen
    assert seen["cgroup.procs"] == "", seen  # no internal processes
    assert seen["keeper/cgroup.procs"] and seen["program/cgroup.procs"], seen
    assert not set(seen["keeper/cgroup.procs"].split()) & set(
        seen["program/cgroup.procs"].split()), seen
    assert seen["pids.max"] == "64"
    assert seen["cpu.max"] == "100000 100000"


async def test_oom_kill_read_from_memory_events_is_mle(v2, execute):
    src = ("#include <stdlib.h>\n#include <string.h>\nint main(void){"
           "for(;;){char*p=malloc(1<<20); if(!p) return 3; memset(p,1,1<<20);"
           "__asm__ volatile(\"\" ::: \"memory\");}}")
    result = await execute("c", src, memory_limit_mb=64, time_limit_ms=int(2000 * SLOWDOWN))
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED
    # The program's own memory.peak: nothing of D's or the init's in it.
    assert 56 * 1024 <= result.memory_kb <= 66 * 1024, result.memory_kb


async def test_cpu_stat_time_limit(v2, execute):
    result = await execute("c", "int main(void){for(;;);}", time_limit_ms=700,
                           wall_time_limit_ms=10_000)
    assert result.status is Status.TIME_LIMIT_EXCEEDED
    assert 700 <= result.time_ms < 1500


async def test_no_box_cgroup_remains_after_50_runs(v2, execute, sandbox):
    sources = ["print(1)", "import os; os.fork(); print(2)", "raise SystemExit(3)",
               "import os\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(100)"]
    for i in range(0, 50, 2):
        results = await asyncio.gather(*(execute("python3", sources[(i + k) % len(sources)])
                                         for k in range(2)))
        assert all(r.status in (Status.ACCEPTED, Status.RUNTIME_ERROR) for r in results), \
            [(r.status, r.message) for r in results]
    warm = sandbox.warm_box_names()  # built ahead for the next jobs, holding none yet
    mine = [p for p in v2.box_dirs() if p.name.startswith(f"box-{os.getpid()}-")
            and p.name not in warm]
    assert mine == []
    assert not any(p.name in (cgroup.KEEPER, cgroup.PROGRAM) and p.parent.name not in warm
                   for p in v2.root.rglob("*"))
