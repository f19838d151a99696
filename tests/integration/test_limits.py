"""One hostile program per limit, in a real sandbox: the verdict AND what the kernel measured.

Every C program below starts with PRELUDE. Programs report what they observed from the
inside (counts, errno names, their own CPU clocks) on stdout, so each test checks the
limit from both sides: the verdict the daemon gives and what the program saw.

Timing assertions use generous upper bounds (a noisy 2-core machine); lower bounds
come from the kernel's accounting and are exact.
"""

from __future__ import annotations

import asyncio
import time

from sandboxd.model import Status
from tests.conftest import SLOWDOWN

MIB = 1024 * 1024
OUTPUT_CAP = 1 * MIB  # SandboxConfig.output_limit_bytes
DISK_CAP = 64 * MIB  # SandboxConfig.disk_limit_mb
PIDS_CAP = 64  # SandboxConfig.processes
NOFILE_CAP = 256  # SandboxConfig.open_files

PRELUDE = """\
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
__attribute__((unused)) static const char *ename(int e) {
    switch (e) {
    case EAGAIN: return "EAGAIN";
    case ENOSPC: return "ENOSPC";
    case EFBIG: return "EFBIG";
    case EMFILE: return "EMFILE";
    case ENOMEM: return "ENOMEM";
    default: return strerror(e);
    }
}
/* Make `p`'s memory observable so the optimizer cannot drop a malloc + memset pair. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")
"""

OK_C = PRELUDE + 'int main(void) { puts("ok"); return 0; }\n'


def c(body: str) -> str:
    return PRELUDE + body


# ------------------------------------------------------------------------------ processes


async def test_fork_bomb_is_contained_and_next_run_is_normal(execute):
    started = time.monotonic()
    bomb = await execute("c", c("int main(void) { for (;;) fork(); }\n"), time_limit_ms=1000)
    elapsed = time.monotonic() - started
    # Contained: a limit verdict (the bomb spins on failing forks until its CPU runs out),
    # never the sandbox failing.
    assert bomb.status in (Status.TIME_LIMIT_EXCEEDED, Status.RUNTIME_ERROR), bomb
    assert bomb.message is None
    assert bomb.wall_time_ms is not None and bomb.wall_time_ms < 3000 + 1000
    assert elapsed < 30 * SLOWDOWN, f"fork bomb took {elapsed:.1f} s to be answered"

    after = await execute("c", OK_C, time_limit_ms=1000)
    assert after.status is Status.ACCEPTED, after
    assert after.stdout == "ok\n"
    assert after.time_ms is not None and after.time_ms < 200 * SLOWDOWN
    assert after.wall_time_ms is not None and after.wall_time_ms < 1500 * SLOWDOWN


FORK_UNTIL_FAIL = c("""
int main(void) {
    int n = 0;
    for (;;) {
        pid_t p = fork();
        if (p < 0) { printf("%d %s\\n", n, ename(errno)); return 0; }
        if (p == 0) { pause(); _exit(0); }
        if (++n > 10000) { puts("no cap"); return 1; }
    }
}
""")


async def test_fork_until_failure_stays_below_pids_cap(execute):
    result = await execute("c", FORK_UNTIL_FAIL, time_limit_ms=2000)
    # The program exits 0 with its 60-odd children still pausing: they die with the box.
    assert result.status is Status.ACCEPTED, result
    count, err = result.stdout.split()
    assert err == "EAGAIN"
    # The program itself is one of the box's processes: at most PIDS_CAP - 1 children.
    assert int(count) < PIDS_CAP
    assert int(count) >= PIDS_CAP // 2, "fork failed far below the cap: not the pids limit"


async def test_fork_bomb_does_not_starve_a_concurrent_run(execute):
    bomb, quick = await asyncio.gather(
        execute("c", c("int main(void) { for (;;) fork(); }\n"), time_limit_ms=1500),
        execute("python3", "print(sum(range(1000)))", time_limit_ms=2000),
    )
    assert bomb.status in (Status.TIME_LIMIT_EXCEEDED, Status.RUNTIME_ERROR), bomb
    assert quick.status is Status.ACCEPTED, quick
    assert quick.stdout == "499500\n"
    assert quick.time_ms is not None and quick.time_ms < 1000 * SLOWDOWN


THREAD_BOMB_C = c("""
static void *idle(void *arg) { pause(); return arg; }
int main(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t t;
    for (int n = 0; n < 10000; n++) {
        int e = pthread_create(&t, &attr, idle, NULL);
        if (e) { printf("%d %s\\n", n, ename(e)); fflush(stdout); _exit(0); }
    }
    puts("no cap");
    return 1;
}
""")


