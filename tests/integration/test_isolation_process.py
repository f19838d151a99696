"""Isolation, processes and syscalls (SPEC "Isolation", stage.py, seccomp.py).

Each test runs one hostile program that prints one `check:OK` / `check:FAIL detail`
line per attempt; the test asserts every line by name, so a failure names the promise
that broke. Calls the allow-list denies answer EPERM (its default action), clone3
answers ENOSYS, file locks ENOLCK; calls no honest program makes kill the process
with SIGSYS.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandboxd.model import Status
from tests.conftest import SLOWDOWN
from tests.integration.hostile import assert_checks, c_program, checks, describe

SIGSYS = signal.SIGSYS.value


def host_pids_with(marker: str) -> list[int]:
    """Host processes whose command line contains `marker` (zombies have none: ignored)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def host_ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


async def wait_for_host_process(marker: str, tasks: list[asyncio.Task],
                                timeout_s: float = 20.0) -> int:
    """The host pid of the one process whose argv holds `marker`, once it exists."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = host_pids_with(marker)
        if pids:
            assert len(pids) == 1, f"several processes carry {marker}: {pids}"
            return pids[0]
        for t in tasks:
            if t.done():
                raise AssertionError(f"a box ended before {marker} showed up: "
                                     f"{describe(t.result())}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no process with {marker} within {timeout_s}s")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------- signals and pids

async def test_kill_everything_inside_hurts_nothing_outside(execute, sandbox):
    # Host processes running as the very host uids the box slots map to (the best
    # targets if the PID namespace leaked), plus one as root.
    uids = [sandbox.host_id(slot) for slot in range(sandbox.slot_count)]
    sleepers = [subprocess.Popen(["sleep", "60"], user=uid, group=uid) for uid in uids]
    sleepers.append(subprocess.Popen(["sleep", "60"]))
    forkserver = sandbox._forkserver.process.pid
    try:
        source = c_program(r"""
int main(void) {
    /* Nobody else is in the box (init is exempt from kill(-1)): nobody to signal. */
    EXPECT_ERRNO("kill_minus_1", kill(-1, SIGKILL), ESRCH, 0);
    long pid;
    char name[64];
    while (scanf("%ld", &pid) == 1) {
        snprintf(name, sizeof name, "kill_host_pid_%ld", pid);
        EXPECT_ERRNO(name, kill((pid_t)pid, SIGKILL), ESRCH, 0);
    }
    /* The box's init ignores every signal sent from inside (the kernel protects a
     * namespace init): it must still report this program's exact exit status. */
    for (int sig = 1; sig < 32; sig++) if (sig != SIGKILL) kill(1, sig);
    kill(1, SIGKILL);
    ok("after_signalling_init");
    return 3;
}
""")
        targets = [p.pid for p in sleepers] + [forkserver, os.getpid(), os.getppid()]
        # Pids 1 and 2 exist inside the box too (its init and the program itself): a host
        # process with such a number (the VM lane's init is our parent) is no target.
        targets = [p for p in targets if p > 2]
        result = await execute("c", source, stdin="\n".join(map(str, targets)) + "\n")
        assert result.status is Status.RUNTIME_ERROR, describe(result)
        assert result.exit_code == 3 and result.signal is None, describe(result)
        got = checks(result)
        names = ["kill_minus_1", "after_signalling_init"] + [f"kill_host_pid_{p}" for p in targets]
        broken = {n: got.get(n, "<no line printed>") for n in names if got.get(n) != "OK"}
        assert not broken, f"broken promises: {broken}\n{result.stdout}"
        for p in sleepers:
            assert p.poll() is None, f"host sleep {p.pid} (uid {p.args}) died: {p.returncode}"
        assert sandbox.healthy, "the fork server died"
        again = await execute("python3", "print('still serving')")
        assert again.status is Status.ACCEPTED and again.stdout == "still serving\n", again
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


async def test_program_is_pid_2_and_abort_dies_of_sigabrt(execute):
    source = c_program(r"""
