"""The journal: every accepted job, its state changes and its result, and every webhook
delivery, in one SQLite file, so a crash or `kill -9` of the daemon loses nothing.

All SQLite work happens in one thread of its own; the event loop only hands it
operations and awaits their futures. The thread commits in groups: the operations
queued while one transaction commits go into the next one together, so under load
one fsync covers many jobs and the journal does not cut throughput.

Durability: WAL. What is promised to a client (an accepted job: the 202; a result; a
webhook to deliver) is committed with `synchronous = FULL`, so it survives a power loss
too. A job's start (its attempt count) and other bookkeeping are committed with
`synchronous = NORMAL`: durable when the daemon dies, which is what they guard against,
and without an fsync on the path from one job to the next (a FULL commit in the same
group, or later, carries them to the disk too). An exclusive flock(2) on `<journal>.lock` makes a
second daemon on the same file fail at start instead of running the same jobs twice,
while `sqlite3` can still read the journal of a running daemon.

The schema is versioned with `PRAGMA user_version`: a later release migrates from
the version it finds, and a file newer than this release is refused at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sandboxd.callbacks import Delivery
from sandboxd.codec import DecodeError, from_plain, to_plain
from sandboxd.model import Result, Submission

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 3

# Jobs in acceptance order (`seq`). A job's row goes queued -> running -> finished (and
# back to queued when a shutdown cut it short); `attempts` counts its starts, so a job
# that kills the daemon is not started forever. A finished row drops its submission
# and keeps the result until the service forgets it (TTL or bounds).
_SCHEMA_V1 = """
CREATE TABLE jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    accepted_at  REAL NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    submission   BLOB,
    result       BLOB,
    finished_at  REAL
);
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         BLOB NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    last_error   TEXT,
    created_at   REAL NOT NULL,
    finished_at  REAL
);
CREATE INDEX deliveries_pending ON deliveries (state, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

# Version 2: a delivery's HTTP method (POST for the native API's callbacks, PUT for the
# Judge0 API's, as Judge0 sends them). A version 1 file's deliveries were all POSTs.
_MIGRATE_V1_TO_V2 = """
ALTER TABLE deliveries ADD COLUMN method TEXT NOT NULL DEFAULT 'POST'
    CHECK (method IN ('POST', 'PUT'))
"""

# Version 3: a stored submission's `stdin` and `expected_output` (its tests' too) are
# bytes, base64 (any bytes, not only UTF-8 text: see SUBMISSION_FORMAT), where version
# 2 kept them as JSON strings. The migration rewrites the queued jobs' submissions; the
# version tells an older release, which would read base64 as the text, to keep off.

ID_KEY_NAME = "id_key"


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message says why."""


@dataclass(frozen=True)
class NewJob:
    """A job to record as accepted: queued with its submission, or (a result-cache
    hit) finished at once with its result."""

    id: str
    accepted_at: float
    submission: Submission
    result: bytes | None = None  # encode_result(); set: the job is finished on arrival
    finished_at: float | None = None


@dataclass(frozen=True)
class FinishedJob:
    id: str
    result: bytes  # encode_result()
    finished_at: float


@dataclass(frozen=True)
class JobRecord:
    """A job as the journal holds it (read at start-up)."""

    seq: int
    id: str
    accepted_at: float
    state: str  # queued | running | finished
    attempts: int
    submission: Submission | None  # None once finished, or when unreadable
    result: Result | None  # set once finished (None when unreadable)
    result_bytes: int
    finished_at: float | None
    # Why the stored submission or result could not be read back (a newer release's
    # journal, or damage): the service ends such a job as Internal Error.
    unreadable: str | None = None


def encode_result(result: Result) -> bytes:
    return orjson.dumps(to_plain(result))


def decode_result(data: bytes) -> Result:
    return from_plain(Result, orjson.loads(data))


# A stored submission says how it holds its program's input: format 2 (this release),
# `stdin` and `expected_output` as base64 bytes; none (older releases), as JSON strings.
# The Redis backend's streams keep submissions of both kinds until they are worked off.
FORMAT_KEY = "format"
SUBMISSION_FORMAT = 2
_INPUT_FIELDS = ("stdin", "expected_output")


def encode_submission(submission: Submission) -> bytes:
    return orjson.dumps({FORMAT_KEY: SUBMISSION_FORMAT, **to_plain(submission)})


def decode_submission(data: bytes) -> Submission:
    plain = orjson.loads(data)
    if not isinstance(plain, dict):
        raise DecodeError("Submission: expected an object")
    stored_format = plain.pop(FORMAT_KEY, None)
    if stored_format is None:
        plain = _text_inputs_as_base64(plain)
    elif stored_format != SUBMISSION_FORMAT:
        raise DecodeError(f"Submission: format {stored_format!r}, not this release's "
                          f"{SUBMISSION_FORMAT}: written by a newer sandboxd")
    return from_plain(Submission, plain)


def _text_inputs_as_base64(plain: dict[str, Any]) -> dict[str, Any]:
    """A submission stored before format 2 (its inputs JSON strings) in today's shape."""
    def upgraded(fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        for name in _INPUT_FIELDS:
            if isinstance(fields.get(name), str):
                fields[name] = to_plain(fields[name].encode())
        return fields

    plain = upgraded(plain)
    if isinstance(plain.get("tests"), list):
        plain["tests"] = [upgraded(case) if isinstance(case, dict) else case
                          for case in plain["tests"]]
    return plain


def _migrate_v2_to_v3(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT seq, submission FROM jobs WHERE submission IS NOT NULL")
    for seq, data in rows.fetchall():
        try:
            upgraded = encode_submission(decode_submission(data))
        except (DecodeError, orjson.JSONDecodeError):
            continue  # damaged: left as it is, and load() reports it as before
        conn.execute("UPDATE jobs SET submission = ? WHERE seq = ?", (upgraded, seq))


class _Op:
    """One unit of work for the journal thread, and the future awaiting it."""

    __slots__ = ("fn", "future", "loop", "power_safe")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any],
                 loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
                 power_safe: bool) -> None:
        self.fn = fn
        self.power_safe = power_safe
        self.loop = loop
        self.future = future

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        def deliver() -> None:
            if self.future.done():
                return  # the awaiting side gave up (cancelled); the work is done anyway
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(deliver)


_CLOSE = object()


class Journal:
    """Open with `await Journal.open(path)`; close with `await journal.close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Transactions committed: with group commits, fewer than the operations.
        self.commits = 0
        # Why the last commit failed, None once one succeeds (health reports it).
        self.problem: str | None = None
        self.id_key = b""
        self._lock_fd: int | None = None
        self._synchronous = ""

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Create the directory and the file where missing, check the schema, start
        the thread. JournalError says why the journal is unusable."""
        journal = cls(Path(path))
        journal._thread = threading.Thread(target=journal._serve, name="sandboxd-journal",
                                           daemon=True)
        journal._thread.start()
        try:
            journal.id_key = await journal._call(journal._setup, setup=True)
        except BaseException:
            await journal.close()
            raise
        return journal

    async def close(self) -> None:
        """Commit what is queued, then close the file and end the thread."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._ops.put(_CLOSE)
        await asyncio.to_thread(self._thread.join)

    def _setup(self, _: sqlite3.Connection | None) -> bytes:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"cannot create the directory {self.path.parent}: "
                               f"{e.strerror}") from None
        self._lock()
        try:
            # isolation_level None: transactions are ours (BEGIN IMMEDIATE ... COMMIT).
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=0.5)
            self._conn = conn
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{self.path}: cannot use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._synchronous = "FULL"
            conn.execute("BEGIN IMMEDIATE")
            try:
                key = self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return key
        except sqlite3.OperationalError as e:
            raise JournalError(f"cannot open {self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path} is not a usable SQLite journal: {e}") from None

    def _lock(self) -> None:
        """Held until the journal closes (or the process dies: the kernel drops it)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise JournalError(f"cannot open {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(f"{self.path} is in use by another process (pid {holder}; "
                               "another sandboxd on the same journal?)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _migrate(self, conn: sqlite3.Connection) -> bytes:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path} has schema version {version}, newer than this "
                               f"release's {SCHEMA_VERSION}: use a newer sandboxd")
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise JournalError(f"{self.path} is an SQLite file but not a sandboxd journal")
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                         (ID_KEY_NAME, secrets.token_bytes(32)))
            version = 1
        # Each step takes the file one version further, in order, within the start-up
        # transaction: a migration cut short leaves the file as it was.
        if version == 1:
            conn.execute(_MIGRATE_V1_TO_V2)
            version = 2
        if version == 2:
            _migrate_v2_to_v3(conn)
            version = 3
        conn.execute(f"PRAGMA user_version = {version}")
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (ID_KEY_NAME,)).fetchone()
        if row is None:
            raise JournalError(f"{self.path}: the journal has no id key (damaged?)")
        return bytes(row[0])

    # -- the thread --------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, setup: bool = False,
                    power_safe: bool = True) -> T:
        """Run `fn` in the journal's thread, in the next group commit. `power_safe`
        False: the commit needs to survive the daemon's death, not a power loss; such a
        write is committed ahead of the power-safe operations queued with it, so it may
        depend on none of them (its caller awaits what it depends on). Reads stay
        power-safe: they see every write queued before them."""
        if self._closed and not setup:
            raise JournalError("the journal is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put(_Op(fn, loop, future, power_safe))
        # The write happens whether or not this caller is cancelled meanwhile.
        return await future

    def _serve(self) -> None:
        first = self._ops.get()
        if first is _CLOSE:
            return
        try:
            first.settle(first.fn(None))
        except BaseException as e:
            first.settle(error=e)
            self._release()
            self._drain_closed()
            return
        closing = False
        while not closing:
            batch = [self._ops.get()]
            while True:
                try:
                    batch.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            if _CLOSE in batch:
                closing = True
                batch = [op for op in batch if op is not _CLOSE]
            # Bookkeeping first, in a commit without an fsync: a job's start never waits
            # for the fsync of other jobs' results. (Nothing in one group depends on
            # another write of it: every caller awaits the commit a later write needs.)
            fast = [op for op in batch if not op.power_safe]
            if fast:
                self._commit(fast)
            safe = [op for op in batch if op.power_safe]
            if safe:
                self._commit(safe)
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def _drain_closed(self) -> None:
        """After a failed open: fail whatever else was queued, until close()."""
        while True:
            op = self._ops.get()
            if op is _CLOSE:
                return
            op.settle(error=JournalError("the journal is not open"))

    def _commit(self, batch: list[_Op]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            synchronous = "FULL" if batch[0].power_safe else "NORMAL"
            if synchronous != self._synchronous:
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                self._synchronous = synchronous
            conn.execute("BEGIN IMMEDIATE")
            values = []
            for op in batch:
                values.append(op.fn(conn))
            conn.execute("COMMIT")
        except Exception as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                # One bad operation must not fail the others: each on its own.
                for op in batch:
                    self._commit([op])
                return
            error = e if isinstance(e, JournalError) else JournalError(f"{type(e).__name__}: {e}")
            # The file cannot be written (full, read-only, I/O error, damaged), as opposed
            # to a write the schema refuses (IntegrityError): the former is a health
            # problem until a commit succeeds again.
            if isinstance(e, sqlite3.OperationalError) or type(e) is sqlite3.DatabaseError:
                self.problem = f"{self.path}: {e}"
                log.error("journal write failed: %s", self.problem)
            batch[0].settle(error=error)
            return
        self.commits += 1
        self.problem = None
        for op, value in zip(batch, values, strict=True):
            op.settle(value)

    # -- jobs ------------------------------------------------------------------------------

    async def accept(self, jobs: Sequence[NewJob]) -> None:
        """Record newly accepted jobs, all in one transaction."""
        rows = [(job.id, job.accepted_at, "finished" if job.result is not None else "queued",
                 None if job.result is not None else encode_submission(job.submission),
                 job.result, job.finished_at if job.result is not None else None)
                for job in jobs]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO jobs (id, accepted_at, state, submission, result, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)

        await self._call(write)

    async def mark_running(self, job_id: str, attempts: int) -> None:
        """A worker starts the job: its `attempts`-th start (written before it runs)."""
        await self._set_state(job_id, "running", attempts)

    async def mark_queued(self, job_id: str, attempts: int) -> None:
        """The job waits again (a shutdown cut it short): not a crash, so `attempts`
        is the count before that start."""
        await self._set_state(job_id, "queued", attempts)

    async def _set_state(self, job_id: str, state: str, attempts: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE jobs SET state = ?, attempts = ? WHERE id = ? "
                         "AND state != 'finished'", (state, attempts, job_id))

        await self._call(write, power_safe=False)

    async def finish(self, jobs: Sequence[FinishedJob]) -> None:
        """Jobs reached their final results; their submissions are dropped."""
        rows = [(job.result, job.finished_at, job.id) for job in jobs]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE jobs SET state = 'finished', submission = NULL, "
                             "result = ?, finished_at = ? WHERE id = ?", rows)

        await self._call(write)

    async def forget(self, job_ids: Sequence[str]) -> None:
        """Delete jobs whose results were evicted or expired."""
        rows = [(job_id,) for job_id in job_ids]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM jobs WHERE id = ?", rows)

        await self._call(write, power_safe=False)

    async def load(self) -> list[JobRecord]:
        """Every job the journal holds, in acceptance order."""

        def read(conn: sqlite3.Connection) -> list[JobRecord]:
            cursor = conn.execute(
                "SELECT seq, id, accepted_at, state, attempts, submission, result, finished_at "
                "FROM jobs ORDER BY seq")
            return [_record(*row) for row in cursor]

        return await self._call(read)

    async def probe(self) -> None:
        """A small write, to find out whether the journal is writable again."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)",
                         (str(time.time()).encode(),))

        await self._call(write)

    # -- webhook deliveries (callbacks.DeliveryStore) -----------------------------------

    async def add_delivery(self, job_id: str, url: str, body: bytes,
                           method: str = "POST") -> int:
        def write(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO deliveries (job_id, url, body, method, state, created_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)", (job_id, url, body, method, time.time()))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self._call(write)

    async def record_attempt(self, delivery_id: int, attempts: int, error: str | None) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE deliveries SET attempts = ?, last_error = ? "
                         "WHERE id = ? AND state = 'pending'", (attempts, error, delivery_id))

        await self._call(write, power_safe=False)  # lost: one more attempt, no harm

    async def finish_delivery(self, delivery_id: int, *, delivered: bool, attempts: int,
                              error: str | None) -> None:
        state = "delivered" if delivered else "failed"

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE deliveries SET state = ?, attempts = ?, last_error = ?, "
                         "finished_at = ? WHERE id = ?",
                         (state, attempts, error, time.time(), delivery_id))

        await self._call(write)

    async def pending_deliveries(self) -> list[Delivery]:
        def read(conn: sqlite3.Connection) -> list[Delivery]:
            cursor = conn.execute("SELECT id, job_id, url, body, attempts, method "
                                  "FROM deliveries WHERE state = 'pending' ORDER BY id")
            return [Delivery(id=row[0], job_id=row[1], url=row[2], body=bytes(row[3]),
                             attempts=row[4], method=row[5]) for row in cursor]

        return await self._call(read)

    async def forget_deliveries(self, finished_before: float) -> None:
        """Delete deliveries that were delivered or given up on before that time."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries WHERE state != 'pending' AND finished_at < ?",
                         (finished_before,))

        await self._call(write, power_safe=False)


def _record(seq: int, job_id: str, accepted_at: float, state: str, attempts: int,
            submission: bytes | None, result: bytes | None,
            finished_at: float | None) -> JobRecord:
    decoded_submission = decoded_result = None
    unreadable = None
    try:
        if submission is not None:
            decoded_submission = decode_submission(submission)
        if result is not None:
            decoded_result = decode_result(result)
    except (DecodeError, orjson.JSONDecodeError) as e:
        unreadable = str(e)
    return JobRecord(seq=seq, id=job_id, accepted_at=accepted_at, state=state,
                     attempts=attempts, submission=decoded_submission, result=decoded_result,
                     result_bytes=len(result) if result is not None else 0,
                     finished_at=finished_at, unreadable=unreadable)
