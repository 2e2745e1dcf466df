"""The job's git workspace: cloned into the (empty) workspace before the agent starts, when
``GET /job`` names one (``git``: url and ref).

The clone runs with the environment the job's commands get: on an isolated network that is the
egress gateway's proxy and CA, so the clone goes out under the job's egress policy and a
private repository's token is injected by the gateway, never held here. No credential is put
on the command line or in the URL, and git is told never to prompt for one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ironclaw_contract.secret_patterns import mask_secrets

CLONE_TIMEOUT_S = 900.0
_ERROR_TAIL_CHARS = 1500


class CheckoutFailed(Exception):
    """The workspace could not be cloned; the message says why, for the job's result."""


@dataclass(frozen=True)
class GitWorkspace:
    url: str
    ref: str = ""


def git_workspace(job: Mapping[str, Any]) -> GitWorkspace | None:
    """The ``git`` section of ``GET /job``, if the job has one."""
    info = job.get("git")
    if not isinstance(info, Mapping) or not isinstance(info.get("url"), str):
        return None
    ref = info.get("ref")
    return GitWorkspace(url=info["url"], ref=ref if isinstance(ref, str) else "")


def clone_workspace(
    source: GitWorkspace,
    workspace: Path,
    env: Mapping[str, str],
    secrets: Iterable[str] = (),
    timeout_s: float = CLONE_TIMEOUT_S,
) -> str:
    """Clones ``source`` into ``workspace`` (which must be empty) and checks out its ref;
    returns a line saying what is checked out. Raises CheckoutFailed."""
    if any(workspace.iterdir()):
        raise CheckoutFailed(f"cannot clone {source.url}: the workspace {workspace} is not empty")
    git_env = {**env, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    hidden = [secret for secret in secrets if secret]
    _git(["clone", "--quiet", "--", source.url, "."], workspace, git_env, hidden, timeout_s)
    if source.ref:
        # "--" makes the ref a revision, never a path; a remote branch is checked out as a
        # local branch tracking it, a tag or a commit detached.
        _git(["checkout", "--quiet", source.ref, "--"], workspace, git_env, hidden, timeout_s)
    head = _git(["rev-parse", "HEAD"], workspace, git_env, hidden, timeout_s).strip()
    return f"cloned {source.url} at {source.ref or 'its default branch'} ({head[:12]})"


def _git(
    args: list[str], cwd: Path, env: Mapping[str, str], secrets: list[str], timeout_s: float
) -> str:
    command = ["git", "-c", "advice.detachedHead=false", *args]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise CheckoutFailed(
            "cannot clone the workspace: git is not installed in the image"
        ) from None
    except subprocess.TimeoutExpired:
        raise CheckoutFailed(f"git {args[0]} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        said = _masked((done.stderr or done.stdout).strip(), secrets)[-_ERROR_TAIL_CHARS:]
        raise CheckoutFailed(f"git {args[0]} failed (exit {done.returncode}): {said}")
    return done.stdout


def _masked(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return mask_secrets(text)
