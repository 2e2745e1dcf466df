"""MCP catalogue entries: what is accepted, what is refused and why (no secrets in clear)."""

from __future__ import annotations

from typing import Any

import pytest

from ironclaw_contract.mcp_catalog import (
    McpConfigError,
    McpServerEntry,
    find_by_name,
    parse_catalog,
    parse_entry,
    resolve_references,
)


def test_a_stdio_entry_in_the_common_shape_is_accepted() -> None:
    entry = parse_entry(
        "files",
        {
            "command": "python3",
            "args": ["-m", "files_server", "--root", "/workspace"],
            "env": {"LOG_LEVEL": "info", "GITHUB_TOKEN": "${credential:github}"},
        },
        "test",
    )
    assert entry.transport == "stdio"
    assert entry.args == ("-m", "files_server", "--root", "/workspace")
    assert entry.credential_references() == {"github"}
    assert entry.startup_timeout_s == 30.0
    assert entry.call_timeout_s == 120.0


def test_an_http_entry_with_a_referenced_bearer_header_is_accepted() -> None:
    entry = parse_entry(
        "remote",
        {
            "type": "streamable-http",
            "url": "https://mcp.example.internal/mcp",
            "headers": {"Authorization": "Bearer ${credential:remote-api}"},
            "call_timeout_s": 30,
        },
        "test",
    )
    assert entry.transport == "http"
    assert entry.credential_references() == {"remote-api"}
    assert entry.call_timeout_s == 30.0


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../x", "a\\b", "x" * 33, "two__parts", "-lead", "sp ace", "dot.ted"],
)
def test_server_names_are_short_identifiers(name: str) -> None:
    with pytest.raises(McpConfigError, match="name must be"):
        parse_entry(name, {"command": "true"}, "test")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"command": "srv", "env": {"GITHUB_TOKEN": "ghp_notareference"}}, "env GITHUB_TOKEN"),
        ({"command": "srv", "env": {"DB_PASSWORD": "hunter2"}}, "env DB_PASSWORD"),
        ({"command": "srv", "env": {"OPENAI_API_KEY": "abc"}}, "env OPENAI_API_KEY"),
        ({"url": "https://h/mcp", "headers": {"Authorization": "Bearer abc"}}, "header Auth"),
        ({"url": "https://h/mcp", "headers": {"X-Api-Key": "abc"}}, "header X-Api-Key"),
        (
            {"command": "srv", "args": ["--verbose", "ghp_" + "a" * 36]},
            "args\\[1\\] looks like a credential",
        ),
        ({"command": "srv", "args": ["--token", "plain-value"]}, "args\\[1\\] is the value"),
        ({"command": "srv", "args": ["--api-key=plain-value"]}, "args\\[0\\] passes --api-key"),
        ({"command": "srv", "env": {"NOTE": "sk-" + "b" * 40}}, "env NOTE looks like"),
        (
            {"command": "srv", "env": {"DATABASE_URL": "postgres://app:hunter2@db/x"}},
            "env DATABASE_URL holds a URL with a password",
        ),
        (
            {"url": "https://h/mcp?access_token=abc"},
            "url holds a URL whose query parameter 'access_token'",
        ),
        (
            {"url": "https://h/mcp", "headers": {"X-Custom": "Bearer abcdefgh12345678"}},
            "header X-Custom looks like a credential",
        ),
        ({"url": "https://user:pw@h/mcp"}, "must not carry credentials"),
    ],
)
def test_secrets_in_clear_are_refused_with_the_fix(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(McpConfigError, match=message) as caught:
        parse_entry("srv", raw, "catalogue")
    assert "credential" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "needs a command"),
        ({"command": ""}, "command: must be a non-empty string"),
        ({"command": "srv", "args": "not-a-list"}, "args must be a list"),
        ({"command": "srv", "args": [1]}, "args\\[0\\]"),
        ({"command": "srv", "env": {"LD_PRELOAD": "/x.so"}}, "env LD_PRELOAD is reserved"),
        ({"command": "srv", "env": {"IRONCLAW_WORKER_TOKEN": "x"}}, "reserved"),
        ({"command": "srv", "env": {"1BAD": "x"}}, "not a valid name"),
        ({"command": "srv", "cwd": "/etc"}, "unknown key\\(s\\) cwd"),
        ({"type": "sse", "url": "https://h/sse"}, "SSE transport is deprecated"),
        ({"url": "ftp://h/mcp"}, "http:// or https://"),
        ({"command": "srv", "url": "https://h"}, "takes command/args/env"),
        ({"command": "srv", "startup_timeout_s": 0}, "startup_timeout_s"),
        ({"command": "srv", "call_timeout_s": True}, "call_timeout_s"),
        ({"url": "https://h/mcp", "headers": {"X-A": "a\r\nInjected: 1"}}, "line break"),
    ],
)
def test_malformed_entries_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(McpConfigError, match=message):
        parse_entry("srv", raw, "catalogue")


def test_a_catalogue_names_the_file_and_the_server_in_its_errors() -> None:
    with pytest.raises(McpConfigError, match=r"servers\.json: server 'bad'"):
        parse_catalog({"mcpServers": {"ok": {"command": "a"}, "bad": {}}}, "servers.json")
    with pytest.raises(McpConfigError, match="unknown key"):
        parse_catalog({"servers": {}}, "servers.json")
    assert parse_catalog({}, "servers.json") == {}
    assert set(parse_catalog({"mcpServers": {"a": {"command": "x"}}}, "f")) == {"a"}


def test_the_wire_form_round_trips_and_is_validated_again() -> None:
    entry = parse_entry(
        "gh", {"command": "gh-mcp", "env": {"GH_TOKEN": "${credential:github}"}}, "test"
    )
    assert McpServerEntry.from_wire(entry.to_wire()) == entry
    tampered = {**entry.to_wire(), "env": {"GH_TOKEN": "ghp_" + "c" * 36}}
    with pytest.raises(McpConfigError, match="env GH_TOKEN"):
        McpServerEntry.from_wire(tampered)
    with pytest.raises(McpConfigError, match="no name"):
        McpServerEntry.from_wire({"command": "x"})


def test_references_resolve_to_granted_values_and_name_a_missing_grant() -> None:
    credentials = {"api": "s3cr3t-value"}
    assert resolve_references("Bearer ${credential:api}", credentials) == "Bearer s3cr3t-value"
    assert resolve_references("plain", credentials) == "plain"
    with pytest.raises(McpConfigError, match="credential 'other' is not granted") as caught:
        resolve_references("${credential:other}", credentials)
    assert "s3cr3t" not in str(caught.value)


def test_a_catalogue_with_two_names_equal_but_for_case_is_refused() -> None:
    with pytest.raises(McpConfigError, match="'Docs' and 'docs' differ only in case"):
        parse_catalog(
            {"mcpServers": {"Docs": {"command": "a"}, "docs": {"command": "b"}}}, "mcp.json"
        )


def test_names_are_found_case_insensitively_in_the_catalogue_spelling() -> None:
    entries = {"GitHub": 1, "docs": 2}
    assert find_by_name(entries, "github") == ("GitHub", 1)
    assert find_by_name(entries, "DOCS") == ("docs", 2)
    assert find_by_name(entries, "git") is None
