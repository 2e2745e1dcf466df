"""A job pod's status read as the job manager's words (running, an exit code, an OOM kill, an
eviction, a lost node, why it does not start), from status objects as the API server and the
kubelet write them; and the exit tracker that turns a listing and watch events into exits."""

from __future__ import annotations

from typing import Any

import kubernetes.client as k8s

from orchestrator.containers.backend import ContainerExit
from orchestrator.containers.exit_notice import exit_event
from orchestrator.containers.kubernetes_backend import PodExitTracker
from orchestrator.containers.kubernetes_pods import (
    deleted_exit,
    pod_info,
    start_problem,
    start_verdict,
)
from tests.kubernetes_schema import validate

JOB_ID = "5f0e7f0e-1c2d-4d5e-8f90-0a1b2c3d4e5f"
NAME = f"ironclaw-worker-{JOB_ID}"
NODE = "worker-2"


def pod(status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A job pod as the API returns it, with ``status``; validated against the schema so the
    fixtures are what a cluster could say."""
    document = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": NAME,
            "namespace": "ironclaw",
            "uid": "0d6f8c1e-5a3b-4c2d-9e8f-7a6b5c4d3e2f",
            "resourceVersion": "48213",
            "labels": {
                "ironclaw.job_id": JOB_ID,
                "ironclaw.instance": "ic-1",
                "ironclaw.pod": NAME,
            },
            "annotations": {
                "ironclaw.job_id": JOB_ID,
                "ironclaw.created_at": "2026-12-04T18:30:05.123456+00:00",
            },
        },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "containers": [{"name": "job", "image": "ironclaw-worker:latest"}],
            **spec,
        },
        "status": status,
    }
    validate(document)
    return document


def job_status(state: dict[str, Any], phase: str, **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "startTime": "2026-12-04T18:30:06Z",
        "containerStatuses": [
            {
                "name": "job",
                "image": "ironclaw-worker:latest",
                "imageID": "docker-pullable://ironclaw-worker@sha256:ab12",
                "ready": phase == "Running",
                "restartCount": 0,
                "state": state,
            }
        ],
        **extra,
    }


def terminated(code: int, reason: str) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": "2026-12-04T18:30:07Z",
            "finishedAt": "2026-12-04T18:31:07Z",
            "containerID": "containerd://8f1e",
        }
    }


def test_a_running_pod() -> None:
    info = pod_info(pod(job_status({"running": {"startedAt": "2026-12-04T18:30:07Z"}}, "Running")))
    assert info.running
    assert info.status == "running"
    assert not info.exited
    assert info.started_at is not None
    assert info.started_at.isoformat() == "2026-12-04T18:30:07+00:00"
    assert info.container_id == NAME
    # The labels as the spec gave them: created_at from its annotation.
    assert info.labels["ironclaw.created_at"] == "2026-12-04T18:30:05.123456+00:00"
    assert info.labels["ironclaw.job_id"] == JOB_ID


def test_a_pending_pod_is_created_not_ended() -> None:
    info = pod_info(pod({"phase": "Pending"}))
    assert (info.running, info.exited, info.status) == (False, False, "created")


def test_an_exit_with_its_code() -> None:
    info = pod_info(pod(job_status(terminated(3, "Error"), "Failed")))
    assert (info.exited, info.exit_code, info.oom_killed, info.lost_node) == (True, 3, False, None)
    assert info.detail == ""
    event = exit_event(info)
    assert (event.job_id, event.exit_code, event.container_id) == (JOB_ID, 3, NAME)


def test_a_clean_exit() -> None:
    info = pod_info(pod(job_status(terminated(0, "Completed"), "Succeeded")))
    assert (info.exited, info.exit_code, info.oom_killed) == (True, 0, False)


def test_an_oom_kill() -> None:
    info = pod_info(pod(job_status(terminated(137, "OOMKilled"), "Failed")))
    assert (info.exit_code, info.oom_killed) == (137, True)


def test_a_sigkill_that_is_not_oom_is_no_oom_kill() -> None:
    info = pod_info(pod(job_status(terminated(137, "Error"), "Failed")))
    assert (info.exit_code, info.oom_killed) == (137, False)


def test_an_eviction_names_the_eviction() -> None:
    status = job_status(
        terminated(137, "Error"),
        "Failed",
        reason="Evicted",
        message="The node was low on resource: memory. Threshold quantity: 100Mi, available: 91Mi.",
    )
    info = pod_info(pod(status))
    assert info.exited
    assert info.exit_code == 137
    assert not info.oom_killed
    assert info.detail == (
        f"the pod was evicted by the kubelet on node {NODE}: The node was low on resource: "
        "memory. Threshold quantity: 100Mi, available: 91Mi."
    )
    # An evicted pod whose container status the kubelet never wrote still ends.
    bare = pod_info(pod({"phase": "Failed", "reason": "Evicted", "message": "ephemeral storage"}))
    assert bare.exited
    assert bare.exit_code is None
    assert "evicted" in bare.detail


def test_a_stop_by_deadline_says_so() -> None:
    status = job_status(
        terminated(143, "Error"),
        "Failed",
        reason="DeadlineExceeded",
        message="Pod was active on the node longer than the specified deadline",
    )
    info = pod_info(pod(status))
    assert info.exit_code == 143
    assert "active deadline" in info.detail


def test_node_lost_by_the_node_controller() -> None:
    status = job_status(
        {"running": {"startedAt": "2026-12-04T18:30:07Z"}},
        "Unknown",
        reason="NodeLost",
        message=f"Node {NODE} which was running pod {NAME} is unresponsive",
    )
    info = pod_info(pod(status))
    assert (info.lost_node, info.status, info.running) == (NODE, "dead", False)
    assert exit_event(info).lost_node == NODE
    assert exit_event(info).exit_code is None


def test_node_lost_by_the_taint_manager() -> None:
    status = job_status(
        {"running": {"startedAt": "2026-12-04T18:30:07Z"}},
        "Running",
        conditions=[
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-04T18:35:00Z"},
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": "2026-12-04T18:36:00Z",
            },
        ],
    )
    info = pod_info(pod(status))
    assert info.lost_node == NODE
    assert "NoExecute" in info.detail


def test_a_preemption_of_an_ended_pod_is_its_exit() -> None:
    status = job_status(
        terminated(0, "Completed"),
        "Succeeded",
        conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}],
    )
    info = pod_info(pod(status))
    assert info.lost_node is None
    assert info.exit_code == 0


def test_a_pod_deleted_while_running_is_lost_with_its_node() -> None:
    running = pod(job_status({"running": {"startedAt": "2026-12-04T18:30:07Z"}}, "Running"))
    event = deleted_exit(running)
    assert (event.lost_node, event.exit_code, event.job_id) == (NODE, None, JOB_ID)
    ended = deleted_exit(pod(job_status(terminated(2, "Error"), "Failed")))
    assert (ended.lost_node, ended.exit_code) == (None, 2)


def test_unschedulable_is_named_and_not_fatal() -> None:
    status = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                "affinity/selector.",
            }
        ],
    }
    problem = start_problem(pod(status))
    assert problem is not None
    assert not problem.fatal
    assert str(problem) == (
        "Unschedulable: 0/3 nodes are available: 3 node(s) didn't match Pod's node "
        "affinity/selector."
    )


def test_an_image_that_cannot_be_pulled_fails_the_start_at_once() -> None:
    for reason in ("ErrImagePull", "ImagePullBackOff"):
        status = job_status(
            {
                "waiting": {
                    "reason": reason,
                    "message": 'Back-off pulling image "ironclaw-worker:missing"',
                }
            },
            "Pending",
        )
        problem = start_problem(pod(status))
        assert problem is not None
        assert problem.fatal
        assert str(problem).startswith(f"{reason}: Back-off pulling image")
        assert pod_info(pod(status)).status == "created"


def test_container_creating_is_no_problem_and_a_failed_pod_is() -> None:
    creating = job_status({"waiting": {"reason": "ContainerCreating"}}, "Pending")
    problem = start_problem(pod(creating))
    assert problem is not None
    assert not problem.fatal
    assert start_problem(pod(job_status({"running": {}}, "Running"))) is None
    secret_missing = job_status(
        {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "x" not found'}},
        "Pending",
    )
    config_problem = start_problem(pod(secret_missing))
    assert config_problem is not None
    assert config_problem.fatal


def test_the_tracker_reports_each_end_once_and_vanished_pods_as_lost() -> None:
    events: list[ContainerExit] = []
    removing: set[str] = set()
    tracker = PodExitTracker(events.append, removing)
    running = pod(job_status({"running": {"startedAt": "2026-12-04T18:30:07Z"}}, "Running"))
    exited = pod(job_status(terminated(3, "Error"), "Failed"))
    tracker.relisted([running])
    assert events == []
    tracker.event("MODIFIED", exited)
    tracker.event("MODIFIED", exited)  # the kubelet writes the status more than once
    assert [(e.container_id, e.exit_code) for e in events] == [(NAME, 3)]
    tracker.event("DELETED", exited)  # reported already: nothing more
    assert len(events) == 1
    # A pod of this orchestrator's own removal is no loss.
    other = dict(running, metadata={**running["metadata"], "name": "ironclaw-worker-b"})
    tracker.event("ADDED", other)
    removing.add("ironclaw-worker-b")
    tracker.event("DELETED", other)
    assert len(events) == 1
    assert "ironclaw-worker-b" not in removing
    # One that vanished between two listings (the watch expired, 410) was lost.
    third = dict(running, metadata={**running["metadata"], "name": "ironclaw-worker-c"})
    tracker.event("ADDED", third)
    tracker.relisted([])
    assert [(e.container_id, e.lost_node) for e in events[1:]] == [("ironclaw-worker-c", NODE)]
    tracker.event("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    assert len(events) == 2


def test_status_objects_of_the_client_read_the_same() -> None:
    # What the backend hands these functions: the client's objects turned back into JSON.
    document = pod(job_status(terminated(137, "OOMKilled"), "Failed"))
    client = k8s.ApiClient()
    model = (
        k8s.V1Pod.model_validate(document)
        if hasattr(k8s.V1Pod, "model_validate")
        else client.deserialize(
            type("R", (), {"data": __import__("json").dumps(document)}), "V1Pod"
        )
    )
    info = pod_info(client.sanitize_for_serialization(model))
    assert (info.exit_code, info.oom_killed, info.labels["ironclaw.job_id"]) == (137, True, JOB_ID)


def test_what_a_start_does_next() -> None:
    running = pod(job_status({"running": {"startedAt": "2026-12-04T18:30:07Z"}}, "Running"))
    assert start_verdict(running).started
    # Ended already (a quick job): started, its exit comes through the watch.
    assert start_verdict(pod(job_status(terminated(0, "Completed"), "Succeeded"))).started
    pull = job_status({"waiting": {"reason": "ErrImagePull", "message": "not found"}}, "Pending")
    verdict = start_verdict(pod(pull))
    assert verdict.failed
    assert verdict.why == "ErrImagePull: not found"
    pending = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1"}
        ],
    }
    waiting = start_verdict(pod(pending))
    assert not waiting.failed
    assert not waiting.started
    assert waiting.why == "Unschedulable: 0/1"
    # Refused by the kubelet before the container ran: a failed start, not a job's exit.
    refused = {
        "phase": "Failed",
        "reason": "OutOfcpu",
        "message": "Pod was rejected: Node didn't have enough resource: cpu",
    }
    verdict = start_verdict(pod(refused))
    assert verdict.failed
    assert verdict.why == (
        f"OutOfcpu on node {NODE}: Pod was rejected: Node didn't have enough resource: cpu"
    )
