"""Why an egress attempt ended as it did: one bounded code per outcome (a metric label, the
audit record's ``reason``), and the refusal that carries it with its one-line message."""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Each outcome of an attempt. ``ALLOWED`` is the only success."""

    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # no, malformed or wrong proxy credentials
    BAD_REQUEST = "bad_request"  # not a request the gateway speaks
    HEADER_TIMEOUT = "header_timeout"  # the request head (or the ClientHello) came too slowly
    NOT_ALLOWED = "not_allowed"  # the name and port are in no entry of the job's policy
    IP_LITERAL = "ip_literal"  # an address asked for by number, not listed literally
    FORBIDDEN_ADDRESS = "forbidden_address"  # loopback, private, metadata, ... (addresses.py)
    RESOLVE_FAILED = "resolve_failed"
    SNI_MISMATCH = "sni_mismatch"  # the ClientHello names another host than CONNECT did
    SNI_MISSING = "sni_missing"  # a ClientHello without a server name for a named host
    BAD_CLIENT_HELLO = "bad_client_hello"  # what followed CONNECT was no TLS ClientHello
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TLS_FAILED = "upstream_tls_failed"  # an injected host's certificate did not verify
    CLIENT_TLS_FAILED = "client_tls_failed"  # the job's client refused the gateway's leaf
    UNAVAILABLE = "unavailable"  # the job is not running (still starting, or gone)

    @property
    def allowed(self) -> bool:
        return self is Reason.ALLOWED


class EgressRefused(Exception):
    """An attempt refused: ``reason`` for programs, ``message`` (one line) for the agent."""

    def __init__(self, reason: Reason, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


def not_allowed(host: str, port: int) -> EgressRefused:
    return EgressRefused(
        Reason.NOT_ALLOWED, f"egress to {host_port(host, port)} is not allowed for this job"
    )


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
