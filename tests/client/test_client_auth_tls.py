"""Admin-token and TLS failures surface as the documented exceptions, with the server's
message and never the token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ironclaw_client import (
    AsyncClient,
    Client,
    ClientConfig,
    TLSError,
    Unauthenticated,
    Unavailable,
)
from tests.client.conftest import StartFn, make_certificate

TOKEN = "admin-" + "s3cret" * 4


async def test_a_missing_or_wrong_admin_token_is_unauthenticated(
    start_fake_orch: StartFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start_fake_orch(ORCHESTRATOR_ADMIN_TOKEN=TOKEN)
    monkeypatch.delenv("ORCHESTRATOR_ADMIN_TOKEN", raising=False)
    async with AsyncClient(running.target) as client:
        with pytest.raises(Unauthenticated) as missing:
            await client.get_job("00000000-0000-4000-8000-000000000000")
        with pytest.raises(Unauthenticated):
            _ = [u async for u in client.watch("00000000-0000-4000-8000-000000000000")]
    assert "ORCHESTRATOR_ADMIN_TOKEN" in missing.value.message
    assert missing.value.code == "UNAUTHENTICATED"

    def wrong() -> Unauthenticated:
        with (
            Client(running.target, admin_token="wrong") as client,
            pytest.raises(Unauthenticated) as info,
        ):
            client.create_job("x")
        return info.value

    refused = await asyncio.to_thread(wrong)
    assert TOKEN not in str(refused)
    assert not running.backend.created

    # The token from the environment the CLI reads, as the CLI would send it.
    monkeypatch.setenv("ORCHESTRATOR_ADMIN_TOKEN", TOKEN)
    async with AsyncClient(running.target) as client:
        assert TOKEN not in repr(client)
        assert "***" in repr(client)
        created = await client.create_job("x")
        assert (await client.get_job(created.job.job_id)).job_id == created.job.job_id


async def test_tls_with_the_right_ca_works_and_every_other_way_fails_clearly(
    start_fake_orch: StartFn, tmp_path: Path
) -> None:
    server = make_certificate(tmp_path, "server")
    stranger = make_certificate(tmp_path, "stranger")
    running = await start_fake_orch(
        ORCHESTRATOR_TLS_CERT=str(server.cert), ORCHESTRATOR_TLS_KEY=str(server.key)
    )
    target = running.target

    async with AsyncClient(target, ca_file=server.cert) as client:
        assert await client.health() == "SERVING"
        assert [j async for j in client.list_jobs()] == []

    # A certificate no configured CA vouches for: a TLS error, at once, not a retry loop.
    for ca in (stranger.cert, None):
        config = ClientConfig.resolve(f"https://{target}", ca_file=ca, env={})
        assert config.tls
        async with AsyncClient(config=config, reconnect_timeout=30) as client:
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(TLSError) as info:
                await client.get_job("00000000-0000-4000-8000-000000000000")
            assert loop.time() - began < 10
            assert isinstance(info.value, Unavailable)

    # The CA from the environment the CLI reads.
    def from_env() -> int:
        config = ClientConfig.resolve(target, env={"IRONCLAW_TLS_CA": str(server.cert)})
        with Client(config=config) as client:
            return len(list(client.list_jobs()))

    assert await asyncio.to_thread(from_env) == 0

    # Plaintext against a TLS port: the server is unreachable as far as this client can tell.
    async with AsyncClient(target, reconnect_timeout=1) as client:
        with pytest.raises(Unavailable):
            await client.get_job("00000000-0000-4000-8000-000000000000")
