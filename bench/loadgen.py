"""A closed-loop HTTP load generator, run in its own process.

``python -m bench.loadgen`` reads its :class:`LoadSpec` as JSON from ``$BENCH_LOAD_SPEC`` (not
argv, where ``ps`` would show the job token in it) and opens ``concurrency`` keep-alive
connections; each sends the same request, waits for the whole response and sends the next at
once. After ``warmup_s`` it measures for ``duration_s``: every response completed inside that
window counts, with its latency (send of the first byte to the last byte received). It prints
one JSON result line.

Plain ``asyncio.Protocol`` and pre-built request bytes keep its own cost to a few tens of
microseconds per request, far below what it measures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summarize
from bench.wire import FramingError, build_request, take_message

SPEC_VARIABLE = "BENCH_LOAD_SPEC"


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how many at once and for how long."""

    host: str
    port: int
    path: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    concurrency: int = 1
    warmup_s: float = 1.0
    duration_s: float = 10.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: str) -> LoadSpec:
        return cls(**json.loads(raw))


class _Run:
    """Shared state of one run: the window, the recorded latencies and the failures."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = build_request(
            spec.method, spec.host, spec.port, spec.path, spec.headers, spec.body.encode()
        )
        self.running = True
        self.window_start = 0
        self.window_end = 0
        self.latencies_ns = array("q")
        self.completed_total = 0
        self.statuses: dict[int, int] = {}
        self.connection_errors = 0
        self.first_error = ""

    def record(self, status: int, sent_ns: int, done_ns: int) -> None:
        self.completed_total += 1
        start, end = self.window_start, self.window_end
        if start and start <= done_ns and (not end or done_ns < end):
            self.latencies_ns.append(done_ns - sent_ns)
            self.statuses[status] = self.statuses.get(status, 0) + 1


class _Connection(asyncio.Protocol):
    """One closed-loop connection: the next request leaves as soon as a response is complete."""

    def __init__(self, run: _Run, closed: asyncio.Future[None]) -> None:
        self._run = run
        self._closed = closed
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent_ns = time.perf_counter_ns()
        self._transport.write(self._run.request)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        try:
            response = take_message(self._buffer)
        except (FramingError, ValueError) as exc:
            self._fail(f"unparsable response: {exc}")
            return
        if response is None:
            return
        run = self._run
        status = response.status
        run.record(status, self._sent_ns, time.perf_counter_ns())
        if status != 200 and not run.first_error:
            run.first_error = f"HTTP {status}: {response.body[:300].decode(errors='replace')}"
        if run.running and response.headers.get(b"connection", b"").lower() != b"close":
            self._send()
        else:
            self._transport.close()

    def _fail(self, reason: str) -> None:
        self._run.connection_errors += 1
        self._run.first_error = self._run.first_error or reason
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._run.running and exc is not None:
            self._run.connection_errors += 1
            self._run.first_error = self._run.first_error or f"connection lost: {exc}"
        if not self._closed.done():
            self._closed.set_result(None)


async def _keep_connected(run: _Run) -> None:
    """One closed-loop client: reconnects if the server closes the connection mid-run."""
    loop = asyncio.get_running_loop()
    while run.running:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.create_connection(
                functools.partial(_Connection, run, closed), run.spec.host, run.spec.port
            )
        except OSError as exc:
            run.connection_errors += 1
            run.first_error = run.first_error or f"cannot connect: {exc}"
            await asyncio.sleep(0.05)
            continue
        try:
            await closed
        finally:
            transport.close()


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Runs the load and returns its result (requests/s, latency percentiles in ms)."""
    run = _Run(spec)
    clients = [asyncio.create_task(_keep_connected(run)) for _ in range(spec.concurrency)]
    await asyncio.sleep(spec.warmup_s)
    run.window_start = time.perf_counter_ns()
    await asyncio.sleep(spec.duration_s)
    run.window_end = time.perf_counter_ns()
    run.running = False
    # Responses still in flight finish (or are abandoned after a grace period).
    _, pending = await asyncio.wait(clients, timeout=5.0)
    for task in pending:
        task.cancel()
    window_s = (run.window_end - run.window_start) / 1e9
    completed = len(run.latencies_ns)
    ok = run.statuses.get(200, 0)
    latency = summarize([ns / 1e6 for ns in run.latencies_ns])
    return {
        "concurrency": spec.concurrency,
        "window_s": round(window_s, 3),
        "requests": completed,
        "requests_incl_warmup": run.completed_total,
        "ok": ok,
        "errors": completed - ok + run.connection_errors,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "rps": ok / window_s if window_s > 0 else 0.0,
        "latency_ms": latency,
        "first_error": run.first_error,
    }


def main() -> None:
    spec = LoadSpec.from_json(os.environ[SPEC_VARIABLE])
    result = asyncio.run(run_load(spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
