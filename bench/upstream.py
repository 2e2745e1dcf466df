"""A fake OpenAI-compatible upstream that answers instantly, in its own process.

``python -m bench.upstream [--host H] [--port P]`` prints ``READY {"port": N}`` and serves
``POST .../chat/completions`` with one fixed, complete Chat Completions document (text answer
with usage) until SIGTERM. Every other request is a 404 in OpenAI's error shape. It is a bare
``asyncio.Protocol`` so its own cost per request stays far below what is measured through it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from bench.procs import announce_ready
from bench.wire import FramingError, build_response, take_message

MODEL = "gpt-4o-mini"
COMPLETION = {
    "id": "chatcmpl-bench0000000000000000",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    "system_fingerprint": None,
}
_OK = build_response(200, "OK", json.dumps(COMPLETION).encode(), "application/json")
_NOT_FOUND = build_response(
    404,
    "Not Found",
    json.dumps(
        {"error": {"message": "Invalid URL", "type": "invalid_request_error", "code": None}}
    ).encode(),
    "application/json",
)


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; answers each complete request at once."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        try:
            while (request := take_message(self._buffer)) is not None:
                method, path = request.start_line.split(b" ", 2)[:2]
                ok = method == b"POST" and path.split(b"?")[0].endswith(b"/chat/completions")
                self._transport.write(_OK if ok else _NOT_FOUND)
                if request.headers.get(b"connection", b"").lower() == b"close":
                    self._transport.close()
                    return
        except (FramingError, ValueError):
            self._transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce_ready({"port": server.sockets[0].getsockname()[1]})
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
