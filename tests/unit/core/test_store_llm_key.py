"""The LLM key's digest in the SQLite store: kept like the token's, dropped with it, and added
to a database made before it existed without losing a row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from orchestrator.jobs.persistence import record_to_json
from orchestrator.store.sqlite_store import SqliteJobStore
from tests.helpers import job_record

# The jobs table as the first release made it.
OLD_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    token_digest BLOB,
    sealed_grants BLOB
);
"""
TOKEN_DIGEST = b"t" * 32
KEY_DIGEST = b"k" * 32


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]


async def test_a_database_from_before_gets_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    old = job_record(order=1)
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, NULL)",
            (old.job_id, 1, "Running", json.dumps(record_to_json(old)), TOKEN_DIGEST),
        )
    store = SqliteJobStore(path)
    try:
        assert "llm_key_digest" in _columns(path)
        [loaded] = store.load_unfinished(100)
        assert loaded.data["job_id"] == old.job_id
        assert (loaded.token_digest, loaded.llm_key_digest) == (TOKEN_DIGEST, None)

        new = job_record(order=2)
        store.save_job(record_to_json(new), TOKEN_DIGEST, None, llm_key_digest=KEY_DIGEST)
        # A later save without the digests keeps them.
        store.save_job(record_to_json(new))
        await store.flush()
        digests = {job.data["job_id"]: job.llm_key_digest for job in store.load_unfinished(100)}
        assert digests == {old.job_id: None, new.job_id: KEY_DIGEST}

        store.forget_secrets(new.job_id)
        await store.flush()
        gone = next(job for job in store.load_unfinished(100) if job.data["job_id"] == new.job_id)
        assert (gone.token_digest, gone.llm_key_digest) == (None, None)
    finally:
        await store.close()
    # Opening it again changes nothing.
    again = SqliteJobStore(path)
    try:
        assert _columns(path).count("llm_key_digest") == 1
        assert len(again.load_unfinished(100)) == 2
    finally:
        await again.close()
