"""The OpenAPI 3.1 document of the native API and of the Judge0 subset, served at
GET /openapi.json.

Built from the tables the code validates and answers with (api.py's field sets,
config.py's bounds, model.py's statuses and checkers, judge0.py's field tables), for
the daemon's own configuration; tests/unit/test_openapi.py checks that every field the
API accepts or returns is described here and nothing else is, and the schemathesis run
(tests/e2e/test_openapi_fuzz.py) that the live daemon keeps to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from sandboxd import __version__, api, console, judge0
from sandboxd.config import Bound, Config
from sandboxd.model import CHECKERS, CUSTOM_CHECKER, LANGUAGE_ROLES, Status

PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
NULLABLE_INT: Schema = {"type": ["integer", "null"]}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": STRING},
    # A Judge0 refusal names its field besides: {"<field>": ["<rule>"], "error": ...}.
    "additionalProperties": {"type": "array", "items": STRING},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _bounded(bound: Bound) -> Schema:
    return {"type": "integer", "minimum": bound.min, "maximum": bound.max}


def _strings(maximum: int) -> Schema:
    return {"type": "array", "maxItems": maximum,
            "items": {"type": "string", "maxLength": api.MAX_ARGUMENT_LENGTH}}


# -- native ---------------------------------------------------------------------------


def _language(languages: Sequence[str]) -> Schema:
    schema: Schema = {**STRING, "description": "a language id of GET /languages"}
    if languages:
        schema["enum"] = list(languages)
    return schema


def submission_properties(config: Config, languages: Sequence[str] = ()) -> dict[str, Schema]:
    """POST /execute's fields (api.KNOWN_FIELDS); `languages`: the
    ids the daemon loaded (any string if empty)."""
    limits = config.limits
    return {
        "language": _language(languages),
        "source": STRING,
        "stdin": STRING,
        "expected_output": NULLABLE_STRING,
        "time_limit_ms": _bounded(limits.time_limit_ms),
        "wall_time_limit_ms": _bounded(limits.wall_time_limit_ms),
        "memory_limit_mb": _bounded(limits.memory_limit_mb),
        "callback_url": NULLABLE_STRING,
        "cache": BOOLEAN,
        "tests": {"type": "array", "minItems": 1, "maxItems": config.server.max_tests,
                  "items": _ref("Test")},
        "stop_on_first_failure": BOOLEAN,
        "checker": {"enum": [*CHECKERS, CUSTOM_CHECKER]},
        "checker_epsilon": {"type": "number", "minimum": 0,
                            "maximum": api.MAX_CHECKER_EPSILON},
        "checker_source": STRING,
        "checker_language": _language(languages),
        "files": {"type": "array", "maxItems": config.server.max_files,
                  "items": _ref("File")},
        "command_line_arguments": _strings(api.MAX_ARGUMENTS),
        "compiler_options": _strings(api.MAX_ARGUMENTS),
        "interactor_source": {**STRING, "description": "an interactive problem's "
                              "interactor (with interactor_language; never with checker)"},
        "interactor_language": _language(languages),
    }


def test_properties(config: Config) -> dict[str, Schema]:
    limits = config.limits
    return {
        "stdin": STRING,
        "expected_output": NULLABLE_STRING,
        "time_limit_ms": _bounded(limits.time_limit_ms),
        "wall_time_limit_ms": _bounded(limits.wall_time_limit_ms),
    }


FILE_PROPERTIES: dict[str, Schema] = {
    "name": {"type": "string", "pattern": f"^{api.FILE_NAME.pattern}$"},
    "content": STRING,
    "encoding": {"enum": list(api.FILE_ENCODINGS)},
}

# A test's entry in a result's `tests` (runner.py): a status, or "Skipped".
TEST_RESULT: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": [s.value for s in Status if s.is_final] + ["Skipped"]},
        "stdout": STRING, "stderr": STRING, "exit_code": NULLABLE_INT, "signal": NULLABLE_INT,
        "time_ms": NULLABLE_INT, "wall_time_ms": NULLABLE_INT, "memory_kb": NULLABLE_INT,
        "message": STRING, "checker_message": STRING, "interactor_message": STRING,
        "output_truncated": BOOLEAN,
    },
}

RESULT_PROPERTIES: dict[str, Schema] = {
    "submission_id": STRING,
    "status": {"enum": [s.value for s in Status]},
    "stdout": STRING,
    "stderr": STRING,
    "exit_code": NULLABLE_INT,
    "signal": NULLABLE_INT,
    "time_ms": NULLABLE_INT,
    "wall_time_ms": NULLABLE_INT,
    "memory_kb": NULLABLE_INT,
    "compile_output": STRING,
    "cached": BOOLEAN,
    # Only when set: why the sandbox failed (Internal Error).
    "message": STRING,
    # Result.extra, filled by the runner: the per-test list, a custom checker's or an
    # interactor's message.
    "tests": {"type": "array", "items": TEST_RESULT},
    "checker_message": STRING,
    "interactor_message": STRING,
}
# What every result has (Result.to_json); the rest appear when they apply.
RESULT_REQUIRED = ["submission_id", "status", "stdout", "stderr", "exit_code", "signal",
                   "time_ms", "wall_time_ms", "memory_kb", "compile_output", "cached"]

NATIVE_LANGUAGE: Schema = {
    "type": "object",
    "required": ["id", "name", "available"],
    "properties": {
        "id": STRING, "name": STRING, "version": NULLABLE_STRING, "compiled": BOOLEAN,
        "source_file": STRING,
        "compile_command": {"type": ["array", "null"], "items": STRING},
        "run_command": {"type": "array", "items": STRING},
        "available": BOOLEAN, "unavailable_reason": NULLABLE_STRING,
        "packages": {"type": "array", "items": STRING},
        "usable_as": {"type": "array", "items": {"enum": list(LANGUAGE_ROLES)}},
    },
}


# -- Judge0 ---------------------------------------------------------------------------

_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number",
               "boolean": "boolean"}


def judge0_submission_properties(languages: Sequence[str] = ()) -> dict[str, Schema]:
    """POST /submissions' fields (judge0.py's tables), each nullable (null: absent);
    language_id one of Judge0's ids of `languages` (any integer if empty)."""
    properties: dict[str, Schema] = {}
    for table in (judge0.REQUEST_FIELDS, judge0.FIXED_FIELD_TYPES,
                  judge0.UNSUPPORTED_FIELD_TYPES):
        for name, kind in table.items():
            properties[name] = {"type": [_JSON_TYPES[kind], "null"]}
    if languages:
        ids = sorted(i for i, lang in judge0.load_language_table().items() if lang in languages)
        properties["language_id"] = {"enum": ids}
    for name, value in judge0.FIXED_FIELDS.items():
        properties[name]["description"] = f"only {orjson.dumps(value).decode()}"
    for name, why in judge0.UNSUPPORTED_FIELDS.items():
        properties[name]["description"] = why
    return properties


