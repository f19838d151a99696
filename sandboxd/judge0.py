"""Judge0-compatible API (docs/JUDGE0.md): Judge0's routes, fields and statuses, so a
Judge0 client (the official `judge0` SDK among them) works unchanged against sandboxd.

No second execution path: a Judge0 request becomes the native API's request body,
validated by the same `SubmissionParser` and run by the same `JobService` (in memory,
SQLite or Redis); a native `Result` is shown in Judge0's shape. The routes sit at the
root paths Judge0 uses and, all of them, under `/judge0` as well: `GET /languages` at
the root is the native list unless the request comes from a Judge0 client (see
`is_judge0_client`); `/judge0/languages` is always Judge0's.

Errors keep Judge0's shape, `{"<field>": ["<rule>"]}` with 422 for a refused field,
plus the `"error"` string every sandboxd error carries, so either kind of client reads
them. Judge0 options sandboxd cannot honour are refused by name, never ignored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import inspect
import io
import math
import re
import shlex
import stat
import tomllib
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from sandboxd import __version__
from sandboxd.api import (
    LANGUAGES_VARIANT,
    RETRY_AFTER_S,
    ApiError,
    CallbackCheck,
    FieldError,
    JobService,
    LanguageCatalog,
    SubmissionParser,
    decode_body,
    json_response,
    json_type,
    refuse_all_callbacks,
)
from sandboxd.config import Bound, Config
from sandboxd.model import CallbackFormat, Result, Status, Submission
from sandboxd.service import QueueFull, ResultExpired, Unavailable

# The Judge0 API version /about reports: one the official SDK has a language table
# for, so its aliases (judge0.PYTHON, judge0.C, ...) resolve to the ids below.
JUDGE0_VERSION = "1.13.1"
PREFIX = "/judge0"
LANGUAGE_TABLE = Path(__file__).resolve().parent / "judge0_languages.toml"

# Judge0's statuses, ids and descriptions exactly as Judge0 defines them.
STATUSES: tuple[tuple[int, str], ...] = (
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
)
STATUS_DESCRIPTION = dict(STATUSES)
_STATUS_IDS = {
    Status.QUEUED: 1,
    Status.RUNNING: 2,
    Status.ACCEPTED: 3,
    Status.WRONG_ANSWER: 4,
    Status.TIME_LIMIT_EXCEEDED: 5,
    Status.COMPILE_ERROR: 6,
    # Judge0 has no such verdicts. Its own runs end so: output over max_file_size is
    # killed by SIGXFSZ; memory over the limit fails an allocation (Other). `message`
    # carries sandboxd's exact verdict.
    Status.OUTPUT_LIMIT_EXCEEDED: 8,
    Status.MEMORY_LIMIT_EXCEEDED: 12,
    Status.INTERNAL_ERROR: 13,
}
# Runtime Error by the signal that ended the program (SIGSEGV, SIGXFSZ, SIGFPE, SIGABRT).
_SIGNAL_STATUS_IDS = {11: 7, 25: 8, 8: 9, 6: 10}
NZEC = 11
OTHER_RUNTIME_ERROR = 12

# Judge0's defaults (used when a field is absent, never above the configured maximum).
DEFAULT_CPU_TIME_LIMIT_S = 5.0
DEFAULT_WALL_TIME_LIMIT_S = 10.0
DEFAULT_MEMORY_LIMIT_KB = 128_000
KB_PER_MB = 1024

# Request fields: name -> JSON type (the OpenAPI document is built from these tables).
# The text fields are base64 with ?base64_encoded=true; additional_files always is.
TEXT_FIELDS = ("source_code", "stdin", "expected_output")
REQUEST_FIELDS: dict[str, str] = {
    "source_code": "string",
    "language_id": "integer",
    "stdin": "string",
    "expected_output": "string",
    "cpu_time_limit": "number",
    "wall_time_limit": "number",
    "memory_limit": "number",
    "compiler_options": "string",
    "command_line_arguments": "string",
    "additional_files": "string",
    "callback_url": "string",
}
# Judge0 options accepted only at the value that is what sandboxd does anyway.
FIXED_FIELDS: dict[str, Any] = {
    "number_of_runs": 1,
    "redirect_stderr_to_stdout": False,
    "enable_network": False,
    "enable_per_process_and_thread_time_limit": False,
    "enable_per_process_and_thread_memory_limit": False,
}
# Judge0 options sandboxd cannot honour: refused whenever they are not null.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "cpu_extra_time": "not supported: sandboxd ends a run at cpu_time_limit, with no "
                      "extra time",
    "stack_limit": "not supported: the stack may grow as far as memory_limit allows",
    "max_processes_and_or_threads": "not supported: each language has a fixed process "
                                    "cap (GET /languages/{id})",
    "max_file_size": "not supported: output is capped at the daemon's output limit "
                     "(GET /config_info max_file_size)",
}
FIXED_FIELD_TYPES = {name: "integer" if isinstance(value, int) and not isinstance(value, bool)
                     else "boolean" for name, value in FIXED_FIELDS.items()}
UNSUPPORTED_FIELD_TYPES = {"cpu_extra_time": "number", "stack_limit": "integer",
                           "max_processes_and_or_threads": "integer",
                           "max_file_size": "integer"}

# Response fields: name -> JSON type ("status" is {"id", "description"}).
RESPONSE_FIELDS: dict[str, str] = {
    "token": "string",
    "stdout": "string",
    "stderr": "string",
    "compile_output": "string",
    "message": "string",
    "status": "status",
    "exit_code": "integer",
    "exit_signal": "integer",
    "time": "string",
    "wall_time": "string",
    "memory": "integer",
}
# What GET /submissions/{token} returns without ?fields= (Judge0's default).
DEFAULT_FIELDS = ("token", "stdout", "time", "memory", "stderr", "compile_output", "message",
                  "status")
OUTPUT_FIELDS = ("stdout", "stderr", "compile_output")
# Judge0 fields sandboxd does not keep once a job is accepted (the job holds what it
# runs, not the request): asking for them by name is refused, `*` leaves them out.
UNKEPT_FIELDS = frozenset({
    "source_code", "language_id", "language", "stdin", "expected_output", "created_at",
    "finished_at", "number_of_runs", "cpu_time_limit", "cpu_extra_time", "wall_time_limit",
    "memory_limit", "stack_limit", "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit",
    "max_file_size", "compiler_options", "command_line_arguments",
    "redirect_stderr_to_stdout", "callback_url", "additional_files", "enable_network",
    "post_execution_filesystem"})

_TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NATIVE_TO_JUDGE0_FIELD = {
    "source": "source_code", "language": "language_id", "files": "additional_files",
    "time_limit_ms": "cpu_time_limit", "wall_time_limit_ms": "wall_time_limit",
    "memory_limit_mb": "memory_limit",
}
# A request that comes from a Judge0 client: the official SDK names itself in
# X-Judge0-App; Judge0's own authentication header is X-Auth-Token.
JUDGE0_CLIENT_HEADERS = ("X-Judge0-App", "X-Auth-Token")


class Judge0Error(Exception):
    """A refused Judge0 request: `{"<field>": [rule, ...], "error": "..."}` (or only
    `{"error": ...}` without a field), with `status`."""

    def __init__(self, status: int, field: str | None, rule: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{field}: {rule}" if field else rule)
        self.status = status
        self.field = field
        self.rule = rule
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {self.field: [self.rule]} if self.field else {}
        body["error"] = str(self)
        return body


def field_error(field: str, rule: str, status: int = 422) -> Judge0Error:
    return Judge0Error(status, field, rule)


def from_native(e: FieldError) -> Judge0Error:
    """The native parser's refusal, named with the Judge0 field it came from."""
    native = (e.field or "").split(".")[0].split("[")[0]
    field = _NATIVE_TO_JUDGE0_FIELD.get(native, native) or None
    status = 413 if e.status == 413 else 422
    if field is None:
        return Judge0Error(status, None, e.rule)
    detail = e.field if e.field and e.field != native else None
    return Judge0Error(status, field, f"{detail}: {e.rule}" if detail else e.rule)


