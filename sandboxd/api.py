"""HTTP API (docs/API.md): routes, authentication, request validation and JSON errors.

Knows nothing of the kernel: it turns requests into `Submission`s for the service and
results into JSON. Every error response, aiohttp's own 404/405/413 included, is JSON
`{"error": "..."}` (see `_json_errors`), so clients never have to parse HTML; an error
about a field starts with the field's name (`time_limit_ms: ...`, in a batch
`submissions[3].time_limit_ms: ...`) and says the rule it broke.
"""

from __future__ import annotations

import base64
import binascii
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
from sandboxd.model import (
    CHECKERS,
    CUSTOM_CHECKER,
    DEFAULT_CHECKER,
    DEFAULT_CHECKER_EPSILON,
    ExtraFile,
    JudgeCase,
    Limits,
    Result,
    Submission,
    utf8_size,
)
from sandboxd.outputs import as_text, shortest_match_size
from sandboxd.service import QueueFull, ResultExpired, Stats, Unavailable

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying when the queue is full.
RETRY_AFTER_S = 1

REQUIRED_FIELDS = ("language", "source")
LIMIT_FIELDS = ("time_limit_ms", "wall_time_limit_ms", "memory_limit_mb")
JUDGING_FIELDS = ("tests", "stop_on_first_failure", "checker", "checker_epsilon",
                  "checker_source", "checker_language", "files", "command_line_arguments",
                  "compiler_options", "interactor_source", "interactor_language")
KNOWN_FIELDS = frozenset(
    {*REQUIRED_FIELDS, "stdin", "expected_output", *LIMIT_FIELDS, "callback_url", "cache",
     *JUDGING_FIELDS})
