#!/usr/bin/env python3
"""`make test-v2`: the kernel integration tests, on a real cgroup v2 kernel.

Boots Debian 12's stock kernel under qemu (run_in_guest.py), puts the test run in
a child cgroup with every controller enabled at the root, as systemd does for a
`Delegate=yes` unit, and runs the same integration test files as on the host
with SANDBOXD_TEST_CGROUP=v2 and SANDBOXD_MUST_WORK=1: the v2 backend must work,
nothing may skip. The guest's pytest output streams live; its junit report comes
back over the results share and is summarised here. Exit status: non-zero when a
v2 test failed or errored, when none ran, or when the guest hung or crashed.

    tests/vm/run_v2_lane.py                     # the whole lane (make test-v2)
    tests/vm/run_v2_lane.py tests/integration/test_cgroup_v2.py   # a selection
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GUEST_RESULTS = "/run/vm/results"
TIMEOUT_S = int(os.environ.get("SANDBOXD_VM_TIMEOUT", "1800"))
SLOWDOWN = os.environ.get("SANDBOXD_TEST_SLOWDOWN", "8")

# The same files as on the host: the backend is the only difference. Java and C++ are
# left out only because javac and g++ under software emulation take 10+ s a compile;
# they exercise languages, not cgroups.
TEST_FILES = [
    "tests/integration/test_cgroup_v2.py",
    "tests/integration/test_cgroup_root.py",
    "tests/integration/test_cgroup_usage.py",
    "tests/integration/test_isolation_network.py",
    "tests/integration/test_isolation_filesystem.py",
    "tests/integration/test_isolation_process.py",
    "tests/integration/test_jail_protocol.py",
    "tests/integration/test_limits.py",
    "tests/integration/test_cleanup.py",
    "tests/integration/test_languages.py",
    "tests/integration/test_hardening.py",
    "tests/integration/test_accounting.py",
    "tests/integration/test_verdicts.py",
    "tests/integration/test_cgroup_usage.py",
    # The daemon as a whole: no box outlives it, a fork-server crash is an Internal Error.
    "tests/e2e/test_crash.py",
]
# The 200-run leak test is covered here by test_cgroup_v2's 50 runs. The guest has no
# disk file system (tmpfs overlay, 9p), so no page cache to charge: file_cache would skip.
# The two millisecond-precision CPU tests (a hello world's CPU vs its wall time, an 800 ms
# spin within 5 ms) run on the host only: under TCG a C program's dynamic loading alone
# costs tens of ms and the guest's clocks jitter by as much (seen: 846 ms for the spin,
# hello worlds 29-77 ms). The lane keeps the CPU-limit kill tests, which use v2's counter.
DESELECT = ("not java and not cpp and not 200_mixed and not file_cache"
            " and not reports_about_its_own_cpu and not cpu_spin_reports_800")
# The languages whose per-language tests (test_languages.py) run in the guest: the
# other toolchains (JVMs, GHC, tsc, ...) take tens of seconds a compile under TCG.
VM_LANGUAGES = "c python3 bash"


def summarise(junit: str) -> tuple[int, int, int, int]:
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total, failures, errors, skipped


def main(argv: list[str]) -> int:
    """`argv`, if given, replaces the default test selection (e.g. one file, -k ...)."""
    selection = argv or ["-k", DESELECT, *TEST_FILES]
    python = os.path.join(REPO, ".venv", "bin", "python")
    if not os.path.exists(python):
        print("run_v2_lane: no .venv; run `make deps` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sandboxd-v2-lane-") as results:
        cmd = [
            sys.executable, os.path.join(HERE, "run_in_guest.py"),
            "--timeout", str(TIMEOUT_S), "--results-dir", results,
            "--cgroup", "sandboxd.service",
            "--env", "SANDBOXD_MUST_WORK=1", "--env", "SANDBOXD_TEST_CGROUP=v2",
            "--env", "PYTHONDONTWRITEBYTECODE=1",
            # Software emulation runs programs several times slower: "fast enough"
            # thresholds of the tests scale; limits and their precision checks do not.
            "--env", f"SANDBOXD_TEST_SLOWDOWN={SLOWDOWN}",
            # Of the per-language tests, one compiled and two interpreted languages.
            "--env", f"SANDBOXD_TEST_LANGUAGES={VM_LANGUAGES}",
            "--cwd", REPO, "--",
            python, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
            f"--junitxml={GUEST_RESULTS}/junit.xml", *selection,
        ]
        print("v2 lane: booting Debian 12's kernel under qemu (cgroup v2, all controllers)",
              flush=True)
        rc = subprocess.call(cmd)
        junit = os.path.join(results, "junit.xml")
        if not os.path.exists(junit):
            print(f"v2 lane: FAILED, no test report came back (guest exit {rc})")
            return rc or 1
        total, failures, errors, skipped = summarise(junit)
    passed = total - failures - errors - skipped
    print(f"v2 lane (cgroup v2 backend, Debian 12 kernel): {passed} passed, "
          f"{failures + errors} failed, {skipped} skipped")
    if total == 0:
        print("v2 lane: FAILED, no test ran")
        return 1
    if failures or errors or skipped or rc:
        return rc or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
