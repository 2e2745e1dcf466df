"""The Swarm benchmark's verdicts, from made-up measurements (no cluster): a target is met
only when the numbers say so, and a missing measurement never counts as met."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.swarm_bench import SwarmOptions, _document, _parse_timestamp, render_swarm
from tests.swarm.cluster import SwarmCluster, SwarmNode, cluster_ids

CLUSTER = SwarmCluster(
    state_dir=Path("/nonexistent"),
    host_address="10.0.0.1",
    nodes=tuple(
        SwarmNode(i, f"n{i}", f"unix:///n{i}.sock", f"10.0.0.{10 + i}", Path("/p"))
        for i in (1, 2, 3)
    ),
    job_image="job:tag",
    bring_up_s=1.0,
    image_load_s=2.0,
)


def _start(swarm_ms: float, raw_ms: float) -> dict[str, list[dict[str, Any]]]:
    def rows(ms: float) -> list[dict[str, Any]]:
        return [
            {"first_call_ms": ms, "api_returned_ms": ms / 2, "ended_ms": ms * 3, "completed": True}
        ] * 5

    return {"swarm": rows(swarm_ms), "raw service create": rows(raw_ms), "docker": rows(400.0)}


def _burst(swarm_all_ms: float, raw_all_ms: float, completed: int = 30) -> list[dict[str, Any]]:
    common = {"jobs": 30, "lost": 0, "first_call_ms": {"p50": 1.0}, "all_running_ms": 1.0}
    return [
        {
            **common,
            "kind": "swarm",
            "all_first_calls_ms": swarm_all_ms,
            "per_node": {"n1": 10, "n2": 10, "n3": 10},
            "completed": completed,
            "all_ended_ms": 9.0,
        },
        {**common, "kind": "raw service create", "all_first_calls_ms": raw_all_ms, "per_node": {}},
    ]


def _loss(seconds: float, reason: str = "TERMINAL_REASON_NODE_LOST") -> dict[str, Any]:
    return {
        "repeat": 1,
        "node": "n3",
        "node_not_ready_s": 2.0,
        "job_failed_s": seconds,
        "reason": reason,
        "message_names_node": True,
        "node_back_ready_s": 12.0,
    }


def _verdicts(document: dict[str, Any]) -> list[bool]:
    return [target["met"] for target in document["targets"]]


def test_every_target_met_when_the_numbers_are_within_bounds() -> None:
    document = _document(
        SwarmOptions(), CLUSTER, _start(900.0, 700.0), _burst(10_000, 9_000), [_loss(3.0)]
    )
    assert _verdicts(document) == [True, True, True, True]
    assert document["start"]["swarm"]["p50_vs_raw"] == 900.0 / 700.0
    assert "n1: 10, n2: 10, n3: 10" in render_swarm(document)


def test_each_target_missed_on_its_own() -> None:
    slow_start = _document(
        SwarmOptions(), CLUSTER, _start(1_100.0, 700.0), _burst(10_000, 9_000), [_loss(3.0)]
    )
    assert _verdicts(slow_start) == [False, True, True, True]
    slow_burst = _document(
        SwarmOptions(), CLUSTER, _start(900.0, 700.0), _burst(12_000, 9_000), [_loss(3.0)]
    )
    assert _verdicts(slow_burst) == [True, False, True, True]
    one_failed = _document(
        SwarmOptions(), CLUSTER, _start(900.0, 700.0), _burst(10_000, 9_000, 29), [_loss(3.0)]
    )
    assert _verdicts(one_failed) == [True, True, False, True]
    slow_loss = _document(
        SwarmOptions(), CLUSTER, _start(900.0, 700.0), _burst(10_000, 9_000), [_loss(6.0)]
    )
    assert _verdicts(slow_loss) == [True, True, True, False]


def test_a_loss_typed_otherwise_or_never_seen_is_not_met() -> None:
    wrong_reason = _document(
        SwarmOptions(),
        CLUSTER,
        _start(900.0, 700.0),
        _burst(10_000, 9_000),
        [_loss(1.0, "TERMINAL_REASON_EXITED")],
    )
    assert _verdicts(wrong_reason)[3] is False
    never = _document(
        SwarmOptions(), CLUSTER, _start(900.0, 700.0), _burst(math.nan, 9_000), [_loss(math.nan)]
    )
    assert _verdicts(never)[1] is False
    assert _verdicts(never)[3] is False
    one_never = _document(
        SwarmOptions(),
        CLUSTER,
        _start(900.0, 700.0),
        _burst(10_000, 9_000),
        [_loss(3.0), _loss(math.nan)],
    )
    assert _verdicts(one_never)[3] is False


def test_engine_timestamps_keep_their_nanoseconds() -> None:
    assert _parse_timestamp("1970-01-01T00:00:01.250000000Z") == 1.25
    assert _parse_timestamp("1970-01-01T00:01:00Z") == 60.0
    assert math.isnan(_parse_timestamp(""))


def test_the_benchmarks_cluster_is_not_the_tests_cluster() -> None:
    assert cluster_ids() != cluster_ids("bench")
    tests_id, tests_net = cluster_ids()
    assert len(tests_id) == 6
    assert tests_net.startswith("10.")
