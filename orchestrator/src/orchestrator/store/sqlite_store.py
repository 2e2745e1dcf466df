"""SQLite job store: one file in the base dir, WAL, one writer thread, one reader.

The event loop never waits on SQLite for ordinary updates: they are queued and the writer
applies them in batches, one transaction each. Creation and the end of a job are flushed
before anyone is told about them, so a crash loses at most the last few status lines.

Reads of ended jobs run on the event loop, on their own connection: in WAL mode a reader never
waits for the writer, and a point read by primary key or a page of a hundred rows by the
creation-order index costs less than handing it to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from orchestrator.domain.jobs import HISTORY_MAX_BYTES, JobState, JobUpdate, UpdateKind
from orchestrator.logging import get_logger
from orchestrator.store.base import JobStore, StoredJob
from orchestrator.store.codec import payload_to_json, update_from_row

log = get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    token_digest BLOB,
    sealed_grants BLOB,
    hidden INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_order ON jobs (ord);
CREATE TABLE IF NOT EXISTS updates (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
# Columns added after the first release, each with its type: a database made before gets them
# at open (ALTER TABLE ... ADD COLUMN keeps every row, the new column at its default).
_ADDED_JOB_COLUMNS = (
    ("llm_key_digest", "BLOB"),
    ("hidden", "INTEGER NOT NULL DEFAULT 0"),
    ("egress_key_digest", "BLOB"),
)
# Kinds that are never pruned: the job's transitions and its result are its history.
_KEPT_KINDS = (UpdateKind.STATE.value, UpdateKind.RESULT.value)
_PRUNE_EVERY = 500
_TERMINAL_STATES = tuple(state.value for state in JobState if state.is_terminal)
_PAGE_ROWS = 64
# Jobs a restart picks up: not ended, or ended with their container not yet removed.
# Placeholders only (the values are bound), so the f-string is no injection.
_UNFINISHED = (
    "SELECT job_id, data, token_digest, sealed_grants, llm_key_digest, egress_key_digest "  # noqa: S608
    "FROM jobs "
    "WHERE state NOT IN "
    f"({', '.join('?' for _ in _TERMINAL_STATES)}) "
    "OR json_extract(data, '$.container_id') IS NOT NULL ORDER BY ord"
)
# A job's stored history is pruned each time it has grown by this share of its byte bound, down
# to the bound less that share: so what is stored never exceeds the bound.
_PRUNE_BYTES_DIVISOR = 8
# What a row costs beyond its payload, in the bytes the bound counts (key, time, kind, b-tree).
ROW_OVERHEAD = 64

# Both statements rank a job's rows newest first, by count and by bytes (payload plus the row
# overhead), and keep what is within both bounds; kept kinds count, and are never dropped.
# ?1 job id, ?2 rows, ?3 bytes, ?4 and ?5 the kept kinds, ?6 the row overhead.
_LOAD = """
SELECT seq, time, kind, payload FROM (
    SELECT seq, time, kind, payload,
           ROW_NUMBER() OVER newest AS newer_rows,
           SUM(LENGTH(payload) + ?6) OVER newest AS newer_bytes
    FROM updates WHERE job_id = ?1
    WINDOW newest AS (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
) WHERE (newer_rows <= ?2 AND newer_bytes <= ?3) OR kind IN (?4, ?5) ORDER BY seq
"""
_INSERT = "INSERT OR REPLACE INTO updates (job_id, seq, time, kind, payload) VALUES (?, ?, ?, ?, ?)"
_PRUNE = """
DELETE FROM updates WHERE job_id = ?1 AND kind NOT IN (?4, ?5) AND seq IN (
    SELECT seq FROM (
        SELECT seq,
               ROW_NUMBER() OVER newest AS newer_rows,
               SUM(LENGTH(payload) + ?6) OVER newest AS newer_bytes
        FROM updates WHERE job_id = ?1
        WINDOW newest AS (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
    ) WHERE newer_rows > ?2 OR newer_bytes > ?3
)
"""


def _make_private(path: Path) -> None:
    # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's
    # mode, and the store holds token digests and sealed grants. Files an older version left
    # 0644 are tightened too.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


class SqliteJobStore(JobStore):
    """A JobStore in one SQLite file."""

    def __init__(
        self,
        path: Path,
        history_limit: int = 2000,
        history_max_bytes: int = HISTORY_MAX_BYTES,
        *,
        temporary: bool = False,
    ) -> None:
        self._path = path
        self._temporary = temporary
        self._history_limit = history_limit
        self._history_max_bytes = history_max_bytes
        self._prune_slack = history_max_bytes // _PRUNE_BYTES_DIVISOR
        self._prune_to = history_max_bytes - self._prune_slack
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
        self._queue: queue.SimpleQueue[Callable[[sqlite3.Connection], None] | Future[None] | None]
        self._queue = queue.SimpleQueue()
        conn = self._connect()
        conn.executescript(SCHEMA)
        _add_missing_columns(conn)
        conn.commit()
        conn.close()
        # job id → [updates, payload bytes] appended since its history was last pruned
        self._appended: dict[str, list[int]] = {}
        self._reader: sqlite3.Connection | None = None
        self._writer = threading.Thread(target=self._run, name="job-store", daemon=True)
        self._writer.start()

    @classmethod
    def temporary(
        cls, history_limit: int = 2000, history_max_bytes: int = HISTORY_MAX_BYTES
    ) -> SqliteJobStore:
        """A store that lasts as long as the process (``ORCHESTRATOR_PERSIST=0``): ended jobs
        still go to disk rather than to memory, and nothing is left behind at close."""
        directory = Path(tempfile.mkdtemp(prefix="ironclaw-jobs-"))
        return cls(directory / "orchestrator.db", history_limit, history_max_bytes, temporary=True)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a process crash; only a power
        # loss can take the last ones back.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _run(self) -> None:
        conn = self._connect()
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done: list[Future[None]] = []
            stop = False
            try:
                conn.execute("BEGIN")
                for op in batch:
                    if op is None:
                        stop = True
                    elif isinstance(op, Future):
                        done.append(op)
                    else:
                        op(conn)
                conn.execute("COMMIT")
            except Exception as exc:
                log.error("job store write failed", error=str(exc))
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for future in done:
                if not future.done():
                    future.set_result(None)
            if stop:
                conn.close()
                return

    def save_job(
        self,
        data: dict[str, Any],
        token_digest: bytes | None = None,
        sealed_grants: bytes | None = None,
        llm_key_digest: bytes | None = None,
        egress_key_digest: bytes | None = None,
    ) -> None:
        text = json.dumps(data)
        job_id, order, state = data["job_id"], data["order"], data["state"]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (job_id, ord, state, data, token_digest, sealed_grants,"
                " llm_key_digest, egress_key_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET"
                " state=excluded.state, data=excluded.data,"
                " token_digest=COALESCE(excluded.token_digest, token_digest),"
                " sealed_grants=COALESCE(excluded.sealed_grants, sealed_grants),"
                " llm_key_digest=COALESCE(excluded.llm_key_digest, llm_key_digest),"
                " egress_key_digest=COALESCE(excluded.egress_key_digest, egress_key_digest)",
                (
                    job_id,
                    order,
                    state,
                    text,
                    token_digest,
                    sealed_grants,
                    llm_key_digest,
                    egress_key_digest,
                ),
            )

        self._queue.put(write)

    def append_update(self, job_id: str, update: JobUpdate) -> None:
        # ASCII JSON: what LENGTH() counts in SQL is then its bytes.
        payload = json.dumps(payload_to_json(update.kind, update.payload), default=str)
        row = (job_id, update.sequence, update.time.isoformat(), update.kind.value, payload)
        appended = self._appended.get(job_id)
        if appended is None:
            appended = self._appended[job_id] = [0, 0]
        appended[0] += 1
        appended[1] += len(payload) + ROW_OVERHEAD
        if appended[0] < _PRUNE_EVERY and appended[1] < self._prune_slack:

            def write(conn: sqlite3.Connection) -> None:
                conn.execute(_INSERT, row)

            self._queue.put(write)
            return
        appended[0] = appended[1] = 0
        bounds = (job_id, self._history_limit, self._prune_to, *_KEPT_KINDS, ROW_OVERHEAD)

        def write_and_prune(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT, row)
            conn.execute(_PRUNE, bounds)

        self._queue.put(write_and_prune)

    def forget_secrets(self, job_id: str) -> None:
        self._appended.pop(job_id, None)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET token_digest = NULL, sealed_grants = NULL,"
                " llm_key_digest = NULL, egress_key_digest = NULL WHERE job_id = ?",
                (job_id,),
            )

        self._queue.put(write)

    async def flush(self) -> None:
        if not self._writer.is_alive():
            return  # closed: nothing is queued any more, and nothing would answer
        future: Future[None] = Future()
        self._queue.put(future)
        await asyncio.wrap_future(future)

    def hide_job(self, job_id: str) -> None:
        self._appended.pop(job_id, None)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE jobs SET hidden = 1 WHERE job_id = ?", (job_id,))

        self._queue.put(write)

    def is_hidden(self, job_id: str) -> bool:
        row = self._read().execute("SELECT hidden FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def load_unfinished(self, history_limit: int) -> list[StoredJob]:
        conn = self._connect()
        try:
            rows = conn.execute(_UNFINISHED, _TERMINAL_STATES).fetchall()
            return [
                StoredJob(
                    json.loads(data),
                    self._updates(conn, job_id, history_limit),
                    digest,
                    sealed,
                    llm_key_digest,
                    egress_key_digest,
                )
                for job_id, data, digest, sealed, llm_key_digest, egress_key_digest in rows
            ]
        finally:
            conn.close()

    def _updates(
        self, conn: sqlite3.Connection, job_id: str, history_limit: int
    ) -> list[JobUpdate]:
        bounds = (history_limit, self._history_max_bytes, *_KEPT_KINDS, ROW_OVERHEAD)
        rows = conn.execute(_LOAD, (job_id, *bounds)).fetchall()
        return [
            update_from_row(seq, time, kind, json.loads(payload))
            for seq, time, kind, payload in rows
        ]

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = self._connect()
        return self._reader

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        row = (
            self._read()
            .execute("SELECT data FROM jobs WHERE job_id = ? AND hidden = 0", (job_id,))
            .fetchone()
        )
        return json.loads(row[0]) if row is not None else None

    def iter_jobs(self, after_order: int, states: Collection[str]) -> Iterator[dict[str, Any]]:
        query = "SELECT data FROM jobs WHERE ord > ? AND hidden = 0"
        params: list[Any] = [after_order]
        if states:
            query += f" AND state IN ({_placeholders(states)})"
            params.extend(states)
        cursor = self._read().execute(query + " ORDER BY ord", params)
        try:
            while rows := cursor.fetchmany(_PAGE_ROWS):
                for (data,) in rows:
                    yield json.loads(data)
        finally:
            cursor.close()

    def read_updates(self, job_id: str, after_sequence: int) -> list[JobUpdate]:
        rows = self._read().execute(
            "SELECT seq, time, kind, payload FROM updates WHERE job_id = ? AND seq > ? "
            "ORDER BY seq",
            (job_id, after_sequence),
        )
        return [
            update_from_row(seq, time, kind, json.loads(payload))
            for seq, time, kind, payload in rows
        ]

    def count_jobs(self) -> dict[tuple[str, str], int]:
        rows = self._read().execute(
            "SELECT state, json_extract(data, '$.mode'), COUNT(*) FROM jobs WHERE hidden = 0 "
            "GROUP BY 1, 2"
        )
        return {(str(state), str(mode)): int(count) for state, mode, count in rows}

    def last_order(self) -> int:
        row = self._read().execute("SELECT COALESCE(MAX(ord), 0) FROM jobs").fetchone()
        return int(row[0])

    async def close(self) -> None:
        if not self._writer.is_alive():
            return
        await self.flush()
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join, 5.0)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._temporary:
            shutil.rmtree(self._path.parent, ignore_errors=True)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Brings a ``jobs`` table made by an earlier release up to date (idempotent)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, sql_type in _ADDED_JOB_COLUMNS:
        if name in present:
            continue
        try:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")
        except sqlite3.OperationalError as exc:
            # Another process opening the same file added it a moment ago.
            if "duplicate column" not in str(exc):
                raise


def _placeholders(values: Collection[Any]) -> str:
    return ", ".join("?" for _ in values)
