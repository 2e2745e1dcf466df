"""One record per egress attempt: who, where, what happened, how many bytes. Never a header,
a credential or a body: what a record carries is fixed here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.egress.outcomes import Reason

EVENT_TYPE = "egress"


@dataclass(frozen=True)
class EgressAttempt:
    """An attempt as the audit sees it. ``job_id`` is None when the proxy credentials did
    not name a live job (counted, never attached to a job)."""

    job_id: str | None
    method: str
    host: str
    port: int
    reason: Reason
    message: str = ""
    address: str = ""
    bytes_sent: int = 0  # client → upstream
    bytes_received: int = 0  # upstream → client
    duration_s: float = 0.0
    # TLS terminated for credential injection; the grants (by name) whose value went out.
    intercepted: bool = False
    injected: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.reason.allowed

    def event_data(self) -> dict[str, Any]:
        """The ``egress`` job event's data."""
        data: dict[str, Any] = {
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "outcome": "allowed" if self.allowed else "refused",
            "reason": self.reason.value,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "duration_ms": round(self.duration_s * 1000, 1),
        }
        if self.address:
            data["address"] = self.address
        if self.message:
            data["message"] = self.message
        if self.intercepted:
            data["injected"] = list(self.injected)
        return data


AuditSink = Callable[[EgressAttempt], None]
