"""API tokens: `[auth] tokens` in the config, `Authorization: Bearer` on every request
but GET /health, compared in constant time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sandboxd import api
from sandboxd.config import AuthConfig, ConfigError, load
from tests.unit.test_api import GOOD, Env, new_env

TOKEN_A = "a" * 16 + "-first-token"
TOKEN_B = "0123456789abcdef0123456789abcdef"

# Every route, with a request that succeeds once authenticated.
ROUTES = [
    ("POST", "/execute", GOOD, 202),
    ("POST", "/execute/batch", {"submissions": [GOOD]}, 202),
    ("GET", "/result/0123", None, 404),
    ("GET", "/result?ids=0123", None, 200),
    ("GET", "/languages", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/no/such/endpoint", None, 404),
]


@pytest.fixture
async def env(aiohttp_client: Any) -> Env:
    return await new_env(aiohttp_client, tokens=(TOKEN_A, TOKEN_B))


async def call(env: Env, method: str, path: str, body: Any,
               authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await env.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "ok"), ROUTES)
async def test_every_endpoint_needs_a_token(env: Env, method: str, path: str, body: Any,
                                            ok: int) -> None:
    resp = await call(env, method, path, body, None)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="sandboxd"'
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert "Authorization" in error and "Bearer" in error and "auth.tokens" in error
    assert env.service.submitted == []


@pytest.mark.parametrize(("method", "path", "body", "ok"), ROUTES)
@pytest.mark.parametrize("token", [TOKEN_A, TOKEN_B])
async def test_any_configured_token_opens_every_endpoint(
        env: Env, method: str, path: str, body: Any, ok: int, token: str) -> None:
    resp = await call(env, method, path, body, f"Bearer {token}")
    assert resp.status == ok, await resp.text()


@pytest.mark.parametrize(("authorization", "challenge", "error"), [
    (f"Bearer {TOKEN_A}x", 'error="invalid_token"', "invalid token"),
    (f"Bearer {TOKEN_A[:-1]}", 'error="invalid_token"', "invalid token"),
    ("Bearer " + TOKEN_B.upper(), 'error="invalid_token"', "invalid token"),
    (f"Basic {TOKEN_A}", 'error="invalid_request"', "must be 'Bearer <token>'"),
    (TOKEN_A, 'error="invalid_request"', "must be 'Bearer <token>'"),
    ("Bearer", 'error="invalid_request"', "must be 'Bearer <token>'"),
    ("Bearer   ", 'error="invalid_request"', "must be 'Bearer <token>'"),
    ("", 'error="invalid_request"', "must be 'Bearer <token>'"),
])
async def test_a_wrong_token_or_scheme_is_401(env: Env, authorization: str, challenge: str,
                                               error: str) -> None:
    resp = await call(env, "POST", "/execute", GOOD, authorization)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == f'Bearer realm="sandboxd", {challenge}'
    assert error in (await resp.json())["error"]
    assert env.service.submitted == []


async def test_scheme_is_case_insensitive(env: Env) -> None:
    resp = await call(env, "GET", "/languages", None, f"bearer {TOKEN_B}")
    assert resp.status == 200


async def test_health_stays_open(env: Env) -> None:
    resp = await env.client.get("/health")
    assert resp.status == 200
    env.service.problem = "journal unwritable"
    resp = await env.client.get("/health", headers={"Authorization": "Bearer wrong"})
    assert (resp.status, await resp.json()) == (
        503, {"status": "unavailable", "error": "journal unwritable"})


async def test_without_tokens_nothing_needs_one(aiohttp_client: Any) -> None:
    env = await new_env(aiohttp_client)
    for method, path, body, ok in ROUTES:
        resp = await call(env, method, path, body, None)
        assert resp.status == ok, (path, await resp.text())
    # A header sent anyway is ignored.
    assert (await call(env, "GET", "/languages", None, "Bearer whatever")).status == 200


async def test_every_token_is_compared_whichever_matches(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = api.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", counting)
    assert (await call(env, "GET", "/languages", None, f"Bearer {TOKEN_A}")).status == 200
    assert (await call(env, "GET", "/languages", None, "Bearer nope")).status == 401
    # Two tokens, two requests: both compared both times (no early exit on a match),
    # always as equal-length digests (no length shows in the timing).
    assert len(compared) == 4
    assert {len(a) for a, _ in compared} | {len(b) for _, b in compared} == {32}


def test_token_check_accepts_a_header_that_is_not_utf8() -> None:
    check = api.TokenCheck([TOKEN_A])
    assert check.problem("Bearer \udcff\udcfe") is not None
    assert check.problem(f"Bearer {TOKEN_A}") is None


# -- configuration -----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    return path


def test_tokens_load_from_the_config_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, f'[auth]\ntokens = ["{TOKEN_A}", "{TOKEN_B}"]\n'))
    assert config.auth == AuthConfig(tokens=(TOKEN_A, TOKEN_B))


def test_auth_is_off_by_default() -> None:
    assert load().auth.tokens == ()


@pytest.mark.parametrize(("text", "error"), [
    (f'tokens = ["{TOKEN_A}", "short"]', "auth.tokens[1]: must be at least 16 characters"),
    ('tokens = ["with a space in it, long enough"]', "auth.tokens[0]: only visible ASCII"),
    ('tokens = ["ünïcödé-tøkens-are-not-headers"]', "auth.tokens[0]: only visible ASCII"),
    (f'tokens = "{TOKEN_A}"', "auth.tokens: expected an array of strings"),
    ("tokens = [1234567890123456789]", "auth.tokens: expected an array of strings"),
    ("token = []", "auth: unknown key(s) token"),
])
def test_bad_tokens_are_a_start_up_error_naming_the_key(tmp_path: Path, text: str,
                                                         error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, f"[auth]\n{text}\n"))
    assert str(e.value).startswith(error)
    assert "short" not in str(e.value)  # a secret is never echoed


@pytest.mark.parametrize(("text", "error"), [
    ("max_batch = 0", "server.max_batch: must be at least 1"),
    ("wait_cap_s = 0", "server.wait_cap_s: must be in (0, 3600] seconds"),
    ("wait_cap_s = 4000", "server.wait_cap_s: must be in (0, 3600] seconds"),
    ('wait_cap_s = "30"', "server.wait_cap_s: expected float"),
])
def test_batch_and_wait_settings_are_validated(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, f"[server]\n{text}\n"))
    assert str(e.value).startswith(error)


def test_batch_and_wait_settings_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[server]\nmax_batch = 7\nwait_cap_s = 2\n"))
    assert (config.server.max_batch, config.server.wait_cap_s) == (7, 2.0)


# -- the start-up warning ------------------------------------------------------------------


@pytest.mark.parametrize(("host", "tokens", "warned"), [
    ("127.0.0.1", (), False),
    ("127.0.0.2", (), False),
    ("::1", (), False),
    ("localhost", (), False),
    ("0.0.0.0", (), True),
    ("::", (), True),
    ("10.1.2.3", (), True),
    ("judge.example", (), True),  # a name may resolve to anything
    ("0.0.0.0", (TOKEN_A,), False),
])
def test_a_non_loopback_address_without_tokens_is_warned_about(
        caplog: pytest.LogCaptureFixture, host: str, tokens: tuple[str, ...],
        warned: bool) -> None:
    from sandboxd import server
    from tests.unit.test_api import make_config

    with caplog.at_level(logging.WARNING, logger="sandboxd"):
        server.warn_if_open_to_the_network(host, 8080, make_config(tokens=tokens))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warned, warnings
    if warned:
        assert f"listening on {host}:8080" in warnings[0] and "[auth] tokens" in warnings[0]
