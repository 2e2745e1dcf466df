"""The egress allowlist: entries, canonical names, the job's list within the operator's."""

from __future__ import annotations

import pytest

from orchestrator.egress.policy import (
    EgressPolicy,
    HostRule,
    PolicyError,
    check_job_hosts,
    job_policy,
    normalize_host,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("PyPI.org", "pypi.org"),
        ("pypi.org.", "pypi.org"),
        ("  files.pythonhosted.org ", "files.pythonhosted.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("203.0.113.7", "203.0.113.7"),
        ("_dmarc.example.com", "_dmarc.example.com"),
    ],
)
def test_names_are_compared_in_one_canonical_form(raw: str, canonical: str) -> None:
    assert normalize_host(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("bücher.example", "punycode"),
        ("\u0440\u0430\u0443\u0440\u0430l.com", "punycode"),  # Cyrillic look-alike of paypal.com
        ("xn--zz.example", "punycode"),
        ("127.1", "legacy"),
        ("0x7f.1", "legacy"),
        ("2130706433", "legacy"),
        ("a..b", "not a host name"),
        ("-a.example", "not a host name"),
        ("a b.example", "not a host name"),
        ("", "empty"),
        ("x" * 64 + ".example", "not a host name"),
        ("fe80::1%eth0", "scoped"),
    ],
)
def test_what_is_no_name_is_refused_with_the_reason(raw: str, says: str) -> None:
    with pytest.raises(PolicyError, match=says):
        normalize_host(raw)


def test_a_bare_entry_allows_http_and_https_and_a_port_only_that_port() -> None:
    policy = EgressPolicy.parse(
        "pypi.org, files.pythonhosted.org:443 *.github.com,[2001:db8::1]:8443"
    )
    assert policy.allows("pypi.org", 443)
    assert policy.allows("pypi.org", 80)
    assert not policy.allows("pypi.org", 22)
    assert policy.allows("files.pythonhosted.org", 443)
    assert not policy.allows("files.pythonhosted.org", 80)
    assert policy.allows("api.github.com", 443)
    assert policy.allows("a.b.github.com", 443)
    assert not policy.allows("github.com", 443), "a suffix entry is not its own apex"
    assert not policy.allows("evilgithub.com", 443)
    assert not policy.allows("github.com.evil.example", 443)
    assert policy.allows("2001:db8::1", 8443)
    assert [str(rule) for rule in policy.rules] == [
        "pypi.org",
        "files.pythonhosted.org:443",
        "*.github.com",
        "[2001:db8::1]:8443",
    ]


def test_an_empty_list_allows_nothing() -> None:
    assert not EgressPolicy.parse("").allows("pypi.org", 443)
    assert not EgressPolicy.parse(" , ").rules


@pytest.mark.parametrize(
    "entry", ["*", "*.10.0.0.1", "a.*.example", "pypi.org:0", "pypi.org:http", "[::1", "[::1]x"]
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(PolicyError):
        HostRule.parse(entry)


def test_a_job_list_only_narrows_the_operators() -> None:
    operator = EgressPolicy.parse("*.example.com,pypi.org:443")
    narrowed = job_policy(operator, ["api.example.com:443", "pypi.org", "evil.example"], False)
    assert narrowed.allows("api.example.com", 443)
    assert not narrowed.allows("api.example.com", 80), "the job's own port"
    assert not narrowed.allows("www.example.com", 443), "not in the job's list"
    assert narrowed.allows("pypi.org", 443)
    assert not narrowed.allows("pypi.org", 80), "the job's list cannot add a port"
    assert not narrowed.allows("evil.example", 443), "the job's list cannot add a host"
    widened = job_policy(operator, ["evil.example"], True)
    assert widened.allows("evil.example", 443)
    assert not widened.allows("api.example.com", 443), "the job's list replaces the operator's"
    assert job_policy(operator, None, False).allows("www.example.com", 80)
    assert not job_policy(operator, [], True).allows("www.example.com", 80), "[] is nothing"


def test_a_wider_job_entry_is_refused_at_admission_unless_jobs_may_widen() -> None:
    operator = EgressPolicy.parse("*.example.com,pypi.org:443")
    rules = check_job_hosts(
        operator, ["a.example.com", "*.b.example.com:443", "pypi.org:443"], False
    )
    assert len(rules) == 3
    for wider in ("example.com", "*.com", "pypi.org", "pypi.org:80", "10.0.0.1:443"):
        with pytest.raises(PolicyError, match="EGRESS_JOB_MAY_WIDEN"):
            check_job_hosts(operator, [wider], False)
    assert check_job_hosts(operator, ["example.com"], True)
