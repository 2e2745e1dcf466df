"""The raw baseline's stand-in for the worker API: notes each job's first call, answers 401.

``python -m bench.first_call_server --host GATEWAY`` serves ``/worker/{job_id}/...`` on the
Docker bridge gateway (where the orchestrator's worker API listens) and prints
``READY {"port": N}``. Each job's first request is reported as
``{"event": "first_call", "job_id", "t_ns"}`` with ``time.monotonic_ns()``, taken in the
handler as the orchestrator's time is. The answer is the worker API's 401, so
``ironclaw-worker`` stops at once (token rejected) after exactly the call being timed.
It is aiohttp, as the worker API is, so both sides parse the request the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiohttp import web

from bench.procs import announce_ready, emit


def build_app() -> web.Application:
    seen: set[str] = set()

    async def any_call(request: web.Request) -> web.Response:
        now = time.monotonic_ns()
        job_id = request.match_info["job_id"]
        if job_id not in seen:
            seen.add(job_id)
            emit({"event": "first_call", "job_id": job_id, "t_ns": now, "path": request.path})
        return web.json_response(
            {"error": "unauthenticated", "message": "missing, invalid or revoked token"},
            status=401,
        )

    app = web.Application()
    app.router.add_route("*", "/worker/{job_id}/{tail:.*}", any_call)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce_ready({"port": bound, "host": host})
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