def judge0_result_properties() -> dict[str, Schema]:
    properties: dict[str, Schema] = {}
    for name, kind in judge0.RESPONSE_FIELDS.items():
        if kind == "status":
            properties[name] = _ref("Judge0Status")
        elif name == "token":
            properties[name] = STRING
        else:
            properties[name] = {"type": [_JSON_TYPES[kind], "null"]}
    return properties


JUDGE0_STATUS: Schema = {
    "type": "object",
    "required": ["id", "description"],
    "properties": {"id": {"enum": [i for i, _ in judge0.STATUSES]},
                   "description": {"enum": [d for _, d in judge0.STATUSES]}},
}
JUDGE0_LANGUAGE: Schema = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "integer"}, "name": STRING},
}
JUDGE0_LANGUAGE_DETAIL: Schema = {
    "type": "object",
    "required": ["id", "name", "is_archived", "source_file", "compile_cmd", "run_cmd"],
    "properties": {"id": {"type": "integer"}, "name": STRING, "is_archived": BOOLEAN,
                   "source_file": NULLABLE_STRING, "compile_cmd": NULLABLE_STRING,
                   "run_cmd": STRING},
}


# -- the document ---------------------------------------------------------------------


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Schema]:
    reasons = {400: "malformed request, or a refused field", 401: "no valid token",
               404: "not found", 413: "over a size limit", 415: "the body is not JSON",
               422: "a refused Judge0 field (Judge0's shape)",
               503: "queue full or shutting down: retry after Retry-After"}
    return {str(code): _json(ERROR, reasons[code]) for code in codes}


