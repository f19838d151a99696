"""Fixtures for kernel tests: one real Sandbox (fork server, cgroups) per session.

The cgroup backend is whatever this host offers (`detect("auto")`: v1 on our
hybrid CI host, v2 inside the VM lane); SANDBOXD_TEST_CGROUP forces one. Test ids
carry the backend, so a report says which kernel path each result proves.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from sandboxd import config as config_mod
from sandboxd import languages
from sandboxd.jail.supervisor import Sandbox
from sandboxd.model import Limits, Result, Submission
from sandboxd.runner import Runner
from tests.conftest import SLOWDOWN, require_kernel

STATE_DIR = "/run/sandboxd-test"  # shared by test daemons: one private ws mount


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    require_kernel()
    sb = Sandbox(state_dir=STATE_DIR, slots=2,
                 cgroup_version=os.environ.get("SANDBOXD_TEST_CGROUP", "auto"))
    sb.start()
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture(scope="session")
def config() -> config_mod.Config:
    cfg = config_mod.Config()
    if SLOWDOWN == 1:
        return cfg
    c = cfg.sandbox.compile
    compile_limits = dataclasses.replace(c, cpu_ms=int(c.cpu_ms * SLOWDOWN),
                                         wall_ms=int(c.wall_ms * SLOWDOWN))
    return dataclasses.replace(cfg, sandbox=dataclasses.replace(cfg.sandbox,
                                                                compile=compile_limits))


@pytest.fixture(scope="session")
def registry(config: config_mod.Config) -> languages.Registry:
    return languages.load(config.server.languages_file, config.sandbox.rootfs_dir)


@pytest.fixture(scope="session")
def runner(sandbox: Sandbox, registry: languages.Registry, config) -> Runner:
    return Runner(sandbox, registry, config)


def as_bytes(text: str | bytes) -> bytes:
    """A test's input as the model holds it (bytes); text as UTF-8, as the API takes it."""
    return text.encode() if isinstance(text, str) else text


@pytest.fixture
def execute(runner: Runner):
    """`await execute(language, source, stdin=..., time_limit_ms=..., ...)` -> Result."""

    async def run(language: str, source: str, stdin: str | bytes = "", *,
                  time_limit_ms: int = 2000, wall_time_limit_ms: int | None = None,
                  memory_limit_mb: int = 256, expected_output: str | bytes | None = None
                  ) -> Result:
        limits = Limits(time_limit_ms=time_limit_ms,
                        wall_time_limit_ms=wall_time_limit_ms or 2 * time_limit_ms + 1000,
                        memory_limit_mb=memory_limit_mb)
        return await runner.run(Submission(language=language, source=source, limits=limits,
                                           stdin=as_bytes(stdin),
                                           expected_output=None if expected_output is None
                                           else as_bytes(expected_output)))

    return run


def pytest_collection_modifyitems(config, items):
    # Name the cgroup backend in every kernel test's report line.
    from tests.conftest import kernel_unavailable

    if kernel_unavailable() is not None:
        return
    from sandboxd.jail import cgroup

    version = cgroup.detect(os.environ.get("SANDBOXD_TEST_CGROUP", "auto")).version
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            item.user_properties.append(("cgroup", version))
