"""The tool registry: specs, dispatch, error results and secret masking."""

from __future__ import annotations

from pathlib import Path

from worker.tools import Tool, ToolContext, ToolRegistry


def test_specs_name_every_tool_with_a_schema(registry: ToolRegistry) -> None:
    specs = registry.specs()
    assert [s["name"] for s in specs] == [
        "shell",
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "glob",
        "grep",
    ]
    for spec in specs:
        assert set(spec) == {"name", "description", "parameters"}
        assert spec["description"]
        assert spec["parameters"]["type"] == "object"
        for required in spec["parameters"]["required"]:
            assert required in spec["parameters"]["properties"]


def test_unknown_tool_is_an_error_result(registry: ToolRegistry) -> None:
    result = registry.call("rm_rf", {})
    assert result.is_error
    assert "unknown tool 'rm_rf'" in result.output
    assert "shell" in result.output


def test_arguments_may_arrive_as_json_text(registry: ToolRegistry, workspace: Path) -> None:
    result = registry.call("write_file", '{"path": "j.txt", "content": "from json"}')
    assert not result.is_error, result.output
    assert (workspace / "j.txt").read_text() == "from json"


def test_invalid_json_arguments_are_an_error_result(registry: ToolRegistry) -> None:
    result = registry.call("read_file", '{"path": ')
    assert result.is_error
    assert "not valid JSON" in result.output


def test_non_object_arguments_are_an_error_result(registry: ToolRegistry) -> None:
    result = registry.call("read_file", "[1, 2]")
    assert result.is_error
    assert "JSON object" in result.output


def test_a_crashing_tool_becomes_an_error_result(context: ToolContext) -> None:
    def explode(ctx: ToolContext, args: object) -> str:
        raise RuntimeError("boom")

    tool = Tool("explode", "always fails", {"type": "object", "properties": {}}, explode)
    result = ToolRegistry(context, [tool]).call("explode", {})
    assert result.is_error
    assert "RuntimeError: boom" in result.output


def test_credential_values_are_masked_in_outputs(workspace: Path) -> None:
    (workspace / "leak.txt").write_text("token=ghp_supersecret123 end\n")
    context = ToolContext(workspace=workspace, secrets=("ghp_supersecret123",))
    result = ToolRegistry(context).call("read_file", {"path": "leak.txt"})
    assert result.output == "token=*** end\n"
