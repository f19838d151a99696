"""README.md's examples work as written: its configuration file and its curl commands.

Both are read from README.md itself, so the README cannot drift from the daemon:
the ```toml block under "## Configuration" is the daemon's whole configuration (only
`--listen` is ours, and `state_dir` only if another live daemon already uses the
README's), and each curl example of "## Quick start" runs with nothing but its
host:port replaced.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from sandboxd.jail._proc import pid_alive
from tests.conftest import require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESS = "127.0.0.1:8080"


def _section(heading: str) -> str:
    """From the line starting with `heading` (e.g. "## Quick start") to the next "## "."""
    text = README.read_text()
    match = re.search(rf"^{re.escape(heading)}\b.*$", text, flags=re.M)
    assert match, f"README.md has no {heading!r} heading"
    start = match.start()
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a section, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.S | re.M)


# ------------------------------------------------------------------------------ config


def _readme_config() -> str:
    toml = [body for lang, body in _blocks(_section("## Configuration")) if lang == "toml"]
    assert len(toml) == 1, f"expected one ```toml block under ## Configuration, got {len(toml)}"
    return toml[0]


def _state_dir_in_use(state_dir: str) -> bool:
    """Another live daemon keeps its workspaces in <state_dir>/ws/<its pid>."""
    ws = Path(state_dir) / "ws"
    return ws.is_dir() and any(e.name.isdigit() and int(e.name) != os.getpid()
                               and pid_alive(int(e.name)) for e in ws.iterdir())


def test_readme_configuration_example_starts_a_daemon_that_accepts_a_submission(tmp_path):
    require_kernel()
    config = _readme_config()
    state_dir = tomllib.loads(config)["sandbox"]["state_dir"]
    if _state_dir_in_use(state_dir):
        # Never share a state dir with a running daemon: the one allowed deviation.
        ours = f"/run/sandboxd-test-readme-{os.getpid()}"
        config = config.replace(f'state_dir = "{state_dir}"', f'state_dir = "{ours}"')
        assert ours in config
        state_dir = ours
    created = not Path(state_dir).exists()
    try:
        daemon = start_daemon(tmp_path, config_text=config, state_dir=state_dir,
                              log_name="daemon.log")
        try:
            body = daemon.execute(language="python3", source="print(input())", stdin="hello")
            assert body["status"] == "Accepted", body
            assert body["stdout"] == "hello\n"
        finally:
            stop_daemon(daemon, signal.SIGINT)
    finally:
        if created:
            for sub in ("root", "ws", ""):
                try:
                    os.rmdir(Path(state_dir) / sub)
                except OSError:
                    pass


# ------------------------------------------------------------------------------ curl


def _quick_start_blocks() -> list[tuple[str, str]]:
    return _blocks(_section("## Quick start"))


def _curl_examples() -> list[str]:
    return [body for lang, body in _quick_start_blocks() if lang == "sh" and "curl" in body]


def _run_example(daemon: Daemon, script: str) -> list:
    """Runs one README example with our host:port; returns the JSON documents it printed."""
    assert README_ADDRESS in script
    script = script.replace(README_ADDRESS, f"127.0.0.1:{daemon.port}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    docs, rest = [], proc.stdout.strip()
    decoder = json.JSONDecoder()
    while rest:
        doc, end = decoder.raw_decode(rest)
        docs.append(doc)
        rest = rest[end:].strip()
    return docs


def test_readme_has_the_three_curl_examples():
    assert len(_curl_examples()) == 3, _curl_examples()


def test_readme_python_curl_example_answers_what_the_readme_shows(daemon):
    blocks = _quick_start_blocks()
    index = next(i for i, (lang, body) in enumerate(blocks)
                 if lang == "sh" and "curl" in body and "python3" in body)
    lang, shown = blocks[index + 1]
    assert lang == "json", "the README shows the answer right after the command"
    shown_doc = json.loads(shown)
    [doc] = _run_example(daemon, blocks[index][1])
    assert doc["status"] == shown_doc["status"] == "Accepted", doc
    assert doc["stdout"] == shown_doc["stdout"]
    assert set(shown_doc) <= set(doc), set(shown_doc) - set(doc)


def test_readme_c_curl_example_with_expected_output_is_accepted(daemon):
    [script] = [s for s in _curl_examples() if '"language": "c"' in s]
    [doc] = _run_example(daemon, script)
    # a + b of "2 40" against expected_output "42": the README's point is a pass.
    assert doc["status"] == "Accepted", doc
    assert doc["stdout"] == "42\n"


def test_readme_async_curl_example_polls_a_result_and_lists_languages_and_health(daemon):
    [script] = [s for s in _curl_examples() if "/result/" in s]
    result, languages, health = _run_example(daemon, script)
    assert result["status"] in ("Queued", "Running", "Accepted"), result
    assert re.fullmatch(r"[0-9a-f]{32}", result["submission_id"]), result
    assert isinstance(languages, list)
    assert {"c", "cpp", "python3", "java", "javascript"} <= {lang["id"] for lang in languages}
    assert health == {"status": "ok"}


@pytest.fixture(autouse=True)
def _readme_present():
    assert README.is_file(), README
