"""What a secret looks like, for the code that masks secrets in text and the code that refuses
them where they must not be written in clear (a tool catalogue).

One definition for every side: the orchestrator's log redaction, the worker's and the bridge's
log lines, the MCP catalogue's checks. Masking errs on the side of masking; a refusal names
the place and how to pass the secret properly.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Final

MASK: Final = "***"

# Well-known credential formats and literal authorization schemes.
SECRET_VALUE: Final = re.compile(
    r"irc_[A-Za-z0-9_\-]{8,}"  # the orchestrator's job tokens
    r"|ircl_[A-Za-z0-9_\-]{8,}"  # its per-job LLM keys
    r"|irce_[A-Za-z0-9_\-]{8,}"  # and egress keys
    r"|Bearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    # Base64 of user:password mixes case or digits; "Basic authentication" is left alone.
    r"|Basic\s+(?=[A-Za-z0-9+/]*[A-Z0-9+/])[A-Za-z0-9+/]{8,}={0,2}"
    r"|sk-(?:ant-)?[A-Za-z0-9_\-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_\-]{16,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|npm_[A-Za-z0-9]{30,}"
)

# Names (env vars, JSON keys, header names, URL query parameters, CLI options) whose value is a
# secret.
SECRET_NAME: Final = re.compile(
    r"token|secret|passw(?:or)?d|passphrase|credential|authorization|cookie"
    r"|api[_-]?key|(?:access|private|client|auth|signing)[_-]?key|(?:^|[_-])key$"
    r"|(?:^|[_-])auth(?:$|[_-])|(?:^|[_-])sig(?:nature)?$",
    re.IGNORECASE,
)

_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")


def mask_secrets(text: str) -> str:
    """``text`` with every secret-shaped value replaced by ``***``."""
    return SECRET_VALUE.sub(MASK, text)


def is_secret_name(name: str) -> bool:
    """Whether a value stored under ``name`` is a secret (``GITHUB_TOKEN``, ``x-api-key``)."""
    return SECRET_NAME.search(name) is not None


def url_secret_problem(text: str) -> str | None:
    """Why a URL inside ``text`` carries a secret (a password in its userinfo, a secret-named
    query parameter), or ``None``. ``postgres://app:pw@db/x`` and ``https://h/?access_token=``
    are caught; ``https://user@host`` (no password) is not a secret."""
    for match in _URL.finditer(text):
        try:
            parts = urllib.parse.urlsplit(match.group(0))
        except ValueError:
            return "holds a URL that cannot be parsed"
        if parts.password:
            return "holds a URL with a password in it"
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if value and is_secret_name(name):
                return f"holds a URL whose query parameter {name!r} is a secret"
    return None


def value_secret_problem(text: str) -> str | None:
    """Why ``text`` looks like it holds a secret in clear, or ``None``."""
    if SECRET_VALUE.search(text):
        return "looks like a credential in clear"
    return url_secret_problem(text)


def args_secret_problem(args: Sequence[str]) -> str | None:
    """Why a command line carries a secret in clear (``--token=...``, ``--api-key VALUE``, a
    known format, a URL with a password), or ``None``."""
    for index, arg in enumerate(args):
        problem = value_secret_problem(arg)
        if problem:
            return f"args[{index}] {problem}"
        if not arg.startswith("-"):
            continue
        option, sep, value = arg.lstrip("-").partition("=")
        if not is_secret_name(option):
            continue
        if sep and value:
            return f"args[{index}] passes --{option} a value in clear"
        following = args[index + 1] if index + 1 < len(args) else ""
        if not sep and following and not following.startswith("-"):
            return f"args[{index + 1}] is the value of --{option}, in clear"
    return None


def secret_values(values: Iterable[str], min_chars: int = 6) -> tuple[str, ...]:
    """The values worth masking, longest first (so one that contains another is masked
    whole); values shorter than ``min_chars`` occur by chance too often to be masked."""
    return tuple(sorted({v for v in values if len(v) >= min_chars}, key=len, reverse=True))
