"""Credentials injected at egress: a grant with ``inject_hosts`` never enters the container.

The container holds a placeholder of the same shape (``ghp_ironclawplaceholder...`` for a
``ghp_`` token, so tools that sniff a token's format still take it); the gateway, which
terminates TLS for exactly those hosts (intercept.py), rewrites each request's head before it
goes on to the real host:

* in the grant's header (``Authorization`` unless the grant names another; names compared
  case-insensitively) the placeholder is replaced by the value wherever it appears
  (``Bearer <placeholder>``, ``token <placeholder>``), and inside an ``Authorization: Basic``
  value too: decoded, replaced, re-encoded (git sends ``user:password`` that way);
* a request carrying no such header at all gets one, in the grant's format, so ``git clone``
  works without a credential helper in the container;
* a placeholder in any other header stays as it is: the grant names where its value may go,
  and a header a server echoes back (``X-Debug``) would otherwise hand the value to the job.

Only the headers of requests to the grant's hosts are touched; a placeholder sent anywhere else
is just a string. This module is pure: tested without a gateway.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.domain.jobs import CredentialGrant, InjectFormat
from orchestrator.egress.policy import HostRule, parse_rules
from orchestrator.secrets import Secret

DEFAULT_HEADER = "Authorization"
# The user git and GitHub accept with a token as the password (``x-access-token:<token>``).
BASIC_USER = "x-access-token"
PLACEHOLDER_MARK = "ironclawplaceholder"
# Prefixes a credential format is recognised by. Only these are copied into a placeholder: a
# prefix guessed from an arbitrary secret would copy part of the secret itself.
KNOWN_PREFIXES = (
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "glpat-",
    "npm_",
    "pypi-",
    "sk-ant-",
    "sk-proj-",
    "sk-",
    "xoxb-",
    "xoxp-",
    "hf_",
)
_PLACEHOLDER = re.compile(
    "(?:" + "|".join(re.escape(p) for p in KNOWN_PREFIXES) + rf")?{PLACEHOLDER_MARK}[0-9a-f]{{32}}"
    rf"|ironclaw-placeholder-[0-9a-f]{{32}}"
)


def make_placeholder(value: str) -> str:
    """A fresh placeholder shaped like ``value``: its well-known prefix, then letters and
    digits only (what format checks such as ``ghp_[A-Za-z0-9]{36}`` expect)."""
    for prefix in KNOWN_PREFIXES:
        if value.startswith(prefix):
            return prefix + PLACEHOLDER_MARK + secrets.token_hex(16)
    return "ironclaw-placeholder-" + secrets.token_hex(16)


def is_placeholder(text: str) -> bool:
    return _PLACEHOLDER.fullmatch(text) is not None


def format_value(value: str, fmt: InjectFormat) -> str:
    """The header value a grant's ``value`` is written as."""
    if fmt is InjectFormat.BEARER:
        return f"Bearer {value}"
    if fmt is InjectFormat.TOKEN:
        return f"token {value}"
    if fmt is InjectFormat.BASIC:
        pair = f"{BASIC_USER}:{value}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    return value


@dataclass(frozen=True)
class Injection:
    """One injected grant as the gateway uses it: where, which header, how, and what to swap."""

    grant_name: str
    placeholder: str
    value: Secret = field(repr=False)
    header: str = DEFAULT_HEADER
    fmt: InjectFormat = InjectFormat.BEARER
    rules: tuple[HostRule, ...] = ()

    @classmethod
    def from_grant(cls, grant: CredentialGrant) -> Injection:
        return cls(
            grant_name=grant.name,
            placeholder=grant.placeholder,
            value=grant.value,
            header=grant.inject_header or DEFAULT_HEADER,
            fmt=grant.inject_format,
            rules=parse_rules(grant.inject_hosts),
        )

    def applies_to(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self.rules)


def injections_for(grants: Iterable[CredentialGrant]) -> tuple[Injection, ...]:
    return tuple(Injection.from_grant(grant) for grant in grants if grant.injected)


def for_host(injections: Iterable[Injection], host: str, port: int) -> tuple[Injection, ...]:
    """The injections that apply to ``host:port`` (canonical host)."""
    return tuple(i for i in injections if i.applies_to(host, port))


Header = tuple[str, str]


def rewrite_headers(
    headers: Sequence[Header], injections: Sequence[Injection]
) -> tuple[list[Header], list[str]]:
    """The request's headers with each injection applied, and the names of the grants whose
    value went into them (each at most once, in order). Header names keep their case."""
    out = list(headers)
    used: list[str] = []
    for injection in injections:
        wanted = injection.header.lower()
        present = False
        for index, (name, value) in enumerate(out):
            if name.lower() != wanted:
                continue
            present = True
            replaced = _replace(value, injection)
            if replaced is not None:
                out[index] = (name, replaced)
                if injection.grant_name not in used:
                    used.append(injection.grant_name)
        if not present:
            out.append((injection.header, format_value(injection.value.reveal(), injection.fmt)))
            used.append(injection.grant_name)
    return out, used


def _replace(value: str, injection: Injection) -> str | None:
    """``value`` with the placeholder swapped for the real value, or None if it holds none."""
    placeholder, real = injection.placeholder, injection.value.reveal()
    if placeholder in value:
        return value.replace(placeholder, real)
    scheme, sep, encoded = value.strip().partition(" ")
    if not sep or scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if placeholder not in decoded:
        return None
    swapped = decoded.replace(placeholder, real).encode("utf-8")
    return f"{scheme} " + base64.b64encode(swapped).decode("ascii")
