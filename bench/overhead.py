"""Per-run cost of sandboxd, measured (never asserted): `make bench`.

Four parts, each comparison measured in the same run with its variants interleaved
(run 1 of every variant, then run 2 of every variant, ...), so a noisy neighbour
slows all of them alike:

1. jail overhead: a static C `true` (compiled here with `gcc -static`) and
   `python3 -c pass`, run directly, through `Sandbox.run` with a warm box (built ahead
   by the pool: the run is TAKE, the program's own setup, exec, wait, kill, cleanup)
   and with a cold one (a box built for the run: the fork server, 7 namespaces, mounts,
   cgroup, then the same), and through `bwrap --unshare-all` with the same binds
   (read-only /usr, /proc, /dev, a tmpfs working directory);
2. end to end: `POST /execute?wait=true` of a Python and a C hello world, one client,
   next to `python3 -c 'print(1)'` run directly;
3. throughput: 1000 runs of a compiled C program through HTTP with 8 clients (one
   submission of a `tests` list each; the program compiles once, the compiled-artifact
   cache serves the rest), every result checked; the
   daemon's and the fork server's resident memory, idle and at their peak;
4. where one box's time goes, warm and cold: `JailSpec.trace_steps` on traced runs,
   the median duration of each named step (from the step before it on the timeline).

Prints a table and writes bench/results.json (medians with p95; see BENCHMARKS.md).
BENCH_N (runs per variant in parts 1, 2 and 4, default 100) and BENCH_RUNS (part 3,
default 1000) shorten it; BENCH_PARTS="1 4" runs only those parts.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandboxd import config as config_mod  # noqa: E402
from sandboxd import languages  # noqa: E402
from sandboxd.jail.spec import Bind, BoxLimits, JailSpec  # noqa: E402
from sandboxd.jail.supervisor import Sandbox  # noqa: E402
from tests.e2e.conftest import start_daemon, stop_daemon  # noqa: E402

N = int(os.environ.get("BENCH_N", "100"))
THROUGHPUT_RUNS = int(os.environ.get("BENCH_RUNS", "1000"))
PARTS = set(os.environ.get("BENCH_PARTS", "1 2 3 4").split())
CLIENTS = 8
WARMUP = 3
STATE_DIR = "/run/sandboxd-bench"
RESULTS = Path(__file__).resolve().parent / "results.json"
BIN_DIR_IN_BOX = "/bench"
LIMITS = BoxLimits(cpu_ms=2000, wall_ms=5000, memory_bytes=256 << 20)
C_TRUE = "int main(void) { return 0; }\n"
C_DOUBLE = ('#include <stdio.h>\n'
            'int main(void) { long x; if (scanf("%ld", &x) != 1) return 1;'
            ' printf("%ld\\n", 2 * x); return 0; }\n')


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank."""
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def summary(values: list[float], *ps: float) -> dict[str, float]:
    out = {"median": round(statistics.median(values), 2)}
    for p in ps or (95,):
        out[f"p{p:g}"] = round(pct(values, p), 2)
    out["n"] = len(values)
    return out


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def timed_spawn(argv: list[str]) -> float:
    """ms from posix_spawn to the reaped exit: the direct run, as cheap as it gets."""
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"},
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - t) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv}: exit status {status}")
    return elapsed


def compile_static_true(work: Path) -> Path:
    src = work / "true.c"
    src.write_text(C_TRUE)
    binary = work / "true"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(src)], check=True)
    work.chmod(0o755)
    return binary


def rootfs():
    cfg = config_mod.Config()
    return languages.load(cfg.server.languages_file, cfg.sandbox.rootfs_dir)["c"].rootfs


def bwrap_argv(fs, bin_dir: Path, program: list[str]) -> list[str]:
    """bubblewrap with every namespace and the binds the jail gives a box."""
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--hostname", "sandbox"]
    for bind in fs.binds:
        argv += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]
    for link, target in fs.symlinks:
        argv += ["--symlink", target, link]
    argv += ["--ro-bind", str(bin_dir), BIN_DIR_IN_BOX, "--proc", "/proc", "--dev", "/dev",
             "--tmpfs", "/box", "--tmpfs", "/tmp", "--chdir", "/box", "--setenv", "PATH",
             "/usr/bin:/bin", *program]
    return argv


