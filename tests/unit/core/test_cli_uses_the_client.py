"""`ironclaw job|status|usage` are a layer over ironclaw_client: no module of the CLI imports
the generated stubs or grpc itself, so every wire concern (token, TLS, retries, resuming a
watch) lives in the client once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[3] / "orchestrator/src/orchestrator/cli"
FORBIDDEN = ("grpc", "grpc_health", "ironclaw_client.api")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(p.name for p in CLI.glob("*.py")))
def test_the_cli_reaches_the_control_plane_only_through_the_client(module: str) -> None:
    imported = _imports(CLI / module)
    bad = {n for n in imported if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)}
    assert bad == set()
