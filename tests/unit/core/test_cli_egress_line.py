"""``ironclaw job watch`` shows each egress attempt on one readable line."""

from __future__ import annotations

from ironclaw_client.types import Event
from orchestrator.cli.jobs import describe_update


def _line(data: dict[str, object]) -> str:
    return describe_update(Event(sequence=7, time=None, event_type="egress", data=data))


def test_an_allowed_attempt_shows_its_target_and_bytes() -> None:
    line = _line(
        {
            "host": "pypi.org",
            "port": 443,
            "outcome": "allowed",
            "reason": "allowed",
            "bytes_sent": 1229,
            "bytes_received": 38912,
        }
    )
    assert line == "[   7] egress → pypi.org:443 allowed (1.2 KiB out, 38.0 KiB in)"


def test_a_refused_attempt_shows_why() -> None:
    line = _line(
        {
            "host": "evil.example",
            "port": 443,
            "outcome": "refused",
            "reason": "not_allowed",
            "message": "egress to evil.example:443 is not allowed for this job",
        }
    )
    assert line == (
        "[   7] egress → evil.example:443 refused: "
        "egress to evil.example:443 is not allowed for this job"
    )


def test_an_injected_credential_is_named_never_shown() -> None:
    line = _line(
        {
            "host": "github.com",
            "port": 443,
            "outcome": "allowed",
            "reason": "allowed",
            "bytes_sent": 0,
            "bytes_received": 0,
            "injected": ["github"],
        }
    )
    assert line.endswith("(0.0 KiB out, 0.0 KiB in, github injected)")
