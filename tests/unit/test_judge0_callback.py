"""Judge0's callback_url: accepted on the Judge0 API under the webhooks' rules, and sent
as Judge0 sends it (app/jobs/isolate_job.rb `call_callback`): a PUT of the submission
in GET /submissions/{token}'s default shape, text base64-encoded. The format rides with
the submission (codec, journal), each delivery keeps its method, and a version 1
journal is migrated."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from judge0 import Submission as SdkSubmission  # the official SDK (test extra)
from judge0 import base_types as sdk_types

from sandboxd import judge0
from sandboxd.api import create_app
from sandboxd.cache import cache_key
from sandboxd.callbacks import Delivery
from sandboxd.codec import from_plain, to_plain
from sandboxd.config import Config, WebhookConfig
from sandboxd.journal import (
    _SCHEMA_V1,
    ID_KEY_NAME,
    SCHEMA_VERSION,
    Journal,
    JournalError,
    NewJob,
    decode_submission,
    encode_submission,
)
from sandboxd.metrics import Metrics
from sandboxd.model import CallbackFormat, Limits, Result, Status, Submission
from sandboxd.webhooks import (
    CallbackClient,
    CallbackShape,
    Dispatcher,
    MemoryDeliveryStore,
    Outcome,
    Verdict,
    signature,
    validate_callback_url,
)
from tests.unit.test_api import FakeService, make_config
from tests.unit.test_judge0 import GOOD, Catalog

LIMITS = Limits(time_limit_ms=1000, wall_time_limit_ms=3000, memory_limit_mb=64)
JOB_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "01234567-89ab-cdef-0123-456789abcdef"
JUDGE0_SHAPE = CallbackShape("PUT", judge0.callback_body)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- the body: Judge0's default fields, always base64 ----------------------------------


def test_the_body_is_the_default_fields_base64_encoded() -> None:
    result = Result(status=Status.RUNTIME_ERROR, stdout="partial ✓\n", stderr="Traceback\n",
                    exit_code=1, time_ms=12, wall_time_ms=30, memory_kb=9000,
                    compile_output="")
    body = orjson.loads(judge0.callback_body(JOB_ID, result))
    assert list(body) == list(judge0.DEFAULT_FIELDS)
    assert body == {
        "token": TOKEN,
        "stdout": b64("partial ✓\n"),
        "stderr": b64("Traceback\n"),
        "compile_output": None,
        "message": b64("Exited with error status 1"),
        "status": {"id": 11, "description": "Runtime Error (NZEC)"},
        "time": "0.012",
        "memory": 9000,
    }


@pytest.mark.parametrize(("result", "status_id"), [
    (Result(status=Status.ACCEPTED, stdout="42\n", exit_code=0), 3),
    (Result(status=Status.WRONG_ANSWER, stdout="41\n", exit_code=0), 4),
    (Result(status=Status.TIME_LIMIT_EXCEEDED), 5),
    (Result(status=Status.COMPILE_ERROR, compile_output="main.c:1: error\n"), 6),
    (Result(status=Status.MEMORY_LIMIT_EXCEEDED), 12),
    (Result(status=Status.INTERNAL_ERROR, message="box failed"), 13),
])
def test_the_sdk_reads_the_body_back(result: Result, status_id: int) -> None:
    """What a Judge0 client does with the PUT: the SDK's own decoding of its fields."""
    read = SdkSubmission()
    read.set_attributes(orjson.loads(judge0.callback_body(JOB_ID, result)))
    assert read.token == TOKEN
    assert read.status == sdk_types.Status(status_id)
    assert read.stdout == (result.stdout or None)
    assert read.compile_output == (result.compile_output or None)
    if result.status is Status.MEMORY_LIMIT_EXCEEDED:
        # Judge0 base64-encodes `message` as well (its serializer); the SDK leaves it so.
        assert read.message == b64("Memory Limit Exceeded")  # the exact verdict


async def test_the_body_is_what_get_submissions_shows_with_base64(aiohttp_client: Any) -> None:
    config = make_config()
    service = FakeService()
    app = create_app(service, Catalog(), config, metrics=Metrics())
    judge0.add_judge0_routes(app, service=service, languages=Catalog(), config=config)
    client = await aiohttp_client(app)
    created = await client.post("/submissions", json=GOOD)
    token = (await created.json())["token"]
    shown = await client.get(f"/submissions/{token}?base64_encoded=true")
    job_id = judge0.job_id_of(token)
    assert orjson.loads(judge0.callback_body(job_id, service.results[job_id])) == \
        await shown.json()


# -- accepting callback_url on the Judge0 API ---------------------------------------------


def hooks(*allowed: str, **settings: Any) -> WebhookConfig:
    return WebhookConfig(allowed_hosts=allowed, **settings)


async def judge0_client(aiohttp_client: Any, webhooks: WebhookConfig) -> tuple[Any, FakeService]:
    config = dataclasses.replace(make_config(), webhooks=webhooks)
    service, catalog = FakeService(), Catalog()

    def check(url: str) -> str | None:
        return validate_callback_url(url, webhooks)

    app = create_app(service, catalog, config, metrics=Metrics(), callback_check=check)
    judge0.add_judge0_routes(app, service=service, languages=catalog, config=config,
                             callback_check=check)
    return await aiohttp_client(app), service


