"""What the orchestrator and the code in its job containers must agree on, written once.

Standard library only: the orchestrator imports it, and so do the worker and the Claude bridge
in every job image. A fact both sides of the container boundary rely on (an env var name, a
worker-API path or field, a refusal code, a reserved env name, a secret pattern, a catalogue
rule) lives here and nowhere else, so the two sides cannot drift apart.

- :mod:`ironclaw_contract.container_env`: the four variables a job container is started with.
- :mod:`ironclaw_contract.worker_api`: the worker API's paths, JSON shapes and refusal codes.
- :mod:`ironclaw_contract.env_names`: which env names a credential may take, and the default.
- :mod:`ironclaw_contract.secret_patterns`: what a secret looks like (masking and refusing).
- :mod:`ironclaw_contract.claude`: the Claude Code CLI's tool names and model aliases.
- :mod:`ironclaw_contract.mcp_catalog`, :mod:`ironclaw_contract.wasm_catalog`: the operator's
  custom-tool catalogues, validated the same way by the orchestrator and the worker.
"""

__version__ = "0.1.0"
