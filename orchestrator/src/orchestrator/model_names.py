"""What a model name may look like: one rule for the settings that name a model
(``CLAUDE_CODE_MODEL``, the targets of ``CLAUDE_CODE_MODEL_MAP``) and for the model a job asks
for in ``CreateJob.limits``, so a setting that passes start-up can never fail a job later.

Aliases (``sonnet``) and provider ids (``claude-sonnet-5-5``, Bedrock's
``anthropic.claude-sonnet-4-5-v1:0``, Vertex's ``claude-sonnet-4-5@20250929``, context
suffixes such as ``[1m]``) fit; spaces, quotes and control characters do not: the name travels
as a command-line argument and in the container's environment.
"""

from __future__ import annotations

import re
from typing import Final

MODEL_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-\[\]/@]{0,127}")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` is not a usable model name, or ``None``."""
    if MODEL_NAME_PATTERN.fullmatch(name):
        return None
    return (
        f"model name {name[:64]!r} is invalid: 1-128 letters, digits and . _ : - [ ] / @, "
        "starting with a letter or digit"
    )
