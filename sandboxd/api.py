"""HTTP API (docs/API.md): routes, authentication, request validation and JSON errors.

Knows nothing of the kernel: it turns requests into `Submission`s for the service and
results into JSON. Every error response, aiohttp's own 404/405/413 included, is JSON
`{"error": "..."}` (see `_json_errors`), so clients never have to parse HTML; an error
about a field starts with the field's name (`time_limit_ms: ...`, in a batch
`submissions[3].time_limit_ms: ...`) and says the rule it broke.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import hdrs, web

from sandboxd.config import Bound, Config
from sandboxd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sandboxd.metrics import Metrics
from sandboxd.model import Limits, Result, Submission, utf8_size
from sandboxd.outputs import comparable_expected
from sandboxd.service import QueueFull, ResultExpired, Stats, Unavailable

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying when the queue is full.
RETRY_AFTER_S = 1

# Fields of the contract whose features are not built yet: accepted by name, refused.
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
    }
)
REQUIRED_FIELDS = ("language", "source")
LIMIT_FIELDS = ("time_limit_ms", "wall_time_limit_ms", "memory_limit_mb")
KNOWN_FIELDS = frozenset(
    {*REQUIRED_FIELDS, "stdin", "expected_output", *LIMIT_FIELDS, "callback_url", "cache"})

MAX_CALLBACK_URL_LENGTH = 2048
# What `callback_check` answers when the daemon has no webhook dispatcher configured.
WEBHOOKS_OFF = "webhooks are off: no host is on the allow-list (webhooks.allowed_hosts)"
# application/json, or a structured-syntax JSON type such as application/problem+json.
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9!#$&^_.-]+\+)?json")
# Paths that never need a token: a load balancer's health check has none.
OPEN_PATHS = frozenset({"/health"})
# The app's open paths: OPEN_PATHS, plus what a module that adds routes (the web
# console's page and static files) registers there before the app starts.
PUBLIC_PATHS = web.AppKey("public_paths", set[str])

CallbackCheck = Callable[[str], str | None]


class LanguageCatalog(Protocol):
    """The languages the daemon can run (languages.py)."""

    def __contains__(self, language_id: str) -> bool: ...

    def describe(self, config: Config) -> list[dict[str, Any]]:
        """One entry per language, commands as run under `config`'s default limits."""
        ...

    def unavailable_reason(self, language_id: str) -> str | None:
        """Why a known language cannot run on this host (toolchain missing), or None."""
        ...


class JobService(Protocol):
    """What the API needs of the job service (service.py, or a fake in tests)."""

    async def submit(self, submission: Submission) -> str:
        """Accept one submission (QueueFull / ShuttingDown when it cannot); its id."""
        ...

    async def submit_many(self, submissions: list[Submission]) -> list[str]:
        """Accept all of them or none; their ids in order."""
        ...

    def get(self, job_id: str) -> Result | None | Awaitable[Result | None]:
        """The job's result (pending or final); None if unknown, ResultExpired if gone.
        A store that is not in this process (Redis) answers with an awaitable."""
        ...

    async def wait(self, job_id: str, timeout: float | None) -> Result:
        """The final result, or the pending one once `timeout` seconds pass."""
        ...

    def stats(self) -> Stats: ...

    def health_problem(self) -> str | None:
        """Why jobs cannot run right now, or None."""
        ...


T = TypeVar("T")


async def _resolved(value: T | Awaitable[T]) -> T:
    return await value if inspect.isawaitable(value) else value  # type: ignore[return-value]


