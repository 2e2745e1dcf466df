"""A client for the orchestrator's worker HTTP API, shared by the worker and the Claude Code bridge.

Standard library only. One keep-alive connection is reused across calls (reconnecting after a
failure): the agent makes many small calls and a fresh TCP connection per call costs more than the
call itself. Every call has a connect and a read timeout; connection errors and 502/503 answers are
retried with exponential backoff and jitter, bounded in attempts and in total time, and so is a
429 whose refusal is ``rate_limited`` (after the server's ``Retry-After``): too many status lines
or events for a moment, not a budget. A status line or event still refused after that is
dropped with a log line; it never ends the job. A 401 is never retried: it means the job is over
or the token was revoked, so the caller must stop. A refusal is told apart by the ``refusal``
code of the error body (``ironclaw_contract.worker_api.Refusal``), never by its status alone or
by the English of its message.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ironclaw_contract import json_bounds
from ironclaw_contract.worker_api import (
    LLM_REFUSALS,
    MAX_COMPLETE_DETAILS_BYTES,
    MAX_COMPLETE_MESSAGE_CHARS,
    MAX_EVENT_JSON_BYTES,
    MAX_EVENT_STRING_CHARS,
    MAX_STATUS_CHARS,
    Refusal,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 15.0
DEFAULT_LLM_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0

_RETRY_STATUSES = frozenset({502, 503})
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


class WorkerClientError(Exception):
    """Base of every error raised by :class:`WorkerApiClient`."""


class TokenRejected(WorkerClientError):
    """The server answered 401: the job is over or the token was revoked. Stop; do not retry.

    Deliberately not a :class:`WorkerApiError`, so a handler for API errors cannot swallow it.
    """


class WorkerApiError(WorkerClientError):
    """The server answered with an error status; ``code``, ``message`` and ``refusal`` (the
    machine-readable reason of a refusal, a ``Refusal`` value, or None) come from its body."""

    def __init__(self, status: int, code: str, message: str, refusal: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.refusal = refusal


class BudgetExhausted(WorkerApiError):
    """The job's LLM policy refused the call (``refusal`` in ``LLM_REFUSALS``: its call or
    token budget is used up, 429, or the model is not allowed, 403): no later model call of
    the job can succeed either."""


class RateLimited(WorkerApiError):
    """The server answered 429 ``rate_limited`` and kept doing so through the retries: too many
    calls in a short time. Waiting helps; it is not a reason to end the job's work."""


class WorkerConnectionError(WorkerClientError):
    """The orchestrator could not be reached, even after the retries the policy allows."""


