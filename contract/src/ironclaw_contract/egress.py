"""How a job's tools reach the internet: through the orchestrator's egress gateway, only.

``GET /job`` carries an ``egress`` section (:class:`~ironclaw_contract.worker_api.EgressInfo`)
when the job's network has no other way out. The worker and the bridge then give every command
they run the proxy variables below, whose URL holds the job's egress key (never the worker
token), and, when the gateway terminates TLS for hosts it injects credentials into, a CA bundle
that trusts the gateway's CA besides the system's. Both sides build that environment here, so
the names a tool reads are written once.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Final

# The gateway's user name in the proxy URL is the job id, the password its egress key.
PROXY_ENV_NAMES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
NO_PROXY_ENV_NAMES: Final = ("NO_PROXY", "no_proxy")
# Every variable a common tool reads a CA bundle from: OpenSSL and curl, Python's requests and
# pip, git, Node.js (which adds to its own bundle rather than replacing it).
CA_BUNDLE_ENV_NAMES: Final = (
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
ALL_ENV_NAMES: Final = PROXY_ENV_NAMES + NO_PROXY_ENV_NAMES + CA_BUNDLE_ENV_NAMES

# Where Debian (the images' base) keeps the system's trusted roots.
SYSTEM_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")


def proxy_url(gateway_url: str, job_id: str, egress_key: str) -> str:
    """``gateway_url`` (``http://host:port``) with the job's proxy credentials in it."""
    parts = urllib.parse.urlsplit(gateway_url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"an egress gateway URL is http://host:port, not {gateway_url!r}")
    user = urllib.parse.quote(job_id, safe="")
    password = urllib.parse.quote(egress_key, safe="")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{user}:{password}@{host}:{parts.port}"


def write_ca_bundle(directory: Path, gateway_ca_pem: str, system_bundle: Path) -> Path:
    """A bundle of the system's roots and the gateway's CA, private to the job's user, in
    ``directory`` (the root filesystem is read-only: the system bundle cannot be extended in
    place)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    bundle = directory / "ca-bundle.pem"
    system = system_bundle.read_text(encoding="ascii") if system_bundle.is_file() else ""
    text = system.rstrip("\n") + "\n" + gateway_ca_pem.strip("\n") + "\n"
    bundle.write_text(text.lstrip("\n"), encoding="ascii")
    bundle.chmod(0o600)
    return bundle


def egress_environment(
    info: Mapping[str, object], job_id: str, egress_key: str, ca_bundle: Path | None
) -> dict[str, str]:
    """The variables every command of the job gets, from ``GET /job``'s ``egress`` section."""
    url = proxy_url(str(info["proxy_url"]), job_id, egress_key)
    env = dict.fromkeys(PROXY_ENV_NAMES, url)
    env.update(dict.fromkeys(NO_PROXY_ENV_NAMES, str(info.get("no_proxy") or "")))
    if ca_bundle is not None:
        env.update(dict.fromkeys(CA_BUNDLE_ENV_NAMES, str(ca_bundle)))
    return env
