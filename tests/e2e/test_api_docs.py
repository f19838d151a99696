"""docs/API.md's examples work word for word: every ```sh block runs against a real
daemon (its address the only change) and prints what the block after it shows.

A shown value "…" stands for anything (ids, times, memory); every other shown value
must be printed exactly, and a shown JSON object must have exactly the printed keys.
A ```text block after a command lists lines whose first word must be printed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
DOC_ADDRESS = "127.0.0.1:8080"
ANY = "…"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


def examples() -> list[tuple[str, tuple[str, str] | None]]:
    """Every sh block, with the block right after it if that shows its output."""
    found = blocks()
    pairs = []
    for i, (lang, body) in enumerate(found):
        if lang == "sh":
            after = found[i + 1] if i + 1 < len(found) else None
            pairs.append((body, after if after and after[0] in ("json", "text") else None))
    return pairs


def json_documents(text: str) -> list[Any]:
    docs, rest, decoder = [], text.strip(), json.JSONDecoder()
    while rest:
        doc, end = decoder.raw_decode(rest)
        docs.append(doc)
        rest = rest[end:].strip()
    return docs


def matches(shown: Any, printed: Any, where: str = "") -> None:
    if shown == ANY:
        return
    if isinstance(shown, dict):
        assert isinstance(printed, dict), (where, printed)
        assert set(shown) == set(printed), (where, set(shown) ^ set(printed))
        for key, value in shown.items():
            matches(value, printed[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(printed, list) and len(shown) == len(printed), (where, printed)
        for i, (a, b) in enumerate(zip(shown, printed, strict=True)):
            matches(a, b, f"{where}[{i}]")
    else:
        assert shown == printed, (where, shown, printed)


def run(daemon: Daemon, script: str) -> str:
    assert DOC_ADDRESS in script, script
    script = script.replace(DOC_ADDRESS, f"127.0.0.1:{daemon.port}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    return proc.stdout


def test_every_example_shows_its_output():
    assert len(examples()) >= 10
    for script, shown in examples():
        assert shown is not None, f"no ```json or ```text block after:\n{script}"


def test_the_doc_never_points_outside_the_project():
    text = DOC.read_text()
    assert "SPEC" not in text and "../" not in text


def test_examples_run_word_for_word_and_print_what_they_show(daemon):
    # In document order, like a reader: one example may rely on an earlier one
    # (the result cache example expects its first request to be a miss).
    for script, shown in examples():
        printed = run(daemon, script)
        assert shown is not None
        lang, text = shown
        if lang == "json":
            shown_docs, printed_docs = json_documents(text), json_documents(printed)
            assert len(shown_docs) == len(printed_docs), (script, printed)
            for a, b in zip(shown_docs, printed_docs, strict=True):
                matches(a, b, script.splitlines()[0])
        else:
            words = {line.split()[0] for line in printed.splitlines() if line.strip()}
            for line in text.splitlines():
                assert line.split()[0] in words, (script, line, printed)


@pytest.fixture(autouse=True)
def _doc_present():
    assert DOC.is_file(), DOC
