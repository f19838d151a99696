"""Whatever a client sends, the answer is JSON with a 2xx or a 4xx: never a 500.

Random (seeded, so every run sends the same requests) values of every JSON type for
every field, random body shapes, batches, Content-Types and query strings.
"""

from __future__ import annotations

import logging
import random
import string
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from sandboxd.api import KNOWN_FIELDS
from tests.unit.test_api import GOOD, Env, new_env

SEED = 20261207
FIELDS = sorted(KNOWN_FIELDS) + ["", "x", "language ", "LANGUAGE", "__proto__"]


def random_string(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return ""
    if kind == 1:
        return rng.choice(["python3", "c", "http://127.0.0.1:1/x", "https://judge.example/h",
                           "true", "0", "\ufeff", "é" * 20, "\x00", "\n\r\t"])
    if kind == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 40)))
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(rng.randrange(1, 20)))
    if kind == 4:
        return "x" * rng.choice([2047, 2048, 2049, 5000])
    return rng.choice(["ftp://a/b", "http://", "http://[::1", "https://user:pw@h/x",
                       "javascript:alert(1)", "//judge.example/x", "http://a:99999/x"])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 3, 4, 1000, 10_000, 10_001, 30_000, 2**31, -(2**63),
                           2**64 - 1])
    if kind == 3:
        return rng.choice([0.0, 0.5, 1e300, -2.5, 1000.0])
    if kind in (4, 5):
        return random_string(rng)
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_string(rng)[:10]: random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


VALID = {"time_limit_ms": 1000, "wall_time_limit_ms": 3000, "memory_limit_mb": 64,
         "expected_output": "hello", "cache": False, "callback_url": "http://127.0.0.1:9/x",
         "stdin": ""}


def random_submission(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return random_value(rng)
    if rng.random() < 0.15:  # valid ones too: acceptance must be reachable
        valid = {**GOOD, **dict(rng.sample(sorted(VALID.items()), k=rng.randrange(4)))}
        if rng.random() < 0.3:
            valid[rng.choice(["source", "stdin"])] = "y" * 3001  # over the maxima: 413
        return valid
    body: dict[str, Any] = dict(GOOD) if rng.random() < 0.7 else {}
    for _ in range(rng.randrange(1, 5)):
        body[rng.choice(FIELDS)] = random_value(rng)
    if rng.random() < 0.3:
        for name in rng.sample(sorted(body), k=min(len(body), rng.randrange(3))):
            del body[name]
    return body


def random_body(rng: random.Random) -> tuple[str, bytes]:
    """(path, raw body)."""
    if rng.random() < 0.3:
        if rng.random() < 0.2:
            batch: Any = random_value(rng)
        else:
            batch = {"submissions": [random_submission(rng) for _ in range(rng.randrange(5))]}
        return "/execute/batch", orjson.dumps(batch)
    data = orjson.dumps(random_submission(rng))
    if rng.random() < 0.1:  # damaged JSON
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1:]
    return "/execute", data


CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "application/json; charset=ebcdic",
                 "application/ld+json", ";", "application/json;;;", "*/*"]
QUERIES = ["", "?wait=true", "?wait=1", "?wait=", "?wait=no", "?wait=true&wait=false",
           "?x=1", "?wait=" + quote("é")]


async def test_random_requests_never_get_a_500(aiohttp_client: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    env = await new_env(aiohttp_client, max_batch=3, max_source_bytes=3000, max_stdin_bytes=3000,
                        callback_check=lambda url: None if "127.0.0.1" in url else "no")
    rng = random.Random(SEED)
    statuses: set[int] = set()
    with caplog.at_level(logging.ERROR):
        for _ in range(600):
            path, data = random_body(rng)
            content_type = rng.choice(CONTENT_TYPES)
            headers = {} if content_type is None else {"Content-Type": content_type}
            skip = ["Content-Type"] if content_type is None else []
            resp = await env.client.post(path + rng.choice(QUERIES), data=data, headers=headers,
                                         skip_auto_headers=skip)
            body = await resp.json()
            statuses.add(resp.status)
            assert resp.content_type == "application/json"
            assert 200 <= resp.status < 300 or 400 <= resp.status < 500, (data, body)
            if resp.status >= 400:
                assert set(body) == {"error"} and body["error"], body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The generator reaches acceptance and every kind of refusal, or it tests little.
    assert {200, 202, 400, 413, 415} <= statuses, statuses


async def test_random_result_queries_never_get_a_500(aiohttp_client: Any) -> None:
    env: Env = await new_env(aiohttp_client)
    rng = random.Random(SEED)
    for _ in range(200):
        ids = ",".join(random_string(rng)[:50] for _ in range(rng.randrange(5)))
        for path in (f"/result?ids={quote(ids)}", f"/result/{quote(ids or 'x', safe='')}"):
            resp = await env.client.get(path)
            assert resp.content_type == "application/json"
            assert resp.status in (200, 400, 404), (path, await resp.text())
