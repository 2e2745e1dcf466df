"""A real three-node Docker Swarm on this machine (tests/swarm/cluster.sh), without pytest:
bringing it up with the job image loaded into every node, taking it down, and the node chores
(is a node Ready, start a killed node's dockerd again). The Swarm tests' fixtures
(tests/swarm/fixtures.py) and the Swarm benchmark (bench/swarm_bench.py) both use it.

Every failure raises :class:`ClusterError` with what went wrong; the callers decide whether that
skips, fails or ends a benchmark. Whoever calls :func:`bring_up` calls :func:`take_down` in a
``finally`` (:func:`running_cluster` does both), so a failed bring-up leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = Path(__file__).with_name("cluster.sh")
JOB_DOCKERFILE = Path(__file__).with_name("Dockerfile.swarm-job")
# The tag of every image this checkout builds (deploy/scripts/build-images.sh reads it too).
IMAGE_TAG = os.environ.get("IRONCLAW_IMAGE_TAG", "latest")
JOB_IMAGE = f"ironclaw-swarm-job:{IMAGE_TAG}"
WORKER_IMAGE = f"ironclaw-worker:{IMAGE_TAG}"
# The job image's base, loaded too (its layers are the job image's): an image without an
# entrypoint for the backend contract's commands.
BASE_IMAGE = "ironclaw/base:bookworm"
ZONE_LABEL = "ironclaw.test.zone"
NODES = 3
REQUIRED_TOOLS = ("ip", "unshare", "dockerd", "setsid")


class ClusterError(Exception):
    """The cluster could not be brought up or used; the message says why."""


class ClusterUpFailed(ClusterError):
    """``cluster.sh up`` itself failed: this machine cannot make the cluster."""


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
    """A running cluster: node 1 is the manager; ``host_address`` is this host on the
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


def missing_requirement() -> str | None:
    """Why this machine cannot run the cluster (root, tools), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and more dockerd instances)"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def cluster_ids(salt: str = "") -> tuple[str, str]:
    """The cluster's id (six characters) and its /24's first three octets, derived from this
    checkout, its image tag and ``salt`` (so the tests' and the benchmark's clusters of one
    checkout are two, and other checkouts never meet either)."""
    digest = hashlib.sha256(f"{ROOT}:{IMAGE_TAG}{salt}".encode()).digest()
    return digest.hex()[:6], f"10.{200 + digest[3] % 50}.{digest[4]}"


def state_dir_for(cluster_id: str) -> Path:
    return Path(f"/tmp/ironclaw-swarm-{cluster_id}")


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def build_job_image(worker_image: str = WORKER_IMAGE, job_image: str = JOB_IMAGE) -> str:
    """Builds the Swarm job image (tests/swarm/Dockerfile.swarm-job) on the host's engine."""
    result = _run(
        "docker",
        "build",
        "--build-arg",
        f"WORKER_IMAGE={worker_image}",
        "-f",
        str(JOB_DOCKERFILE),
        "-t",
        job_image,
        str(JOB_DOCKERFILE.parent),
        timeout=600,
    )
    if result.returncode != 0:
        raise ClusterError(f"building {job_image} failed:\n{result.stderr[-3000:]}")
    return job_image


