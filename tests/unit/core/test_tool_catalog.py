"""The operator's tool catalogues: loading, live reloads, grants and what a job is served."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest, JobMode
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import admit
from orchestrator.settings import Settings
from orchestrator.tool_catalog import ToolCatalog

WAT = b'(module (func (export "_start")))'


def write_mcp(base: Path, servers: dict[str, Any]) -> None:
    path = base / "mcp-servers.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    # Two writes within one mtime tick must still be told apart: move the clock on.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def write_wasm(base: Path, name: str, module: bytes = WAT, **manifest: Any) -> None:
    directory = base / "wasm-tools"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.wat").write_bytes(module)
    document = {"description": f"the {name} tool", "module": f"{name}.wat", **manifest}
    (directory / f"{name}.json").write_text(json.dumps(document))


def test_no_catalogue_files_means_empty_catalogues(tmp_path: Path) -> None:
    catalog = ToolCatalog(tmp_path)
    assert catalog.check() == (0, 0)
    assert catalog.grant([], [], []).mcp_servers == ()
    with pytest.raises(InvalidArgument, match="MCP server 'gh' is not in the catalogue"):
        catalog.grant(["gh"], [], [])
    with pytest.raises(InvalidArgument, match="WASM tool 'wc' is not in the catalogue"):
        catalog.grant([], ["wc"], [])


def test_grants_carry_the_entries_and_check_credentials(tmp_path: Path) -> None:
    write_mcp(
        tmp_path,
        {
            "gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "${credential:github}"}},
            "local": {"command": "local-mcp"},
            "off": {"command": "x", "disabled": True},
        },
    )
    catalog = ToolCatalog(tmp_path)
    assert catalog.check() == (3, 0)
    granted = catalog.grant(["gh", "local"], [], ["github"])
    assert granted.mcp_server_names == ("gh", "local")
    assert granted.mcp_servers[0]["env"] == {"GITHUB_TOKEN": "${credential:github}"}
    with pytest.raises(InvalidArgument, match="needs the credential grant\\(s\\) github"):
        catalog.grant(["gh"], [], [])
    with pytest.raises(InvalidArgument, match="known: gh, local, off"):
        catalog.grant(["nope"], [], [])
    with pytest.raises(InvalidArgument, match="'off' is disabled"):
        catalog.grant(["off"], [], [])
    with pytest.raises(InvalidArgument, match="named twice"):
        catalog.grant(["local", "local"], [], [])
    with pytest.raises(InvalidArgument, match="name must be"):
        catalog.grant(["../etc"], [], [])


def test_an_edited_catalogue_is_reloaded_and_a_broken_one_refuses_grants(tmp_path: Path) -> None:
    write_mcp(tmp_path, {"a": {"command": "a"}})
    catalog = ToolCatalog(tmp_path)
    assert catalog.grant(["a"], [], []).mcp_server_names == ("a",)
    write_mcp(tmp_path, {"b": {"command": "b"}})
    assert catalog.grant(["b"], [], []).mcp_server_names == ("b",)
    write_mcp(tmp_path, {"b": {"command": "b", "env": {"API_TOKEN": "in-clear"}}})
    with pytest.raises(FailedPrecondition, match=r"catalogue is invalid: .*API_TOKEN"):
        catalog.grant(["b"], [], [])
    with pytest.raises(ConfigError, match="API_TOKEN"):
        ToolCatalog(tmp_path).check()
    (tmp_path / "mcp-servers.json").write_text("{not json")
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        catalog.mcp_servers()


def test_wasm_tools_are_granted_by_hash_and_served_with_their_module(tmp_path: Path) -> None:
    write_wasm(tmp_path, "wc", workspace="read-only")
    catalog = ToolCatalog(tmp_path)
    assert catalog.check() == (0, 1)
    granted = catalog.grant([], ["wc"], [])
    [stored] = granted.wasm_tools
    assert stored["module_sha256"] == hashlib.sha256(WAT).hexdigest()
    assert "module_base64" not in stored
    served = catalog.served_tools(granted)
    [tool] = served["wasm_tools"]
    assert base64.b64decode(tool["module_base64"]) == WAT
    assert tool["workspace"] == "read-only"
    assert "module_sha256" not in tool
    assert served["unavailable"] == []

    # The module changed after the grant: the job is not handed a different one.
    write_wasm(tmp_path, "wc", module=b'(module (func (export "_start") nop))')
    served = catalog.served_tools(granted)
    assert served["wasm_tools"] == []
    assert "'wc': its module changed or vanished" in served["unavailable"][0]


def test_a_broken_wasm_manifest_names_its_file(tmp_path: Path) -> None:
    write_wasm(tmp_path, "bad", workspace="everything")
    catalog = ToolCatalog(tmp_path)
    with pytest.raises(FailedPrecondition, match=r"bad\.json"):
        catalog.grant([], ["bad"], [])
    with pytest.raises(ConfigError, match="workspace"):
        catalog.check()
    (tmp_path / "wasm-tools" / "bad.wat").unlink()
    write_wasm(tmp_path, "gone")
    (tmp_path / "wasm-tools" / "gone.wat").unlink()
    with pytest.raises(FailedPrecondition, match="does not exist"):
        catalog.grant([], ["gone"], [])


def test_claude_code_jobs_are_not_offered_custom_tools(tmp_path: Path) -> None:
    write_wasm(tmp_path, "wc")
    settings = Settings.from_env(
        {"IRONCLAW_BASE_DIR": str(tmp_path), "ANTHROPIC_API_KEY": "sk-ant-test-key"}
    )
    catalog = ToolCatalog(tmp_path)
    request = CreateJobRequest(task="x", mode=JobMode.CLAUDE_CODE, wasm_tools=("wc",))
    # Admission refuses it: nothing is recorded and no engine is involved.
    with pytest.raises(InvalidArgument, match="worker-mode jobs only"):
        admit(request, settings, catalog.grant)


def test_mcp_names_match_case_insensitively_and_the_job_sees_the_catalogue_spelling(
    tmp_path: Path,
) -> None:
    write_mcp(tmp_path, {"GitHub": {"command": "gh-mcp"}, "docs": {"command": "docs-mcp"}})
    catalog = ToolCatalog(tmp_path)
    granted = catalog.grant(["github", "DOCS"], [], [])
    assert granted.mcp_server_names == ("GitHub", "docs")
    assert [entry["name"] for entry in granted.mcp_servers] == ["GitHub", "docs"]
    with pytest.raises(InvalidArgument, match="named twice"):
        catalog.grant(["github", "GITHUB"], [], [])


def test_an_mcp_catalogue_with_names_equal_but_for_case_is_refused_at_load(
    tmp_path: Path,
) -> None:
    write_mcp(tmp_path, {"github": {"command": "a"}, "GitHub": {"command": "b"}})
    catalog = ToolCatalog(tmp_path)
    with pytest.raises(ConfigError, match="'github' and 'GitHub' differ only in case"):
        catalog.check()
    with pytest.raises(FailedPrecondition, match="differ only in case"):
        catalog.grant(["github"], [], [])


def test_wasm_names_match_case_insensitively_and_a_case_twin_is_refused(tmp_path: Path) -> None:
    write_wasm(tmp_path, "WordCount")
    catalog = ToolCatalog(tmp_path)
    granted = catalog.grant([], ["wordcount"], [])
    [stored] = granted.wasm_tools
    assert stored["name"] == "WordCount"
    [served] = catalog.served_tools(granted)["wasm_tools"]
    assert served["name"] == "WordCount"
    with pytest.raises(InvalidArgument, match="named twice"):
        catalog.grant([], ["wordcount", "WORDCOUNT"], [])

    write_wasm(tmp_path, "wordcount")
    with pytest.raises(ConfigError, match="'WordCount' and 'wordcount' differ only in case"):
        catalog.check()
    with pytest.raises(FailedPrecondition, match="differ only in case"):
        catalog.grant([], ["WordCount"], [])
