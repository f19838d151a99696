"""The compiled-artifact cache through the real runner and real boxes: an identical
program compiles once (resubmitted, other stdin, `tests`, two at once), anything that
changes the compile compiles again, a Compile Error is served the same, and nothing a
box does to its copy of /box (or leaves there while compiling) reaches a later run."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from sandboxd.model import ExtraFile, JudgeCase, Limits, Result, Status, Submission
from sandboxd.observer import Observer
from sandboxd.runner import Runner
from tests.integration.hostile import describe

LIMITS = Limits(time_limit_ms=2000, wall_time_limit_ms=5000, memory_limit_mb=256)

# An unused variable: -Wall makes g++ print a warning, so compile_output is not empty.
SUM_CPP = """
#include <iostream>
int main() { int unused; long long a, b; std::cin >> a >> b; std::cout << a + b << "\\n"; }
"""


class Counter(Observer):
    def __init__(self) -> None:
        self.compiles: list[str] = []
        self.lookups: list[tuple[str, bool]] = []

    def compile_step(self, language: str, seconds: float) -> None:
        self.compiles.append(language)

    def artifact_lookup(self, language: str, hit: bool) -> None:
        self.lookups.append((language, hit))


@pytest.fixture
def counted(runner: Runner) -> tuple[Runner, Counter]:
    """A runner with an artifact cache of its own (empty) and a step counter."""
    counter = Counter()
    return Runner(runner.sandbox, runner.languages, runner.config, counter), counter


def submission(language: str, source: str, stdin: str = "", **fields: object) -> Submission:
    return Submission(language=language, source=source, limits=LIMITS, stdin=stdin.encode(),
                      **fields)  # type: ignore[arg-type]


def untimed(result: Result) -> Result:
    """`result` without the measurements that differ from run to run."""
    tests = [{k: v for k, v in t.items() if k not in ("time_ms", "wall_time_ms", "memory_kb")}
             for t in result.extra.get("tests", [])]
    return dataclasses.replace(result, time_ms=None, wall_time_ms=None, memory_kb=None,
                               extra={**result.extra, "tests": tests})


async def test_cpp_resubmitted_compiles_once_and_says_the_same(counted):
    runner, counter = counted
    first = await runner.run(submission("cpp", SUM_CPP, "2 3\n"))
    assert first.status is Status.ACCEPTED, describe(first)
    assert "unused" in first.compile_output  # the warning is the cached compile's output
    again = await runner.run(submission("cpp", SUM_CPP, "2 3\n"))
    other = await runner.run(submission("cpp", SUM_CPP, "40 2\n"))
    assert counter.compiles == ["cpp"]
    assert counter.lookups == [("cpp", False), ("cpp", True), ("cpp", True)]
    assert untimed(again) == untimed(first)
    assert (other.status, other.stdout, other.compile_output) == (
        Status.ACCEPTED, "42\n", first.compile_output)


async def test_tests_mode_resubmitted_skips_the_compile(counted):
    runner, counter = counted
    tests = tuple(JudgeCase(stdin=f"{n} {n}\n".encode(), expected_output=f"{2 * n}\n".encode())
                  for n in range(3))
    first = await runner.run(submission("cpp", SUM_CPP, tests=tests))
    second = await runner.run(submission("cpp", SUM_CPP, tests=tests))
    assert first.status is Status.ACCEPTED, describe(first)
    assert untimed(second) == untimed(first)
    assert counter.compiles == ["cpp"]


async def test_other_options_or_files_compile_again(counted):
    runner, counter = counted
    source = '#include "value.h"\n#include <stdio.h>\nint main(void) { printf("%d\\n", VALUE); }\n'

    def header(value: int) -> tuple[ExtraFile, ...]:
        return (ExtraFile("value.h", f"#define VALUE {value}\n".encode()),)

    results = [
        await runner.run(submission("c", source, files=header(1))),
        await runner.run(submission("c", source, files=header(2))),
        await runner.run(submission("c", source, files=header(2), compiler_options=("-O0",))),
        await runner.run(submission("c", source, files=header(1))),
    ]
    assert [r.stdout for r in results] == ["1\n", "2\n", "2\n", "1\n"], [
        describe(r) for r in results]
    assert counter.compiles == ["c", "c", "c"]
    assert [hit for _, hit in counter.lookups] == [False, False, False, True]


async def test_a_compile_error_is_the_same_on_a_hit(counted):
    runner, counter = counted
    broken = "int main(void) { return missing; }\n"
    first = await runner.run(submission("c", broken))
    second = await runner.run(submission("c", broken, "other stdin"))
    assert first.status is Status.COMPILE_ERROR, describe(first)
    assert "missing" in first.compile_output
    assert second == first
    assert counter.compiles == ["c"]


async def test_a_compile_that_hit_a_limit_is_not_cached(counted, config):
    runner, counter = counted
    # The compile step's CPU limit (10 s unless slowed down) cut short by a tiny one.
    tight = dataclasses.replace(config.sandbox.compile, cpu_ms=1, wall_ms=2000)
    tight_config = dataclasses.replace(config, sandbox=dataclasses.replace(
        config.sandbox, compile=tight))
    slow = Runner(runner.sandbox, runner.languages, tight_config, counter)
    results = [await slow.run(submission("cpp", SUM_CPP)) for _ in range(2)]
    assert all(r.status is Status.COMPILE_ERROR for r in results), [describe(r) for r in results]
    assert counter.compiles == ["cpp", "cpp"]
    assert len(slow.artifacts or ()) == 0


async def test_two_identical_compiles_at_once_compile_once(counted):
    runner, counter = counted
    results = await asyncio.gather(runner.run(submission("cpp", SUM_CPP, "1 2")),
                                   runner.run(submission("cpp", SUM_CPP, "3 4")))
    assert [r.stdout for r in results] == ["3\n", "7\n"], [describe(r) for r in results]
    assert counter.compiles == ["cpp"]
    assert sorted(hit for _, hit in counter.lookups) == [False, True]


# A run that wrecks its own /box: its binary replaced by a symlink to a host secret, a
# setuid file planted, the directory made unreadable (mkfifo is refused by the jail's
# seccomp filter; a compile that leaves other kinds of files is tested below). The next run of the
# same cached program must find the genuine program in a working /box.
WRECKER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
int main(void) {
    int n = 0;
    if (scanf("%d", &n) != 1) return 3;
    char cwd[256];
    if (!getcwd(cwd, sizeof cwd)) return 4;
    struct stat st;
    /* What a later run sees of what an earlier one did. */
    printf("run %d in %s: binary %s, planted %s\n", n, cwd,
           lstat("main", &st) == 0 && S_ISREG(st.st_mode) ? "regular" : "replaced",
           access("planted", F_OK) == 0 ? "present" : "absent");
    if (n == 1) {
        printf("unlink %d\n", unlink("main"));
        printf("symlink %d\n", symlink("/etc/shadow", "main"));
        int fd = open("planted", O_WRONLY | O_CREAT, 04755);
        printf("planted %d\n", fd >= 0 && write(fd, "#!/bin/sh\n", 10) == 10);
        printf("chmod %d\n", chmod(".", 0));
    }
    return 0;
}
"""


