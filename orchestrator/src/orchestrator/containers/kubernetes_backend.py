"""The Kubernetes implementation of :class:`ContainerBackend`: one Pod per job in one namespace
(``kubernetes_spec`` builds it, ``kubernetes_pods`` reads its status).

The official ``kubernetes`` client, not ``kubernetes_asyncio``: it is the one the cluster's own
tooling tracks release by release, its generated models are what the tests validate the
manifests against, and its blocking calls run in this backend's thread pool exactly as
docker-py's do for the Swarm backend (one way of keeping blocking I/O off the event loop). The
pod watch, which blocks for minutes at a time, has a thread of its own.

A job's "container id" is its Pod's name. Stopping a job sets the Pod's
``activeDeadlineSeconds`` to the time it has run: the kubelet then stops its container (SIGTERM,
SIGKILL after the Pod's grace period) and the Pod stays, with its log, until it is removed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from ironclaw_contract.secret_patterns import mask_secrets
from orchestrator.containers.backend import (
    ContainerBackend,
    ContainerExit,
    ContainerInfo,
    ContainerSpec,
)
from orchestrator.containers.exit_notice import exit_event
from orchestrator.containers.kubernetes_pods import (
    deleted_exit,
    pod_info,
    pod_name,
    start_verdict,
)
from orchestrator.containers.kubernetes_spec import (
    CONTAINER_NAME,
    JobObjects,
    KubernetesOptions,
    access_review,
    build_job_objects,
    instance_selector,
    owner_reference,
    secret_name,
)
from orchestrator.errors import ConfigError, EngineUnavailable, FailedPrecondition
from orchestrator.logging import get_logger
from orchestrator.settings import Settings

T = TypeVar("T")
log = get_logger(__name__)

# How long a stop waits for the container to end beyond the grace period (the kubelet's sync).
STOP_MARGIN_S = 15.0
START_POLL_S = 0.25
# What the orchestrator's ServiceAccount must be allowed in its namespace (verify_hardening;
# deploy/kubernetes/rbac.yaml grants exactly this).
REQUIRED_ACCESS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (API group, resource, subresource, verbs)
    ("", "pods", "", ("create", "get", "list", "watch", "patch", "delete")),
    ("", "pods", "log", ("get",)),
    ("", "secrets", "", ("create", "patch", "delete")),
    ("networking.k8s.io", "networkpolicies", "", ("create", "patch", "delete")),
)
_CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class PodStartFailed(FailedPrecondition):
    """The job's pod was refused, or did not reach Running (unschedulable, its image cannot
    be pulled): the cluster's state, not a fault of the orchestrator."""


def options_for(settings: Settings) -> KubernetesOptions:
    """The operator's settings as the spec builder takes them."""
    # The worker API's port and the egress gateway's: a job pod's one way out (service.py).
    ports = [settings.http_port, settings.egress_port]
    return KubernetesOptions(
        namespace=settings.kubernetes_namespace,
        orchestrator_selector=dict(settings.kubernetes_orchestrator_selector),
        orchestrator_ports=tuple(ports),
        orchestrator_url=settings.kubernetes_orchestrator_url or "",
        orchestrator_cidr=settings.kubernetes_orchestrator_cidr,
        request_millicpus=round(settings.kubernetes_request_cpus * 1000),
        request_memory_bytes=settings.kubernetes_request_memory_bytes,
        workspace_bytes=settings.kubernetes_workspace_bytes,
        runtime_class=settings.kubernetes_runtime_class,
        allow_host_path=settings.kubernetes_allow_host_path,
        stop_grace_s=settings.stop_grace_s,
        node_lost_s=settings.kubernetes_node_lost_s,
    )


