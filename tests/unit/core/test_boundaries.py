"""The boundaries a newcomer should be able to draw. Each process is its own distribution:
the worker and the bridge run in job images, so they never import the orchestrator and load
only the standard library and the contract at module level (the custom-tool SDKs are imported
where a job needs them); the contract is standard library only; the orchestrator imports
nothing of the worker or the bridge."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

# Imported lazily, only by the code that runs a job's custom tools (the `custom-tools` extra).
CUSTOM_TOOL_PACKAGES = frozenset({"mcp", "mcp_types", "httpx2", "wasmtime"})
SOURCES = {
    "ironclaw_contract": ROOT / "contract" / "src" / "ironclaw_contract",
    "orchestrator": ROOT / "orchestrator" / "src" / "orchestrator",
    "worker": ROOT / "worker" / "src" / "worker",
    "bridge": ROOT / "bridge" / "src" / "bridge",
}


def python_files(package: str) -> Iterator[Path]:
    yield from sorted(SOURCES[package].rglob("*.py"))


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported outside any function or class body."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def all_imports(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_distribution_has_its_source_tree() -> None:
    for package, path in SOURCES.items():
        assert (path / "__init__.py").is_file(), package
        assert (path.parents[1] / "pyproject.toml").is_file(), package


def test_the_contract_is_standard_library_only() -> None:
    for path in python_files("ironclaw_contract"):
        imported = all_imports(path) - {"__future__", "ironclaw_contract"}
        foreign = {name for name in imported if name not in sys.stdlib_module_names}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_worker_and_bridge_import_only_the_standard_library_and_the_contract_at_load() -> None:
    own = {"__future__", "worker", "bridge", "ironclaw_contract"}
    for package in ("worker", "bridge"):
        for path in python_files(package):
            imported = module_level_imports(path) - own
            foreign = {name for name in imported if name not in sys.stdlib_module_names}
            assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)} at load"


def test_worker_and_bridge_never_import_the_orchestrator() -> None:
    for package in ("worker", "bridge"):
        for path in python_files(package):
            assert "orchestrator" not in all_imports(path), path


def test_the_worker_never_imports_the_bridge() -> None:
    for path in python_files("worker"):
        assert "bridge" not in all_imports(path), path


def test_the_orchestrator_imports_nothing_of_the_agents() -> None:
    for path in python_files("orchestrator"):
        imported = all_imports(path)
        assert not imported & {"worker", "bridge"}, path
        assert not imported & CUSTOM_TOOL_PACKAGES, path


def test_only_the_kubernetes_backend_imports_the_kubernetes_client() -> None:
    # The client is an optional extra: the builders and the status mapping are pure, and
    # nothing else of the orchestrator may need it to load.
    importers = {
        path.relative_to(SOURCES["orchestrator"]).as_posix()
        for path in python_files("orchestrator")
        if "kubernetes" in all_imports(path)
    }
    assert importers == {"containers/kubernetes_backend.py"}
