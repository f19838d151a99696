"""HTTP API (SPEC "HTTP API"): routes, request validation and JSON errors.

Knows nothing of the kernel: it turns requests into `Submission`s for the service and
results into JSON. Every error response, aiohttp's own 404/405/413 included, is JSON
`{"error": "..."}` (see `_json_errors`), so clients never have to parse HTML.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from sandboxd.config import Bound, Config
from sandboxd.model import Limits, Submission, utf8_size
from sandboxd.outputs import comparable_expected
from sandboxd.service import QueueFull, Service, Unavailable

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying when the queue is full.
RETRY_AFTER_S = 1

# SPEC fields marked (later): accepted by name, refused until their issue is done.
LATER_FIELDS = frozenset(
    {
        "tests",
        "checker",
        "checker_epsilon",
        "checker_source",
        "checker_language",
        "interactor_source",
        "interactor_language",
        "files",
        "compiler_options",
        "command_line_arguments",
        "callback_url",
        "cache",
    }
)
REQUIRED_FIELDS = ("language", "source")
LIMIT_FIELDS = ("time_limit_ms", "wall_time_limit_ms", "memory_limit_mb")
KNOWN_FIELDS = frozenset({*REQUIRED_FIELDS, "stdin", "expected_output", *LIMIT_FIELDS})


class LanguageCatalog(Protocol):
    """The languages the daemon can run (languages.py)."""

    def __contains__(self, language_id: str) -> bool: ...

    def describe(self, config: Config) -> list[dict[str, Any]]:
        """One entry per language, commands as run under `config`'s default limits."""
        ...

    def unavailable_reason(self, language_id: str) -> str | None:
        """Why a known language cannot run on this host (toolchain missing), or None."""
        ...


