"""The orchestrator's own CA, with which the egress gateway terminates TLS for the hosts a job's
credentials are injected into (inject.py, intercept.py).

Created on first start in the state dir (``<state>/egress-ca/``: the directory 0700, the key
0600), loaded from there afterwards so jobs that outlive a restart keep trusting it. Its
certificate is what job containers add to their trust store (``GET /job`` ``egress.ca_pem``);
its key never leaves the orchestrator: not in a container, a log line or an error. A key file
others may read is refused at start rather than used.

Leaf certificates are made on demand, one per name, valid for a day (re-made an hour before
they expire), each with its own key, and cached (a bounded number of names). They offer ALPN
``http/1.1`` only: the gateway speaks HTTP/1.1 inside, so an HTTP/2 client falls back.
"""

from __future__ import annotations

import contextlib
import datetime
import ssl
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from orchestrator.certificates import (
    CertificateFilesError,
    issue_server_certificate,
    load_or_create_ca,
    private_pem,
    server_context,
    write_private,
)

CA_DIR_NAME = "egress-ca"
LEAF_VALIDITY = datetime.timedelta(days=1)
LEAF_RENEW_BEFORE = datetime.timedelta(hours=1)
MAX_CACHED_LEAVES = 512
ALPN = ["http/1.1"]

# The CA's files cannot be used; the message names the file and the fix, never the key.
CaError = CertificateFilesError


@dataclass
class _Leaf:
    context: ssl.SSLContext
    renew_at: datetime.datetime


class EgressCa:
    """The CA and its cache of leaf server contexts."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path):
        self._cert = cert
        self._key = key
        self._directory = directory
        self._leaves: OrderedDict[str, _Leaf] = OrderedDict()
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def __repr__(self) -> str:
        return f"EgressCa(dir={str(self._directory)!r}, key=***)"

    @classmethod
    def load_or_create(cls, state_dir: Path) -> EgressCa:
        """The CA under ``state_dir``, made there first if there is none."""
        directory = state_dir / CA_DIR_NAME
        cert, key = load_or_create_ca(directory, "ironclaw egress gateway CA")
        return cls(cert, key, directory)

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for ``host`` (canonical name or address)."""
        now = datetime.datetime.now(datetime.UTC)
        leaf = self._leaves.get(host)
        if leaf is not None and now < leaf.renew_at:
            self._leaves.move_to_end(host)
            return leaf.context
        context = self._issue(host, now)
        self._leaves[host] = _Leaf(context, now + LEAF_VALIDITY - LEAF_RENEW_BEFORE)
        self._leaves.move_to_end(host)
        while len(self._leaves) > MAX_CACHED_LEAVES:
            self._leaves.popitem(last=False)
        return context

    def _issue(self, host: str, now: datetime.datetime) -> ssl.SSLContext:
        cert, key = issue_server_certificate(self._cert, self._key, [host], LEAF_VALIDITY)
        context = server_context(ALPN)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._cert.public_bytes(
            serialization.Encoding.PEM
        )
        # The ssl module loads a key from a file only: a private one, removed at once.
        with tempfile.TemporaryDirectory(dir=self._directory) as scratch:
            chain_path, key_path = Path(scratch) / "leaf.pem", Path(scratch) / "leaf-key.pem"
            chain_path.write_bytes(chain)
            write_private(key_path, private_pem(key))
            try:
                context.load_cert_chain(str(chain_path), str(key_path))
            finally:
                with contextlib.suppress(OSError):
                    key_path.unlink()
        return context