class ApiError(Exception):
    """A request the API refuses; becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class FieldError(ApiError):
    """A refused field of a submission: `field: rule` (`field` None: the whole object)."""

    def __init__(self, status: int, field: str | None, rule: str):
        super().__init__(status, f"{field}: {rule}" if field else rule)
        self.field = field
        self.rule = rule

    def within(self, path: str) -> FieldError:
        """The same error for a submission nested at `path` (`submissions[3]`)."""
        return FieldError(self.status, f"{path}.{self.field}" if self.field else path, self.rule)


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


def refuse_all_callbacks(url: str) -> str | None:
    """The callback check of a daemon without webhooks: every callback_url refused."""
    return WEBHOOKS_OFF


# -- request bodies ----------------------------------------------------------------


def check_content_type(request: web.Request) -> None:
    """415 unless the body is declared JSON (or not declared: read as JSON)."""
    raw = request.headers.get(hdrs.CONTENT_TYPE)
    if raw is None or not raw.strip():
        return
    media_type = request.content_type
    if not _JSON_MEDIA_TYPE.fullmatch(media_type):
        raise ApiError(415, f"Content-Type must be application/json, not {raw.strip()[:100]!r}"
                            " (the body is JSON)")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, f"Content-Type charset must be utf-8, not {charset[:40]!r}")


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


async def read_json(request: web.Request) -> dict[str, Any]:
    check_content_type(request)
    # read() enforces client_max_size and raises 413, which the middleware makes JSON.
    return decode_body(await request.read())


# -- submissions -------------------------------------------------------------------


class SubmissionParser:
    """Validates submission objects against the daemon's configuration; never clamps,
    every refusal names the field and the rule."""

    def __init__(self, languages: LanguageCatalog, config: Config,
                 callback_check: CallbackCheck = refuse_all_callbacks) -> None:
        self._languages = languages
        self._config = config
        self._callback_check = callback_check

    def parse(self, data: Any) -> Submission:
        if not isinstance(data, dict):
            raise FieldError(400, None, f"must be a JSON object, not {_json_type(data)}")
        _check_field_names(data)
        config = self._config
        language = self._language(data)
        source = _string(data, "source")
        _check_size("source", source, config.server.max_source_bytes, "server.max_source_bytes")
        stdin = _string(data, "stdin", default="")
        _check_size("stdin", stdin, config.server.max_stdin_bytes, "server.max_stdin_bytes")
        expected = data.get("expected_output")
        if expected is not None and not isinstance(expected, str):
            raise FieldError(400, "expected_output",
                             f"must be a string or null, not {_json_type(expected)}")
        if expected is not None:
            _check_expected_output(expected, config.sandbox.output_limit_bytes)
        limits = config.limits
        time_ms = _limit(data, "time_limit_ms", limits.time_limit_ms,
                         limits.time_limit_ms.default)
        wall_ms = _limit(data, "wall_time_limit_ms", limits.wall_time_limit_ms,
                         limits.default_wall_ms(time_ms))
        memory_mb = _limit(data, "memory_limit_mb", limits.memory_limit_mb,
                           limits.memory_limit_mb.default)
        return Submission(
            language=language,
            source=source,
            limits=Limits(time_limit_ms=time_ms, wall_time_limit_ms=wall_ms,
                          memory_limit_mb=memory_mb),
            stdin=stdin,
            expected_output=expected,
            callback_url=self._callback_url(data),
            cache=_boolean(data, "cache", default=True),
        )

    def parse_batch(self, data: dict[str, Any]) -> list[Submission]:
        unknown = sorted(set(data) - {"submissions"})
        if unknown:
            raise FieldError(400, None, f"unknown field(s): {', '.join(unknown)} (a batch is "
                                        '{"submissions": [...]})')
        if "submissions" not in data:
            raise FieldError(400, None, "missing required field(s): submissions")
        members = data["submissions"]
        if not isinstance(members, list):
            raise FieldError(400, "submissions", f"must be an array, not {_json_type(members)}")
        maximum = self._config.server.max_batch
        if not 1 <= len(members) <= maximum:
            raise FieldError(400, "submissions", f"{len(members)} submissions, allowed "
                                                 f"1..{maximum} (server.max_batch)")
        submissions = []
        for index, member in enumerate(members):
            try:
                submissions.append(self.parse(member))
            except FieldError as e:
                raise e.within(f"submissions[{index}]") from None
        return submissions

    def _language(self, data: dict[str, Any]) -> str:
        language = _string(data, "language")
        if language not in self._languages:
            known = ", ".join(sorted(str(d.get("id")) for d in
                                     self._languages.describe(self._config)))
            raise FieldError(400, "language",
                             f"unknown language {language[:100]!r}; known languages: {known}")
        unavailable = self._languages.unavailable_reason(language)
        if unavailable is not None:
            raise FieldError(400, "language", f"{language!r} is unavailable on this server: "
                                              f"{unavailable}")
        return language

    def _callback_url(self, data: dict[str, Any]) -> str | None:
        url = data.get("callback_url")
        if url is None:
            return None
        if not isinstance(url, str):
            raise FieldError(400, "callback_url", f"must be a string or null, not "
                                                  f"{_json_type(url)}")
        if len(url) > MAX_CALLBACK_URL_LENGTH:
            raise FieldError(400, "callback_url", f"{len(url)} characters, over the maximum "
                                                  f"of {MAX_CALLBACK_URL_LENGTH}")
        try:
            parts = urlsplit(url)
            absolute = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # e.g. an unbalanced [ of an IPv6 literal
            absolute = False
        if not absolute:
            raise FieldError(400, "callback_url", "must be an absolute http:// or https:// URL")
        problem = self._callback_check(url)
        if problem is not None:
            raise FieldError(400, "callback_url", problem)
        return url


def _check_size(name: str, value: str, maximum: int, setting: str) -> None:
    size = utf8_size(value)
    if size > maximum:
        raise FieldError(413, name, f"{size} bytes, over the maximum of {maximum} bytes "
                                    f"({setting})")


def _check_expected_output(expected: str, output_limit: int) -> None:
    # stdout is cut at the output limit (and the run is Output Limit Exceeded), so an
    # expected output longer than that, as compared, can never be matched: refuse the
    # request rather than run a job that cannot be Accepted.
    size = utf8_size(comparable_expected(expected))
    if size > output_limit:
        raise FieldError(
            400, "expected_output",
            f"{size} bytes (without trailing whitespace), longer than the output limit of "
            f"{output_limit} bytes (sandbox.output_limit_bytes): no program's output could "
            "match it")


def _check_field_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - KNOWN_FIELDS - LATER_FIELDS)
    if unknown:
        names = ", ".join(name[:100] for name in unknown)
        raise FieldError(400, None, f"unknown field(s): {names}")
    later = sorted(set(data) & LATER_FIELDS)
    if later:
        raise FieldError(400, None, f"{', '.join(later)}: not supported yet")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise FieldError(400, None, f"missing required field(s): {', '.join(missing)}")


def _string(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise FieldError(400, name, f"must be a string, not {_json_type(value)}")
    return value


def _boolean(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise FieldError(400, name, f"must be true or false, not {_json_type(value)}")
    return value


def _limit(data: dict[str, Any], name: str, bound: Bound, default: int) -> int:
    if name not in data:
        return default
    value = data[name]
    # bool is a subclass of int in Python, but `true` is not a number of milliseconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(400, name, f"must be an integer, not {_json_type(value)}")
    if not bound.min <= value <= bound.max:
        raise FieldError(400, name, f"{value} is out of range: allowed {bound.min}..{bound.max}"
                                    f" (limits.{name})")
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
    raise ApiError(400, f"wait: must be true or false, not {value[:40]!r}")


def _requested_ids(request: web.Request, maximum: int) -> list[str]:
    """`?ids=a,b,c` (the parameter may also repeat) as a list, in order."""
    values = request.query.getall("ids", [])
    if not values:
        raise ApiError(400, "ids: required query parameter (GET /result?ids=a,b,c)")
    ids = [i for value in values for i in value.split(",")]
    if len(ids) > maximum:
        raise ApiError(400, f"ids: {len(ids)} ids, allowed 1..{maximum} (server.max_batch)")
    for position, job_id in enumerate(ids):
        if not job_id:
            raise ApiError(400, f"ids: id {position} is empty")
    return ids


# -- handlers ----------------------------------------------------------------------


def unknown_id(job_id: str) -> str:
    return f"no submission with id {job_id[:100]!r}"


class _Handlers:
    def __init__(self, service: JobService, languages: LanguageCatalog, config: Config,
                 metrics: Metrics, parser: SubmissionParser):
        self._service = service
        self._languages = languages
        self._config = config
        self._metrics = metrics
        self._parser = parser

    async def execute(self, request: web.Request) -> web.Response:
        wait = _wants_wait(request)
        submission = self._parser.parse(await read_json(request))
        submission_id = await self._accept(self._service.submit(submission))
        if not wait:
            return json_response({"submission_id": submission_id}, status=202)
        try:
            result = await self._service.wait(submission_id, self._config.server.wait_cap_s)
        except ResultExpired as e:  # evicted before it could be read (tiny result bounds)
            raise ApiError(404, str(e)) from None
        except KeyError:
            raise ApiError(404, unknown_id(submission_id)) from None
        except Unavailable as e:  # the shared store (Redis) cannot be read now
            raise ApiError(503, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
        if not result.status.is_final:
            # The wait cap passed: the client polls GET /result/{id} from here on.
            return json_response(
                {"submission_id": submission_id, "status": result.status.value}, status=202)
        return json_response(result.to_json(submission_id))

    async def execute_batch(self, request: web.Request) -> web.Response:
        if "wait" in request.query:
            raise ApiError(400, "wait: not supported on /execute/batch; poll "
                                "GET /result?ids=... instead")
        submissions = self._parser.parse_batch(await read_json(request))
        ids = await self._accept(self._service.submit_many(submissions))
        return json_response({"submission_ids": ids}, status=202)

    async def _accept(self, submitting: Awaitable[Any]) -> Any:
        try:
            return await submitting
        except Unavailable as e:
            # Nothing was stored: the client can retry the very same request.
            reason = str(e) if isinstance(e, QueueFull) else f"not accepting jobs: {e}"
            raise ApiError(503, reason, {"Retry-After": str(RETRY_AFTER_S)}) from None

    async def result(self, request: web.Request) -> web.Response:
        submission_id = request.match_info["submission_id"]
        try:
            result = await _resolved(self._service.get(submission_id))
        except ResultExpired as e:
            raise ApiError(404, str(e)) from None
        except Unavailable as e:  # the shared store (Redis) cannot be read now
            raise ApiError(503, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
        if result is None:
            raise ApiError(404, unknown_id(submission_id))
        return json_response(result.to_json(submission_id))

    async def results(self, request: web.Request) -> web.Response:
        ids = _requested_ids(request, self._config.server.max_batch)
        return json_response([await self._result_entry(job_id) for job_id in ids])

    async def _result_entry(self, job_id: str) -> dict[str, Any]:
        # An id that is unknown or expired is an entry saying so, not a 404 for the
        # whole list: one evicted id must not hide the results of the others.
        try:
            result = await _resolved(self._service.get(job_id))
        except (ResultExpired, Unavailable) as e:
            return {"submission_id": job_id, "status": None, "error": str(e)}
        if result is None:
            return {"submission_id": job_id, "status": None, "error": unknown_id(job_id)}
        return result.to_json(job_id)

    async def languages(self, request: web.Request) -> web.Response:
        return json_response(self._languages.describe(self._config))

    async def health(self, request: web.Request) -> web.Response:
        problem = self._service.health_problem()
        if problem is None:
            return json_response({"status": "ok"})
        return json_response({"status": "unavailable", "error": problem}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(self._service.stats()),
                            headers={hdrs.CONTENT_TYPE: METRICS_CONTENT_TYPE})


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


class TokenCheck:
    """`Authorization: Bearer <token>` against the configured tokens, in constant time.

    Both sides are hashed first, so every comparison is between equal-length digests and
    neither a token's length nor its characters show in the time taken; every token is
    compared, whichever matches."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def problem(self, authorization: str | None) -> tuple[str, str] | None:
        """None if the header carries a valid token, else (error message, the
        WWW-Authenticate challenge)."""
        if authorization is None:
            return ("missing Authorization header: this server needs "
                    "'Authorization: Bearer <token>' (auth.tokens)", 'Bearer realm="sandboxd"')
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ("Authorization header must be 'Bearer <token>'",
                    'Bearer realm="sandboxd", error="invalid_request"')
        given = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        if not matched:
            return "invalid token", 'Bearer realm="sandboxd", error="invalid_token"'
        return None


