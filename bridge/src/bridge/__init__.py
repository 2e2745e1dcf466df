"""The Claude Code bridge: runs the real ``claude`` CLI for one job inside its container
(``ironclaw-claude-bridge``) and turns its stream-json output into the job's events and result.

Standard library only, like the worker, whose worker-API client it shares (:mod:`worker.client`).
"""