int main(void) {
    printf("pid=%d ppid=%d\n", getpid(), getppid());
    fflush(stdout);
    abort();
}
""")
    result = await execute("c", source)
    assert result.stdout == "pid=2 ppid=1\n", describe(result)
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert result.signal == signal.SIGABRT.value and result.exit_code is None, describe(result)


# ------------------------------------------------------------------- syscalls

async def test_ptrace_refused(execute):
    source = c_program(r"""
#include <sys/ptrace.h>
#include <sys/uio.h>
int main(void) {
    EXPECT_ERRNO("ptrace_traceme", ptrace(PTRACE_TRACEME, 0, 0, 0), EPERM, 0);
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    EXPECT_ERRNO("ptrace_attach_child", ptrace(PTRACE_ATTACH, child, 0, 0), EPERM, 0);
    EXPECT_ERRNO("ptrace_seize_child", ptrace(PTRACE_SEIZE, child, 0, 0), EPERM, 0);
    EXPECT_ERRNO("ptrace_attach_init", ptrace(PTRACE_ATTACH, 1, 0, 0), EPERM, 0);
    char buf[8];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    EXPECT_ERRNO("process_vm_readv", process_vm_readv(child, &local, 1, &remote, 1, 0), EPERM, 0);
    EXPECT_ERRNO("process_vm_writev", process_vm_writev(child, &local, 1, &remote, 1, 0), EPERM, 0);
    /* pidfd_getfd is allowed, but init is not dumpable: its report pipe (fd 3) stays its own */
    int pidfd = (int)syscall(SYS_pidfd_open, 1, 0);
    if (pidfd < 0) fail("pidfd_getfd_init", "pidfd_open: errno=%s", errname(errno));
    else EXPECT_ERRNO("pidfd_getfd_init", syscall(SYS_pidfd_getfd, pidfd, 3, 0), EPERM, 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["ptrace_traceme", "ptrace_attach_child", "ptrace_seize_child",
                           "ptrace_attach_init", "process_vm_readv", "process_vm_writev",
                           "pidfd_getfd_init"])


async def test_mount_unshare_setns_refused(execute):
    source = c_program(r"""
#include <sched.h>
#include <sys/mount.h>
#include <linux/mount.h>
int main(void) {
    EXPECT_ERRNO("mount_tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL), EPERM, 0);
    EXPECT_ERRNO("remount_root_rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL), EPERM, 0);
    EXPECT_ERRNO("bind_mount", mount("/box", "/tmp", NULL, MS_BIND, NULL), EPERM, 0);
    EXPECT_ERRNO("umount_proc", umount2("/proc", MNT_DETACH), EPERM, 0);
    EXPECT_ERRNO("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"), EPERM, 0);
    EXPECT_ERRNO("chroot", chroot("/tmp"), EPERM, 0);
    EXPECT_ERRNO("fsopen", syscall(SYS_fsopen, "tmpfs", 0), EPERM, 0);
    EXPECT_ERRNO("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/usr", 1 /* OPEN_TREE_CLONE */),
                 EPERM, 0);
    struct mount_attr attr = {.attr_clr = MOUNT_ATTR_RDONLY};
    EXPECT_ERRNO("mount_setattr_rw", syscall(SYS_mount_setattr, AT_FDCWD, "/usr", 0, &attr,
                                             sizeof attr), EPERM, 0);
    EXPECT_ERRNO("unshare_user", unshare(CLONE_NEWUSER), EPERM, 0);
    EXPECT_ERRNO("unshare_mount", unshare(CLONE_NEWNS), EPERM, 0);
    EXPECT_ERRNO("unshare_net", unshare(CLONE_NEWNET), EPERM, 0);
    EXPECT_ERRNO("unshare_pid", unshare(CLONE_NEWPID), EPERM, 0);
    int fd = open("/proc/self/ns/user", O_RDONLY);
    if (fd < 0) fail("setns_user", "open: errno=%s", errname(errno));
    else EXPECT_ERRNO("setns_user", setns(fd, 0), EPERM, 0);
    fd = open("/proc/self/ns/mnt", O_RDONLY);
    if (fd < 0) fail("setns_mnt", "open: errno=%s", errname(errno));
    else EXPECT_ERRNO("setns_mnt", setns(fd, CLONE_NEWNS), EPERM, 0);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["mount_tmpfs", "remount_root_rw", "bind_mount", "umount_proc",
                           "pivot_root", "chroot", "fsopen", "open_tree", "mount_setattr_rw",
                           "unshare_user", "unshare_mount", "unshare_net", "unshare_pid",
                           "setns_user", "setns_mnt"])


async def test_setuid_root_and_capabilities_refused(execute):
    source = c_program(r"""
#include <grp.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <linux/capability.h>
int main(void) {
    /* EINVAL: uid 0 (like any id but 1000) is not even mapped in the box's user namespace */
    EXPECT_ERRNO("setuid_0", setuid(0), EPERM, EINVAL);
    EXPECT_ERRNO("setgid_0", setgid(0), EPERM, EINVAL);
    EXPECT_ERRNO("setresuid_0", setresuid(0, 0, 0), EPERM, EINVAL);
    EXPECT_ERRNO("setreuid_0", setreuid(0, 0), EPERM, EINVAL);
    EXPECT_ERRNO("setuid_other", setuid(1001), EPERM, EINVAL);
    gid_t root_group = 0;
    EXPECT_ERRNO("setgroups_root", setgroups(1, &root_group), EPERM, 0);
    setfsuid(0);
    int fsuid = setfsuid(-1);
    if (fsuid == 1000) ok("setfsuid_0_ignored"); else fail("setfsuid_0_ignored", "fsuid=%d", fsuid);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{~0u, ~0u, ~0u}, {~0u, ~0u, ~0u}};
    EXPECT_ERRNO("capset_all", syscall(SYS_capset, &hdr, data), EPERM, 0);
    EXPECT_ERRNO("ambient_raise", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0),
                 EPERM, 0);
    EXPECT_ERRNO("no_new_privs_unset", prctl(PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0), EINVAL, 0);
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    if (r == 1000 && e == 1000 && s == 1000) ok("still_1000");
    else fail("still_1000", "uids %d %d %d", r, e, s);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["setuid_0", "setgid_0", "setresuid_0", "setreuid_0", "setuid_other",
                           "setgroups_root", "setfsuid_0_ignored", "capset_all",
                           "ambient_raise", "no_new_privs_unset", "still_1000"])