async def test_c_thread_bomb_fails_at_the_pids_cap(execute):
    result = await execute("c", THREAD_BOMB_C, time_limit_ms=2000)
    assert result.status is Status.ACCEPTED, result
    count, err = result.stdout.split()
    assert err == "EAGAIN"
    assert PIDS_CAP // 2 <= int(count) < PIDS_CAP


THREAD_BOMB_PY = """\
import os, threading, time
n = 0
try:
    while n < 10000:
        threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
        n += 1
except RuntimeError as e:
    print(n, type(e).__name__, flush=True)
    os._exit(0)
print("no cap", flush=True)
os._exit(1)
"""


async def test_python_thread_bomb_fails_at_the_pids_cap(execute):
    result = await execute("python3", THREAD_BOMB_PY, time_limit_ms=3000)
    assert result.status is Status.ACCEPTED, result
    count, err = result.stdout.split()
    assert err == "RuntimeError"
    assert PIDS_CAP // 2 <= int(count) < PIDS_CAP


# ------------------------------------------------------------------------------ memory

# A gigabyte in 64 MiB pieces: each allocation fits the limit, so the kernel's OOM
# killer (not an allocation refused as larger than the limit, see test_verdicts) ends it.
MEMORY_BOMB = c("""
int main(void) {
    size_t n = (size_t)64 << 20;
    char *p = 0;
    for (int i = 0; i < 16; i++) {
        p = malloc(n);
        if (!p) { puts("malloc failed"); return 2; }
        memset(p, 1, n);
        ESCAPE(p);
    }
    printf("survived %d\\n", p[n - 1]);
    return 0;
}
""")


async def test_gigabyte_touched_under_128_mb_is_memory_limit_exceeded(execute):
    # CPU time is not what is tested: under the VM lane's emulation the memset alone can
    # take longer than 2 s before the OOM kill.
    result = await execute("c", MEMORY_BOMB, memory_limit_mb=128,
                           time_limit_ms=int(2000 * SLOWDOWN))
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, result
    assert "survived" not in result.stdout
    assert result.signal == 9 and result.exit_code is None  # the OOM killer's SIGKILL
    # Peak measured by the kernel: right at the limit, never (much) above it.
    assert result.memory_kb is not None
    assert 100 * 1024 <= result.memory_kb <= 128 * 1024 + 1024, result.memory_kb


CHILD_MEMORY_BOMB = c("""
int main(void) {
    pid_t child = fork();
    if (child < 0) return 3;
    if (child == 0) {
        size_t n = (size_t)64 << 20;
        char *p = 0;
        for (int i = 0; i < 16; i++) {
            p = malloc(n);
            if (!p) _exit(2);
            memset(p, 1, n);
            ESCAPE(p);
        }
        _exit(p[n - 1]);
    }
    int st;
    if (waitpid(child, &st, 0) < 0) return 4;
    if (WIFSIGNALED(st)) printf("child signal %d\\n", WTERMSIG(st));
    else printf("child exit %d\\n", WEXITSTATUS(st));
    return 0;
}
""")


async def test_oom_kill_of_a_child_is_memory_limit_exceeded(execute):
    result = await execute("c", CHILD_MEMORY_BOMB, memory_limit_mb=128,
                           time_limit_ms=int(2000 * SLOWDOWN))
    # SPEC: any OOM kill inside the box, also of a child, makes the verdict MLE, even
    # though the main process exits 0.
    assert result.stdout == "child signal 9\n", result
    assert result.exit_code == 0 and result.signal is None
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, result
    assert result.memory_kb is not None and result.memory_kb >= 100 * 1024


USE_64_MIB = c("""
int main(void) {
    size_t n = (size_t)64 << 20;
    char *p = malloc(n);
    if (!p) return 2;
    memset(p, 7, n);
    ESCAPE(p);
    long sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += p[i];
    printf("%ld\\n", sum);
    return 0;
}
""")


async def test_64_mib_under_256_mib_is_accepted_and_measured(execute):
    result = await execute("c", USE_64_MIB, memory_limit_mb=256)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == f"{7 * (64 * MIB // 4096)}\n"
    assert result.memory_kb is not None
    # The kernel charges memory in batches of 64 pages per CPU: a few hundred KiB of
    # the program's first allocations may come out of a batch counted before execve.
    assert 63 * 1024 <= result.memory_kb < 100 * 1024, result.memory_kb


# ------------------------------------------------------------------------------ time


