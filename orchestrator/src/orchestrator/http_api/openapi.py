"""The OpenAPI 3 document of the worker API, generated from the models that validate it."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestrator.http_api import schemas
from orchestrator.http_api.anthropic_route import openapi_paths
from orchestrator.http_api.openai_route import openapi_paths as openai_openapi_paths

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Malformed path or body (e.g. a job id that is not a UUID, invalid JSON)",
    "401": "Invalid bearer token (missing, unknown, revoked, or another job's)",
    "413": "Request body too large",
    "422": "The body does not match the schema",
    "503": "The job is still starting (its workspace not yet verified): retry after Retry-After",
}
_REPORT_ERRORS = {
    "429": "Too many status lines and events (refusal rate_limited): wait Retry-After seconds",
}
_LLM_ERRORS = {
    "403": "The model is not allowed for this job (refusal model_not_allowed)",
    "429": "The job's LLM budget is exhausted (refusal call_budget_exhausted or "
    "token_budget_exhausted; the message has the numbers)",
    "502": "The provider failed (its reason, no secrets)",
    "503": "No provider configured, or the job is still starting (then with Retry-After)",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    response: type[BaseModel] | dict[str, Any] | None,
    body: type[BaseModel] | None = None,
    extra: dict[str, str] | None = None,
    ok_status: str = "200",
    authenticated: bool = True,
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if response is not None:
        schema = _ref(response) if isinstance(response, type) else response
        responses[ok_status] = {"description": "OK", **_json(schema)}
    errors = dict(_ERRORS if authenticated else {})
    if body is None:
        errors.pop("413", None)
        errors.pop("422", None)
    errors.update(extra or {})
    for code, text in errors.items():
        responses[code] = {"description": text, **_json(_ref(schemas.ErrorBody))}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if authenticated:
        op["security"] = [{"bearer": []}]
        op["parameters"] = [
            {
                "name": "job_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        ]
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    return op


_GZIP = {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}
_WORKSPACE_ERRORS = {
    "409": "The job's /workspace is its mounted project directory (nothing to move), or the "
    "job has ended",
}


def _workspace_paths() -> dict[str, Any]:
    fetch = _operation(
        "The job's project as a .tar.gz, to unpack into its empty /workspace (a backend "
        "without host paths: GET /job's workspace_sync)",
        None,
        extra=_WORKSPACE_ERRORS,
    )
    fetch["responses"]["200"] = {"description": "The archive, streamed", "content": _GZIP}
    push = _operation(
        "Push the job's /workspace back as a .tar.gz, before its result; what "
        "DownloadWorkspace serves",
        schemas.WorkspacePushed,
        extra={**_WORKSPACE_ERRORS, "413": "Larger than WORKSPACE_UPLOAD_MAX_MB as sent"},
    )
    push["responses"].pop("422", None)
    # Sent as octet-stream (a .tar.gz all the same): what generic clients and tools send bytes
    # as; the server reads the archive's own magic, not the header.
    push["requestBody"] = {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    return {"/worker/{job_id}/workspace": {"get": fetch, "put": push}}


@functools.cache
def build_openapi() -> dict[str, Any]:
    """The document served at ``GET /openapi.json`` (built once)."""
    models: list[type[BaseModel]] = [
        schemas.ErrorBody,
        schemas.OkBody,
        schemas.JobInfo,
        schemas.ToolsInfo,
        schemas.CompleteRequest,
        schemas.CompleteWithToolsRequest,
        schemas.CompletionBody,
        schemas.ToolCompletionBody,
        schemas.StatusRequest,
        schemas.EventRequest,
        schemas.PromptBody,
        schemas.JobCompleteRequest,
        schemas.HealthBody,
        schemas.WarmClaimBody,
        schemas.WorkspacePushed,
    ]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    prompt_ok = _operation("Next follow-up prompt", schemas.PromptBody)
    prompt_ok["responses"]["204"] = {"description": "No follow-up is queued"}
    claim = _operation(
        "A warm-pool slot waits for its job (bearer: the slot's claim secret)",
        schemas.WarmClaimBody,
        extra={"401": "Unknown or retired slot, or a wrong secret"},
    )
    claim["responses"]["204"] = {"description": "No job claimed the slot yet: poll again"}
    claim["parameters"][0]["name"] = "slot_id"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ironclaw worker API",
            "version": "1",
            "description": "The only door out of a job container. Every /worker/{job_id} route "
            "needs that job's bearer token, but the Anthropic route of a Claude Code job or of "
            "an agent that speaks it, which needs the job's LLM key (GET /job: claude.api_key), "
            "and the OpenAI-compatible routes, which take the token or the LLM key as a bearer "
            "token or x-api-key. An agent job's LLM key also opens its /complete. A refusal's "
            "error body carries a machine-readable refusal code.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "llm_key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "paths": {
            "/health": {"get": _operation("Liveness", schemas.HealthBody, authenticated=False)},
            "/warm/{slot_id}/claim": {"get": claim},
            "/worker/{job_id}/job": {"get": _operation("The job's metadata", schemas.JobInfo)},
            "/worker/{job_id}/credentials": {
                "get": _operation(
                    "Granted credentials (name → value)",
                    {"type": "object", "additionalProperties": {"type": "string"}},
                )
            },
            "/worker/{job_id}/tools": {
                "get": _operation("Custom tools granted to the job (MCP, WASM)", schemas.ToolsInfo)
            },
            "/worker/{job_id}/status": {
                "post": _operation(
                    "Report status", schemas.OkBody, schemas.StatusRequest, _REPORT_ERRORS
                )
            },
            "/worker/{job_id}/event": {
                "post": _operation(
                    "Record an event", schemas.OkBody, schemas.EventRequest, _REPORT_ERRORS
                )
            },
            "/worker/{job_id}/prompt": {"get": prompt_ok},
            "/worker/{job_id}/complete": {
                "post": _operation(
                    "Report the job's one result (an agent job: with its token or its LLM key)",
                    schemas.OkBody,
                    schemas.JobCompleteRequest,
                )
            },
            "/worker/{job_id}/llm/complete": {
                "post": _operation(
                    "LLM completion", schemas.CompletionBody, schemas.CompleteRequest, _LLM_ERRORS
                )
            },
            "/worker/{job_id}/llm/complete_with_tools": {
                "post": _operation(
                    "LLM completion with tools",
                    schemas.ToolCompletionBody,
                    schemas.CompleteWithToolsRequest,
                    _LLM_ERRORS,
                )
            },
            **_workspace_paths(),
            **openapi_paths(),
            **openai_openapi_paths(),
        },
    }
