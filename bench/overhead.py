"""Per-run overhead of sandboxd, measured (not asserted): `make bench`.

1. jail only: N sequential boxes running /bin/true through `Sandbox.run`
   (fork server, namespaces, mounts, cgroup, seccomp, watchdog, cleanup);
2. the whole stack over HTTP: N `?wait=true` submissions of a Python and a C
   hello world with 2 clients, from a daemon started for the benchmark;
3. the daemon's and the fork server's resident memory after the runs.

Prints a small table; numbers depend on the host (this one: 2 cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandboxd import config as config_mod  # noqa: E402
from sandboxd import languages  # noqa: E402
from sandboxd.jail.spec import BoxLimits, JailSpec  # noqa: E402
from sandboxd.jail.supervisor import Sandbox  # noqa: E402
from tests.e2e.conftest import start_daemon, stop_daemon  # noqa: E402

N = int(os.environ.get("BENCH_N", "100"))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def jail_only() -> list[float]:
    cfg = config_mod.Config()
    reg = languages.load(cfg.server.languages_file, cfg.sandbox.rootfs_dir)
    rootfs = reg["c"].rootfs
    sb = Sandbox(state_dir="/run/sandboxd-bench", slots=1)
    sb.start()
    times = []
    try:
        async with sb.slot() as slot:
            ws = sb.workspace(slot, 64)
            try:
                for i in range(N + 5):
                    spec = JailSpec(argv=("/bin/true",),
                                    limits=BoxLimits(cpu_ms=1000, wall_ms=2000,
                                                     memory_bytes=64 << 20),
                                    binds=rootfs.binds + ws.binds_for_next_step(),
                                    symlinks=rootfs.symlinks, env=(("PATH", "/usr/bin"),),
                                    slot=slot)
                    t = time.perf_counter()
                    out = await sb.run(spec)
                    if i >= 5:  # warm-up excluded
                        times.append((time.perf_counter() - t) * 1000)
                    assert out.exit_code == 0, out
            finally:
                ws.destroy()
    finally:
        sb.close()
    return times


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_runs(language: str, source: str) -> tuple[list[float], int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            def one(_: int) -> float:
                t = time.perf_counter()
                # The same program each time: without `cache: false` all but the first
                # would be answered from the result cache, no box run.
                body = daemon.execute(language=language, source=source, stdin="x",
                                      cache=False)
                assert body["status"] == "Accepted", json.dumps(body)
                return (time.perf_counter() - t) * 1000

            for i in range(3):
                one(i)
            with ThreadPoolExecutor(2) as pool:
                start = time.perf_counter()
                times = list(pool.map(one, range(N)))
                elapsed = time.perf_counter() - start
            children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
            fs_pid = int(children.read_text().split()[0])
            mem = rss_kb(daemon.process.pid), rss_kb(fs_pid)
            print(f"  {language}: {N / elapsed:.1f} runs/s with 2 clients")
        finally:
            stop_daemon(daemon)
    return times, *mem


def main() -> None:
    times = asyncio.run(jail_only())
    print(f"jail only, /bin/true x{N}: mean {statistics.mean(times):.1f} ms, "
          f"p50 {pct(times, 50):.1f} ms, p95 {pct(times, 95):.1f} ms")
    print(f"HTTP ?wait=true x{N} per language:")
    rows = []
    for lang, src in (("python3", "print(input())"),
                      ("c", '#include <stdio.h>\nint main(void){puts("x");}')):
        t, daemon_rss, fs_rss = http_runs(lang, src)
        rows.append((lang, t, daemon_rss, fs_rss))
    for lang, t, daemon_rss, fs_rss in rows:
        print(f"  {lang}: latency p50 {pct(t, 50):.0f} ms, p95 {pct(t, 95):.0f} ms; "
              f"daemon RSS {daemon_rss // 1024} MiB, fork server RSS {fs_rss // 1024} MiB")


if __name__ == "__main__":
    main()
