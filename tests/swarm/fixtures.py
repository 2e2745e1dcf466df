"""Fixtures of a real three-node Docker Swarm on this machine, once per test session
(tests/swarm/cluster.sh), and of orchestrators on the host running their jobs on it. A plugin of
the root conftest, so that any suite (tests/swarm, the backend contract) can use the cluster.

The cluster's names derive from this checkout (its path and IRONCLAW_IMAGE_TAG), so sessions of
other checkouts on the same machine never meet it; a cluster left by a killed session of this
checkout is torn down before a new one is made. Each node gets a label
``ironclaw.test.zone=z<i>`` (placement by constraint) and the job image, loaded without a
registry. Without root or the tools it needs, the suite skips locally and fails under CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IMAGE_TAG, IN_CI, ROOT

CLUSTER_SH = Path(__file__).with_name("cluster.sh")
DEMO_PROJECT = ROOT / "deploy" / "demo" / "project"
JOB_DOCKERFILE = Path(__file__).with_name("Dockerfile.swarm-job")
JOB_IMAGE = f"ironclaw-swarm-job:{IMAGE_TAG}"
# The job image's base, loaded too (its layers are the job image's): an image without an
# entrypoint for the backend contract's commands.
BASE_IMAGE = "ironclaw/base:bookworm"
ZONE_LABEL = "ironclaw.test.zone"
BRING_UP_TIMEOUT_S = 110


@dataclass(frozen=True)
class SwarmNode:
    """One node of the test cluster: its dockerd's socket, address and pid file."""

    index: int
    hostname: str
    socket: str
    address: str
    pidfile: Path

    @property
    def zone(self) -> str:
        return f"z{self.index}"

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.socket, timeout=30)

    def daemon_pid(self) -> int:
        return int(self.pidfile.read_text().strip())


@dataclass(frozen=True)
class SwarmCluster:
    """The session's cluster: node 1 is the manager; ``host_address`` is this host on the
    nodes' network (where an orchestrator under test binds its worker API)."""

    state_dir: Path
    host_address: str
    nodes: tuple[SwarmNode, ...]
    job_image: str
    bring_up_s: float
    image_load_s: float

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    def node(self, hostname: str) -> SwarmNode:
        return next(node for node in self.nodes if node.hostname == hostname)


def _cluster_ids() -> tuple[str, str]:
    digest = hashlib.sha256(f"{ROOT}:{IMAGE_TAG}".encode()).digest()
    return digest.hex()[:6], f"10.{200 + digest[3] % 50}.{digest[4]}"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the Swarm test cluster cannot be brought up: {reason}")
    pytest.skip(f"no Swarm test cluster: {reason}")


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _down(state_dir: Path) -> None:
    for log in sorted(state_dir.glob("n*/dockerd.log")):
        # Shown when the session fails: what each node's daemon said last.
        print(f"--- {log.parent.name}: dockerd.log (last lines) ---")
        print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    result = _run(str(CLUSTER_SH), "down", str(state_dir))
    if result.returncode != 0:
        print(f"cluster.sh down failed:\n{result.stderr[-3000:]}")


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def _build_job_image(worker_image: str) -> None:
    result = _run(
        "docker",
        "build",
        "--build-arg",
        f"WORKER_IMAGE={worker_image}",
        "-f",
        str(JOB_DOCKERFILE),
        "-t",
        JOB_IMAGE,
        str(JOB_DOCKERFILE.parent),
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"building {JOB_IMAGE} failed:\n{result.stderr[-3000:]}")


