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
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from orchestrator.certificates import (
    CertificateFilesError,
    check_private,
    issue_server_certificate,
    load_or_create_ca,
    private_pem,
    server_context,
    write_private,
)
from orchestrator.host_interfaces import interface_address

TLS_DIR_NAME = "worker-api-tls"
SERVER_FILE, SERVER_KEY_FILE = "server.pem", "server-key.pem"
SERVER_VALIDITY = datetime.timedelta(days=825)
# A server certificate this close to its end is made again at start.
RENEW_BEFORE = datetime.timedelta(days=30)
ALPN = ("http/1.1",)


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
            address = interface_address(name)
            if address:
                found.append(address)
    return found


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
    context = server_context(ALPN)
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
    server_path, key_path = directory / SERVER_FILE, directory / SERVER_KEY_FILE
    try:
        ca_cert, ca_key = load_or_create_ca(directory, "ironclaw worker API CA")
        if not _server_fits(server_path, key_path, ca_cert, names):
            cert, key = issue_server_certificate(ca_cert, ca_key, names, SERVER_VALIDITY)
            key_path.unlink(missing_ok=True)
            write_private(key_path, private_pem(key))
            server_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except CertificateFilesError as exc:
        raise WorkerTlsError(f"the worker API's TLS: {exc}") from None
    context = server_context(ALPN)
    context.load_cert_chain(str(server_path), str(key_path))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return WorkerApiTls(context=context, ca_pem=ca_pem, origin=str(directory))


def _server_fits(
    server_path: Path, key_path: Path, ca: x509.Certificate, names: Sequence[str]
) -> bool:
    """The server certificate on disk is the CA's, carries every name and is not near its end."""
    if not (server_path.exists() and key_path.exists()):
        return False
    check_private(key_path, f"remove {key_path.parent} for new ones")
    try:
        cert = x509.load_pem_x509_certificate(server_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if key.public_key() != cert.public_key():
        return False  # a start that died between writing the two: made again
    have = set(san.get_values_for_type(x509.DNSName))
    have |= {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    soon = datetime.datetime.now(datetime.UTC) + RENEW_BEFORE
    return cert.issuer == ca.subject and set(names) <= have and cert.not_valid_after_utc > soon
