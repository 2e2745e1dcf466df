"""The store file holds token digests and sealed grants: only the orchestrator's user reads it,
whatever the directory's mode or the process's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.jobs.persistence import record_to_json
from orchestrator.store.sqlite_store import SqliteJobStore
from tests.helpers import job_record


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_database_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "orchestrator.db"
    old_umask = os.umask(0o022)
    try:
        store = SqliteJobStore(path)
        store.save_job(record_to_json(job_record()), b"d" * 32)
        await store.flush()
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)  # WAL mode, with a writer connection open
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        await store.close()
    finally:
        os.umask(old_umask)


async def test_a_database_left_world_readable_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    for name in (path, Path(f"{path}-wal")):
        name.touch()
        name.chmod(0o644)
    store = SqliteJobStore(path)
    await store.flush()
    assert _mode(path) == 0o600
    assert _mode(Path(f"{path}-wal")) == 0o600
    await store.close()
