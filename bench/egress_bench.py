"""The egress gateway's cost (issue 16): what a request pays for going through it.

Three processes, each on its own event loop: the upstreams (``--role upstream``), the real
:class:`~orchestrator.egress.gateway.EgressGateway` (``--role gateway``; the policy allows the
three bench names, ``EGRESS_RESOLVE``-style overrides point them at the upstreams, and a job
identifies itself with ``job_id:token`` as in the service) and this process, the client. Every
figure is a pair measured in the same run: through the gateway, and the same thing direct.

* **http**: ``GET http://http.bench/`` through the forward proxy (one request per connection,
  as the gateway serves them) vs ``GET /`` to the upstream directly, also one per connection:
  connect, request, whole response, close.
* **tunnel**: one ``CONNECT echo.bench:443`` per client connection (the ClientHello checked and
  forwarded first), then a closed loop of 64-byte pings answered by 64-byte pongs inside it vs
  the same ping-pong on a direct connection: the added round-trip time of a plain tunnel
  (target: <= 1 ms added p50).
* **throughput**: one tunnel to ``blast.bench``, which sends N MiB as fast as it can, vs the
  same from the upstream directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.procs import Child, load_average, python_module
from bench.stats import markdown_table, summarize

NAMES = ("http.bench", "echo.bench", "blast.bench")
PING = b"p" * 64
TARGET_ADDED_P50_MS = 1.0


@dataclass(frozen=True)
class EgressOptions:
    duration_s: float = 5.0
    warmup_s: float = 1.0
    concurrencies: tuple[int, ...] = (1, 16)
    blast_mib: int = 256


def client_hello(name: str) -> bytes:
    """A real OpenSSL ClientHello for ``name`` (the gateway checks and forwards it)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# ------------------------------------------------------------ roles (child processes)


async def _skip_hello(reader: asyncio.StreamReader) -> None:
    header = await reader.readexactly(5)
    await reader.readexactly(int.from_bytes(header[3:5], "big"))


