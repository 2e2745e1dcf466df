"""Per-job bearer tokens, per-job LLM keys, and the credentials granted to each job.

A token is ``irc_`` + 32 bytes from the OS CSPRNG, URL-safe. Only its SHA-256 digest is kept, in
a dict keyed by job id: validation is one dict lookup (O(1) however many jobs are live) and one
constant-time comparison of digests, and the token is bound to its job by construction (a token
of job A checked against job B compares against B's digest and fails).

A Claude Code job has a second secret, its LLM key (``ircl_`` + 32 bytes): the Claude Code CLI's
``ANTHROPIC_API_KEY``. It opens only that job's Anthropic route, so the agent's own commands,
which can read the CLI's environment, can make model calls on the job's budget but cannot read
its credentials, post its events or end it: those take the worker token, which stays with the
bridge. The key is validated like the token (its digest, persisted the same way) and dies with
it. Its clear value is kept in memory until the job ends, for ``GET /job`` to hand to the bridge
(after a restart only the digest is back: the bridge already has the key).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace

from ironclaw_contract.env_names import GRANT_NAME_PATTERN, default_env_name, env_name_problem
from ironclaw_contract.job_keys import (
    EGRESS_KEY_PREFIX,
    LLM_KEY_PREFIX,
    egress_key_for,
    llm_key_for,
)
from orchestrator.domain.jobs import CredentialGrant
from orchestrator.egress.inject import DEFAULT_HEADER, make_placeholder
from orchestrator.egress.policy import PolicyError, parse_rules
from orchestrator.errors import InvalidArgument
from orchestrator.secrets import Secret

TOKEN_PREFIX = "irc_"  # noqa: S105 - a prefix, not a secret
# Distinct from the token's ("ircl_" does not start with "irc_"), so neither is ever taken for
# the other; ironclaw_contract.secret_patterns masks both.
_TOKEN_BYTES = 32
# A credential is a token, a key or a small file (a kubeconfig, a PEM key): 64 KiB is ample.
MAX_CREDENTIAL_BYTES = 64 * 1024
CREDENTIAL_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MAX_INJECT_HOSTS = 64
MAX_INJECT_HOST_CHARS = 262  # a 253-character name, a port
MAX_HEADER_NAME_CHARS = 64
HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the request or address the proxy: a credential written there would
# change what the request is, not who sends it.
RESERVED_INJECT_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def token_digest(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored (and persisted)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def validate_grant(name: str, credential_type: str, value: str, env_name: str) -> CredentialGrant:
    """Checks a grant's names and returns it with its env name filled in.

    Raises InvalidArgument; the message names the grant, never its value.
    """
    if not GRANT_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"credential name {name[:64]!r} is invalid: use lowercase letters, digits, '_' or '-'"
            " (start with a letter, at most 64)"
        )
    if not value:
        raise InvalidArgument(f"credential {name!r} has an empty value")
    if "\x00" in value:
        raise InvalidArgument(f"credential {name!r}: its value holds a NUL byte")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_CREDENTIAL_BYTES:
        raise InvalidArgument(
            f"credential {name!r}: its value is longer than {MAX_CREDENTIAL_BYTES} bytes"
        )
    if credential_type and not CREDENTIAL_TYPE_PATTERN.fullmatch(credential_type):
        raise InvalidArgument(
            f"credential {name!r}: type {credential_type[:64]!r} must be 1-64 lowercase "
            "letters, digits, '_', '.' or '-'"
        )
    env = env_name or default_env_name(name)
    problem = env_name_problem(env)
    if problem:
        raise InvalidArgument(f"credential {name!r}: env name {env[:128]!r} {problem}")
    return CredentialGrant(
        name=name, credential_type=credential_type or "api_token", value=Secret(value), env_name=env
    )


def validate_injection(grant: CredentialGrant) -> CredentialGrant:
    """Checks how an injected grant is to be injected (its hosts' syntax, its header, a value
    that fits in a header) and gives it its placeholder; a grant without ``inject_hosts`` may
    not name a header. Whether the hosts are reachable is admission's to check (the policy).

    Raises InvalidArgument; the message names the grant, never its value.
    """
    if not grant.inject_hosts:
        if grant.inject_header:
            raise InvalidArgument(
                f"credential {grant.name!r}: inject_header needs inject_hosts (where to inject)"
            )
        return replace(grant, placeholder="")
    if len(grant.inject_hosts) > MAX_INJECT_HOSTS:
        raise InvalidArgument(
            f"credential {grant.name!r}: {len(grant.inject_hosts)} inject_hosts; at most "
            f"{MAX_INJECT_HOSTS}"
        )
    for entry in grant.inject_hosts:
        if len(entry) > MAX_INJECT_HOST_CHARS:
            raise InvalidArgument(
                f"credential {grant.name!r}: an inject_hosts entry is {len(entry)} characters; "
                f"at most {MAX_INJECT_HOST_CHARS}"
            )
    try:
        rules = parse_rules(grant.inject_hosts)
    except PolicyError as exc:
        raise InvalidArgument(f"credential {grant.name!r}: inject_hosts: {exc}") from None
    if not rules:
        raise InvalidArgument(f"credential {grant.name!r}: inject_hosts holds only empty entries")
    header = grant.inject_header or DEFAULT_HEADER
    if len(header) > MAX_HEADER_NAME_CHARS or not HEADER_NAME_PATTERN.fullmatch(header):
        raise InvalidArgument(
            f"credential {grant.name!r}: inject_header {header[:64]!r} is not an HTTP header name"
        )
    if header.lower() in RESERVED_INJECT_HEADERS:
        raise InvalidArgument(
            f"credential {grant.name!r}: inject_header {header!r} is not one a credential may "
            "be written into"
        )
    if not _HEADER_VALUE.fullmatch(grant.value.reveal()):
        raise InvalidArgument(
            f"credential {grant.name!r}: an injected value must be printable ASCII on one line "
            "(it is sent in an HTTP header)"
        )
    return replace(
        grant,
        inject_hosts=tuple(str(rule) for rule in rules),
        inject_header=header,
        placeholder=grant.placeholder or make_placeholder(grant.value.reveal()),
    )


def validate_grants(grants: Iterable[CredentialGrant]) -> tuple[CredentialGrant, ...]:
    """Validates every grant and refuses duplicate names or env names."""
    checked: list[CredentialGrant] = []
    names: set[str] = set()
    envs: set[str] = set()
    for grant in grants:
        valid = validate_grant(
            grant.name, grant.credential_type, grant.value.reveal(), grant.env_name
        )
        valid = validate_injection(
            replace(
                valid,
                inject_hosts=grant.inject_hosts,
                inject_header=grant.inject_header,
                inject_format=grant.inject_format,
                placeholder=grant.placeholder,
            )
        )
        if valid.name in names:
            raise InvalidArgument(f"credential {valid.name!r} is granted twice")
        if valid.env_name in envs:
            raise InvalidArgument(f"env name {valid.env_name} is used by two credentials")
        names.add(valid.name)
        envs.add(valid.env_name)
        checked.append(valid)
    return tuple(checked)


class TokenStore:
    """Issues, validates and revokes per-job tokens and LLM keys, and holds each job's
    credential grants."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes] = {}
        self._llm_key_digests: dict[str, bytes] = {}
        self._egress_key_digests: dict[str, bytes] = {}
        self._grants: dict[str, tuple[CredentialGrant, ...]] = {}
        # The HTTP API validates on the event loop while the manager may revoke from callbacks;
        # dict operations are atomic, the lock only keeps create/revoke pairs consistent.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenStore(live_tokens={len(self._digests)})"

    def create_token(self, job_id: str, grants: Iterable[CredentialGrant] = ()) -> str:
        """Mints the job's token (replacing any earlier one) and stores its grants."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
        with self._lock:
            self._digests[job_id] = token_digest(token)
            self._grants[job_id] = tuple(grants)
        return token

    def adopt_digest(
        self, job_id: str, digest: bytes, grants: Iterable[CredentialGrant] = ()
    ) -> None:
        """Restores a job's token from its stored digest (after an orchestrator restart)."""
        with self._lock:
            self._digests[job_id] = digest
            self._grants[job_id] = tuple(grants)

    def validate(self, job_id: str, token: str) -> bool:
        """True only if ``token`` is the live token of exactly ``job_id``."""
        expected = self._digests.get(job_id)
        if expected is None or not token.startswith(TOKEN_PREFIX):
            return False
        return hmac.compare_digest(expected, token_digest(token))

    def create_llm_key(self, job_id: str, token: str) -> str:
        """The job's LLM key, derived from its token (``ironclaw_contract.job_keys``): only
        its digest is kept, and it is revoked with the token."""
        key = llm_key_for(token, job_id)
        with self._lock:
            self._llm_key_digests[job_id] = token_digest(key)
        return key

    def adopt_llm_key_digest(self, job_id: str, digest: bytes) -> None:
        """Restores a job's LLM key from its stored digest (after an orchestrator restart)."""
        with self._lock:
            self._llm_key_digests[job_id] = digest

    def validate_llm_key(self, job_id: str, key: str) -> bool:
        """True only if ``key`` is the live LLM key of exactly ``job_id``."""
        expected = self._llm_key_digests.get(job_id)
        if expected is None or not key.startswith(LLM_KEY_PREFIX):
            return False
        return hmac.compare_digest(expected, token_digest(key))

    def create_egress_key(self, job_id: str, token: str) -> str:
        """The job's egress key (``ironclaw_contract.job_keys``), its identity at the egress
        gateway: only its digest is kept, and it is revoked with the token."""
        key = egress_key_for(token, job_id)
        with self._lock:
            self._egress_key_digests[job_id] = token_digest(key)
        return key

    def adopt_egress_key_digest(self, job_id: str, digest: bytes) -> None:
        """Restores a job's egress key from its stored digest (after an orchestrator restart)."""
        with self._lock:
            self._egress_key_digests[job_id] = digest

    def validate_egress_key(self, job_id: str, key: str) -> bool:
        """True only if ``key`` is the live egress key of exactly ``job_id``."""
        expected = self._egress_key_digests.get(job_id)
        if expected is None or not key.startswith(EGRESS_KEY_PREFIX):
            return False
        return hmac.compare_digest(expected, token_digest(key))

    def revoke(self, job_id: str) -> bool:
        """Kills the job's token and its keys and forgets its grants at once; True if the token
        was live."""
        with self._lock:
            self._grants.pop(job_id, None)
            self._llm_key_digests.pop(job_id, None)
            self._egress_key_digests.pop(job_id, None)
            return self._digests.pop(job_id, None) is not None

    def is_live(self, job_id: str) -> bool:
        return job_id in self._digests

    def grants(self, job_id: str) -> tuple[CredentialGrant, ...]:
        return self._grants.get(job_id, ())

    def credentials_for(self, job_id: str) -> Mapping[str, str]:
        """``{name: value}`` of the job's grants, for the job's own token only: an injected
        grant's placeholder, never its value (the egress gateway swaps it on the way out)."""
        return {grant.name: grant.container_value for grant in self.grants(job_id)}
