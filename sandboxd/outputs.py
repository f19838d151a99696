"""How a program's output is compared with the expected output: pure text, no I/O.

One rule, used by the verdict (Accepted or Wrong Answer) and by the API (an expected
output that no output within the output limit could match is refused up front).
"""

from __future__ import annotations

# U+FEFF at the start of a text: an editor's byte order mark, not content.
BOM = "\ufeff"
_TRAILING = " \t\r"


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