async def test_an_allowed_callback_url_is_kept_with_the_judge0_format(
        aiohttp_client: Any) -> None:
    client, service = await judge0_client(aiohttp_client, hooks("hooks.example"))
    url = "http://hooks.example/judge0?submission=7"
    resp = await client.post("/submissions", json={**GOOD, "callback_url": url})
    assert resp.status == 201, await resp.text()
    (submission,) = service.submitted
    assert (submission.callback_url, submission.callback_format) == (
        url, CallbackFormat.JUDGE0)
    # Batches too; and the native API's callbacks stay native.
    resp = await client.post("/submissions/batch",
                             json={"submissions": [{**GOOD, "callback_url": url}, GOOD]})
    assert resp.status == 201, await resp.text()
    assert [(s.callback_url, s.callback_format) for s in service.submitted[1:]] == [
        (url, CallbackFormat.JUDGE0), (None, CallbackFormat.NATIVE)]
    resp = await client.post("/execute", json={"language": "python3", "source": "print(1)",
                                                "callback_url": url})
    assert resp.status == 202, await resp.text()
    assert service.submitted[-1].callback_format is CallbackFormat.NATIVE


@pytest.mark.parametrize(("webhooks", "url", "rule"), [
    (hooks(), "http://127.0.0.1:9/", "webhooks are off: no host is on the allow-list "
                                     "(webhooks.allowed_hosts)"),
    (hooks("hooks.example"), "http://elsewhere.example/",
     "the host elsewhere.example:80 is not on the allow-list (webhooks.allowed_hosts)"),
    (hooks("hooks.example"), "ftp://hooks.example/", "must be an absolute http:// or "
                                                     "https:// URL"),
    (hooks("hooks.example"), 42, "must be a string or null, not"),
])
async def test_a_refused_callback_url_is_a_judge0_422(aiohttp_client: Any,
                                                      webhooks: WebhookConfig, url: Any,
                                                      rule: str) -> None:
    client, service = await judge0_client(aiohttp_client, webhooks)
    resp = await client.post("/submissions", json={**GOOD, "callback_url": url})
    body = await resp.json()
    assert resp.status == 422, body
    assert list(body) == ["callback_url", "error"] and body["callback_url"][0].startswith(rule)
    assert body["error"] == f"callback_url: {body['callback_url'][0]}"
    assert service.submitted == []


def test_config_info_reports_the_webhooks() -> None:
    languages = judge0.Judge0Languages(Catalog(), Config(), judge0.load_language_table())
    off = judge0.config_info(Config(), languages)
    assert off["enable_callbacks"] is False
    on_config = dataclasses.replace(Config(), webhooks=hooks("h.example", max_attempts=4,
                                                             timeout_s=2.5))
    on = judge0.config_info(on_config, languages)
    assert (on["enable_callbacks"], on["callbacks_max_tries"], on["callbacks_timeout"]) == (
        True, 4, 2.5)
    sdk_types.Config(**on)


# -- the format rides with the submission ------------------------------------------------


def test_the_format_round_trips_through_the_codec_and_is_not_in_the_cache_key() -> None:
    native = Submission(language="python3", source="print(1)", limits=LIMITS,
                        callback_url="http://h.example/")
    called_back = dataclasses.replace(native, callback_format=CallbackFormat.JUDGE0)
    assert to_plain(called_back)["callback_format"] == "judge0"
    assert decode_submission(encode_submission(called_back)) == called_back
    # A submission journaled before the field existed is a native one.
    older = to_plain(native)
    del older["callback_format"]
    assert from_plain(Submission, older).callback_format is CallbackFormat.NATIVE
    # Where the result goes does not change it: one cache entry serves both APIs.
    assert cache_key(called_back) == cache_key(native)


# -- the dispatcher: shape, method, store ---------------------------------------------------


class FakeClient(CallbackClient):
    """Attempts recorded, every one delivered."""

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config)
        self.attempted: list[Delivery] = []

    async def open(self) -> None:
        pass

    async def post(self, delivery: Delivery) -> Outcome:
        self.attempted.append(delivery)
        return Outcome(Verdict.DELIVERED)


RESULT = Result(status=Status.ACCEPTED, stdout="hi\n", exit_code=0, time_ms=1, memory_kb=100)


