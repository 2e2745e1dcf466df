"""The program of a job's relay container (``JOB_NETWORK=isolated``), run as ``python3 -c``.

It forwards each of ``RELAY_PORTS`` (the worker API's, and the egress gateway's when the job goes
out through it) to the same port of ``RELAY_UPSTREAM_HOST``, byte for byte, standard library
only, with bounds of its own so a job can neither exhaust it nor amplify through it:

* ``RELAY_MAX_CONNECTIONS`` open client connections at most, all ports together
  (``JOB_RELAY_MAX_CONNECTIONS``):
  the job's cap wherever the worker API cannot tell jobs apart by address (behind a published
  port every connection comes from the bridge gateway); excess ones are aborted unread and
  never cost an upstream connection;
* a client connection opens its upstream connection only once its first bytes arrived within
  ``RELAY_FIRST_BYTE_TIMEOUT_S``: idle connections never reach the orchestrator;
* a connection with no byte either way for ``RELAY_IDLE_TIMEOUT_S`` is closed (the orchestrator's
  own HTTP deadlines close the upstream side sooner; this covers an upstream gone silent);
* reaching the upstream takes at most ``RELAY_CONNECT_TIMEOUT_S``;
* refusals and accept errors are one log line a minute, with counts, never one per event.
"""

from __future__ import annotations

RELAY_SCRIPT = r"""
import asyncio, os, time
HOST = os.environ["RELAY_UPSTREAM_HOST"]
PORTS = [int(p) for p in os.environ["RELAY_PORTS"].split(",")]
BIND = os.environ.get("RELAY_BIND", "0.0.0.0")
MAX_CONNECTIONS = int(os.environ.get("RELAY_MAX_CONNECTIONS", "64"))
FIRST_BYTE_TIMEOUT = float(os.environ.get("RELAY_FIRST_BYTE_TIMEOUT_S", "10"))
IDLE_TIMEOUT = float(os.environ.get("RELAY_IDLE_TIMEOUT_S", "900"))
CONNECT_TIMEOUT = float(os.environ.get("RELAY_CONNECT_TIMEOUT_S", "10"))
REPORT_EVERY = float(os.environ.get("RELAY_REPORT_INTERVAL_S", "60"))
state = {"open": 0, "refused": 0, "timed_out": 0, "accept_errors": 0, "reported": 0.0}

def report(force=False):
    counts = {k: state[k] for k in ("refused", "timed_out", "accept_errors") if state[k]}
    if not counts:
        return
    now = time.monotonic()
    if not force and now - state["reported"] < REPORT_EVERY:
        return
    print("relay:", " ".join(f"{k}={v}" for k, v in counts.items()),
          f"open={state['open']} (counts since the previous line)", flush=True)
    for k in counts:
        state[k] = 0
    state["reported"] = now

async def pipe(reader, writer, activity):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            activity[0] = time.monotonic()
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def relay(reader, writer, port):
    try:
        first = await asyncio.wait_for(reader.read(65536), FIRST_BYTE_TIMEOUT)
    except (asyncio.TimeoutError, OSError):
        state["timed_out"] += 1
        return
    if not first:
        return
    try:
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port), CONNECT_TIMEOUT)
    except (asyncio.TimeoutError, OSError):
        return
    up_writer.write(first)
    activity = [time.monotonic()]
    tasks = [asyncio.ensure_future(pipe(reader, up_writer, activity)),
             asyncio.ensure_future(pipe(up_reader, writer, activity))]
    try:
        while True:
            _, pending = await asyncio.wait(tasks, timeout=min(IDLE_TIMEOUT, 5.0))
            if not pending:
                return
            if time.monotonic() - activity[0] >= IDLE_TIMEOUT:
                state["timed_out"] += 1
                return
    finally:
        for task in tasks:
            task.cancel()
        up_writer.transport.abort()

async def handle(reader, writer, port):
    if state["open"] >= MAX_CONNECTIONS:
        writer.transport.abort()
        state["refused"] += 1
        report()
        return
    state["open"] += 1
    try:
        await relay(reader, writer, port)
    finally:
        state["open"] -= 1
        writer.transport.abort()
        report()

def on_loop_error(loop, context):
    if context.get("message") == "socket.accept() out of system resource":
        state["accept_errors"] += 1
        report()
        return
    loop.default_exception_handler(context)

async def main():
    asyncio.get_running_loop().set_exception_handler(on_loop_error)
    servers = [
        await asyncio.start_server(
            lambda r, w, port=port: handle(r, w, port), BIND, port, backlog=128)
        for port in PORTS
    ]
    print("relay ready", flush=True)
    while True:
        await asyncio.sleep(REPORT_EVERY)
        report(force=True)
asyncio.run(main())
"""