def _load_images(cluster_dir: Path, nodes: tuple[SwarmNode, ...], images: list[str]) -> None:
    """``docker save`` once, ``docker load`` into every node at the same time."""
    archive = cluster_dir / "images.tar"
    saved = _run("docker", "save", "-o", str(archive), *images, timeout=300)
    if saved.returncode != 0:
        pytest.fail(f"docker save failed: {saved.stderr[-2000:]}")
    loads = [
        subprocess.Popen(
            ["docker", "-H", node.socket, "load", "-q", "-i", str(archive)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in nodes
    ]
    failures = []
    for node, load in zip(nodes, loads, strict=True):
        _, err = load.communicate(timeout=300)
        if load.returncode != 0:
            failures.append(f"{node.hostname}: {err[-1000:]}")
    archive.unlink()
    if failures:
        pytest.fail("loading the job image into the nodes failed:\n" + "\n".join(failures))


@pytest.fixture(scope="session")
def swarm_job_image(docker_engine: Any, worker_image: str) -> str:
    """The Swarm tests' job image (tests/swarm/Dockerfile.swarm-job) on the host's engine."""
    _build_job_image(worker_image)
    return JOB_IMAGE


@pytest.fixture(scope="session")
def swarm_cluster(swarm_job_image: str) -> Iterator[SwarmCluster]:
    """Brings the three-node Swarm up (torn down after the session, whatever happened)."""
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces and more dockerd instances)")
    for tool in ("ip", "unshare", "dockerd", "setsid"):
        if shutil.which(tool) is None:
            _unavailable(f"`{tool}` is not installed")
    cluster_id, net = _cluster_ids()
    state_dir = Path(f"/tmp/ironclaw-swarm-{cluster_id}")
    _down(state_dir)  # what a killed session of this checkout left
    started = time.monotonic()
    try:
        result = _run(str(CLUSTER_SH), "up", str(state_dir), cluster_id, net, timeout=90)
        if result.returncode != 0:
            _unavailable(f"cluster.sh up failed:\n{result.stderr[-3000:]}")
        env = _read_env(state_dir / "cluster.env")
        nodes = tuple(
            SwarmNode(
                index=i,
                hostname=env[f"SWARM_NODE_{i}"],
                socket=env[f"SWARM_NODE_{i}_SOCK"],
                address=env[f"SWARM_NODE_{i}_ADDR"],
                pidfile=Path(env[f"SWARM_NODE_{i}_PIDFILE"]),
            )
            for i in (1, 2, 3)
        )
        bring_up_s = time.monotonic() - started
        loaded_at = time.monotonic()
        _load_images(state_dir, nodes, [JOB_IMAGE, BASE_IMAGE])
        image_load_s = time.monotonic() - loaded_at
        _label_nodes(nodes)
        total = time.monotonic() - started
        print(f"Swarm test cluster up in {bring_up_s:.1f} s, image loaded in {image_load_s:.1f} s")
        assert total < BRING_UP_TIMEOUT_S, f"bringing the cluster up took {total:.0f} s"
        yield SwarmCluster(
            state_dir=state_dir,
            host_address=env["SWARM_HOST_ADDR"],
            nodes=nodes,
            job_image=JOB_IMAGE,
            bring_up_s=bring_up_s,
            image_load_s=image_load_s,
        )
    finally:
        _down(state_dir)
        leftovers = _run("pgrep", "-f", f"{state_dir}/").stdout.split()
        if leftovers or state_dir.exists():
            pytest.fail(f"the Swarm test cluster left processes {leftovers} or {state_dir}")


def _label_nodes(nodes: tuple[SwarmNode, ...]) -> None:
    manager = nodes[0].client()
    try:
        for swarm_node in manager.nodes.list():
            hostname = swarm_node.attrs["Description"]["Hostname"]
            index = next(node.index for node in nodes if node.hostname == hostname)
            spec = dict(swarm_node.attrs["Spec"])
            spec["Labels"] = {**(spec.get("Labels") or {}), ZONE_LABEL: f"z{index}"}
            swarm_node.update(spec)
    finally:
        manager.close()


def node_ready(cluster: SwarmCluster, hostname: str) -> bool:
    """Whether the manager sees ``hostname`` as Ready (False while the manager is down)."""
    import docker.errors

    try:
        manager = cluster.manager.client()
    except docker.errors.DockerException:
        return False
    try:
        for node in manager.nodes.list():
            if node.attrs["Description"]["Hostname"] == hostname:
                return bool(node.attrs["Status"]["State"] == "ready")
    finally:
        manager.close()
    return False


def restart_node(cluster: SwarmCluster, node: SwarmNode, no_new_privileges: bool = True) -> None:
    """Starts a stopped or killed node's dockerd again the way cluster.sh started it, with
    its daemon's ``no-new-privileges`` setting as asked."""
    node_dir = cluster.state_dir / f"n{node.index}"
    config = json.loads((node_dir / "daemon.json").read_text())
    config["no-new-privileges"] = no_new_privileges
    variant = node_dir / f"daemon-nnp-{int(no_new_privileges)}.json"
    variant.write_text(json.dumps(config))
    run_sh = node_dir / f"run-nnp-{int(no_new_privileges)}.sh"
    run_sh.write_text(
        (node_dir / "run.sh").read_text().replace(str(node_dir / "daemon.json"), str(variant))
    )
    run_sh.chmod(0o755)
    with (node_dir / "dockerd.log").open("ab") as log:
        subprocess.Popen(
            ["setsid", "ip", "netns", "exec", node.hostname, "unshare", "--uts", str(run_sh)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"},
        )


def daemon_running(node: SwarmNode) -> bool:
    """Whether the node's dockerd process is alive (by its pid file)."""
    try:
        os.kill(node.daemon_pid(), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture
def demo_copy(base_dir: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        """A copy of deploy/demo/project under the base, owned by uid 1000."""
        path = base_dir / "projects" / name
        shutil.copytree(DEMO_PROJECT, path, ignore=shutil.ignore_patterns("__pycache__"))
        for current, dirs, files in os.walk(path):
            for entry in [current, *(os.path.join(current, n) for n in dirs + files)]:
                os.chown(entry, 1000, 1000)
        return path

    return make


def revive_dead_daemons(cluster: SwarmCluster) -> None:
    """A node's dockerd that died by itself (20.10's Swarm manager has been seen to panic in
    its replicated orchestrator when a service is removed) is started again, its log shown, so
    one engine crash fails one test, not every test after it."""
    for node in cluster.nodes:
        if daemon_running(node):
            continue
        log = cluster.state_dir / f"n{node.index}" / "dockerd.log"
        print(f"--- {node.hostname}'s dockerd had died; its last lines: ---")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        restart_node(cluster, node)
    deadline = time.monotonic() + 60
    while not all(daemon_running(n) and node_ready(cluster, n.hostname) for n in cluster.nodes):
        if time.monotonic() > deadline:
            pytest.fail("the Swarm test cluster's nodes did not come back")
        time.sleep(0.5)


@pytest.fixture
def swarm_settings(
    make_settings: Callable[..., Any], swarm_cluster: SwarmCluster
) -> Callable[..., Any]:
    """Settings of an orchestrator whose jobs run on the test cluster."""

    def make(**overrides: Any) -> Any:
        env = {
            "CONTAINER_BACKEND": "swarm",
            "SWARM_MANAGER_URL": swarm_cluster.manager.socket,
            "ORCHESTRATOR_HTTP_BIND": swarm_cluster.host_address,
            "JOB_NETWORK": "bridge",
            "WORKER_IMAGE": swarm_cluster.job_image,
            "WORKER_CPUS": "0.5",
            "SWARM_POLL_INTERVAL_S": "0.25",
            **overrides,
        }
        return make_settings(**env)

    return make


@pytest.fixture
def swarm_leftovers(swarm_cluster: SwarmCluster, test_instance: str) -> Iterator[Callable[[], Any]]:
    """What this test's instance still has on the cluster: services on the manager and
    containers on each node; both are removed after the test, whatever happened. Every node is
    up when the test starts."""
    revive_dead_daemons(swarm_cluster)

    def leftovers() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for node in swarm_cluster.nodes:
            with contextlib.suppress(Exception):
                client = node.client()
                try:
                    names = []
                    # Job containers and services, and the relays and job networks
                    # (JOB_NETWORK=isolated), which carry labels of their own.
                    for label in (
                        f"ironclaw.instance={test_instance}",
                        f"ironclaw.network.instance={test_instance}",
                    ):
                        filters = {"label": label}
                        names += [c.name for c in client.containers.list(all=True, filters=filters)]
                        if node is swarm_cluster.manager:
                            names += [s.name for s in client.services.list(filters=filters)]
                    # A job network on any node (the instance's shared uplink may stay).
                    names += [
                        n["Name"]
                        for n in client.api.networks(
                            filters={"label": f"ironclaw.network.instance={test_instance}"}
                        )
                        if "ironclaw.network.job_id" in (n.get("Labels") or {})
                    ]
                    if names:
                        found[node.hostname] = names
                finally:
                    client.close()
        return found

    yield leftovers
    manager = swarm_cluster.manager.client()
    try:
        for label in ("ironclaw.instance", "ironclaw.network.instance"):
            for service in manager.services.list(filters={"label": f"{label}={test_instance}"}):
                with contextlib.suppress(Exception):
                    print(f"--- logs of {service.name} ---")
                    print(
                        b"".join(service.logs(stdout=True, stderr=True, tail=50)).decode(
                            errors="replace"
                        )
                    )
                    service.remove()
        networks = manager.api.networks(
            filters={"label": f"ironclaw.network.instance={test_instance}"}
        )
        deadline = time.monotonic() + 30
        for network in networks:
            # A network is in use until the tasks of the services just removed are gone.
            while time.monotonic() < deadline:
                try:
                    manager.api.remove_network(network["Id"])
                    break
                except Exception as exc:
                    if "not found" in str(exc).lower():
                        break
                    time.sleep(0.2)
    finally:
        manager.close()


@pytest.fixture
def held_demo_script(tmp_path: Path) -> Path:
    """The demo's script behind one turn that holds the job until its project has the
    release file (tests/swarm/support.py)."""
    import yaml

    from tests.swarm.support import DEMO_SCRIPT, HOLD_TURN

    turns = yaml.safe_load(DEMO_SCRIPT.read_text())
    path = tmp_path / "hold-then-fix.yaml"
    path.write_text(yaml.safe_dump([HOLD_TURN, *turns]))
    return path


@pytest.fixture
async def control_plane(
    start_orch: Any, swarm_settings: Callable[..., Any], held_demo_script: Path
) -> Any:
    """``await control_plane(**settings)``: an orchestrator on the cluster running the held
    demo, and a control-plane stub connected to it."""
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    channels: list[Any] = []

    async def start(**overrides: Any) -> tuple[Any, Any]:
        settings = swarm_settings(
            LLM_PROVIDER="scripted", LLM_SCRIPT=str(held_demo_script), **overrides
        )
        orch = await start_orch(settings)
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        channels.append(channel)
        return orch, pb_grpc.JobServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()
