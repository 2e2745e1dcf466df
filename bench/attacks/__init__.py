"""Attacks on a running orchestrator, for the benchmark that measures how the service holds up
while one of its jobs (or a token holder) misbehaves: ``/health`` and a gRPC ``GetJob`` of an
unrelated job are timed before and during each attack, against the same orchestrator.

Each attack lives in its own module here and exposes one coroutine of the :data:`Attack` type:
it sets up what it needs through the control plane (its own jobs, in real containers), runs
until ``stop`` is set, cleans up, and returns the figures that say what it achieved (requests
sent, refused, bytes retained, ...), so a report shows both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AttackTarget:
    """The orchestrator under attack, as the attack reaches it from the host."""

    grpc_target: str  # host:port of the control plane (plaintext, no admin token)
    worker_api_url: str  # http://host:port of the worker API, from the host
    base_dir: Path  # its IRONCLAW_BASE_DIR (projects under base_dir / "projects")
    pid: int  # the orchestrator's process, for its RSS, fds and CPU time
    settings_env: Mapping[str, str]  # the environment it was started with
    # Sleep jobs started for the attacks' use, (job_id, token); the runner's own victim job,
    # whose GetJob is timed, is not among them.
    jobs: tuple[tuple[str, str], ...] = ()


Attack = Callable[[AttackTarget, asyncio.Event], Awaitable[dict[str, Any]]]
