"""The agent that runs inside a worker container as ``ironclaw worker``.

Standard library only: the worker image carries no third-party packages. The worker API client
in :mod:`worker.client` is shared with the Claude Code bridge.
"""
