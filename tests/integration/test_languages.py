"""Every language of languages.toml runs its self-test, and the walking-skeleton cases."""

from __future__ import annotations

import pytest

from sandboxd import config as config_mod
from sandboxd import languages
from sandboxd.model import Status

_cfg = config_mod.Config()
LANGUAGE_IDS = [lang.id for lang in languages.load(_cfg.server.languages_file,
                                                    _cfg.sandbox.rootfs_dir)]


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