async def test_infinite_loop_is_killed_right_after_the_cpu_limit(execute):
    spin = c("int main(void) { volatile unsigned long x = 0; for (;;) x++; }\n")
    # A wall limit far away: on a loaded machine 1 s of CPU can take more than the default
    # 3 s of wall time, and this test is about the CPU watchdog.
    result = await execute("c", spin, time_limit_ms=1000, wall_time_limit_ms=10_000)
    assert result.status is Status.TIME_LIMIT_EXCEEDED, result
    assert result.time_ms is not None and 1000 <= result.time_ms < 1500, result.time_ms
    assert result.signal == 9 and result.exit_code is None


async def test_sleeping_program_hits_the_wall_limit_without_using_cpu(execute):
    started = time.monotonic()
    result = await execute("c", c("int main(void) { sleep(100); return 0; }\n"),
                           time_limit_ms=1000)  # wall default: 2 * 1000 + 1000 = 3000
    elapsed = time.monotonic() - started
    assert result.status is Status.TIME_LIMIT_EXCEEDED, result
    assert result.time_ms is not None and result.time_ms < 200 * SLOWDOWN
    assert result.wall_time_ms is not None and 3000 <= result.wall_time_ms < 4500
    assert elapsed < 20 * SLOWDOWN, f"a 3 s wall limit took {elapsed:.1f} s to be answered"


SPIN_THREADS = c("""
#define THREADS 8
#define THREAD_CPU_MS 150
static long ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}
static void *spin(void *arg) {
    volatile unsigned long x = 0;
    while (ms(CLOCK_THREAD_CPUTIME_ID) < THREAD_CPU_MS)
        for (int i = 0; i < 100000; i++) x++;
    return arg;
}
int main(void) {
    pthread_t t[THREADS];
    long wall0 = ms(CLOCK_MONOTONIC);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, spin, NULL)) return 2;
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    printf("%ld %ld\\n", ms(CLOCK_PROCESS_CPUTIME_ID), ms(CLOCK_MONOTONIC) - wall0);
    return 0;
}
""")


async def test_cpu_time_counts_all_threads_and_the_box_gets_one_cpu(execute):
    result = await execute("c", SPIN_THREADS, time_limit_ms=3000)
    assert result.status is Status.ACCEPTED, result
    own_cpu_ms, own_wall_ms = (int(v) for v in result.stdout.split())
    assert own_cpu_ms >= 8 * 150
    # time_ms is the whole box's CPU time, summed over threads.
    assert result.time_ms is not None and result.time_ms >= 0.7 * own_cpu_ms, (
        result.time_ms, own_cpu_ms)
    # cpu_share 1: 8 runnable threads on 2 cores still get one CPU's worth per period, so
    # wall time cannot be much shorter than CPU time (it would be ~half without the cap).
    assert result.wall_time_ms is not None and result.wall_time_ms >= 0.8 * result.time_ms, (
        result.wall_time_ms, result.time_ms)
    assert own_wall_ms >= 0.8 * own_cpu_ms, (own_wall_ms, own_cpu_ms)


# ------------------------------------------------------------------------------ output

FLOOD = c("""
int main(void) {
    static char b[65536];
    memset(b, 'x', sizeof b);
    for (int i = 0; i < 1600; i++)  /* 100 MiB */
        if (fwrite(b, 1, sizeof b, STREAM) != sizeof b) return 3;
    return 0;
}
""")


async def test_stdout_flood_is_output_limit_exceeded_and_truncated_to_the_cap(execute):
    result = await execute("c", "#define STREAM stdout\n" + FLOOD)
    assert result.status is Status.OUTPUT_LIMIT_EXCEEDED, result
    assert result.wall_time_ms is not None and result.wall_time_ms < 2000 * SLOWDOWN
    assert len(result.stdout) == OUTPUT_CAP
    assert result.stdout == "x" * OUTPUT_CAP
    assert result.stderr == ""


async def test_stderr_flood_is_output_limit_exceeded_and_truncated_to_the_cap(execute):
    result = await execute("c", "#define STREAM stderr\n" + FLOOD)
    assert result.status is Status.OUTPUT_LIMIT_EXCEEDED, result
    assert result.wall_time_ms is not None and result.wall_time_ms < 2000 * SLOWDOWN
    assert len(result.stderr) == OUTPUT_CAP
    assert result.stderr == "x" * OUTPUT_CAP
    assert result.stdout == ""


EXACT_OUTPUT = c("""
int main(int argc, char **argv) {
    static char b[EXTRA + (1 << 20)];
    memset(b, 'o', sizeof b);
    if (fwrite(b, 1, sizeof b, stdout) != sizeof b) return 3;
    fflush(stdout);
    memset(b, 'e', sizeof b);
    if (fwrite(b, 1, sizeof b, stderr) != sizeof b) return 4;
    return 0;
}
""")


