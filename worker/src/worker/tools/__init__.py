"""The worker's tools: shell, file and search tools confined to the workspace, and their registry.

One module per tool group; :class:`ToolRegistry` gives their specs to the model and dispatches
its calls.
"""

from worker.tools.base import Tool, ToolContext, ToolError, ToolResult
from worker.tools.registry import ToolRegistry, default_tools
from worker.tools.shell import tool_environment

__all__ = [
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "default_tools",
    "tool_environment",
]
