"""Workspaces that are not a directory the caller names on the orchestrator's host: trees
uploaded as archives (``uploads``), and a job's project streamed back as one (``downloads``)."""