async def test_output_exactly_at_the_cap_on_both_streams_is_accepted_in_full(execute):
    result = await execute("c", "#define EXTRA 0\n" + EXACT_OUTPUT)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == "o" * OUTPUT_CAP
    assert result.stderr == "e" * OUTPUT_CAP


async def test_one_byte_over_the_cap_is_output_limit_exceeded(execute):
    result = await execute("c", "#define EXTRA 1\n" + EXACT_OUTPUT)
    assert result.status is Status.OUTPUT_LIMIT_EXCEEDED, result
    assert result.stdout == "o" * OUTPUT_CAP


# ------------------------------------------------------------------------------ disk

FILL = c("""
static char chunk[1 << 20];
/* Writes 1 MiB files into dir until `limit` bytes or an error; prints "<errno> <bytes>". */
static long fill(const char *dir, long limit) {
    long total = 0;
    char name[256];
    for (int i = 0; total < limit; i++) {
        snprintf(name, sizeof name, "%s/f%d", dir, i);
        int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) { printf("%s %ld\\n", ename(errno), total); return total; }
        for (size_t off = 0; off < sizeof chunk;) {
            ssize_t k = write(fd, chunk + off, sizeof chunk - off);
            if (k < 0) { printf("%s %ld\\n", ename(errno), total); close(fd); return total; }
            off += k;
            total += k;
        }
        close(fd);
    }
    printf("OK %ld\\n", total);
    return total;
}
int main(void) {
    memset(chunk, 'd', sizeof chunk);
    FILLS
    return 0;
}
""")


async def test_filling_tmp_gets_enospc_at_the_disk_cap(execute):
    # CPU time is not what is tested (under the VM lane's emulation 64 MiB of writes can
    # take longer than 2 s).
    result = await execute("c", FILL.replace("FILLS", 'fill("/tmp", 1L << 40);'),
                           time_limit_ms=int(2000 * SLOWDOWN))
    assert result.status is Status.ACCEPTED, result  # the program handled ENOSPC, exits 0
    err, total = result.stdout.split()
    assert err == "ENOSPC"
    assert DISK_CAP - 4 * MIB <= int(total) <= DISK_CAP


async def test_tmp_dev_shm_and_workdir_share_one_disk_cap(execute):
    result = await execute("c", FILL.replace(
        "FILLS", 'fill("/tmp", 24L << 20); fill("/box", 24L << 20); fill("/dev/shm", 1L << 40);'))
    assert result.status is Status.ACCEPTED, result
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0] == ["OK", str(24 * MIB)]
    assert lines[1] == ["OK", str(24 * MIB)]
    assert lines[2][0] == "ENOSPC"
    assert int(lines[2][1]) <= DISK_CAP - 48 * MIB


BIG_FILE = c("""
int main(void) {
    signal(SIGXFSZ, SIG_IGN);
    static char chunk[1 << 20];
    memset(chunk, 'b', sizeof chunk);
    int fd = open("/tmp/big", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 2;
    long total = 0;
    for (;;) {
        ssize_t k = write(fd, chunk, sizeof chunk);
        if (k < 0) { printf("%s %ld\\n", ename(errno), total); return 0; }
        total += k;
        if (total > (100L << 20)) { puts("no cap"); return 1; }
    }
}
""")


async def test_a_single_file_cannot_grow_past_64_mib(execute):
    result = await execute("c", BIG_FILE)
    assert result.status is Status.ACCEPTED, result
    err, total = result.stdout.split()
    assert err in ("EFBIG", "ENOSPC")
    assert int(total) <= DISK_CAP


SPARSE_PAST_FSIZE = c("""
int main(void) {
    if (IGNORE) signal(SIGXFSZ, SIG_IGN);
    int fd = open("/tmp/sparse", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 2;
    /* Sparse: no disk space used, so only RLIMIT_FSIZE can refuse these. */
    ssize_t below = pwrite(fd, "x", 1, (64L << 20) - 1);
    printf("below %ld\\n", (long)below);
    fflush(stdout);
    ssize_t at = pwrite(fd, "x", 1, 64L << 20);
    printf("at %ld %s\\n", (long)at, at < 0 ? ename(errno) : "-");
    return 0;
}
""")


async def test_rlimit_fsize_gives_efbig_when_sigxfsz_is_ignored(execute):
    result = await execute("c", "#define IGNORE 1\n" + SPARSE_PAST_FSIZE)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == "below 1\nat -1 EFBIG\n"


