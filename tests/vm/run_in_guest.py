#!/usr/bin/env python3
"""Run one command inside a throw-away qemu guest (the "VM lane").

The guest boots Debian 12's stock kernel with cgroup v2 mounted at
/sys/fs/cgroup (all controllers), sees the host's root filesystem read-only at
the same paths (virtio-9p) with a tmpfs overlay for writes, runs the command as
root, and powers off.  The command's output is streamed live; its exit status
becomes ours.

    python3 tests/vm/run_in_guest.py [--timeout S] [--env K=V ...] --cwd DIR -- CMD ARGS...

Exit status: the command's, or 124 if the guest timed out, or 125 if the guest
never reported a status (boot failure, crash; see the console output).

Plain stdlib on purpose: it must run before any venv exists.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("VM_CACHE_DIR") or os.path.join(REPO, ".cache", "vm")
GUEST_RESULTS = "/run/vm/results"      # where the results share appears in the guest
GUEST_BUSYBOX = "/run/vm/busybox"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "TERM": "dumb",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",          # output goes through a pipe; keep it live
    "VM_RESULTS_DIR": GUEST_RESULTS,
    "SANDBOXD_VM_LANE": "1",
}
HOST_ENV = "/usr/bin/env" if os.path.exists("/usr/bin/env") else (shutil.which("env") or "env")
DEFAULT_CPU = "max"
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125


def log(msg: str) -> None:
    sys.stderr.write(f"run_in_guest: {msg}\n")
    sys.stderr.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run CMD inside a qemu guest with cgroup v2 (Debian 12 kernel).",
        usage="%(prog)s [options] --cwd DIR -- CMD [ARGS...]")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds for boot + command; the guest is killed after (default 900)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="set K=V for the command (repeatable); a bare K copies the host's value")
    p.add_argument("--cwd", default=os.getcwd(), help="directory to run CMD in (default: .)")
    p.add_argument("--mem", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    p.add_argument("--smp", type=int, default=min(2, os.cpu_count() or 1),
                   help="guest CPUs (default min(2, host CPUs))")
    p.add_argument("--results-dir", metavar="HOSTDIR",
                   help="host directory shared as $VM_RESULTS_DIR and kept afterwards "
                        "(default: a temp dir that is removed)")
    p.add_argument("--cgroup", metavar="NAME",
                   help="enable all controllers at the root and run CMD in the child cgroup "
                        "/NAME (like a systemd unit) instead of in the root cgroup")
    p.add_argument("--cgroup-v1", metavar="HIERARCHIES",
                   help="boot with cgroup v1 instead of v2: the hierarchies to mount below "
                        "/sys/fs/cgroup, '/'-separated, co-mounted controllers comma-separated "
                        "(e.g. cpu,cpuacct/memory/pids/freezer); cgroup2 stays at "
                        "/sys/fs/cgroup/unified with no controllers (a systemd hybrid host)")
    p.add_argument("--cpu", default=DEFAULT_CPU,
                   help=f"qemu -cpu model (default {DEFAULT_CPU})")
    p.add_argument("--machine", default="q35",
                   help="qemu -machine type (default q35; boots ~0.4 s faster than pc under TCG)")
    p.add_argument("--tcg-thread", choices=("single", "multi"), default="single",
                   help="TCG threading (default single: multi is faster on an idle host "
                        "but JIT runtimes such as java crash now and then)")
    p.add_argument("--accel", default="tcg",
                   help="qemu accelerator (default tcg; kvm does not work on the dev VM)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show kernel messages and the qemu command line")
    p.add_argument("--no-build", action="store_true", help="do not run build_guest.sh")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = p.parse_args(argv)
    if a.cmd and a.cmd[0] == "--":
        a.cmd = a.cmd[1:]
    if not a.cmd:
        p.error("no command given (put it after --)")
    if "=" in a.cmd[0]:
        p.error("CMD must not contain '=' (env(1) would take it for a variable); use --env")
    if a.timeout <= 0:
        p.error("--timeout must be positive")
    if a.cgroup_v1 is not None:
        if a.cgroup:
            p.error("--cgroup is for cgroup v2; it cannot be combined with --cgroup-v1")
        if not re.fullmatch(r"[a-z_]+(,[a-z_]+)*(/[a-z_]+(,[a-z_]+)*)*", a.cgroup_v1):
            p.error("--cgroup-v1: expected controllers like cpu,cpuacct/memory/pids/freezer")
    return a


def build_env(pairs: list[str]) -> dict[str, str]:
    env = dict(BASE_ENV)
    for item in pairs:
        if "=" in item:
            k, v = item.split("=", 1)
        else:
            k, v = item, os.environ.get(item)
            if v is None:
                continue
        if not k or "\0" in k or "\0" in v:
            raise SystemExit(f"run_in_guest: bad --env {item!r}")
        env[k] = v
    return env


def job_script(cmd: list[str], cwd: str, env: dict[str, str], cgroup: str | None) -> str:
    q = shlex.quote
    lines = ["# generated by tests/vm/run_in_guest.py; run by the guest's stage-2 init",
             "set -u"]
    if cgroup:
        cg = "/sys/fs/cgroup/" + cgroup.strip("/")
        lines += [
            "ctl=$(cat /sys/fs/cgroup/cgroup.controllers)",
            "for c in $ctl; do echo +$c > /sys/fs/cgroup/cgroup.subtree_control || exit 125; done",
            f"mkdir -p {q(cg)} && echo $$ > {q(cg + '/cgroup.procs')} || exit 125",
        ]
    lines += [
        f"cd {q(cwd)} || {{ echo run_in_guest: cannot cd to {q(cwd)} in the guest; exit 125; }}",
        # The host's env(1), not busybox's: busybox would run its own applets
        # (sh, unshare, ...) in place of the real programs of the same name.
        "exec " + " ".join([q(HOST_ENV), "-i"]
                           + [q(f"{k}={v}") for k, v in env.items()]
                           + [q(c) for c in cmd]),
    ]
    return "\n".join(lines) + "\n"


def qemu_argv(a: argparse.Namespace, results: str) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    loglevel = "7" if a.verbose else "3"
    append = " ".join([
        "console=ttyS0", "panic=-1", "oops=panic", f"loglevel={loglevel}",
        # TCG: the CPU bug mitigations (KPTI especially) make every syscall far
        # slower and change nothing the tests look at.
        "mitigations=off", "random.trust_cpu=on", "tsc=reliable", "no_timer_check",
    ] + (
        # a pure cgroup v2 host, like a modern systemd distribution
        ["systemd.unified_cgroup_hierarchy=1", "cgroup_no_v1=all"] if a.cgroup_v1 is None
        # or v1 hierarchies, mounted by the guest's init (build_guest.sh)
        else [f"vm.cgroup=v1:{a.cgroup_v1}"]
    ) + ([f"vm.9pcache={os.environ['VM_9P_CACHE']}"] if os.environ.get("VM_9P_CACHE") else []))
    # The ELF vmlinux (PVH boot) skips the ~2.7 s xz decompression of the bzImage.
    kernel = os.path.join(CACHE, "vmlinux")
    if not os.path.exists(kernel):
        kernel = os.path.join(CACHE, "vmlinuz")
    accel = a.accel
    if accel == "tcg":
        # thread=single by default: with multi-threaded TCG, JIT runtimes (java,
        # javac) crash now and then with SIGSEGV/SIGILL in freshly compiled code
        # (cross-modifying code between vCPUs; ~3/40 javac runs on QEMU 7.2,
        # same with -cpu qemu64).  Round-robin TCG showed 0/40 and, on a 2-core
        # host that is busy anyway, costs little.
        accel += f",thread={a.tcg_thread}"
    return [
        qemu, "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", a.machine, "-accel", accel, "-cpu", a.cpu,
        "-smp", str(a.smp), "-m", str(a.mem),
        "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
        "-kernel", kernel,
        "-initrd", os.path.join(CACHE, "initrd.img"),
        "-append", append,
        "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
        "-device", "virtio-rng-pci",
    ]


def stream(proc: subprocess.Popen, deadline: float) -> bool:
    """Copy qemu's stdout (the guest serial console) to ours until qemu exits.

    Returns False if the deadline passed first."""
    out = sys.stdout.buffer
    fd = proc.stdout.fileno()
    carry = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data = carry + chunk
        carry = b""
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        out.write(data.replace(b"\r\n", b"\n"))
        out.flush()
    if carry:                       # a lone CR at the very end: end the line
        out.write(b"\n")
        out.flush()
    # stdout closed: qemu is exiting; wait for it, still bounded by the deadline.
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if not a.no_build:
        r = subprocess.run(["sh", os.path.join(HERE, "build_guest.sh")])
        if r.returncode != 0:
            log("build_guest.sh failed")
            return EXIT_NO_STATUS

    cwd = os.path.abspath(a.cwd)
    if a.results_dir:
        results = os.path.abspath(a.results_dir)
        os.makedirs(results, exist_ok=True)
        for name in ("exit_code", "exit_code.tmp", "job.sh", "output.log",
                     "dmesg.log", "init-error.txt"):
            try:
                os.unlink(os.path.join(results, name))
            except FileNotFoundError:
                pass
        keep = True
    else:
        results = tempfile.mkdtemp(prefix="sandboxd-vm-")
        keep = False
    os.chmod(results, 0o777)

    try:
        with open(os.path.join(results, "job.sh"), "w") as f:
            f.write(job_script(a.cmd, cwd, build_env(a.env), a.cgroup))
        argv_q = qemu_argv(a, results)
        if a.verbose:
            log("qemu: " + " ".join(shlex.quote(x) for x in argv_q))
        t0 = time.monotonic()
        deadline = t0 + a.timeout
        # SIGTERM/SIGHUP (make or CI giving up) must not leave qemu running.
        def _stop(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, _stop)
        proc = subprocess.Popen(argv_q, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                start_new_session=True)
        try:
            finished = stream(proc, deadline)
        except KeyboardInterrupt:
            log("interrupted; killing the guest")
            finished = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - t0
        if finished is None:
            return 130
        if not finished:
            log(f"TIMEOUT: the guest did not finish within {a.timeout:g} s; qemu was killed "
                f"(command: {shlex.join(a.cmd)})")
            return EXIT_TIMEOUT
        try:
            with open(os.path.join(results, "exit_code")) as f:
                rc = int(f.read().strip())
        except (OSError, ValueError):
            err = ""
            try:
                with open(os.path.join(results, "init-error.txt")) as f:
                    err = ": " + f.read().strip()
            except OSError:
                pass
            log(f"the guest exited (qemu status {proc.returncode}) without reporting the "
                f"command's exit status{err}")
            return EXIT_NO_STATUS
        if a.verbose:
            log(f"guest done in {elapsed:.1f} s, command exit status {rc}")
        return rc if 0 <= rc <= 255 else EXIT_NO_STATUS
    finally:
        if not keep:
            shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
