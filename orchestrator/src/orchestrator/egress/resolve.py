"""One resolution per attempt, and the addresses it gave are the only ones connected to.

A name is resolved once, each address is checked (addresses.py), and the connection goes to a
checked address, never to the name again: a DNS answer that changes between the check and the
connect (rebinding) changes nothing. Addresses that fail the check are skipped; when none is
left the attempt is refused with the first one's reason.

``EGRESS_RESOLVE`` (``name=address:port,...``) answers for names without asking DNS: for tests,
which must never leave the machine, and for air-gapped sites whose mirrors have no public name.
An entry is the operator's own statement of where a name lives, so its address is not checked
(a test's upstream on loopback is reachable through it); a name that DNS resolves to such an
address is refused. ``name:port=...`` applies to that requested port only; a target without a
port keeps the requested one; IPv6 targets are written ``[::1]:8443``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.egress.addresses import LITERAL_OVERRIDABLE, address_refusal
from orchestrator.egress.outcomes import EgressRefused, Reason, host_port
from orchestrator.egress.policy import PolicyError, ip_literal, normalize_host

DEFAULT_RESOLVE_TIMEOUT_S = 5.0

GetAddrInfo = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class ResolveOverride:
    """``host[:port]=address[:port]``: where the gateway connects for that name."""

    host: str
    port: int | None
    address: str
    target_port: int | None

    @classmethod
    def parse(cls, entry: str) -> ResolveOverride:
        name, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not name or not target:
            raise PolicyError(f"{entry!r} is not name=address[:port]")
        host_text, port = _split_port(name, entry)
        host = normalize_host(host_text)
        address_text, target_port = _split_port(target, entry)
        address = ip_literal(address_text)
        if address is None:
            raise PolicyError(f"{entry!r}: {address_text!r} is not an IP address")
        return cls(host, port, str(address), target_port)

    def __str__(self) -> str:
        name = self.host if self.port is None else host_port(self.host, self.port)
        target = (
            self.address if self.target_port is None else host_port(self.address, self.target_port)
        )
        if self.target_port is None and ":" in self.address:
            target = f"[{self.address}]"
        return f"{name}={target}"


def _split_port(text: str, entry: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PolicyError(f"{entry!r}: unclosed '['")
        rest = text[close + 1 :]
        host = text[: close + 1]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        rest = ":" + port_text
    else:
        return text, None
    if not rest:
        return host, None
    port_text = rest[1:]
    if not rest.startswith(":") or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise PolicyError(f"{entry!r}: {rest!r} is not :port (1-65535)")
    return host, int(port_text)


def parse_overrides(text: str) -> tuple[ResolveOverride, ...]:
    """``EGRESS_RESOLVE``: comma-separated entries; a later entry for the same key wins."""
    found: dict[tuple[str, int | None], ResolveOverride] = {}
    for entry in text.split(","):
        if entry.strip():
            override = ResolveOverride.parse(entry)
            found[(override.host, override.port)] = override
    return tuple(found.values())


@dataclass(frozen=True)
class Target:
    """Where to connect: checked addresses in the order to try them."""

    addresses: tuple[tuple[str, int], ...]
    overridden: bool = False


class Resolver:
    """Resolves a requested (canonical) host and port to the addresses the gateway may use."""

    def __init__(
        self,
        overrides: Iterable[ResolveOverride] = (),
        timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        self._overrides = {(o.host, o.port): o for o in overrides}
        self._timeout_s = timeout_s
        self._getaddrinfo = getaddrinfo or _system_getaddrinfo

    def override_for(self, host: str, port: int) -> ResolveOverride | None:
        return self._overrides.get((host, port)) or self._overrides.get((host, None))

    async def resolve(self, host: str, port: int) -> Target:
        """The addresses for ``host:port``; EgressRefused when there is none a job may use.
        An IP literal must have been allowed literally by the policy before it gets here."""
        override = self.override_for(host, port)
        if override is not None:
            target_port = override.target_port or port
            return Target(((override.address, target_port),), overridden=True)
        literal = ip_literal(host)
        if literal is not None:
            why = address_refusal(literal)
            if why is not None and why not in LITERAL_OVERRIDABLE:
                raise _forbidden(host, port, f"{host} is {why}")
            return Target(((str(literal), port),))
        try:
            async with asyncio.timeout(self._timeout_s):
                infos = await self._getaddrinfo(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else "no such name"
            raise EgressRefused(
                Reason.RESOLVE_FAILED,
                f"egress to {host_port(host, port)} failed: cannot resolve {host} ({detail})",
                status=502,
            ) from None
        usable: list[tuple[str, int]] = []
        first_refusal = ""
        for info in infos:
            text = str(info[4][0])
            address = ipaddress.ip_address(text.split("%", 1)[0])
            why = address_refusal(address)
            if why is not None:
                first_refusal = first_refusal or f"{host} resolves to {why} ({address})"
                continue
            if (str(address), port) not in usable:
                usable.append((str(address), port))
        if not usable:
            raise _forbidden(host, port, first_refusal or f"{host} has no address")
        return Target(tuple(usable))


def _forbidden(host: str, port: int, why: str) -> EgressRefused:
    return EgressRefused(
        Reason.FORBIDDEN_ADDRESS, f"egress to {host_port(host, port)} is refused: {why}"
    )


async def _system_getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