# -- languages ------------------------------------------------------------------------


def load_language_table(path: Path = LANGUAGE_TABLE) -> dict[int, str]:
    """judge0_languages.toml: Judge0 language id -> sandboxd language id."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    table = {}
    for key, language in data["ids"].items():
        if not key.isdigit() or not isinstance(language, str):
            raise ValueError(f"{path.name}: ids.{key}: expected <number> = \"<language id>\"")
        table[int(key)] = language
    return table


class Judge0Languages:
    """Judge0's view of the daemon's languages: Judge0 ids of languages it loaded."""

    def __init__(self, catalog: LanguageCatalog, config: Config,
                 table: Mapping[int, str]) -> None:
        self._catalog = catalog
        self._config = config
        self._table = {jid: lang for jid, lang in table.items() if lang in catalog}

    def language_of(self, judge0_id: int) -> str | None:
        return self._table.get(judge0_id)

    def _described(self) -> dict[str, dict[str, Any]]:
        return {entry["id"]: entry for entry in self._catalog.describe(self._config)}

    def listed(self) -> list[dict[str, Any]]:
        """GET /languages: the usable ones, as Judge0 lists them (sorted by name)."""
        described = self._described()
        entries = [{"id": jid, "name": described[lang]["name"]}
                   for jid, lang in self._table.items() if described[lang].get("available")]
        return sorted(entries, key=lambda e: (e["name"], e["id"]))

    def detail(self, judge0_id: int) -> dict[str, Any] | None:
        """GET /languages/{id}: a language the host cannot run now is "archived"."""
        language = self._table.get(judge0_id)
        if language is None:
            return None
        entry = self._described()[language]
        compile_command = entry.get("compile_command")
        return {
            "id": judge0_id,
            "name": entry["name"],
            "is_archived": not entry.get("available"),
            "source_file": entry.get("source_file"),
            "compile_cmd": shlex.join(compile_command) if compile_command else None,
            "run_cmd": shlex.join(entry.get("run_command") or []),
        }

    def gcc_names(self) -> list[str]:
        """Names of the listed languages that take compiler_options (gcc and clang)."""
        described = self._described()
        names = []
        for entry in self.listed():
            command = described[self._table[entry["id"]]].get("compile_command") or [""]
            if command[0].rsplit("/", 1)[-1] in ("gcc", "g++", "clang", "clang++"):
                names.append(entry["name"])
        return sorted(set(names))


# -- additional_files: a base64 zip, checked before a byte of it is used -----------------


@dataclass(frozen=True)
class ZipLimits:
    max_archive_bytes: int  # the zip itself, decoded
    max_entries: int  # entries in its central directory
    max_expanded_bytes: int  # all entries, extracted


def extract_zip(encoded: str, limits: ZipLimits) -> list[tuple[str, bytes]]:
    """The files of a base64 zip, in memory, as (name, content): never written to any
    filesystem here (the runner puts them into the job's fresh workspace). Refuses
    (Judge0Error on additional_files) what is not a plain flat set of regular files
    within the limits: absolute paths, `..`, entries in directories, links, devices,
    encrypted entries, and sizes over the limits, declared or actual (a zip bomb's
    headers may understate what it inflates to)."""
    if len(encoded) > 4 * (limits.max_archive_bytes // 3 + 1) + 16:
        raise _zip_error(f"the zip is over the maximum of {limits.max_archive_bytes} bytes "
                         "(server.max_source_bytes)", 413)
    try:
        archive = base64.b64decode(encoded.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise _zip_error("must be base64 (of a zip archive)") from None
    if len(archive) > limits.max_archive_bytes:
        raise _zip_error(f"the zip is {len(archive)} bytes, over the maximum of "
                         f"{limits.max_archive_bytes} (server.max_source_bytes)", 413)
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            return _extract(zf, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
            NotImplementedError, RuntimeError, OSError) as e:
        raise _zip_error(f"not a readable zip archive: {str(e)[:200]}") from None


def _extract(zf: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[str, bytes]]:
    entries = zf.infolist()
    if len(entries) > limits.max_entries:
        raise _zip_error(f"{len(entries)} entries in the zip, allowed 0..{limits.max_entries} "
                         "(server.max_files)")
    declared = 0
    for info in entries:
        _check_entry(info)
        declared += info.file_size
    if declared > limits.max_expanded_bytes:
        raise _zip_error(f"the zip's files are {declared} bytes extracted, over the maximum "
                         f"of {limits.max_expanded_bytes} (server.max_source_bytes)", 413)
    files: list[tuple[str, bytes]] = []
    left = limits.max_expanded_bytes
    for info in entries:
        with zf.open(info) as member:
            # One byte more than may be left: inflating past the limit is seen, and
            # never more than that is inflated, whatever the headers claim.
            content = member.read(left + 1)
        if len(content) > left or len(content) != info.file_size:
            raise _zip_error(f"{info.filename[:100]!r} inflates to more than its header "
                             "says, or past the size limit (server.max_source_bytes)", 413)
        left -= len(content)
        files.append((info.filename, content))
    return files


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    shown = repr(name[:100])
    if info.flag_bits & 0x1:
        raise _zip_error(f"{shown} is encrypted")
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        raise _zip_error(f"{shown}: absolute paths are not allowed")
    if ".." in name.split("/"):
        raise _zip_error(f"{shown}: '..' is not allowed")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise _zip_error(f"{shown} is a symbolic link: only regular files are allowed")
    if kind and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise _zip_error(f"{shown} is a device, fifo or socket: only regular files are "
                         "allowed")
    if info.is_dir() or "/" in name:
        raise _zip_error(f"{shown}: directories are not supported (sandboxd puts additional "
                         "files beside the source, so the zip must be flat)")


def _zip_error(rule: str, status: int = 422) -> Judge0Error:
    return Judge0Error(status, "additional_files", rule)


# -- requests -------------------------------------------------------------------------


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise Judge0Error(400, name, f"must be true or false, not {value[:40]!r}")


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise field_error(name, f"must be a number, not {json_type(value)}")
    return float(value)


def _input(data: dict[str, Any], name: str, encoded: bool) -> str | bytes | None:
    """A text field as given: its string, or with ?base64_encoded=true its bytes, any
    bytes at all (the native parser takes both: api._data)."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise field_error(name, f"must be a string, not {json_type(value)}")
    if not encoded:
        return value
    try:
        return base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise field_error(name, "must be base64 (?base64_encoded=true)") from None


def _text(data: dict[str, Any], name: str, encoded: bool) -> str | None:
    """A field that must be text whatever the encoding (the source code: a compiler
    reads it as UTF-8)."""
    value = _input(data, name, encoded)
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise field_error(name, f"decodes to bytes that are not UTF-8 (byte {e.start}); "
                                "source code must be UTF-8 text") from None


def _words(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, str):
        raise field_error(name, f"must be a string, not {json_type(value)}")
    try:
        return shlex.split(value)
    except ValueError as e:
        raise field_error(name, f"cannot be split into words as a shell would: {e}") from None


def _seconds_to_ms(data: dict[str, Any], name: str, bound: Bound, default_s: float) -> int:
    value = _number(data, name)
    if value is None:
        return min(round(default_s * 1000), bound.max)
    # Compared in seconds first: a huge number times 1000 is no longer finite.
    within = bound.min / 1000 <= value <= bound.max / 1000
    ms = round(value * 1000) if within else 0
    if not within or not bound.min <= ms <= bound.max:
        raise field_error(name, f"{value:g} is out of range: allowed {bound.min / 1000:g}.."
                                f"{bound.max / 1000:g} seconds")
    return ms


def _kb_to_mb(data: dict[str, Any], name: str, bound: Bound) -> int:
    value = _number(data, name)
    if value is None:
        return min(math.ceil(DEFAULT_MEMORY_LIMIT_KB / KB_PER_MB), bound.max)
    low, high = bound.min * KB_PER_MB, bound.max * KB_PER_MB
    if not low <= value <= high:
        raise field_error(name, f"{value:g} is out of range: allowed {low}..{high} KB")
    # Whole MiB, rounded up: a program within the limit asked for always fits.
    return math.ceil(value / KB_PER_MB)


class Judge0Parser:
    """A Judge0 submission object -> the native API's request body -> `Submission`,
    through the native `SubmissionParser` (one set of rules for both APIs)."""

    def __init__(self, parser: SubmissionParser, languages: Judge0Languages,
                 config: Config) -> None:
        self._parser = parser
        self._languages = languages
        self._config = config

    @property
    def zip_limits(self) -> ZipLimits:
        server = self._config.server
        return ZipLimits(max_archive_bytes=server.max_source_bytes,
                         max_entries=server.max_files,
                         max_expanded_bytes=server.max_source_bytes)

    def parse(self, data: Any, encoded: bool) -> Submission:
        if not isinstance(data, dict):
            raise Judge0Error(422, None, f"a submission must be a JSON object, not "
                                         f"{json_type(data)}")
        self._check_names(data)
        language_id = data.get("language_id")
        if language_id is None:
            raise field_error("language_id", "can't be blank")
        if isinstance(language_id, bool) or not isinstance(language_id, int):
            raise field_error("language_id", f"must be an integer, not {json_type(language_id)}")
        language = self._languages.language_of(language_id)
        if language is None:
            raise field_error("language_id", f"language with id {language_id} doesn't exist "
                                             "(GET /languages)")
        source = _text(data, "source_code", encoded)
        if source is None:
            raise field_error("source_code", "can't be blank")
        limits = self._config.limits
        native: dict[str, Any] = {
            "language": language,
            "source": source,
            "stdin": _input(data, "stdin", encoded) or "",
            "time_limit_ms": _seconds_to_ms(data, "cpu_time_limit", limits.time_limit_ms,
                                            DEFAULT_CPU_TIME_LIMIT_S),
            "wall_time_limit_ms": _seconds_to_ms(data, "wall_time_limit",
                                                 limits.wall_time_limit_ms,
                                                 DEFAULT_WALL_TIME_LIMIT_S),
            "memory_limit_mb": _kb_to_mb(data, "memory_limit", limits.memory_limit_mb),
        }
        expected = _input(data, "expected_output", encoded)
        if expected is not None:
            native["expected_output"] = expected
        for name in ("compiler_options", "command_line_arguments"):
            words = _words(data, name)
            if words:
                native[name] = words
        callback_url = data.get("callback_url")
        if callback_url is not None:  # checked by the native parser (webhooks' allow-list)
            native["callback_url"] = callback_url
        archive = data.get("additional_files")
        if archive is not None:
            if not isinstance(archive, str):
                raise field_error("additional_files",
                                  f"must be a string (a base64 zip), not {json_type(archive)}")
            native["files"] = [
                {"name": name, "content": base64.b64encode(content).decode("ascii"),
                 "encoding": "base64"}
                for name, content in extract_zip(archive, self.zip_limits)]
        try:
            submission = self._parser.parse(native)
        except FieldError as e:
            raise from_native(e) from None
        if submission.callback_url is not None:
            # Called back as Judge0 calls back: its submission object, PUT.
            submission = dataclasses.replace(submission, callback_format=CallbackFormat.JUDGE0)
        return submission

    def _check_names(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if value is None or name in REQUEST_FIELDS:
                continue
            if name in FIXED_FIELDS:
                fixed = FIXED_FIELDS[name]
                if type(value) is not type(fixed) or value != fixed:
                    raise field_error(name, f"only {str(fixed).lower()} is supported "
                                            f"(not {str(value)[:40]})")
            elif name in UNSUPPORTED_FIELDS:
                raise field_error(name, UNSUPPORTED_FIELDS[name])
            else:
                raise field_error(name[:100], "unknown field")


# -- responses ------------------------------------------------------------------------


def token_of(job_id: str) -> str:
    """A job id (32 hex digits) as Judge0 shows tokens: in UUID form."""
    if len(job_id) != 32:
        return job_id
    return f"{job_id[:8]}-{job_id[8:12]}-{job_id[12:16]}-{job_id[16:20]}-{job_id[20:]}"


def job_id_of(token: str) -> str:
    """The job id a token names (in UUID form or not)."""
    lowered = token.lower()
    return lowered.replace("-", "") if _TOKEN.fullmatch(lowered) else token


def status_id(result: Result) -> int:
    if result.status is Status.RUNTIME_ERROR:
        if result.signal is not None:
            return _SIGNAL_STATUS_IDS.get(result.signal, OTHER_RUNTIME_ERROR)
        return NZEC if result.exit_code else OTHER_RUNTIME_ERROR
    return _STATUS_IDS[result.status]


def _message(result: Result) -> str | None:
    if result.status in (Status.MEMORY_LIMIT_EXCEEDED, Status.OUTPUT_LIMIT_EXCEEDED):
        return result.status.value
    if result.message is not None:
        return result.message
    if result.status is Status.RUNTIME_ERROR and result.signal is None and result.exit_code:
        return f"Exited with error status {result.exit_code}"
    return None


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seconds(ms: int | None) -> str | None:
    # Judge0 shows times as decimal strings of seconds ("0.002").
    return None if ms is None else f"{ms / 1000:.3f}"


def render(job_id: str, result: Result, fields: tuple[str, ...], encoded: bool) -> dict[str, Any]:
    sid = status_id(result)
    values: dict[str, Any] = {
        "token": token_of(job_id),
        "stdout": result.stdout or None,
        "stderr": result.stderr or None,
        "compile_output": result.compile_output or None,
        "message": _message(result),
        "status": {"id": sid, "description": STATUS_DESCRIPTION[sid]},
        "exit_code": result.exit_code,
        "exit_signal": result.signal,
        "time": _seconds(result.time_ms),
        "wall_time": _seconds(result.wall_time_ms),
        "memory": result.memory_kb,
    }
    if encoded:
        # The outputs' exact bytes, also where they are not UTF-8 (the text shows U+FFFD).
        for name in OUTPUT_FIELDS:
            if values[name] is not None:
                values[name] = _base64(result.output_bytes(name))
        if values["message"] is not None:
            values["message"] = _base64(values["message"].encode())
    return {name: values[name] for name in fields}


def callback_body(job_id: str, result: Result) -> bytes:
    """The body of a Judge0 callback, as Judge0 sends it (app/jobs/isolate_job.rb
    `call_callback`): the submission with the default fields of GET /submissions/{token},
    text always base64-encoded, whatever the submission asked for."""
    return orjson.dumps(render(job_id, result, DEFAULT_FIELDS, encoded=True))


def requested_fields(request: web.Request) -> tuple[str, ...]:
    raw = request.query.get("fields")
    if raw is None or not raw.strip():
        return DEFAULT_FIELDS
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if "*" in names:
        return tuple(RESPONSE_FIELDS)
    unkept = sorted({n for n in names if n in UNKEPT_FIELDS})
    if unkept:
        raise Judge0Error(400, "fields", f"{', '.join(unkept)}: not kept by sandboxd (it "
                                         "keeps a job's results, not its request)")
    unknown = sorted({n[:40] for n in names if n not in RESPONSE_FIELDS})
    if unknown:
        raise Judge0Error(400, "fields", f"invalid fields: [{', '.join(unknown)}]")
    return tuple(dict.fromkeys(names))


# -- handlers -------------------------------------------------------------------------


def is_judge0_client(request: web.Request) -> bool:
    """Whether a request at a path both APIs have (GET /languages) is a Judge0 client's."""
    return any(name in request.headers for name in JUDGE0_CLIENT_HEADERS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def judge0_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Judge0Error as e:
        return json_response(e.body(), e.status, e.headers)


def _unavailable(e: Exception) -> Judge0Error:
    reason = str(e) if isinstance(e, QueueFull) else f"not accepting jobs: {e}"
    return Judge0Error(503, None, reason, {"Retry-After": str(RETRY_AFTER_S)})


class Judge0Handlers:
    def __init__(self, service: JobService, languages: Judge0Languages, parser: Judge0Parser,
                 config: Config) -> None:
        self._service = service
        self._languages = languages
        self._parser = parser
        self._config = config

    async def _body(self, request: web.Request) -> Any:
        # Judge0 clients send JSON, not always saying so: the body is read as JSON.
        try:
            return decode_body(await request.read())
        except ApiError as e:
            raise Judge0Error(e.status, None, e.message) from None

    async def create(self, request: web.Request) -> web.Response:
        encoded = _flag(request, "base64_encoded")
        wait = _flag(request, "wait")
        fields = requested_fields(request)  # checked even when not used, as Judge0 does
        submission = self._parser.parse(await self._body(request), encoded)
        try:
            job_id = await self._service.submit(submission)
        except Unavailable as e:
            raise _unavailable(e) from None
        if not wait:
            return json_response({"token": token_of(job_id)}, status=201)
        try:
            result = await self._service.wait(job_id, self._config.server.wait_cap_s)
        except (ResultExpired, KeyError) as e:
            raise Judge0Error(404, None, f"submission {token_of(job_id)} is gone: {e}") from None
        except Unavailable as e:
            raise Judge0Error(503, None, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
        # Past server.wait_cap_s the job is still In Queue/Processing: poll its token.
        return json_response(render(job_id, result, fields, encoded), status=201)

    async def create_batch(self, request: web.Request) -> web.Response:
        encoded = _flag(request, "base64_encoded")
        body = await self._body(request)
        items = body.get("submissions") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Judge0Error(400, "submissions", "required: an array of submission objects")
        maximum = self._config.server.max_batch
        if not 1 <= len(items) <= maximum:
            raise Judge0Error(400, "submissions", f"{len(items)} submissions, allowed "
                                                  f"1..{maximum} (server.max_batch)")
        # Like Judge0: each invalid submission gets its errors in place of a token,
        # the valid ones run.
        answers: list[dict[str, Any]] = []
        valid = []
        for item in items:
            try:
                valid.append(self._parser.parse(item, encoded))
                answers.append({})
            except Judge0Error as e:
                if e.status not in (413, 422):
                    raise
                answers.append(e.body())
        if valid:
            try:
                ids = iter(await self._service.submit_many(valid))
            except Unavailable as e:
                raise _unavailable(e) from None
            for answer in answers:
                if not answer:
                    answer["token"] = token_of(next(ids))
        return json_response(answers, status=201 if valid else 422)

    async def _result(self, token: str) -> Result | None:
        outcome = self._service.get(job_id_of(token))
        # The Redis store answers with an awaitable, the in-process one at once.
        return await outcome if inspect.isawaitable(outcome) else outcome  # type: ignore[misc]

    async def show(self, request: web.Request) -> web.Response:
        encoded = _flag(request, "base64_encoded")
        fields = requested_fields(request)
        token = request.match_info["token"]
        try:
            result = await self._result(token)
        except ResultExpired as e:
            raise Judge0Error(404, None, str(e)) from None
        except Unavailable as e:
            raise Judge0Error(503, None, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
        if result is None:
            raise Judge0Error(404, None, f"no submission with token {token[:100]!r}")
        return json_response(render(job_id_of(token), result, fields, encoded))

    async def show_batch(self, request: web.Request) -> web.Response:
        encoded = _flag(request, "base64_encoded")
        fields = requested_fields(request)
        # Judge0 takes the tokens from a `tokens` header too.
        values = request.query.getall("tokens", []) or [request.headers.get("tokens", "")]
        tokens = [t.strip() for value in values for t in value.split(",") if t.strip()]
        maximum = self._config.server.max_batch
        if not 1 <= len(tokens) <= maximum:
            raise Judge0Error(400, "tokens", f"{len(tokens)} tokens, allowed 1..{maximum} "
                                             "(server.max_batch)")
        shown: list[dict[str, Any] | None] = []
        for token in tokens:
            # An unknown or expired token is null in its place, like Judge0's.
            try:
                result = await self._result(token)
            except (ResultExpired, Unavailable):
                result = None
            shown.append(None if result is None
                         else render(job_id_of(token), result, fields, encoded))
        return json_response({"submissions": shown})

    async def languages(self, request: web.Request) -> web.Response:
        return json_response(self._languages.listed())

    async def language(self, request: web.Request) -> web.Response:
        raw = request.match_info["language_id"]
        entry = self._languages.detail(int(raw)) if raw.isdigit() and len(raw) < 10 else None
        if entry is None:
            raise Judge0Error(404, None, f"no language with id {raw[:40]!r}")
        return json_response(entry)

    async def statuses(self, request: web.Request) -> web.Response:
        return json_response([{"id": i, "description": d} for i, d in STATUSES])

    async def about(self, request: web.Request) -> web.Response:
        return json_response({"version": JUDGE0_VERSION, "sandboxd_version": __version__,
                              "homepage": None, "source_code": None, "maintainer": None})

    async def config_info(self, request: web.Request) -> web.Response:
        return json_response(config_info(self._config, self._languages))


def config_info(config: Config, languages: Judge0Languages) -> dict[str, Any]:
    """GET /config_info: Judge0's configuration keys, with what sandboxd does."""
    limits, server = config.limits, config.server
    default_cpu_ms = min(round(DEFAULT_CPU_TIME_LIMIT_S * 1000), limits.time_limit_ms.max)
    default_wall_ms = min(round(DEFAULT_WALL_TIME_LIMIT_S * 1000),
                          limits.wall_time_limit_ms.max)
    default_memory_kb = min(DEFAULT_MEMORY_LIMIT_KB, limits.memory_limit_mb.max * KB_PER_MB)
    output_kb = config.sandbox.output_limit_bytes // 1024
    return {
        "maintenance_mode": False,
        "enable_wait_result": True,
        "enable_compiler_options": True,
        "allowed_languages_for_compile_options": languages.gcc_names(),
        "enable_command_line_arguments": True,
        "enable_submission_delete": False,
        # On when webhooks are (a host on webhooks.allowed_hosts).
        "enable_callbacks": bool(config.webhooks.allowed_hosts),
        "callbacks_max_tries": config.webhooks.max_attempts,
        "callbacks_timeout": float(config.webhooks.timeout_s),
        "enable_additional_files": server.max_files > 0,
        "max_queue_size": server.queue_size,
        "cpu_time_limit": default_cpu_ms / 1000,
        "max_cpu_time_limit": limits.time_limit_ms.max / 1000,
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": 0.0,
        "wall_time_limit": default_wall_ms / 1000,
        "max_wall_time_limit": limits.wall_time_limit_ms.max / 1000,
        "memory_limit": default_memory_kb,
        "max_memory_limit": limits.memory_limit_mb.max * KB_PER_MB,
        "stack_limit": 0,
        "max_stack_limit": 0,
        "max_processes_and_or_threads": config.sandbox.processes,
        "max_max_processes_and_or_threads": config.sandbox.processes,
        "enable_per_process_and_thread_time_limit": False,
        "allow_enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "allow_enable_per_process_and_thread_memory_limit": False,
        "max_file_size": output_kb,
        "max_max_file_size": output_kb,
        "number_of_runs": 1,
        "max_number_of_runs": 1,
        "redirect_stderr_to_stdout": False,
        "max_extract_size": server.max_source_bytes // 1024,
        "enable_batched_submissions": True,
        "max_submission_batch_size": server.max_batch,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": False,
        "allow_enable_network": False,
        "enable_network": False,
    }


def routes(handlers: Judge0Handlers, prefix: str = "") -> list[web.RouteDef]:
    """Judge0's routes at `prefix`; GET /languages only with a prefix (at the root it
    is the native route's, which asks `languages_variant`)."""
    table = [
        web.post(f"{prefix}/submissions", handlers.create),
        web.post(f"{prefix}/submissions/batch", handlers.create_batch),
        web.get(f"{prefix}/submissions/batch", handlers.show_batch),
        web.get(f"{prefix}/submissions/{{token}}", handlers.show),
        web.get(f"{prefix}/languages/{{language_id}}", handlers.language),
        web.get(f"{prefix}/statuses", handlers.statuses),
        web.get(f"{prefix}/about", handlers.about),
        web.get(f"{prefix}/config_info", handlers.config_info),
    ]
    if prefix:
        table.append(web.get(f"{prefix}/languages", handlers.languages))
    return table


def add_judge0_routes(app: web.Application, *, service: JobService,
                      languages: LanguageCatalog, config: Config,
                      callback_check: CallbackCheck = refuse_all_callbacks) -> None:
    """Mount the Judge0 API on `app` (before it starts): at the root and under /judge0.
    `callback_check`: the webhook allow-list check of a callback_url, as the native
    API's (default: webhooks off); the callback's body is `callback_body`, PUT."""
    judge0_languages = Judge0Languages(languages, config, load_language_table())
    parser = Judge0Parser(SubmissionParser(languages, config, callback_check),
                          judge0_languages, config)
    handlers = Judge0Handlers(service, judge0_languages, parser, config)
    app.middlewares.append(judge0_errors)
    app.add_routes(routes(handlers))
    app.add_routes(routes(handlers, PREFIX))

    async def languages_variant(request: web.Request) -> web.Response | None:
        return await handlers.languages(request) if is_judge0_client(request) else None

    app[LANGUAGES_VARIANT] = languages_variant

