"""Where the orchestrator is and how to authenticate to it: from arguments, else from the
environment the ``ironclaw`` CLI reads, else the defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TARGET = "localhost:50051"
# The variables `ironclaw job ...` reads; the client reads the same ones.
ENV_TARGET = "IRONCLAW_ORCHESTRATOR"
ENV_ADMIN_TOKEN = "ORCHESTRATOR_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_TLS_CA = "IRONCLAW_TLS_CA"
ENV_TLS_SERVER_NAME = "IRONCLAW_TLS_SERVER_NAME"
_TLS_SCHEME = "https://"


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the control plane.

    ``target`` is ``host:port``; an ``https://`` prefix, ``tls=True`` or a CA (``ca_file`` /
    ``root_certificates``) turns TLS on. Without a CA, TLS trusts the system's roots.
    ``tls_server_name`` checks the certificate for another name than the target's host.
    ``admin_token`` is sent as ``authorization: Bearer ...`` and never shown in ``repr``.
    """

    target: str = DEFAULT_TARGET
    admin_token: str | None = field(default=None, repr=False)
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        if self.target.startswith(_TLS_SCHEME):
            object.__setattr__(self, "target", self.target.removeprefix(_TLS_SCHEME))
            object.__setattr__(self, "tls", True)
        if self.root_certificates is not None:
            object.__setattr__(self, "tls", True)
        if not self.target:
            raise ValueError("the orchestrator's address is empty: give host:port")

    def __repr__(self) -> str:
        token = "***" if self.admin_token else None
        return (
            f"ClientConfig(target={self.target!r}, admin_token={token}, tls={self.tls}, "
            f"tls_server_name={self.tls_server_name!r})"
        )

    @classmethod
    def resolve(
        cls,
        target: str | None = None,
        *,
        admin_token: str | None = None,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        root_certificates: bytes | None = None,
        tls_server_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Each argument given wins; each one left out comes from ``env`` (default:
        ``os.environ``): IRONCLAW_ORCHESTRATOR, ORCHESTRATOR_ADMIN_TOKEN, IRONCLAW_TLS_CA,
        IRONCLAW_TLS_SERVER_NAME."""
        env = os.environ if env is None else env
        if root_certificates is None:
            path = ca_file if ca_file is not None else env.get(ENV_TLS_CA) or None
            if path is not None:
                try:
                    root_certificates = Path(path).read_bytes()
                except OSError as exc:
                    raise ValueError(f"cannot read the TLS CA file {path}: {exc}") from None
        return cls(
            target=target or env.get(ENV_TARGET) or DEFAULT_TARGET,
            admin_token=admin_token if admin_token is not None else env.get(ENV_ADMIN_TOKEN),
            tls=bool(tls),
            root_certificates=root_certificates,
            tls_server_name=tls_server_name or env.get(ENV_TLS_SERVER_NAME) or None,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),) if self.admin_token else ()

    def channel_options(self) -> list[tuple[str, int | str]]:
        options: list[tuple[str, int | str]] = [
            # gRPC's own reconnect backoff grows to two minutes: a watch resuming after an
            # orchestrator restart would wait that long for a server that is already back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.tls and self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options
