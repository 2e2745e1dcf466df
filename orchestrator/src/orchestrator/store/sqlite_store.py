"""SQLite job store: one file in the base dir, WAL, one writer thread.

The event loop never waits on SQLite for ordinary updates: they are queued and the writer
applies them in batches, one transaction each. Creation and the end of a job are flushed
before anyone is told about them, so a crash loses at most the last few status lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from orchestrator.jobs.models import JobUpdate, UpdateKind
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
    sealed_grants BLOB
);
CREATE TABLE IF NOT EXISTS updates (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
# Kinds that are never pruned: the job's transitions and its result are its history.
_KEPT_KINDS = (UpdateKind.STATE.value, UpdateKind.RESULT.value)
_PRUNE_EVERY = 500


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

    def __init__(self, path: Path, history_limit: int = 2000) -> None:
        self._path = path
        self._history_limit = history_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
        self._queue: queue.SimpleQueue[Callable[[sqlite3.Connection], None] | Future[None] | None]
        self._queue = queue.SimpleQueue()
        conn = self._connect()
        conn.executescript(SCHEMA)
        conn.commit()
        conn.close()
        self._appended: dict[str, int] = {}
        self._writer = threading.Thread(target=self._run, name="job-store", daemon=True)
        self._writer.start()

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
    ) -> None:
        text = json.dumps(data)
        job_id, order, state = data["job_id"], data["order"], data["state"]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (job_id, ord, state, data, token_digest, sealed_grants) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET state=excluded.state,"
                " data=excluded.data, token_digest=COALESCE(excluded.token_digest, token_digest),"
                " sealed_grants=COALESCE(excluded.sealed_grants, sealed_grants)",
                (job_id, order, state, text, token_digest, sealed_grants),
            )

        self._queue.put(write)

    def append_update(self, job_id: str, update: JobUpdate) -> None:
        row = (
            job_id,
            update.sequence,
            update.time.isoformat(),
            update.kind.value,
            json.dumps(payload_to_json(update.kind, update.payload), default=str),
        )
        count = self._appended.get(job_id, 0) + 1
        self._appended[job_id] = count
        prune = count % _PRUNE_EVERY == 0
        limit = self._history_limit

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO updates (job_id, seq, time, kind, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )
            if prune:
                conn.execute(
                    "DELETE FROM updates WHERE job_id = ? AND seq <= ? AND kind NOT IN (?, ?)",
                    (job_id, update.sequence - limit, *_KEPT_KINDS),
                )

        self._queue.put(write)

    def forget_secrets(self, job_id: str) -> None:
        self._appended.pop(job_id, None)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET token_digest = NULL, sealed_grants = NULL WHERE job_id = ?",
                (job_id,),
            )

        self._queue.put(write)

    async def flush(self) -> None:
        future: Future[None] = Future()
        self._queue.put(future)
        await asyncio.wrap_future(future)

    def load(self, history_limit: int) -> list[StoredJob]:
        conn = self._connect()
        try:
            jobs = []
            rows = conn.execute(
                "SELECT job_id, data, token_digest, sealed_grants FROM jobs ORDER BY ord"
            ).fetchall()
            for job_id, data, digest, sealed in rows:
                update_rows = conn.execute(
                    "SELECT seq, time, kind, payload FROM updates WHERE job_id = ? "
                    "AND (seq > (SELECT COALESCE(MAX(seq), 0) FROM updates WHERE job_id = ?) - ?"
                    " OR kind IN (?, ?)) ORDER BY seq",
                    (job_id, job_id, history_limit, *_KEPT_KINDS),
                ).fetchall()
                updates = [
                    update_from_row(seq, time, kind, json.loads(payload))
                    for seq, time, kind, payload in update_rows
                ]
                jobs.append(StoredJob(json.loads(data), updates, digest, sealed))
            return jobs
        finally:
            conn.close()

    async def close(self) -> None:
        await self.flush()
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join, 5.0)
