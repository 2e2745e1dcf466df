"""Warm pools: started, hardened job containers that wait, holding no job identity, until a job
claims one (``WARM_POOL=worker=4,claude=1``).

A slot is a container built like a job's (``build_warm_slot_spec``: same image, hardening,
mounts and network) with the mode's default limits, whose environment names only the slot and
a per-slot claim secret; its entry point waits on ``GET /warm/{slot}/claim`` with that secret
(``worker/claim.py``). The orchestrator keeps only the secret's digest. When a job claims the
slot, the waiting poll is answered with the job id and token, and the slot is forgotten, so its
secret opens nothing any more; the job then fetches everything else from ``GET /job``, as a
cold container does. An unclaimed slot has no token: through its network (the slot's own
isolated network and relay, as a job's) it reaches the worker API, where its secret opens only
the claim channel, and the egress gateway, which refuses it (no egress key).

Each slot owns a fresh directory ``<projects>/.warm/<slot>`` mounted at ``/workspace``, which
becomes the project of the job that claims it (renamed to ``<projects>/<job_id>``; a bind
mount follows the directory, not its name). Its identity is checked against the started
container's ``/workspace`` when the slot is made, and against the renamed directory when it is
claimed, so a warm job keeps the workspace guarantee of a cold one (``workspace_check.py``).

The pool refills itself in the background after each claim, replaces slots older than
``WARM_POOL_MAX_AGE_S`` or made from an image that has been rebuilt since, and removes every
unclaimed slot on shutdown. Slot containers carry ``ironclaw.warm_slot`` instead of
``ironclaw.job_id``; reconciliation asks the pool which slots it owns and the job table which
job claimed a slot (``JobRecord.warm_slot``, persisted), so after a restart every slot is
found: claimed ones run on with their jobs, the others are removed as orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.containers.backend import ContainerBackend, DirectoryIdentity
from orchestrator.containers.spec import build_warm_slot_spec, warm_slot_name
from orchestrator.domain.jobs import JobMode
from orchestrator.errors import Unauthenticated
from orchestrator.jobs.isolation import job_network_request
from orchestrator.jobs.projects import (
    WARM_SLOTS_DIR,
    HeldProjectDir,
    create_job_project_dir,
    open_project_dir,
)
from orchestrator.jobs.record import utcnow
from orchestrator.jobs.workspace_check import verify_mounted_workspace
from orchestrator.logging import get_logger
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

log = get_logger(__name__)

# Slots made at once per pool: a burst of claims is refilled quickly without starving the jobs.
FILL_CONCURRENCY = 2
# After a failed fill (engine trouble, a missing image), before the next try.
FILL_RETRY_S = 5.0
# How often an idle pool looks for slots too old or of a rebuilt image.
CHECK_INTERVAL_S = 5.0
# How long a claim waits for the slot's waiter to be polling (it polls again at once after
# every answer, so normally it already is); then the claim fails and the job starts cold.
DELIVER_TIMEOUT_S = 2.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class ClaimAnswer:
    """What a slot's waiter receives: the job it now is."""

    job_id: str
    token: str

    def __repr__(self) -> str:
        return f"ClaimAnswer(job_id={self.job_id!r}, token=***)"


