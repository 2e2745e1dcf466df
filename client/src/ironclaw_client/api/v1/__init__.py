"""Generated from protos/ironclaw_client/api/v1/jobs.proto by `make protos`; do not edit."""
