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