class Boxes:
    """Sandbox.run with a fresh workspace per box, as the runner gives a submission: on
    a sandbox with a warm pool (each timed run takes a box the pool finished building
    before the run began) and on one without (each run builds its box)."""

    def __init__(self, bin_dir: Path) -> None:
        self.fs = rootfs()
        self.bin_dir = bin_dir
        self.warm = Sandbox(state_dir=STATE_DIR, slots=CLIENTS, warm_boxes=1)
        self.cold = Sandbox(state_dir=STATE_DIR + "-cold", slots=CLIENTS, warm_boxes=0)
        self.warm.start()
        self.cold.start()

    def close(self) -> None:
        self.warm.close()
        self.cold.close()

    async def run(self, argv: list[str], *, warm: bool, trace: bool = False):
        """(ms of Sandbox.run, ms of the workspace's creation and removal, outcome)."""
        sandbox = self.warm if warm else self.cold
        async with sandbox.slot() as slot:
            t0 = time.perf_counter()
            ws = sandbox.workspace(slot, 64)
            t1 = time.perf_counter()
            try:
                spec = JailSpec(argv=tuple(argv), limits=LIMITS,
                                binds=(*self.fs.binds, Bind(str(self.bin_dir), BIN_DIR_IN_BOX),
                                       *ws.binds_for_next_step()),
                                symlinks=self.fs.symlinks, env=(("PATH", "/usr/bin:/bin"),),
                                slot=slot, trace_steps=trace)
                if warm:
                    await sandbox.prewarm(spec)  # not timed: built while nothing waited
                t1 = time.perf_counter()
                outcome = await sandbox.run(spec)
                t2 = time.perf_counter()
            finally:
                ws.destroy()
            t3 = time.perf_counter()
        if outcome.exit_code != 0:
            raise RuntimeError(f"{argv} in a box: {outcome}")
        return (t2 - t1) * 1000, ((t1 - t0) + (t3 - t2)) * 1000, outcome


# ------------------------------------------------------------------------- part 1

async def jail_overhead(boxes: Boxes, true_bin: Path) -> dict:
    programs = {"static C true": [f"{BIN_DIR_IN_BOX}/true"],
                "python3 -c pass": ["/usr/bin/python3", "-c", "pass"]}
    host_argv = {"static C true": [str(true_bin)],
                 "python3 -c pass": ["/usr/bin/python3", "-c", "pass"]}
    bwrap = shutil.which("bwrap")
    out: dict = {}
    for name, argv in programs.items():
        times: dict[str, list[float]] = {"direct": [], "sandboxd warm": [],
                                         "sandboxd cold": [], "workspace": []}
        if bwrap:
            times["bwrap"] = []
        bw = bwrap_argv(boxes.fs, true_bin.parent, argv) if bwrap else []
        for i in range(N + WARMUP):
            direct = timed_spawn(host_argv[name])
            warm_ms, ws_ms, _ = await boxes.run(argv, warm=True)
            cold_ms, _, _ = await boxes.run(argv, warm=False)
            bw_ms = timed_spawn([bwrap, *bw[1:]]) if bwrap else None
            if i < WARMUP:
                continue
            times["direct"].append(direct)
            times["sandboxd warm"].append(warm_ms)
            times["sandboxd cold"].append(cold_ms)
            times["workspace"].append(ws_ms)
            if bw_ms is not None:
                times["bwrap"].append(bw_ms)
        entry = {k: summary(v) for k, v in times.items()}
        d = entry["direct"]["median"]
        for kind in ("warm", "cold"):
            entry[f"sandboxd_{kind}_overhead_ms"] = round(
                entry[f"sandboxd {kind}"]["median"] - d, 2)
        if bwrap:
            entry["bwrap_overhead_ms"] = round(entry["bwrap"]["median"] - d, 2)
            for kind in ("warm", "cold"):
                entry[f"sandboxd_{kind}_over_bwrap"] = round(
                    entry[f"sandboxd {kind}"]["median"] / entry["bwrap"]["median"], 2)
        out[name] = entry
    if not bwrap:
        out["note"] = "bwrap not installed: `make bench` installs bubblewrap"
    return out


# ------------------------------------------------------------------------- part 4

async def breakdown(boxes: Boxes) -> dict:
    return {"warm": await breakdown_of(boxes, warm=True),
            "cold": await breakdown_of(boxes, warm=False)}


async def breakdown_of(boxes: Boxes, *, warm: bool) -> dict:
    """Median duration of each named step, from the step before it on the timeline."""
    durations: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    totals, workspace = [], []
    for i in range(N + WARMUP):
        box_ms, ws_ms, outcome = await boxes.run([f"{BIN_DIR_IN_BOX}/true"], warm=warm,
                                                 trace=True)
        if i < WARMUP:
            continue
        totals.append(box_ms)
        workspace.append(ws_ms)
        start = outcome.steps[0][1]
        previous = start
        for name, at in outcome.steps[1:]:
            durations.setdefault(name, []).append((at - previous) / 1e6)
            order[name] = order.get(name, 0) + (at - start)
            previous = at
    steps = [{"step": name, **summary(durations[name])}
             for name in sorted(durations, key=lambda n: order[n] / len(durations[n]))]
    return {"runs": len(totals), "sandbox_run": summary(totals), "steps": steps,
            "workspace_create_and_remove": summary(workspace)}


