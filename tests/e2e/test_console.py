"""The web console over plain HTTP, against the real daemon: the page and its files are
served from the package with a strict Content-Security-Policy and reference nothing off
the host; the status endpoint counts what the API runs; no CORS grant; the token rules
and the off switch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require_kernel
from tests.e2e.conftest import start_daemon, stop_daemon

TOKEN = "console-test-token-0123456789"
ASSETS = ("/", "/console/console.js", "/console/console.css", "/console/favicon.svg")


def fetch(url: str, headers: dict[str, str] | None = None,
          method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("console-token"),
                     config_text=f'[sandbox]\nstate_dir = "/run/sandboxd-test"\n'
                                 f'[auth]\ntokens = ["{TOKEN}"]\n',
                     languages=["python3"])
    try:
        yield d
    finally:
        stop_daemon(d)


def test_page_and_files_are_served_with_a_strict_policy(daemon):
    types = {"/": "text/html", "/console/console.js": "text/javascript",
             "/console/console.css": "text/css", "/console/favicon.svg": "image/svg+xml"}
    for path in ASSETS:
        status, body, headers = fetch(daemon.url + path)
        assert status == 200, (path, body[:200])
        assert headers["Content-Type"].startswith(types[path])
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_page_needs_nothing_from_another_host(daemon):
    """Works offline: every URL the page or its style names is a path on this daemon,
    and each of them is served."""
    _, html, _ = fetch(daemon.url + "/")
    _, css, _ = fetch(daemon.url + "/console/console.css")
    _, js, _ = fetch(daemon.url + "/console/console.js")
    refs = re.findall(rb'(?:src|href)="([^"]+)"', html) + re.findall(rb"url\(([^)]+)\)", css)
    assert refs, "the page loads its script and style"
    for ref in refs:
        assert ref.startswith(b"/") and not ref.startswith(b"//"), ref
        assert fetch(daemon.url + ref.decode())[0] == 200, ref
    # The script talks to this origin only (fetch of paths); the SVG namespace is a
    # name, never fetched.
    _, icon, _ = fetch(daemon.url + "/console/favicon.svg")
    urls = set(re.findall(rb"https?://[^\s\"')]+", html + css + js + icon))
    assert urls <= {b"http://www.w3.org/2000/svg"}, urls
    assert b"@import" not in css


def test_status_counts_what_the_api_ran(daemon):
    status, before, _ = daemon.request("GET", "/console/status")
    assert status == 200, before
    for key in ("queued", "running", "workers", "queue_size", "kernel", "cgroup", "series",
                "verdicts", "latency_s", "languages", "window_s"):
        assert key in before, key
    assert before["cgroup"] in ("v1", "v2")
    assert any(lang["id"] == "python3" and lang["available"] for lang in before["languages"])
    daemon.execute(language="python3", source="print(1)\n")
    daemon.execute(language="python3", source="raise SystemExit(3)\n")
    _, after, _ = daemon.request("GET", "/console/status")
    assert after["finished"]["Accepted"] == before["finished"].get("Accepted", 0) + 1
    assert after["finished"]["Runtime Error"] == before["finished"].get("Runtime Error", 0) + 1
    # The window's verdicts and latency come from the /metrics counters.
    assert after["verdicts"].get("Accepted", 0) >= 1
    assert after["latency_s"]["p50"] is not None and after["latency_s"]["p50"] > 0


@pytest.mark.parametrize("path", ["/", "/execute", "/console/status", "/languages"])
def test_cross_origin_preflight_gets_no_cors_grant(daemon, path):
    status, _, headers = fetch(daemon.url + path, method="OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert status >= 400
    assert not [h for h in headers if h.lower().startswith("access-control-")], headers


def test_cross_origin_get_gets_no_cors_grant(daemon):
    _, _, headers = fetch(daemon.url + "/languages", headers={"Origin": "https://evil.example"})
    assert not [h for h in headers if h.lower().startswith("access-control-")], headers


def test_with_tokens_the_page_is_open_but_the_api_it_calls_is_not(token_daemon):
    for path in ASSETS:
        assert fetch(token_daemon.url + path)[0] == 200, path
    for path in ("/console/status", "/languages", "/console/nothing-here"):
        status, body, _ = fetch(token_daemon.url + path)
        assert status == 401, (path, body)
        assert b"Authorization" in body
    status, body, _ = fetch(token_daemon.url + "/console/status",
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    assert b'"auth":true' in body


def test_console_can_be_switched_off(tmp_path):
    d = start_daemon(tmp_path, config_text='[sandbox]\nstate_dir = "/run/sandboxd-test"\n'
                                           '[console]\nenabled = false\n',
                     languages=["python3"])
    try:
        for path in (*ASSETS, "/console/status"):
            status, body, _ = fetch(d.url + path)
            assert status == 404, (path, body)
            assert body.startswith(b'{"error"')
        assert d.request("GET", "/languages")[0] == 200
    finally:
        stop_daemon(d)


OFFLINE_CHECK = """
import json, sys, urllib.request
from pathlib import Path
from tests.e2e.conftest import start_daemon, stop_daemon

tmp = Path(sys.argv[1])
d = start_daemon(tmp, languages=["python3"])
try:
    sizes = {}
    for path in ("/", "/console/console.js", "/console/console.css", "/console/favicon.svg"):
        with urllib.request.urlopen(d.url + path, timeout=30) as resp:
            sizes[path] = [resp.status, len(resp.read())]
    result = d.execute(language="python3", source="print('offline')")
finally:
    stop_daemon(d)
print(json.dumps({"sizes": sizes, "stdout": result["stdout"]}))
"""


def test_console_works_on_a_host_without_a_network(tmp_path):
    """A daemon in a network namespace of its own with nothing but loopback: the page,
    its files and a run through the API all work."""
    require_kernel()
    interfaces = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", "ip -o link show"], capture_output=True,
        text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in interfaces.splitlines()] == ["lo"]
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c",
         'ip link set lo up && exec "$0" -c "$1" "$2"', sys.executable, OFFLINE_CHECK,
         str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["stdout"] == "offline\n"
    for path, (status, size) in report["sizes"].items():
        assert status == 200 and size > 0, path
