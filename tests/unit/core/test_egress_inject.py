"""Credentials injected at egress, without a gateway: the header rewriting, the placeholders,
what admission accepts and refuses, sealing the new fields, and the orchestrator's CA."""

from __future__ import annotations

import base64
import json
import re
import ssl
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from orchestrator.domain.jobs import NO_TOOLS, CreateJobRequest, CredentialGrant, InjectFormat
from orchestrator.egress.ca import EgressCa
from orchestrator.egress.inject import (
    Injection,
    for_host,
    format_value,
    injections_for,
    is_placeholder,
    make_placeholder,
    rewrite_headers,
)
from orchestrator.egress.policy import parse_rules
from orchestrator.errors import FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import admit
from orchestrator.secrets import Secret
from orchestrator.settings import Settings
from orchestrator.store.sealing import GrantSealer
from orchestrator.tokens import TokenStore, validate_grants

REAL = "ghp_" + "R" * 36
PLACEHOLDER = "ghp_ironclawplaceholder" + "0" * 32


def injection(
    header: str = "Authorization", fmt: InjectFormat = InjectFormat.BEARER, name: str = "github"
) -> Injection:
    return Injection(name, PLACEHOLDER, Secret(REAL), header, fmt, parse_rules(["api.example"]))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------ rewriting


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (f"Bearer {PLACEHOLDER}", f"Bearer {REAL}"),
        (f"token {PLACEHOLDER}", f"token {REAL}"),
        (basic("x-access-token", PLACEHOLDER), basic("x-access-token", REAL)),
        (basic("someone", PLACEHOLDER), basic("someone", REAL)),  # git sends its own user
        (basic(PLACEHOLDER, "x-oauth-basic"), basic(REAL, "x-oauth-basic")),
    ],
)
def test_the_placeholder_becomes_the_value_in_the_grants_header(sent: str, received: str) -> None:
    headers, used = rewrite_headers(
        [("Host", "api.example"), ("Authorization", sent)], [injection()]
    )
    assert headers == [("Host", "api.example"), ("Authorization", received)]
    assert used == ["github"]


def test_header_names_match_in_any_case_and_keep_their_own() -> None:
    for name in ("authorization", "AUTHORIZATION", "Authorization"):
        headers, used = rewrite_headers([(name, f"Bearer {PLACEHOLDER}")], [injection()])
        assert headers == [(name, f"Bearer {REAL}")]
        assert used == ["github"]
    headers, _ = rewrite_headers([("x-api-key", PLACEHOLDER)], [injection("X-Api-Key")])
    assert headers == [("x-api-key", REAL)]


def test_a_placeholder_in_an_unrelated_header_stays() -> None:
    sent = [
        ("Authorization", f"Bearer {PLACEHOLDER}"),
        ("X-Debug", PLACEHOLDER),
        ("Cookie", f"t={PLACEHOLDER}"),
    ]
    headers, _ = rewrite_headers(sent, [injection()])
    assert headers[1:] == sent[1:]
    assert REAL not in json.dumps(headers[1:])


def test_an_own_credential_in_the_header_is_left_alone() -> None:
    mine = [("Authorization", "Bearer something-the-job-has-itself")]
    assert rewrite_headers(mine, [injection()]) == (mine, [])
    garbled = [("Authorization", "Basic !!!not-base64")]
    assert rewrite_headers(garbled, [injection()]) == (garbled, [])


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (InjectFormat.BEARER, f"Bearer {REAL}"),
        (InjectFormat.TOKEN, f"token {REAL}"),
        (InjectFormat.BASIC, basic("x-access-token", REAL)),
        (InjectFormat.RAW, REAL),
    ],
)
def test_a_request_without_the_header_gets_it_in_the_grants_format(
    fmt: InjectFormat, expected: str
) -> None:
    assert format_value(REAL, fmt) == expected
    headers, used = rewrite_headers([("Host", "api.example")], [injection(fmt=fmt)])
    assert headers == [("Host", "api.example"), ("Authorization", expected)]
    assert used == ["github"]


def test_only_grants_for_the_host_apply() -> None:
    github = injection()
    other = Injection("npm", "npm_x", Secret("npm_real"), rules=parse_rules(["*.npm.example:443"]))
    assert for_host([github, other], "api.example", 443) == (github,)
    assert for_host([github, other], "api.example", 8443) == ()
    assert for_host([github, other], "registry.npm.example", 443) == (other,)
    assert for_host([github, other], "npm.example", 443) == ()


def test_an_injection_never_shows_its_value() -> None:
    assert REAL not in repr(injection())


# ------------------------------------------------------------ placeholders


def test_a_placeholder_keeps_a_well_known_prefix_and_is_fresh_each_time() -> None:
    first, second = make_placeholder(REAL), make_placeholder(REAL)
    assert first != second
    assert re.fullmatch(r"ghp_[A-Za-z0-9]{36,}", first), first
    assert REAL[4:12] not in first
    assert make_placeholder("github_pat_11ABC").startswith("github_pat_")
    assert make_placeholder("sk-ant-api03-xyz").startswith("sk-ant-")
    unknown = make_placeholder("Zq_9secret")
    assert unknown.startswith("ironclaw-placeholder-")
    assert "Zq" not in unknown
    assert all(is_placeholder(p) for p in (first, unknown))


# ------------------------------------------------------------ admission


def grant(**fields: Any) -> CredentialGrant:
    base = CredentialGrant("github", "api_token", Secret(REAL), "")
    return replace(base, **fields)


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "JOB_NETWORK": "isolated",
            "EGRESS_ALLOW_HOSTS": "api.example:443,*.git.example,pypi.org",
            **env,
        }
    )


