"""Which names and ports a job may reach: the operator's list, narrowed by the job's own.

An entry is an exact name (``pypi.org``), a suffix (``*.github.com``: any name below it at any
depth, never ``github.com`` itself) or an IP literal (``203.0.113.7``, ``[2001:db8::1]``), with
an optional port. A bare entry allows ports 80 and 443 (HTTP and HTTPS, what tools mean by a
host); ``name:port`` allows that port only, so ``pypi.org:443`` refuses plain HTTP. An empty
list allows nothing.

Names are compared in one canonical form: lower case, one trailing dot dropped, ASCII only
(an internationalised name is written in its punycode ``xn--`` form, which is checked to decode):
a Unicode look-alike can never match an ASCII entry by accident. A name whose last label is
numeric (``127.1``, ``0x7f.1``) is no name but an IP address in a legacy spelling the resolver
would accept, so it is refused like any unlisted literal.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WEB_PORTS = frozenset({80, 443})
MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class PolicyError(ValueError):
    """An entry or a requested name that is not well-formed; the message names it."""


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_literal(host: str) -> IpAddress | None:
    """The address ``host`` spells (``[v6]`` or bare), if it is an IP literal."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(raw: str) -> str:
    """The canonical form of a requested name or IP literal; PolicyError if it is neither."""
    host = raw.strip()
    if not host:
        raise PolicyError("empty host name")
    address = ip_literal(host)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise PolicyError(f"{host[:80]!r}: a scoped IPv6 address is never allowed")
        return str(address)
    if not host.isascii():
        raise PolicyError(
            f"{host[:80]!r} is not an ASCII name: write an internationalised name in its "
            "punycode (xn--) form"
        )
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > MAX_NAME_LENGTH:
        raise PolicyError(f"{raw[:80]!r} is not a host name")
    labels = host.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise PolicyError(f"{raw[:80]!r} is not a host name")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise PolicyError(f"{raw[:80]!r}: {label!r} is not valid punycode") from None
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise PolicyError(f"{raw[:80]!r} is an IP address in a legacy form, not a host name")
    return host


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise PolicyError(f"{entry!r}: {text!r} is not a port (1-65535)")
    return int(text)


@dataclass(frozen=True)
class HostRule:
    """One allowlist entry. ``host`` is canonical; for a suffix rule it is the part after
    ``*.``. ``port`` None means ports 80 and 443."""

    host: str
    wildcard: bool = False
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        """``name``, ``*.suffix``, ``ip``, ``[v6]``, each with an optional ``:port``."""
        text = entry.strip()
        port: int | None = None
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise PolicyError(f"{entry!r}: unclosed '['")
            rest = text[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise PolicyError(f"{entry!r}: expected :port after ']'")
                port = _port(rest[1:], entry)
            text = text[: close + 1]
        elif text.count(":") == 1:
            text, _, port_text = text.partition(":")
            port = _port(port_text, entry)
        wildcard = text.startswith("*.")
        if wildcard:
            text = text[2:]
        if "*" in text:
            raise PolicyError(f"{entry!r}: '*' may only start an entry, as in *.example.com")
        host = normalize_host(text)
        if wildcard and ip_literal(host) is not None:
            raise PolicyError(f"{entry!r}: a suffix entry needs a name, not an address")
        return cls(host, wildcard, port)

    @property
    def ports(self) -> frozenset[int]:
        return WEB_PORTS if self.port is None else frozenset({self.port})

    @property
    def is_ip_literal(self) -> bool:
        return not self.wildcard and ip_literal(self.host) is not None

    def matches_host(self, host: str) -> bool:
        """Whether the canonical ``host`` is one this entry names (ports aside)."""
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def matches(self, host: str, port: int) -> bool:
        return port in self.ports and self.matches_host(host)

    def covers(self, other: HostRule) -> bool:
        """Whether every (name, port) ``other`` allows, this entry allows too."""
        if not other.ports <= self.ports:
            return False
        if other.wildcard:
            return self.wildcard and (
                other.host == self.host or other.host.endswith("." + self.host)
            )
        return self.matches_host(other.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"*.{host}" if self.wildcard else host
        return text if self.port is None else f"{text}:{self.port}"


def parse_rules(entries: Iterable[str]) -> tuple[HostRule, ...]:
    """Each non-empty entry parsed, duplicates dropped, order kept."""
    rules = [HostRule.parse(entry) for entry in entries if entry.strip()]
    return tuple(dict.fromkeys(rules))


def parse_rule_list(text: str) -> tuple[HostRule, ...]:
    """A comma- (or whitespace-) separated list, as ``EGRESS_ALLOW_HOSTS`` is written."""
    return parse_rules(re.split(r"[,\s]+", text))


@dataclass(frozen=True)
class EgressPolicy:
    """A list of entries; a (name, port) is allowed when one entry matches it."""

    rules: tuple[HostRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> EgressPolicy:
        return cls(parse_rule_list(text))

    def allows(self, host: str, port: int) -> bool:
        """``host`` must be canonical (:func:`normalize_host`)."""
        return any(rule.matches(host, port) for rule in self.rules)

    def uncovered(self, rules: Iterable[HostRule]) -> list[HostRule]:
        """The entries of ``rules`` this policy does not wholly allow."""
        return [rule for rule in rules if not any(mine.covers(rule) for mine in self.rules)]


@dataclass(frozen=True)
class JobEgressPolicy:
    """What one job may reach: its own list (None: the operator's), and, unless the operator
    lets jobs widen, only what the operator's list allows as well."""

    operator: EgressPolicy
    job: EgressPolicy | None = None
    may_widen: bool = False

    def allows(self, host: str, port: int) -> bool:
        if self.job is None:
            return self.operator.allows(host, port)
        if not self.job.allows(host, port):
            return False
        return self.may_widen or self.operator.allows(host, port)


def job_policy(
    operator: EgressPolicy, job_hosts: Sequence[str] | None, may_widen: bool
) -> JobEgressPolicy:
    """The policy of a job whose own list is ``job_hosts`` (None: it has none)."""
    if job_hosts is None:
        return JobEgressPolicy(operator)
    return JobEgressPolicy(operator, EgressPolicy(parse_rules(job_hosts)), may_widen)


def check_job_hosts(
    operator: EgressPolicy, job_hosts: Sequence[str], may_widen: bool
) -> tuple[HostRule, ...]:
    """A job's own list, parsed; PolicyError naming the first entry wider than the operator's
    list, unless jobs may widen it (a request is refused rather than silently narrowed)."""
    rules = parse_rules(job_hosts)
    if not may_widen:
        wider = operator.uncovered(rules)
        if wider:
            raise PolicyError(
                f"egress entry {str(wider[0])!r} is not within what the operator allows "
                "(EGRESS_ALLOW_HOSTS; EGRESS_JOB_MAY_WIDEN=1 lets jobs widen it)"
            )
    return rules