def _query(name: str, schema: Schema, required: bool = False,
           description: str = "") -> Schema:
    parameter: Schema = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _path_parameter(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def native_paths(config: Config) -> dict[str, Schema]:
    wait = _query("wait", BOOLEAN, description="hold the request until the result "
                                                "(at most server.wait_cap_s)")
    accepted = {"type": "object", "required": ["submission_id"],
                "properties": {"submission_id": STRING,
                               "status": {"enum": [Status.QUEUED.value,
                                                   Status.RUNNING.value]}}}
    result_link = {"GetResult": {"operationId": "getResult",
                                 "parameters": {"submission_id": "$response.body#/submission_id"}}}
    pending_entry = {"type": "object", "required": ["submission_id", "status", "error"],
                     "properties": {"submission_id": STRING, "status": {"type": "null"},
                                    "error": STRING}}
    batch_size = config.server.max_batch
    return {
        "/execute": {"post": {
            "operationId": "execute",
            "summary": "Run one submission",
            "parameters": [wait],
            "requestBody": _body(_ref("Submission")),
            "responses": {
                "200": _json(_ref("Result"), "the final result (?wait=true)"),
                "202": {**_json(accepted, "accepted; poll GET /result/{id}"),
                        "links": result_link},
                **_errors(400, 404, 413, 415, 503)}}},
        "/execute/batch": {"post": {
            "operationId": "executeBatch",
            "summary": "Run several submissions, all or none",
            "requestBody": _body({"type": "object", "required": ["submissions"],
                                  "additionalProperties": False,
                                  "properties": {"submissions": {
                                      "type": "array", "minItems": 1, "maxItems": batch_size,
                                      "items": _ref("Submission")}}}),
            "responses": {
                "202": _json({"type": "object", "required": ["submission_ids"],
                              "properties": {"submission_ids": {"type": "array",
                                                                "items": STRING}}},
                             "accepted"),
                **_errors(400, 413, 415, 503)}}},
        "/result/{submission_id}": {"get": {
            "operationId": "getResult",
            "parameters": [_path_parameter("submission_id")],
            "responses": {"200": _json(_ref("Result"), "pending or final result"),
                          **_errors(404, 503)}}},
        "/result": {"get": {
            "operationId": "getResults",
            "parameters": [_query("ids", STRING, required=True,
                                  description=f"comma-separated ids, 1..{batch_size}")],
            "responses": {"200": _json({"type": "array", "items": {
                "anyOf": [_ref("Result"), pending_entry]}}, "the results in order"),
                **_errors(400)}}},
        "/languages": {"get": {
            "operationId": "getLanguages",
            "summary": "The native list; Judge0's to a Judge0 client (X-Judge0-App or "
                       "X-Auth-Token header)",
            "responses": {"200": _json({"anyOf": [
                {"type": "array", "items": _ref("Language")},
                {"type": "array", "items": _ref("Judge0Language")}]}, "the languages")}}},
        "/health": {"get": {
            "operationId": "health",
            "responses": {
                "200": _json({"type": "object", "required": ["status"],
                              "properties": {"status": {"const": "ok"}}}, "jobs can run"),
                "503": _json({"type": "object", "required": ["status", "error"],
                              "properties": {"status": {"const": "unavailable"},
                                             "error": STRING}}, "jobs cannot run")}}},
        "/metrics": {"get": {
            "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": STRING}}}}}},
        PATH: {"get": {
            "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "this document")}}},
    }


def judge0_paths(config: Config, prefix: str) -> dict[str, Schema]:
    encoded = _query("base64_encoded", BOOLEAN)
    fields = _query("fields", STRING, description="comma-separated fields, or *")
    name = prefix.strip("/").title()
    op = f"judge0{name}"
    token_link = {"GetSubmission": {"operationId": f"{op}GetSubmission",
                                    "parameters": {"token": "$response.body#/token"}}}
    batch_size = config.server.max_batch
    paths: dict[str, Schema] = {
        f"{prefix}/submissions": {"post": {
            "operationId": f"{op}CreateSubmission",
            "parameters": [encoded, _query("wait", BOOLEAN), fields],
            "requestBody": _body(_ref("Judge0Submission")),
            "responses": {"201": {**_json(_ref("Judge0Result"),
                                          "{token}, or the submission with ?wait=true"),
                                  "links": token_link},
                          **_errors(400, 413, 422, 503)}}},
        f"{prefix}/submissions/batch": {
            "post": {
                "operationId": f"{op}CreateSubmissions",
                "parameters": [encoded],
                "requestBody": _body({"type": "object", "required": ["submissions"],
                                      "properties": {"submissions": {
                                          "type": "array", "minItems": 1,
                                          "maxItems": batch_size,
                                          "items": _ref("Judge0Submission")}}}),
                "responses": {
                    "201": _json({"type": "array", "items": {"type": "object"}},
                                 "{token} or the errors of each, in order"),
                    "422": _json({"type": "array", "items": {"type": "object"}},
                                 "none was valid: the errors of each"),
                    **_errors(400, 413, 503)}},
            "get": {
                "operationId": f"{op}GetSubmissions",
                "parameters": [_query("tokens", STRING, required=True), encoded, fields],
                "responses": {"200": _json({"type": "object", "required": ["submissions"],
                                            "properties": {"submissions": {
                                                "type": "array", "items": {"anyOf": [
                                                    _ref("Judge0Result"), {"type": "null"}]}}}},
                                           "in order; null for an unknown token"),
                              **_errors(400)}}},
        f"{prefix}/submissions/{{token}}": {"get": {
            "operationId": f"{op}GetSubmission",
            "parameters": [_path_parameter("token"), encoded, fields],
            "responses": {"200": _json(_ref("Judge0Result"), "the submission"),
                          **_errors(400, 404, 503)}}},
        f"{prefix}/languages/{{language_id}}": {"get": {
            "operationId": f"{op}GetLanguage",
            "parameters": [_path_parameter("language_id")],
            "responses": {"200": _json(_ref("Judge0LanguageDetail"), "the language"),
                          **_errors(404)}}},
        f"{prefix}/statuses": {"get": {
            "operationId": f"{op}Statuses",
            "responses": {"200": _json({"type": "array", "items": _ref("Judge0Status")},
                                       "Judge0's statuses")}}},
        f"{prefix}/about": {"get": {
            "operationId": f"{op}About",
            "responses": {"200": _json({"type": "object", "required": ["version"],
                                        "properties": {"version": STRING}},
                                       "the Judge0 API version answered")}}},
        f"{prefix}/config_info": {"get": {
            "operationId": f"{op}ConfigInfo",
            "responses": {"200": _json({"type": "object"}, "Judge0's configuration keys")}}},
    }
    if prefix:
        paths[f"{prefix}/languages"] = {"get": {
            "operationId": f"{op}Languages",
            "responses": {"200": _json({"type": "array", "items": _ref("Judge0Language")},
                                       "Judge0's list")}}}
    return paths


def document(config: Config, languages: Sequence[str] = ()) -> Schema:
    """The OpenAPI document for a daemon running with `config` and the languages
    `languages` (their ids; empty: any language id is described as a string)."""
    paths = native_paths(config)
    if config.console.enabled:
        # The console's page and static files are no API; its status summary is.
        paths[console.STATUS_PATH] = {"get": {
            "operationId": "consoleStatus",
            "responses": {"200": _json({"type": "object", "required": ["queued", "running"],
                                        "properties": {"queued": {"type": "integer"},
                                                       "running": {"type": "integer"}}},
                                       "the status page's summary (docs/API.md)")}}}
    if config.judge0.enabled:
        paths.update(judge0_paths(config, ""))
        paths.update(judge0_paths(config, judge0.PREFIX))
    doc: Schema = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "sandboxd", "version": __version__,
                 "description": "The native API (docs/API.md) and the Judge0-compatible "
                                "subset (docs/JUDGE0.md)."},
        "paths": paths,
        "components": {"schemas": {
            "Submission": {"type": "object", "required": list(api.REQUIRED_FIELDS),
                           "additionalProperties": False,
                           "properties": submission_properties(config, languages)},
            "Test": {"type": "object", "additionalProperties": False,
                     "properties": test_properties(config)},
            "File": {"type": "object", "required": ["name", "content"],
                     "additionalProperties": False, "properties": FILE_PROPERTIES},
            "Result": {"type": "object", "required": RESULT_REQUIRED,
                       "additionalProperties": False, "properties": RESULT_PROPERTIES},
            "Language": NATIVE_LANGUAGE,
            "Error": ERROR,
            "Judge0Submission": {"type": "object", "required": ["source_code", "language_id"],
                                 "additionalProperties": False,
                                 "properties": judge0_submission_properties(languages)},
            "Judge0Result": {"type": "object", "additionalProperties": False,
                             "properties": judge0_result_properties()},
            "Judge0Status": JUDGE0_STATUS,
            "Judge0Language": JUDGE0_LANGUAGE,
            "Judge0LanguageDetail": JUDGE0_LANGUAGE_DETAIL,
        }},
    }
    if config.auth.tokens:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "judge0Token": {"type": "apiKey", "in": "header", "name": api.AUTH_TOKEN_HEADER},
        }
        doc["security"] = [{"bearer": []}, {"judge0Token": []}]
        for item in paths.values():
            for operation in item.values():
                operation["responses"].update(_errors(401))
        paths["/health"]["get"]["security"] = []
    return doc


def add_openapi_route(app: web.Application, config: Config,
                      languages: Sequence[str] = ()) -> None:
    """Serve the document at GET /openapi.json (behind the API's tokens, like the API)."""
    body = orjson.dumps(document(config, languages))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, handler)
