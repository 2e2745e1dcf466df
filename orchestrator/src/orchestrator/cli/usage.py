"""``ironclaw usage``: LLM usage and wall time per job and in total, from the control plane."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.cli.jobs import CliError

if TYPE_CHECKING:
    from ironclaw_client import Client, Job

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PAGE = 1000


def add_usage_command(sub: Any) -> None:
    usage = sub.add_parser("usage", help="LLM calls, tokens and wall time per job and in total")
    usage.add_argument(
        "--since",
        default="",
        metavar="WHEN",
        help="only jobs created since WHEN: an ISO time (2025-01-31T12:00Z) or an age (2h, 7d)",
    )
    usage.add_argument("--json", action="store_true")


def parse_since(raw: str, now: datetime | None = None) -> datetime | None:
    """``--since`` as an aware UTC datetime; None when not given."""
    text = raw.strip()
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.lower())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--since {raw!r}: give an ISO time (2025-01-31T12:00Z) or an age (30m, 2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def fetch_jobs(client: Client) -> list[Job]:
    """Every job the control plane knows, all pages."""
    return list(client.list_jobs(page_size=_PAGE))


def usage_report(jobs: list[Job], since: datetime | None, now: datetime) -> dict[str, Any]:
    """Per-job rows and totals; wall time runs from start (or creation) to the end (or now)."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        created = job.created_at or now
        if since is not None and created < since:
            continue
        begin = job.started_at or created
        end = job.finished_at or now
        reason = job.result.reason.name if job.result is not None else ""
        rows.append(
            {
                "job_id": job.job_id,
                "state": job.state.value,
                "mode": job.mode.name.lower(),
                "created_at": created.isoformat(),
                "llm_calls": int(job.usage.calls),
                "input_tokens": int(job.usage.input_tokens),
                "output_tokens": int(job.usage.output_tokens),
                "wall_seconds": round(max(0.0, (end - begin).total_seconds()), 3),
                "terminal_reason": reason.lower(),
            }
        )
    total = {
        "jobs": len(rows),
        "llm_calls": sum(r["llm_calls"] for r in rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "wall_seconds": round(sum(r["wall_seconds"] for r in rows), 3),
    }
    return {"since": since.isoformat() if since else None, "jobs": rows, "total": total}


def run_usage(args: argparse.Namespace, client: Client) -> int:
    now = datetime.now(UTC)
    report = usage_report(fetch_jobs(client), parse_since(args.since, now), now)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    header = f"{'JOB ID':36}  {'STATE':8}  {'CALLS':>6}  {'INPUT':>10}  {'OUTPUT':>10}  "
    print(header + f"{'WALL':>9}  REASON")
    for r in report["jobs"]:
        print(
            f"{r['job_id']:36}  {r['state']:8}  {r['llm_calls']:>6}  {r['input_tokens']:>10}  "
            f"{r['output_tokens']:>10}  {_duration(r['wall_seconds']):>9}  "
            f"{r['terminal_reason'] or '-'}"
        )
    t = report["total"]
    print(
        f"{'TOTAL (' + str(t['jobs']) + ' jobs)':36}  {'':8}  {t['llm_calls']:>6}  "
        f"{t['input_tokens']:>10}  {t['output_tokens']:>10}  {_duration(t['wall_seconds']):>9}"
    )
    return 0


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