TEST_FIELDS = frozenset({"stdin", "expected_output", "time_limit_ms", "wall_time_limit_ms"})
FILE_FIELDS = frozenset({"name", "content", "encoding"})
FILE_ENCODINGS = ("utf8", "base64")
# A plain file name: no directory part, no "." or "..", no leading dot (nothing hidden),
# no characters a shell or a compiler's command line would read specially.
FILE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
# compiler_options: only for these compilers, and only options that change how the
# program is compiled, never what the compiler reads or runs: no -fplugin, -specs,
# -wrapper, -B, -I/-L, -Wl,/-Wa,/-Wp, (linker, assembler, preprocessor flags), -o, -x
# or @file (options read from a file).
OPTION_COMPILERS = frozenset({"gcc", "g++", "clang", "clang++"})
COMPILER_OPTION = re.compile("|".join((
    r"-O[0-3sgz]?|-Ofast",
    r"-std=(?:c|gnu|c\+\+|gnu\+\+)(?:89|90|99|11|14|17|18|20|23|2a|2b|2x|2c)",
    r"-W(?:no-)?(?!l$|a$|p$)[a-z][a-z0-9-]*",
    r"-pedantic(?:-errors)?|-w|-g[0-3]?|-pthread|-march=native|-mtune=native",
    r"-D[A-Za-z_][A-Za-z0-9_]*(?:=[A-Za-z0-9_.+-]*)?|-U[A-Za-z_][A-Za-z0-9_]*",
    r"-l(?:m|pthread|rt|stdc\+\+)",
    r"-f(?:no-)?(?:exceptions|rtti|strict-aliasing|omit-frame-pointer|unroll-loops"
    r"|fast-math|wrapv|trapv|stack-protector|stack-protector-strong|inline)",
)))
MAX_ARGUMENTS = 64
MAX_ARGUMENT_LENGTH = 4096
# checker_epsilon: a tolerance, not a way to accept anything (1.0 already accepts 0 for 1).
MAX_CHECKER_EPSILON = 1.0

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
# Another shape of GET /languages, for the requests a module that adds routes claims
# (judge0.py: a Judge0 client's); it answers None for the rest, which get the native list.
LanguagesVariant = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
LANGUAGES_VARIANT: web.AppKey[LanguagesVariant] = web.AppKey("languages_variant")
# Judge0's authentication header, accepted as well as `Authorization: Bearer`.
AUTH_TOKEN_HEADER = "X-Auth-Token"

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
        raise ApiError(400, f"request body must be a JSON object, not {json_type(data)}")
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
            raise FieldError(400, None, f"must be a JSON object, not {json_type(data)}")
        _check_field_names(data)
        config = self._config
        language = self._language(data)
        source = _string(data, "source")
        _check_size("source", source, config.server.max_source_bytes, "server.max_source_bytes")
        files = self._files(data, language)
        arguments = _arguments(data, "command_line_arguments")
        compiler_options = self._compiler_options(data, language)
        checker = self._checker(data)
        checker_source, checker_language = self._checker_program(data)
        interactor_source, interactor_language = self._interactor(data)
        helper_source = checker_source or interactor_source
        program_bytes = (utf8_size(source) + sum(len(f.content) for f in files)
                         + sum(utf8_size(a) for a in (*arguments, *compiler_options))
                         + utf8_size(helper_source or ""))
        if program_bytes > config.server.max_source_bytes and (
                files or arguments or compiler_options or helper_source):
            helper = "interactor_source" if interactor_source else "checker_source"
            raise FieldError(413, "files" if files or arguments else helper,
                             f"source, files, command_line_arguments and {helper} are "
                             f"{program_bytes} bytes together, over the maximum of "
                             f"{config.server.max_source_bytes} bytes (server.max_source_bytes)")
        stdin = _data(data, "stdin")
        _check_size("stdin", stdin, config.server.max_stdin_bytes, "server.max_stdin_bytes")
        # An interactor reads the expected output as a file: no output limit bounds it.
        compared_as = CUSTOM_CHECKER if interactor_source is not None else checker
        expected = _expected_output(data, compared_as, config.sandbox.output_limit_bytes)
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
            tests=self._tests(data, compared_as, wall_explicit="wall_time_limit_ms" in data),
            stop_on_first_failure=_boolean(data, "stop_on_first_failure", default=True),
            checker=checker,
            checker_epsilon=self._checker_epsilon(data),
            checker_source=checker_source,
            checker_language=checker_language,
            interactor_source=interactor_source,
            interactor_language=interactor_language,
            files=files,
            compiler_options=compiler_options,
            command_line_arguments=arguments,
        )

    def _files(self, data: dict[str, Any], language: str) -> tuple[ExtraFile, ...]:
        items = data.get("files", [])
        if not isinstance(items, list):
            raise FieldError(400, "files", f"must be an array, not {json_type(items)}")
        maximum = self._config.server.max_files
        if len(items) > maximum:
            raise FieldError(400, "files", f"{len(items)} files, allowed 0..{maximum} "
                                           "(server.max_files)")
        source_file = self._source_file(language) if items else None
        files: list[ExtraFile] = []
        for index, item in enumerate(items):
            try:
                extra = _extra_file(item)
            except FieldError as e:
                raise e.within(f"files[{index}]") from None
            if extra.name == source_file:
                raise FieldError(400, f"files[{index}].name",
                                 f"{extra.name!r} is the source file's name")
            if any(f.name == extra.name for f in files):
                raise FieldError(400, f"files[{index}].name",
                                 f"{extra.name!r} is given twice: names must be unique")
            files.append(extra)
        return tuple(files)

    def _compiler_options(self, data: dict[str, Any], language: str) -> tuple[str, ...]:
        options = _arguments(data, "compiler_options")
        if not options:
            return options
        command = self._described(language).get("compile_command")
        compiler = command[0].rsplit("/", 1)[-1] if isinstance(command, list) and command else ""
        if compiler not in OPTION_COMPILERS:
            raise FieldError(400, "compiler_options", f"not supported for {language!r} (only "
                                                      "for languages compiled by gcc or clang)")
        for index, option in enumerate(options):
            if not COMPILER_OPTION.fullmatch(option):
                raise FieldError(400, f"compiler_options[{index}]",
                                 f"{option[:100]!r} is not an allowed option: optimization "
                                 "(-O..), -std=, warnings (-W...), -g, -D/-U macros, -l of "
                                 "m/pthread/rt/stdc++, -pthread, -march=native and a few "
                                 "code generation -f flags; never options that make the "
                                 "compiler read or run other files")
        return options

    def _source_file(self, language: str) -> str | None:
        name = self._described(language).get("source_file")
        return name if isinstance(name, str) else None

    def _described(self, language: str) -> dict[str, Any]:
        for entry in self._languages.describe(self._config):
            if entry.get("id") == language:
                return entry
        return {}

    def _checker(self, data: dict[str, Any]) -> str:
        checker = data.get("checker", DEFAULT_CHECKER)
        if not isinstance(checker, str):
            raise FieldError(400, "checker", f"must be a string, not {json_type(checker)}")
        if checker not in (*CHECKERS, CUSTOM_CHECKER):
            raise FieldError(400, "checker", f"unknown checker {checker[:40]!r}; known: "
                                             f"{', '.join((*CHECKERS, CUSTOM_CHECKER))}")
        custom = checker == CUSTOM_CHECKER
        for name in ("checker_source", "checker_language"):
            if custom and name not in data:
                raise FieldError(400, name, 'required with "checker": "custom"')
            if not custom and name in data:
                raise FieldError(400, name, 'only applies with "checker": "custom"')
        return checker

    def _checker_program(self, data: dict[str, Any]) -> tuple[str | None, str | None]:
        if data.get("checker") != CUSTOM_CHECKER:
            return None, None
        source = _string(data, "checker_source")
        language = self._language(data, "checker_language")
        return source, language

    def _interactor(self, data: dict[str, Any]) -> tuple[str | None, str | None]:
        """An interactive problem's interactor: both fields or neither. The interactor
        decides, so no `checker` applies (there is no stdout to compare)."""
        given = [name for name in ("interactor_source", "interactor_language") if name in data]
        if not given:
            return None, None
        for name in ("interactor_source", "interactor_language"):
            if name not in data:
                raise FieldError(400, name, f"required with {given[0]}")
        if "checker" in data:
            raise FieldError(400, "checker", "does not apply to an interactive problem: "
                                             "the interactor decides")
        source = _string(data, "interactor_source")
        if not source:
            raise FieldError(400, "interactor_source", "must not be empty")
        return source, self._language(data, "interactor_language")

    def _checker_epsilon(self, data: dict[str, Any]) -> float:
        epsilon = data.get("checker_epsilon", DEFAULT_CHECKER_EPSILON)
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
            raise FieldError(400, "checker_epsilon",
                             f"must be a number, not {json_type(epsilon)}")
        if not 0 <= epsilon <= MAX_CHECKER_EPSILON:
            raise FieldError(400, "checker_epsilon", f"{epsilon} is out of range: allowed "
                                                     f"0..{MAX_CHECKER_EPSILON}")
        if "checker_epsilon" in data and data.get("checker") != "float":
            raise FieldError(400, "checker_epsilon", 'only applies with "checker": "float"')
        return float(epsilon)

    def _tests(self, data: dict[str, Any], checker: str,
               wall_explicit: bool) -> tuple[JudgeCase, ...] | None:
        if "tests" not in data:
            if "stop_on_first_failure" in data:
                raise FieldError(400, "stop_on_first_failure", "only applies with tests")
            return None
        for single in ("stdin", "expected_output"):
            if single in data:
                raise FieldError(400, single, "not allowed with tests (each test has its own)")
        items = data["tests"]
        if not isinstance(items, list):
            raise FieldError(400, "tests", f"must be an array, not {json_type(items)}")
        config = self._config
        maximum = config.server.max_tests
        if not 1 <= len(items) <= maximum:
            raise FieldError(400, "tests", f"{len(items)} tests, allowed 1..{maximum} "
                                           "(server.max_tests)")
        cases = []
        total = 0
        for index, item in enumerate(items):
            try:
                case = self._test(item, checker, wall_explicit)
            except FieldError as e:
                raise e.within(f"tests[{index}]") from None
            total += len(case.stdin) + len(case.expected_output or b"")
            cases.append(case)
        if total > config.server.max_stdin_bytes:
            raise FieldError(413, "tests", f"{total} bytes of stdin and expected output, over "
                                           f"the maximum of {config.server.max_stdin_bytes} "
                                           "bytes (server.max_stdin_bytes)")
        return tuple(cases)

    def _test(self, item: Any, checker: str, wall_explicit: bool) -> JudgeCase:
        if not isinstance(item, dict):
            raise FieldError(400, None, f"must be a JSON object, not {json_type(item)}")
        unknown = sorted(set(item) - TEST_FIELDS)
        if unknown:
            raise FieldError(400, None, f"unknown field(s): {', '.join(n[:100] for n in unknown)}"
                                        f" (a test has {', '.join(sorted(TEST_FIELDS))})")
        stdin = _data(item, "stdin")
        expected = _expected_output(item, checker, self._config.sandbox.output_limit_bytes)
        limits = self._config.limits
        time_ms = wall_ms = None
        if "time_limit_ms" in item:
            time_ms = _limit(item, "time_limit_ms", limits.time_limit_ms, 0)
            if not wall_explicit:
                wall_ms = limits.default_wall_ms(time_ms)
        if "wall_time_limit_ms" in item:
            wall_ms = _limit(item, "wall_time_limit_ms", limits.wall_time_limit_ms, 0)
        return JudgeCase(stdin=stdin, expected_output=expected, time_limit_ms=time_ms,
                         wall_time_limit_ms=wall_ms)

    def parse_batch(self, data: dict[str, Any]) -> list[Submission]:
        unknown = sorted(set(data) - {"submissions"})
        if unknown:
            raise FieldError(400, None, f"unknown field(s): {', '.join(unknown)} (a batch is "
                                        '{"submissions": [...]})')
        if "submissions" not in data:
            raise FieldError(400, None, "missing required field(s): submissions")
        members = data["submissions"]
        if not isinstance(members, list):
            raise FieldError(400, "submissions", f"must be an array, not {json_type(members)}")
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

    def _language(self, data: dict[str, Any], field: str = "language") -> str:
        language = _string(data, field)
        if language not in self._languages:
            known = ", ".join(sorted(str(d.get("id")) for d in
                                     self._languages.describe(self._config)))
            raise FieldError(400, field,
                             f"unknown language {language[:100]!r}; known languages: {known}")
        unavailable = self._languages.unavailable_reason(language)
        if unavailable is not None:
            raise FieldError(400, field, f"{language!r} is unavailable on this server: "
                                         f"{unavailable}")
        return language

    def _callback_url(self, data: dict[str, Any]) -> str | None:
        url = data.get("callback_url")
        if url is None:
            return None
        if not isinstance(url, str):
            raise FieldError(400, "callback_url", f"must be a string or null, not "
                                                  f"{json_type(url)}")
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


