"""What the orchestrator keeps of what a job reports: every piece bounded in bytes.

The worker API's bounds (``ironclaw_contract.worker_api``) apply whoever records an update, so
nothing a job sends can make its history larger than the bound: text is cut with a marker
saying how much, and a value too large as a whole loses its last parts, saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ironclaw_contract.json_bounds import bound_json, truncate_text
from ironclaw_contract.worker_api import (
    MAX_COMPLETE_DETAILS_BYTES,
    MAX_COMPLETE_MESSAGE_CHARS,
    MAX_EVENT_JSON_BYTES,
    MAX_EVENT_STRING_CHARS,
    MAX_STATUS_CHARS,
)

# details.reason types the job's end (FailureReason): it is kept whatever else is cut, in room
# left for it (its JSON: 6 bytes a character at most, the key and punctuation).
_REASON_KEY = "reason"
_MAX_REASON_CHARS = 64
_REASON_ROOM = 6 * _MAX_REASON_CHARS + 16


def bound_event_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Event data within ``MAX_EVENT_JSON_BYTES`` (strings within ``MAX_EVENT_STRING_CHARS``)."""
    bounded = bound_json(
        dict(data), max_bytes=MAX_EVENT_JSON_BYTES, max_string=MAX_EVENT_STRING_CHARS
    )
    return bounded if isinstance(bounded, dict) else {}


def bound_status_message(message: str) -> str:
    return truncate_text(message, MAX_STATUS_CHARS)


def bound_result(
    message: str, details: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any] | None]:
    """A result's message and details within their bounds; ``details["reason"]`` survives."""
    message = truncate_text(message, MAX_COMPLETE_MESSAGE_CHARS)
    if details is None:
        return message, None
    reason = details.get(_REASON_KEY)
    bounded = bound_json(
        dict(details),
        max_bytes=MAX_COMPLETE_DETAILS_BYTES - _REASON_ROOM,
        max_string=MAX_EVENT_STRING_CHARS,
    )
    if not isinstance(bounded, dict):
        bounded = {}
    if isinstance(reason, str) and bounded.get(_REASON_KEY) != reason:
        bounded[_REASON_KEY] = reason[:_MAX_REASON_CHARS]
    return message, bounded
