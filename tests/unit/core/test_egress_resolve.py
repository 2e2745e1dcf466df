"""One resolution, checked addresses only, and the operator's overrides."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from orchestrator.egress.outcomes import EgressRefused, Reason
from orchestrator.egress.policy import PolicyError
from orchestrator.egress.resolve import Resolver, parse_overrides


def answers(*addresses: str) -> Any:
    calls: list[str] = []

    async def getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
        calls.append(host)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    getaddrinfo.calls = calls  # type: ignore[attr-defined]
    return getaddrinfo


def test_overrides_parse_with_and_without_ports() -> None:
    overrides = parse_overrides(
        "API.example=127.0.0.1:8443, web.example:80=[::1]:8080,x.example=10.0.0.9"
    )
    assert [(o.host, o.port, o.address, o.target_port) for o in overrides] == [
        ("api.example", None, "127.0.0.1", 8443),
        ("web.example", 80, "::1", 8080),
        ("x.example", None, "10.0.0.9", None),
    ]


@pytest.mark.parametrize(
    "text", ["api.example", "api.example=host.example", "=1.2.3.4", "a.example=1.2.3.4:0"]
)
def test_malformed_overrides_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_overrides(text)


def test_an_override_answers_without_dns_and_is_trusted() -> None:
    lookup = answers()
    resolver = Resolver(parse_overrides("api.example=127.0.0.1:8443"), getaddrinfo=lookup)
    target = asyncio.run(resolver.resolve("api.example", 443))
    assert target.addresses == (("127.0.0.1", 8443),)
    assert target.overridden
    assert lookup.calls == []


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = Resolver(getaddrinfo=answers("10.0.0.7"))
    with pytest.raises(EgressRefused) as refused:
        asyncio.run(resolver.resolve("intranet.example", 443))
    assert refused.value.reason is Reason.FORBIDDEN_ADDRESS
    assert refused.value.message == (
        "egress to intranet.example:443 is refused: intranet.example resolves to a private "
        "address (10.0.0.7)"
    )


def test_only_checked_addresses_are_kept() -> None:
    resolver = Resolver(getaddrinfo=answers("127.0.0.1", "93.184.215.14", "::ffff:169.254.169.254"))
    target = asyncio.run(resolver.resolve("mixed.example", 443))
    assert target.addresses == (("93.184.215.14", 443),)


def test_a_name_that_does_not_resolve_is_a_502() -> None:
    with pytest.raises(EgressRefused) as refused:
        asyncio.run(Resolver(getaddrinfo=answers()).resolve("nowhere.example", 443))
    assert (refused.value.reason, refused.value.status) == (Reason.RESOLVE_FAILED, 502)


def test_an_allowlisted_literal_is_checked_but_may_be_private() -> None:
    resolver = Resolver(getaddrinfo=answers())
    assert asyncio.run(resolver.resolve("10.0.0.5", 443)).addresses == (("10.0.0.5", 443),)
    for literal in ("127.0.0.1", "169.254.169.254", "::1"):
        with pytest.raises(EgressRefused):
            asyncio.run(resolver.resolve(literal, 443))


def test_a_real_resolution_of_localhost_is_refused() -> None:
    # The system resolver, offline: localhost never leaves the machine.
    with pytest.raises(EgressRefused, match="loopback"):
        asyncio.run(Resolver().resolve("localhost", 80))
