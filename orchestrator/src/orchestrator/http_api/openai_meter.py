"""The answer side of the per-job OpenAI routes: what an answer (JSON or SSE) reports of its
usage, how much text a stream has carried so far, and the error event that cuts one.

Chat Completions reports ``usage.prompt_tokens`` / ``completion_tokens`` (in a stream, in the
last chunk, the one with no choices that ``stream_options.include_usage`` asks for); the
Responses API ``usage.input_tokens`` / ``output_tokens`` (in a stream, in the response of its
``response.completed``, ``.incomplete`` or ``.failed`` event). Cached input counts as input, as
everywhere in the ledger.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.http_api.openai_body import CHAT, Api
from orchestrator.http_api.sse import encode_event, event_fields, event_json

# A stream whose text passes this many characters per output token granted has run past
# what the upstream was asked for (tokenizers average 3-4.5 characters a token, a run of
# whitespace in code a few more): it is cut, and charged its whole reservation.
CHARS_PER_TOKEN_CEILING = 6
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIMeter:
    """Reads one answer as it passes: its reported usage and the text it carried."""

    def __init__(self, api: Api, *, client_wants_usage: bool) -> None:
        self._chat = api.name == CHAT.name
        self._client_wants_usage = client_wants_usage
        self.input_tokens = 0
        self.output_tokens = 0
        self.reported = False  # the upstream reported usage
        self.text_chars = 0  # characters of generated text (and tool arguments) seen
        self.sequence = -1  # the last ``sequence_number`` of a Responses stream

    # -- JSON answers ----------------------------------------------------------------------

    def read_json(self, raw: bytes) -> None:
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if isinstance(document, dict):
            self._usage(document.get("usage"))

    # -- streams ---------------------------------------------------------------------------

    def read_event(self, event: bytes) -> bool:
        """Takes one SSE event; False when it must not reach the client (the usage chunk of a
        chat stream the client did not ask usage for: it was asked for the meter)."""
        _, payload = event_fields(event)
        document = event_json(payload)
        if document is None:
            return True
        if self._chat:
            return self._chat_chunk(document)
        self._responses_event(document)
        return True

    def _chat_chunk(self, chunk: dict[str, Any]) -> bool:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return True
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for key in ("content", "refusal", "reasoning_content", "reasoning"):
                value = delta.get(key)
                if isinstance(value, str):
                    self.text_chars += len(value)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(arguments, str):
                    self.text_chars += len(arguments)
        usage_only = not choices and isinstance(usage, dict)
        return self._client_wants_usage or not usage_only

    def _responses_event(self, event: dict[str, Any]) -> None:
        sequence = event.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self.sequence = max(self.sequence, sequence)
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        if kind in _FINAL_RESPONSE_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                self._usage(response.get("usage"))
        elif kind.endswith(".delta"):
            delta = event.get("delta")
            if isinstance(delta, str):
                self.text_chars += len(delta)

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        pairs = (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens"))
        for input_key, output_key in pairs:
            given_in, given_out = _count(usage.get(input_key)), _count(usage.get(output_key))
            if given_in is None and given_out is None:
                continue
            # Counts in later chunks are cumulative where a server repeats them.
            self.input_tokens = max(self.input_tokens, given_in or 0)
            self.output_tokens = max(self.output_tokens, given_out or 0)
            self.reported = True
            return

    # -- the budget ------------------------------------------------------------------------

    def past(self, granted: int) -> bool:
        """Whether the stream has run past the ``granted`` output tokens: by its own count
        (some servers report usage in every chunk) or by the text it carried."""
        return self.output_tokens > granted or self.text_chars > CHARS_PER_TOKEN_CEILING * max(
            granted, 1
        )

    def cut_event(self, message: str, code: str) -> bytes:
        """The error event that ends a stream cut by the orchestrator, in the stream's
        protocol: the ``{"error": ...}`` chunk OpenAI's SDKs raise for in a chat stream, the
        ``error`` event of the Responses API."""
        if self._chat:
            return encode_event({"error": openai_error_body(message, "budget_exceeded", code)})
        return encode_event(
            {
                "type": "error",
                "code": code,
                "message": message,
                "param": None,
                "sequence_number": self.sequence + 1,
            },
            "error",
        )


def openai_error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error object: ``{"message", "type", "param", "code"}``."""
    return {"message": message, "type": error_type, "param": None, "code": code}


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
