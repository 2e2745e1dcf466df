"""A closed-loop HTTP load generator, run in its own process.

``python -m bench.loadgen`` reads its spec as JSON from ``$BENCH_LOAD_SPEC`` (not argv, where
``ps`` would show the job tokens in it) and prints one JSON result line. Two kinds of spec:

* :class:`LoadSpec`: ``concurrency`` keep-alive connections all sending the same request;
* :class:`MixSpec`: one connection per :class:`ConnectionSpec`, each with its own request and a
  label (the route), results per label; ``__N__`` in a path or body becomes the connection's
  request counter (0, 1, ...), so every request can be found again on the server afterwards,
  and the result says, per connection, which counters were answered 200.

Each connection sends its request, waits for the whole response and sends the next at once.
After ``warmup_s`` it measures for ``duration_s``: every response completed inside that window
counts, with its latency (send of the first byte to the last byte received).

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
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import summarize
from bench.wire import FramingError, build_request, take_message

SPEC_VARIABLE = "BENCH_LOAD_SPEC"
COUNTER = "__N__"


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


@dataclass(frozen=True)
class ConnectionSpec:
    """One connection of a :class:`MixSpec`: its label and the request it repeats."""

    label: str
    path: str
    body: str = ""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MixSpec:
    """Several connections, each with its own request; results per label."""

    host: str
    port: int
    connections: list[ConnectionSpec]
    warmup_s: float = 1.0
    duration_s: float = 10.0

    def to_json(self) -> str:
        return json.dumps({"mix": asdict(self)})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MixSpec:
        connections = [ConnectionSpec(**c) for c in raw.pop("connections")]
        return cls(connections=connections, **raw)


class _Source:
    """What one connection sends, and what became of each request it sent."""

    def __init__(self, label: str, request: bytes | None, template: ConnectionSpec | None) -> None:
        self.label = label
        self._request = request
        self._template = template
        self.sent = 0
        self.ok = 0
        self.failed: list[int] = []  # counters answered with anything but 200
        # Counters never answered: lost with their connection, or still open at the end. The
        # server may or may not have acted on them.
        self.unanswered: list[int] = []
        self._pending: int | None = None

    @classmethod
    def fixed(cls, label: str, request: bytes) -> _Source:
        return cls(label, request, None)

    @classmethod
    def counted(cls, spec: ConnectionSpec) -> _Source:
        return cls(spec.label, None, spec)

    def next_request(self, host: str, port: int) -> bytes:
        n = self.sent
        self.sent += 1
        if self._pending is not None:
            self.unanswered.append(self._pending)
        self._pending = n
        if self._request is not None:
            return self._request
        spec = self._template
        assert spec is not None
        counter = str(n)
        return build_request(
            spec.method,
            host,
            port,
            spec.path.replace(COUNTER, counter),
            spec.headers,
            spec.body.replace(COUNTER, counter).encode(),
        )

    def answered(self, status: int) -> None:
        if status == 200:
            self.ok += 1
        elif self._pending is not None:
            self.failed.append(self._pending)
        self._pending = None

    def outcome(self) -> dict[str, Any]:
        """How many were sent and answered 200, and the counters of the others."""
        unanswered = self.unanswered + ([] if self._pending is None else [self._pending])
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed, "unanswered": unanswered}


class _Run:
    """Shared state of one run: the window, the recorded latencies and the failures."""

    def __init__(self, host: str, port: int, warmup_s: float, duration_s: float) -> None:
        self.host = host
        self.port = port
        self.warmup_s = warmup_s
        self.duration_s = duration_s
        self.running = True
        self.window_start = 0
        self.window_end = 0
        self.latencies_ns: dict[str, array[int]] = {}
        self.statuses: dict[str, dict[int, int]] = {}
        self.completed_total = 0
        self.connection_errors = 0
        self.first_error = ""

    def record(self, label: str, status: int, sent_ns: int, done_ns: int) -> None:
        self.completed_total += 1
        start, end = self.window_start, self.window_end
        if start and start <= done_ns and (not end or done_ns < end):
            self.latencies_ns.setdefault(label, array("q")).append(done_ns - sent_ns)
            statuses = self.statuses.setdefault(label, {})
            statuses[status] = statuses.get(status, 0) + 1

    def window_s(self) -> float:
        return (self.window_end - self.window_start) / 1e9


class _Connection(asyncio.Protocol):
    """One closed-loop connection: the next request leaves as soon as a response is complete."""

    def __init__(self, run: _Run, source: _Source, closed: asyncio.Future[None]) -> None:
        self._run = run
        self._source = source
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
        request = self._source.next_request(self._run.host, self._run.port)
        self._sent_ns = time.perf_counter_ns()
        self._transport.write(request)

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
        self._source.answered(status)
        run.record(self._source.label, status, self._sent_ns, time.perf_counter_ns())
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


async def _keep_connected(run: _Run, source: _Source) -> None:
    """One closed-loop client: reconnects if the server closes the connection mid-run."""
    loop = asyncio.get_running_loop()
    while run.running:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.create_connection(
                functools.partial(_Connection, run, source, closed), run.host, run.port
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


async def _drive(run: _Run, sources: list[_Source]) -> None:
    clients = [asyncio.create_task(_keep_connected(run, source)) for source in sources]
    await asyncio.sleep(run.warmup_s)
    run.window_start = time.perf_counter_ns()
    await asyncio.sleep(run.duration_s)
    run.window_end = time.perf_counter_ns()
    run.running = False
    # Responses still in flight finish (or are abandoned after a grace period).
    _, pending = await asyncio.wait(clients, timeout=5.0)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


def _label_result(run: _Run, label: str) -> dict[str, Any]:
    window_s = run.window_s()
    latencies = run.latencies_ns.get(label, array("q"))
    statuses = run.statuses.get(label, {})
    ok = statuses.get(200, 0)
    return {
        "window_s": round(window_s, 3),
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rps": ok / window_s if window_s > 0 else 0.0,
        "latency_ms": summarize([ns / 1e6 for ns in latencies]),
    }


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Runs the load and returns its result (requests/s, latency percentiles in ms)."""
    run = _Run(spec.host, spec.port, spec.warmup_s, spec.duration_s)
    request = build_request(
        spec.method, spec.host, spec.port, spec.path, spec.headers, spec.body.encode()
    )
    await _drive(run, [_Source.fixed("", request) for _ in range(spec.concurrency)])
    result = _label_result(run, "")
    return {
        "concurrency": spec.concurrency,
        **result,
        "requests_incl_warmup": run.completed_total,
        "errors": result["errors"] + run.connection_errors,
        "first_error": run.first_error,
    }


async def run_mix(spec: MixSpec) -> dict[str, Any]:
    """Runs a mixed load: results per label, and per connection what was answered."""
    run = _Run(spec.host, spec.port, spec.warmup_s, spec.duration_s)
    sources = [_Source.counted(connection) for connection in spec.connections]
    await _drive(run, sources)
    labels = list(dict.fromkeys(source.label for source in sources))
    return {
        "connections": len(sources),
        "window_s": round(run.window_s(), 3),
        "requests_incl_warmup": run.completed_total,
        "connection_errors": run.connection_errors,
        "first_error": run.first_error,
        "labels": {label: _label_result(run, label) for label in labels},
        "per_connection": [source.outcome() for source in sources],
    }


def main() -> None:
    raw = json.loads(os.environ[SPEC_VARIABLE])
    if "mix" in raw:
        result = asyncio.run(run_mix(MixSpec.from_dict(raw["mix"])))
    else:
        result = asyncio.run(run_load(LoadSpec(**raw)))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