@dataclass(frozen=True)
class RetryPolicy:
    """How connection errors, 502/503 answers and rate-limit refusals are retried (a refusal
    after the server's ``Retry-After``, capped at ``max_delay_s``).

    A new attempt starts only while ``attempt < max_attempts`` and the time spent so far plus the
    next delay stays within ``max_total_s``.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_total_s: float = 120.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        # Jitter spreads the retries of many workers after an orchestrator restart; it needs no
        # cryptographic randomness.
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311


@dataclass(frozen=True)
class FollowUpPrompt:
    """A queued follow-up from ``GET /prompt``; ``done`` asks the agent to finish afterwards."""

    content: str
    done: bool


truncate_text = json_bounds.truncate_text


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """How an ``https://`` orchestrator URL is verified: against the CA the orchestrator handed
    the container (``IRONCLAW_ORCHESTRATOR_CA``) and only that one, else the system's roots;
    the host name is always checked."""
    if ca_pem and ca_pem.strip():
        try:
            return ssl.create_default_context(cadata=ca_pem)
        except ssl.SSLError as exc:
            raise ValueError("the orchestrator's CA is not a PEM certificate") from exc
    return ssl.create_default_context()


def bound_json(
    value: Any,
    *,
    max_string: int = MAX_EVENT_STRING_CHARS,
    max_total: int = MAX_EVENT_JSON_BYTES,
) -> Any:
    """``value`` with long strings cut (with a marker) so that its JSON is at most
    ``max_total`` bytes, as the orchestrator bounds it on receipt
    (:func:`ironclaw_contract.json_bounds.bound_json`)."""
    return json_bounds.bound_json(value, max_bytes=max_total, max_string=max_string)


class WorkerApiClient:
    """Talks to ``/worker/{job_id}/...`` on the orchestrator with the job's bearer token.

    Thread-safe: calls are serialised on the one connection. The token is kept private and never
    appears in ``repr``, logs or exceptions.
    """

    def __init__(
        self,
        base_url: str,
        job_id: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        llm_timeout: float = DEFAULT_LLM_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        user_agent: str = "ironclaw-worker",
        ca_pem: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"orchestrator URL must look like http://host:port, got {base_url!r}")
        if not job_id:
            raise ValueError("job id must not be empty")
        # Checked here because http.client would otherwise quote a bad header value, token
        # included, in its own error message.
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError("worker token is empty or contains whitespace or control characters")
        self._base_url = base_url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._tls = tls_context(ca_pem) if self._https else None
        self._host = parsed.hostname
        self._port = parsed.port
        self._root = parsed.path.rstrip("/")
        self._job_id = job_id
        self._job_prefix = f"{self._root}/worker/{urllib.parse.quote(job_id, safe='')}/"
        self._token = token
        self._timeout = timeout
        self._llm_timeout = llm_timeout
        self._connect_timeout = connect_timeout
        self._retry = retry or RetryPolicy()
        self._user_agent = user_agent
        self._conn: http.client.HTTPConnection | None = None
        self._conn_used = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WorkerApiClient(base_url={self._base_url!r}, job_id={self._job_id!r})"

    @property
    def base_url(self) -> str:
        """The orchestrator URL this client talks to."""
        return self._base_url

    @property
    def job_id(self) -> str:
        """The job whose routes this client calls."""
        return self._job_id

    def __enter__(self) -> WorkerApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the keep-alive connection; a later call opens a new one."""
        with self._lock:
            self._drop_connection()

    # -- routes of the worker API ------------------------------------------------------------

    def get_job(self) -> dict[str, Any]:
        """``GET /job``: task description, max iterations, deadline and the other job metadata."""
        return _expect_object(self.request("GET", "job"), "job")

    def get_credentials(self) -> dict[str, Any]:
        """``GET /credentials``: the job's granted credentials (grant name → value)."""
        return _expect_object(self.request("GET", "credentials"), "credentials")

    def get_tools(self) -> dict[str, Any]:
        """``GET /tools``: the custom tools granted to the job (MCP server entries, WASM tools
        with their modules); empty when the orchestrator predates custom tools (404)."""
        try:
            return _expect_object(self.request("GET", "tools"), "tools")
        except WorkerApiError as exc:
            if exc.status == 404:
                return {}
            raise

    def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        model: str | None = None,
        temperature: float | None = None,
        stop_sequences: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``POST /llm/complete``: one completion without tools."""
        body = _llm_body(messages, max_tokens, model, temperature, stop_sequences)
        answer = self.request("POST", "llm/complete", body, timeout=self._llm_timeout)
        return _expect_object(answer, "llm/complete")

    def complete_with_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        tool_choice: str | Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        temperature: float | None = None,
        stop_sequences: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``POST /llm/complete_with_tools``; the answer always has a ``tool_calls`` list."""
        body = _llm_body(messages, max_tokens, model, temperature, stop_sequences)
        body["tools"] = [dict(tool) for tool in tools]
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        answer = _expect_object(
            self.request("POST", "llm/complete_with_tools", body, timeout=self._llm_timeout),
            "llm/complete_with_tools",
        )
        if answer.get("tool_calls") is None:
            answer["tool_calls"] = []
        return answer

    def post_status(self, message: str, iteration: int, state: str | None = None) -> None:
        """``POST /status``: a progress line for watchers."""
        body: dict[str, Any] = {
            "message": truncate_text(message, MAX_STATUS_CHARS),
            "iteration": iteration,
        }
        if state is not None:
            body["state"] = state
        try:
            self.request("POST", "status", body)
        except RateLimited as exc:
            log.warning("status line dropped, the orchestrator is rate limiting: %s", exc.message)

    def post_event(self, event_type: str, data: Mapping[str, Any]) -> None:
        """``POST /event``: one job event; long strings in ``data`` are truncated with a marker.
        An event the orchestrator still rate-limits after the retries is dropped (logged)."""
        body = {"event_type": event_type, "data": bound_json(data)}
        try:
            self.request("POST", "event", body)
        except RateLimited as exc:
            log.warning("%s event dropped, the orchestrator is rate limiting: %s", event_type, exc)

    def get_prompt(self) -> FollowUpPrompt | None:
        """``GET /prompt``: the next queued follow-up, or ``None`` when nothing is queued (204)."""
        answer = self.request("GET", "prompt")
        if answer is None:
            return None
        body = _expect_object(answer, "prompt")
        content = body.get("content")
        return FollowUpPrompt(
            content=content if isinstance(content, str) else "",
            done=bool(body.get("done", False)),
        )

    def complete_job(
        self,
        success: bool,
        message: str,
        iterations: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """``POST /complete``: the job's one final result. The token is revoked afterwards."""
        body: dict[str, Any] = {
            "success": success,
            "message": truncate_text(message, MAX_COMPLETE_MESSAGE_CHARS),
        }
        if iterations is not None:
            body["iterations"] = iterations
        if details is not None:
            body["details"] = bound_json(details, max_total=MAX_COMPLETE_DETAILS_BYTES)
        self.request("POST", "complete", body)

    def download(
        self, path: str, read: Callable[[http.client.HTTPResponse], T], *, timeout: float = 600.0
    ) -> T:
        """``GET path`` (relative to the job's routes) whose body ``read`` consumes as it
        streams in; returns what ``read`` returns. On its own connection. Retried as other
        calls are (connection errors, 502/503) and on a 429, while no byte of the body has
        been read: the orchestrator bounds the transfers in progress and answers 429 past
        them. A stream that breaks is not resumed. Raises TokenRejected, WorkerApiError,
        WorkerConnectionError."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            answer: tuple[int, bytes] | None = None
            conn: http.client.HTTPConnection | None = None
            try:
                conn = self._new_connection(timeout)
                conn.request("GET", self._job_prefix + path, headers=self._headers("*/*"))
                response = conn.getresponse()
                if response.status == 200:
                    try:
                        return read(response)
                    except (OSError, http.client.HTTPException) as exc:
                        raise WorkerConnectionError(
                            f"GET {path}: the stream broke: {type(exc).__name__}: {exc}"
                        ) from exc
                answer = (response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            finally:
                if conn is not None:
                    conn.close()
            if answer is not None:
                if answer[0] not in (*_RETRY_STATUSES, 429):
                    _decode(*answer)  # raises for an error status
                    raise WorkerApiError(answer[0], "unexpected_status", "not a 200 answer")
                failure = f"HTTP {answer[0]}"
            delay = self._retry.delay(attempt)
            elapsed = time.monotonic() - started
            if attempt >= self._retry.max_attempts or elapsed + delay > self._retry.max_total_s:
                if answer is not None:
                    _decode(*answer)
                raise WorkerConnectionError(
                    f"GET {path}: orchestrator unreachable after {attempt} attempt(s): {failure}"
                )
            log.warning("GET %s failed (%s); retry %d in %.1fs", path, failure, attempt, delay)
            time.sleep(delay)

    def upload(
        self,
        path: str,
        produce: Callable[[Callable[[bytes], None]], object],
        *,
        content_type: str = "application/octet-stream",
        timeout: float = 600.0,
    ) -> Any:
        """``PUT path`` with a chunked body that ``produce`` writes through the function it is
        given; returns the decoded JSON answer. On its own connection, without retries. An
        exception ``produce`` raises stops the upload and propagates. Raises TokenRejected,
        WorkerApiError, WorkerConnectionError."""
        conn = self._new_connection(timeout)
        try:
            conn.putrequest("PUT", self._job_prefix + path, skip_accept_encoding=True)
            for name, value in self._headers("application/json").items():
                conn.putheader(name, value)
            conn.putheader("Content-Type", content_type)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()

            refused = False

            def send(chunk: bytes) -> None:
                nonlocal refused
                if chunk and not refused:
                    try:
                        conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    except OSError:
                        # The server stopped reading (a refusal): its answer says why.
                        refused = True

            # What ``produce`` raises itself (a file it cannot read) stops the upload here:
            # caught as the socket's errors are, the body would never end and the answer
            # would be waited for until the timeout.
            produce(send)
            if not refused:
                with contextlib.suppress(OSError):
                    conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            return _decode(response.status, response.read())
        except (OSError, http.client.HTTPException) as exc:
            raise WorkerConnectionError(
                f"PUT {path}: the upload broke: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            conn.close()

    def _headers(self, accept: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": accept,
            "User-Agent": self._user_agent,
        }

    # -- transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Sends one call and returns its decoded JSON body (``None`` for 204 or an empty body).

        ``path`` is relative to ``/worker/{job_id}/`` (``"job"``, ``"llm/complete"``); a path
        starting with ``/`` is relative to the orchestrator URL instead (``"/health"``).
        ``timeout`` is the read timeout in seconds (default: the client's ``timeout``).

        Raises :class:`TokenRejected` on 401, :class:`RateLimited` on a rate-limit 429 (after
        the retries), :class:`BudgetExhausted` on an LLM refusal (429 or 403 with its refusal
        code), :class:`WorkerApiError` on any other error status (502/503 after the retries;
        ``refusal`` set when the body has one), and :class:`WorkerConnectionError` when the
        server stays unreachable.
        """
        target = self._root + path if path.startswith("/") else self._job_prefix + path
        payload = None
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        read_timeout = self._timeout if timeout is None else timeout
        with self._lock:
            status, data = self._send_with_retries(method, target, payload, read_timeout)
        return _decode(status, data)

    def _send_with_retries(
        self, method: str, target: str, payload: bytes | None, read_timeout: float
    ) -> tuple[int, bytes]:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                status, retry_after, data = self._send_once(method, target, payload, read_timeout)
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                error: BaseException | None = exc
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if status not in _RETRY_STATUSES and not _is_rate_limited(status, data):
                    return status, data
                error = None
                failure = f"HTTP {status}"
            delay = self._retry.delay(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self._retry.max_delay_s))
            elapsed = time.monotonic() - started
            if attempt >= self._retry.max_attempts or elapsed + delay > self._retry.max_total_s:
                if error is None:
                    return status, data
                raise WorkerConnectionError(
                    f"{method} {target}: orchestrator unreachable after {attempt} attempt(s) "
                    f"in {elapsed:.1f}s: {failure}"
                ) from error
            log.warning(
                "%s %s failed (%s); retry %d of %d in %.1fs",
                method,
                target,
                failure,
                attempt,
                self._retry.max_attempts - 1,
                delay,
            )
            time.sleep(delay)

    def _send_once(
        self, method: str, target: str, payload: bytes | None, read_timeout: float
    ) -> tuple[int, float | None, bytes]:
        headers = self._headers("application/json")
        if payload is not None:
            headers["Content-Type"] = "application/json"
        reused = self._conn is not None and self._conn_used
        conn = self._connection(read_timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
        except ConnectionError:
            if not reused:
                raise
            # The server closed an idle keep-alive connection before our request reached it:
            # that is not an outage, so resend once on a fresh connection without backing off.
            self._drop_connection()
            conn = self._connection(read_timeout)
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
        data = response.read()
        self._conn_used = True
        if response.will_close:
            self._drop_connection()
        return response.status, _retry_after(response.getheader("Retry-After")), data

    def _connection(self, read_timeout: float) -> http.client.HTTPConnection:
        if self._conn is None or self._conn.sock is None:
            self._drop_connection()
            self._conn = self._new_connection(None)
            self._conn_used = False
        # http.client has one timeout; the socket gets the connect timeout while connecting and
        # the call's read timeout afterwards.
        assert self._conn.sock is not None
        self._conn.sock.settimeout(read_timeout)
        return self._conn

    def _new_connection(self, read_timeout: float | None) -> http.client.HTTPConnection:
        """A connected connection; its socket gets ``read_timeout`` once connected (None: the
        caller sets it)."""
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        conn.connect()
        if read_timeout is not None:
            assert conn.sock is not None
            conn.sock.settimeout(read_timeout)
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._conn_used = False


def _llm_body(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    model: str | None,
    temperature: float | None,
    stop_sequences: Sequence[str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [dict(message) for message in messages]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if model is not None:
        body["model"] = model
    if temperature is not None:
        body["temperature"] = temperature
    if stop_sequences is not None:
        body["stop_sequences"] = list(stop_sequences)
    return body


def _decode(status: int, data: bytes) -> Any:
    if 200 <= status < 300:
        if status == 204 or not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise WorkerApiError(status, "invalid_response", "response body is not JSON") from None
    code, message, refusal = _error_fields(status, data)
    if status == 401:
        raise TokenRejected(f"worker token rejected ({code}): {message}")
    if status == 429 and refusal == Refusal.RATE_LIMITED:
        raise RateLimited(status, code, message, refusal)
    if status in (403, 429) and refusal in LLM_REFUSALS:
        raise BudgetExhausted(status, code, message, refusal)
    raise WorkerApiError(status, code, message, refusal)


def _is_rate_limited(status: int, data: bytes) -> bool:
    return status == 429 and _error_fields(status, data)[2] == Refusal.RATE_LIMITED


def _error_fields(status: int, data: bytes) -> tuple[str, str, str | None]:
    """``(error, message, refusal)`` of an error body; a body that is not the API's own (a
    proxy's page) keeps its first 200 characters as the message."""
    text = data.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        code = body.get("error")
        message = body.get("message")
        refusal = body.get("refusal")
        return (
            code if isinstance(code, str) and code else f"http_{status}",
            message if isinstance(message, str) and message else "(no message)",
            refusal if isinstance(refusal, str) and refusal else None,
        )
    snippet = text.strip()
    return f"http_{status}", truncate_text(snippet, 200) if snippet else "(no message)", None


def _expect_object(value: Any, route: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WorkerApiError(200, "invalid_response", f"{route}: expected a JSON object")
    return value


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None  # the HTTP-date form is not worth parsing for a hint
    return seconds if seconds >= 0 else None
