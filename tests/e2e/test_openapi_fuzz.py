"""schemathesis against the live daemon's GET /openapi.json: generated requests to every
operation (stateless), and chains that follow the document's links from a POST to the
GET of what it created (stateful). Whatever is sent, the daemon must answer: no 5xx, a
status code, content type, headers and body the document allows, within the timeout.

Bounded and derandomized (the same examples every run), so it takes a minute or two on
a two-core host; the daemon loads two languages, so generated jobs that do run (a
random source in C or Python) end quickly.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandboxd import openapi
from sandboxd.config import Config, _build
from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Seconds one request may take: a ?wait=true job ends well within it (limits are at
# most 10 s CPU, 30 s wall), a hang does not.
REQUEST_TIMEOUT_S = 60
STATELESS = settings(max_examples=50, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck),
                     phases=[Phase.explicit, Phase.generate])
STATEFUL = settings(max_examples=50, stateful_step_count=5, derandomize=True, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate])


# Small jobs: generated limits are in range, but no generated job may take long.
CONFIG = ('[sandbox]\nstate_dir = "/run/sandboxd-test"\n'
          "[limits]\ntime_limit_ms = { default = 500, min = 1, max = 1000 }\n"
          "wall_time_limit_ms = { default = 0, min = 1, max = 3000 }\n")


def _config() -> Config:
    return _build(Config(), tomllib.loads(CONFIG), "")


# The document for this configuration, built here so pytest can collect one test per
# operation; test_the_daemon_serves_this_document checks the daemon serves the same.
LANGUAGES = ["c", "python3"]
DOCUMENT = openapi.document(_config(), LANGUAGES)
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("openapi"), languages=LANGUAGES,
                     config_text=CONFIG, log_name="daemon.log")
    try:
        yield d
    finally:
        if d.process.poll() is None:
            stop_daemon(d)


def test_the_daemon_serves_this_document(daemon: Daemon) -> None:
    status, served, _ = daemon.request("GET", "/openapi.json")
    assert status == 200 and served == orjson.loads(orjson.dumps(DOCUMENT))


@schema.parametrize()
@STATELESS
def test_every_operation_keeps_to_the_document(case: Any, daemon: Daemon) -> None:
    case.call_and_validate(base_url=daemon.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)


def test_linked_sequences_keep_to_the_document(daemon: Daemon) -> None:
    machine = schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": daemon.url, "timeout": REQUEST_TIMEOUT_S}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    run_state_machine_as_test(Machine, settings=STATEFUL)
