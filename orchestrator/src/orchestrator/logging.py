"""Structured logging: JSON lines in production, a readable console on a TTY, secrets masked.

structlog has no redaction of its own; :func:`redact_secrets` runs before rendering and masks
values under secret-looking keys and any ``irc_...`` token, ``ircl_...`` LLM key or ``Bearer ...``
string anywhere in the event, so a careless log call cannot leak a token, credential or API key.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from ironclaw_contract.secret_patterns import MASK, is_secret_name, mask_secrets
from orchestrator.secrets import Secret

# Keys whose values are counts or names about secrets, not secrets themselves.
_SAFE_KEYS = frozenset(
    {
        "credential_names",
        "live_tokens",
        "token_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "max_tokens",
        "token_budget",
    }
)


def _mask_text(text: str) -> str:
    return mask_secrets(text)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {
            k: (MASK if _is_secret_key(k) and v not in (None, "") else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, depth + 1) for v in value)
    if isinstance(value, BaseException):
        return _mask_text(f"{type(value).__name__}: {value}")
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _SAFE_KEYS and is_secret_name(key)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor masking secrets anywhere in the event."""
    for key in list(event_dict):
        value = event_dict[key]
        if _is_secret_key(key) and value not in (None, ""):
            event_dict[key] = MASK
        else:
            event_dict[key] = _redact(value)
    return event_dict


def _redact_rendered_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Tracebacks are rendered into text by format_exc_info; mask that text too.
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = _mask_text(exc)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configures structlog (and the stdlib root logger) once for the process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        tail: list[Any] = [
            structlog.processors.format_exc_info,
            _redact_rendered_exception,
            renderer,
        ]
    else:
        # Rendered to text first, so the traceback is masked like every other value.
        tail = [
            structlog.processors.format_exc_info,
            _redact_rendered_exception,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (grpc, aiohttp, docker/urllib3) log through stdlib: keep them quiet and masked.
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_StdlibRedactionFilter())
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(getattr(logging, level), logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _StdlibRedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _mask_text(record.getMessage())
        record.args = None
        return True


class _RedactingFormatter(logging.Formatter):
    # The filter above masks the message; a traceback is only rendered here, so mask the whole
    # line too (a library's exception text can carry a header or a token).
    def format(self, record: logging.LogRecord) -> str:
        return _mask_text(super().format(record))


def get_logger(name: str | None = None) -> Any:
    """A structlog logger whose lines name ``name`` (pass ``__name__``) under ``logger_name``;
    bind ``job_id`` on it (or via contextvars) for job lines."""
    # An initial value, bound lazily: module-level loggers are made before configure_logging.
    return structlog.get_logger(logger_name=name) if name else structlog.get_logger()