def _extra_file(item: Any) -> ExtraFile:
    if not isinstance(item, dict):
        raise FieldError(400, None, f"must be a JSON object, not {json_type(item)}")
    unknown = sorted(set(item) - FILE_FIELDS)
    if unknown:
        raise FieldError(400, None, f"unknown field(s): {', '.join(n[:100] for n in unknown)}"
                                    " (a file has name, content, encoding)")
    missing = [n for n in ("name", "content") if n not in item]
    if missing:
        raise FieldError(400, None, f"missing required field(s): {', '.join(missing)}")
    name = _string(item, "name")
    if not FILE_NAME.fullmatch(name):
        raise FieldError(400, "name", f"{name[:100]!r} is not a plain file name: 1-128 of "
                                      "A-Z a-z 0-9 . _ + -, not starting with a dot (no "
                                      "directories, no absolute paths, no '..')")
    content = _string(item, "content")
    encoding = _string(item, "encoding", default="utf8")
    if encoding == "utf8":
        return ExtraFile(name=name, content=content.encode())
    if encoding == "base64":
        try:
            return ExtraFile(name=name, content=base64.b64decode(content, validate=True))
        except (binascii.Error, ValueError):
            raise FieldError(400, "content", "is not valid base64") from None
    raise FieldError(400, "encoding", f"must be one of {', '.join(FILE_ENCODINGS)}, not "
                                      f"{encoding[:40]!r}")


