"""ThrottledLog: one line at once, then at most one per interval, counts adding up."""

from __future__ import annotations

from typing import Any

from orchestrator.log_throttle import ThrottledLog
from tests.helpers import wait_for


class _Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_burst_is_one_line_then_a_summary_per_interval() -> None:
    now = [0.0]
    out = _Lines()
    throttled = ThrottledLog(out, "refused", interval_s=10.0, clock=lambda: now[0])
    for i in range(1000):
        throttled.record(source=f"10.0.0.{i % 7}")
    assert len(out.lines) == 1
    assert out.lines[0][1]["count"] == 1
    now[0] = 10.0
    throttled.record(source="10.0.0.9")
    assert len(out.lines) == 2
    assert out.lines[1][1]["count"] == 1000  # 999 held back plus this one
    assert out.lines[1][1]["source"] == "10.0.0.9"
    throttled.close()
    assert len(out.lines) == 2  # nothing left to report
    assert throttled.total == 1001


async def test_what_follows_the_last_line_is_flushed_by_the_loop() -> None:
    out = _Lines()
    throttled = ThrottledLog(out, "timed out", interval_s=0.2)
    for _ in range(5):
        throttled.record()
    assert [fields["count"] for _, fields in out.lines] == [1]
    await wait_for(lambda: len(out.lines) == 2, timeout=5, what="the flushed summary")
    assert out.lines[1][1]["count"] == 4
    throttled.close()
    assert len(out.lines) == 2  # all reported already
