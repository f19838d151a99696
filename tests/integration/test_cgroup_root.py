"""`sandbox.cgroup_root` on the real kernel: the root is created where it is missing
(every v1 hierarchy, or the v2 tree with controllers enabled), boxes live directly below
it (with their keeper/ and program/ memory leaves), and a real run works there. Each test
removes the root it created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.jail import cgroup as cg
from sandboxd.jail.spec import JailError
from tests.conftest import require_kernel

VERSION = os.environ.get("SANDBOXD_TEST_CGROUP", "auto")
REPO = Path(__file__).resolve().parents[2]


def _root_dirs(backend: cg.CgroupBackend) -> tuple[Path, ...]:
    if isinstance(backend, cg.V1Backend):
        return backend.root_dirs
    assert isinstance(backend, cg.V2Backend)
    return (backend.root,)


def _memory_root(backend: cg.CgroupBackend) -> Path:
    return backend.roots["memory"] if isinstance(backend, cg.V1Backend) else _root_dirs(
        backend)[0]


def _expected_procs_files(backend: cg.CgroupBackend, name: str) -> set[str]:
    """A box directly below the root in every hierarchy, joined there, except in the memory
    hierarchy: through its keeper (v2: only there, no internal processes)."""
    memory = _memory_root(backend)
    return {str((d / name / cg.KEEPER if d == memory else d / name) / "cgroup.procs")
            for d in _root_dirs(backend)}


def _rmtree_cgroups(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs has no rm -r)."""
    for child in (p for p in path.iterdir() if p.is_dir()):
        _rmtree_cgroups(child)
    path.rmdir()


@pytest.fixture
def root_name() -> Iterator[str]:
    """A cgroup root that does not exist yet; removed (with its boxes) afterwards."""
    require_kernel()
    name = f"/sandboxd-test-{os.getpid()}"
    backend = cg.detect(VERSION, name)
    dirs = _root_dirs(backend)
    assert not any(d.exists() for d in dirs), f"{name} exists already"
    try:
        yield name
    finally:
        backend.sweep_stale()
        for d in dirs:
            if d.is_dir():
                _rmtree_cgroups(d)


def test_cgroup_root_is_created_in_every_hierarchy_and_holds_the_boxes(root_name):
    backend = cg.detect(VERSION, root_name)
    backend.prepare()
    dirs = _root_dirs(backend)
    assert all(d.is_dir() for d in dirs)
    assert len(set(dirs)) == len(dirs)
    if isinstance(backend, cg.V2Backend):
        enabled = (backend.root / "cgroup.subtree_control").read_text().split()
        assert {"cpu", "memory", "pids"} <= set(enabled)
    box = backend.create(cg.CgroupLimits(memory_bytes=64 << 20, processes=8, cpu_share=1.0))
    try:
        # <mount><cgroup_root>/box-…/cgroup.procs; memory: <…>/box-…/keeper/cgroup.procs
        assert len(box.procs_files) == len(dirs)
        assert set(box.procs_files) == _expected_procs_files(backend, box.name)
        program = _memory_root(backend) / box.name / cg.PROGRAM
        assert box.program_procs_file == str(program / "cgroup.procs")
        assert all(Path(p).is_file() for p in (*box.procs_files, box.program_procs_file))
        assert [p.name for p in backend.box_dirs()] == [box.name]
        assert backend.box_dirs()[0].parent in dirs
        assert backend.box_dirs()[0] == program.parent
    finally:
        box.remove()
    assert backend.box_dirs() == []
    assert [p for d in dirs for p in d.iterdir() if p.is_dir()] == []  # leaves gone too
    backend.prepare()  # idempotent: a restarted daemon finds its root in place


def test_cgroup_root_error_names_the_key_and_the_path(root_name):
    # A root below a regular file of cgroupfs cannot be created: v1 creates it with its
    # parents in one go (ENOTDIR), v2 one level at a time (EEXIST: cgroup.procs is a file).
    backend = cg.detect(VERSION, "/cgroup.procs/sandboxd")
    with pytest.raises(JailError) as e:
        backend.prepare()
    message = str(e.value)
    assert 'sandbox.cgroup_root = "/cgroup.procs/sandboxd"' in message, message
    tried = _root_dirs(backend)[0]
    if backend.version == "v1":
        assert f"cannot create cgroup {tried}: Not a directory (ENOTDIR)" in message, message
    else:
        assert f"cannot create cgroup {tried.parent}: File exists (EEXIST)" in message, message


RUN_ONE = textwrap.dedent("""
    import asyncio, json, os, sys
    from sandboxd import config as config_mod, languages
    from sandboxd.jail.supervisor import Sandbox
    from sandboxd.model import Limits, Submission
    from sandboxd.runner import Runner

    cfg = config_mod.Config()
    sb = Sandbox(state_dir="/run/sandboxd-test", slots=1, cgroup_root=sys.argv[1],
                 cgroup_version=os.environ.get("SANDBOXD_TEST_CGROUP", "auto"))
    seen = []
    create = sb.cgroups.create
    sb.cgroups.create = lambda limits: seen.append(create(limits)) or seen[-1]
    sb.start()
    try:
        runner = Runner(sb, languages.load(cfg.server.languages_file, cfg.sandbox.rootfs_dir),
                        cfg)
        result = asyncio.run(runner.run(Submission(
            language="python3", source="print(6 * 7)",
            limits=Limits(time_limit_ms=2000, wall_time_limit_ms=10000, memory_limit_mb=64))))
    finally:
        sb.close()
    print(json.dumps({"status": str(result.status), "stdout": result.stdout,
                      "message": result.message,
                      "boxes": [[b.name, list(b.procs_files), b.program_procs_file]
                                for b in seen],
                      "left": [p.name for p in sb.cgroups.box_dirs()]}))
""")


def test_a_sandbox_with_cgroup_root_runs_a_program_below_it(root_name):
    """Sandbox(cgroup_root=...) as the daemon builds it, in its own process (its own
    workspace directory and fork server)."""
    done = subprocess.run([sys.executable, "-c", RUN_ONE, root_name], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert (out["status"], out["stdout"]) == ("Accepted", "42\n"), out
    assert out["left"] == []
    backend = cg.detect(VERSION, root_name)
    dirs = _root_dirs(backend)
    assert out["boxes"], out
    for name, procs_files, program_procs_file in out["boxes"]:
        assert len(procs_files) == len(dirs), procs_files
        assert set(procs_files) == _expected_procs_files(backend, name), procs_files
        assert program_procs_file == str(
            _memory_root(backend) / name / cg.PROGRAM / "cgroup.procs")
        assert all(not (d / name).exists() for d in dirs)  # removed, leaves and all
