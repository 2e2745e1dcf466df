"""The boundaries a newcomer should be able to draw: the worker and the bridge run in other
images, so they never import the orchestrator, and their module-level imports are the standard
library only (the custom-tool SDKs are imported where a job needs them)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

# Imported lazily, only by the code that runs a job's custom tools (the `worker` extra).
CUSTOM_TOOL_PACKAGES = frozenset({"mcp", "mcp_types", "httpx2", "wasmtime"})


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported outside any function or class body."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_worker_and_bridge_import_only_the_standard_library_at_module_level() -> None:
    for package in ("worker", "bridge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            imported = module_level_imports(path) - {"__future__", "worker", "bridge"}
            foreign = {name for name in imported if name not in sys.stdlib_module_names}
            assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)} at load"


def test_worker_and_bridge_never_import_the_orchestrator() -> None:
    for package in ("worker", "bridge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            assert "import orchestrator" not in source, path
            assert "from orchestrator" not in source, path


def test_the_orchestrator_uses_only_the_standard_library_parts_of_the_worker() -> None:
    allowed = {"worker.tools.mcp_config", "worker.tools.wasm_manifest"}
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        if path == ROOT / "orchestrator" / "cli" / "main.py":
            continue  # the `ironclaw` entry point dispatches `ironclaw worker` too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker"):
                assert node.module in allowed, f"{path.relative_to(ROOT)} imports {node.module}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in [*modules, getattr(node, "module", None) or ""]:
                    assert name.split(".")[0] not in CUSTOM_TOOL_PACKAGES, (path, name)
