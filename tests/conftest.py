"""Shared test plumbing: kernel tests run here as root, or say exactly why they cannot.

On a host that cannot build sandboxes (not root, no usable cgroups) kernel tests
skip with the reason, unless SANDBOXD_MUST_WORK=1 (set by .ci/run): then they
fail, so CI can never go green by skipping.
"""

from __future__ import annotations

import functools
import os

import pytest

MUST_WORK = os.environ.get("SANDBOXD_MUST_WORK") == "1"
# Under software emulation (the VM lane) everything runs several times slower. "Fast
# enough" thresholds (and the compile step's limits) scale by this factor; the run
# limits and the assertions about their precision do not.
SLOWDOWN = float(os.environ.get("SANDBOXD_TEST_SLOWDOWN", "1"))


@functools.cache
def kernel_unavailable() -> str | None:
    """Why this host cannot run real sandboxes, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    from sandboxd.jail import cgroup
    from sandboxd.jail.spec import JailError

    try:
        cgroup.detect(os.environ.get("SANDBOXD_TEST_CGROUP", "auto"))
    except JailError as e:
        return f"no usable cgroups: {e}"
    if not os.path.exists("/proc/self/ns/user"):
        return "kernel without user namespaces"
    return None


def require_kernel() -> None:
    reason = kernel_unavailable()
    if reason is None:
        return
    if MUST_WORK:
        pytest.fail(f"SANDBOXD_MUST_WORK=1 but this host cannot run sandboxes: {reason}")
    pytest.skip(f"cannot run sandboxes on this host: {reason}")
