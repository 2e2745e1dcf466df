"""Admission on its own: every string of a CreateJob request is bounded in length and
characters, names follow their patterns whole (a trailing newline is no way around them), and
each refusal is an INVALID_ARGUMENT naming the field, never echoing a secret."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import (
    NO_TOOLS,
    CreateJobRequest,
    CredentialGrant,
    GrantedTools,
    JobLimitOverrides,
    JobMode,
)
from orchestrator.errors import FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import MAX_TASK_CHARS, admit, parse_job_id
from orchestrator.secrets import Secret
from orchestrator.settings import Settings

SECRET = "ghp_" + "s" * 36


def no_tools(mcp: Iterable[str], wasm: Iterable[str], credentials: Iterable[str]) -> GrantedTools:
    assert not list(mcp)
    assert not list(wasm)
    return NO_TOOLS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path)})


def grant(name: str = "github", value: str = SECRET, env_name: str = "", kind: str = "") -> Any:
    return CredentialGrant(name=name, credential_type=kind, value=Secret(value), env_name=env_name)


def refused(settings: Settings, match: str, **fields: Any) -> InvalidArgument:
    request = CreateJobRequest(**{"task": "build it", **fields})
    with pytest.raises(InvalidArgument, match=match) as caught:
        admit(request, settings, no_tools)
    assert SECRET not in str(caught.value)
    return caught.value


def test_a_plain_request_is_admitted_with_the_settings_defaults(settings: Settings) -> None:
    job = admit(CreateJobRequest(task="  build it  "), settings, no_tools)
    assert job.task == "build it"
    assert job.mode is JobMode.WORKER
    assert job.limits.max_iterations == settings.worker_max_iterations
    assert job.limits.llm_token_budget == settings.job_llm_token_budget
    assert parse_job_id(job.job_id) == job.job_id
    assert job.tools is NO_TOOLS


def test_a_client_chosen_id_is_normalized_and_anything_else_refused(settings: Settings) -> None:
    raw = "8C5C1F3E-0000-4000-8000-000000000001"
    job = admit(CreateJobRequest(task="x", job_id=raw), settings, no_tools)
    assert job.job_id == raw.lower()
    refused(settings, "is not a UUID", job_id="../../etc")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"task": "   "}, "task is empty"),
        ({"task": "x" * (MAX_TASK_CHARS + 1)}, "task is 100001 characters"),
        ({"task": "run\x00it"}, "task holds the control character U\\+0000"),
        ({"task": "run\x1b[2Jit"}, "task holds the control character U\\+001B"),
        ({"project_dir": "/p/a\x00b"}, "project_dir holds the control character"),
        ({"project_dir": "/p/" + "a" * 5000}, "project_dir is 5003 characters"),
        ({"project_dir": "/p/a\nb"}, "project_dir holds a line break"),
    ],
)
def test_task_and_project_strings_are_bounded(
    settings: Settings, fields: dict[str, Any], match: str
) -> None:
    refused(settings, match, **fields)


def test_tabs_and_newlines_are_fine_in_a_task(settings: Settings) -> None:
    job = admit(CreateJobRequest(task="step 1\n\tstep 2"), settings, no_tools)
    assert job.task == "step 1\n\tstep 2"


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"k\n": "v"}, "label key 'k\\\\n' is invalid"),
        ({"-k": "v"}, "label key '-k' is invalid"),
        ({"k" * 64: "v"}, "is invalid"),
        ({"k": "v\x00"}, "label 'k' holds the control character U\\+0000"),
        ({"k": "v" * 10_000_000}, "label 'k' is 10000000 characters"),
        ({"k": "line\nbreak"}, "label 'k' holds a line break"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32 labels"),
    ],
)
def test_labels_are_bounded(settings: Settings, labels: dict[str, str], match: str) -> None:
    refused(settings, match, labels=labels)


@pytest.mark.parametrize(
    ("credential", "match"),
    [
        (grant(name="GitHub"), "credential name 'GitHub' is invalid"),
        (grant(name="github\n"), "credential name 'github\\\\n' is invalid"),
        (grant(env_name="PATH\n"), "env name 'PATH\\\\n' must be"),
        (grant(env_name="BASH_ENV\n"), "env name 'BASH_ENV\\\\n' must be"),
        (grant(env_name="BASH_ENV"), "is reserved"),
        (grant(env_name="GIT_CONFIG_PARAMETERS"), "is reserved"),
        (grant(env_name="JAVA_TOOL_OPTIONS"), "is reserved"),
        (grant(env_name="HTTPS_PROXY"), "is reserved"),
        (grant(env_name="PYTHONWARNINGS"), "is reserved"),
        (grant(env_name="NODE_OPTIONS"), "is reserved"),
        (grant(env_name="PS4"), "is reserved"),
        (grant(env_name="SHELLOPTS"), "is reserved"),
        (grant(env_name="IRONCLAW_WORKER_TOKEN"), "is reserved"),
        (grant(env_name="ANTHROPIC_BASE_URL"), "is reserved"),
        (grant(value=""), "has an empty value"),
        (grant(value="ab\x00cd"), "its value holds a NUL byte"),
        (grant(value="x" * (10 * 1024 * 1024)), "longer than 65536 bytes"),
        (grant(kind="Api Token"), "type 'Api Token' must be"),
    ],
)
def test_credential_grants_are_bounded(settings: Settings, credential: Any, match: str) -> None:
    refused(settings, match, credentials=(credential,))


def test_a_grant_gets_its_default_env_name(settings: Settings) -> None:
    job = admit(
        CreateJobRequest(task="x", credentials=(grant(name="my-registry"),)), settings, no_tools
    )
    assert job.grants[0].env_name == "MY_REGISTRY_TOKEN"
    assert job.grants[0].credential_type == "api_token"


def test_two_grants_may_not_share_a_name_or_an_env_name(settings: Settings) -> None:
    refused(settings, "granted twice", credentials=(grant(), grant()))
    refused(
        settings,
        "used by two credentials",
        credentials=(grant("a", env_name="X_TOKEN"), grant("b", env_name="X_TOKEN")),
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (JobLimitOverrides(max_iterations=0), "limits.max_iterations=0 is out of range"),
        (JobLimitOverrides(memory_mb=8), "limits.memory_mb=8 is out of range"),
        (JobLimitOverrides(llm_token_budget=-1), "limits.llm_token_budget=-1"),
        (JobLimitOverrides(llm_max_tokens_per_call=10**7), "llm_max_tokens_per_call"),
        (JobLimitOverrides(claude_model="claude sonnet@x"), "model name 'claude sonnet@x'"),
        (JobLimitOverrides(claude_model="sonnet\n"), "model name 'sonnet\\\\n'"),
    ],
)
def test_limits_are_checked_against_their_ranges(
    settings: Settings, overrides: JobLimitOverrides, match: str
) -> None:
    refused(settings, match, limits=overrides)


def test_claude_code_needs_a_credential_on_the_orchestrator(settings: Settings) -> None:
    with pytest.raises(FailedPrecondition, match="ANTHROPIC_API_KEY"):
        admit(CreateJobRequest(task="x", mode=JobMode.CLAUDE_CODE), settings, no_tools)


def test_tool_names_are_bounded_before_the_catalogue_is_read(settings: Settings) -> None:
    def catalogue(*_: Any) -> GrantedTools:
        raise AssertionError("the catalogue must not be read for a malformed name")

    request = CreateJobRequest(task="x", mcp_servers=("a\x00b",))
    with pytest.raises(InvalidArgument, match="tool name holds the control character"):
        admit(request, settings, catalogue)
    request = CreateJobRequest(task="x", wasm_tools=tuple(f"t{i}" for i in range(65)))
    with pytest.raises(InvalidArgument, match="at most 64 custom tools"):
        admit(request, settings, catalogue)
