"""The agent that runs inside a worker container as ``ironclaw-worker``.

The agent loop and its built-in tools use the standard library only. Custom tools need the
``worker`` install extra (the ``mcp`` SDK for MCP servers, ``wasmtime`` for WASM tools), which the
worker image carries; the image has no grpcio, docker or provider SDKs. The worker API client in
:mod:`worker.client` is shared with the Claude Code bridge.
"""
