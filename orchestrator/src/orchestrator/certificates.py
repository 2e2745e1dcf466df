"""The certificate work both of the orchestrator's own CAs share (the egress gateway's,
egress/ca.py, and the worker API's, http_api/worker_tls.py): a CA made once in a private
directory and loaded from there afterwards, server certificates it signs, and private keys
written so that no one else can ever read them.

A key never leaves these files and the process: no error message names more than its path.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
# Backdated a little: a job whose clock lags the orchestrator's still accepts a new certificate.
BACKDATE = datetime.timedelta(minutes=5)


class CertificateFilesError(Exception):
    """A CA's or a key's files cannot be used; the message names the file and the fix."""


def check_private(path: Path, fix: str) -> None:
    """Refuses a key file others may read rather than using it."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CertificateFilesError(f"the key {path} may be read by others: chmod 600 it, or {fix}")


def load_or_create_ca(
    directory: Path, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``directory`` (made 0700), created there first if there is none."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    fix = f"remove {directory} for a new CA"
    if key_path.exists():
        check_private(key_path, fix)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            raise CertificateFilesError(f"the CA in {directory} cannot be read: {fix}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateFilesError(f"the CA key {key_path} is not an EC key: {fix}")
        return cert, key
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ironclaw"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, private_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue_server_certificate(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    validity: datetime.timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` (host names or IP literals, the first one its common
    name), with a key of its own, signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([subject_alt_name(name) for name in names]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def subject_alt_name(name: str) -> x509.GeneralName:
    """An IP address entry for an IP literal (``[v6]`` or bare), else a DNS name."""
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(name)


def server_context(alpn: Sequence[str]) -> ssl.SSLContext:
    """A TLS server context, TLS 1.2 at least, offering ``alpn``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    return context


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: never a moment where the key is readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


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
