"""Fixtures for the worker's unit tests: a workspace and the tools working in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.tools import ToolContext, ToolRegistry, tool_environment


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, which no tool may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("outside secret\n")
    return path


@pytest.fixture
def context(workspace: Path) -> ToolContext:
    return ToolContext(workspace=workspace, env=tool_environment(os.environ, {}))


@pytest.fixture
def registry(context: ToolContext) -> ToolRegistry:
    return ToolRegistry(context)
