"""Every language of languages.toml runs its self-test, and the walking-skeleton cases."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from sandboxd import config as config_mod
from sandboxd import languages
from sandboxd.model import Status
from tests.integration.hostile import describe

_cfg = config_mod.Config()
# Every language of languages.toml; SANDBOXD_TEST_LANGUAGES="c python3" narrows the
# per-language tests to those (the VM lane: compilers under software emulation are
# slow, and languages are not what it proves).
_ONLY = os.environ.get("SANDBOXD_TEST_LANGUAGES", "").split()
LANGUAGE_IDS = [lang.id for lang in languages.load(_cfg.server.languages_file,
                                                    _cfg.sandbox.rootfs_dir)
                if not _ONLY or lang.id in _ONLY]


@pytest.mark.parametrize("language", LANGUAGE_IDS)
async def test_self_test_program_is_accepted(execute, registry, language):
    lang = registry[language]
    assert lang.self_test, f"{language} has no self_test in languages.toml"
    result = await execute(language, lang.self_test, time_limit_ms=5000, memory_limit_mb=512,
                           expected_output="ok\n")
    assert result.status is Status.ACCEPTED, result
    # Measured from the execve on: a native hello world may cost 0 ms and less memory
    # than the kernel's charge batch (64 pages per CPU), so only >= 0 for all.
    assert result.time_ms is not None and result.time_ms >= 0
    assert result.memory_kb is not None and result.memory_kb >= 0


HELLO = "Hello, World!\n"
SUM_STDIN, SUM = "19 23\n", "42\n"
# The memory case: 1 GiB asked for under this limit.
SMALL_MEMORY_MB = 128


@pytest.mark.parametrize("language", LANGUAGE_IDS)
async def test_language_cases(execute, registry, language):
    """languages.toml [<id>.tests], all cases of one language at once (one compile per
    program, the box slots run two at a time): hello -> AC with the exact stdout, sum
    of two integers -> AC, error -> RE, syntax -> CE with the compiler's message,
    memory -> MLE."""
    lang = registry[language]
    required = ["hello", "sum", "error"] + (["syntax"] if lang.compile_step else [])
    if lang.heap is not None or lang.processes is not None:
        required.append("memory")  # a runtime sizing itself or running many threads
    missing = [case for case in required if not lang.test_program(case)]
    assert not missing, f"languages.toml [{language}.tests] lacks {', '.join(missing)}"
    assert lang.packages, f"languages.toml [{language}] lacks packages"

    def program(case: str) -> str:
        source = lang.test_program(case)
        assert source is not None
        return source

    cases = {
        "hello": execute(language, program("hello"), time_limit_ms=5000,
                         memory_limit_mb=512, expected_output=HELLO),
        "sum": execute(language, program("sum"), stdin=SUM_STDIN, time_limit_ms=5000,
                       memory_limit_mb=512, expected_output=SUM),
        "error": execute(language, program("error"), time_limit_ms=5000, memory_limit_mb=512),
    }
    if lang.test_program("syntax"):
        cases["syntax"] = execute(language, program("syntax"))
    if lang.test_program("memory"):
        cases["memory"] = execute(language, program("memory"), time_limit_ms=5000,
                                  memory_limit_mb=SMALL_MEMORY_MB)
    start = time.monotonic()
    results = dict(zip(cases, await asyncio.gather(*cases.values()), strict=True))
    print(f"{language}: {time.monotonic() - start:.1f} s for {len(cases)} cases")

    hello = results["hello"]
    assert hello.status is Status.ACCEPTED, describe(hello)
    assert hello.stdout == HELLO
    assert results["sum"].status is Status.ACCEPTED, describe(results["sum"])
    assert results["sum"].stdout.strip() == SUM.strip()
    error = results["error"]
    assert error.status is Status.RUNTIME_ERROR, describe(error)
    assert error.exit_code != 0 or error.signal is not None
    if "syntax" in results:
        syntax = results["syntax"]
        assert syntax.status is Status.COMPILE_ERROR, describe(syntax)
        # The compiler's own message: it names the source file or says "error".
        output = syntax.compile_output or ""
        assert (lang.source in output or lang.source.rsplit(".", 1)[0] in output
                or "error" in output.lower()), output
        assert syntax.time_ms is None and syntax.stdout == ""
    if "memory" in results:
        memory = results["memory"]
        assert memory.status is Status.MEMORY_LIMIT_EXCEEDED, describe(memory)


ECHO = {
    "python3": "print(input())",
    "c": '#include <stdio.h>\nint main(void){char b[64];scanf("%63s",b);printf("%s\\n",b);}',
    "cpp": '#include <iostream>\nint main(){std::string s;std::cin>>s;std::cout<<s<<"\\n";}',
    "java": ('import java.util.*;\npublic class Main{public static void main(String[] a){'
             'System.out.println(new Scanner(System.in).next());}}'),
    "javascript": ('const l=require("fs").readFileSync(0,"utf8").trim();console.log(l);'),
}


@pytest.mark.parametrize("language", sorted(ECHO))
async def test_stdin_echo(execute, language):
    result = await execute(language, ECHO[language], stdin="hello\n", time_limit_ms=5000,
                           memory_limit_mb=512)
    assert result.status is Status.ACCEPTED, result
    assert result.stdout == "hello\n"
    assert result.exit_code == 0 and result.signal is None
    assert 0 <= result.time_ms < 5000
    assert 0 <= result.wall_time_ms < 11000
    assert 0 <= result.memory_kb < 512 * 1024


async def test_c_syntax_error_is_compile_error_with_gcc_message(execute):
    result = await execute("c", "int main(void) { return 0 }\n")
    assert result.status is Status.COMPILE_ERROR
    assert "error" in result.compile_output and "main.c" in result.compile_output
    assert result.exit_code is None and result.time_ms is None and result.memory_kb is None
    assert result.stdout == "" and result.stderr == ""


async def test_exit_code_3_is_runtime_error(execute):
    result = await execute("c", "#include <stdlib.h>\nint main(void){exit(3);}")
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 3 and result.signal is None


async def test_abort_is_runtime_error_with_sigabrt(execute):
    result = await execute("c", "#include <stdlib.h>\nint main(void){abort();}")
    assert result.status is Status.RUNTIME_ERROR
    assert result.signal == 6 and result.exit_code is None


async def test_infinite_loop_is_time_limit_exceeded(execute):
    result = await execute("python3", "while True: pass", time_limit_ms=500)
    assert result.status is Status.TIME_LIMIT_EXCEEDED
    assert 500 <= result.time_ms < 1500


async def test_wrong_answer(execute):
    result = await execute("python3", "print(41)", expected_output="42\n")
    assert result.status is Status.WRONG_ANSWER
    ok = await execute("python3", "print(42)  ", expected_output="42")
    assert ok.status is Status.ACCEPTED


async def test_missing_toolchain_is_unavailable_not_a_crash(sandbox, config, tmp_path):
    """The start-up probe: a compiler that is not installed, a version command that
    fails in the box -> unavailable with the reason; a working toolchain keeps its
    version."""
    from sandboxd.runner import Runner
    from sandboxd.server import probe_versions

    (tmp_path / "l.toml").write_text('''
[missing]
name = "Missing"
source = "main.x"
packages = ["no-such-package"]
compile = ["/usr/bin/no-such-compiler", "main.x"]
run = ["./main"]
version = ["/usr/bin/no-such-compiler", "--version"]

[failing]
name = "Failing"
source = "main.sh"
run = ["/bin/sh", "main.sh"]
version = ["/bin/sh", "-c", "echo broken toolchain; exit 2"]

[working]
name = "Working"
source = "main.sh"
run = ["/bin/sh", "main.sh"]
version = ["/bin/sh", "-c", "echo version 1.2.3"]
''')
    reg = languages.load(tmp_path / "l.toml", config.sandbox.rootfs_dir)
    await probe_versions(Runner(sandbox, reg, config), reg)
    described = {d["id"]: d for d in reg.describe(config)}
    assert described["missing"]["available"] is False
    assert "/usr/bin/no-such-compiler" in described["missing"]["unavailable_reason"]
    assert "no-such-package" in described["missing"]["unavailable_reason"]
    assert described["failing"]["available"] is False
    assert "broken toolchain" in described["failing"]["unavailable_reason"]
    assert described["working"]["available"] is True
    assert described["working"]["version"] == "1.2.3"