class ApiError(Exception):
    """A request the API refuses; becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # orjson gives bytes; a bytes body skips json_response's str round trip.
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": message}, status, headers)


# -- request validation ------------------------------------------------------------


def decode_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError(400) saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, not {_json_type(data)}")
    return data


def parse_submission(
    data: dict[str, Any], languages: LanguageCatalog, config: Config
) -> Submission:
    """Validate a POST /execute body; never clamps, every refusal names the field."""
    _check_field_names(data)
    language = _string(data, "language")
    source = _string(data, "source")
    if language not in languages:
        known = ", ".join(sorted(str(d.get("id")) for d in languages.describe(config)))
        raise ApiError(400, f"unknown language {language!r}; known languages: {known}")
    unavailable = languages.unavailable_reason(language)
    if unavailable is not None:
        raise ApiError(400, f"language {language!r} is unavailable on this server: "
                            f"{unavailable}")
    _check_size("source", source, config.server.max_source_bytes, "server.max_source_bytes")
    stdin = _string(data, "stdin", default="")
    _check_size("stdin", stdin, config.server.max_stdin_bytes, "server.max_stdin_bytes")
    expected = data.get("expected_output")
    if expected is not None and not isinstance(expected, str):
        raise ApiError(400, f"expected_output must be a string or null, not {_json_type(expected)}")
    if expected is not None:
        _check_expected_output(expected, config.sandbox.output_limit_bytes)
    limits = config.limits
    time_ms = _limit(data, "time_limit_ms", limits.time_limit_ms, limits.time_limit_ms.default)
    wall_ms = _limit(
        data, "wall_time_limit_ms", limits.wall_time_limit_ms, limits.default_wall_ms(time_ms)
    )
    memory_mb = _limit(
        data, "memory_limit_mb", limits.memory_limit_mb, limits.memory_limit_mb.default
    )
    return Submission(
        language=language,
        source=source,
        limits=Limits(time_limit_ms=time_ms, wall_time_limit_ms=wall_ms, memory_limit_mb=memory_mb),
        stdin=stdin,
        expected_output=expected,
    )


def _check_size(name: str, value: str, maximum: int, setting: str) -> None:
    size = utf8_size(value)
    if size > maximum:
        raise ApiError(
            413, f"{name} is {size} bytes, over the maximum of {maximum} bytes ({setting})")


def _check_expected_output(expected: str, output_limit: int) -> None:
    # stdout is cut at the output limit (and the run is Output Limit Exceeded), so an
    # expected output longer than that, as compared, can never be matched: refuse the
    # request rather than run a job that cannot be Accepted.
    size = utf8_size(comparable_expected(expected))
    if size > output_limit:
        raise ApiError(
            400,
            f"expected_output is {size} bytes (without trailing whitespace), longer than "
            f"the output limit of {output_limit} bytes (sandbox.output_limit_bytes): no "
            "program's output could match it")


def _check_field_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - KNOWN_FIELDS - LATER_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    later = sorted(set(data) & LATER_FIELDS)
    if later:
        verb = "is" if len(later) == 1 else "are"
        raise ApiError(400, f"{', '.join(later)} {verb} not supported yet")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise ApiError(400, f"missing required field(s): {', '.join(missing)}")


def _string(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, not {_json_type(value)}")
    return value


def _limit(data: dict[str, Any], name: str, bound: Bound, default: int) -> int:
    if name not in data:
        return default
    value = data[name]
    # bool is a subclass of int in Python, but `true` is not a number of milliseconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, not {_json_type(value)}")
    if not bound.min <= value <= bound.max:
        raise ApiError(400, f"{name}={value} is out of range: allowed {bound.min}..{bound.max}")
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wants_wait(request: web.Request) -> bool:
    value = request.query.get("wait", "false").lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ApiError(400, f"wait must be true or false, not {value!r}")


# -- handlers ----------------------------------------------------------------------


class _Handlers:
    def __init__(self, service: Service, languages: LanguageCatalog, config: Config):
        self._service = service
        self._languages = languages
        self._config = config

    async def execute(self, request: web.Request) -> web.Response:
        wait = _wants_wait(request)
        # read() enforces client_max_size and raises 413, which the middleware makes JSON.
        data = decode_body(await request.read())
        submission = parse_submission(data, self._languages, self._config)
        try:
            submission_id = self._service.submit(submission)
        except Unavailable as e:
            # Nothing was stored: the client can retry the very same request.
            reason = str(e) if isinstance(e, QueueFull) else f"not accepting jobs: {e}"
            raise ApiError(503, reason, {"Retry-After": str(RETRY_AFTER_S)}) from None
        if not wait:
            return json_response({"submission_id": submission_id}, status=202)
        result = await self._service.wait(submission_id)
        return json_response(result.to_json(submission_id))

    async def result(self, request: web.Request) -> web.Response:
        submission_id = request.match_info["submission_id"]
        result = self._service.get(submission_id)
        if result is None:
            raise ApiError(404, f"no submission with id {submission_id!r}")
        return json_response(result.to_json(submission_id))

    async def languages(self, request: web.Request) -> web.Response:
        return json_response(self._languages.describe(self._config))

    async def health(self, request: web.Request) -> web.Response:
        if self._service.healthy:
            return json_response({"status": "ok"})
        return json_response(
            {"status": "unavailable", "error": "the daemon cannot run jobs right now"},
            status=503,
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error, ours or aiohttp's, into JSON; a crash is a logged 500."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, _http_error_message(request, e), _kept_headers(e))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error")


def _http_error_message(request: web.Request, e: web.HTTPException) -> str:
    if isinstance(e, web.HTTPNotFound):
        return f"no such endpoint: {request.method} {request.path}"
    if isinstance(e, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(e.allowed_methods))
        return f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return f"request body is over the maximum of {request.client_max_size} bytes"
    return e.reason


def _kept_headers(e: web.HTTPException) -> dict[str, str]:
    # Allow (405) and Retry-After tell the client what to do next; keep them.
    return {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}


def create_app(service: Service, languages: LanguageCatalog, config: Config) -> web.Application:
    app = web.Application(middlewares=[_json_errors], client_max_size=config.server.max_body_bytes)
    handlers = _Handlers(service, languages, config)
    app.add_routes(
        [
            web.post("/execute", handlers.execute),
            web.get("/result/{submission_id}", handlers.result),
            web.get("/languages", handlers.languages),
            web.get("/health", handlers.health),
        ]
    )
    return app
