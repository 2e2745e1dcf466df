"""Encrypts credential grants at rest with AES-GCM, when ORCHESTRATOR_SECRETS_KEY is set."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orchestrator.domain.jobs import CredentialGrant, InjectFormat
from orchestrator.secrets import Secret

_NONCE_BYTES = 12


class GrantSealer:
    """Seals and opens a job's grants; the job id is authenticated data, so a sealed blob
    cannot be moved to another job."""

    def __init__(self, key: Secret) -> None:
        raw = key.reveal().encode()
        try:
            decoded = base64.b64decode(raw, validate=True)
        except ValueError:
            decoded = b""
        # A 32-byte base64 key is used as is; any other string is stretched to 32 bytes.
        material = decoded if len(decoded) == 32 else hashlib.sha256(raw).digest()
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return "GrantSealer(key=***)"

    def seal(self, job_id: str, grants: Sequence[CredentialGrant]) -> bytes:
        plain = json.dumps(
            [
                {
                    "name": g.name,
                    "credential_type": g.credential_type,
                    "value": g.value.reveal(),
                    "env_name": g.env_name,
                    "inject_hosts": list(g.inject_hosts),
                    "inject_header": g.inject_header,
                    "inject_format": g.inject_format.value,
                    "placeholder": g.placeholder,
                }
                for g in grants
            ]
        ).encode()
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, job_id.encode())

    def open(self, job_id: str, sealed: bytes) -> tuple[CredentialGrant, ...] | None:
        """The grants, or None when the key does not open them (changed key, tampering)."""
        try:
            plain = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], job_id.encode()
            )
        except (InvalidTag, ValueError):
            return None
        return tuple(
            CredentialGrant(
                name=item["name"],
                credential_type=item["credential_type"],
                value=Secret(item["value"]),
                env_name=item["env_name"],
                # Absent from grants sealed before injection existed: those are not injected.
                inject_hosts=tuple(item.get("inject_hosts", ())),
                inject_header=item.get("inject_header", ""),
                inject_format=InjectFormat(item.get("inject_format", InjectFormat.BEARER.value)),
                placeholder=item.get("placeholder", ""),
            )
            for item in json.loads(plain)
        )
