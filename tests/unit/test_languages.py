"""languages.toml and rootfs/ loading: the shipped table is valid, broken ones are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd import languages
from sandboxd.config import Config

CFG = Config()
GOOD = """
[c]
name = "C"
source = "main.c"
compile = ["gcc", "main.c"]
run = ["./a.out"]
"""


def write(tmp_path: Path, text: str, rootfs: str = 'paths = ["/usr", "/bin"]') -> Path:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    (tmp_path / "rootfs" / "base.toml").write_text(rootfs)
    path = tmp_path / "languages.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **kw) -> languages.Registry:
    return languages.load(write(tmp_path, text, **kw), tmp_path / "rootfs")


def test_shipped_table_has_the_required_languages():
    reg = languages.load(CFG.server.languages_file, CFG.sandbox.rootfs_dir)
    assert {"c", "cpp", "python3", "java", "javascript"} <= {lang.id for lang in reg}
    java = reg["java"]
    assert java.source == "Main.java" and java.compiled
    assert "Main" in java.run
    assert any("-std=c++17" in a for a in reg["cpp"].compile)
    assert not reg["python3"].compiled and not reg["javascript"].compiled
    # Interpreted languages still have a compile step: their syntax check.
    assert reg["python3"].compile_step is reg["python3"].check is not None
    assert reg["javascript"].check == ("/usr/bin/node", "--check", "main.js")
    for lang_id in ("cpp", "python3", "java", "javascript"):
        assert reg[lang_id].out_of_memory is not None, lang_id
    for lang in reg:
        assert lang.self_test, lang.id
        assert dict(lang.env).get("PATH"), lang.id


def test_rootfs_resolves_symlinks_and_skips_missing(tmp_path):
    reg = load(tmp_path, GOOD, rootfs='paths = ["/usr", "/bin", "/does-not-exist"]')
    rootfs = reg["c"].rootfs
    assert ("/usr" in {b.source for b in rootfs.binds})
    if os.path.islink("/bin"):
        assert ("/bin", os.readlink("/bin")) in rootfs.symlinks
    assert "/does-not-exist" not in {b.source for b in rootfs.binds}
    assert all(not b.writable for b in rootfs.binds)


def test_memory_placeholder_in_run_argv(tmp_path):
    reg = load(tmp_path, GOOD.replace('["./a.out"]', '["java", "-Xmx{memory_limit_mb}m"]'))
    assert reg["c"].run_argv(languages.StepSizes(128)) == ("java", "-Xmx128m")


HEAP_AND_STACK = GOOD.replace(
    'run = ["./a.out"]',
    'run = ["rt", "--heap={heap_limit_mb}", "--stack={stack_limit_kb}", "${HOME}", "${x:-y}"]\n'
    "heap = { percent = 85, reserve_mb = 8 }")


@pytest.mark.parametrize(("memory_mb", "stack_mb", "heap", "stack_kb"), [
    (256, 0, 209, 256 * 1024 - 1024),  # no RLIMIT_STACK: the stack may take all memory
    (1024, 0, 862, 1024 * 1024 - 1024),
    (4096, 0, 3473, 1024 * 1024 - 1024),  # at most 1 GiB: the JVM refuses a larger -Xss
    (256, 64, 209, 64 * 1024 - 1024),  # RLIMIT_STACK: below it, with room to spare
    (256, 512, 209, 256 * 1024 - 1024),  # a stack larger than memory is memory
    (16, 0, 5, 15 * 1024),
    (8, 0, 2, 7 * 1024),  # 85 % of 8 less 8 < a quarter of the limit
])
def test_heap_and_stack_placeholders(tmp_path, memory_mb, stack_mb, heap, stack_kb):
    lang = load(tmp_path, HEAP_AND_STACK)["c"]
    argv = lang.run_argv(languages.StepSizes(memory_mb, stack_mb))
    # Shell expansions (upper case or with operators) are not placeholders.
    assert argv == ("rt", f"--heap={heap}", f"--stack={stack_kb}", "${HOME}", "${x:-y}")


def test_shipped_java_and_node_commands_for_256_mib():
    reg = languages.load(CFG.server.languages_file, CFG.sandbox.rootfs_dir)
    java = reg["java"].run_argv(languages.StepSizes.run(CFG, 256))
    # Heap: 256 MiB less the JVM's measured 40 MiB outside it; main's thread stack: all.
    assert {"-XX:MaxRAM=256m", "-Xmx216m", "-Xss261120k", "-XX:+ExitOnOutOfMemoryError",
            "-XX:+DisplayVMOutputToStderr"} <= set(java)
    assert not any("{" in a for a in java)
    node = reg["javascript"].run_argv(languages.StepSizes.run(CFG, 256))
    assert node == ("/usr/bin/node", "--stack-size=261120", "--max-old-space-size=209",
                    "main.js")


def test_describe_fills_commands_for_the_default_limits():
    reg = languages.load(CFG.server.languages_file, CFG.sandbox.rootfs_dir)
    java = next(d for d in reg.describe(CFG) if d["id"] == "java")
    assert "-Xmx216m" in java["run_command"]  # 256 MiB, the default memory limit
    assert not any("{memory_limit_mb}" in a or "{heap_limit_mb}" in a
                   for d in reg.describe() for a in d["run_command"] + (d["compile_command"] or []))
    python = next(d for d in reg.describe() if d["id"] == "python3")
    assert python["compiled"] is False and python["compile_command"][0] == "/usr/bin/python3"


@pytest.mark.parametrize(("text", "words"), [
    (GOOD.replace('source = "main.c"\n', ""), ["c", "source"]),
    (GOOD.replace('run = ["./a.out"]', 'run = "./a.out"'), ["c", "run"]),
    (GOOD.replace('run = ["./a.out"]', "run = []"), ["c", "run"]),
    (GOOD + "colour = 1\n", ["c", "colour"]),
    (GOOD.replace('source = "main.c"', 'source = "../x.c"'), ["c", "source"]),
    (GOOD + 'rootfs = "nope"\n', ["c", "nope"]),
    (GOOD + "processes = 0\n", ["c", "processes"]),
    (GOOD + 'env = { PATH = 1 }\n', ["c", "env"]),
    (GOOD.replace("[c]", '["C!"]'), ["C!"]),
    ("", ["no language"]),
    ("[c\n", ["not valid TOML"]),
    (GOOD + 'check = ["python3", "-m", "py_compile"]\n', ["c", "compile and check"]),
    (GOOD.replace('"./a.out"', '"./a.out", "-m{memory_limt_mb}"'),
     ["c", "run", "{memory_limt_mb}", "{memory_limit_mb}"]),
    (GOOD.replace('"./a.out"', '"-Xmx{heap_limit_mb}m"'), ["c", "{heap_limit_mb}", "heap"]),
    (GOOD + "heap = { percent = 0 }\n", ["c", "heap", "percent"]),
    (GOOD + "heap = { reserve_mb = -1 }\n", ["c", "heap", "reserve_mb"]),
    (GOOD + "heap = { reserve = 40 }\n", ["c", "heap"]),
    (GOOD + "out_of_memory = 3\n", ["c", "out_of_memory"]),
    (GOOD + 'out_of_memory = { stderr = ["x"] }\n', ["c", "out_of_memory", "exit_codes"]),
    (GOOD + "out_of_memory = { exit_codes = [3] }\n", ["c", "out_of_memory", "stderr"]),
    (GOOD + 'out_of_memory = { exit_codes = [0], stderr = ["x"] }\n', ["c", "exit_codes"]),
    (GOOD + 'out_of_memory = { signals = ["SIGNOPE"], stderr = ["x"] }\n', ["c", "SIGNOPE"]),
    (GOOD + 'out_of_memory = { exit_codes = [3], stderr = ["(x"] }\n', ["c", "stderr", "(x"]),
    (GOOD + 'out_of_memory = { exit_codes = [3], stderr = ["x"], code = 1 }\n', ["c", "code"]),
    (GOOD + "packages = []\n", ["c", "packages"]),
    (GOOD + 'packages = ["gcc; rm -rf /"]\n', ["c", "packages"]),
    (GOOD + "compile_limits = { cpu_ms = 0 }\n", ["c", "compile_limits", "cpu_ms"]),
    (GOOD + "compile_limits = { cpu = 100 }\n", ["c", "compile_limits", "cpu"]),
    (GOOD + "[c.tests]\nhelo = 'x'\n", ["c", "tests", "helo"]),
    (GOOD + "[c.tests]\nhello = ''\n", ["c", "tests", "hello"]),
])
def test_broken_tables_name_language_and_field(tmp_path, text, words):
    with pytest.raises(languages.LanguageError) as e:
        load(tmp_path, text)
    for word in words:
        assert word in str(e.value)


def test_rootfs_include_cycle_is_an_error(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "a.toml").write_text('include = ["b"]')
    (tmp_path / "rootfs" / "b.toml").write_text('include = ["a"]')
    (tmp_path / "l.toml").write_text(GOOD + 'rootfs = "a"\n')
    with pytest.raises(languages.LanguageError, match="cycle"):
        languages.load(tmp_path / "l.toml", tmp_path / "rootfs")


def test_describe_has_versions_once_probed():
    reg = languages.load(CFG.server.languages_file, CFG.sandbox.rootfs_dir)
    reg.set_version("c", "12.2.0")
    entry = next(d for d in reg.describe() if d["id"] == "c")
    assert entry["version"] == "12.2.0" and entry["name"].endswith("12.2.0")
    assert entry["compiled"] is True


def test_parse_version():
    assert languages.parse_version('openjdk version "17.0.15" 2025-04-15') == "17.0.15"
    assert languages.parse_version("v20.20.2\n") == "20.20.2"
    assert languages.parse_version("Python 3.11.2") == "3.11.2"
    assert languages.parse_version("no digits") is None


def test_compile_limits_raise_the_configured_ones(tmp_path):
    reg = load(tmp_path, GOOD + 'packages = ["gcc"]\n'
               "compile_limits = { cpu_ms = 15000, memory_mb = 768 }\n")
    c = reg["c"]
    assert c.packages == ("gcc",)
    limits = c.compile_limits(CFG)
    assert (limits.cpu_ms, limits.wall_ms, limits.memory_mb, limits.processes) == (
        15000, CFG.sandbox.compile.wall_ms, 768, CFG.sandbox.compile.processes)
    # Placeholders of the compile step are filled from the raised limit.
    assert languages.StepSizes.compile(CFG, c).memory_limit_mb == 768
    entry = reg.describe(CFG)[0]
    assert entry["packages"] == ["gcc"] and entry["available"] is True


def test_unavailable_language_is_described_with_its_reason(tmp_path):
    reg = load(tmp_path, GOOD.replace('["gcc", "main.c"]', '["/nonexistent/cc", "main.c"]'))
    assert languages.missing_executables(reg["c"]) == ["/nonexistent/cc"]
    reg.set_unavailable("c", "toolchain not installed")
    entry = reg.describe(CFG)[0]
    assert entry["available"] is False
    assert entry["unavailable_reason"] == "toolchain not installed"
    assert reg.unavailable_reason("c") == "toolchain not installed"


def test_every_shipped_language_names_its_packages_and_tests():
    reg = languages.load(CFG.server.languages_file, CFG.sandbox.rootfs_dir)
    for lang in reg:
        assert lang.packages, f"{lang.id}: no packages"
        for case in ("hello", "sum", "error"):
            assert lang.test_program(case), f"{lang.id}: no tests.{case}"
        if lang.compile_step:
            assert lang.test_program("syntax"), f"{lang.id}: no tests.syntax"


def test_readme_example_table_is_a_valid_language(tmp_path):
    """README.md's "Adding a language" example loads as written, tests included."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Adding a language**"):]
    example = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    reg = load(tmp_path, example)
    (lang,) = list(reg)
    assert lang.packages and lang.check and lang.test_program("hello")
    assert all(lang.test_program(c) for c in ("hello", "sum", "error", "syntax"))
