"""The one HTTP client every door uses to reach a provider: a pooled keep-alive aiohttp session,
with the timeouts, retries and error mapping written out here rather than left to an SDK.

The official SDKs build each request through several layers (parameter transforms against
their type annotations, httpx's request and response models): on the proxy's hot path that was
most of the CPU a call cost (bench/README.md). The worker API already knows the wire format of
what it sends, so it hands this client finished bytes, and reads the answer as bytes too.

* **Timeouts**: a connect timeout, and a read timeout between bytes (not for the whole answer:
  a long stream that keeps sending is alive).
* **Retries** (:meth:`UpstreamHttp.exchange`, for answers read whole): a connection that could
  not be made or broke before an answer, 408, 409, 429 and 5xx are retried up to
  ``max_retries`` times with exponential back-off and jitter, honouring the upstream's
  ``retry-after-ms`` / ``retry-after`` (within :data:`MAX_RETRY_AFTER_S`) and its
  ``x-should-retry``, as the SDKs do. Streams are never retried here: once a byte has been
  passed on, the client's own retry is the only safe one.
* **Errors**: :class:`UpstreamUnreachable` carries a reason without the URL's query or any
  header, so no key can end up in it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

CONNECT_TIMEOUT_S = 30.0
# Connections kept open per upstream host: enough for every call a loaded proxy has in flight.
POOL_SIZE = 256
KEEPALIVE_S = 60.0
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0


class UpstreamUnreachable(Exception):
    """No answer came back: connection refused or broken, or a timeout. ``reason`` names the
    failure for a person and never holds a credential."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class UpstreamAnswer:
    """A complete answer: status, headers and body bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    attempts: int = 1


class UpstreamHttp:
    """One aiohttp session (created on first use, inside the running loop), shared by every
    call of a door; :meth:`close` on shutdown."""

    def __init__(self, read_timeout_s: float, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout_s(self) -> float:
        return self._read_timeout_s

    def session(self) -> aiohttp.ClientSession:
        """The pooled session (for streaming calls that read the answer as it comes)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=POOL_SIZE, keepalive_timeout=KEEPALIVE_S
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._connect_timeout_s,
                    sock_read=self._read_timeout_s,
                ),
                # Upstream errors are answers to pass on or map, not exceptions; no cookies.
                raise_for_status=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # The bodies are sent as they are: no charset guessing, no auto headers.
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def exchange(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        max_retries: int,
    ) -> UpstreamAnswer:
        """POSTs ``body`` and reads the whole answer, retrying what is worth retrying (module
        docstring). Returns the last answer, whatever its status; raises UpstreamUnreachable
        when the last attempt got none."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.session().post(url, data=body, headers=headers) as response:
                    data = await response.read()
                    answer = UpstreamAnswer(response.status, response.headers, data, attempt)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if attempt > max_retries:
                    raise UpstreamUnreachable(describe_failure(exc, self), attempt) from None
                await asyncio.sleep(backoff_s(attempt, None))
                continue
            if attempt > max_retries or not should_retry(answer.status, answer.headers):
                return answer
            await asyncio.sleep(backoff_s(attempt, answer.headers))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an answer with ``status`` is worth another attempt; the upstream's own
    ``x-should-retry`` wins when it sends one."""
    verdict = headers.get("x-should-retry", "").lower()
    if verdict in ("true", "false"):
        return verdict == "true"
    return status in RETRY_STATUSES


def backoff_s(attempt: int, headers: Mapping[str, str] | None) -> float:
    """How long to wait before attempt ``attempt + 1``: the upstream's retry-after when it
    gives a usable one, else exponential back-off with jitter."""
    if headers is not None:
        hinted = _retry_after_s(headers)
        if hinted is not None:
            return hinted
    ceiling = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2.0 ** (attempt - 1))
    # Jitter in the upper quarter keeps retries of many calls from arriving together.
    jitter: float = random.random()  # noqa: S311 - not for secrets
    return ceiling * (1 - 0.25 * jitter)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP date: rare from providers, the back-off is good enough
        if 0 <= value <= MAX_RETRY_AFTER_S:
            return value
    return None


def describe_failure(exc: BaseException, client: UpstreamHttp) -> str:
    """A reason for a person: the kind of failure, never the URL's query or a header."""
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return f"no answer within {client.read_timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection before answering"
    return type(exc).__name__
