"""``python -m bench.watchers --target HOST:PORT --job ID --count N``: N ``WatchJob`` streams
on one job, in their own process (grpc.aio, one event loop; streams spread over a few
channels).

Prints ``READY {"watchers": N}`` once every stream has received its first message (the job's
snapshot). Then, for every EVENT update whose data carries a number ``i`` (posted by the
benchmark), it notes when each stream received it (``time.monotonic_ns()``) and, once all N
have, prints ``{"event": "fanout", "i", "first_ns", "last_ns", "received"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from bench.procs import announce_ready, emit

STREAMS_PER_CHANNEL = 25


async def run(target: str, job_id: str, count: int) -> None:
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    channels = [
        aio.insecure_channel(target) for _ in range(max(1, -(-count // STREAMS_PER_CHANNEL)))
    ]
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    ready = 0
    all_ready = asyncio.Event()
    received: dict[int, list[int]] = {}

    async def watch(index: int) -> None:
        nonlocal ready
        stub = stubs[index // STREAMS_PER_CHANNEL]
        first = True
        async for update in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            now = time.monotonic_ns()
            if first:
                first = False
                ready += 1
                if ready == count:
                    all_ready.set()
                continue
            if not update.HasField("event"):
                continue
            fields = update.event.data.fields
            if "i" not in fields:
                continue
            i = int(fields["i"].number_value)
            times = received.setdefault(i, [])
            times.append(now)
            if len(times) == count:
                emit(
                    {
                        "event": "fanout",
                        "i": i,
                        "first_ns": min(times),
                        "last_ns": max(times),
                        "received": len(times),
                    }
                )
                del received[i]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(watch(i)) for i in range(count)]
    await asyncio.wait_for(all_ready.wait(), 60)
    announce_ready({"watchers": count})
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.target, args.job, args.count))


if __name__ == "__main__":
    main()