async def serve_upstreams(blast_bytes: int) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _skip_hello(reader)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"b" * 65536
        try:
            await _skip_hello(reader)
            for _ in range(blast_bytes // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (http, echo, blast)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("READY " + json.dumps({"ports": ports}), flush=True)
    await asyncio.Event().wait()


class _BenchJobs:
    """One job whose token is compared in constant time, as the token store does."""

    def __init__(self, job_id: str, token: str) -> None:
        self._job_id = job_id
        self._token = token

    async def egress_identity(self, job_id: str, token: str) -> Any:
        from orchestrator.egress.jobs import EgressIdentity

        if job_id == self._job_id and hmac.compare_digest(token, self._token):
            return EgressIdentity(job_id)
        return None


async def serve_gateway(ports: list[int], job_id: str, token: str) -> None:
    from orchestrator.egress.gateway import EgressGateway, GatewayConfig
    from orchestrator.egress.policy import EgressPolicy
    from orchestrator.egress.resolve import Resolver, parse_overrides

    overrides = ",".join(f"{n}=127.0.0.1:{p}" for n, p in zip(NAMES, ports, strict=True))
    config = GatewayConfig(
        EgressPolicy.parse(",".join(NAMES)), resolver=Resolver(parse_overrides(overrides))
    )
    gateway = EgressGateway(config, _BenchJobs(job_id, token))
    port = await gateway.start("127.0.0.1", 0)
    print("READY " + json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


# ------------------------------------------------------------ client


async def _closed_loop(
    one: Any, concurrency: int, duration_s: float, warmup_s: float
) -> list[float]:
    """Runs ``one()`` (returns its latency in seconds, or a list of them) in ``concurrency``
    closed loops; keeps what ended after the warm-up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    samples: list[float] = []

    async def worker() -> None:
        while loop.time() < stop_at:
            got = await one(stop_at)
            if loop.time() >= measure_from:
                samples.extend(got if isinstance(got, list) else [got])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def _http_once(port: int, request: bytes) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    reply = await reader.read(-1)
    writer.close()
    if not reply.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected reply {reply[:120]!r}")
    return time.perf_counter() - started


async def _ping_session(
    port: int, prefix: bytes, hello: bytes, stop_at: float, through: bool
) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if through:
        writer.write(prefix)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"tunnel refused: {head[:120]!r}")
    writer.write(hello)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    # A bounded session, so the loop's samples come from many tunnels, not one.
    while loop.time() < stop_at and len(times) < 2000:
        started = time.perf_counter()
        writer.write(PING)
        await reader.readexactly(len(PING))
        times.append(time.perf_counter() - started)
    writer.close()
    return times


async def _blast(port: int, prefix: bytes, hello: bytes, through: bool) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    if through:
        writer.write(prefix)
        await reader.readuntil(b"\r\n\r\n")
    started = time.perf_counter()
    writer.write(hello)
    total = 0
    while data := await reader.read(1 << 20):
        total += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    return total / elapsed / (1 << 20)


def _ms(samples: list[float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in summarize(samples).items()}


async def _measure(options: EgressOptions, ports: list[int], gateway: int, auth: str) -> Any:
    http_port, echo_port, blast_port = ports
    results: dict[str, Any] = {"http": [], "tunnel": [], "throughput": {}}
    through_http = (
        f"GET http://http.bench/ HTTP/1.1\r\nHost: http.bench\r\nProxy-Authorization: {auth}"
        "\r\n\r\n"
    ).encode()
    direct_http = b"GET / HTTP/1.1\r\nHost: http.bench\r\nConnection: close\r\n\r\n"
    connect = f"CONNECT echo.bench:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
    hello_echo = client_hello("echo.bench")
    for concurrency in options.concurrencies:
        direct = await _closed_loop(
            lambda _s: _http_once(http_port, direct_http),
            concurrency,
            options.duration_s,
            options.warmup_s,
        )
        through = await _closed_loop(
            lambda _s: _http_once(gateway, through_http),
            concurrency,
            options.duration_s,
            options.warmup_s,
        )
        results["http"].append(
            {"concurrency": concurrency, "direct_ms": _ms(direct), "gateway_ms": _ms(through)}
        )
        direct = await _closed_loop(
            lambda stop: _ping_session(echo_port, b"", hello_echo, stop, False),
            concurrency,
            options.duration_s,
            options.warmup_s,
        )
        through = await _closed_loop(
            lambda stop: _ping_session(gateway, connect, hello_echo, stop, True),
            concurrency,
            options.duration_s,
            options.warmup_s,
        )
        results["tunnel"].append(
            {"concurrency": concurrency, "direct_ms": _ms(direct), "gateway_ms": _ms(through)}
        )
    blast_connect = (
        f"CONNECT blast.bench:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
    )
    hello_blast = client_hello("blast.bench")
    results["throughput"] = {
        "mib": options.blast_mib,
        "direct_mib_s": round(await _blast(blast_port, b"", hello_blast, False), 1),
        "gateway_mib_s": round(await _blast(gateway, blast_connect, hello_blast, True), 1),
    }
    return results


def run_egress_bench(options: EgressOptions) -> dict[str, Any]:
    job_id, token = str(uuid.uuid4()), "irc_" + uuid.uuid4().hex
    auth = "Basic " + base64.b64encode(f"{job_id}:{token}".encode()).decode()
    before = load_average()
    upstream_argv = python_module(
        "bench.egress_bench", "--role", "upstream", "--blast-mib", str(options.blast_mib)
    )
    with Child("egress-upstreams", upstream_argv) as upstreams:
        ports = [int(p) for p in upstreams.ready["ports"]]
        gateway_argv = python_module(
            "bench.egress_bench",
            "--role",
            "gateway",
            "--ports",
            ",".join(map(str, ports)),
            "--job",
            f"{job_id}:{token}",
        )
        with Child("egress-gateway", gateway_argv) as gateway:
            results = asyncio.run(_measure(options, ports, int(gateway.ready["port"]), auth))
    targets = []
    for row in results["tunnel"]:
        added = row["gateway_ms"]["p50"] - row["direct_ms"]["p50"]
        row["added_p50_ms"] = round(added, 3)
        row["added_p99_ms"] = round(row["gateway_ms"]["p99"] - row["direct_ms"]["p99"], 3)
        if row["concurrency"] == 1:
            targets.append(
                {
                    "check": "CONNECT tunnel: added p50 round trip at concurrency 1 (ms)",
                    "value": round(added, 3),
                    "target": f"<= {TARGET_ADDED_P50_MS}",
                    "met": added <= TARGET_ADDED_P50_MS,
                }
            )
    for row in results["http"]:
        row["added_p50_ms"] = round(row["gateway_ms"]["p50"] - row["direct_ms"]["p50"], 3)
        row["added_p99_ms"] = round(row["gateway_ms"]["p99"] - row["direct_ms"]["p99"], 3)
    return {
        "benchmark": "egress",
        "config": {
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "concurrencies": list(options.concurrencies),
            "load_average_before": before,
            "load_average_after": load_average(),
        },
        "results": results,
        "targets": targets,
    }


def render_egress(document: dict[str, Any]) -> str:
    results = document["results"]
    lines = ["## Egress gateway", ""]
    for kind, what in (
        ("tunnel", "64-byte round trip inside a CONNECT tunnel"),
        ("http", "plain-HTTP request, one connection each"),
    ):
        rows = [
            [
                row["concurrency"],
                row["direct_ms"]["p50"],
                row["gateway_ms"]["p50"],
                row["added_p50_ms"],
                row["direct_ms"]["p99"],
                row["gateway_ms"]["p99"],
                row["added_p99_ms"],
            ]
            for row in results[kind]
        ]
        lines += [
            f"{what} (ms)",
            "",
            markdown_table(
                [
                    "concurrency",
                    "direct p50",
                    "gateway p50",
                    "added p50",
                    "direct p99",
                    "gateway p99",
                    "added p99",
                ],
                rows,
            ),
            "",
        ]
    throughput = results["throughput"]
    lines.append(
        f"CONNECT throughput, {throughput['mib']} MiB one way: direct "
        f"{throughput['direct_mib_s']} MiB/s, gateway {throughput['gateway_mib_s']} MiB/s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.egress_bench")
    parser.add_argument("--role", choices=("upstream", "gateway"), required=True)
    parser.add_argument("--blast-mib", type=int, default=256)
    parser.add_argument("--ports", default="")
    parser.add_argument("--job", default="")
    args = parser.parse_args(argv)
    if args.role == "upstream":
        asyncio.run(serve_upstreams(args.blast_mib << 20))
    else:
        job_id, _, token = args.job.partition(":")
        ports = [int(p) for p in args.ports.split(",")]
        asyncio.run(serve_gateway(ports, job_id, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
