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
import ipaddress
import os
import ssl
import stat
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.egress.policy import ip_literal

CA_DIR_NAME = "egress-ca"
CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=1)
LEAF_RENEW_BEFORE = datetime.timedelta(hours=1)
MAX_CACHED_LEAVES = 512
ALPN = ["http/1.1"]


class CaError(Exception):
    """The CA's files cannot be used; the message names the file and the fix, never the key."""


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
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if not key_path.exists():
            return cls._create(directory, cert_path, key_path)
        mode = key_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CaError(
                f"the egress CA key {key_path} may be read by others: chmod 600 it, or remove "
                "the directory for a new CA"
            )
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            raise CaError(
                f"the egress CA in {directory} cannot be read: remove the directory for a new CA"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"the egress CA key {key_path} is not an EC key: remove {directory}")
        return cls(cert, key, directory)

    @classmethod
    def _create(cls, directory: Path, cert_path: Path, key_path: Path) -> EgressCa:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ironclaw"),
                x509.NameAttribute(NameOID.COMMON_NAME, "ironclaw egress gateway CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created 0600 from the start: never a moment where the key is readable by others.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_bytes)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
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
        key = ec.generate_private_key(ec.SECP256R1())
        address = ip_literal(host)
        san: x509.GeneralName = (
            x509.IPAddress(ipaddress.ip_address(address)) if address else x509.DNSName(host)
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(ALPN)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._cert.public_bytes(
            serialization.Encoding.PEM
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The ssl module loads a key from a file only: a private one, removed at once.
        with tempfile.TemporaryDirectory(dir=self._directory) as scratch:
            chain_path, key_path = Path(scratch) / "leaf.pem", Path(scratch) / "leaf-key.pem"
            chain_path.write_bytes(chain)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key_pem)
            try:
                context.load_cert_chain(str(chain_path), str(key_path))
            finally:
                with contextlib.suppress(OSError):
                    key_path.unlink()
        return context


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
