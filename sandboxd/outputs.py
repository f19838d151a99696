"""How a program's output is compared with the expected output: pure text, no I/O.

Outputs and expected outputs are bytes; `as_text` turns them into the text compared
here without losing any: valid UTF-8 is its characters, any other byte a lone
surrogate that equals only itself (so bytes that are not UTF-8 match only the same
bytes, and are never whitespace or part of a number).

One rule, used by the verdict (Accepted or Wrong Answer) and by the API (an expected
output that no output within the output limit could match is refused up front).
"""

from __future__ import annotations

import math
import re

# U+FEFF at the start of a text: an editor's byte order mark, not content.
BOM = "\ufeff"
_TRAILING = " \t\r"


def as_text(data: bytes) -> str:
    """`data` as text to compare, losslessly (surrogateescape): see the module's doc."""
    return data.decode("utf-8", errors="surrogateescape")


def _size(text: str) -> int:
    # The bytes `text` came from (as_text is reversible).
    return len(text.encode("utf-8", errors="surrogateescape"))


def _normalized_lines(text: str) -> list[str]:
    lines = [line.rstrip(_TRAILING) for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def comparable_expected(expected: str) -> str:
    """`expected` as outputs are compared to it: a leading BOM dropped (no judge expects
    a program to print one), trailing whitespace on each line and blank lines at the
    end removed."""
    return "\n".join(_normalized_lines(expected.removeprefix(BOM)))


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing spaces/tabs/CR on each line, blank lines at the end, and a
    BOM at the start of `expected`.

    Leading whitespace and blank lines elsewhere still count.
    """
    return _normalized_lines(actual) == _normalized_lines(expected.removeprefix(BOM))


# -- checkers: how `checker` compares (model.CHECKERS) ------------------------------

# A decimal number as judges write them; float() alone would also take "nan", "inf"
# and "1_000", which no answer means as a number.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _floats_match(actual: str, expected: str, epsilon: float) -> bool:
    ours, theirs = actual.split(), expected.split()
    if len(ours) != len(theirs):
        return False
    for a, e in zip(ours, theirs, strict=True):
        if _NUMBER.fullmatch(a) and _NUMBER.fullmatch(e):
            x, y = float(a), float(e)
            if not (math.isfinite(x) and math.isfinite(y)):
                if a != e:
                    return False
            elif abs(x - y) > epsilon and abs(x - y) > epsilon * abs(y):
                return False
        elif a != e:
            return False
    return True


def check_output(checker: str, actual: str, expected: str, epsilon: float) -> bool:
    """Whether `actual` answers `expected` under `checker` (a BOM at the start of
    `expected` never counts):

    - `exact`: the same text, character for character;
    - `lines`: outputs_match (trailing whitespace on lines and blank lines at the end);
    - `tokens`: the same whitespace-separated tokens;
    - `float`: as tokens, but two numbers match when they differ by at most `epsilon`,
      absolutely or relative to the expected one;
    - `unordered-lines`: the same lines as `lines` compares them, in any order.
    """
    expected = expected.removeprefix(BOM)
    if checker == "exact":
        return actual == expected
    if checker == "lines":
        return outputs_match(actual, expected)
    if checker == "tokens":
        return actual.split() == expected.split()
    if checker == "float":
        return _floats_match(actual, expected, epsilon)
    if checker == "unordered-lines":
        return sorted(_normalized_lines(actual)) == sorted(_normalized_lines(expected))
    raise ValueError(f"unknown checker {checker!r}")


def shortest_match_size(checker: str, expected: str) -> int | None:
    """The size in bytes of the shortest output `checker` could accept for `expected`,
    or None when there is no useful bound (`float`: 0.3333333333 may be written 0.3)."""
    expected = expected.removeprefix(BOM)
    if checker == "exact":
        return _size(expected)
    if checker in ("lines", "unordered-lines"):
        return _size(comparable_expected(expected))
    if checker == "tokens":
        return _size(" ".join(expected.split()))
    return None