async def test_a_run_that_wrecks_its_box_does_not_touch_the_cached_program(counted):
    runner, counter = counted
    wrecked = await runner.run(submission("c", WRECKER_C, "1"))
    assert wrecked.status is Status.ACCEPTED, describe(wrecked)
    lines = wrecked.stdout.splitlines()
    assert lines[0] == "run 1 in /box: binary regular, planted absent"
    # Every attack succeeded inside its own box: the box did own its /box.
    assert lines[1:] == ["unlink 0", "symlink 0", "planted 1", "chmod 0"], lines
    after = await runner.run(submission("c", WRECKER_C, "2"))
    assert after.status is Status.ACCEPTED, describe(after)
    assert after.stdout == "run 2 in /box: binary regular, planted absent\n"
    assert counter.compiles == ["c"]


# perl -c runs BEGIN blocks (`$^C` is true only then): the "compile" step leaves
# something in /box that is neither a file nor a directory.
PLANTERS = {
    "link": 'symlink("/etc/shadow", "/box/planted") or die "symlink: $!";',
    "socket": 'use Socket; socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";'
              ' bind($s, pack_sockaddr_un("/box/planted")) or die "bind: $!";',
}


@pytest.mark.parametrize("kind", PLANTERS)
async def test_a_compile_leaving_a_link_or_socket_is_not_cached_but_works(counted, kind):
    runner, counter = counted
    source = f"BEGIN {{ if ($^C) {{ {PLANTERS[kind]} }} }}\n" + \
        'print((-l "/box/planted" ? "link" : -S "/box/planted" ? "socket" : "none"), "\\n");\n'
    results = [await runner.run(submission("perl", source)) for _ in range(2)]
    assert [(r.status, r.stdout) for r in results] == [(Status.ACCEPTED, f"{kind}\n")] * 2, [
        describe(r) for r in results]
    assert counter.compiles == ["perl", "perl"]
    assert len(runner.artifacts or ()) == 0