# ------------------------------------------------------------------------- parts 2, 3

# Daemons log to a file in the temporary directory (log_name): a pipe nobody reads
# fills after a few hundred requests and stalls the daemon.


def fork_server_pid(daemon) -> int:
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
    return int(children.read_text().split()[0])


def end_to_end(tmp: Path) -> dict:
    daemon = start_daemon(tmp, languages=["c", "python3"], log_name="e2e-daemon.log")
    cases = {"python3 hello": ("python3", 'print("Hello, World!")'),
             "C hello": ("c", '#include <stdio.h>\nint main(void){puts("Hello, World!");}\n')}
    try:
        def one(language: str, source: str) -> float:
            t = time.perf_counter()
            # `cache: false`: the same program each time would otherwise be answered
            # from the result cache, no box run.
            body = daemon.execute(language=language, source=source, cache=False)
            elapsed = (time.perf_counter() - t) * 1000
            if body["status"] != "Accepted" or body["stdout"] != "Hello, World!\n":
                raise RuntimeError(json.dumps(body))
            return elapsed

        times: dict[str, list[float]] = {"python3 -c 'print(1)' direct": [],
                                         **{k: [] for k in cases}}
        for i in range(N + WARMUP):
            direct = timed_spawn(["/usr/bin/python3", "-c", "print(1)"])
            measured = {k: one(*v) for k, v in cases.items()}
            if i < WARMUP:
                continue
            times["python3 -c 'print(1)' direct"].append(direct)
            for k, v in measured.items():
                times[k].append(v)
    finally:
        stop_daemon(daemon)
    out = {k: summary(v, 50, 95, 99) for k, v in times.items()}
    out["python3 hello minus direct p50"] = round(
        out["python3 hello"]["p50"] - out["python3 -c 'print(1)' direct"]["p50"], 2)
    return out