def take_down(state_dir: Path, show_logs: bool = True) -> None:
    """``cluster.sh down``: removes everything its ``up`` made (nothing if there is none)."""
    if show_logs:
        for log in sorted(state_dir.glob("n*/dockerd.log")):
            # Shown when a session fails: what each node's daemon said last.
            print(f"--- {log.parent.name}: dockerd.log (last lines) ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    result = _run(str(CLUSTER_SH), "down", str(state_dir))
    if result.returncode != 0:
        print(f"cluster.sh down failed:\n{result.stderr[-3000:]}")


def leftovers(state_dir: Path) -> list[str]:
    """What a taken-down cluster left: its processes' pids and its state directory."""
    found = _run("pgrep", "-f", f"{state_dir}/").stdout.split()
    return found + ([str(state_dir)] if state_dir.exists() else [])


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def _load_images(state_dir: Path, nodes: tuple[SwarmNode, ...], images: list[str]) -> None:
    """``docker save`` once, ``docker load`` into every node at the same time."""
    archive = state_dir / "images.tar"
    saved = _run("docker", "save", "-o", str(archive), *images, timeout=300)
    if saved.returncode != 0:
        raise ClusterError(f"docker save failed: {saved.stderr[-2000:]}")
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
        raise ClusterError("loading the job image into the nodes failed:\n" + "\n".join(failures))


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


def bring_up(
    state_dir: Path, cluster_id: str, net: str, job_image: str = JOB_IMAGE
) -> SwarmCluster:
    """``cluster.sh up``, the job image (and its base) loaded into every node, each node
    labelled ``ironclaw.test.zone=z<i>``. The caller takes it down, also when this raises."""
    started = time.monotonic()
    result = _run(str(CLUSTER_SH), "up", str(state_dir), cluster_id, net, timeout=90)
    if result.returncode != 0:
        raise ClusterUpFailed(f"cluster.sh up failed:\n{result.stderr[-3000:]}")
    env = _read_env(state_dir / "cluster.env")
    nodes = tuple(
        SwarmNode(
            index=i,
            hostname=env[f"SWARM_NODE_{i}"],
            socket=env[f"SWARM_NODE_{i}_SOCK"],
            address=env[f"SWARM_NODE_{i}_ADDR"],
            pidfile=Path(env[f"SWARM_NODE_{i}_PIDFILE"]),
        )
        for i in range(1, NODES + 1)
    )
    bring_up_s = time.monotonic() - started
    loaded_at = time.monotonic()
    _load_images(state_dir, nodes, [job_image, BASE_IMAGE])
    image_load_s = time.monotonic() - loaded_at
    _label_nodes(nodes)
    return SwarmCluster(
        state_dir=state_dir,
        host_address=env["SWARM_HOST_ADDR"],
        nodes=nodes,
        job_image=job_image,
        bring_up_s=bring_up_s,
        image_load_s=image_load_s,
    )


def keep_logs(state_dir: Path, into: Path) -> None:
    """Copies each node's dockerd log to ``into`` (``<state dir name>-n<i>-dockerd.log``)."""
    into.mkdir(parents=True, exist_ok=True)
    for log in sorted(state_dir.glob("n*/dockerd.log")):
        shutil.copyfile(log, into / f"{state_dir.name}-{log.parent.name}-dockerd.log")


@contextmanager
def running_cluster(
    salt: str, job_image: str = JOB_IMAGE, logs_to: Path | None = None
) -> Iterator[SwarmCluster]:
    """A cluster of this checkout for the ``with`` block, taken down after it whatever
    happened (a cluster a killed run of the same salt left is taken down first); the nodes'
    dockerd logs are copied to ``logs_to`` first, when given."""
    missing = missing_requirement()
    if missing:
        raise ClusterError(missing)
    cluster_id, net = cluster_ids(salt)
    state_dir = state_dir_for(cluster_id)
    take_down(state_dir, show_logs=False)
    try:
        yield bring_up(state_dir, cluster_id, net, job_image)
    finally:
        if logs_to is not None:
            keep_logs(state_dir, logs_to)
        take_down(state_dir, show_logs=False)
        left = leftovers(state_dir)
        if left:
            raise ClusterError(f"the Swarm cluster left processes or files behind: {left}")


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
    except docker.errors.DockerException:
        return False
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
    # A killed daemon's pid file stays; dockerd refuses to start while that pid exists, and a
    # SIGKILLed dockerd can linger as a zombie here (its parent is this machine's init, which
    # reaps late), so a pid file naming no live process goes first.
    if not daemon_running(node):
        node.pidfile.unlink(missing_ok=True)
    with (node_dir / "dockerd.log").open("ab") as log:
        subprocess.Popen(
            ["setsid", "ip", "netns", "exec", node.hostname, "unshare", "--uts", str(run_sh)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"},
        )


def daemon_running(node: SwarmNode) -> bool:
    """Whether the node's dockerd process is alive (by its pid file; a zombie is not)."""
    try:
        stat = Path(f"/proc/{node.daemon_pid()}/stat").read_text()
    except (OSError, ValueError):
        return False
    # The state follows the command name, which may hold spaces: after the last ")".
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"