def admitted(tmp_path: Path, *grants: CredentialGrant, **request: Any) -> Any:
    env = request.pop("env", {})
    job = admit(
        CreateJobRequest(task="t", credentials=grants, **request),
        settings(tmp_path, **env),
        lambda mcp, wasm, creds: NO_TOOLS,
    )
    return job


def test_an_injected_grant_is_admitted_with_a_placeholder_and_the_defaults(
    tmp_path: Path,
) -> None:
    job = admitted(tmp_path, grant(inject_hosts=("API.example:443", "*.git.example")))
    (checked,) = job.grants
    assert checked.inject_hosts == ("api.example:443", "*.git.example")
    assert checked.inject_header == "Authorization"
    assert checked.inject_format is InjectFormat.BEARER
    assert checked.placeholder.startswith("ghp_ironclawplaceholder")
    assert checked.container_value == checked.placeholder
    plain = admitted(tmp_path, grant()).grants[0]
    assert plain.placeholder == ""
    assert plain.container_value == REAL


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"inject_hosts": ("evil.example",)}, "inject host 'evil.example' is not reachable"),
        ({"inject_hosts": ("*.example",)}, "inject host '*.example' is not reachable"),
        ({"inject_hosts": ("api.example:8443",)}, "not reachable"),
        ({"inject_hosts": ("bad host",)}, "inject_hosts"),
        ({"inject_hosts": ("a*.example",)}, "inject_hosts"),
        ({"inject_header": "X-Key"}, "inject_header needs inject_hosts"),
        ({"inject_hosts": ("pypi.org",), "inject_header": "Bad Header"}, "not an HTTP header"),
        ({"inject_hosts": ("pypi.org",), "inject_header": "Host"}, "not one a credential"),
        ({"inject_hosts": ("pypi.org",), "value": Secret("ghp_a\r\nX: y")}, "printable ASCII"),
    ],
)
def test_bad_injections_are_invalid_argument_naming_the_grant_not_the_value(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        admitted(tmp_path, grant(**fields))
    assert message in info.value.message
    assert "'github'" in info.value.message
    assert REAL not in info.value.message


def test_an_inject_host_must_be_within_the_jobs_own_list_too(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"egress\.allow_hosts"):
        admitted(
            tmp_path,
            grant(inject_hosts=("api.example",)),
            egress_hosts=("pypi.org",),
        )
    job = admitted(
        tmp_path, grant(inject_hosts=("api.example",)), egress_hosts=("api.example:443",)
    )
    assert job.grants[0].inject_hosts == ("api.example",)  # reachable on one of its ports


def test_injection_needs_the_isolated_network(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="JOB_NETWORK=isolated"):
        admitted(tmp_path, grant(inject_hosts=("pypi.org",)), env={"JOB_NETWORK": "bridge"})


def test_the_container_gets_the_placeholder_from_the_token_store() -> None:
    grants = validate_grants([grant(inject_hosts=("pypi.org",)), grant(name="npm", env_name="")])
    tokens = TokenStore()
    tokens.create_token("job", grants)
    served = tokens.credentials_for("job")
    assert served["github"] == grants[0].placeholder
    assert served["npm"] == REAL  # without inject_hosts: today's behaviour
    assert len(injections_for(tokens.grants("job"))) == 1


# ------------------------------------------------------------ sealing


def test_sealed_grants_round_trip_the_injection_and_old_records_still_open() -> None:
    sealer = GrantSealer(Secret("k" * 40))
    (injected,) = validate_grants(
        [grant(inject_hosts=("pypi.org",), inject_format=InjectFormat.BASIC)]
    )
    opened = sealer.open("job", sealer.seal("job", [injected]))
    assert opened == (injected,)
    # A record sealed before injection existed: the four fields only.
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    old = json.dumps(
        [{"name": "npm", "credential_type": "api_token", "value": "v", "env_name": "NPM_TOKEN"}]
    ).encode()
    nonce = os.urandom(12)
    aead: AESGCM = sealer._aead  # type: ignore[attr-defined]
    (legacy,) = sealer.open("job", nonce + aead.encrypt(nonce, old, b"job")) or ()
    assert legacy.inject_hosts == ()
    assert legacy.placeholder == ""
    assert legacy.container_value == "v"


# ------------------------------------------------------------ the CA


def test_the_ca_is_made_once_with_a_private_key_and_signs_leaves(tmp_path: Path) -> None:
    ca = EgressCa.load_or_create(tmp_path)
    key = tmp_path / "egress-ca" / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert "PRIVATE" not in ca.cert_pem
    assert "***" in repr(ca)
    again = EgressCa.load_or_create(tmp_path)
    assert again.cert_pem == ca.cert_pem
    context = ca.server_context("api.example")
    assert ca.server_context("api.example") is context  # cached per name
    assert {p.name for p in key.parent.iterdir()} == {"ca.pem", "ca-key.pem"}
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_ca_key_others_may_read_stops_the_start(tmp_path: Path) -> None:
    EgressCa.load_or_create(tmp_path)
    key = tmp_path / "egress-ca" / "ca-key.pem"
    key.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        EgressCa.load_or_create(tmp_path)


async def test_a_leaf_verifies_against_the_ca_for_its_name_only(tmp_path: Path) -> None:
    import asyncio

    ca = EgressCa.load_or_create(tmp_path)
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context("api.example")
    )
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="api.example"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() in (None, "http/1.1")
        writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="other.example"
            )
    finally:
        server.close()