def _arguments(data: dict[str, Any], name: str) -> tuple[str, ...]:
    items = data.get(name, [])
    if not isinstance(items, list):
        raise FieldError(400, name, f"must be an array of strings (argv items), not "
                                    f"{json_type(items)}")
    if len(items) > MAX_ARGUMENTS:
        raise FieldError(400, name, f"{len(items)} items, allowed 0..{MAX_ARGUMENTS}")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise FieldError(400, f"{name}[{index}]", f"must be a string, not "
                                                      f"{json_type(item)}")
        if len(item) > MAX_ARGUMENT_LENGTH:
            raise FieldError(400, f"{name}[{index}]", f"{len(item)} characters, over the "
                                                      f"maximum of {MAX_ARGUMENT_LENGTH}")
        if "\0" in item:
            raise FieldError(400, f"{name}[{index}]", "must not contain a NUL character")
    return tuple(items)


def _check_size(name: str, value: str | bytes, maximum: int, setting: str) -> None:
    size = len(value) if isinstance(value, bytes) else utf8_size(value)
    if size > maximum:
        raise FieldError(413, name, f"{size} bytes, over the maximum of {maximum} bytes "
                                    f"({setting})")


def _expected_output(data: dict[str, Any], checker: str, output_limit: int) -> bytes | None:
    """`expected_output` of a submission or a test: absent/null, or a string (bytes
    from the Judge0 API, see `_data`) that some output within the output limit could
    match."""
    if data.get("expected_output") is None:
        return None
    expected = _data(data, "expected_output", "a string or null")
    _check_expected_output("expected_output", expected, checker, output_limit)
    return expected


