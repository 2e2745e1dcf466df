"""Warm pools in the job manager on an in-memory engine: a job claims a slot over its claim
channel, the pool refills, a failed claim starts the job cold, per-job memory is set at claim,
stale slots are replaced, and reconciliation (also after a restart) finds every slot."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ironclaw_contract import container_env
from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.spec import (
    LABEL_JOB_ID,
    LABEL_WARM_SLOT,
    build_container_spec,
    build_warm_slot_spec,
)
from orchestrator.domain.jobs import (
    CreateJobRequest,
    JobLimitOverrides,
    JobMode,
    JobState,
    TerminalReason,
)
from orchestrator.errors import ConfigError, InvalidArgument, Unauthenticated
from orchestrator.jobs import warm_pool
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.projects import open_project_dir
from orchestrator.jobs.record import utcnow
from orchestrator.jobs.warm_pool import ClaimAnswer, WarmPool, WarmSlot
from orchestrator.settings import Settings
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import TEST_LIMITS, wait_for

INSTANCE = "unit-warm"
URL = "http://orch:1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "projects").mkdir()
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "ORCHESTRATOR_INSTANCE": INSTANCE,
            "METRICS_PORT": "0",
            "STOP_GRACE_S": "0",
            "WARM_POOL": "worker=2",
        }
    )


@pytest.fixture(autouse=True)
def _quick_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's pauses are for a real engine; here its decisions are what is tested.
    monkeypatch.setattr(warm_pool, "CHECK_INTERVAL_S", 0.05)
    monkeypatch.setattr(warm_pool, "FILL_RETRY_S", 0.05)
    monkeypatch.setattr(warm_pool, "DELIVER_TIMEOUT_S", 0.3)


@pytest.fixture
async def start(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[..., ContainerJobManager]]:
    """Managers over one store file (a second one is the orchestrator restarted)."""
    managers: list[ContainerJobManager] = []

    def make(backend: FakeBackend, use: Settings | None = None) -> ContainerJobManager:
        store = SqliteJobStore(tmp_path / "orchestrator.db")
        manager = ContainerJobManager(
            use or settings, backend, TokenStore(), orchestrator_url=URL, store=store
        )
        manager.restore()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.shutdown()
        await manager.close()


def _pool(manager: ContainerJobManager) -> WarmPool:
    pool = manager.warm_pool
    assert pool is not None
    return pool


def _ready(pool: WarmPool) -> list[WarmSlot]:
    return [slot for slot in pool._slots.values() if slot.ready]


async def _filled(pool: WarmPool, count: int = 2) -> list[WarmSlot]:
    return await wait_for(lambda: len(_ready(pool)) >= count and _ready(pool), what="warm slots")


def _spec_of(backend: FakeBackend, slot: WarmSlot) -> ContainerSpec:
    assert slot.container_id is not None
    return backend.containers[slot.container_id].spec


class Waiter:
    """What ``ironclaw-worker --await-claim`` does in a slot: polls its claim channel with the
    slot's secret, then calls in as the job (the first worker-API call confirms the claim)."""

    def __init__(self, manager: ContainerJobManager, spec: ContainerSpec) -> None:
        self.manager = manager
        self.slot_id = spec.env[container_env.WARM_SLOT_ID]
        self.secret = spec.env[container_env.WARM_SLOT_SECRET]
        self.claim: ClaimAnswer | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        pool = _pool(self.manager)
        while self.claim is None:
            self.claim = await pool.await_claim(self.slot_id, self.secret, 5.0)
        await self.manager.hold_while_creating(self.claim.job_id, self.claim.token, 5.0)