async def test_rlimit_fsize_kills_with_sigxfsz_by_default(execute):
    result = await execute("c", "#define IGNORE 0\n" + SPARSE_PAST_FSIZE)
    assert result.status is Status.RUNTIME_ERROR, result
    assert result.signal == 25 and result.exit_code is None  # SIGXFSZ
    assert result.stdout == "below 1\n"


# ------------------------------------------------------------------------------ stdin


async def test_ten_mib_of_stdin_is_read_in_full(execute):
    data = "a" * (10 * MIB - 1) + "\n"
    result = await execute(
        "python3", "import sys\nd = sys.stdin.buffer.read()\nprint(len(d), d.count(b'a'))",
        stdin=data, time_limit_ms=3000)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == f"{10 * MIB} {10 * MIB - 1}\n"


async def test_unread_ten_mib_stdin_does_not_hang(execute):
    started = time.monotonic()
    result = await execute("c", c('int main(void) { puts("bye"); return 0; }\n'),
                           stdin="z" * (10 * MIB))
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == "bye\n"
    assert time.monotonic() - started < 20 * SLOWDOWN


# ------------------------------------------------------------------------------ signals


async def test_program_ignoring_termination_signals_is_still_killed(execute):
    result = await execute("c", c("""
int main(void) {
    signal(SIGTERM, SIG_IGN); signal(SIGINT, SIG_IGN); signal(SIGHUP, SIG_IGN);
    signal(SIGXCPU, SIG_IGN); signal(SIGQUIT, SIG_IGN); signal(SIGPIPE, SIG_IGN);
    volatile unsigned long x = 0;
    for (;;) x++;
}
"""), time_limit_ms=500, wall_time_limit_ms=10_000)
    assert result.status is Status.TIME_LIMIT_EXCEEDED, result
    assert result.time_ms is not None and 500 <= result.time_ms < 1000
    assert result.signal == 9


# ------------------------------------------------------------------------------ rlimits


async def test_rlimits_core_zero_and_nofile(execute):
    result = await execute("c", c("""
int main(void) {
    struct rlimit core, nofile;
    getrlimit(RLIMIT_CORE, &core);
    getrlimit(RLIMIT_NOFILE, &nofile);
    printf("core %ld %ld\\nnofile %ld %ld\\n", (long)core.rlim_cur, (long)core.rlim_max,
           (long)nofile.rlim_cur, (long)nofile.rlim_max);
    return 0;
}
"""))
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == f"core 0 0\nnofile {NOFILE_CAP} {NOFILE_CAP}\n"


async def test_opening_1000_files_fails_with_emfile_near_256(execute):
    result = await execute("c", c("""
int main(void) {
    int n = 0;
    for (; n < 1000; n++)
        if (open("/tmp/x", O_RDONLY | O_CREAT, 0600) < 0) break;
    printf("%d %s\\n", n, n < 1000 ? ename(errno) : "-");
    return 0;
}
"""))
    assert result.status is Status.ACCEPTED, result
    count, err = result.stdout.split()
    assert err == "EMFILE"
    # 0-2 are stdio; nothing else of the sandbox may leak into the program.
    assert int(count) == NOFILE_CAP - 3, count


# ------------------------------------------------------------------------------ precedence


async def test_output_cap_kills_before_an_infinite_loop_can_time_out(execute):
    result = await execute("c", c("""
int main(void) {
    static char b[2 << 20];
    memset(b, 'p', sizeof b);
    fwrite(b, 1, sizeof b, stdout);
    fflush(stdout);
    volatile unsigned long x = 0;
    for (;;) x++;
}
"""), time_limit_ms=2000)
    assert result.status is Status.OUTPUT_LIMIT_EXCEEDED, result
    assert result.stdout == "p" * OUTPUT_CAP
    assert result.time_ms is not None and result.time_ms < 1000


async def test_allocating_past_the_limit_while_printing_is_memory_limit_exceeded(execute):
    result = await execute("c", c("""
int main(void) {
    for (int i = 0;; i++) {
        char *p = malloc(1 << 20);
        if (!p) return 2;
        memset(p, i, 1 << 20);
        ESCAPE(p);
        printf("%d\\n", i);
        fflush(stdout);
    }
}
"""), memory_limit_mb=64)
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, result
    printed = result.stdout.splitlines()
    assert printed == [str(i) for i in range(len(printed))]
    assert 32 <= len(printed) <= 64  # the limit is on top of the usage at execve
    assert result.memory_kb is not None and 48 * 1024 <= result.memory_kb <= 65 * 1024