def _digest(token: str) -> bytes:
    # backslashreplace: header bytes that are not UTF-8 still hash, to a non-token.
    return hashlib.sha256(token.encode("utf-8", "backslashreplace")).digest()


def _auth_middleware(check: TokenCheck) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Before routing answers: without a token even a 404 says nothing of the API.
        if request.path not in request.app[PUBLIC_PATHS]:
            problem = check.problem(request.headers.get(hdrs.AUTHORIZATION))
            if problem is not None:
                message, challenge = problem
                raise ApiError(401, message, {hdrs.WWW_AUTHENTICATE: challenge})
        return await handler(request)

    return auth


def _http_error_message(request: web.Request, e: web.HTTPException) -> str:
    if isinstance(e, web.HTTPNotFound):
        return f"no such endpoint: {request.method} {request.path[:200]}"
    if isinstance(e, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(e.allowed_methods))
        return (f"method {request.method} not allowed on {request.path[:200]} "
                f"(allowed: {allowed})")
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return (f"request body is over the maximum of {request.client_max_size} bytes "
                "(server.max_body_bytes)")
    return e.reason


def _kept_headers(e: web.HTTPException) -> dict[str, str]:
    # Allow (405) and Retry-After tell the client what to do next; keep them.
    return {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}


def create_app(service: JobService, languages: LanguageCatalog, config: Config, *,
               metrics: Metrics | None = None,
               callback_check: CallbackCheck | None = None) -> web.Application:
    """The aiohttp application. `metrics`: the observer the service and runner report
    to (a fresh one if None: then only the gauges move); `callback_check`: the webhook
    allow-list check of a callback_url, its refusal or None (default: webhooks off)."""
    middlewares: list[Any] = [_json_errors]
    tokens = TokenCheck(config.auth.tokens)
    if tokens.enabled:
        middlewares.append(_auth_middleware(tokens))
    app = web.Application(middlewares=middlewares, client_max_size=config.server.max_body_bytes)
    app[PUBLIC_PATHS] = set(OPEN_PATHS)
    parser = SubmissionParser(languages, config, callback_check or refuse_all_callbacks)
    handlers = _Handlers(service, languages, config, metrics or Metrics(), parser)
    routes: Sequence[web.RouteDef] = [
        web.post("/execute", handlers.execute),
        web.post("/execute/batch", handlers.execute_batch),
        web.get("/result", handlers.results),
        web.get("/result/{submission_id}", handlers.result),
        web.get("/languages", handlers.languages),
        web.get("/health", handlers.health),
        web.get("/metrics", handlers.metrics),
    ]
    app.add_routes(routes)
    return app
