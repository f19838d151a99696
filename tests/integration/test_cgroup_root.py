"""`sandbox.cgroup_root` on the real kernel: the root is created where it is missing
(every v1 hierarchy, or the v2 tree with controllers enabled), boxes live directly below
it, and a real run works there. Each test removes the root it created."""

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
            for box in (p for p in d.iterdir() if p.is_dir()) if d.is_dir() else ():
                box.rmdir()
            if d.is_dir():
                d.rmdir()


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
        assert sorted(str(Path(p).parent.parent) for p in box.procs_files) == sorted(
            str(d) for d in dirs)  # <mount><cgroup_root>/box-…/cgroup.procs
        assert [p.name for p in backend.box_dirs()] == [box.name]
        assert backend.box_dirs()[0].parent in dirs
    finally:
        box.remove()
    assert backend.box_dirs() == []
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
                      "procs_files": [list(b.procs_files) for b in seen],
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
    dirs = {str(d) for d in _root_dirs(cg.detect(VERSION, root_name))}
    assert out["procs_files"], out
    for files in out["procs_files"]:
        assert {str(Path(p).parent.parent) for p in files} == dirs, files
        assert len(files) == len(dirs)
