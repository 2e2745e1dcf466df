"""What the worker (and the bridge, which uses the same function) adds to its commands'
environment from ``GET /job``'s egress section."""

from __future__ import annotations

from pathlib import Path

from worker.egress_env import egress_env

JOB_ID = "6f1c4c1e-8a6e-4f0e-9d8e-1c2b3a4d5e6f"
INFO = {
    "proxy_url": "http://host.docker.internal:50053",
    "no_proxy": "host.docker.internal",
    "allow_hosts": ["pypi.org"],
    "ca_pem": None,
}
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_a_job_that_goes_out_directly_gets_nothing() -> None:
    assert egress_env({"egress": None}, JOB_ID, "irce_k", "/home/sandbox") == {}
    assert egress_env({}, JOB_ID, "irce_k", "/home/sandbox") == {}


def test_without_its_key_a_job_gets_no_proxy_it_could_not_use() -> None:
    assert egress_env({"egress": INFO}, JOB_ID, "", "/home/sandbox") == {}


def test_a_job_behind_the_gateway_gets_the_proxy_with_its_key(tmp_path: Path) -> None:
    env = egress_env({"egress": INFO}, JOB_ID, "irce_k", str(tmp_path))
    assert env["HTTPS_PROXY"] == f"http://{JOB_ID}:irce_k@host.docker.internal:50053"
    assert env["no_proxy"] == "host.docker.internal"
    assert "SSL_CERT_FILE" not in env
    assert list(tmp_path.iterdir()) == []  # no bundle without a CA to trust


def test_the_gateways_ca_is_trusted_through_a_bundle_in_home(tmp_path: Path) -> None:
    env = egress_env({"egress": {**INFO, "ca_pem": CA}}, JOB_ID, "irce_k", str(tmp_path))
    bundle = Path(env["SSL_CERT_FILE"])
    assert bundle.parent == tmp_path / ".ironclaw-egress"
    assert bundle.read_text().endswith(CA)
    assert env["GIT_SSL_CAINFO"] == env["REQUESTS_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"]
