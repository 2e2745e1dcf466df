"""WASM tool manifests: the catalogue shape, the wire form, and every field's validation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from ironclaw_contract.wasm_catalog import (
    BUILTIN_TOOL_NAMES,
    MAX_MODULE_BYTES,
    WasmLimits,
    WasmManifestError,
    WasmToolManifest,
    check_tool_name,
    parse_wasm_manifest,
)
from tests.conftest import ROOT
from worker.tools.registry import default_tools

WHERE = "/srv/ironclaw/wasm-tools/tool.json"


def _manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"description": "Does a thing.", "module": "tool.wat"}
    document.update(changes)
    return document


def _reject(document: object, *fragments: str, name: str = "tool") -> str:
    with pytest.raises(WasmManifestError) as caught:
        parse_wasm_manifest(name, document, WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_minimal_manifest_gets_the_defaults() -> None:
    manifest = parse_wasm_manifest("tool", _manifest(), WHERE)
    assert manifest == WasmToolManifest(
        name="tool",
        description="Does a thing.",
        module="tool.wat",
        parameters={"type": "object", "properties": {}},
        workspace="none",
        limits=WasmLimits(
            fuel=1_000_000_000, memory_mb=64, timeout_s=10.0, max_output_bytes=1_048_576
        ),
    )


def test_full_manifest_is_read_as_written() -> None:
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    }
    document = _manifest(
        module="tool.wasm",
        parameters=parameters,
        workspace="read-only",
        limits={"fuel": 5, "memory_mb": 2, "timeout_s": 1.5, "max_output_bytes": 100},
    )
    manifest = parse_wasm_manifest("my_tool-2", document, WHERE)
    assert manifest.name == "my_tool-2"
    assert manifest.module == "tool.wasm"
    assert manifest.parameters == parameters
    assert manifest.workspace == "read-only"
    assert manifest.limits == WasmLimits(fuel=5, memory_mb=2, timeout_s=1.5, max_output_bytes=100)
    # The manifest keeps its own copy: a later change to the document does not reach it.
    parameters["properties"]["path"]["type"] = "integer"
    assert manifest.parameters["properties"]["path"]["type"] == "string"


def test_the_shipped_example_manifest_is_valid() -> None:
    path = ROOT / "deploy" / "wasm-tools" / "word-count.json"
    manifest = parse_wasm_manifest(path.stem, json.loads(path.read_text()), str(path))
    assert manifest.name == "word-count"
    assert (path.parent / manifest.module).is_file()
    assert manifest.workspace == "none"
    assert manifest.parameters["required"] == ["text"]


@pytest.mark.parametrize(
    "name",
    ["", "-lead", "_lead", "a" * 33, "has space", "dot.ted", "slash/ed", "mcp__tool", "a__", "é"],
)
def test_bad_names_are_rejected(name: str) -> None:
    _reject(_manifest(), "name", name=name)


@pytest.mark.parametrize("name", ["a", "A9", "word-count", "snake_case", "a_b-c", "x" * 32])
def test_good_names_are_accepted(name: str) -> None:
    assert parse_wasm_manifest(name, _manifest(), WHERE).name == name


@pytest.mark.parametrize("document", [None, [], "text", 3])
def test_a_manifest_must_be_an_object(document: object) -> None:
    _reject(document, "JSON object")


def test_unknown_keys_are_rejected() -> None:
    _reject(_manifest(command="rm -rf /"), "unknown key(s) command")


@pytest.mark.parametrize("description", [None, "", "   ", 5, ["a"], "x" * 1025])
def test_bad_descriptions_are_rejected(description: object) -> None:
    document = _manifest(description=description)
    if description is None:
        del document["description"]
    _reject(document, "'description'")


def test_description_may_be_1024_characters() -> None:
    assert len(parse_wasm_manifest("t", _manifest(description="x" * 1024), WHERE).description) == (
        1024
    )


@pytest.mark.parametrize(
    "module",
    [
        None,
        5,
        "",
        "tool",
        "tool.js",
        "tool.wasm.txt",
        "../tool.wasm",
        "sub/tool.wasm",
        "/abs/tool.wasm",
        "sub\\tool.wasm",
        "..wasm",
        "a..b.wasm",
        ".hidden.wasm",
        ".wasm",
    ],
)
def test_bad_module_names_are_rejected(module: object) -> None:
    document = _manifest(module=module)
    if module is None:
        del document["module"]
    _reject(document, "'module'")


@pytest.mark.parametrize("module", ["tool.wasm", "tool.wat", "word_count.wat", "v1.2-tool+x.wasm"])
def test_good_module_names_are_accepted(module: str) -> None:
    assert parse_wasm_manifest("t", _manifest(module=module), WHERE).module == module


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ([], "'parameters'"),
        ({}, "'parameters'"),
        ({"type": "string"}, "'parameters'"),
        ({"type": "object", "properties": []}, "'parameters.properties'"),
        ({"type": "object", "required": "text"}, "'parameters.required'"),
        ({"type": "object", "required": [1]}, "'parameters.required'"),
    ],
)
def test_bad_parameters_are_rejected(parameters: object, field: str) -> None:
    _reject(_manifest(parameters=parameters), field)


@pytest.mark.parametrize("workspace", ["rw", "READ-ONLY", "", None, True, ["read-only"]])
def test_bad_workspace_access_is_rejected(workspace: object) -> None:
    _reject(_manifest(workspace=workspace), "'workspace'", "none, read-only, read-write")


@pytest.mark.parametrize("workspace", ["none", "read-only", "read-write"])
def test_each_workspace_access_is_accepted(workspace: str) -> None:
    assert parse_wasm_manifest("t", _manifest(workspace=workspace), WHERE).workspace == workspace


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fuel", 0),
        ("fuel", 10**12 + 1),
        ("fuel", 1.5),
        ("fuel", True),
        ("fuel", "100"),
        ("memory_mb", 0),
        ("memory_mb", 4097),
        ("memory_mb", None),
        ("timeout_s", 0),
        ("timeout_s", -1),
        ("timeout_s", 300.5),
        ("timeout_s", float("nan")),
        ("timeout_s", float("inf")),
        ("timeout_s", False),
        ("timeout_s", "10"),
        ("max_output_bytes", 0),
        ("max_output_bytes", 16 * 1024 * 1024 + 1),
    ],
)
def test_limits_out_of_bounds_are_rejected(key: str, value: object) -> None:
    _reject(_manifest(limits={key: value}), f"'limits.{key}'")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fuel", 1),
        ("fuel", 10**12),
        ("memory_mb", 1),
        ("memory_mb", 4096),
        ("timeout_s", 0.001),
        ("timeout_s", 300),
        ("max_output_bytes", 1),
        ("max_output_bytes", 16 * 1024 * 1024),
    ],
)
def test_limits_at_their_bounds_are_accepted(key: str, value: float) -> None:
    limits = parse_wasm_manifest("t", _manifest(limits={key: value}), WHERE).limits
    assert getattr(limits, key) == value


def test_integral_floats_count_as_integers() -> None:
    limits = parse_wasm_manifest("t", _manifest(limits={"memory_mb": 8.0}), WHERE).limits
    assert limits.memory_mb == 8
    assert isinstance(limits.memory_mb, int)


def test_limits_must_be_an_object_of_known_keys() -> None:
    _reject(_manifest(limits=[]), "'limits'")
    _reject(_manifest(limits={"cpu": 1}), "'limits'", "cpu")


# ---------------------------------------------------------------- wire form


def test_wire_round_trip_keeps_everything_and_the_module_bytes() -> None:
    manifest = parse_wasm_manifest(
        "tool",
        _manifest(
            module="tool.wasm",
            workspace="read-write",
            limits={"fuel": 7, "memory_mb": 3, "timeout_s": 2, "max_output_bytes": 9},
        ),
        WHERE,
    )
    module = b"\0asm\x01\0\0\0"
    wire = manifest.to_wire(module)
    assert set(wire) == {
        "name",
        "description",
        "parameters",
        "workspace",
        "limits",
        "module_base64",
    }
    assert wire["limits"] == {"fuel": 7, "memory_mb": 3, "timeout_s": 2.0, "max_output_bytes": 9}
    # It is JSON: what the worker API sends.
    received, received_module = WasmToolManifest.from_wire(json.loads(json.dumps(wire)))
    assert received_module == module
    assert received == manifest
    assert received.module == "tool.wasm"


def test_wire_module_name_follows_the_module_kind() -> None:
    manifest = parse_wasm_manifest("tool", _manifest(), WHERE)
    received, module = WasmToolManifest.from_wire(manifest.to_wire(b"(module)"))
    assert module == b"(module)"
    assert received.module == "tool.wat"


def test_wire_form_without_module_leaves_it_out() -> None:
    wire = parse_wasm_manifest("tool", _manifest(), WHERE).to_wire(None)
    assert "module_base64" not in wire
    with pytest.raises(WasmManifestError, match="module_base64"):
        WasmToolManifest.from_wire(wire)


def _wire(**changes: Any) -> dict[str, Any]:
    wire = parse_wasm_manifest("tool", _manifest(), WHERE).to_wire(b"(module)")
    wire.update(changes)
    return wire


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (None, "JSON object"),
        ({}, "'name'"),
        (_wire(name="a__b"), "name"),
        (_wire(name="../x"), "name"),
        (_wire(description=""), "'description'"),
        (_wire(parameters={"type": "array"}), "'parameters'"),
        (_wire(workspace="all"), "'workspace'"),
        (_wire(limits={"fuel": 0}), "'limits.fuel'"),
        (_wire(module="x.wasm"), "unknown key(s) module"),
        (_wire(module_base64=""), "'module_base64'"),
        (_wire(module_base64="!!not base64!!"), "'module_base64'"),
        (_wire(module_base64=5), "'module_base64'"),
    ],
)
def test_bad_wire_documents_are_rejected(document: object, fragment: str) -> None:
    with pytest.raises(WasmManifestError) as caught:
        WasmToolManifest.from_wire(document)
    assert fragment in str(caught.value)


def test_module_size_is_limited_on_both_sides() -> None:
    manifest = parse_wasm_manifest("tool", _manifest(), WHERE)
    too_big = b"\0asm" + b"\0" * MAX_MODULE_BYTES
    with pytest.raises(WasmManifestError, match="limit"):
        manifest.to_wire(too_big)
    with pytest.raises(WasmManifestError, match="empty"):
        manifest.to_wire(b"")
    encoded = base64.b64encode(too_big).decode()
    with pytest.raises(WasmManifestError, match=str(MAX_MODULE_BYTES)):
        WasmToolManifest.from_wire(_wire(module_base64=encoded))
    # A module exactly at the limit passes.
    at_limit = b"\0asm" + b"\0" * (MAX_MODULE_BYTES - 4)
    _, module = WasmToolManifest.from_wire(manifest.to_wire(at_limit))
    assert len(module) == MAX_MODULE_BYTES


def test_the_built_in_tool_names_are_reserved() -> None:
    assert {tool.name for tool in default_tools()} == BUILTIN_TOOL_NAMES
    for name in BUILTIN_TOOL_NAMES:
        with pytest.raises(ValueError, match="built-in tool's"):
            check_tool_name(name, "catalogue")
        # Compared as every catalogue name is: without regard to case.
        with pytest.raises(ValueError, match="built-in tool's"):
            check_tool_name(name.upper(), "catalogue")
