"""Helpers for hostile test programs: each check prints `name:OK` or `name:FAIL detail`.

The C programs include programs/isolation_checks.h; a test asserts every named line, so
a failure names the exact promise that broke.
"""

from __future__ import annotations

from pathlib import Path

from sandboxd.model import Result, Status

PRELUDE = (Path(__file__).parent / "programs" / "isolation_checks.h").read_text()


def c_program(body: str, includes: str = "") -> str:
    return PRELUDE + "\n" + includes + body


def checks(result: Result) -> dict[str, str]:
    got: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, sep, verdict = line.partition(":")
        if sep:
            got[name] = verdict
    return got


def describe(result: Result) -> str:
    return (f"{result.status}: exit={result.exit_code} signal={result.signal}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"compile:\n{result.compile_output}\nmessage: {result.message}")


def assert_checks(result: Result, names: list[str]) -> None:
    """The program ran to its end (Accepted) and printed `name:OK` for every name."""
    assert result.status is Status.ACCEPTED, describe(result)
    got = checks(result)
    broken = {n: got.get(n, "<no line printed>") for n in names if got.get(n) != "OK"}
    assert not broken, f"broken promises: {broken}\nfull stdout:\n{result.stdout}"