def load_client_configuration() -> Any:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig (``KUBECONFIG``, else
    ~/.kube/config). ConfigError when neither is there."""
    configuration = k8s_client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            # KUBECONFIG as it is now (the client reads it once, at its import).
            k8s_config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
    except (k8s_config.ConfigException, OSError) as exc:
        raise ConfigError(
            "CONTAINER_BACKEND=kubernetes: no cluster credentials (run in a pod with a "
            f"ServiceAccount, or set KUBECONFIG): {exc}"
        ) from None
    return configuration


class KubernetesBackend(ContainerBackend):
    """Runs each job as one Pod in KUBERNETES_NAMESPACE of the cluster the config names."""

    def __init__(self, settings: Settings, max_workers: int = 16) -> None:
        self._settings = settings
        self._options = options_for(settings)
        # A pod's /workspace is an emptyDir the job fills from the worker API and pushes back,
        # unless the operator lets pods mount the orchestrator's project directories.
        self.binds_host_paths = settings.kubernetes_allow_host_path
        self._namespace = settings.kubernetes_namespace
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="k8s")
        self._api_client: Any = None
        self._client_lock = threading.Lock()
        # Pods this orchestrator deletes: their disappearance is no lost node.
        self._removing: set[str] = set()
        self.on_error: Callable[[str], None] | None = None

    # ---- plumbing -------------------------------------------------------------------------

    def _client(self) -> Any:
        with self._client_lock:
            if self._api_client is None:
                self._api_client = k8s_client.ApiClient(load_client_configuration())
            return self._api_client

    def _core(self) -> Any:
        return k8s_client.CoreV1Api(self._client())

    def _networking(self) -> Any:
        return k8s_client.NetworkingV1Api(self._client())

    def _to_dict(self, obj: Any) -> dict[str, Any]:
        # The API's own JSON (camelCase), which kubernetes_pods reads.
        result = self._client().sanitize_for_serialization(obj)
        return result if isinstance(result, dict) else {}

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        host = getattr(getattr(self._api_client, "configuration", None), "host", "?")
        return EngineUnavailable(
            f"Kubernetes API unreachable at {host}: {type(exc).__name__}. Is the cluster up "
            "and the kubeconfig (KUBECONFIG) or in-cluster config right?"
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except _CONNECTION_ERRORS as exc:
            self._report_error("unreachable")
            raise self._unavailable(exc) from exc
        except ApiException as exc:
            # Callers get the library's words, never its exception (whose text carries the
            # whole response): the API's busy or broken is the engine being unavailable.
            self._report_error(f"api_{exc.status or 'unknown'}")
            if exc.status in (429, None, 0) or exc.status >= 500:
                raise EngineUnavailable(_api_error_text("call", exc)) from None
            raise FailedPrecondition(_api_error_text("call", exc)) from None

    def _report_error(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)

    def report_errors_to(self, listener: Callable[[str], None]) -> None:
        self.on_error = listener

    # ---- engine ---------------------------------------------------------------------------

    async def ping(self) -> None:
        def ping() -> None:
            k8s_client.VersionApi(self._client()).get_code()

        await self._run(ping)

    async def image_exists(self, image: str) -> bool:
        # A cluster cannot tell before a node pulls it: ErrImagePull fails the start instead.
        return True

    async def default_gateway(self) -> str | None:
        return None  # pods reach the orchestrator through its Service (KUBERNETES_ORCHESTRATOR_URL)

    async def verify_hardening(self) -> None:
        """Nothing to check per node: the Pod asks for every protection itself, and the API
        server refuses a Pod it cannot run as asked. What is checked: the namespace answers,
        and this identity may do what running jobs needs (SelfSubjectAccessReview)."""
        missing = await self._run(self._missing_access)
        if missing:
            raise ConfigError(
                f"CONTAINER_BACKEND=kubernetes: not allowed in namespace {self._namespace}: "
                f"{', '.join(missing)}. Grant them to the orchestrator's ServiceAccount "
                "(deploy/kubernetes/rbac.yaml)"
            )

    def _missing_access(self) -> list[str]:
        try:
            self._core().list_namespaced_pod(self._namespace, limit=1)
        except ApiException as exc:
            if exc.status != 403:
                raise ConfigError(
                    f"CONTAINER_BACKEND=kubernetes: namespace {self._namespace} cannot be read "
                    f"({exc.status} {exc.reason}): does it exist (KUBERNETES_NAMESPACE)?"
                ) from None
        authorization = k8s_client.AuthorizationV1Api(self._client())
        missing: list[str] = []
        for group, resource, subresource, verbs in REQUIRED_ACCESS:
            for verb in verbs:
                review = authorization.create_self_subject_access_review(
                    access_review(self._namespace, group, resource, subresource, verb)
                )
                if not getattr(review.status, "allowed", False):
                    shown = f"{resource}/{subresource}" if subresource else resource
                    missing.append(f"{verb} {shown}")
        return missing

    # ---- jobs -----------------------------------------------------------------------------

    async def create_and_start(self, spec: ContainerSpec) -> str:
        objects = build_job_objects(spec, self._options)  # refusals before any API call
        return await self._run(functools.partial(self._create_and_start, objects))

    def _create_and_start(self, objects: JobObjects) -> str:
        core, networking, name = self._core(), self._networking(), objects.name
        self._removing.discard(name)
        try:
            # The NetworkPolicy first: it selects the pod by label, so the pod's first packet
            # is already under it.
            networking.create_namespaced_network_policy(self._namespace, objects.network_policy)
            core.create_namespaced_secret(self._namespace, objects.secret)
            created = self._to_dict(core.create_namespaced_pod(self._namespace, objects.pod))
            # JSON Patch (a list): the content type every client version sends for a patch.
            patch = [
                {
                    "op": "add",
                    "path": "/metadata/ownerReferences",
                    "value": [owner_reference(created)],
                }
            ]
            core.patch_namespaced_secret(secret_name(name), self._namespace, patch)
            networking.patch_namespaced_network_policy(name, self._namespace, patch)
            self._wait_running(name)
        except BaseException as exc:
            # Never leave a pod, its Secret or its policy behind when the job did not start.
            self._delete_all(name, grace_seconds=0)
            if isinstance(exc, ApiException):
                raise PodStartFailed(_api_error_text("create", exc)) from None
            raise
        return name

    def _wait_running(self, name: str) -> None:
        deadline = time.monotonic() + self._settings.kubernetes_start_timeout_s
        while True:
            pod = self._to_dict(self._core().read_namespaced_pod(name, self._namespace))
            verdict = start_verdict(pod)
            if verdict.started:
                return
            if verdict.failed:
                raise PodStartFailed(f"the job's pod did not start: {verdict.why}")
            if time.monotonic() >= deadline:
                raise PodStartFailed(
                    "the job's pod was not running within KUBERNETES_START_TIMEOUT_S="
                    f"{self._settings.kubernetes_start_timeout_s:g} s: {verdict.why}"
                )
            time.sleep(START_POLL_S)

    def _delete_all(self, name: str, grace_seconds: int) -> None:
        self._removing.add(name)
        core, networking = self._core(), self._networking()
        deletions: tuple[Callable[[], object], ...] = (
            lambda: core.delete_namespaced_pod(
                name, self._namespace, grace_period_seconds=grace_seconds
            ),
            lambda: core.delete_namespaced_secret(secret_name(name), self._namespace),
            lambda: networking.delete_namespaced_network_policy(name, self._namespace),
        )
        for delete in deletions:
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("deleting a job's object failed", pod=name, status=exc.status)
            except _CONNECTION_ERRORS:
                log.warning("deleting a job's object failed: API unreachable", pod=name)

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        await self._run(functools.partial(self._stop, container_id, grace_seconds))

    def _stop(self, name: str, grace_seconds: int) -> None:
        core = self._core()
        try:
            pod = self._to_dict(core.read_namespaced_pod(name, self._namespace))
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        info = pod_info(pod)
        if info.exited or info.lost_node is not None:
            return
        started = info.started_at or datetime.now(UTC)
        ran = max(1, int((datetime.now(UTC) - started).total_seconds()))
        try:
            core.patch_namespaced_pod(
                name,
                self._namespace,
                [{"op": "add", "path": "/spec/activeDeadlineSeconds", "value": ran}],
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            log.warning("a job's pod refused its deadline; deleting it", pod=name)
            self._removing.add(name)
            core.delete_namespaced_pod(name, self._namespace, grace_period_seconds=grace_seconds)
            return
        deadline = time.monotonic() + grace_seconds + STOP_MARGIN_S
        while time.monotonic() < deadline:
            current = self._inspect(name)
            if current is None or not current.running or current.lost_node:
                return
            time.sleep(START_POLL_S)
        log.warning("a job's pod did not stop in time; deleting it", pod=name)
        self._removing.add(name)
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(name, self._namespace, grace_period_seconds=0)

    async def remove(self, container_id: str) -> None:
        await self._run(functools.partial(self._delete_all, container_id, 0))

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        return await self._run(functools.partial(self._inspect, container_id))

    def _inspect(self, name: str) -> ContainerInfo | None:
        try:
            pod = self._core().read_namespaced_pod(name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return pod_info(self._to_dict(pod))

    async def list_managed(self, instance: str) -> list[ContainerInfo]:
        def list_all() -> list[ContainerInfo]:
            listing = self._core().list_namespaced_pod(
                self._namespace, label_selector=instance_selector(instance)
            )
            return [pod_info(self._to_dict(pod)) for pod in listing.items]

        return await self._run(list_all)

    async def logs_tail(self, container_id: str, lines: int) -> str:
        if lines <= 0:
            return ""

        def tail() -> str:
            try:
                text = self._core().read_namespaced_pod_log(
                    container_id, self._namespace, container=CONTAINER_NAME, tail_lines=lines
                )
            except ApiException as exc:
                if exc.status in (400, 404):
                    return ""  # gone, or its container never started
                raise
            return str(text or "")

        return await self._run(tail)

    async def stream_logs(
        self, container_id: str, follow: bool, tail_lines: int
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        closed = threading.Event()
        response: list[Any] = []

        def put(item: bytes | None) -> None:
            # Blocks the reading thread while the consumer is behind (bounded memory), but
            # not past the consumer going away.
            if closed.is_set():
                return
            try:
                future = asyncio.run_coroutine_threadsafe(chunks.put(item), loop)
            except RuntimeError:
                return  # the loop is closed
            while not closed.is_set():
                try:
                    future.result(timeout=1.0)
                    return
                except concurrent.futures.TimeoutError:
                    continue
                except (concurrent.futures.CancelledError, RuntimeError):
                    return
            future.cancel()

        def read() -> None:
            try:
                kwargs: dict[str, Any] = {"container": CONTAINER_NAME, "follow": follow}
                if tail_lines > 0:
                    kwargs["tail_lines"] = tail_lines
                raw = self._core().read_namespaced_pod_log(
                    container_id, self._namespace, _preload_content=False, **kwargs
                )
                response.append(raw)
                for chunk in raw.stream(4096, decode_content=True):
                    if closed.is_set():
                        break
                    if chunk:
                        put(bytes(chunk))
            except ApiException as exc:
                if exc.status not in (400, 404):
                    log.warning(
                        "reading a job pod's log failed", pod=container_id, status=exc.status
                    )
            except Exception as exc:  # the consumer went away, or the API did
                if not closed.is_set():
                    log.warning("reading a job pod's log failed", error=type(exc).__name__)
            finally:
                put(None)

        thread = threading.Thread(target=read, name="k8s-logs", daemon=True)
        thread.start()
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    return
                yield item
        finally:
            closed.set()
            for raw in response:
                with contextlib.suppress(Exception):
                    raw.release_conn()
                    raw.close()

    async def exits(self, instance: str) -> AsyncIterator[ContainerExit]:
        """A watch on the instance's pods, resumed from its resourceVersion and listed again
        when the server has forgotten it (410 Gone); each end is reported once."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ContainerExit] = asyncio.Queue()
        stop = threading.Event()

        def emit(event: ContainerExit) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(queue.put_nowait, event)

        thread = threading.Thread(
            target=self._watch_exits, args=(instance, emit, stop), name="k8s-watch", daemon=True
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()

    def _watch_exits(
        self, instance: str, emit: Callable[[ContainerExit], None], stop: threading.Event
    ) -> None:
        watcher = PodExitTracker(emit, self._removing)
        selector = instance_selector(instance)
        version: str | None = None
        while not stop.is_set():
            try:
                core = self._core()
                if version is None:
                    listing = core.list_namespaced_pod(self._namespace, label_selector=selector)
                    version = str(listing.metadata.resource_version)
                    watcher.relisted([self._to_dict(pod) for pod in listing.items])
                stream = k8s_watch.Watch()
                for event in stream.stream(
                    core.list_namespaced_pod,
                    self._namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=self._settings.kubernetes_watch_timeout_s,
                    allow_watch_bookmarks=True,
                    # A connection that went silent (a dead peer) ends too, not only a
                    # server that closes it at timeout_seconds.
                    _request_timeout=(10, self._settings.kubernetes_watch_timeout_s + 30),
                ):
                    if stop.is_set():
                        stream.stop()
                        break
                    # The client turns the API's ERROR events into ApiException (below).
                    raw = event.get("raw_object") or {}
                    version = str((raw.get("metadata") or {}).get("resourceVersion") or version)
                    watcher.event(str(event.get("type")), raw)
            except ApiException as exc:
                if exc.status == 410:
                    version = None  # expired: list again (what ended meanwhile is in the list)
                    continue
                log.warning("watching job pods failed; retrying", status=exc.status)
                stop.wait(1.0)
            except Exception as exc:
                # Whatever breaks one watch (a connection, a truncated line the client cannot
                # parse), the thread goes on: without it no job would ever end again.
                log.warning("watching job pods failed; retrying", error=type(exc).__name__)
                stop.wait(1.0)

    async def close(self) -> None:
        client = self._api_client
        self._api_client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class PodExitTracker:
    """Turns a pod listing and the watch's events into exits, each reported once: a pod that
    ended or lost its node, and one that vanished while running (not deleted by us)."""

    def __init__(self, emit: Callable[[ContainerExit], None], removing: set[str]) -> None:
        self._emit = emit
        self._removing = removing
        self._known: dict[str, dict[str, Any]] = {}
        self._reported: set[str] = set()

    def relisted(self, pods: list[dict[str, Any]]) -> None:
        present = {pod_name(pod): pod for pod in pods}
        for name in self._known.keys() - present.keys():
            self._deleted(self._known[name])
        self._known = {}
        for pod in pods:
            self.event("ADDED", pod)

    def event(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod_name(pod)
        if kind == "BOOKMARK" or not name:
            return
        if kind == "DELETED":
            self._known.pop(name, None)
            self._deleted(pod)
            return
        self._known[name] = pod
        info = pod_info(pod)
        if name not in self._reported and (info.exited or info.lost_node is not None):
            self._reported.add(name)
            self._emit(exit_event(info))

    def _deleted(self, pod: dict[str, Any]) -> None:
        name = pod_name(pod)
        # Gone either way: neither set keeps it (an ended job's pod is removed by us).
        removed_by_us = name in self._removing
        self._removing.discard(name)
        if name in self._reported:
            self._reported.discard(name)
            return
        if removed_by_us:
            return
        self._emit(deleted_exit(pod))


def _api_error_text(action: str, exc: ApiException) -> str:
    # The API's Status message only (never the body it may echo), masked like a log line.
    raw = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = str(json.loads(raw or "{}").get("message") or "")
    return f"kubernetes {action} failed ({exc.status} {exc.reason}): {mask_secrets(message[:500])}"
