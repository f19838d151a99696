"""Dataclasses <-> plain JSON values (dicts, lists, str, int, float, bool, None).

Driven by the dataclasses' own fields and type hints, so a field added to `Submission`
or `Result` is written to the journal and into the result cache's key without a
change here. Used by the journal (to store jobs) and the result cache (to hash them).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import types
import typing
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


class DecodeError(ValueError):
    """A stored value does not fit the type it is read back as."""


def to_plain(value: Any) -> Any:
    """`value` as JSON-ready data: a dataclass becomes a dict of all its fields, a
    tuple a list, an enum its value, bytes a base64 string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return to_plain(value.value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"cannot encode a {type(value).__name__}")


def from_plain(cls: type[T], data: Any) -> T:
    """The inverse of `to_plain` for the dataclass `cls`. A field `data` lacks takes
    its default (a journal written by an older release); a field `cls` does not
    know is a DecodeError (one written by a newer release: never guess)."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Any, where: str) -> Any:
    if tp is Any:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _decode(options[0], data, where)
        return data  # an untagged union of several types: kept as decoded JSON
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise DecodeError(f"{where}: expected an object")
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DecodeError(f"{where}: unknown field(s) {', '.join(unknown)}")
        hints = _hints(tp)
        values = {name: _decode(hints[name], value, f"{where}.{name}")
                  for name, value in data.items()}
        try:
            return tp(**values)
        except TypeError as e:  # a required field missing
            raise DecodeError(f"{where}: {e}") from None
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(data, list):
            raise DecodeError(f"{where}: expected a list")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[]") for v in data)
        if origin is tuple and args:
            if len(args) != len(data):
                raise DecodeError(f"{where}: expected {len(args)} items")
            return tuple(_decode(a, v, f"{where}[]") for a, v in zip(args, data, strict=True))
        item = args[0] if args else Any
        items = [_decode(item, v, f"{where}[]") for v in data]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(data, dict):
            raise DecodeError(f"{where}: expected an object")
        value_type = args[1] if len(args) == 2 else Any
        return {k: _decode(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(data)
        except ValueError:
            raise DecodeError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if tp is bytes:
        if not isinstance(data, str):
            raise DecodeError(f"{where}: expected base64 text")
        return base64.b64decode(data)
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(tp, type) and tp in (str, int, float, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise DecodeError(f"{where}: expected {tp.__name__}")
    return data
