"""Soak: many mixed runs through one daemon, then nothing may have leaked. `make soak`.

SOAK_N runs (default 10 000) over HTTP from 8 clients: hello worlds (the answer is
checked), fork bombs, memory bombs, output floods and infinite loops, each a C
program compiled once per submission and run over a `tests` list (every test is a
fresh box). Every test's verdict is checked. Then, with the daemon idle:

- cgroups: no box cgroup of the daemon is left in any hierarchy but its warm boxes
  (built ahead, at most one per slot, only D and its init in them; their processes
  and descriptors are accounted for below), and none at all once it stopped;
- mounts: the host's mount table has as many entries under the daemon's state
  directory as after the warm-up (its workspace mounts all gone);
- descriptors: the daemon and its fork server hold as many as after the warm-up
  (the daemon: 3 more or fewer per warm box more or fewer);
- processes: the fork server's only children are the warm boxes' first processes;
  only their D and init run as a box slot's uid;
- journal: once the (short) result TTL has passed, no job row is left;
- memory: the daemon's and fork server's RSS, idle at the end and the median of 10
  checkpoints along the way, did not grow past the warm-up's by more than
  RSS_SLACK_KB (allocator noise).

Prints what it found and exits non-zero if anything leaked. Not part of `make test`.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.conftest import start_daemon, stop_daemon  # noqa: E402

N = int(os.environ.get("SOAK_N", "10000"))
CLIENTS = 8
TESTS_PER_SUBMISSION = 20
STATE_DIR = "/run/sandboxd-soak"
RESULT_TTL_S = 3.0
# Not the default 60 000: other sandboxd instances on the host (test daemons) use that.
UID_BASE = 64_000
RSS_SLACK_KB = 8 * 1024

HELLO = '#include <stdio.h>\nint main(void) { puts("Hello, World!"); return 0; }\n'
FORK_BOMB = ('#include <unistd.h>\n'
             'int main(void) { for (;;) if (fork() < 0) return 0; }\n')
MEMORY_BOMB = ('#include <stdlib.h>\n#include <string.h>\n'
               'int main(void) { for (;;) { char *p = malloc(1 << 20); if (!p) return 1;'
               ' memset(p, 1, 1 << 20); } }\n')
OUTPUT_FLOOD = ('#include <stdio.h>\n#include <string.h>\n'
                'int main(void) { char b[65536]; memset(b, 120, sizeof b);'
                ' for (;;) fwrite(b, 1, sizeof b, stdout); }\n')
INFINITE_LOOP = 'int main(void) { volatile unsigned long i = 0; for (;;) i++; }\n'

# kind -> (source, expected output, verdicts a test of it may get, share of the runs)
KINDS = {
    "hello": (HELLO, "Hello, World!\n", {"Accepted"}, 6),
    # The process cap stops the bomb: fork fails and every process returns; or the
    # CPU/wall limit ends the processes still looping.
    "fork bomb": (FORK_BOMB, "", {"Accepted", "Time Limit Exceeded", "Runtime Error"}, 1),
    "memory bomb": (MEMORY_BOMB, "", {"Memory Limit Exceeded"}, 1),
    "output flood": (OUTPUT_FLOOD, "", {"Output Limit Exceeded"}, 1),
    "timeout": (INFINITE_LOOP, "", {"Time Limit Exceeded"}, 1),
}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def mount_count() -> int:
    """Mounts of this soak's daemon (its state directory) in the host's table."""
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if f" {STATE_DIR}" in line)


def box_cgroups(daemon_pid: int) -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(dirpath, d) for d in dirnames
                  if d.startswith(f"box-{daemon_pid}-")]
    return found


def cgroup_pids(path: str) -> list[str]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return f.read().split()
    except OSError:
        return []


def warm_boxes(daemon_pid: int) -> list[str]:
    """The daemon's warm boxes (sandbox.warm_boxes): built ahead, waiting for a job. At
    rest they are the only box cgroups there may be: their program leaf is empty and
    only D and its init run in them (2 processes)."""
    found = []
    for path in box_cgroups(daemon_pid):
        program = os.path.join(path, "program")
        keeper = os.path.join(path, "keeper")
        if os.path.isdir(program) and not cgroup_pids(program) \
                and len(cgroup_pids(keeper)) == 2:
            found.append(os.path.basename(path))
    return sorted(set(found))


def slot_uid_processes(slots: int) -> list[str]:
    uids = range(UID_BASE, UID_BASE + 2 * slots)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            found.append(entry)
                        break
        except OSError:
            pass
    return found


def journal_rows(path: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def main() -> int:
    workers = os.cpu_count() or 2
    plan = [kind for kind, spec in KINDS.items() for _ in range(spec[3])]
    submissions = -(-N // TESTS_PER_SUBMISSION)
    kinds = list(itertools.islice(itertools.cycle(plan), submissions))
    with tempfile.TemporaryDirectory(prefix="sandboxd-soak-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = start_daemon(
            tmp, languages=["c"], log_name="soak-daemon.log",
            config_text=f'[sandbox]\nstate_dir = "{STATE_DIR}"\nuid_base = {UID_BASE}\n'
                        f'[server]\nworkers = {workers}\nresult_ttl_s = {RESULT_TTL_S}\n'
                        f'max_tests = {TESTS_PER_SUBMISSION}\nwait_cap_s = 600\n')
        problems: list[str] = []
        try:
            pid = daemon.process.pid
            fs_pid = children(pid)[0]
            counts = {k: 0 for k in KINDS}
            verdicts: dict[str, dict[str, int]] = {k: {} for k in KINDS}
            lock = threading.Lock()

            def submit(kind: str) -> None:
                source, expected, allowed, _ = KINDS[kind]
                tests = [{"stdin": "", "expected_output": expected}
                         for _ in range(TESTS_PER_SUBMISSION)]
                status, body, _ = daemon.request(
                    "POST", "/execute?wait=true",
                    {"language": "c", "source": source, "tests": tests, "cache": False,
                     "stop_on_first_failure": False, "time_limit_ms": 300,
                     "memory_limit_mb": 64}, timeout=600)
                if status != 200:
                    raise RuntimeError(f"{kind}: HTTP {status} {body}")
                with lock:
                    tally(kind, body["tests"], allowed)

            def tally(kind: str, tests: list[dict], allowed: set[str]) -> None:
                for test in tests:
                    verdicts[kind][test["status"]] = verdicts[kind].get(test["status"], 0) + 1
                    counts[kind] += 1
                    if test["status"] not in allowed:
                        problems.append(f"{kind}: {json.dumps(test)[:500]}")

            for kind in KINDS:  # warm-up: one of each
                submit(kind)
            time.sleep(RESULT_TTL_S + 2)
            base = {"daemon_rss_kb": rss_kb(pid), "fork_server_rss_kb": rss_kb(fs_pid),
                    "daemon_fds": fd_count(pid), "fork_server_fds": fd_count(fs_pid),
                    "warm_boxes": len(warm_boxes(pid))}
            mounts_before = mount_count()
            print(f"soak: {N} runs ({submissions} submissions of {TESTS_PER_SUBMISSION} "
                  f"tests), {CLIENTS} clients, {workers} workers; after warm-up: {base}",
                  flush=True)
            rss_series = []
            start = time.monotonic()
            # Ten consecutive slices: each holds every kind in the plan's proportions.
            size = -(-len(kinds) // 10)
            chunks = [kinds[i * size:(i + 1) * size] for i in range(10)]
            with ThreadPoolExecutor(CLIENTS) as pool:
                for i, chunk in enumerate(chunks):
                    list(pool.map(submit, chunk))
                    rss_series.append((rss_kb(pid), rss_kb(fs_pid)))
                    print(f"  {10 * (i + 1)}%: {sum(counts.values())} runs, "
                          f"{time.monotonic() - start:.0f} s, RSS daemon "
                          f"{rss_series[-1][0] // 1024} MiB, fork server "
                          f"{rss_series[-1][1] // 1024} MiB", flush=True)
            elapsed = time.monotonic() - start
            time.sleep(RESULT_TTL_S + 2)  # results expire; the housekeeper forgets them
            after = {"daemon_rss_kb": rss_kb(pid), "fork_server_rss_kb": rss_kb(fs_pid),
                     "daemon_fds": fd_count(pid), "fork_server_fds": fd_count(fs_pid),
                     "warm_boxes": len(warm_boxes(pid))}
            # A warm box holds 3 of the daemon's descriptors (report pipe, take socket,
            # memory peak), one fork-server child (its D) and 2 box-uid processes.
            warm = warm_boxes(pid)
            if len(warm) > workers:
                problems.append(f"{len(warm)} warm boxes for {workers} slots")
            after["daemon_fds"] -= 3 * (after["warm_boxes"] - base["warm_boxes"])
            print(f"done: {sum(counts.values())} runs (warm-up included), the last {N} "
                  f"in {elapsed:.0f} s; verdicts: {json.dumps(verdicts)}")
            print(f"after: {after}")
            if leaked := [b for b in box_cgroups(pid) if os.path.basename(b) not in warm]:
                problems.append(f"box cgroups left: {leaked[:5]} ({len(leaked)})")
            if (m := mount_count()) != mounts_before:
                problems.append(f"mounts: {mounts_before} after warm-up, {m} at the end")
            for key in ("daemon_fds", "fork_server_fds"):
                if after[key] != base[key]:
                    problems.append(f"{key}: {base[key]} after warm-up, {after[key]} at the end")
            if len(kids := children(fs_pid)) != len(warm):
                problems.append(f"fork server children left: {kids} ({len(warm)} warm boxes)")
            if len(procs := slot_uid_processes(workers)) != 2 * len(warm):
                problems.append(f"processes running as a box uid: {procs} "
                                f"({len(warm)} warm boxes)")
            for label, index, key in (("daemon", 0, "daemon_rss_kb"),
                                      ("fork server", 1, "fork_server_rss_kb")):
                # A big response in flight lifts one checkpoint (allocator arenas come
                # back later): a leak lifts the median of them and the idle end.
                series = [r[index] for r in rss_series]
                typical = sorted(series)[len(series) // 2]
                if max(typical, after[key]) > base[key] + RSS_SLACK_KB:
                    problems.append(f"{label} RSS grew: {base[key]} kB after warm-up, "
                                    f"{after[key]} kB idle at the end, checkpoints {series}")
        finally:
            stop_daemon(daemon)
        rows = journal_rows(daemon.journal)
        print(f"journal rows left (result TTL {RESULT_TTL_S} s): {rows}")
        if rows:
            problems.append(f"journal: {rows} job rows left after their TTL")
        if leaked := box_cgroups(pid):
            problems.append(f"box cgroups left after the daemon stopped: {leaked[:5]}")
    for p in problems[:20]:
        print("LEAK/FAIL:", p)
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more")
    print("soak:", "FAILED" if problems else "OK, nothing leaked")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
