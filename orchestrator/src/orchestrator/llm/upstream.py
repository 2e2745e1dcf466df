"""Helpers shared by every door to an upstream provider: how it is named and how its errors
are kept free of the key."""

from __future__ import annotations

from urllib.parse import urlsplit

from orchestrator.secrets import Secret


def display_url(url: str) -> str:
    """The URL without userinfo, query or fragment: it is shown in logs and job details."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def scrub(text: str, key: Secret | None) -> str:
    """``text`` with every occurrence of the key replaced by ``***``."""
    secret = key.reveal() if key else ""
    return text.replace(secret, "***") if secret else text


def safe_cause(exc: Exception, key: Secret | None) -> Exception | None:
    """The SDK's exception to chain as the cause, unless its text carries the key (an upstream
    that echoes it back): a printed traceback must not show it either."""
    secret = key.reveal() if key else ""
    return None if secret and secret in f"{exc} {getattr(exc, 'body', '')}" else exc
