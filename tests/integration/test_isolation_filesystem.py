"""Isolation, filesystem: what a box can see, read and write (SPEC "Isolation", mounts.py).

Each test runs one hostile program that prints one `check:OK` / `check:FAIL detail`
line per attempt; the test asserts every line by name, so a failure names the promise
that broke.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from sandboxd.jail.mounts import DEVICES
from sandboxd.model import Status
from tests.integration.hostile import assert_checks, c_program

# The Python programs' prelude: the same line protocol as programs/isolation_checks.h.
PY_PRELUDE = r'''
import errno, os, sys

def ok(name):
    print(f"{name}:OK", flush=True)

def fail(name, detail):
    print(f"{name}:FAIL {detail}", flush=True)

def check(name, cond, detail=""):
    ok(name) if cond else fail(name, detail)

def expect_errno(name, fn, *wanted):
    """fn() must raise OSError with one of the `wanted` errnos."""
    try:
        r = fn()
    except OSError as e:
        if e.errno in wanted:
            ok(name)
        else:
            fail(name, f"errno={errno.errorcode.get(e.errno, e.errno)} want "
                       + "|".join(errno.errorcode[w] for w in wanted))
    else:
        fail(name, f"succeeded: {r!r}")

def write_file(path, data=b"x"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)

def read_file(path, n=-1):
    with open(path, "rb") as f:
        return f.read(n)
'''

# The /etc every box gets from mounts.py, besides the host files a rootfs lists.
SYNTHESIZED_ETC = {"passwd", "group", "hosts", "hostname", "nsswitch.conf"}
SYNTHESIZED_USERS = {"root", "sandbox", "nobody"}


def py_program(body: str) -> str:
    return PY_PRELUDE + body


# ------------------------------------------------------------------------ host files

# This checkout's own files (wherever it lives) are host files too.
PROJECT_FILE = str(Path(__file__).resolve().parents[2] / "pyproject.toml")
HOST_PATHS = ["/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/sudoers", "/root", "/work",
              PROJECT_FILE, "/home", "/var/log", "/var/lib", "/run", "/boot",
              "/sys", "/mnt", "/srv", "/opt"]


async def test_host_paths_absent_or_unreadable(execute):
    source = py_program(r'''
for path in sys.stdin.read().split():
    expect_errno(f"hidden={path}", lambda: os.stat(path), errno.ENOENT, errno.EACCES)
    expect_errno(f"unreadable={path}", lambda: read_file(path), errno.ENOENT, errno.EACCES)
''')
    result = await execute("python3", source, stdin="\n".join(HOST_PATHS))
    assert_checks(result, [f"{kind}={p}" for p in HOST_PATHS for kind in ("hidden", "unreadable")])


async def test_etc_holds_only_synthesized_and_listed_files(execute, registry):
    listed = {Path(b.target).name for b in registry["python3"].rootfs.binds
              if b.target.startswith("/etc/")}
    listed |= {Path(link).name for link, _ in registry["python3"].rootfs.symlinks
               if link.startswith("/etc/")}
    source = py_program(r'''
print("etc=" + ",".join(sorted(os.listdir("/etc"))))
''')
    result = await execute("python3", source)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == "etc=" + ",".join(sorted(SYNTHESIZED_ETC | listed)) + "\n"


async def test_proc_1_is_the_box_init_not_the_host_init(execute):
    host_cmdline = Path("/proc/1/cmdline").read_bytes()
    source = py_program(r'''
host_cmdline = bytes.fromhex(input())
cmdline = read_file("/proc/1/cmdline")
check("proc1_cmdline_not_host_init", cmdline != host_cmdline, cmdline)
status = dict(line.split(":\t", 1) for line in read_file("/proc/1/status").decode().splitlines())
check("proc1_is_its_own_pidns_init", status["NSpid"].split() == ["1"], status["NSpid"])
# The box's init is not dumpable (stage.py): no environ, memory, fds or root of it.
expect_errno("proc1_environ", lambda: read_file("/proc/1/environ"), errno.EACCES)
expect_errno("proc1_mem", lambda: read_file("/proc/1/mem"), errno.EACCES)
expect_errno("proc1_root", lambda: os.listdir("/proc/1/root/"), errno.EACCES)
expect_errno("proc1_fds", lambda: os.listdir("/proc/1/fd"), errno.EACCES)
# fd 3 of init is its report pipe to the supervisor: writing into it would forge a verdict.
expect_errno("proc1_report_pipe", lambda: os.open("/proc/1/fd/3", os.O_WRONLY), errno.EACCES)
''')
    result = await execute("python3", source, stdin=host_cmdline.hex() + "\n")
    assert_checks(result, ["proc1_cmdline_not_host_init", "proc1_is_its_own_pidns_init",
                           "proc1_environ", "proc1_mem", "proc1_root", "proc1_fds",
                           "proc1_report_pipe"])


async def test_proc_lists_only_the_box_processes(execute):
    # The program (PID 2) forks 3 children blocked on a pipe, then lists /proc: exactly
    # init (1), itself and those 3 may appear; the test process must not.
    source = c_program(r'''
int main(void) {
    long test_pid;
    if (scanf("%ld", &test_pid) != 1) return 2;
    if (getpid() == 2) ok("program_is_pid_2"); else fail("program_is_pid_2", "pid=%d", getpid());
    int p[2];
    if (pipe(p)) return 3;
    pid_t kids[3];
    for (int i = 0; i < 3; i++) {
        kids[i] = fork();
        if (kids[i] == 0) { char c; close(p[1]); read(p[0], &c, 1); _exit(0); }
        if (kids[i] < 0) { fail("fork", "errno=%s", errname(errno)); return 4; }
    }
    int expected[5] = {1, getpid(), kids[0], kids[1], kids[2]}, seen[5] = {0};
    char extra[512] = "";
    DIR *d = opendir("/proc");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || end == e->d_name) continue;
        int known = 0;
        for (int i = 0; i < 5; i++) if (pid == expected[i]) { seen[i] = 1; known = 1; }
        if (!known && strlen(extra) < 480) sprintf(extra + strlen(extra), " %ld", pid);
    }
    closedir(d);
    if (extra[0] == '\0') ok("no_foreign_pids"); else fail("no_foreign_pids", "saw%s", extra);
    int all = seen[0] && seen[1] && seen[2] && seen[3] && seen[4];
    if (all) ok("own_pids_listed");
    else fail("own_pids_listed", "seen 1:%d self:%d kids:%d%d%d", seen[0], seen[1], seen[2],
              seen[3], seen[4]);
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld", test_pid);
    EXPECT_ERRNO("test_process_invisible", access(path, F_OK), ENOENT, 0);
    EXPECT_ERRNO("test_process_unsignalable", kill((pid_t)test_pid, 0), ESRCH, 0);
    close(p[1]);
    for (int i = 0; i < 3; i++) waitpid(kids[i], NULL, 0);
    return 0;
}
''')
    result = await execute("c", source, stdin=f"{os.getpid()}\n")
    assert_checks(result, ["program_is_pid_2", "no_foreign_pids", "own_pids_listed",
                           "test_process_invisible", "test_process_unsignalable"])


# ------------------------------------------------------------------------ writes

async def test_read_only_paths_refuse_writes(execute):
    source = py_program(r'''
RO = (errno.EROFS, errno.EACCES)
for d in ("/", "/usr", "/usr/bin", "/usr/lib", "/etc", "/bin", "/lib", "/dev"):
    expect_errno(f"create_in={d}", lambda: write_file(os.path.join(d, "isolation-probe")), *RO)
    expect_errno(f"mkdir_in={d}", lambda: os.mkdir(os.path.join(d, "isolation-dir")), *RO)
for f in ("/etc/passwd", "/etc/hosts", "/etc/ld.so.cache", "/usr/bin/python3"):
    expect_errno(f"overwrite={f}", lambda: os.open(f, os.O_WRONLY), *RO)
    expect_errno(f"unlink={f}", lambda: os.unlink(f), *RO)
    expect_errno(f"rename={f}", lambda: os.rename(f, f + ".old"), *RO)
# /var/tmp: no /var in the box at all, and none can be made.
expect_errno("create_in=/var/tmp", lambda: write_file("/var/tmp/isolation-probe"),
             errno.EROFS, errno.EACCES, errno.ENOENT)
expect_errno("mkdir=/var", lambda: os.mkdir("/var"), *RO)
''')
    result = await execute("python3", source)
    names = [f"{k}={d}" for d in ("/", "/usr", "/usr/bin", "/usr/lib", "/etc", "/bin", "/lib",
                                  "/dev") for k in ("create_in", "mkdir_in")]
    names += [f"{k}={f}" for f in ("/etc/passwd", "/etc/hosts", "/etc/ld.so.cache",
                                   "/usr/bin/python3") for k in ("overwrite", "unlink", "rename")]
    assert_checks(result, names + ["create_in=/var/tmp", "mkdir=/var"])


async def test_box_tmp_and_dev_shm_are_writable(execute):
    source = py_program(r'''
check("cwd_is_box", os.getcwd() == "/box", os.getcwd())
for d in ("/box", "/tmp", "/dev/shm"):
    path = os.path.join(d, "isolation-probe")
    try:
        write_file(path, b"hello " + d.encode())
        os.mkdir(path + ".d")
        data = read_file(path)
        os.unlink(path)
        os.rmdir(path + ".d")
    except OSError as e:
        fail(f"writable={d}", f"errno={errno.errorcode.get(e.errno)}")
    else:
        check(f"writable={d}", data == b"hello " + d.encode(), data)
''')
    result = await execute("python3", source)
    assert_checks(result, ["cwd_is_box", "writable=/box", "writable=/tmp", "writable=/dev/shm"])


async def test_tmp_filling_stops_at_the_disk_cap(execute, config):
    # One cap (default 64 MiB) for /box, /tmp and /dev/shm together: fill /tmp until
    # ENOSPC, then /dev/shm and /box are full too. The program handles ENOSPC itself and
    # exits 0, so the verdict is its own.
    cap = config.sandbox.disk_limit_mb << 20
    source = py_program(r'''
chunk = b"\0" * (1 << 20)
written, err = 0, None
fd = os.open("/tmp/fill", os.O_WRONLY | os.O_CREAT, 0o600)
while True:
    try:
        n = os.write(fd, chunk)
    except OSError as e:
        err = e.errno
        break
    written += n
os.close(fd)
print(f"written={written}")
check("tmp_fill_errno", err == errno.ENOSPC, errno.errorcode.get(err, err))
expect_errno("dev_shm_shares_the_cap", lambda: write_file("/dev/shm/more", b"y" * 65536),
             errno.ENOSPC)
expect_errno("box_shares_the_cap", lambda: write_file("/box/more", b"y" * 65536), errno.ENOSPC)
os.unlink("/tmp/fill")
check("space_back_after_unlink", write_file("/dev/shm/more", b"y" * 65536) == 65536)
''')
    result = await execute("python3", source)
    assert_checks(result, ["tmp_fill_errno", "dev_shm_shares_the_cap", "box_shares_the_cap",
                           "space_back_after_unlink"])
    assert result.exit_code == 0
    written = int(result.stdout.split("written=")[1].split()[0])
    assert 50 << 20 <= written <= cap, f"wrote {written} bytes to /tmp, cap is {cap}"


async def test_symlinks_to_host_paths_read_nothing(execute, tmp_path):
    # A secret file on the host, then links from the box's /tmp to it and to other host
    # paths: each must resolve inside the box's own root, where none of them exists.
    secret = secrets.token_hex(16)
    host_file = tmp_path / "secret.txt"
    host_file.write_text(secret)
    host_file.chmod(0o644)
    targets = [str(host_file), "/etc/shadow", "/root/.bashrc", PROJECT_FILE,
               "/proc/1/root/etc/shadow", "/proc/1/cwd/pyproject.toml",
               "/proc/self/root/../../../etc/shadow", "/home", "/var/log/README"]
    source = py_program(r'''
for i, target in enumerate(sys.stdin.read().split()):
    link = f"/tmp/link{i}"
    os.symlink(target, link)
    expect_errno(f"link={target}", lambda: read_file(link), errno.ENOENT, errno.EACCES)
    expect_errno(f"listdir={target}", lambda: os.listdir(link),
                 errno.ENOENT, errno.EACCES, errno.ENOTDIR)
''')
    result = await execute("python3", source, stdin="\n".join(targets))
    assert_checks(result, [f"{k}={t}" for t in targets for k in ("link", "listdir")])
    assert secret not in result.stdout + result.stderr


# ------------------------------------------------------------------------ devices

async def test_dev_holds_only_the_harmless_devices(execute):
    expected = sorted({*DEVICES, "fd", "stdin", "stdout", "stderr", "shm"})
    assert set(expected) == {"null", "zero", "full", "random", "urandom", "fd", "stdin",
                             "stdout", "stderr", "shm"}
    source = py_program(r'''
print("dev=" + ",".join(sorted(os.listdir("/dev"))), flush=True)
for name in ("tty", "console", "mem", "kmem", "port", "kmsg", "sda", "vda", "ptmx", "kvm",
             "fuse", "net/tun", "loop0", "loop-control", "hwrng", "cpu/0/msr", "autofs"):
    expect_errno(f"absent=/dev/{name}", lambda: os.open(f"/dev/{name}", os.O_RDONLY),
                 errno.ENOENT)
check("dev_zero_reads_zeros", read_file("/dev/zero", 16) == b"\0" * 16)
check("dev_urandom_reads", len(read_file("/dev/urandom", 16)) == 16)
expect_errno("dev_full_is_full", lambda: write_file("/dev/full"), errno.ENOSPC)
check("dev_null_swallows", write_file("/dev/null") == 1)
''')
    result = await execute("python3", source)
    names = [f"absent=/dev/{n}" for n in (
        "tty", "console", "mem", "kmem", "port", "kmsg", "sda", "vda", "ptmx", "kvm", "fuse",
        "net/tun", "loop0", "loop-control", "hwrng", "cpu/0/msr", "autofs")]
    assert_checks(result, names + ["dev_zero_reads_zeros", "dev_urandom_reads",
                                   "dev_full_is_full", "dev_null_swallows"])
    assert result.stdout.splitlines()[0] == "dev=" + ",".join(expected)


async def test_mknod_fails(execute):
    source = c_program(r'''
#include <sys/sysmacros.h>
int main(void) {
    EXPECT_ERRNO("mknod_char_mem", mknod("/tmp/mem", S_IFCHR | 0666, makedev(1, 1)), EPERM, 0);
    EXPECT_ERRNO("mknod_char_null", mknod("/box/null", S_IFCHR | 0666, makedev(1, 3)), EPERM, 0);
    EXPECT_ERRNO("mknod_block_vda", mknod("/tmp/vda", S_IFBLK | 0666, makedev(254, 0)), EPERM, 0);
    EXPECT_ERRNO("mknodat_char_kmsg", mknodat(AT_FDCWD, "/dev/shm/kmsg", S_IFCHR | 0666,
                                              makedev(1, 11)), EPERM, 0);
    EXPECT_ERRNO("no_node_left", access("/tmp/mem", F_OK), ENOENT, 0);
    return 0;
}
''')
    result = await execute("c", source)
    assert_checks(result, ["mknod_char_mem", "mknod_char_null", "mknod_block_vda",
                           "mknodat_char_kmsg", "no_node_left"])


async def test_sys_and_cgroupfs_absent(execute):
    source = py_program(r'''
for path in ("/sys", "/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/kernel"):
    expect_errno(f"absent={path}", lambda: os.stat(path), errno.ENOENT)
''')
    result = await execute("python3", source)
    assert_checks(result, ["absent=/sys", "absent=/sys/fs/cgroup",
                           "absent=/sys/fs/cgroup/memory", "absent=/sys/kernel"])


# ------------------------------------------------------------------------ identity

async def test_hostname_is_sandbox(execute):
    source = py_program(r'''
import socket
check("gethostname", socket.gethostname() == "sandbox", socket.gethostname())
check("uname_nodename", os.uname().nodename == "sandbox", os.uname().nodename)
check("etc_hostname", read_file("/etc/hostname") == b"sandbox\n", read_file("/etc/hostname"))
check("proc_hostname", read_file("/proc/sys/kernel/hostname") == b"sandbox\n")
''')
    result = await execute("python3", source)
    assert_checks(result, ["gethostname", "uname_nodename", "etc_hostname", "proc_hostname"])


async def test_box_identity_and_synthesized_passwd(execute):
    host_users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()
                  if line and not line.startswith("#")}
    host_only = sorted(host_users - SYNTHESIZED_USERS)
    assert host_only, "the host has no user of its own to look for"
    source = py_program(r'''
host_only = sys.stdin.read().split()
ids = (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
check("ids_are_1000", ids == (1000,) * 4, ids)
check("res_ids_are_1000", os.getresuid() + os.getresgid() == (1000,) * 6,
      (os.getresuid(), os.getresgid()))
check("no_supplementary_groups", os.getgroups() == [], os.getgroups())
users = [line.split(":")[0] for line in read_file("/etc/passwd").decode().splitlines()]
check("passwd_is_synthesized", sorted(users) == ["nobody", "root", "sandbox"], users)
leaked = [u for u in host_only if u in users]
check("no_host_users", not leaked, leaked)
import pwd
check("getpwuid_1000_is_sandbox", pwd.getpwuid(1000).pw_name == "sandbox")
# Two ids are mapped, each to its own unprivileged host id: 0 (the box's keeper: its
# init) and 1000 (the program). Host root does not exist here.
for m in ("uid_map", "gid_map"):
    rows = sorted(r.split() for r in read_file(f"/proc/self/{m}").decode().splitlines())
    check(m, [(r[0], r[2]) for r in rows] == [("0", "1"), ("1000", "1")]
          and "0" not in (rows[0][1], rows[1][1]) and rows[0][1] != rows[1][1], rows)
''')
    result = await execute("python3", source, stdin="\n".join(host_only))
    assert_checks(result, ["ids_are_1000", "res_ids_are_1000", "no_supplementary_groups",
                           "passwd_is_synthesized", "no_host_users", "getpwuid_1000_is_sandbox",
                           "uid_map", "gid_map"])


SETUID_BINARIES = ["/usr/bin/su", "/usr/bin/passwd", "/usr/bin/newgrp", "/usr/bin/chsh",
                   "/usr/bin/chfn", "/usr/bin/gpasswd", "/usr/bin/mount", "/usr/bin/sudo"]


async def test_setuid_binaries_do_not_gain_privileges(execute):
    # vfork + execve a setuid-root binary, stop it at once and read its credentials in
    # /proc: with nosuid mounts, no_new_privs and an unmapped root, euid stays 1000.
    present = [b for b in SETUID_BINARIES
               if os.path.exists(b) and os.stat(b).st_mode & stat.S_ISUID
               and os.stat(b).st_uid == 0]
    if not present:
        pytest.skip("no setuid-root binary on this host")
    source = c_program(r'''
static void own_status(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    int nnp = 0, seccomp = 0, caps_zero = 1, caps = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strcmp(line, "NoNewPrivs:\t1\n")) nnp = 1;
        if (!strcmp(line, "Seccomp:\t2\n")) seccomp = 1;
        if (!strncmp(line, "Cap", 3)) {
            caps++;
            if (strcmp(strchr(line, '\t'), "\t0000000000000000\n")) {
                caps_zero = 0;
                fputs(line, stdout);
            }
        }
    }
    fclose(f);
    if (nnp) ok("no_new_privs"); else fail("no_new_privs", "NoNewPrivs is not 1");
    if (seccomp) ok("seccomp_filter"); else fail("seccomp_filter", "Seccomp is not 2");
    if (caps_zero && caps == 5) ok("no_capabilities"); else fail("no_capabilities", "see above");
}

static void try_setuid_binary(const char *bin) {
    char name[128], path[64], line[256], uid[256] = "", capeff[256] = "", comm[256] = "";
    snprintf(name, sizeof name, "setuid=%s", bin);
    int p[2];
    if (pipe(p)) { fail(name, "pipe"); return; }
    pid_t pid = vfork();
    if (pid == 0) {  /* stdin: a pipe nobody writes, so the binary blocks if it prompts */
        dup2(p[0], 0);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    /* vfork returned: the child has completed execve, its credentials are final. Stop it
     * there; should it have exited already, WNOWAIT keeps the zombie's status readable. */
    kill(pid, SIGSTOP);
    siginfo_t si;
    waitid(P_PID, pid, &si, WSTOPPED | WEXITED | WNOWAIT);
    int st;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "Uid:", 4)) snprintf(uid, sizeof uid, "%s", line);
        if (!strncmp(line, "CapEff:", 7)) snprintf(capeff, sizeof capeff, "%s", line);
        if (!strncmp(line, "Name:", 5)) snprintf(comm, sizeof comm, "%s", line);
    }
    if (f) fclose(f);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    close(p[0]); close(p[1]);
    const char *base = strrchr(bin, '/') + 1;
    if (!strstr(comm, base))
        fail(name, "not executed (%s)", comm);
    else if (strcmp(uid, "Uid:\t1000\t1000\t1000\t1000")
             || strcmp(capeff, "CapEff:\t0000000000000000"))
        fail(name, "%s %s", uid, capeff);
    else
        ok(name);
}

int main(void) {
    own_status();
    char bin[256];
    while (scanf("%255s", bin) == 1) try_setuid_binary(bin);
    return 0;
}
''')
    result = await execute("c", source, stdin="\n".join(present) + "\n")
    assert_checks(result, ["no_new_privs", "seccomp_filter", "no_capabilities"]
                  + [f"setuid={b}" for b in present])
