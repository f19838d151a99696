"""GET /openapi.json cannot drift from the code: every field the API accepts or returns
is in the document and nothing else, every route is described and only those, and the
answers of the code validate against it."""

from __future__ import annotations

import dataclasses
from typing import Any

import jsonschema_rs  # comes with schemathesis (the test extra)
import pytest
import schemathesis
from aiohttp import web

from sandboxd import api, console, judge0, openapi, runner
from sandboxd.api import create_app
from sandboxd.config import Config, ConsoleConfig, Judge0Config
from sandboxd.metrics import Metrics
from sandboxd.model import Result, Status
from tests.unit.test_api import FakeService, make_config
from tests.unit.test_judge0 import Catalog


def schemas(config: Config | None = None) -> dict[str, Any]:
    return openapi.document(config or Config())["components"]["schemas"]


def validator(name: str, config: Config | None = None) -> Any:
    doc = openapi.document(config or Config())
    return jsonschema_rs.Draft202012Validator(
        {**doc["components"]["schemas"][name], "components": doc["components"]})


def full_app(config: Config) -> web.Application:
    """The app as server.py composes it."""
    service, catalog, metrics = FakeService(), Catalog(), Metrics()
    app = create_app(service, catalog, config, metrics=metrics)
    if config.judge0.enabled:
        judge0.add_judge0_routes(app, service=service, languages=catalog, config=config)
    openapi.add_openapi_route(app, config)
    if config.console.enabled:
        console.add_console_routes(app, service=service, languages=catalog, config=config,
                                   metrics=metrics, host=console.HostInfo("6.1", "v2"))
    return app


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """Every route but the console's page and static files (no API)."""
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path not in console.STATIC_FILES:
            found.add((route.method.lower(), path))
    return found


def documented(config: Config) -> set[tuple[str, str]]:
    return {(method, path) for path, item in openapi.document(config)["paths"].items()
            for method in item}


def test_the_native_submission_fields_are_the_parsers() -> None:
    submission = schemas()["Submission"]
    assert set(submission["properties"]) == api.KNOWN_FIELDS
    assert submission["required"] == list(api.REQUIRED_FIELDS)
    assert set(schemas()["Test"]["properties"]) == api.TEST_FIELDS
    assert set(schemas()["File"]["properties"]) == api.FILE_FIELDS


def test_the_result_fields_are_the_results() -> None:
    result = schemas()["Result"]
    bare = Result(status=Status.ACCEPTED).to_json("id")
    assert result["required"] == list(bare)
    with_message = Result(status=Status.INTERNAL_ERROR, message="x").to_json("id")
    # Beyond Result.to_json: what the runner puts into Result.extra.
    assert set(result["properties"]) - set(with_message) == {"tests", "checker_message",
                                                              "interactor_message"}
    test_entry = openapi.TEST_RESULT["properties"]
    assert {"status", *runner._TEST_FIELDS, *runner.SKIPPED_TEST} <= set(test_entry)


def test_the_judge0_fields_are_judge0_pys() -> None:
    request = schemas()["Judge0Submission"]["properties"]
    assert set(request) == (set(judge0.REQUEST_FIELDS) | set(judge0.FIXED_FIELDS)
                            | set(judge0.UNSUPPORTED_FIELDS))
    assert set(schemas()["Judge0Result"]["properties"]) == set(judge0.RESPONSE_FIELDS)


@pytest.mark.parametrize("judge0_on", [True, False])
@pytest.mark.parametrize("console_on", [True, False])
def test_every_route_is_documented_and_only_those(judge0_on: bool, console_on: bool) -> None:
    config = dataclasses.replace(make_config(), judge0=Judge0Config(enabled=judge0_on),
                                 console=ConsoleConfig(enabled=console_on))
    assert routes_of(full_app(config)) == documented(config)


def test_limits_come_from_the_configuration() -> None:
    base = Config()
    config = dataclasses.replace(base, limits=dataclasses.replace(
        base.limits, time_limit_ms=dataclasses.replace(base.limits.time_limit_ms, max=3000)))
    assert schemas(config)["Submission"]["properties"]["time_limit_ms"]["maximum"] == 3000


def test_tokens_are_declared_when_configured() -> None:
    doc = openapi.document(make_config(tokens=("t" * 32,)))
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "judge0Token"}
    assert "401" in doc["paths"]["/execute"]["post"]["responses"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "securitySchemes" not in openapi.document(Config())["components"]


@pytest.mark.parametrize("result", [
    Result(status=Status.ACCEPTED, stdout="x", exit_code=0, time_ms=1, wall_time_ms=2,
           memory_kb=3),
    Result(status=Status.INTERNAL_ERROR, message="the box failed"),
    Result(status=Status.WRONG_ANSWER, extra={"tests": [runner.SKIPPED_TEST],
                                              "checker_message": "no"}),
])
def test_results_validate(result: Result) -> None:
    validator("Result").validate(result.to_json("abc"))
    shown = judge0.render("0" * 32, result, tuple(judge0.RESPONSE_FIELDS), encoded=True)
    validator("Judge0Result").validate(shown)


def test_a_field_the_schema_does_not_know_fails_validation() -> None:
    with pytest.raises(jsonschema_rs.ValidationError):
        validator("Result").validate({**Result(status=Status.ACCEPTED).to_json("a"),
                                      "surprise": 1})


async def test_the_document_is_served(aiohttp_client: Any) -> None:
    config = make_config()
    client = await aiohttp_client(full_app(config))
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["openapi"] == "3.1.0" and body == openapi.document(config)


def test_the_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(openapi.document(Config()))
    assert len(list(schema.get_all_operations())) == len(documented(Config()))


def test_languages_are_enumerated_when_known() -> None:
    found = schemas_with(["c", "python3"])
    assert found["Submission"]["properties"]["language"]["enum"] == ["c", "python3"]
    assert found["Judge0Submission"]["properties"]["language_id"]["enum"] == [48, 49, 50, 71]


def schemas_with(languages: list[str]) -> dict[str, Any]:
    return openapi.document(Config(), languages)["components"]["schemas"]
