"""languages.toml -> validated, frozen `Language` records, and the registry over them.

A broken table is a `LanguageError` at start-up naming the language and the
field, never a surprise at the first submission. The rootfs each language
names (rootfs/<name>.toml) is resolved here too, into the read-only binds and
symlinks of the box root, so the jail receives plain data.

Commands may hold placeholders, filled per step from that step's limits
(`Language.argv`): a runtime that manages its own heap or stack has to be told
how much of the box's memory it may use, or it sizes itself for the host.
"""

from __future__ import annotations

import os
import re
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.config import Config, StepLimits
from sandboxd.jail.spec import Bind
from sandboxd.model import LANGUAGE_ROLES
from sandboxd.verdict import OutOfMemory

_ID = re.compile(r"^[a-z][a-z0-9_+-]*$")
_VERSION = re.compile(r"\d+(?:\.\d+)+")
# {lower_case_name}: a shell's ${VAR}, ${v#x} or ${v:-x} in a command is left alone.
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
PLACEHOLDERS = ("memory_limit_mb", "heap_limit_mb", "stack_limit_kb")
# Left below a runtime's own stack limit for the native frames it runs past that limit
# (V8 throws its RangeError from C++ frames deeper than the JS limit): Node.js with
# --stack-size equal to RLIMIT_STACK dies of SIGSEGV, 128 KiB below it throws (measured).
STACK_MARGIN_KB = 1024
# The JVM refuses -Xss above 1 GiB; a deeper stack than that no judge needs.
MAX_STACK_KB = 1024 * 1024


class LanguageError(Exception):
    """languages.toml or a rootfs description is unusable; the message says where."""


@dataclass(frozen=True)
class Rootfs:
    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Heap:
    """The part of a step's memory limit a runtime's heap may take: `percent` of the
    limit less `reserve_mb`, the rest being the runtime's own memory (measured per
    runtime, see languages.toml)."""

    percent: int = 100
    reserve_mb: int = 0

    def limit_mb(self, memory_limit_mb: int) -> int:
        heap = memory_limit_mb * self.percent // 100 - self.reserve_mb
        # Under a limit smaller than the runtime's own needs the runtime cannot work
        # anyway; a heap of a quarter of the limit still lets it start and fail there.
        return max(heap, memory_limit_mb // 4, 1)


@dataclass(frozen=True)
class StepSizes:
    """What the placeholders of one step's command are filled from."""

    memory_limit_mb: int
    stack_limit_mb: int = 0  # sandbox.stack_limit_mb: 0 = no RLIMIT_STACK of its own

    @staticmethod
    def run(config: Config, memory_limit_mb: int) -> StepSizes:
        return StepSizes(memory_limit_mb, config.sandbox.stack_limit_mb)

    @staticmethod
    def compile(config: Config, lang: Language | None = None) -> StepSizes:
        limits = lang.compile_limits(config) if lang else config.sandbox.compile
        return StepSizes(limits.memory_mb, config.sandbox.stack_limit_mb)

    def stack_limit_kb(self) -> int:
        # The stack a program may use: RLIMIT_STACK when one is configured, else all of
        # its memory. A runtime with its own limit gets it less STACK_MARGIN_KB.
        stack_mb = self.memory_limit_mb
        if self.stack_limit_mb:
            stack_mb = min(stack_mb, self.stack_limit_mb)
        return max(min(stack_mb * 1024, MAX_STACK_KB) - STACK_MARGIN_KB, 256)


@dataclass(frozen=True)
class CompileOverride:
    """Per-language compile-step limits (languages.toml `compile_limits`): a compiler
    that needs more than the configured defaults (a JVM-hosted one) gets the larger of
    the two per field, so an operator raising the defaults raises every language."""

    cpu_ms: int | None = None
    wall_ms: int | None = None
    memory_mb: int | None = None
    processes: int | None = None


_TEST_CASES = ("hello", "sum", "error", "syntax", "memory")


@dataclass(frozen=True)
class Language:
    id: str
    name: str
    source: str
    run: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rootfs: Rootfs
    compile: tuple[str, ...] | None = None
    # Interpreted languages: a syntax check run as the compile step, so a program that
    # cannot even be parsed is a Compile Error with the parser's message.
    check: tuple[str, ...] | None = None
    version_command: tuple[str, ...] | None = None
    processes: int | None = None
    extra_syscalls: tuple[str, ...] = ()
    heap: Heap | None = None
    out_of_memory: OutOfMemory | None = None
    # The run step gets an RLIMIT_DATA (runtimes that tolerate one: native code, CPython),
    # so every allocation larger than the memory limit fails alike on every host.
    data_limit: bool = False
    self_test: str = ""
    # Debian packages of the toolchain (`make deps` installs them).
    packages: tuple[str, ...] = ()
    compile_override: CompileOverride = CompileOverride()
    # Test programs by case (hello, sum, error, syntax, memory), run by the test suite.
    tests: tuple[tuple[str, str], ...] = ()
    version: str | None = field(default=None, compare=False)

    def compile_limits(self, config: Config) -> StepLimits:
        """The compile step's limits: the configured ones, raised where this language
        needs more."""
        c, o = config.sandbox.compile, self.compile_override
        return StepLimits(cpu_ms=max(c.cpu_ms, o.cpu_ms or 0),
                          wall_ms=max(c.wall_ms, o.wall_ms or 0),
                          memory_mb=max(c.memory_mb, o.memory_mb or 0),
                          processes=max(c.processes, o.processes or 0, self.processes or 0))

    def test_program(self, case: str) -> str | None:
        return dict(self.tests).get(case)

    @property
    def compiled(self) -> bool:
        return self.compile is not None

    @property
    def compile_step(self) -> tuple[str, ...] | None:
        """The command of the compile step: the compiler, or the syntax check."""
        return self.compile if self.compile is not None else self.check

    def argv(self, command: tuple[str, ...], sizes: StepSizes) -> tuple[str, ...]:
        """`command` (a field of this language) with its placeholders filled."""
        values = {
            "memory_limit_mb": sizes.memory_limit_mb,
            "stack_limit_kb": sizes.stack_limit_kb(),
            "heap_limit_mb": (self.heap or Heap()).limit_mb(sizes.memory_limit_mb),
        }
        return tuple(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), a) for a in command)

    def run_argv(self, sizes: StepSizes) -> tuple[str, ...]:
        return self.argv(self.run, sizes)

    def describe(self, run: StepSizes, compile: StepSizes,
                 unavailable: str | None = None) -> dict[str, Any]:
        """GET /languages: the commands as a box runs them under `run`/`compile` sizes
        (the defaults), not templates with placeholders nobody can interpret."""
        step = self.compile_step
        return {
            "id": self.id,
            "name": f"{self.name} {self.version}" if self.version else self.name,
            "version": self.version,
            "compiled": self.compiled,
            "source_file": self.source,
            "compile_command": list(self.argv(step, compile)) if step else None,
            "run_command": list(self.run_argv(run)),
            "available": unavailable is None,
            "unavailable_reason": unavailable,
            "packages": list(self.packages),
            # Every language can run a solution, a custom checker or an interactor.
            "usable_as": list(LANGUAGE_ROLES)  # every language, every role,
        }