async def test_directories_and_modes_come_back_without_setuid(counted):
    runner, counter = counted
    source = """
BEGIN { if ($^C) { mkdir "/box/lib" or die; mkdir "/box/lib/deep" or die;
        open(my $f, ">", "/box/lib/deep/data") or die; print $f "kept\\n"; close $f;
        chmod 04750, "/box/lib/deep/data" or die; chmod 0711, "/box/lib" or die; } }
open(my $f, "<", "/box/lib/deep/data") or die "open: $!";
my $line = <$f>;
my @file = stat("/box/lib/deep/data"); my @dir = stat("/box/lib");
printf "%s%o %o %d\\n", $line, $file[2] & 07777, $dir[2] & 07777, $file[4];
open(my $w, ">>", "/box/lib/deep/data") or die "append: $!"; print $w "more\\n";
"""
    first = await runner.run(submission("perl", source))
    second = await runner.run(submission("perl", source))
    assert first.status is second.status is Status.ACCEPTED, describe(first) + describe(second)
    # Inside the box the program's uid is the same on every run; the mode loses setuid
    # once copied, and the file stays the box's own (writable: it appended to it).
    uid = first.stdout.split()[-1]
    assert first.stdout == f"kept\n4750 711 {uid}\n"
    assert second.stdout == f"kept\n750 711 {uid}\n"
    assert counter.compiles == ["perl"]


async def test_cache_disabled_by_config_compiles_every_time(runner, config):
    counter = Counter()
    off = dataclasses.replace(config, artifacts=dataclasses.replace(config.artifacts,
                                                                    enabled=False))
    plain = Runner(runner.sandbox, runner.languages, off, counter)
    assert plain.artifacts is None
    results = [await plain.run(submission("cpp", SUM_CPP, "1 1")) for _ in range(2)]
    assert [r.stdout for r in results] == ["2\n", "2\n"]
    assert counter.compiles == ["cpp", "cpp"]
    assert counter.lookups == []


async def test_a_custom_checkers_compile_is_cached_too(counted):
    runner, counter = counted
    checker = """
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char got[64] = "", want[64] = "";
    FILE *o = fopen(argv[2], "r"), *e = fopen(argv[3], "r");
    if (!o || !e) return 2;
    fscanf(o, "%63s", got); fscanf(e, "%63s", want);
    puts(strcmp(got, want) ? "differ" : "same");
    return strcmp(got, want) != 0;
}
"""
    def judged(stdin: str, expected: str) -> Submission:
        return submission("python3", "print(sum(map(int, input().split())))", stdin,
                          expected_output=expected.encode(), checker="custom",
                          checker_source=checker, checker_language="c")

    right = await runner.run(judged("1 2", "3"))
    wrong = await runner.run(judged("1 2", "4"))
    assert (right.status, right.extra.get("checker_message")) == (Status.ACCEPTED, "same\n"), \
        describe(right)
    assert (wrong.status, wrong.extra.get("checker_message")) == (
        Status.WRONG_ANSWER, "differ\n"), describe(wrong)
    # The checker (c) compiled once; the program's syntax check (python3) once too.
    assert sorted(counter.compiles) == ["c", "python3"]