async def test_a_job_claims_a_ready_slot_and_the_pool_refills(
    start: Callable[..., ContainerJobManager], settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    pool = _pool(manager)
    first, second = await _filled(pool)
    spec = _spec_of(backend, first)
    # A slot's container: the job's hardening, the slot's identity, no job's.
    assert container_env.WORKER_TOKEN not in spec.env
    assert container_env.JOB_ID not in spec.env
    assert spec.labels[LABEL_WARM_SLOT] == first.slot_id
    assert LABEL_JOB_ID not in spec.labels
    assert spec.command == ("--await-claim",)
    assert spec.mounts[0].host_path == str(first.directory)
    assert (INSTANCE, first.slot_id) in backend.networks
    waiter = Waiter(manager, spec)
    Waiter(manager, _spec_of(backend, second))

    created = await manager.create_job(CreateJobRequest(task="t"))
    job = created.job
    assert job.state is JobState.RUNNING
    assert job.container_name == first.container_name
    assert manager.container_id(job.job_id) == first.container_id
    assert job.project_dir == str(settings.projects_dir / job.job_id)
    assert not first.directory.exists()
    await waiter.task
    assert waiter.claim == ClaimAnswer(job_id=job.job_id, token=created.token or "")
    assert manager.tokens.validate(job.job_id, created.token or "")
    # The claim revoked the slot's secret.
    with pytest.raises(Unauthenticated):
        await pool.await_claim(first.slot_id, waiter.secret, 0.01)
    # The pool is back to its size with a new slot; the claimed one is the job's now.
    refilled = await _filled(pool)
    assert first.slot_id not in {slot.slot_id for slot in refilled}
    assert pool.states()[0].claims == 1
    await manager.reconcile_once()
    assert first.container_id in backend.containers
    assert (INSTANCE, first.slot_id) in backend.networks
    # The job's end takes the slot's container and network with it.
    await manager.complete_job(job.job_id, True, "done")
    await wait_for(lambda: first.container_id not in backend.containers, what="teardown")
    assert (INSTANCE, first.slot_id) not in backend.networks


async def test_a_wrong_secret_opens_no_claim(start: Callable[..., ContainerJobManager]) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    slot, _ = await _filled(_pool(manager))
    with pytest.raises(Unauthenticated):
        await _pool(manager).await_claim(slot.slot_id, "irc_not-the-secret", 0.01)
    with pytest.raises(Unauthenticated):
        await _pool(manager).await_claim("2b1bc5a3-9d44-4c0e-b1f5-1b1f3ad5f1f1", "x", 0.01)


async def test_the_job_memory_limit_is_set_before_the_claim_is_answered(
    start: Callable[..., ContainerJobManager],
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    slots = await _filled(_pool(manager))
    for slot in slots:
        Waiter(manager, _spec_of(backend, slot))
    created = await manager.create_job(
        CreateJobRequest(task="t", limits=JobLimitOverrides(memory_mb=512))
    )
    assert created.job.container_name in {slot.container_name for slot in slots}
    container_id = manager.container_id(created.job.job_id)
    assert backend.memory_updates == [(container_id, 512 << 20, 512 << 20)]


async def test_a_claim_nobody_answers_starts_the_job_cold(
    start: Callable[..., ContainerJobManager], settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    slots = await _filled(_pool(manager))  # no waiter polls: the claim cannot be delivered
    created = await manager.create_job(CreateJobRequest(task="t"))
    job = created.job
    assert job.state is JobState.RUNNING
    assert job.container_name == f"ironclaw-worker-{job.job_id}"
    cold = backend.container_of(job.job_id)
    assert cold.spec.env[container_env.WORKER_TOKEN] == created.token
    # The cold container mounts the (fresh) directory the slot had.
    assert cold.spec.mounts[0].host_path == str(settings.projects_dir / job.job_id)
    taken = [slot for slot in slots if slot.directory_adopted]
    assert len(taken) == 1
    await wait_for(lambda: taken[0].container_id not in backend.containers, what="removal")
    assert (INSTANCE, taken[0].slot_id) not in backend.networks
    state = _pool(manager).states()[0]
    assert (state.claims, state.misses) == (0, 1)


async def test_a_job_naming_a_project_or_an_empty_pool_starts_cold(
    start: Callable[..., ContainerJobManager], settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)  # the pool is not started: it stays empty
    project = settings.projects_dir / "mine"
    project.mkdir()
    project.chmod(0o777)
    named = await manager.create_job(CreateJobRequest(task="t", project_dir=str(project)))
    empty = await manager.create_job(CreateJobRequest(task="t"))
    for created in (named, empty):
        assert created.job.container_name == f"ironclaw-worker-{created.job.job_id}"
    state = _pool(manager).states()[0]
    assert (state.claims, state.misses) == (0, 2)


async def test_slots_too_old_or_of_a_rebuilt_image_are_replaced(
    start: Callable[..., ContainerJobManager], settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    pool = _pool(manager)
    old = {slot.slot_id for slot in await _filled(pool)}
    backend.image_ids[settings.worker_image] = "sha256:2"  # the image was rebuilt
    await wait_for(
        lambda: len(_ready(pool)) == 2 and not old & {s.slot_id for s in _ready(pool)},
        what="slots of the new image",
    )
    assert {slot.image_id for slot in _ready(pool)} == {"sha256:2"}
    young = {slot.slot_id for slot in _ready(pool)}
    for slot in _ready(pool):
        slot.created -= settings.warm_pool_max_age_s
    await wait_for(
        lambda: len(_ready(pool)) == 2 and not young & {s.slot_id for s in _ready(pool)},
        what="slots replacing the old ones",
    )
    await wait_for(lambda: len(backend.containers) == 2, what="old slots removed")


async def test_an_exited_slot_is_replaced(start: Callable[..., ContainerJobManager]) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    watcher = asyncio.get_running_loop().create_task(manager.watch_container_exits())
    await wait_for(lambda: backend.watching(INSTANCE) == 1, what="the exit watcher")
    try:
        pool = _pool(manager)
        slot, _ = await _filled(pool)
        assert slot.container_id is not None
        backend.exit(slot.container_id, 1)
        await wait_for(lambda: not pool.owns(slot.slot_id), what="the dead slot's removal")
        await _filled(pool)
        assert not slot.directory.exists()
    finally:
        watcher.cancel()


async def test_shutdown_removes_every_unclaimed_slot(
    start: Callable[..., ContainerJobManager], settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    await _filled(_pool(manager))
    await manager.shutdown()
    assert backend.containers == {}
    assert backend.networks == {}
    assert list((settings.projects_dir / ".warm").iterdir()) == []


async def test_after_a_restart_claimed_slots_run_on_and_unclaimed_ones_are_removed(
    start: Callable[..., ContainerJobManager],
) -> None:
    backend = FakeBackend()
    first = start(backend)
    first.start_warm_pool()
    slots = await _filled(_pool(first))
    for slot in slots:
        Waiter(first, _spec_of(backend, slot))
    job = (await first.create_job(CreateJobRequest(task="t"))).job
    await _filled(_pool(first))  # refilled: two unclaimed slots and the job's
    claimed = first.container_id(job.job_id)
    unclaimed = {s.container_id for s in _ready(_pool(first))}
    assert len(backend.containers) == 3
    # The process dies: nothing of it is told (its pool's tasks just stop).
    for task in _pool(first)._tasks:
        task.cancel()

    second = start(backend)
    assert second.get_job(job.job_id).state is JobState.RUNNING
    await second.reconcile_once()
    assert set(backend.containers) == {claimed}
    assert second.container_id(job.job_id) == claimed
    [(_, network)] = backend.networks
    assert network == second.get_job(job.job_id).container_name.rsplit("warm-", 1)[1]
    assert not unclaimed & set(backend.containers)
    await second.complete_job(job.job_id, True, "done after the restart")
    await wait_for(lambda: backend.containers == {}, what="the job's teardown")


async def test_a_job_still_claiming_when_the_orchestrator_died_fails_at_restore(
    start: Callable[..., ContainerJobManager],
) -> None:
    backend = FakeBackend()
    first = start(backend)
    first.start_warm_pool()
    slots = await _filled(_pool(first))

    async def claim_without_answer() -> None:
        await first.create_job(CreateJobRequest(task="t"))

    creating = asyncio.get_running_loop().create_task(claim_without_answer())
    job_id = await wait_for(
        lambda: next((j for j in first.job_ids()), None), what="the job to be recorded"
    )
    await wait_for(lambda: first.get_job(job_id).container_name.find("warm") > 0, what="claim")
    await first._store.flush()
    second = start(backend)
    snapshot = second.get_job(job_id)
    assert snapshot.state is JobState.FAILED
    assert snapshot.result is not None
    assert snapshot.result.reason is TerminalReason.START_FAILED
    assert "warm container" in snapshot.result.message
    creating.cancel()
    del slots


def test_warm_pool_setting_parses_pools_and_refuses_the_rest(tmp_path: Path) -> None:
    def read(value: str) -> tuple[tuple[str, int], ...]:
        env = {"IRONCLAW_BASE_DIR": str(tmp_path), "WARM_POOL": value}
        return Settings.from_env(env).warm_pool

    assert read("worker=4,claude=1") == (("worker", 4), ("claude-code", 1))
    assert read("worker=0") == ()
    assert Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path)}).warm_pool == ()
    for bad in ("worker", "gpu=1", "worker=-1", "worker=1,worker=2", "worker=65"):
        with pytest.raises(ConfigError, match="WARM_POOL"):
            read(bad)


def test_a_slot_spec_is_a_job_spec_without_the_job(settings: Settings) -> None:
    now = utcnow()
    slot = build_warm_slot_spec(
        settings=settings,
        slot_id="s",
        mode=JobMode.WORKER,
        created_at=now,
        secret="the-secret",
        orchestrator_url=URL,
        project_dir="/p",
    )
    job = build_container_spec(
        settings=settings,
        job_id="j",
        mode=JobMode.WORKER,
        limits=dataclasses.replace(TEST_LIMITS, memory_mb=settings.worker_memory_mb),
        created_at=now,
        token="irc_t",
        orchestrator_url=URL,
        project_dir="/p",
    )
    same = ("env", "labels", "name", "command", "secret_env_keys")
    for name in (f.name for f in dataclasses.fields(ContainerSpec) if f.name not in same):
        assert getattr(slot, name) == getattr(job, name), name
    assert set(slot.env) == set(container_env.WARM_SLOT_ALL)
    assert "the-secret" not in repr(slot)


def test_no_job_may_name_a_warm_slot_directory(settings: Settings) -> None:
    warm = settings.projects_dir / ".warm" / "slot"
    warm.mkdir(parents=True)
    for requested in (str(warm), ".warm/slot", "x/../.warm/slot"):
        if requested.startswith("x/"):
            (settings.projects_dir / "x").mkdir(exist_ok=True)
        with pytest.raises(InvalidArgument, match="warm pool"):
            open_project_dir(requested, settings.projects_dir)


def test_status_reads_the_pools_from_the_metrics_exposition() -> None:
    from orchestrator.cli.warm_pools import parse_warm_pools
    from orchestrator.jobs.warm_pool import PoolState
    from orchestrator.metrics import Metrics

    metrics = Metrics()
    metrics.watch_warm_pools(
        lambda: [PoolState(mode="worker", size=4, ready=3, starting=1, claims=2, misses=1)]
    )
    metrics.warm_pool_claim("worker", 0.004)
    metrics.warm_pool_claim("worker", 0.006)
    metrics.warm_pool_miss("worker", "empty")
    metrics.warm_pool_miss("worker", "project")
    pools = parse_warm_pools(metrics.exposition().decode(), {"claude-code": {"size": 1}})
    assert pools == {
        "worker": {"size": 4, "ready": 3, "starting": 1, "claims": 2, "misses": 2},
        "claude-code": {"size": 1, "claims": 0, "misses": 0},
    }


async def test_a_poll_without_a_claim_ends_empty_and_a_newer_poll_replaces_an_older(
    start: Callable[..., ContainerJobManager],
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    pool = _pool(manager)
    slot, _ = await _filled(pool)
    secret = _spec_of(backend, slot).env[container_env.WARM_SLOT_SECRET]
    assert await pool.await_claim(slot.slot_id, secret, 0.01) is None
    older = asyncio.get_running_loop().create_task(pool.await_claim(slot.slot_id, secret, 5.0))
    await wait_for(lambda: slot._poller is not None, what="the older poll")
    newer = asyncio.get_running_loop().create_task(pool.await_claim(slot.slot_id, secret, 5.0))
    assert await older is None
    assert pool.take(slot.mode) is slot
    assert await pool.deliver(slot, "job", "irc_token")
    assert await newer == ClaimAnswer(job_id="job", token="irc_token")


async def test_the_refill_waits_for_the_claims_under_way(
    start: Callable[..., ContainerJobManager],
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    manager.start_warm_pool()
    pool = _pool(manager)
    await _filled(pool)
    made = len(backend.created)
    taken = pool.take(JobMode.WORKER)
    assert taken is not None
    # Several of the pool's check intervals: no container is made while the claim runs.
    await asyncio.sleep(warm_pool.CHECK_INTERVAL_S * 4)
    assert len(backend.created) == made
    pool.discard(taken, "test")
    await wait_for(lambda: len(backend.created) == made + 1, what="the refill after the claim")
    await _filled(pool)
