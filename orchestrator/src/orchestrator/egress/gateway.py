"""The egress gateway: an HTTP forward proxy and ``CONNECT`` server, deny by default.

Each connection carries one request (``Connection: close``; clients open the next one):

* the whole request head within the header timeout, at most :data:`MAX_HEAD_BYTES`;
* ``Proxy-Authorization: Basic base64(job_id:worker_token)``, else 407;
* the requested name and port against the job's policy (policy.py), else 403 with one line
  (``egress to evil.example:443 is not allowed for this job``) as the body and as the reason
  phrase, which is what pip, requests and urllib show for a refused tunnel;
* one resolution, every address checked (resolve.py, addresses.py), else 403;
* ``CONNECT``: 200, then the client's ClientHello within the header timeout, whose server name
  must be the ``CONNECT`` name (sni.py); only then a connection to the checked address, the
  ClientHello forwarded as it came, and bytes spliced both ways. A mismatch closes the client's
  connection and nothing upstream was contacted;
* ``CONNECT`` to a host a grant of the job is injected into (inject.py): after the same
  ClientHello check, TLS terminated with a leaf of the orchestrator's CA, the requests inside
  rewritten (intercept.py) and sent on over TLS to the real host, verified;
* a plain ``http://`` request: the head rewritten to origin form (``Host`` from the URL, hop-by-
  hop headers and the proxy credentials dropped, ``Connection: close``), its body forwarded by
  its own framing and nothing after it, the response relayed until the upstream closes.

Connections are capped per source and in total (closed unread at the accept, like the worker
API's), and one idle (no byte either way) for the idle timeout is closed. Every attempt that
got as far as a request line becomes an :class:`EgressAttempt` for the audit sink and a count in
the metrics; refusals a job can repeat at will are logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from orchestrator.accept_errors import listening_socket
from orchestrator.egress.audit import AuditSink, EgressAttempt
from orchestrator.egress.ca import EgressCa
from orchestrator.egress.inject import Injection, for_host
from orchestrator.egress.intercept import (
    InterceptError,
    Interception,
    error_response,
    responses_down,
)
from orchestrator.egress.jobs import EgressIdentity, EgressJobs
from orchestrator.egress.outcomes import EgressRefused, Reason, host_port, not_allowed
from orchestrator.egress.policy import (
    EgressPolicy,
    PolicyError,
    ip_literal,
    job_policy,
    normalize_host,
)
from orchestrator.egress.resolve import Resolver, Target
from orchestrator.egress.sni import ClientHelloError, read_client_hello
from orchestrator.egress.tls_stream import TlsClosed, TlsServerStream
from orchestrator.log_throttle import ThrottledLog
from orchestrator.logging import get_logger
from orchestrator.metrics import Metrics

log = get_logger(__name__)

MAX_HEAD_BYTES = 32 * 1024
CHUNK_BYTES = 64 * 1024
LISTEN_BACKLOG = 1024
REALM = 'Basic realm="ironclaw egress"'
# Hop-by-hop (RFC 9110 7.6.1) or the gateway's own: never forwarded upstream.
_DROPPED = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS_TEXT = {400: "Bad Request", 407: "Proxy Authentication Required", 502: "Bad Gateway"}


@dataclass(frozen=True)
class GatewayLimits:
    """Bounds on the gateway's connections."""

    max_connections: int = 256
    max_per_source: int = 64
    # The request head, and after CONNECT the ClientHello, each within this.
    header_timeout_s: float = 10.0
    # A connection with no byte either way for this long is closed.
    idle_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0

    @property
    def watch_interval_s(self) -> float:
        return max(0.05, min(1.0, self.idle_timeout_s / 4))


@dataclass(frozen=True)
class GatewayConfig:
    """The operator's policy and how names are resolved."""

    operator: EgressPolicy
    may_widen: bool = False
    resolver: Resolver = field(default_factory=Resolver)
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    # Terminates TLS for the hosts a job's credentials are injected into; None: never.
    ca: EgressCa | None = None
    # How the gateway verifies those hosts: the system's roots plus EGRESS_UPSTREAM_CA.
    upstream_tls: ssl.SSLContext | None = None