def parse_version(output: str) -> str | None:
    match = _VERSION.search(output)
    return match.group(0) if match else None


class Registry:
    """The languages by id; what the API's LanguageCatalog protocol asks for."""

    def __init__(self, languages: list[Language]) -> None:
        self._by_id = {lang.id: lang for lang in languages}
        # Languages whose toolchain does not work here (not installed, or its version
        # command fails in a box), with the reason: listed, but refused.
        self._unavailable: dict[str, str] = {}

    def __contains__(self, language_id: object) -> bool:
        return language_id in self._by_id

    def __getitem__(self, language_id: str) -> Language:
        return self._by_id[language_id]

    def __iter__(self) -> Iterator[Language]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def set_version(self, language_id: str, version: str | None) -> None:
        lang = self._by_id[language_id]
        self._by_id[language_id] = Language(**{**lang.__dict__, "version": version})

    def set_unavailable(self, language_id: str, reason: str) -> None:
        self._unavailable[language_id] = reason

    def unavailable_reason(self, language_id: str) -> str | None:
        """Why `language_id` cannot run on this host, or None if it can."""
        return self._unavailable.get(language_id)

    def describe(self, config: Config | None = None) -> list[dict[str, Any]]:
        """Every language, its commands filled for `config`'s default limits."""
        config = config or Config()
        run = StepSizes.run(config, config.limits.memory_limit_mb.default)
        return [lang.describe(run, StepSizes.compile(config, lang),
                              self._unavailable.get(lang.id))
                for lang in self._by_id.values()]


def missing_executables(lang: Language) -> list[str]:
    """The absolute program paths of `lang`'s commands this host lacks: a toolchain
    that is not installed (checked before any box is built for it)."""
    commands = [c for c in (lang.compile, lang.check, lang.run, lang.version_command) if c]
    programs = dict.fromkeys(c[0] for c in commands if c[0].startswith("/"))
    return [p for p in programs if not os.path.exists(p)]


# --------------------------------------------------------------------------- loading

