"""credential_env: GET /credentials → environment variables for the tools."""

from __future__ import annotations

import logging

import pytest

from worker.credentials import credential_env, default_env_name


@pytest.mark.parametrize(
    ("grant", "env_name"),
    [("github", "GITHUB_TOKEN"), ("npm", "NPM_TOKEN"), ("my-registry.io", "MY_REGISTRY_IO_TOKEN")],
)
def test_default_env_name(grant: str, env_name: str) -> None:
    assert default_env_name(grant) == env_name


def test_plain_values_get_derived_names() -> None:
    assert credential_env({"github": "ghp_1", "npm": "npm_2"}) == {
        "GITHUB_TOKEN": "ghp_1",
        "NPM_TOKEN": "npm_2",
    }


def test_objects_may_name_their_env_var() -> None:
    creds = {"github": {"value": "ghp_1", "env_name": "GH_TOKEN"}, "npm": {"value": "npm_2"}}
    assert credential_env(creds) == {"GH_TOKEN": "ghp_1", "NPM_TOKEN": "npm_2"}


def test_empty_credentials() -> None:
    assert credential_env({}) == {}


@pytest.mark.parametrize(
    "env_name", ["PATH", "LD_PRELOAD", "PYTHONPATH", "IRONCLAW_WORKER_TOKEN", "lower", "1ABC", ""]
)
def test_reserved_or_invalid_names_are_skipped_without_logging_the_value(
    env_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    creds = {"evil": {"value": "s3cr3t-value", "env_name": env_name}, "ok": "fine"}
    env = credential_env(creds)
    if env_name == "":
        # An empty name falls back to the derived one.
        assert env == {"EVIL_TOKEN": "s3cr3t-value", "OK_TOKEN": "fine"}
        return
    assert env == {"OK_TOKEN": "fine"}
    assert "evil" in caplog.text
    assert "s3cr3t-value" not in caplog.text


def test_malformed_entries_and_duplicates_are_skipped() -> None:
    creds = {
        "a": 42,
        "b": {"env_name": "B_TOKEN"},
        "github": "first",
        "gh": {"value": "second", "env_name": "GITHUB_TOKEN"},
        "nul": "bad\0value",
    }
    assert credential_env(creds) == {"GITHUB_TOKEN": "first"}


def test_env_names_announced_by_the_job_are_used() -> None:
    from worker.credentials import credential_env, with_env_names

    creds = {"github": "ghp_value", "npm": "npm_value"}
    env = credential_env(with_env_names(creds, {"github": "GH_TOKEN", "npm": "NPM_TOKEN"}))
    assert env == {"GH_TOKEN": "ghp_value", "NPM_TOKEN": "npm_value"}
    assert credential_env(with_env_names(creds, None)) == {
        "GITHUB_TOKEN": "ghp_value",
        "NPM_TOKEN": "npm_value",
    }
