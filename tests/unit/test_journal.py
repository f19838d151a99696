"""The journal: SQLite in WAL mode off the event loop, group commits, jobs and deliveries
that survive a reopen, a versioned schema, clear errors for a journal it cannot use."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from sandboxd.callbacks import Delivery, DeliveryStore
from sandboxd.codec import DecodeError, from_plain, to_plain
from sandboxd.journal import (
    SCHEMA_VERSION,
    FinishedJob,
    Journal,
    JournalError,
    NewJob,
    decode_result,
    decode_submission,
    encode_result,
    encode_submission,
)
from sandboxd.model import JudgeCase, Limits, Result, Status, Submission

LIMITS = Limits(time_limit_ms=1500, wall_time_limit_ms=4000, memory_limit_mb=64)


def submission(source: str = "print(1)", **fields: object) -> Submission:
    return Submission(language="python3", source=source, limits=LIMITS, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "state" / "sandboxd.db")
    yield j
    await j.close()


# -- codec ----------------------------------------------------------------------------


def test_submission_and_result_round_trip() -> None:
    sub = submission("print('é ✓')\n", stdin=b"x\0y", expected_output=b"1\n",
                     callback_url="http://127.0.0.1:9/hook", cache=False)
    assert decode_submission(encode_submission(sub)) == sub
    result = Result(status=Status.WRONG_ANSWER, stdout="ä\n", stderr="", exit_code=0,
                    time_ms=3, wall_time_ms=9, memory_kb=2048, compile_output="",
                    message=None, cached=True, extra={"tests": [{"status": "Accepted"}]})
    assert decode_result(encode_result(result)) == result
    internal = Result(status=Status.INTERNAL_ERROR, message="fork server died")
    assert decode_result(encode_result(internal)) == internal


def test_decoding_takes_defaults_for_missing_fields_and_refuses_unknown_ones() -> None:
    plain = to_plain(submission())
    del plain["stdin"], plain["cache"]  # written by a release without these fields
    assert from_plain(Submission, plain) == submission()
    with pytest.raises(DecodeError, match="unknown field.*shiny"):
        from_plain(Submission, {**to_plain(submission()), "shiny": 1})
    with pytest.raises(DecodeError, match="limits"):
        from_plain(Submission, {**to_plain(submission()), "limits": "fast"})
    with pytest.raises(DecodeError, match="status"):
        from_plain(Result, {"status": "Pending Review"})


ANY_BYTES = bytes(range(256))


def test_any_bytes_round_trip_through_the_stored_json() -> None:
    # orjson refuses lone surrogates, so bytes are never smuggled through str: the
    # model holds bytes and the codec stores them as base64.
    cases = (JudgeCase(stdin=b"\xff\x00", expected_output=b"\x80\n"), JudgeCase())
    sub = submission(stdin=ANY_BYTES, expected_output=b"\xfe\xff", tests=cases)
    stored = encode_submission(sub)
    assert decode_submission(stored) == sub
    assert orjson.loads(stored)["stdin"] == base64.b64encode(ANY_BYTES).decode()
    result = Result(status=Status.ACCEPTED, stdout="\ufffd", exact_stdout=b"\xff",
                    stderr="\ufffd", exact_stderr=b"\x80",
                    compile_output="\ufffd", exact_compile_output=b"\xc3")
    assert decode_result(encode_result(result)) == result


def test_a_submission_stored_by_an_older_release_reads_its_text_inputs() -> None:
    # Before format 2, stdin and expected_output were JSON strings, in the journal
    # and in Redis streams alike: they are read as the text they were (UTF-8).
    old = to_plain(submission())
    old.update(stdin="é ✓\n", expected_output="ok\n",
               tests=[{"stdin": "1", "expected_output": None, "time_limit_ms": None,
                       "wall_time_limit_ms": None}, {"stdin": "2"}])
    decoded = decode_submission(orjson.dumps(old))
    assert (decoded.stdin, decoded.expected_output) == ("é ✓\n".encode(), b"ok\n")
    assert decoded.tests == (JudgeCase(stdin=b"1"), JudgeCase(stdin=b"2"))
    # A legacy result has no exact_* fields: its text is its output.
    legacy_result = {"status": "Accepted", "stdout": "ä\n"}
    assert decode_result(orjson.dumps(legacy_result)).output_bytes("stdout") == "ä\n".encode()
    with pytest.raises(DecodeError, match="format 3"):
        decode_submission(orjson.dumps({**old, "format": 3}))  # a newer release's


async def test_a_version_2_journal_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    await (await Journal.open(path)).close()
    old = to_plain(submission(source="print(input())"))
    old.update(stdin="é\n", expected_output="é\n")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO jobs (id, accepted_at, state, submission) "
                 "VALUES ('queued', 1.0, 'queued', ?)", (orjson.dumps(old),))
    conn.execute("INSERT INTO jobs (id, accepted_at, state, submission) "
                 "VALUES ('damaged', 2.0, 'queued', x'7b')")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    journal = await Journal.open(path)
    try:
        queued, damaged = await journal.load()
        assert queued.submission == submission(source="print(input())", stdin="é\n".encode(),
                                               expected_output="é\n".encode())
        assert damaged.submission is None and damaged.unreadable  # left as it was
    finally:
        await journal.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        [stored] = conn.execute("SELECT submission FROM jobs WHERE id = 'queued'").fetchone()
        assert orjson.loads(stored)["format"] == 2  # rewritten in today's shape
        assert base64.b64decode(orjson.loads(stored)["stdin"]) == "é\n".encode()
    finally:
        conn.close()


# -- opening ------------------------------------------------------------------------


async def test_open_creates_the_directory_and_a_wal_journal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "sandboxd.db"
    journal = await Journal.open(path)
    key = journal.id_key
    assert len(key) == 32
    await journal.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    again = await Journal.open(path)
    assert again.id_key == key  # ids issued before a restart are still recognised
    await again.close()


async def test_unusable_journals_are_clear_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(JournalError, match="cannot create the directory"):
        await Journal.open(a_file / "sandboxd.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a usable SQLite journal"):
        await Journal.open(garbage)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="not a sandboxd journal"):
        await Journal.open(foreign)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await (await Journal.open(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="newer than this release"):
        await Journal.open(path)


async def test_a_second_daemon_on_the_same_journal_is_refused(journal: Journal) -> None:
    with pytest.raises(JournalError, match=rf"in use by another process \(pid {os.getpid()}"):
        await Journal.open(journal.path)
    await journal.accept([NewJob("a", 1.0, submission())])  # the first one still works
    # An operator can still read it while the daemon runs.
    conn = sqlite3.connect(f"file:{journal.path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT id, state FROM jobs").fetchall() == [("a", "queued")]
    finally:
        conn.close()
    await journal.close()
    again = await Journal.open(journal.path)  # released on close
    await again.close()


# -- jobs ---------------------------------------------------------------------------


async def test_jobs_round_trip_in_acceptance_order(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await Journal.open(path)
    ok = Result(status=Status.ACCEPTED, stdout="1\n", exit_code=0)
    await journal.accept([NewJob("c", 30.0, submission("c")), NewJob("a", 10.0, submission("a"))])
    await journal.accept([NewJob("hit", 40.0, submission("h"), encode_result(ok), 41.0)])
    await journal.accept([NewJob("b", 20.0, submission("b"))])
    await journal.mark_running("a", 1)
    await journal.mark_running("b", 1)
    await journal.mark_queued("b", 0)  # a shutdown cut it short
    await journal.finish([FinishedJob("c", encode_result(ok), 50.0)])
    await journal.close()

    journal = await Journal.open(path)
    records = await journal.load()
    assert [r.id for r in records] == ["c", "a", "hit", "b"]  # acceptance order, not time
    by_id = {r.id: r for r in records}
    assert (by_id["a"].state, by_id["a"].attempts) == ("running", 1)
    assert by_id["a"].submission == submission("a")
    assert (by_id["b"].state, by_id["b"].attempts) == ("queued", 0)
    for finished in ("c", "hit"):
        record = by_id[finished]
        assert record.state == "finished" and record.submission is None  # input dropped
        assert record.result == ok and record.result_bytes == len(encode_result(ok))
    assert by_id["c"].finished_at == 50.0 and by_id["hit"].finished_at == 41.0
    await journal.forget(["c", "hit"])
    assert [r.id for r in await journal.load()] == ["a", "b"]
    # A finished job is never put back into a running state.
    await journal.finish([FinishedJob("a", encode_result(ok), 60.0)])
    await journal.mark_running("a", 2)
    assert [r.state for r in await journal.load()] == ["finished", "queued"]
    await journal.close()


async def test_an_unreadable_record_is_reported_not_raised(journal: Journal) -> None:
    await journal.accept([NewJob("x", 1.0, submission())])

    def damage(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET submission = ? WHERE id = 'x'", (b'{"language": 1}',))

    await journal._call(damage)
    [record] = await journal.load()
    assert record.submission is None and record.unreadable is not None


async def test_writes_queued_during_a_commit_are_committed_together(journal: Journal) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(10)

    blocker = asyncio.ensure_future(journal._call(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    before = journal.commits
    writes = [asyncio.ensure_future(journal.accept([NewJob(f"j{i}", i, submission())]))
              for i in range(50)]
    await asyncio.sleep(0.05)  # all 50 are queued behind the blocked transaction
    assert not any(w.done() for w in writes)
    release.set()
    await asyncio.gather(blocker, *writes)
    assert journal.commits == before + 2  # the blocker's transaction, then all 50 in one
    assert len(await journal.load()) == 50


async def test_starts_commit_without_fsync_and_ahead_of_results(journal: Journal) -> None:
    await journal.accept([NewJob("a", 1.0, submission()), NewJob("b", 2.0, submission())])
    entered, release = threading.Event(), threading.Event()
    levels: list[tuple[str, int]] = []

    def slow(conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(10)

    def level(name: str) -> Callable[[sqlite3.Connection], None]:
        """An op that records the synchronous level its commit runs under."""

        def read(conn: sqlite3.Connection) -> None:
            levels.append((name, conn.execute("PRAGMA synchronous").fetchone()[0]))
        return read

    blocker = asyncio.ensure_future(journal._call(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    order: list[str] = []
    result = asyncio.ensure_future(journal.finish([FinishedJob("a", b"{}", 3.0)]))
    result.add_done_callback(lambda _: order.append("result"))
    probe_full = asyncio.ensure_future(journal._call(level("result")))
    start = asyncio.ensure_future(journal.mark_running("b", 1))
    start.add_done_callback(lambda _: order.append("start"))
    probe_normal = asyncio.ensure_future(journal._call(level("start"), power_safe=False))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(blocker, result, start, probe_full, probe_normal)
    assert order == ["start", "result"]
    assert sorted(levels) == [("result", 2), ("start", 1)]  # FULL = 2, NORMAL = 1


async def test_one_failing_write_does_not_fail_the_others_of_its_group(journal: Journal) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(10)

    blocker = asyncio.ensure_future(journal._call(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    good = asyncio.ensure_future(journal.accept([NewJob("good", 1.0, submission())]))
    duplicate = asyncio.ensure_future(journal.accept([NewJob("dup", 1.0, submission())]))
    duplicate2 = asyncio.ensure_future(journal.accept([NewJob("dup", 2.0, submission())]))
    await asyncio.sleep(0.05)
    release.set()
    await blocker
    await good
    await duplicate
    with pytest.raises(JournalError, match="UNIQUE"):
        await duplicate2
    assert journal.problem is None  # a refused row is not an unwritable journal
    assert sorted(r.id for r in await journal.load()) == ["dup", "good"]


async def test_a_failing_commit_is_reported_until_one_succeeds(journal: Journal) -> None:
    def disk_full(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(JournalError, match="disk is full"):
        await journal._call(disk_full)
    assert journal.problem is not None and "disk is full" in journal.problem
    await journal.probe()
    assert journal.problem is None


async def test_close_commits_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await Journal.open(path)
    pending = [asyncio.ensure_future(journal.accept([NewJob(f"j{i}", i, submission())]))
               for i in range(5)]
    await asyncio.sleep(0)
    await journal.close()
    await asyncio.gather(*pending)
    with pytest.raises(JournalError, match="closed"):
        await journal.accept([NewJob("late", 9.0, submission())])
    journal = await Journal.open(path)
    assert len(await journal.load()) == 5
    await journal.close()


async def test_a_write_completes_although_its_caller_is_cancelled(journal: Journal) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(10)

    blocker = asyncio.ensure_future(journal._call(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    write = asyncio.ensure_future(journal.accept([NewJob("x", 1.0, submission())]))
    await asyncio.sleep(0)  # its operation is queued
    write.cancel()
    # Queued behind it, in the same group: a read sees every write queued before it.
    read = asyncio.ensure_future(journal.load())
    await asyncio.sleep(0)
    release.set()
    await blocker
    assert [r.id for r in await read] == ["x"]


# -- webhook deliveries (the DeliveryStore protocol) -----------------------------------


async def test_the_journal_is_a_delivery_store(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await Journal.open(path)
    store: DeliveryStore = journal  # the protocol, as the webhook dispatcher sees it
    first = await store.add_delivery("job1", "http://127.0.0.1:1/a", b'{"n": 1}')
    second = await store.add_delivery("job2", "http://127.0.0.1:1/b", b'{"n": 2}')
    third = await store.add_delivery("job3", "http://127.0.0.1:1/c", b'{"n": 3}')
    assert first < second < third
    await store.record_attempt(second, 1, "HTTP 500")
    await store.record_attempt(second, 2, "timeout")
    await store.finish_delivery(first, delivered=True, attempts=1, error=None)
    await store.finish_delivery(third, delivered=False, attempts=5, error="HTTP 404")
    await journal.close()

    journal = await Journal.open(path)  # a restart does not drop a delivery
    assert await journal.pending_deliveries() == [
        Delivery(id=second, job_id="job2", url="http://127.0.0.1:1/b", body=b'{"n": 2}',
                 attempts=2)]
    # A finished delivery is never attempted again, not even by a late attempt record.
    await journal.record_attempt(third, 6, "late")
    assert [d.id for d in await journal.pending_deliveries()] == [second]
    await journal.finish_delivery(second, delivered=True, attempts=3, error=None)
    assert await journal.pending_deliveries() == []

    def states(conn: sqlite3.Connection) -> list[tuple[int, str, int, str | None]]:
        return conn.execute("SELECT id, state, attempts, last_error FROM deliveries "
                            "ORDER BY id").fetchall()

    assert await journal._call(states) == [(first, "delivered", 1, None),
                                           (second, "delivered", 3, None),
                                           (third, "failed", 5, "HTTP 404")]
    await journal.forget_deliveries(finished_before=float("inf"))
    assert await journal._call(states) == []
    await journal.close()


async def test_pending_deliveries_oldest_first(journal: Journal) -> None:
    ids = [await journal.add_delivery(f"job{i}", "http://127.0.0.1:1/", b"{}")
           for i in range(5)]
    await journal.finish_delivery(ids[2], delivered=True, attempts=1, error=None)
    await journal.forget_deliveries(finished_before=0.0)  # too recent: kept
    assert [d.id for d in await journal.pending_deliveries()] == [ids[0], ids[1], ids[3], ids[4]]