_FIELDS = {"name", "source", "compile", "check", "run", "version", "rootfs", "env",
           "processes", "extra_syscalls", "heap", "out_of_memory", "data_limit",
           "self_test", "packages", "compile_limits", "tests"}
_COMPILE_LIMIT_FIELDS = ("cpu_ms", "wall_ms", "memory_mb", "processes")
_OOM_FIELDS = {"exit_codes", "signals", "stderr"}


def _argv(lang: str, key: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(a, str) and a for a in value)):
        raise LanguageError(f"language {lang}: {key} must be a non-empty list of strings")
    for arg in value:
        for name in _PLACEHOLDER.findall(arg):
            if name not in PLACEHOLDERS:
                raise LanguageError(
                    f"language {lang}: {key}: unknown placeholder {{{name}}} "
                    f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    return tuple(value)


def _heap(lang: str, value: Any) -> Heap:
    where = f"language {lang}: heap"
    if not isinstance(value, dict) or set(value) - {"percent", "reserve_mb"}:
        raise LanguageError(f"{where} must be a table of percent and reserve_mb")
    percent, reserve = value.get("percent", 100), value.get("reserve_mb", 0)
    if type(percent) is not int or not 1 <= percent <= 100:
        raise LanguageError(f"{where}: percent must be an integer from 1 to 100")
    if type(reserve) is not int or reserve < 0:
        raise LanguageError(f"{where}: reserve_mb must be a non-negative integer")
    return Heap(percent, reserve)


def _out_of_memory(lang: str, value: Any) -> OutOfMemory:
    where = f"language {lang}: out_of_memory"
    if not isinstance(value, dict):
        raise LanguageError(f"{where} must be a table")
    unknown = set(value) - _OOM_FIELDS
    if unknown:
        raise LanguageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    codes, names, patterns = (value.get(k, []) for k in ("exit_codes", "signals", "stderr"))
    # Exit code 0 is success, and a failure is what this evidence explains.
    if not isinstance(codes, list) or not all(type(c) is int and 1 <= c <= 255 for c in codes):
        raise LanguageError(f"{where}: exit_codes must be a list of integers 1..255")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LanguageError(f"{where}: signals must be a list of signal names")
    signals = []
    for name in names:
        try:
            signals.append(int(signal.Signals[name]))
        except KeyError:
            raise LanguageError(f"{where}: {name!r} is not a signal name (e.g. SIGABRT)") from None
    if not codes and not signals:
        raise LanguageError(f"{where}: needs exit_codes or signals (how the runtime ends)")
    # Both are required: an exit status alone can be chosen by any program, a message
    # alone can be printed by any program that then fails for another reason.
    if not isinstance(patterns, list) or not patterns or not all(
            isinstance(p, str) and p for p in patterns):
        raise LanguageError(f"{where}: stderr must be a non-empty list of regular expressions")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.MULTILINE))
        except re.error as e:
            raise LanguageError(f"{where}: stderr pattern {pattern!r}: {e}") from None
    return OutOfMemory(exit_codes=frozenset(codes), signals=frozenset(signals),
                       stderr=tuple(compiled))


def _compile_override(lang: str, value: Any) -> CompileOverride:
    where = f"language {lang}: compile_limits"
    if not isinstance(value, dict):
        raise LanguageError(f"{where} must be a table of {', '.join(_COMPILE_LIMIT_FIELDS)}")
    unknown = set(value) - set(_COMPILE_LIMIT_FIELDS)
    if unknown:
        raise LanguageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key, v in value.items():
        if type(v) is not int or v < 1:
            raise LanguageError(f"{where}: {key} must be a positive integer")
    return CompileOverride(**value)


def _packages(lang: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(p, str) and re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p)
                       for p in value)):
        raise LanguageError(f"language {lang}: packages must be a non-empty list of "
                            "Debian package names")
    return tuple(value)


def _tests(lang: str, value: Any) -> tuple[tuple[str, str], ...]:
    where = f"language {lang}: tests"
    if not isinstance(value, dict):
        raise LanguageError(f"{where} must be a table of programs")
    unknown = set(value) - set(_TEST_CASES)
    if unknown:
        raise LanguageError(f"{where}: unknown case(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(_TEST_CASES)})")
    for case, program in value.items():
        if not isinstance(program, str) or not program.strip():
            raise LanguageError(f"{where}: {case} must be a non-empty string")
    return tuple((case, value[case]) for case in _TEST_CASES if case in value)


