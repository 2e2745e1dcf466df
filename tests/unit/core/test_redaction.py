from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from orchestrator.logging import configure_logging, get_logger, redact_secrets
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


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.reset_defaults()


def _configure(fmt: str) -> None:
    configure_logging("INFO", fmt)
    # Loggers caching this configuration (bound to this test's captured stderr) would keep it
    # past reset_defaults().
    structlog.configure(cache_logger_on_first_use=False)


def _raise_with_secrets() -> None:
    raise ValueError(f"upstream refused Authorization: Bearer {BEARER_VALUE} for {TOKEN}")


BEARER_VALUE = "tok-" + "b" * 24


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_traceback_never_prints_a_token_in_either_format(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _configure(fmt)
    log = get_logger(f"orchestrator.test.{fmt}")
    try:
        _raise_with_secrets()
    except ValueError:
        log.exception("call failed", job_id="j1")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "_raise_with_secrets" in err  # the traceback itself is kept
    assert "ValueError: upstream refused Authorization: ***" in err
    assert TOKEN not in err
    assert BEARER_VALUE not in err


def test_a_library_traceback_through_stdlib_logging_is_masked_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure("console")
    try:
        _raise_with_secrets()
    except ValueError:
        logging.getLogger("some.library").exception("request failed with %s", TOKEN)
    err = capsys.readouterr().err
    assert "request failed with ***" in err
    assert "_raise_with_secrets" in err
    assert TOKEN not in err
    assert BEARER_VALUE not in err


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_lines_name_the_module_that_logged_them(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _configure(fmt)
    get_logger("orchestrator.jobs.example").info("job running", job_id="j2")
    line = capsys.readouterr().err.strip()
    if fmt == "json":
        event = json.loads(line)
        assert event["logger_name"] == "orchestrator.jobs.example"
        assert event["event"] == "job running"
    else:
        assert "[orchestrator.jobs.example]" in line
        assert "job running" in line
        assert "job_id=j2" in line


def test_module_loggers_carry_their_module_name() -> None:
    from orchestrator.jobs import manager

    with capture_logs() as logs:
        manager.log.info("probe")
    assert logs[0]["logger_name"] == "orchestrator.jobs.manager"
