"""The floor of a WatchJob fan-out on grpc.aio, in its own process: the control-plane
benchmark's baseline for "an event reaches 100 watchers".

``python -m bench.fanout_floor`` serves ``ironclaw.orchestrator.v1.JobService/WatchJob`` and
``POST /worker/{id}/event`` the way the orchestrator does, with nothing else: no job manager, no
store, no validation. Each event is converted to a ``JobUpdate`` and serialized once, and every
stream writes those bytes (identity serializer); the streams wait on one shared
``asyncio.Event``, swapped per event. Prints ``READY`` with the same keys as
``bench.orchestrator_server --sleep-job``, so the same watchers and driver measure both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from grpc import aio

from bench.procs import announce_ready
from ironclaw_client.api.v1 import jobs_pb2 as pb

SERVICE = "ironclaw.orchestrator.v1.JobService"
JOB_ID = "00000000-0000-4000-8000-000000000000"


class Broadcast:
    """The latest event, serialized once, and the signal its watchers wait on."""

    def __init__(self) -> None:
        self.sequence = 0
        self.encoded = b""
        self.changed = asyncio.Event()

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        self.sequence += 1
        update = pb.JobUpdate(sequence=self.sequence, event=pb.JobEvent(event_type=event_type))
        update.event.data.update(data)
        self.encoded = update.SerializeToString()
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


async def run() -> None:
    broadcast = Broadcast()

    async def watch(request: pb.WatchJobRequest, context: Any) -> AsyncIterator[bytes]:
        yield pb.JobUpdate(snapshot=pb.Job(job_id=request.job_id)).SerializeToString()
        seen = broadcast.sequence
        while True:
            changed = broadcast.changed
            if broadcast.sequence != seen:
                seen = broadcast.sequence
                yield broadcast.encoded
                continue
            await changed.wait()

    async def post_event(request: web.Request) -> web.Response:
        body = await request.json()
        broadcast.publish(body["event_type"], body["data"])
        return web.json_response({"status": "ok"})

    server = aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        watch, request_deserializer=pb.WatchJobRequest.FromString, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"WatchJob": handler}),)
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = web.Application()
    app.router.add_post("/worker/{job_id}/event", post_event)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce_ready(
        {
            "grpc_port": grpc_port,
            "http_port": sock.getsockname()[1],
            "http_host": "127.0.0.1",
            "pid": os.getpid(),
            "job_id": JOB_ID,
            "token": "unused",
        }
    )
    await stop.wait()
    await runner.cleanup()
    await server.stop(0)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
