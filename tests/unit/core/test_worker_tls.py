"""TLS of the worker API without an engine: its settings, when a bind needs it, the
orchestrator's own CA and server certificate (files, modes, names, reuse), the operator's
files, and the trust a job's agent process is given."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from orchestrator.certificates import CA_FILE, CA_KEY_FILE
from orchestrator.errors import ConfigError
from orchestrator.http_api.worker_tls import (
    SERVER_FILE,
    SERVER_KEY_FILE,
    TLS_DIR_NAME,
    WorkerTlsError,
    is_local_bind,
    operator_tls,
    own_tls,
    server_names,
)
from orchestrator.service import worker_api_tls
from orchestrator.settings import Settings
from tests.fakes.fake_backend import FakeBackend
from worker.client import tls_context
from worker.egress_env import egress_env


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    return names | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_the_operators_files_come_together_and_exclude_the_plaintext_opt_out(
    tmp_path: Path,
) -> None:
    cert, key, ca = (tmp_path / name for name in ("c.pem", "k.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("x")
    with pytest.raises(ConfigError, match="must be set together"):
        Settings.from_env({"WORKER_API_TLS_CERT": str(cert), "WORKER_API_TLS_KEY": str(key)})
    with pytest.raises(ConfigError, match="WORKER_API_INSECURE=1 contradicts"):
        Settings.from_env(
            {
                "WORKER_API_TLS_CERT": str(cert),
                "WORKER_API_TLS_KEY": str(key),
                "WORKER_API_CA": str(ca),
                "WORKER_API_INSECURE": "1",
            }
        )
    with pytest.raises(ConfigError, match="WORKER_API_CA"):
        Settings.from_env({"WORKER_API_CA": str(tmp_path / "missing.pem")})
    assert Settings.from_env({}).worker_api_insecure is False


def test_only_loopback_and_the_docker_bridges_count_as_local() -> None:
    bridges = ["172.17.0.1", "172.18.0.1"]
    assert is_local_bind("127.0.0.1", bridges)
    assert is_local_bind("::1", bridges)
    assert is_local_bind("172.18.0.1", bridges)
    assert not is_local_bind("0.0.0.0", bridges)
    assert not is_local_bind("10.9.8.1", bridges)
    assert not is_local_bind("192.168.1.5", [])


def test_server_names_are_the_urls_host_and_a_single_bind_address() -> None:
    assert server_names("ironclaw-orchestrator", "10.9.8.1") == [
        "ironclaw-orchestrator",
        "10.9.8.1",
    ]
    assert server_names("host.docker.internal", "0.0.0.0") == ["host.docker.internal"]
    assert server_names("10.9.8.1", "10.9.8.1") == ["10.9.8.1"]


def test_the_own_ca_is_made_once_with_private_keys_and_reused(tmp_path: Path) -> None:
    first = own_tls(tmp_path, ["ironclaw-orchestrator", "10.9.8.1"])
    directory = tmp_path / TLS_DIR_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in (CA_KEY_FILE, SERVER_KEY_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert _sans(directory / SERVER_FILE) == {"ironclaw-orchestrator", "10.9.8.1"}
    ca = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert first.ca_pem == (directory / CA_FILE).read_text()
    assert "PRIVATE KEY" not in first.ca_pem
    assert "key=***" in repr(first)
    server_before = (directory / SERVER_FILE).read_bytes()
    again = own_tls(tmp_path, ["ironclaw-orchestrator"])
    assert again.ca_pem == first.ca_pem, "the same CA after a restart: running jobs trust it"
    assert (directory / SERVER_FILE).read_bytes() == server_before, "names covered: reused"
    moved = own_tls(tmp_path, ["ironclaw-orchestrator", "10.9.8.2"])
    assert moved.ca_pem == first.ca_pem
    assert _sans(directory / SERVER_FILE) == {"ironclaw-orchestrator", "10.9.8.2"}
    # The bind address is an IP SAN, not a DNS name.
    assert "10.9.8.2" in {
        str(a)
        for a in x509.load_pem_x509_certificate((directory / SERVER_FILE).read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.IPAddress)
    }


def test_a_server_key_that_is_not_the_certificates_is_made_again(tmp_path: Path) -> None:
    # As a start that died between writing the new key and the new certificate leaves it.
    own_tls(tmp_path, ["ironclaw-orchestrator"])
    directory = tmp_path / TLS_DIR_NAME
    other = own_tls(tmp_path / "other", ["ironclaw-orchestrator"])
    assert other.ca_pem
    (directory / SERVER_KEY_FILE).unlink()
    (directory / SERVER_KEY_FILE).write_bytes(
        (tmp_path / "other" / TLS_DIR_NAME / SERVER_KEY_FILE).read_bytes()
    )
    (directory / SERVER_KEY_FILE).chmod(0o600)
    made = own_tls(tmp_path, ["ironclaw-orchestrator"])
    assert made.context is not None  # loads: certificate and key belong together again


def test_a_key_others_may_read_is_refused_naming_the_file(tmp_path: Path) -> None:
    own_tls(tmp_path, ["a"])
    key = tmp_path / TLS_DIR_NAME / CA_KEY_FILE
    key.chmod(0o640)
    with pytest.raises(WorkerTlsError, match=str(key)) as refused:
        own_tls(tmp_path, ["a"])
    assert "BEGIN" not in str(refused.value)


def test_the_operators_files_are_loaded_and_bad_ones_refused(tmp_path: Path) -> None:
    made = own_tls(tmp_path / "elsewhere", ["worker-api.example"])
    directory = tmp_path / "elsewhere" / TLS_DIR_NAME
    tls = operator_tls(directory / SERVER_FILE, directory / SERVER_KEY_FILE, directory / CA_FILE)
    assert tls.origin == "operator"
    assert tls.ca_pem == made.ca_pem
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(WorkerTlsError, match="WORKER_API_CA"):
        operator_tls(directory / SERVER_FILE, directory / SERVER_KEY_FILE, junk)
    with pytest.raises(WorkerTlsError, match="WORKER_API_TLS_CERT"):
        operator_tls(junk, directory / SERVER_KEY_FILE, directory / CA_FILE)


def test_the_clients_context_trusts_the_given_ca_only_and_checks_the_name(tmp_path: Path) -> None:
    made = own_tls(tmp_path, ["ironclaw-orchestrator"])
    context = tls_context(made.ca_pem)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert [s.get("commonName") for s in subjects] == ["ironclaw worker API CA"]
    with pytest.raises(ValueError, match="not a PEM certificate"):
        tls_context("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_an_agent_process_trusts_the_orchestrator_and_the_system_roots(tmp_path: Path) -> None:
    made = own_tls(tmp_path / "state", ["ironclaw-orchestrator"])
    home = tmp_path / "home"
    env = egress_env({}, "job", "", str(home), orchestrator_ca_pem=made.ca_pem)
    bundle = Path(env["SSL_CERT_FILE"])
    assert env["REQUESTS_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"] == str(bundle)
    assert "GIT_SSL_CAINFO" not in env, "git never talks to the orchestrator"
    assert "HTTPS_PROXY" not in env
    assert bundle.is_relative_to(home)
    assert made.ca_pem.strip() in bundle.read_text()
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    # With the egress gateway: one bundle that trusts its CA and the orchestrator's.
    job = {"egress": {"proxy_url": "http://ironclaw-orchestrator:50053", "ca_pem": "GATEWAY-CA"}}
    both = egress_env(job, "job", "key", str(home), orchestrator_ca_pem=made.ca_pem)
    text = Path(both["SSL_CERT_FILE"]).read_text()
    assert "GATEWAY-CA" in text
    assert made.ca_pem.strip() in text
    assert both["HTTPS_PROXY"].startswith("http://job:key@")
    assert egress_env({}, "job", "", str(home)) == {}, "no CA, no egress: nothing to add"


async def test_the_orchestrator_picks_tls_by_where_the_worker_api_listens(tmp_path: Path) -> None:
    engine = FakeBackend(gateway="172.17.0.1")
    base = {"IRONCLAW_BASE_DIR": str(tmp_path)}
    (tmp_path / "projects").mkdir()
    on_bridge = Settings.from_env(base)
    assert await worker_api_tls(on_bridge, engine, "172.17.0.1") is None
    assert await worker_api_tls(on_bridge, engine, "127.0.0.1") is None
    beyond = await worker_api_tls(on_bridge, engine, "0.0.0.0")
    assert beyond is not None
    assert beyond.origin == str(tmp_path / TLS_DIR_NAME)
    assert _sans(tmp_path / TLS_DIR_NAME / SERVER_FILE) == {"host.docker.internal"}
    swarm = Settings.from_env({**base, "CONTAINER_BACKEND": "swarm"})
    assert await worker_api_tls(swarm, engine, "10.9.8.1") is not None
    assert _sans(tmp_path / TLS_DIR_NAME / SERVER_FILE) == {"ironclaw-orchestrator", "10.9.8.1"}
    opted_out = Settings.from_env({**base, "WORKER_API_INSECURE": "1"})
    assert await worker_api_tls(opted_out, engine, "10.9.8.1") is None
    plain_url = Settings.from_env(
        {**base, "IRONCLAW_ORCHESTRATOR_URL_FOR_JOBS": "http://10.9.8.1:50052"}
    )
    with pytest.raises(ConfigError, match="use https://"):
        await worker_api_tls(plain_url, engine, "10.9.8.1")