@dataclass(eq=False)
class WarmSlot:
    """One slot of a pool: a container waiting for a job."""

    slot_id: str
    mode: JobMode
    secret_digest: bytes = field(repr=False)
    directory: Path
    created: float  # time.monotonic() when it was made
    container_name: str
    container_id: str | None = None
    identity: DirectoryIdentity | None = None
    image_id: str | None = None
    ready: bool = False
    # The directory became a job's project (renamed): it is no longer the slot's to remove.
    directory_adopted: bool = False
    in_flight: bool = False  # taken by a job, its claim not settled yet
    _poller: asyncio.Future[ClaimAnswer] | None = field(default=None, repr=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


@dataclass(frozen=True)
class PoolState:
    """One pool as ``ironclaw status`` and the metrics show it."""

    mode: str
    size: int
    ready: int
    starting: int
    claims: int
    misses: int


class WarmPool:
    """The warm pools of one orchestrator, one per job mode named in ``WARM_POOL``."""

    def __init__(
        self,
        settings: Settings,
        backend: ContainerBackend,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._metrics = metrics
        self._sizes = {JobMode(mode): size for mode, size in settings.warm_pool}
        # Unclaimed slots, starting or ready, in the order they were made (oldest first).
        self._slots: dict[str, WarmSlot] = {}
        # Taken by a job, claim not yet answered: the waiter may still be (re)polling.
        self._claiming: dict[str, WarmSlot] = {}
        # Being removed: still owned (reconciliation must not race the removal).
        self._retiring: set[str] = set()
        self._claims: dict[JobMode, int] = dict.fromkeys(self._sizes, 0)
        # Claims taken and not yet settled (counted, failed or abandoned), per pool: a refill
        # waits for them, so a burst of claims does not compete with new containers for CPU.
        self._in_flight: dict[JobMode, int] = dict.fromkeys(self._sizes, 0)
        self._misses: dict[JobMode, int] = dict.fromkeys(self._sizes, 0)
        self._wake: dict[JobMode, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._urls: tuple[str, str | None] = ("", None)
        self._ca_pem: str | None = None
        self._closed = False
        if metrics is not None:
            metrics.watch_warm_pools(self.states)

    @property
    def enabled(self) -> bool:
        return bool(self._sizes)

    def has_pool(self, mode: JobMode) -> bool:
        return mode in self._sizes

    # ---------------------------------------------------------------- life

    def start(
        self, orchestrator_url: str, egress_url: str | None, ca_pem: str | None = None
    ) -> None:
        """Starts filling every pool in the background (once the worker API is bound)."""
        if self._tasks or self._closed:
            return
        self._urls = (orchestrator_url, egress_url)
        self._ca_pem = ca_pem
        for mode in self._sizes:
            self._wake[mode] = asyncio.Event()
            self._tasks.append(
                asyncio.get_running_loop().create_task(
                    self._keep_filled(mode), name=f"warm-pool-{mode.value}"
                )
            )
        log.info("warm pools starting", pools={m.value: n for m, n in self._sizes.items()})

    async def close(self) -> None:
        """Stops refilling and removes every unclaimed slot (claimed ones belong to jobs)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for slot in [*self._slots.values(), *self._claiming.values()]:
            self._retire(slot, "orchestrator shutting down")
        while pending := [task for task in self._background if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def states(self) -> list[PoolState]:
        """Every pool's size, ready and starting slots, claims and misses so far."""
        states = []
        for mode, size in self._sizes.items():
            slots = [slot for slot in self._slots.values() if slot.mode is mode]
            ready = sum(1 for slot in slots if slot.ready)
            states.append(
                PoolState(
                    mode=mode.value,
                    size=size,
                    ready=ready,
                    starting=len(slots) - ready,
                    claims=self._claims[mode],
                    misses=self._misses[mode],
                )
            )
        return states

    def owns(self, slot_id: str) -> bool:
        """Whether the slot is one of the pool's (unclaimed, being claimed or being removed)."""
        return slot_id in self._slots or slot_id in self._claiming or slot_id in self._retiring

    # ---------------------------------------------------------------- claims

    def take(self, mode: JobMode) -> WarmSlot | None:
        """The oldest ready slot of the mode's pool, taken out of it (the pool refills), or
        None (a miss: the job starts cold)."""
        if mode not in self._sizes or self._closed:
            return None
        for slot in self._slots.values():
            if slot.mode is mode and slot.ready:
                del self._slots[slot.slot_id]
                self._claiming[slot.slot_id] = slot
                slot.in_flight = True
                self._in_flight[mode] += 1
                return slot
        self.count_miss(mode, "empty")
        return None

    def count_miss(self, mode: JobMode, reason: str) -> None:
        """A job of a pooled mode that starts cold: the pool was empty, the job names its own
        project, or the claim failed."""
        if mode not in self._sizes:
            return
        self._misses[mode] += 1
        if self._metrics is not None:
            self._metrics.warm_pool_miss(mode.value, reason)

    def _settled(self, slot: WarmSlot) -> None:
        """The claim of a taken slot is over, one way or another (once per take): refill."""
        if not slot.in_flight:
            return
        slot.in_flight = False
        self._in_flight[slot.mode] -= 1
        wake = self._wake.get(slot.mode)
        if wake is not None:
            wake.set()

    def give_back(self, slot: WarmSlot) -> None:
        """A slot taken but not used (nothing about it changed): ready again."""
        self._settled(slot)
        if self._claiming.pop(slot.slot_id, None) is not None and not self._closed:
            self._slots[slot.slot_id] = slot
        else:
            self._retire(slot, "given back while shutting down")

    async def deliver(self, slot: WarmSlot, job_id: str, token: str) -> bool:
        """Answers the slot's waiting poll with the job's id and token, then forgets the slot
        (its secret opens nothing any more). False when no poll came within
        ``DELIVER_TIMEOUT_S`` (the container is stuck or gone): the claim failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DELIVER_TIMEOUT_S
        while True:
            poller = slot._poller
            if poller is not None and not poller.done():
                poller.set_result(ClaimAnswer(job_id=job_id, token=token))
                slot._poller = None
                self._claiming.pop(slot.slot_id, None)
                self._claims[slot.mode] += 1
                return True
            slot._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(slot._arrived.wait(), remaining)
            except TimeoutError:
                return False

    def claimed(self, slot: WarmSlot, seconds: float) -> None:
        """A job started in the warm slot, ``seconds`` after its claim began."""
        self._settled(slot)
        if self._metrics is not None:
            self._metrics.warm_pool_claim(slot.mode.value, seconds)

    def forget(self, slot: WarmSlot) -> None:
        """A taken slot whose job ended (or failed to start) before its claim was answered: its
        container goes with the job's teardown. Harmless after the claim settled."""
        self._settled(slot)
        self._claiming.pop(slot.slot_id, None)

    def discard(self, slot: WarmSlot, reason: str) -> None:
        """A taken slot whose claim failed: removed (the job starts cold)."""
        self._settled(slot)
        self._claiming.pop(slot.slot_id, None)
        self._retire(slot, reason)

    async def await_claim(self, slot_id: str, secret: str, timeout_s: float) -> ClaimAnswer | None:
        """The slot's waiter polls: its claim once a job claims it, None after ``timeout_s``.
        Raises Unauthenticated for an unknown or retired slot or a wrong secret."""
        slot = self._slots.get(slot_id) or self._claiming.get(slot_id)
        if slot is None or not hmac.compare_digest(_digest(secret), slot.secret_digest):
            raise Unauthenticated("Invalid slot secret")
        if slot._poller is not None and not slot._poller.done():
            slot._poller.cancel()  # one waiter per slot: the newer poll replaces the older
        poller: asyncio.Future[ClaimAnswer] = asyncio.get_running_loop().create_future()
        slot._poller = poller
        slot._arrived.set()
        try:
            await asyncio.wait({poller}, timeout=timeout_s)
        finally:
            if slot._poller is poller:
                slot._poller = None
        if poller.done() and not poller.cancelled():
            return poller.result()
        poller.cancel()
        return None

    # ---------------------------------------------------------------- slot containers

    def slot_exited(self, slot_id: str) -> None:
        """An unclaimed slot's container stopped: it is removed and replaced."""
        slot = self._slots.pop(slot_id, None) or self._claiming.pop(slot_id, None)
        if slot is not None:
            log.warning("warm slot container exited", slot=slot_id, mode=slot.mode.value)
            self._retire(slot, "its container exited")

    def adopt_directory(
        self, slot: WarmSlot, projects_dir: Path, job_id: str
    ) -> HeldProjectDir | None:
        """Makes the slot's directory the job's project ``<projects>/<job_id>`` and returns it
        held (``jobs/projects.py``), checked to be the directory the slot's container mounted.
        None when it cannot be (a directory of that name exists): the slot stays unchanged."""
        target = projects_dir / job_id
        if os.path.lexists(target) or slot.identity is None:
            return None
        # Only the orchestrator writes in the projects base itself: nobody can put anything
        # at the target between the check and the rename.
        os.rename(slot.directory, target)
        slot.directory_adopted = True
        held = open_project_dir(job_id, projects_dir)
        if held.identity != slot.identity:
            held.close()
            raise OSError(f"the renamed directory is not the slot's ({slot.identity})")
        return held

    async def _keep_filled(self, mode: JobMode) -> None:
        wake = self._wake[mode]
        while not self._closed:
            await self._retire_stale(mode)
            missing = self._sizes[mode] - sum(1 for s in self._slots.values() if s.mode is mode)
            if missing > 0 and self._in_flight[mode]:
                pause = CHECK_INTERVAL_S  # claims under way: refill once they are over
            elif missing > 0:
                results = await asyncio.gather(
                    *(self._fill_one(mode) for _ in range(min(missing, FILL_CONCURRENCY)))
                )
                if all(results):
                    continue
                pause = FILL_RETRY_S
            else:
                pause = CHECK_INTERVAL_S
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)

    async def _retire_stale(self, mode: JobMode) -> None:
        image = self._image(mode)
        try:
            current = await self._backend.image_id(image)
        except Exception as exc:
            log.warning("warm pool image check failed", image=image, error=str(exc))
            return
        now = time.monotonic()
        for slot in [s for s in self._slots.values() if s.mode is mode and s.ready]:
            if now - slot.created >= self._settings.warm_pool_max_age_s:
                self._slots.pop(slot.slot_id, None)
                self._retire(slot, "older than WARM_POOL_MAX_AGE_S")
            elif current is not None and slot.image_id is not None and current != slot.image_id:
                self._slots.pop(slot.slot_id, None)
                self._retire(slot, f"image {image} changed")

    def _image(self, mode: JobMode) -> str:
        settings = self._settings
        return settings.worker_image if mode is JobMode.WORKER else settings.claude_image

    async def _fill_one(self, mode: JobMode) -> bool:
        """Makes one slot; False when that failed (logged, counted, cleaned up)."""
        settings = self._settings
        slot_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        warm_dir = settings.projects_dir / WARM_SLOTS_DIR
        slot = WarmSlot(
            slot_id=slot_id,
            mode=mode,
            secret_digest=_digest(secret),
            directory=warm_dir / slot_id,
            created=time.monotonic(),
            container_name=warm_slot_name(mode, slot_id),
        )
        # Owned from before its container exists: reconciliation never takes it for an orphan.
        self._slots[slot_id] = slot
        try:
            await self._start_slot(slot, secret, warm_dir)
        except Exception as exc:
            log.warning("warm slot could not be made", mode=mode.value, error=str(exc))
            if self._metrics is not None:
                self._metrics.warm_pool_fill_failed(mode.value)
            if self._slots.pop(slot_id, None) is not None:
                self._retire(slot, "its start failed")
            return False
        if slot_id not in self._slots:
            return True  # removed meanwhile (its container exited, or shutdown)
        slot.ready = True
        return True

    async def _start_slot(self, slot: WarmSlot, secret: str, warm_dir: Path) -> None:
        settings = self._settings
        orchestrator_url, egress_url = self._urls
        image_id = await self._backend.image_id(self._image(slot.mode))
        _make_warm_dir(warm_dir)
        create_job_project_dir(warm_dir, slot.slot_id)
        held = _hold(slot.directory)
        try:
            network = None
            if settings.job_network == "isolated":
                network = await self._backend.create_job_network(
                    job_network_request(settings, slot.slot_id, orchestrator_url, egress_url)
                )
            spec = build_warm_slot_spec(
                settings=settings,
                slot_id=slot.slot_id,
                mode=slot.mode,
                created_at=utcnow(),
                secret=secret,
                orchestrator_url=orchestrator_url,
                orchestrator_ca_pem=self._ca_pem,
                project_dir=str(slot.directory),
                network=network,
            )
            slot.container_id = await self._backend.create_and_start(spec)
            await verify_mounted_workspace(self._backend, slot.container_id, held)
            slot.identity = held.identity
            slot.image_id = image_id
        finally:
            held.close()

    def _retire(self, slot: WarmSlot, reason: str) -> None:
        self._retiring.add(slot.slot_id)
        if slot._poller is not None and not slot._poller.done():
            # Its poll ends now (204); the next one is refused and the waiter exits.
            slot._poller.cancel()
        log.info("warm slot removed", slot=slot.slot_id, mode=slot.mode.value, reason=reason)
        if not self._closed:
            wake = self._wake.get(slot.mode)
            if wake is not None:
                wake.set()
        task = asyncio.get_running_loop().create_task(self._remove(slot))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove(self, slot: WarmSlot) -> None:
        try:
            if slot.container_id is not None:
                await self._backend.remove(slot.container_id)
            await self._backend.remove_job_network(self._settings.instance, slot.slot_id)
            if not slot.directory_adopted:
                await asyncio.to_thread(shutil.rmtree, slot.directory, True)
        except Exception as exc:
            # Reconciliation removes what is left (orphan containers and networks).
            log.warning("warm slot removal failed", slot=slot.slot_id, error=str(exc))
        finally:
            self._retiring.discard(slot.slot_id)


def _make_warm_dir(warm_dir: Path) -> None:
    """``<projects>/.warm``: the orchestrator's own, not the sandbox user's (a slot's directory
    is renamed out of it into the projects base, which only the orchestrator writes)."""
    warm_dir.mkdir(mode=0o711, parents=True, exist_ok=True)


def _hold(directory: Path) -> HeldProjectDir:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return HeldProjectDir(fd, directory, str(directory))
