from __future__ import annotations

import json

import structlog
from structlog.testing import capture_logs

from orchestrator.logging import configure_logging, redact_secrets
from orchestrator.secrets import Secret

TOKEN = "irc_" + "A" * 43


def _redacted(**event: object) -> dict[str, object]:
    return dict(redact_secrets(None, "info", dict(event)))


def test_secret_keys_are_masked() -> None:
    out = _redacted(token="anything", api_key="k", authorization="Bearer x", password="p")
    assert out == {"token": "***", "api_key": "***", "authorization": "***", "password": "***"}


def test_token_like_strings_are_masked_anywhere() -> None:
    out = _redacted(
        event=f"calling with {TOKEN}",
        nested={"headers": [f"Authorization: Bearer {TOKEN}"], "n": 3},
        gh="value ghp_abcdefghijklmnop",
        key="sk-ant-api03-abcdefghijk",
    )
    text = json.dumps(out)
    assert TOKEN not in text
    assert "ghp_abcdefghijklmnop" not in text
    assert "sk-ant-api03-abcdefghijk" not in text
    assert out["nested"]["n"] == 3  # type: ignore[index]


def test_secret_objects_and_exceptions_are_masked() -> None:
    out = _redacted(value=Secret("plain"), error=RuntimeError(f"bad token {TOKEN}"))
    assert out["value"] == "***"
    assert TOKEN not in str(out["error"])


def test_counts_about_tokens_are_not_masked() -> None:
    out = _redacted(input_tokens=12, output_tokens=3, credential_names=["github"])
    assert out == {"input_tokens": 12, "output_tokens": 3, "credential_names": ["github"]}


def test_configured_json_logging_never_prints_a_token(capsys: object) -> None:
    configure_logging("DEBUG", "json")
    log = structlog.get_logger("t")
    log.info("worker call", job_id="j1", header=f"Bearer {TOKEN}")
    try:
        raise ValueError(f"token {TOKEN} rejected")
    except ValueError:
        log.exception("failed")
    captured = capsys.readouterr()  # type: ignore[attr-defined]
    assert '"job_id": "j1"' in captured.err
    assert TOKEN not in captured.err + captured.out
    structlog.reset_defaults()


def test_capture_logs_sees_the_redacted_event() -> None:
    with capture_logs(processors=[redact_secrets]) as logs:
        structlog.get_logger().info("x", token=TOKEN)
    assert logs[0]["token"] == "***"
