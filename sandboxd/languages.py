"""languages.toml -> validated, frozen `Language` records, and the registry over them.

A broken table is a `LanguageError` at start-up naming the language and the
field, never a surprise at the first submission. The rootfs each language
names (rootfs/<name>.toml) is resolved here too, into the read-only binds and
symlinks of the box root, so the jail receives plain data.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.jail.spec import Bind

MEMORY_PLACEHOLDER = "{memory_limit_mb}"
_ID = re.compile(r"^[a-z][a-z0-9_+-]*$")
_VERSION = re.compile(r"\d+(?:\.\d+)+")


class LanguageError(Exception):
    """languages.toml or a rootfs description is unusable; the message says where."""


@dataclass(frozen=True)
class Rootfs:
    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Language:
    id: str
    name: str
    source: str
    run: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rootfs: Rootfs
    compile: tuple[str, ...] | None = None
    version_command: tuple[str, ...] | None = None
    processes: int | None = None
    extra_syscalls: tuple[str, ...] = ()
    self_test: str = ""
    version: str | None = field(default=None, compare=False)

    @property
    def compiled(self) -> bool:
        return self.compile is not None

    def run_argv(self, memory_limit_mb: int) -> tuple[str, ...]:
        return tuple(a.replace(MEMORY_PLACEHOLDER, str(memory_limit_mb)) for a in self.run)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": f"{self.name} {self.version}" if self.version else self.name,
            "version": self.version,
            "compiled": self.compiled,
            "source_file": self.source,
            "compile_command": list(self.compile) if self.compile else None,
            "run_command": list(self.run),
        }


def parse_version(output: str) -> str | None:
    match = _VERSION.search(output)
    return match.group(0) if match else None


class Registry:
    """The languages by id; what the API's LanguageCatalog protocol asks for."""

    def __init__(self, languages: list[Language]) -> None:
        self._by_id = {lang.id: lang for lang in languages}

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

    def describe(self) -> list[dict[str, Any]]:
        return [lang.describe() for lang in self._by_id.values()]


# --------------------------------------------------------------------------- loading

_FIELDS = {"name", "source", "compile", "run", "version", "rootfs", "env", "processes",
           "extra_syscalls", "self_test"}


def _argv(lang: str, key: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(a, str) and a for a in value)):
        raise LanguageError(f"language {lang}: {key} must be a non-empty list of strings")
    return tuple(value)


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
    rootfs_name = _string(lang, "rootfs", data.get("rootfs", "base"))
    try:
        rootfs = resolve_rootfs(load_rootfs(rootfs_dir, rootfs_name))
    except LanguageError as e:
        raise LanguageError(f"language {lang}: {e}") from None
    return Language(
        id=lang,
        name=_string(lang, "name", data["name"]),
        source=source,
        run=_argv(lang, "run", data["run"]),
        compile=_argv(lang, "compile", data["compile"]) if "compile" in data else None,
        version_command=_argv(lang, "version", data["version"]) if "version" in data else None,
        env=tuple(sorted(env.items())),
        rootfs=rootfs,
        processes=processes,
        extra_syscalls=tuple(syscalls),
        self_test=data.get("self_test", ""),
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
