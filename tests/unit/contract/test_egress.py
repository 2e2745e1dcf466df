"""The egress environment both the worker and the bridge give a job's commands: the proxy URL
with the job's egress key, NO_PROXY for the worker API, and a CA bundle when the gateway signs
for some hosts; and the egress key itself, derived one way and masked like every secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ironclaw_contract.egress import (
    CA_BUNDLE_ENV_NAMES,
    NO_PROXY_ENV_NAMES,
    PROXY_ENV_NAMES,
    egress_environment,
    proxy_url,
    write_ca_bundle,
)
from ironclaw_contract.env_names import env_name_problem
from ironclaw_contract.job_keys import egress_key_for, llm_key_for
from ironclaw_contract.secret_patterns import mask_secrets

JOB_ID = "6f1c4c1e-8a6e-4f0e-9d8e-1c2b3a4d5e6f"
TOKEN = "irc_" + "t" * 43
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_egress_key_is_its_own_one_way_key() -> None:
    key = egress_key_for(TOKEN, JOB_ID)
    assert key.startswith("irce_")
    assert key == egress_key_for(TOKEN, JOB_ID)
    assert key != egress_key_for(TOKEN, "another-job")
    assert key != egress_key_for("irc_" + "u" * 43, JOB_ID)
    assert key[5:] != llm_key_for(TOKEN, JOB_ID)[5:]  # another context, another key
    assert TOKEN[4:] not in key
    assert (
        mask_secrets(f"HTTPS_PROXY=http://{JOB_ID}:{key}@h:1")
        == f"HTTPS_PROXY=http://{JOB_ID}:***@h:1"
    )


def test_the_proxy_url_carries_the_job_and_its_key() -> None:
    assert proxy_url("http://host.docker.internal:50053", JOB_ID, "irce_a/b") == (
        f"http://{JOB_ID}:irce_a%2Fb@host.docker.internal:50053"
    )
    assert proxy_url("http://fd00::1:50053".replace("fd00::1", "[fd00::1]"), JOB_ID, "k") == (
        f"http://{JOB_ID}:k@[fd00::1]:50053"
    )
    for bad in ("https://h:1", "http://h", "h:1"):
        with pytest.raises(ValueError, match="http://host:port"):
            proxy_url(bad, JOB_ID, "k")


def test_every_command_gets_the_proxy_no_proxy_and_the_bundle_when_there_is_one(
    tmp_path: Path,
) -> None:
    info = {"proxy_url": "http://host.docker.internal:50053", "no_proxy": "host.docker.internal"}
    env = egress_environment(info, JOB_ID, "irce_k", None)
    assert set(env) == {*PROXY_ENV_NAMES, *NO_PROXY_ENV_NAMES}
    assert {env[name] for name in PROXY_ENV_NAMES} == {
        f"http://{JOB_ID}:irce_k@host.docker.internal:50053"
    }
    assert env["NO_PROXY"] == env["no_proxy"] == "host.docker.internal"
    bundle = tmp_path / "b.pem"
    with_ca = egress_environment(info, JOB_ID, "irce_k", bundle)
    assert {with_ca[name] for name in CA_BUNDLE_ENV_NAMES} == {str(bundle)}


def test_the_bundle_holds_the_system_roots_and_the_gateways_ca_privately(tmp_path: Path) -> None:
    system = tmp_path / "system.pem"
    system.write_text("-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
    bundle = write_ca_bundle(tmp_path / "home" / ".egress", CA, system)
    text = bundle.read_text()
    assert text.index("SYSTEM") < text.index("MIIB")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.parent.stat().st_mode) == 0o700
    # Without a system bundle (a minimal image), the gateway's CA alone.
    alone = write_ca_bundle(tmp_path / "other", CA, tmp_path / "missing.pem")
    assert alone.read_text() == CA


@pytest.mark.parametrize("name", [*PROXY_ENV_NAMES[:2], "NO_PROXY", *CA_BUNDLE_ENV_NAMES])
def test_no_credential_can_take_an_egress_variable(name: str) -> None:
    assert env_name_problem(name) is not None
