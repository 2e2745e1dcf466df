"""The orchestrator's domain types: what a job is, its states and the rules between them.

Nothing here imports the rest of the orchestrator (containers, store, tokens, tool catalogue,
the job manager): every other part speaks in these types, so the dependencies point one way.
"""