def upstream_tls_context(extra_ca: str | None = None) -> ssl.SSLContext:
    """The system's trust store, plus ``extra_ca`` (a PEM bundle file); HTTP/1.1 only."""
    context = ssl.create_default_context()
    if extra_ca:
        context.load_verify_locations(cafile=extra_ca)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _BadRequest(EgressRefused):
    def __init__(self, message: str) -> None:
        super().__init__(Reason.BAD_REQUEST, message, status=400)


class _Unauthenticated(EgressRefused):
    def __init__(self, message: str) -> None:
        super().__init__(Reason.UNAUTHENTICATED, message, status=407)


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class _Connection:
    """One client connection and, once there is one, its upstream."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "client",
        "last_active",
        "upstream",
    )

    def __init__(self, client: asyncio.StreamWriter, now: float) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.last_active = now
        self.bytes_sent = 0
        self.bytes_received = 0

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class EgressGateway:
    """Serves the gateway on one listening socket; :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        config: GatewayConfig,
        jobs: EgressJobs,
        audit: AuditSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._limits = config.limits
        self._jobs = jobs
        self._audit = audit
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._per_source: dict[str, int] = {}
        self._watch: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused_at_accept = ThrottledLog(
            log, "egress connection refused: too many open connections"
        )
        self._refused = ThrottledLog(log, "egress refused", level="info")
        self.port = 0
        if metrics is not None:
            metrics.watch_egress_connections(lambda: len(self._connections))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int) -> int:
        """Listens on host:port (0 picks a free port); returns the port."""
        self._loop = asyncio.get_running_loop()
        sock = listening_socket(host, port, LISTEN_BACKLOG)
        try:
            self._server = await asyncio.start_server(
                self._serve, sock=sock, limit=MAX_HEAD_BYTES, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        self._watch = self._loop.call_later(self._limits.watch_interval_s, self._sweep)
        return self.port

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None
        self._refused_at_accept.close()
        self._refused.close()

    # ------------------------------------------------------------ connections

    def _sweep(self) -> None:
        assert self._loop is not None
        self._watch = self._loop.call_later(self._limits.watch_interval_s, self._sweep)
        idle_since = self._loop.time() - self._limits.idle_timeout_s
        for connection in [c for c in self._connections if c.last_active <= idle_since]:
            connection.abort()

    def _admit(self, source: str) -> bool:
        held = self._per_source.get(source, 0)
        if held >= self._limits.max_per_source or len(self._connections) >= (
            self._limits.max_connections
        ):
            reason = "per_source" if held >= self._limits.max_per_source else "total"
            if self._metrics is not None:
                self._metrics.egress_connection_refused(reason)
            self._refused_at_accept.record(source=source, reason=reason)
            return False
        self._per_source[source] = held + 1
        return True

    def _release(self, source: str) -> None:
        held = self._per_source.get(source, 0) - 1
        if held > 0:
            self._per_source[source] = held
        else:
            self._per_source.pop(source, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._admit(source):
            writer.transport.abort()
            return
        assert self._loop is not None
        started = self._loop.time()
        connection = _Connection(writer, started)
        self._connections.add(connection)
        attempt = _AttemptState()
        try:
            await self._handle(reader, connection, attempt)
        except EgressRefused as exc:
            attempt.reason, attempt.message = exc.reason, exc.message
            if not attempt.tunnel_open:
                with contextlib.suppress(ConnectionError, OSError):
                    await _refuse(writer, exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # either side went away; the attempt keeps what it had
        except Exception:
            log.exception("egress connection failed")
        finally:
            self._connections.discard(connection)
            self._release(source)
            if attempt.tunnel_open:
                connection.abort()  # a refused tunnel ends without a word; so does a spent one
            else:
                _close(writer)
            if connection.upstream is not None:
                connection.upstream.transport.abort()
            if attempt.method:
                self._report(attempt, connection, self._loop.time() - started)

    def _report(self, attempt: _AttemptState, connection: _Connection, duration: float) -> None:
        record = EgressAttempt(
            job_id=attempt.job_id,
            method=attempt.method,
            host=attempt.host,
            port=attempt.port,
            reason=attempt.reason,
            message=attempt.message,
            address=attempt.address,
            bytes_sent=connection.bytes_sent,
            bytes_received=connection.bytes_received,
            duration_s=duration,
            intercepted=attempt.intercepted,
            injected=attempt.injected,
        )
        if self._metrics is not None:
            self._metrics.egress_attempt(
                record.reason.value, record.bytes_sent, record.bytes_received
            )
        if not record.allowed:
            self._refused.record(
                job_id=record.job_id,
                host=record.host,
                port=record.port,
                reason=record.reason.value,
            )
        if self._audit is not None:
            try:
                self._audit(record)
            except Exception:
                log.exception("egress audit failed")

    # ------------------------------------------------------------ one request

    async def _handle(
        self, reader: asyncio.StreamReader, connection: _Connection, attempt: _AttemptState
    ) -> None:
        limits = self._limits
        try:
            async with asyncio.timeout(limits.header_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return  # nothing was asked: no attempt to record
        except asyncio.IncompleteReadError:
            return
        except asyncio.LimitOverrunError:
            attempt.method = "?"
            raise _BadRequest(f"request head larger than {MAX_HEAD_BYTES} bytes") from None
        request = _parse_head(head, attempt)
        if request.method == "CONNECT":
            host, port = _authority(request.target)
        else:
            host, port, path = _absolute_url(request.target)
        attempt.host, attempt.port = host, port
        identity = await self._identify(request)
        attempt.job_id = identity.job_id
        policy = job_policy(self._config.operator, identity.allow_hosts, self._config.may_widen)
        if not policy.allows(host, port):
            if ip_literal(host) is not None:
                raise EgressRefused(
                    Reason.IP_LITERAL,
                    f"egress to {host_port(host, port)} is not allowed for this job: an IP "
                    "address is reached only when it is allowlisted literally",
                )
            raise not_allowed(host, port)
        target = await self._config.resolver.resolve(host, port)
        if request.method == "CONNECT":
            injections = for_host(identity.injections, host, port)
            if injections and self._config.ca is not None:
                await self._intercept(reader, connection, attempt, host, target, injections)
            else:
                await self._tunnel(reader, connection, attempt, host, target)
        else:
            await self._forward(reader, connection, attempt, request, host, port, path, target)

    async def _identify(self, request: _Request) -> EgressIdentity:
        values = request.header("proxy-authorization")
        if len(values) != 1:
            raise _Unauthenticated("proxy credentials required: job_id:worker_token")
        scheme, _, encoded = values[0].strip().partition(" ")
        if scheme.lower() != "basic":
            raise _Unauthenticated("proxy credentials must be Basic job_id:worker_token")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _Unauthenticated("proxy credentials are not valid Basic credentials") from None
        job_id, sep, token = decoded.partition(":")
        identity = await self._jobs.egress_identity(job_id, token) if sep and token else None
        if identity is None:
            raise _Unauthenticated("proxy credentials are not those of a running job")
        return identity

    async def _connect(
        self, target: Target, host: str, port: int, connection: _Connection, attempt: _AttemptState
    ) -> asyncio.StreamReader:
        last: Exception | None = None
        for address, address_port in target.addresses:
            try:
                async with asyncio.timeout(self._limits.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(
                        address, address_port, limit=CHUNK_BYTES
                    )
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            connection.upstream = writer
            attempt.address = host_port(address, address_port)
            return reader
        detail = "timed out" if isinstance(last, TimeoutError) else "connection refused"
        raise EgressRefused(
            Reason.UPSTREAM_UNREACHABLE,
            f"egress to {host_port(host, port)} failed: cannot connect ({detail})",
            status=502,
        )

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        connection: _Connection,
        attempt: _AttemptState,
        host: str,
        target: Target,
    ) -> None:
        client = connection.client
        client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        attempt.tunnel_open = True
        hello = await self._client_hello(reader, host, attempt)
        upstream_reader = await self._connect(target, host, attempt.port, connection, attempt)
        assert connection.upstream is not None
        attempt.reason = Reason.ALLOWED
        connection.upstream.write(hello)
        connection.bytes_sent += len(hello)
        await self._splice(reader, upstream_reader, connection)

    async def _intercept(
        self,
        reader: asyncio.StreamReader,
        connection: _Connection,
        attempt: _AttemptState,
        host: str,
        target: Target,
        injections: tuple[Injection, ...],
    ) -> None:
        """A tunnel to a host some grant of the job is injected into: TLS terminated with a
        leaf of the orchestrator's CA, requests rewritten (intercept.py), and TLS again to the
        real host, verified."""
        ca = self._config.ca
        assert ca is not None
        client = connection.client
        client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        attempt.tunnel_open = True
        attempt.intercepted = True
        hello = await self._client_hello(reader, host, attempt)
        where = host_port(host, attempt.port)
        tls = TlsServerStream(ca.server_context(host), reader, client, hello)
        try:
            async with asyncio.timeout(self._limits.header_timeout_s):
                await tls.handshake()
        except (TimeoutError, TlsClosed) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise EgressRefused(
                Reason.CLIENT_TLS_FAILED,
                f"egress to {where}: TLS with the job's client failed ({detail}); it must "
                "trust the orchestrator's CA (GET /job egress.ca_pem)",
            ) from None
        try:
            upstream_reader = await self._connect_tls(target, host, connection, attempt)
        except EgressRefused as exc:
            with contextlib.suppress(ConnectionError, OSError, TlsClosed):
                await tls.write(error_response(exc.status, exc.message))
                await tls.close()
            raise
        upstream = connection.upstream
        assert upstream is not None
        attempt.reason = Reason.ALLOWED
        interception = Interception(
            tls, upstream, injections, host, attempt.port, connection, self._loop_time
        )
        up = asyncio.ensure_future(interception.requests_up())
        down = asyncio.ensure_future(
            responses_down(upstream_reader, tls, connection, self._loop_time)
        )
        try:
            # Either side ending ends the pair: a TLS client that closed its side reads no more
            # answers (and a TLS stream cannot be half-closed towards the upstream anyway).
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                if not task.done():
                    task.cancel()
            await asyncio.wait((up, down))  # never raises: what they raised is read below
            attempt.injected = tuple(interception.injected)
        failures = [t.exception() for t in (up, down) if not t.cancelled()]
        failure = failures[0] if failures else None
        if isinstance(failure, InterceptError):
            with contextlib.suppress(ConnectionError, OSError, TlsClosed):
                await tls.write(error_response(failure.status, failure.message))
            attempt.reason = Reason.BAD_REQUEST
            attempt.message = f"egress to {where}: {failure.message}"
        with contextlib.suppress(ConnectionError, OSError, TlsClosed):
            await tls.close()

    async def _connect_tls(
        self, target: Target, host: str, connection: _Connection, attempt: _AttemptState
    ) -> asyncio.StreamReader:
        """TLS to the first checked address that answers, verified for ``host``."""
        context = self._config.upstream_tls or upstream_tls_context()
        port = attempt.port
        last: Exception | None = None
        for address, address_port in target.addresses:
            try:
                async with asyncio.timeout(self._limits.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(
                        address,
                        address_port,
                        ssl=context,
                        server_hostname=host,
                        limit=CHUNK_BYTES,
                    )
            except ssl.SSLError as exc:
                raise EgressRefused(
                    Reason.UPSTREAM_TLS_FAILED,
                    f"egress to {host_port(host, port)} failed: the upstream's TLS "
                    f"({getattr(exc, 'verify_message', None) or exc.reason or 'handshake'})",
                    status=502,
                ) from None
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            connection.upstream = writer
            attempt.address = host_port(address, address_port)
            return reader
        detail = "timed out" if isinstance(last, TimeoutError) else "connection refused"
        raise EgressRefused(
            Reason.UPSTREAM_UNREACHABLE,
            f"egress to {host_port(host, port)} failed: cannot connect ({detail})",
            status=502,
        )

    async def _client_hello(
        self, reader: asyncio.StreamReader, host: str, attempt: _AttemptState
    ) -> bytes:
        """The client's ClientHello, once its server name is the CONNECT name."""
        where = host_port(host, attempt.port)
        try:
            async with asyncio.timeout(self._limits.header_timeout_s):
                hello, server_name = await read_client_hello(reader)
        except TimeoutError:
            raise EgressRefused(
                Reason.HEADER_TIMEOUT, f"egress to {where}: no TLS ClientHello in time"
            ) from None
        except ClientHelloError as exc:
            raise EgressRefused(
                Reason.BAD_CLIENT_HELLO, f"egress to {where}: not a TLS ClientHello ({exc})"
            ) from None
        if server_name is None:
            if ip_literal(host) is None:
                raise EgressRefused(
                    Reason.SNI_MISSING, f"egress to {where}: the TLS ClientHello names no server"
                )
            return hello
        try:
            named = normalize_host(server_name)
        except PolicyError:
            named = ""
        if named != host:
            raise EgressRefused(
                Reason.SNI_MISMATCH,
                f"egress to {where} is refused: the TLS server name "
                f"{server_name[:80]!r} is not {host}",
            )
        return hello

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        connection: _Connection,
        attempt: _AttemptState,
        request: _Request,
        host: str,
        port: int,
        path: str,
        target: Target,
    ) -> None:
        framing = _body_framing(request)
        upstream_reader = await self._connect(target, host, port, connection, attempt)
        upstream = connection.upstream
        assert upstream is not None
        attempt.reason = Reason.ALLOWED
        head = _origin_head(request, host, port, path)
        upstream.write(head)
        connection.bytes_sent += len(head)
        body = asyncio.ensure_future(self._forward_body(reader, upstream, connection, framing))
        try:
            await self._pump(upstream_reader, connection.client, connection, upstream=False)
        finally:
            if not body.done():
                body.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await body

    async def _forward_body(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        connection: _Connection,
        framing: int | None,
    ) -> None:
        if framing is None:
            await _copy_chunked(reader, upstream, connection, self._loop_time)
        else:
            remaining = framing
            while remaining > 0:
                data = await reader.read(min(CHUNK_BYTES, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                connection.bytes_sent += len(data)
                connection.last_active = self._loop_time()
                upstream.write(data)
                await upstream.drain()

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _splice(
        self,
        client_reader: asyncio.StreamReader,
        upstream_reader: asyncio.StreamReader,
        connection: _Connection,
    ) -> None:
        assert connection.upstream is not None
        up = asyncio.ensure_future(
            self._pump(client_reader, connection.upstream, connection, upstream=True)
        )
        down = asyncio.ensure_future(
            self._pump(upstream_reader, connection.client, connection, upstream=False)
        )
        _, pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        connection: _Connection,
        *,
        upstream: bool,
    ) -> None:
        loop_time = self._loop_time
        while True:
            data = await source.read(CHUNK_BYTES)
            if not data:
                break
            connection.last_active = loop_time()
            if upstream:
                connection.bytes_sent += len(data)
            else:
                connection.bytes_received += len(data)
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof() and not sink.transport.is_closing():
            with contextlib.suppress(OSError):
                sink.write_eof()


@dataclass
class _AttemptState:
    method: str = ""
    host: str = ""
    port: int = 0
    job_id: str | None = None
    reason: Reason = Reason.BAD_REQUEST
    message: str = ""
    address: str = ""
    tunnel_open: bool = False
    intercepted: bool = False
    injected: tuple[str, ...] = ()


# ------------------------------------------------------------ parsing


def _parse_head(head: bytes, attempt: _AttemptState) -> _Request:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in _VERSIONS:
        attempt.method = "?"
        raise _BadRequest("malformed request line")
    method, target, _ = parts
    attempt.method = method
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _BadRequest("malformed header line")
        headers.append((name.lower(), value.strip(" \t")))
    return _Request(method, target, headers)


def _split_host_port(authority: str) -> tuple[str, str]:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _BadRequest(f"malformed authority {authority[:80]!r}")
        host, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _BadRequest(f"malformed authority {authority[:80]!r}")
        return host, rest[1:]
    host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
    return host, port


def _host_and_port(authority: str, default: int | None) -> tuple[str, int]:
    raw_host, port_text = _split_host_port(authority)
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _BadRequest(f"malformed port in {authority[:80]!r}")
        port = int(port_text)
    elif default is None:
        raise _BadRequest("CONNECT needs host:port")
    else:
        port = default
    try:
        return normalize_host(raw_host), port
    except PolicyError as exc:
        raise _BadRequest(str(exc)) from None


def _authority(target: str) -> tuple[str, int]:
    return _host_and_port(target, None)


def _absolute_url(target: str) -> tuple[str, int, str]:
    if target.startswith("/"):
        raise _BadRequest("a proxy request needs an absolute URL (http://host/path)")
    url = urlsplit(target)
    if url.scheme.lower() == "https":
        raise _BadRequest("https:// goes through CONNECT, not as a plain proxy request")
    if url.scheme.lower() != "http" or not url.netloc:
        raise _BadRequest(f"unsupported proxy request target {target[:80]!r}")
    if "@" in url.netloc:
        raise _BadRequest("credentials in the URL are not forwarded")
    host, port = _host_and_port(url.netloc, 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    return host, port, path


def _body_framing(request: _Request) -> int | None:
    """The body's length (0: none), None for chunked; 400 on anything ambiguous."""
    encodings = request.header("transfer-encoding")
    lengths = request.header("content-length")
    if encodings:
        if lengths:
            raise _BadRequest("both Transfer-Encoding and Content-Length")
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise _BadRequest("only Transfer-Encoding: chunked is forwarded")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        raise _BadRequest("malformed Content-Length")
    return int(lengths[0])


def _origin_head(request: _Request, host: str, port: int, path: str) -> bytes:
    named_in_connection = {
        token.strip().lower()
        for value in request.header("connection") + request.header("proxy-connection")
        for token in value.split(",")
    }
    authority = host_port(host, port) if port != 80 else (f"[{host}]" if ":" in host else host)
    lines = [f"{request.method} {path} HTTP/1.1", f"Host: {authority}"]
    for name, value in request.headers:
        if name in _DROPPED or name in named_in_connection:
            continue
        lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _copy_chunked(
    reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    connection: _Connection,
    clock: Any,
) -> None:
    """Forwards one chunked body (RFC 9112 7.1) as it came, and nothing after it."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
            raise _BadRequest("malformed chunk size")
        size = int(size_text, 16)
        upstream.write(line)
        connection.bytes_sent += len(line)
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = await reader.readuntil(b"\r\n")
                upstream.write(trailer)
                connection.bytes_sent += len(trailer)
                if trailer == b"\r\n":
                    await upstream.drain()
                    return
        data = await reader.readexactly(size + 2)
        if not data.endswith(b"\r\n"):
            raise _BadRequest("malformed chunk")
        connection.bytes_sent += len(data)
        connection.last_active = clock()
        upstream.write(data)
        await upstream.drain()


async def _refuse(writer: asyncio.StreamWriter, refusal: EgressRefused) -> None:
    body = (refusal.message + "\n").encode("utf-8", "replace")
    # The reason phrase carries the line too: it is what pip, requests and urllib print for a
    # tunnel refused by a proxy. It must be one line of visible ASCII.
    phrase = re.sub(r"[^\x20-\x7e]", "?", refusal.message)[:200] or _STATUS_TEXT.get(
        refusal.status, "Forbidden"
    )
    lines = [
        f"HTTP/1.1 {refusal.status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"X-Ironclaw-Egress-Refusal: {refusal.reason.value}",
        "Connection: close",
    ]
    if refusal.status == 407:
        lines.append(f"Proxy-Authenticate: {REALM}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
    await writer.drain()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