def throughput(tmp: Path) -> dict:
    per_client = -(-THROUGHPUT_RUNS // CLIENTS)
    daemon = start_daemon(
        tmp, languages=["c"], log_name="throughput-daemon.log",
        config_text=f'[sandbox]\nstate_dir = "{STATE_DIR}-http"\n'
                    f'[server]\nworkers = {CLIENTS}\nmax_tests = {per_client}\n'
                    # a submission of 125 tests outlasts the default 30 s on a busy host
                    f'wait_cap_s = 600\n'
                    f'queue_size = {4 * CLIENTS}\n')
    try:
        time.sleep(1.0)  # settled after start: the idle figure
        daemon_pid = daemon.process.pid
        fs_pid = fork_server_pid(daemon)
        idle = {"daemon_kb": rss_kb(daemon_pid), "fork_server_kb": rss_kb(fs_pid)}

        def submission(client: int) -> int:
            base = client * per_client
            tests = [{"stdin": f"{base + k}\n", "expected_output": f"{2 * (base + k)}\n"}
                     for k in range(per_client)]
            status, body, _ = daemon.request(
                "POST", "/execute?wait=true",
                {"language": "c", "source": C_DOUBLE, "tests": tests, "cache": False},
                timeout=600)
            if status != 200 or body["status"] != "Accepted":
                raise RuntimeError(json.dumps(body)[:2000])
            results = body["tests"]
            bad = [r for r in results if r["status"] != "Accepted"]
            if len(results) != per_client or bad:
                raise RuntimeError(f"client {client}: {len(bad)} wrong: {bad[:3]}")
            return len(results)

        submission(0)  # warm up: the C toolchain's pages in the cache
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            runs = sum(pool.map(submission, range(CLIENTS)))
        elapsed = time.perf_counter() - start
        after = {"daemon_kb": rss_kb(daemon_pid), "fork_server_kb": rss_kb(fs_pid)}
        peak = {"daemon_kb": rss_kb(daemon_pid, "VmHWM"),
                "fork_server_kb": rss_kb(fs_pid, "VmHWM")}
    finally:
        stop_daemon(daemon)
    return {"runs": runs, "clients": CLIENTS, "submissions": CLIENTS + 1,
            "seconds": round(elapsed, 2), "runs_per_s": round(runs / elapsed, 1),
            "rss_idle": idle, "rss_after": after, "rss_peak": peak}


# ------------------------------------------------------------------------- report

def machine() -> dict:
    load = os.getloadavg()
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": model, "memory_mb": mem_kb // 1024,
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def print_report(results: dict) -> None:
    def ms(s: dict, key: str = "median") -> str:
        return f"{s[key]:.1f}"

    if "jail_overhead" in results:
        print("\n(1) jail overhead per run, ms (median / p95), interleaved")
        print(f"{'program':16} {'direct':>12} {'sbx warm':>12} {'sbx cold':>12} "
              f"{'bwrap':>12} {'warm-dir':>8} {'cold-dir':>8} {'bwrap-dir':>9} "
              f"{'warm/bw':>7} {'cold/bw':>7}")
        nan = float("nan")
        for name, e in results["jail_overhead"].items():
            if name == "note":
                print("   ", e)
                continue
            bw = e.get("bwrap")
            cells = [f"{ms(e[k])}/{ms(e[k], 'p95')}"
                     for k in ("direct", "sandboxd warm", "sandboxd cold")]
            print(f"{name:16} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12} "
                  f"{(ms(bw) + '/' + ms(bw, 'p95')) if bw else '-':>12} "
                  f"{e['sandboxd_warm_overhead_ms']:>8.1f} "
                  f"{e['sandboxd_cold_overhead_ms']:>8.1f} "
                  f"{e.get('bwrap_overhead_ms', nan):>9.1f} "
                  f"{e.get('sandboxd_warm_over_bwrap', nan):>7.2f} "
                  f"{e.get('sandboxd_cold_over_bwrap', nan):>7.2f}")
        e = next(iter(v for k, v in results["jail_overhead"].items() if k != "note"))
        print(f"    + a fresh workspace per box (tmpfs mount + removal, outside "
              f"Sandbox.run): {ms(e['workspace'])} ms")
    if "end_to_end" in results:
        print("\n(2) POST /execute?wait=true, one client, ms (p50 / p95 / p99)")
        for name, s in results["end_to_end"].items():
            if isinstance(s, dict):
                print(f"    {name:32} {s['p50']:7.1f} {s['p95']:7.1f} {s['p99']:7.1f}")
        print(f"    python3 hello p50 minus direct p50: "
              f"{results['end_to_end']['python3 hello minus direct p50']:.1f} ms")
    if "throughput" in results:
        t = results["throughput"]
        print(f"\n(3) throughput: {t['runs']} C runs, {t['clients']} clients, "
              f"{t['submissions']} submissions (one a warm-up): {t['runs_per_s']} runs/s "
              f"({t['seconds']} s), every result checked")
        for label in ("rss_idle", "rss_after", "rss_peak"):
            r = t[label]
            print(f"    {label:10} daemon {r['daemon_kb'] / 1024:.1f} MiB, "
                  f"fork server {r['fork_server_kb'] / 1024:.1f} MiB")
    for kind, b in results.get("breakdown", {}).items():
        print(f"\n(4) one {kind} box's time, static C true, {b['runs']} traced runs: "
              f"Sandbox.run median {ms(b['sandbox_run'])} ms; median ms per step (since "
              f"the step before)")
        for s in b["steps"]:
            print(f"    {s['step']:22} {s['median']:7.2f}  (p95 {s['p95']:.2f})")
        print(f"    {'workspace (outside)':22} "
              f"{ms(b['workspace_create_and_remove']):>7}")


def save(results: dict) -> None:
    """After each part: a later part's failure keeps the earlier ones' figures."""
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "machine": machine(), "n": N}
    print(f"sandboxd bench: N={N}, {results['machine']['cpus']} CPUs, load "
          f"{results['machine']['loadavg_at_start']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        if PARTS & {"1", "4"}:
            (tmp / "bin").mkdir()
            true_bin = compile_static_true(tmp / "bin")
            boxes = Boxes(true_bin.parent)
            try:
                if "1" in PARTS:
                    print("part 1: jail overhead ...", flush=True)
                    results["jail_overhead"] = asyncio.run(jail_overhead(boxes, true_bin))
                    save(results)
                if "4" in PARTS:
                    print("part 4: breakdown ...", flush=True)
                    results["breakdown"] = asyncio.run(breakdown(boxes))
                    save(results)
            finally:
                boxes.close()
        if "2" in PARTS:
            print("part 2: end to end ...", flush=True)
            results["end_to_end"] = end_to_end(tmp)
            save(results)
        if "3" in PARTS:
            print("part 3: throughput ...", flush=True)
            results["throughput"] = throughput(tmp)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save(results)
    print_report(results)
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
