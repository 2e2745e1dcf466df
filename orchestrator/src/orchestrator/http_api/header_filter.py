"""Which headers a passthrough route forwards: one rule for both provider doors and both ways."""

from __future__ import annotations

from collections.abc import Mapping


def pick_headers(
    headers: Mapping[str, str], names: frozenset[str], prefixes: tuple[str, ...]
) -> dict[str, str]:
    """The headers whose lower-cased name is one of ``names`` or starts with a prefix."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() in names or name.lower().startswith(prefixes)
    }