async def test_a_judge0_job_is_recorded_as_a_put_of_its_judge0_body() -> None:
    config = hooks("h.example", backoff_s=0.0, max_backoff_s=0.0)
    store = MemoryDeliveryStore()
    client = FakeClient(config)
    dispatcher = Dispatcher(config, store, client=client,
                            shapes={CallbackFormat.JUDGE0: JUDGE0_SHAPE})
    await dispatcher.start()
    dispatcher.notify(JOB_ID, "http://h.example/j0", RESULT, CallbackFormat.JUDGE0)
    dispatcher.notify("f" * 32, "http://h.example/native", RESULT)
    await dispatcher.wait_idle()
    await dispatcher.stop(1)
    by_url = {d.url: d for d in client.attempted}
    judge0_delivery = by_url["http://h.example/j0"]
    assert judge0_delivery.method == "PUT"
    assert judge0_delivery.body == judge0.callback_body(JOB_ID, RESULT)
    native = by_url["http://h.example/native"]
    assert native.method == "POST"
    assert orjson.loads(native.body) == RESULT.to_json("f" * 32)
    assert [r.method for r in store.records()] == ["PUT", "POST"]


async def test_a_format_without_a_renderer_is_logged_not_sent(caplog: Any) -> None:
    config = hooks("h.example")
    store = MemoryDeliveryStore()
    client = FakeClient(config)
    dispatcher = Dispatcher(config, store, client=client)  # no Judge0 shape given
    await dispatcher.start()
    dispatcher.notify(JOB_ID, "http://h.example/", RESULT, CallbackFormat.JUDGE0)
    await dispatcher.wait_idle()
    await dispatcher.stop(1)
    assert client.attempted == [] and store.records() == []
    assert "no renderer for callback format 'judge0'" in caplog.text


async def test_the_client_sends_the_deliverys_method_with_the_signature(
        aiohttp_server: Any) -> None:
    seen: list[tuple[str, bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/hook", receive)
    server = await aiohttp_server(app, host="127.0.0.1")
    config = hooks(f"127.0.0.1:{server.port}", secret="s3cret")
    client = CallbackClient(config)
    await client.open()
    try:
        body = judge0.callback_body(JOB_ID, RESULT)
        url = f"http://127.0.0.1:{server.port}/hook"
        put = await client.post(Delivery(1, JOB_ID, url, body, 0, method="PUT"))
        post = await client.post(Delivery(2, JOB_ID, url, b"{}", 0))
    finally:
        await client.close()
    assert (put.verdict, post.verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert [(method, data) for method, data, _ in seen] == [("PUT", body), ("POST", b"{}")]
    headers = seen[0][2]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Sandboxd-Signature"] == signature("s3cret", body)
    assert headers["X-Sandboxd-Submission"] == JOB_ID


# -- the journal: deliveries keep their method; version 1 files are migrated --------------


async def test_a_delivery_keeps_its_method_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await Journal.open(path)
    put = await journal.add_delivery("job1", "http://h.example/", b"{}", "PUT")
    post = await journal.add_delivery("job2", "http://h.example/", b"[]")
    await journal.close()
    journal = await Journal.open(path)
    try:
        assert await journal.pending_deliveries() == [
            Delivery(put, "job1", "http://h.example/", b"{}", 0, method="PUT"),
            Delivery(post, "job2", "http://h.example/", b"[]", 0, method="POST")]
        with pytest.raises(JournalError, match="CHECK constraint"):  # only these two
            await journal.add_delivery("job3", "http://h.example/", b"{}", "DELETE")
    finally:
        await journal.close()


def write_v1_journal(path: Path) -> None:
    """A journal as release 1 of the schema left it: a pending delivery, a queued job."""
    conn = sqlite3.connect(path)
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (ID_KEY_NAME, b"k" * 32))
    conn.execute("INSERT INTO deliveries (job_id, url, body, attempts, state, created_at) "
                 "VALUES ('old', 'http://h.example/', x'7b7d', 2, 'pending', 1.0)")
    old = to_plain(Submission(language="python3", source="print(1)", limits=LIMITS,
                              callback_url="http://h.example/"))
    del old["callback_format"]  # release 1 had no such field
    conn.execute("INSERT INTO jobs (id, accepted_at, state, submission) "
                 "VALUES ('queued-job', 1.0, 'queued', ?)", (orjson.dumps(old),))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


async def test_a_version_1_journal_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_v1_journal(path)
    journal = await Journal.open(path)
    try:
        assert await journal.pending_deliveries() == [
            Delivery(1, "old", "http://h.example/", b"{}", 2, method="POST")]
        (record,) = await journal.load()
        assert record.submission is not None
        assert record.submission.callback_format is CallbackFormat.NATIVE
        new = await journal.add_delivery("new", "http://h.example/", b"{}", "PUT")
        assert [d.method for d in await journal.pending_deliveries()] == ["POST", "PUT"]
        called_back = Submission(language="python3", source="x", limits=LIMITS,
                                 callback_url="http://h.example/",
                                 callback_format=CallbackFormat.JUDGE0)
        await journal.accept([NewJob("judge0-job", 2.0, called_back)])
    finally:
        await journal.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT id, method FROM deliveries ORDER BY id").fetchall() == [
            (1, "POST"), (new, "PUT")]
    finally:
        conn.close()
    journal = await Journal.open(path)  # opened again: already current, nothing to do
    try:
        by_id = {r.id: r for r in await journal.load()}
        assert by_id["judge0-job"].submission == called_back
    finally:
        await journal.close()