def _string(lang: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise LanguageError(f"language {lang}: {key} must be a non-empty string")
    return value


def load_rootfs(rootfs_dir: Path, name: str, _seen: tuple[str, ...] = ()) -> list[str]:
    """The host paths of rootfs/<name>.toml, its includes first."""
    if name in _seen:
        raise LanguageError(f"rootfs {name}: include cycle {' -> '.join(_seen + (name,))}")
    path = rootfs_dir / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LanguageError(f"rootfs {name}: {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise LanguageError(f"rootfs {name}: {path} is not valid TOML: {e}") from None
    unknown = set(data) - {"include", "paths"}
    if unknown:
        raise LanguageError(f"rootfs {name}: unknown key(s) {', '.join(sorted(unknown))}")
    paths: list[str] = []
    for inc in data.get("include", []):
        paths += load_rootfs(rootfs_dir, inc, _seen + (name,))
    for p in data.get("paths", []):
        if not isinstance(p, str) or not p.startswith("/") or ".." in p.split("/"):
            raise LanguageError(f"rootfs {name}: {p!r} is not an absolute path")
        paths.append(p)
    return paths


def resolve_rootfs(paths: list[str]) -> Rootfs:
    """Host paths -> binds (dirs and files) and symlinks (recreated as such)."""
    binds: list[Bind] = []
    links: list[tuple[str, str]] = []
    for p in dict.fromkeys(paths):
        if os.path.islink(p):
            links.append((p, os.readlink(p)))
        elif os.path.exists(p):
            binds.append(Bind(p, p))
    return Rootfs(tuple(binds), tuple(links))


def _language(lang: str, data: Any, rootfs_dir: Path) -> Language:
    if not _ID.match(lang):
        raise LanguageError(f"language {lang!r}: ids are lowercase letters, digits, _ + -")
    if not isinstance(data, dict):
        raise LanguageError(f"language {lang}: must be a table")
    unknown = set(data) - _FIELDS
    if unknown:
        raise LanguageError(f"language {lang}: unknown field(s) {', '.join(sorted(unknown))}")
    for required in ("name", "source", "run"):
        if required not in data:
            raise LanguageError(f"language {lang}: missing field {required}")
    source = _string(lang, "source", data["source"])
    if "/" in source or source in (".", ".."):
        raise LanguageError(f"language {lang}: source must be a plain file name")
    env = data.get("env", {"PATH": "/usr/bin:/bin"})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise LanguageError(f"language {lang}: env must be a table of strings")
    processes = data.get("processes")
    if processes is not None and (type(processes) is not int or processes < 1):
        raise LanguageError(f"language {lang}: processes must be a positive integer")
    syscalls = data.get("extra_syscalls", [])
    if not isinstance(syscalls, list) or not all(isinstance(s, str) for s in syscalls):
        raise LanguageError(f"language {lang}: extra_syscalls must be a list of strings")
    data_limit = data.get("data_limit", False)
    if type(data_limit) is not bool:
        raise LanguageError(f"language {lang}: data_limit must be true or false")
    rootfs_name = _string(lang, "rootfs", data.get("rootfs", "base"))
    try:
        rootfs = resolve_rootfs(load_rootfs(rootfs_dir, rootfs_name))
    except LanguageError as e:
        raise LanguageError(f"language {lang}: {e}") from None
    if "compile" in data and "check" in data:
        raise LanguageError(f"language {lang}: compile and check exclude each other "
                            "(a check is the compile step of an interpreted language)")
    commands = {key: _argv(lang, key, data[key])
                for key in ("run", "compile", "check", "version") if key in data}
    heap = _heap(lang, data["heap"]) if "heap" in data else None
    if heap is None and any("{heap_limit_mb}" in a for argv in commands.values() for a in argv):
        raise LanguageError(f"language {lang}: {{heap_limit_mb}} is used but no heap is given")
    return Language(
        id=lang,
        name=_string(lang, "name", data["name"]),
        source=source,
        run=commands["run"],
        compile=commands.get("compile"),
        check=commands.get("check"),
        version_command=commands.get("version"),
        env=tuple(sorted(env.items())),
        rootfs=rootfs,
        processes=processes,
        extra_syscalls=tuple(syscalls),
        heap=heap,
        out_of_memory=(_out_of_memory(lang, data["out_of_memory"])
                       if "out_of_memory" in data else None),
        data_limit=data_limit,
        self_test=data.get("self_test", ""),
        packages=_packages(lang, data["packages"]) if "packages" in data else (),
        compile_override=(_compile_override(lang, data["compile_limits"])
                          if "compile_limits" in data else CompileOverride()),
        tests=_tests(lang, data.get("tests", {})),
    )


def load(path: str | os.PathLike[str], rootfs_dir: str | os.PathLike[str]) -> Registry:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise LanguageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise LanguageError(f"{path} is not valid TOML: {e}") from None
    if not data:
        raise LanguageError(f"{path} defines no language")
    return Registry([_language(lang, table, Path(rootfs_dir)) for lang, table in data.items()])
