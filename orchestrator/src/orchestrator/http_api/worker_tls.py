"""TLS of the worker API where it listens beyond loopback and the Docker bridge (a Swarm's host
address, later a pod's): the job token, its LLM calls and its credentials cross a network the
orchestrator does not own, so they are encrypted and the job checks whom it talks to.

The certificate is the operator's (``WORKER_API_TLS_CERT`` / ``WORKER_API_TLS_KEY``, with the CA
that signed it in ``WORKER_API_CA``), or, when none is set, the orchestrator's own: a CA and a
server certificate made once under ``<state>/worker-api-tls/`` (the directory 0700, the keys
0600) with the ``cryptography`` package, already a dependency for the egress CA. The server
certificate is made again from the same CA when the names it must carry change (another bind
address): jobs keep trusting the CA they were given. The CA's certificate is public: it goes to
each job container (``IRONCLAW_ORCHESTRATOR_CA``); no key ever leaves this process.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR_NAME = "worker-api-tls"
CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"
SERVER_FILE, SERVER_KEY_FILE = "server.pem", "server-key.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)
# A server certificate this close to its end is made again at start.
RENEW_BEFORE = datetime.timedelta(days=30)


class WorkerTlsError(Exception):
    """The worker API's TLS files cannot be used; the message names the file, never a key."""


@dataclass(frozen=True)
class WorkerApiTls:
    """What the worker API serves with, and what job containers must trust."""

    context: ssl.SSLContext
    ca_pem: str
    origin: str  # "operator" or the directory of the orchestrator's own CA

    def __repr__(self) -> str:
        return f"WorkerApiTls(origin={self.origin!r}, key=***)"


def is_local_bind(host: str, bridge_addresses: Iterable[str]) -> bool:
    """Whether a worker API on ``host`` is reached over loopback or a Docker bridge of this host
    only (its traffic never leaves the machine): then plaintext is acceptable."""
    if host in ("localhost", "::1", "[::1]") or host.startswith("127."):
        return True
    if host in ("0.0.0.0", "::", ""):
        return False
    return host in set(bridge_addresses)


def bridge_addresses(gateway: str | None) -> list[str]:
    """The host's addresses on Docker bridges: the engine's default gateway and the address of
    every ``docker0``/``br-*`` interface (user-defined bridge networks)."""
    found = [gateway] if gateway else []
    for _, name in socket.if_nameindex():
        if name == "docker0" or name.startswith("br-"):
            address = _interface_address(name)
            if address:
                found.append(address)
    return found


def _interface_address(name: str) -> str | None:
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15])
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def server_names(url_host: str, bind: str) -> list[str]:
    """The names the server certificate must carry: the host of the jobs' URL (the relay's
    alias, or the bind address itself) and the bind address, when it is a single one."""
    names = [url_host]
    if bind not in ("0.0.0.0", "::", "") and bind not in names:
        names.append(bind)
    return names


def operator_tls(cert: Path, key: Path, ca: Path) -> WorkerApiTls:
    """The operator's certificate and key, and the CA jobs are to trust."""
    try:
        ca_pem = ca.read_text(encoding="ascii")
        x509.load_pem_x509_certificates(ca_pem.encode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise WorkerTlsError(f"WORKER_API_CA={ca}: not a PEM file of CA certificates") from None
    context = _server_context()
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError):
        raise WorkerTlsError(
            f"WORKER_API_TLS_CERT={cert} / WORKER_API_TLS_KEY={key}: not a PEM certificate and "
            "the key that belongs to it"
        ) from None
    return WorkerApiTls(context=context, ca_pem=ca_pem, origin="operator")


def own_tls(state_dir: Path, names: Sequence[str]) -> WorkerApiTls:
    """The orchestrator's own CA and a server certificate for ``names``, made once under
    ``state_dir`` and loaded from there afterwards."""
    directory = state_dir / TLS_DIR_NAME
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_cert, ca_key = _load_or_create_ca(directory)
    server_path, key_path = directory / SERVER_FILE, directory / SERVER_KEY_FILE
    if not _server_fits(server_path, key_path, ca_cert, names):
        _issue_server(ca_cert, ca_key, names, server_path, key_path)
    context = _server_context()
    context.load_cert_chain(str(server_path), str(key_path))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return WorkerApiTls(context=context, ca_pem=ca_pem, origin=str(directory))


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _check_private(path: Path) -> None:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WorkerTlsError(
            f"the worker API's key {path} may be read by others: chmod 600 it, or remove "
            f"{path.parent} for new ones"
        )


def _load_or_create_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if key_path.exists():
        _check_private(key_path)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            raise WorkerTlsError(
                f"the worker API's CA in {directory} cannot be read: remove the directory for a "
                "new one"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise WorkerTlsError(f"the worker API's CA key {key_path} is not an EC key")
        return cert, key
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ironclaw"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ironclaw worker API CA"),
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _server_fits(
    server_path: Path, key_path: Path, ca: x509.Certificate, names: Sequence[str]
) -> bool:
    """The server certificate on disk is the CA's, carries every name and is not near its end."""
    if not (server_path.exists() and key_path.exists()):
        return False
    _check_private(key_path)
    try:
        cert = x509.load_pem_x509_certificate(server_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = set(san.get_values_for_type(x509.DNSName))
    have |= {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    soon = datetime.datetime.now(datetime.UTC) + RENEW_BEFORE
    return cert.issuer == ca.subject and set(names) <= have and cert.not_valid_after_utc > soon


def _issue_server(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    server_path: Path,
    key_path: Path,
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path.unlink(missing_ok=True)
    _write_private(key_path, key)
    server_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
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
