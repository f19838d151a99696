"""Imports flow one way: server -> api -> service -> runner -> {verdict, languages, jail}.

The jail knows nothing of HTTP, languages or verdicts; the API nothing of the kernel.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sandboxd"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names.add(module)
                if not node.module:
                    names.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("sandboxd")}


def modules_under(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).glob("*.py")) if sub else sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", modules_under("jail"), ids=lambda p: p.name)
def test_jail_imports_nothing_outside_itself(path):
    outside = {m for m in imported_modules(path) if not m.startswith("sandboxd.jail")}
    assert not outside, f"{path.name} imports {outside}"


@pytest.mark.parametrize("name", ["api.py", "service.py", "redis_backend.py"])
def test_http_side_never_imports_the_kernel_layer(name):
    mods = imported_modules(PACKAGE / name)
    assert not {m for m in mods if m.startswith("sandboxd.jail") or m in (
        "sandboxd.runner", "sandboxd.server")}, mods


@pytest.mark.parametrize("name", ["model.py", "config.py", "outputs.py", "lru.py"])
def test_pure_data_modules_import_no_other_layer(name):
    assert imported_modules(PACKAGE / name) <= {"sandboxd"}


def test_verdict_is_pure():
    mods = imported_modules(PACKAGE / "verdict.py")
    assert mods <= {"sandboxd.model", "sandboxd.model.Result", "sandboxd.model.Status",
                    "sandboxd.model.DEFAULT_CHECKER", "sandboxd.model.DEFAULT_CHECKER_EPSILON",
                    "sandboxd.outputs.check_output", "sandboxd.jail.spec",
                    "sandboxd.jail.spec.JailOutcome",
                    "sandboxd.jail.spec.Termination", "sandboxd.outputs",
                    "sandboxd.outputs.outputs_match", "sandboxd.outputs.as_text",
                    "sandboxd.model.decode_output"}, mods


@pytest.mark.parametrize("name", ["metrics.py", "logs.py"])
def test_metrics_and_logs_sit_beside_the_observer(name):
    # Reported to by service and runner, exposed by api: they never reach up or down.
    mods = {m.rsplit(".", 1)[0] if m.count(".") > 1 else m
            for m in imported_modules(PACKAGE / name)}
    assert mods <= {"sandboxd.model", "sandboxd.observer", "sandboxd.service"}, mods


@pytest.mark.parametrize("name", ["journal.py", "cache.py", "codec.py"])
def test_service_helpers_import_only_data_modules(name):
    # The journal and the cache sit below the service: data in, data out.
    allowed = {"sandboxd.model", "sandboxd.codec", "sandboxd.callbacks", "sandboxd.lru"}
    mods = {m.rsplit(".", 1)[0] if m.rsplit(".", 1)[0] in allowed else m
            for m in imported_modules(PACKAGE / name)}
    assert mods <= allowed, mods


@pytest.mark.parametrize(("name", "allowed"), [
    ("webhooks.py", {"sandboxd", "sandboxd.__version__", "sandboxd.callbacks", "sandboxd.config",
                     "sandboxd.model", "sandboxd.observer"}),
    ("callbacks.py", {"sandboxd.model"}),
])
def test_webhooks_know_only_the_contract_and_pure_data(name, allowed):
    """The dispatcher is wired in by server.py and called through callbacks.py: it knows
    nothing of HTTP routes, the service, the runner or the kernel."""
    mods = imported_modules(PACKAGE / name)
    assert {".".join(m.split(".")[:2]) for m in mods} <= allowed, mods


def test_console_is_an_http_client_of_the_api_and_the_metrics():
    """The web console (wired in by server.py) sits beside the API: it serves files and
    reads the metrics counters and the service's stats, never the runner or the kernel."""
    mods = imported_modules(PACKAGE / "console" / "__init__.py")
    allowed = {"sandboxd.api", "sandboxd.config", "sandboxd.metrics", "sandboxd.model"}
    assert {".".join(m.split(".")[:2]) for m in mods} <= allowed, mods


@pytest.mark.parametrize(("name", "allowed"), [
    ("judge0.py", {"sandboxd", "sandboxd.__version__", "sandboxd.api", "sandboxd.config",
                   "sandboxd.model", "sandboxd.service"}),
    ("openapi.py", {"sandboxd", "sandboxd.__version__", "sandboxd.api", "sandboxd.config",
                    "sandboxd.console", "sandboxd.judge0", "sandboxd.model"}),
])
def test_judge0_and_openapi_sit_beside_the_api(name, allowed):
    """The Judge0 face and the OpenAPI document (wired in by server.py) are HTTP like the
    API: they reach the service through api.JobService, never the runner or the kernel
    (judge0.py names only the service's exceptions)."""
    mods = imported_modules(PACKAGE / name)
    assert {".".join(m.split(".")[:2]) for m in mods} <= allowed, mods