def _check_expected_output(name: str, expected: bytes, checker: str,
                           output_limit: int) -> None:
    # stdout is cut at the output limit (and the run is Output Limit Exceeded), so an
    # expected output longer than that, as compared, can never be matched: refuse the
    # request rather than run a job that cannot be Accepted.
    size = shortest_match_size(checker, as_text(expected))
    if size is not None and size > output_limit:
        raise FieldError(
            400, name,
            f"{size} bytes (as the {checker} checker compares), longer than the output limit of "
            f"{output_limit} bytes (sandbox.output_limit_bytes): no program's output could "
            "match it")


def _check_field_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        names = ", ".join(name[:100] for name in unknown)
        raise FieldError(400, None, f"unknown field(s): {names}")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise FieldError(400, None, f"missing required field(s): {', '.join(missing)}")


def _string(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise FieldError(400, name, f"must be a string, not {json_type(value)}")
    return value


def _data(data: dict[str, Any], name: str, kind: str = "a string") -> bytes:
    """A program's input (`stdin`, `expected_output`) as the bytes it is: a JSON
    string's UTF-8; or bytes as they are, which only the Judge0 API hands over (its
    base64 decoded, any bytes at all: JSON itself cannot carry them). Absent: empty."""
    value = data.get(name, "")
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise FieldError(400, name, f"must be {kind}, not {json_type(value)}")
    return value.encode()


def _boolean(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise FieldError(400, name, f"must be true or false, not {json_type(value)}")
    return value


def _limit(data: dict[str, Any], name: str, bound: Bound, default: int) -> int:
    if name not in data:
        return default
    value = data[name]
    # bool is a subclass of int in Python, but `true` is not a number of milliseconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(400, name, f"must be an integer, not {json_type(value)}")
    if not bound.min <= value <= bound.max:
        raise FieldError(400, name, f"{value} is out of range: allowed {bound.min}..{bound.max}"
                                    f" (limits.{name})")
    return value


def json_type(value: Any) -> str:
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

    async def languages(self, request: web.Request) -> web.StreamResponse:
        variant = request.app.get(LANGUAGES_VARIANT)
        answer = await variant(request) if variant is not None else None
        return answer if answer is not None else json_response(
            self._languages.describe(self._config))

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
            authorization = request.headers.get(hdrs.AUTHORIZATION)
            if authorization is None and AUTH_TOKEN_HEADER in request.headers:
                authorization = f"Bearer {request.headers[AUTH_TOKEN_HEADER]}"
            problem = check.problem(authorization)
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