async def test_syscalls_outside_the_allow_list_refused(execute):
    source = c_program(r"""
#include <linux/keyctl.h>
#include <sys/time.h>
#include <sys/xattr.h>
int main(void) {
    char attr[256] = {0};
    EXPECT_ERRNO("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1),
                 EPERM, 0);
    EXPECT_ERRNO("add_key", syscall(SYS_add_key, "user", "k", "v", 1, KEY_SPEC_PROCESS_KEYRING),
                 EPERM, 0);
    EXPECT_ERRNO("request_key", syscall(SYS_request_key, "user", "k", NULL, 0), EPERM, 0);
    EXPECT_ERRNO("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, 72), EPERM, 0);
    EXPECT_ERRNO("io_uring_setup", syscall(425, 8, attr), EPERM, 0);
    EXPECT_ERRNO("userfaultfd", syscall(323, O_CLOEXEC), EPERM, 0);
    *(unsigned *)(attr + 4) = 128; /* perf_event_attr.size */
    EXPECT_ERRNO("perf_event_open", syscall(SYS_perf_event_open, attr, 0, -1, -1, 0), EPERM, 0);
    EXPECT_ERRNO("kcmp", syscall(SYS_kcmp, getpid(), getpid(), 0, 0, 0), EPERM, 0);
    EXPECT_ERRNO("fanotify_init", syscall(SYS_fanotify_init, 0, 0), EPERM, 0);
    EXPECT_ERRNO("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/usr", attr, attr,
                                               0), EPERM, 0);
    EXPECT_ERRNO("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, attr, O_RDONLY),
                 EPERM, 0);
    EXPECT_ERRNO("syslog_read", syscall(SYS_syslog, 3, attr, sizeof attr), EPERM, 0);
    struct timeval tv = {0, 0};
    EXPECT_ERRNO("settimeofday", settimeofday(&tv, NULL), EPERM, 0);
    EXPECT_ERRNO("setxattr", setxattr("/tmp", "user.x", "y", 1, 0), EPERM, 0);
    EXPECT_ERRNO("vhangup", syscall(SYS_vhangup), EPERM, 0);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["keyctl", "add_key", "request_key", "bpf", "io_uring_setup",
                           "userfaultfd", "perf_event_open", "kcmp", "fanotify_init",
                           "name_to_handle_at", "open_by_handle_at", "syslog_read",
                           "settimeofday", "setxattr", "vhangup"])


async def test_clone3_enosys_and_namespace_clone_flags_refused(execute):
    source = c_program(r"""
#include <sched.h>
#include <linux/sched.h>
static void try_clone(const char *name, unsigned long flags) {
    errno = 0;
    long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    int err = errno;
    if (r == 0) _exit(0);
    if (r > 0) waitpid((pid_t)r, NULL, 0);
    expect_errno(name, r, err, EPERM, 0);
}
int main(void) {
    struct clone_args args = {.exit_signal = SIGCHLD};
    errno = 0;
    long r = syscall(435, &args, sizeof args);
    int err = errno;
    if (r == 0) _exit(0);
    if (r > 0) waitpid((pid_t)r, NULL, 0);
    expect_errno("clone3_enosys", r, err, ENOSYS, 0);
    args.flags = CLONE_NEWUSER;
    errno = 0;
    r = syscall(435, &args, sizeof args);
    err = errno;
    if (r == 0) _exit(0);
    if (r > 0) waitpid((pid_t)r, NULL, 0);
    expect_errno("clone3_newuser_enosys", r, err, ENOSYS, 0);
    try_clone("clone_newuser_newnet", CLONE_NEWUSER | CLONE_NEWNET);
    try_clone("clone_newuser", CLONE_NEWUSER);
    try_clone("clone_newns", CLONE_NEWNS);
    try_clone("clone_newpid", CLONE_NEWPID);
    try_clone("clone_newnet", CLONE_NEWNET);
    try_clone("clone_newuts", CLONE_NEWUTS);
    try_clone("clone_newipc", CLONE_NEWIPC);
    try_clone("clone_newcgroup", CLONE_NEWCGROUP);
    /* the control: a plain fork still works */
    pid_t child = fork();
    if (child == 0) _exit(7);
    int st = 0;
    if (child > 0 && waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 7)
        ok("plain_fork_works");
    else
        fail("plain_fork_works", "fork=%d errno=%s", child, errname(errno));
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["clone3_enosys", "clone3_newuser_enosys", "clone_newuser_newnet",
                           "clone_newuser", "clone_newns", "clone_newpid", "clone_newnet",
                           "clone_newuts", "clone_newipc", "clone_newcgroup", "plain_fork_works"])


async def test_personality_only_default_or_query(execute):
    source = c_program(r"""
#include <sys/personality.h>
int main(void) {
    EXPECT_ERRNO("per_linux32", syscall(SYS_personality, PER_LINUX32), EPERM, 0);
    EXPECT_ERRNO("addr_no_randomize", syscall(SYS_personality, ADDR_NO_RANDOMIZE), EPERM, 0);
    EXPECT_ERRNO("read_implies_exec", syscall(SYS_personality, READ_IMPLIES_EXEC), EPERM, 0);
    EXPECT_ERRNO("linux32_high_bits", syscall(SYS_personality, (1UL << 32) | PER_LINUX32),
                 EPERM, 0);
    long cur = syscall(SYS_personality, 0xffffffffUL);
    if (cur == 0) ok("query_works");
    else fail("query_works", "ret=%ld errno=%s", cur, errname(errno));
    long set = syscall(SYS_personality, 0UL);
    if (set == 0) ok("default_works");
    else fail("default_works", "ret=%ld errno=%s", set, errname(errno));
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["per_linux32", "addr_no_randomize", "read_implies_exec",
                           "linux32_high_bits", "query_works", "default_works"])


LOCKS = r"""
#include <sys/file.h>
static struct flock rdlock(void) {
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    return fl;
}
"""


async def test_file_locks_on_shared_libc_answer_enolck(execute):
    source = c_program(LOCKS + r"""
int main(void) {
    int fd = open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY);
    if (fd < 0) { fail("open_libc", "errno=%s", errname(errno)); return 0; }
    EXPECT_ERRNO("flock_ex", flock(fd, LOCK_EX), ENOLCK, 0);
    EXPECT_ERRNO("flock_sh_nb", flock(fd, LOCK_SH | LOCK_NB), ENOLCK, 0);
    struct flock fl = rdlock();
    EXPECT_ERRNO("fcntl_setlk", fcntl(fd, F_SETLK, &fl), ENOLCK, 0);
    fl = rdlock();
    EXPECT_ERRNO("fcntl_setlkw", fcntl(fd, F_SETLKW, &fl), ENOLCK, 0);
    fl = rdlock();
    EXPECT_ERRNO("fcntl_ofd_setlk", fcntl(fd, F_OFD_SETLK, &fl), ENOLCK, 0);
    fl = rdlock();
    EXPECT_ERRNO("fcntl_ofd_setlkw", fcntl(fd, F_OFD_SETLKW, &fl), ENOLCK, 0);
    EXPECT_ERRNO("lockf", lockf(fd, F_TLOCK, 0), ENOLCK, EBADF);
    /* the control: plain fcntl commands still work */
    EXPECT_OK("fcntl_getfd", fcntl(fd, F_GETFD));
    EXPECT_OK("fcntl_dupfd_cloexec", fcntl(fd, F_DUPFD_CLOEXEC, 10));
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["flock_ex", "flock_sh_nb", "fcntl_setlk", "fcntl_setlkw",
                           "fcntl_ofd_setlk", "fcntl_ofd_setlkw", "lockf", "fcntl_getfd",
                           "fcntl_dupfd_cloexec"])


async def test_file_lock_commands_with_high_bits_answer_enolck(execute):
    # fcntl's cmd is an unsigned int to the kernel, which drops bits 32-63; a filter that
    # compares all 64 bits lets F_SETLK | 1 << 32 through as a real lock on libc.so.
    source = c_program(LOCKS + r"""
int main(void) {
    int fd = open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY);
    if (fd < 0) { fail("open_libc", "errno=%s", errname(errno)); return 0; }
    struct flock fl = rdlock();
    EXPECT_ERRNO("fcntl_setlk_high_bits", syscall(SYS_fcntl, fd, (1UL << 32) | F_SETLK, &fl),
                 ENOLCK, 0);
    fl = rdlock();
    EXPECT_ERRNO("fcntl_setlkw_high_bits", syscall(SYS_fcntl, fd, (1UL << 32) | F_SETLKW, &fl),
                 ENOLCK, 0);
    fl = rdlock();
    EXPECT_ERRNO("fcntl_ofd_setlk_high_bits",
                 syscall(SYS_fcntl, fd, (1UL << 32) | F_OFD_SETLK, &fl), ENOLCK, 0);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["fcntl_setlk_high_bits", "fcntl_setlkw_high_bits",
                           "fcntl_ofd_setlk_high_bits"])


TIOCSTI_PROGRAM = r"""
#include <sys/ioctl.h>
#include <termios.h>
int main(void) {
    char c = 'x';
    for (int fd = 0; fd < 3; fd++) {
        char name[64];
        snprintf(name, sizeof name, "tiocsti_fd%d%s", fd, HIGH ? "_high_bits" : "");
        EXPECT_ERRNO(name, syscall(SYS_ioctl, fd, (HIGH ? 1UL << 32 : 0) | TIOCSTI, &c), EPERM, 0);
    }
    if (!HIGH) {
        EXPECT_ERRNO("no_dev_tty", open("/dev/tty", O_RDWR), ENOENT, ENXIO);
        struct termios t;
        /* the control: other ioctls reach the kernel (stdin is no terminal) */
        EXPECT_ERRNO("tcgets_enotty", ioctl(0, TCGETS, &t), ENOTTY, 0);
    }
    return 0;
}
"""


async def test_tiocsti_refused(execute):
    result = await execute("c", c_program("#define HIGH 0\n" + TIOCSTI_PROGRAM))
    assert_checks(result, ["tiocsti_fd0", "tiocsti_fd1", "tiocsti_fd2", "no_dev_tty",
                           "tcgets_enotty"])


async def test_tiocsti_with_high_bits_refused(execute):
    # ioctl's cmd is an unsigned int to the kernel: TIOCSTI | 1 << 32 *is* TIOCSTI.
    result = await execute("c", c_program("#define HIGH 1\n" + TIOCSTI_PROGRAM))
    assert_checks(result, ["tiocsti_fd0_high_bits", "tiocsti_fd1_high_bits",
                           "tiocsti_fd2_high_bits"])


# Safe arguments throughout: even if a call got through, it would change nothing.
KILLED_CALLS = {
    "init_module": "syscall(SYS_init_module, NULL, 0UL, \"\")",
    "finit_module": "syscall(SYS_finit_module, -1, \"\", 0)",
    "delete_module": "syscall(SYS_delete_module, \"isolation_no_such_module\", O_NONBLOCK)",
    "kexec_load": "syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL)",
    "kexec_file_load": "syscall(SYS_kexec_file_load, -1, -1, 0UL, \"\", 0UL)",
    "reboot_bad_magic": "syscall(SYS_reboot, 0, 0, 0, NULL)",
    "iopl": "syscall(SYS_iopl, 0)",
    "swapoff": "syscall(SYS_swapoff, \"/isolation-no-such-swap\")",
    "acct": "syscall(SYS_acct, \"/isolation-no-such-file\")",
}


@pytest.mark.parametrize("call", sorted(KILLED_CALLS))
async def test_forbidden_call_kills_with_sigsys(execute, call):
    source = c_program(rf"""
int main(void) {{
    printf("calling\n");
    fflush(stdout);
    long r = {KILLED_CALLS[call]};
    printf("survived ret=%ld errno=%s\n", r, errname(errno));
    return 0;
}}
""")
    result = await execute("c", source)
    assert result.stdout == "calling\n", describe(result)
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert result.signal == SIGSYS and result.exit_code is None, describe(result)


FOREIGN_ABI = {
    # x32 getpid: syscall number 39 with bit 30 set.
    "x32_getpid": "long r = syscall(39 | 0x40000000);",
    # i386 getpid (20) through the 32-bit entry point.
    "i386_int80_getpid": 'long r = 20; __asm__ volatile("int $0x80" : "+a"(r) :: "memory");',
}


@pytest.mark.parametrize("abi", sorted(FOREIGN_ABI))
async def test_foreign_abi_syscall_does_not_succeed(execute, abi):
    source = c_program(rf"""
int main(void) {{
    printf("calling\n");
    fflush(stdout);
    {FOREIGN_ABI[abi]}
    printf("%s ret=%ld pid=%d\n", r == getpid() ? "SUCCEEDED" : "refused", r, getpid());
    return 0;
}}
""")
    result = await execute("c", source)
    assert "SUCCEEDED" not in result.stdout, describe(result)
    # seccomp.py promises a kill for any non-native architecture.
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert result.signal == SIGSYS and result.stdout == "calling\n", describe(result)


# ------------------------------------------------------------------- environment

ENV_PROGRAMS = {
    "c": r"""
#include <stdio.h>
extern char **environ;
int main(void) { for (char **e = environ; *e; e++) puts(*e); return 0; }
""",
    "python3": "import os\nfor k, v in os.environ.items():\n    print(f'{k}={v}')\n",
    "javascript": "for (const [k, v] of Object.entries(process.env)) console.log(`${k}=${v}`);\n",
}


@pytest.mark.parametrize("language", sorted(ENV_PROGRAMS))
async def test_environment_is_only_what_languages_toml_lists(execute, registry, language,
                                                            monkeypatch):
    monkeypatch.setenv("SANDBOXD_ISOLATION_SECRET", secrets.token_hex(8))
    result = await execute(language, ENV_PROGRAMS[language])
    assert result.status is Status.ACCEPTED, describe(result)
    seen = sorted(result.stdout.splitlines())
    assert seen == sorted(f"{k}={v}" for k, v in registry[language].env), seen


async def test_no_descriptor_leaks_into_the_program(execute):
    # Only stdin, stdout and stderr: the report and go pipes, the sync socket and every
    # descriptor of the fork server are closed before the program starts.
    source = c_program(r"""
int main(void) {
    char leaked[512] = "";
    for (int fd = 3; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) != -1 && strlen(leaked) < 480)
            sprintf(leaked + strlen(leaked), " %d", fd);
    if (leaked[0] == '\0') ok("only_stdio_open"); else fail("only_stdio_open", "open:%s", leaked);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["only_stdio_open"])


# ------------------------------------------------------------------- box against box

BOX_PEER = r'''
import os, signal, sys

if len(sys.argv) == 1:
    # Re-exec with this run's token in argv, so the test can find us on the host (the
    # other box's token stays out of our argv: we look for it in every cmdline we see).
    own, other, role = sys.stdin.read().split()
    with open("/tmp/other", "w") as f:
        f.write(other)
    os.execv(sys.executable, [sys.executable, "main.py", own, role])
own, role = sys.argv[1:3]
with open("/tmp/other") as f:
    other = f.read()

def check(name, cond, detail=""):
    print(f"{name}:OK" if cond else f"{name}:FAIL {detail}", flush=True)

def cmdlines():
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return found

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
# A second process of ours, named for the test: once it exists, our signals are blocked.
child = os.fork()
if child == 0:
    os.execv("/bin/sleep", [f"{own}-ready", "100"])
if signal.sigtimedwait({signal.SIGUSR1}, 30) is None:
    check("go_signal", False, "no SIGUSR1 from the test")
    sys.exit(1)
# Both boxes are running now (the test saw both before sending SIGUSR1).
seen = cmdlines()
print("pids=" + ",".join(map(str, sorted(seen))), flush=True)
check("other_box_invisible", not any(other in c for c in seen.values()), seen)
check("own_child_visible", own + "-ready" in seen.get(child, ""), seen)
check("only_init_self_child", sorted(seen) == sorted({1, os.getpid(), child}), sorted(seen))
if role == "killer":
    try:
        os.kill(-1, signal.SIGKILL)  # everything this box can reach: its own child only
    except OSError as e:
        check("kill_all", False, e)
    else:
        _, status = os.waitpid(child, 0)
        check("kill_all", os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status)
else:
    if signal.sigtimedwait({signal.SIGUSR2}, 30) is None:
        check("survived_other_box", False, "no SIGUSR2 from the test")
        sys.exit(1)
    check("survived_other_box", True)
    os.kill(child, signal.SIGKILL)
'''


async def test_two_boxes_at_once_cannot_see_or_signal_each_other(execute, sandbox):
    assert sandbox.slot_count >= 2, "needs two boxes at once"
    a, b = f"isoA{secrets.token_hex(6)}", f"isoB{secrets.token_hex(6)}"
    limits = {"time_limit_ms": int(2000 * SLOWDOWN), "wall_time_limit_ms": 40_000}
    task_a = asyncio.create_task(execute("python3", BOX_PEER, stdin=f"{a} {b} killer", **limits))
    task_b = asyncio.create_task(execute("python3", BOX_PEER, stdin=f"{b} {a} victim", **limits))
    tasks = [task_a, task_b]
    try:
        # Both boxes are up, each with its marked child: the overlap is certain.
        pid_a = host_ppid(await wait_for_host_process(f"{a}-ready", tasks))
        pid_b = host_ppid(await wait_for_host_process(f"{b}-ready", tasks))
        os.kill(pid_a, signal.SIGUSR1)
        os.kill(pid_b, signal.SIGUSR1)
        result_a = await asyncio.wait_for(task_a, 30)
        assert_checks(result_a, ["other_box_invisible", "own_child_visible",
                                 "only_init_self_child", "kill_all"])
        # A has run kill(-1, SIGKILL): B and its child must be untouched.
        assert not task_b.done(), describe(task_b.result())
        os.kill(host_pids_with(f"{b}-ready")[0], 0)
        os.kill(pid_b, signal.SIGUSR2)
        result_b = await asyncio.wait_for(task_b, 30)
        assert_checks(result_b, ["other_box_invisible", "own_child_visible",
                                 "only_init_self_child", "survived_other_box"])
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


LEAVER = r'''
import os, sys, time
token = input()

def check(name, cond, detail=""):
    print(f"{name}:OK" if cond else f"{name}:FAIL {detail}", flush=True)

for d in ("/tmp", "/box", "/dev/shm"):
    with open(f"{d}/{token}-file", "w") as f:
        f.write(token)
os.mkdir(f"/tmp/{token}-dir")
r, w = os.pipe()
if os.fork() == 0:
    # A daemon: new session, double fork, renamed so the test can find it on the host.
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        os.execv("/bin/sleep", [f"{token}-daemon", "1000"])
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.wait()
daemon = int(os.read(r, 32))
for _ in range(10_000):  # until the exec is done (bounded)
    with open(f"/proc/{daemon}/cmdline", "rb") as f:
        if token.encode() in f.read():
            break
    time.sleep(0.001)
with open(f"/proc/{daemon}/cmdline", "rb") as f:
    check("daemon_running", f.read().startswith(f"{token}-daemon".encode()))
'''

LOOKER = r'''
import os
token = input()

def check(name, cond, detail=""):
    print(f"{name}:OK" if cond else f"{name}:FAIL {detail}", flush=True)

for d in ("/tmp", "/dev/shm"):
    check(f"empty={d}", os.listdir(d) == [], os.listdir(d))
check("box_has_only_source", os.listdir("/box") == ["main.py"], os.listdir("/box"))
procs = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                procs[int(entry)] = f.read()
        except OSError:
            pass
check("no_process_of_a", not any(token.encode() in c for c in procs.values()), procs)
check("only_init_and_self", sorted(procs) == [1, os.getpid()], sorted(procs))
'''


async def test_next_run_sees_nothing_of_the_previous_one(execute, sandbox):
    token = f"isoleft{secrets.token_hex(6)}"
    result_a = await execute("python3", LEAVER, stdin=token + "\n")
    assert_checks(result_a, ["daemon_running"])
    # The result is reported: every process of A is gone from the host already...
    assert host_pids_with(token) == [], "a process of the previous run survives on the host"
    # ...and so is its workspace (the tmpfs behind /box, /tmp and /dev/shm).
    assert os.listdir(sandbox.workspace_dir) == []
    with open("/proc/self/mountinfo") as f:
        assert str(sandbox.workspace_dir) + "/" not in f.read()
    # Both slots in turn, so whichever slot (host uid) A had, B also runs there.
    for _ in range(sandbox.slot_count):
        result_b = await execute("python3", LOOKER, stdin=token + "\n")
        assert_checks(result_b, ["empty=/tmp", "empty=/dev/shm", "box_has_only_source",
                                 "no_process_of_a", "only_init_and_self"])
