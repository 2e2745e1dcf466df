from __future__ import annotations

import re
import time

import pytest

from ironclaw_contract.job_keys import llm_key_for
from orchestrator.errors import InvalidArgument
from orchestrator.secrets import Secret
from orchestrator.tokens import TokenStore, default_env_name, validate_grant


def test_token_shape_is_irc_plus_32_random_bytes() -> None:
    store = TokenStore()
    token = store.create_token("job-a")
    assert re.fullmatch(r"irc_[A-Za-z0-9_\-]{43}", token)
    assert len({store.create_token(f"job-{i}") for i in range(200)}) == 200


def test_token_is_bound_to_its_job() -> None:
    store = TokenStore()
    a = store.create_token("a")
    b = store.create_token("b")
    assert store.validate("a", a)
    assert store.validate("b", b)
    assert not store.validate("b", a)
    assert not store.validate("a", b)
    assert not store.validate("c", a)


def test_revocation_is_immediate_and_forgets_grants() -> None:
    store = TokenStore()
    grant = validate_grant("github", "api_token", "ghp_secretvalue", "")
    token = store.create_token("a", [grant])
    assert store.credentials_for("a") == {"github": "ghp_secretvalue"}
    assert store.revoke("a")
    assert not store.validate("a", token)
    assert store.credentials_for("a") == {}
    assert not store.revoke("a")


def test_rejects_near_misses() -> None:
    store = TokenStore()
    token = store.create_token("a")
    assert not store.validate("a", token[:-1])
    assert not store.validate("a", token + "x")
    assert not store.validate("a", "")
    assert not store.validate("a", token.removeprefix("irc_"))


def test_repr_shows_no_token_or_credential() -> None:
    store = TokenStore()
    grant = validate_grant("npm", "api_token", "npm_supersecret", "")
    token = store.create_token("a", [grant])
    text = repr(store) + repr(grant) + str(grant)
    assert token not in text
    assert "npm_supersecret" not in text
    assert repr(Secret("x")) == "Secret('***')"


def test_validation_time_does_not_grow_with_live_tokens() -> None:
    small, large = TokenStore(), TokenStore()
    for i in range(10):
        small.create_token(f"s{i}")
    for i in range(10_000):
        large.create_token(f"l{i}")
    ts = small.create_token("probe")
    tl = large.create_token("probe")

    def cost(store: TokenStore, token: str) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(2000):
                store.validate("probe", token)
            best = min(best, time.perf_counter() - start)
        return best

    # O(1): a dict lookup and one digest comparison. Generous factor: this is a shape check,
    # the figures are in bench/.
    assert cost(large, tl) < cost(small, ts) * 3


@pytest.mark.parametrize(
    ("name", "env"),
    [("github", "GITHUB_TOKEN"), ("npm", "NPM_TOKEN"), ("my-registry", "MY_REGISTRY_TOKEN")],
)
def test_default_env_names(name: str, env: str) -> None:
    assert default_env_name(name) == env
    assert validate_grant(name, "", "v", "").env_name == env


@pytest.mark.parametrize(
    "env", ["PATH", "LD_PRELOAD", "PYTHONPATH", "IRONCLAW_WORKER_TOKEN", "lower", "1ABC", "A-B"]
)
def test_dangerous_or_malformed_env_names_are_refused(env: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_grant("github", "api_token", "ghp_value_never_shown", env)
    assert "ghp_value_never_shown" not in info.value.message


@pytest.mark.parametrize("name", ["", "GitHub", "../x", "a/b", "x" * 65])
def test_bad_grant_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_grant(name, "api_token", "value", "")


# -- the LLM key of a Claude Code job --------------------------------------------------------


def test_llm_key_shape_differs_from_the_token_and_is_masked_like_it() -> None:
    from ironclaw_contract.secret_patterns import mask_secrets

    store = TokenStore()
    token = store.create_token("a")
    key = store.create_llm_key("a", token)
    assert re.fullmatch(r"ircl_[A-Za-z0-9_\-]{43}", key)
    assert not key.startswith("irc_")
    assert key != token
    assert mask_secrets(f"token {token} key {key}") == "token *** key ***"


def test_llm_key_and_token_each_open_only_their_own_door() -> None:
    store = TokenStore()
    token = store.create_token("a")
    key = store.create_llm_key("a", token)
    other = store.create_llm_key("b", store.create_token("b"))
    assert store.validate_llm_key("a", key)
    assert not store.validate_llm_key("a", token)
    assert not store.validate("a", key)
    assert not store.validate_llm_key("a", other)
    assert not store.validate_llm_key("c", key)
    assert key not in repr(store)
    # The key is the bridge's to derive from the token, the same way, one way.
    assert key == llm_key_for(token, "a")
    assert llm_key_for(token, "b") != key


def test_llm_key_dies_with_the_token() -> None:
    store = TokenStore()
    key = store.create_llm_key("a", store.create_token("a"))
    assert store.revoke("a")
    assert not store.validate_llm_key("a", key)


def test_llm_key_survives_a_restart_as_its_digest_only() -> None:
    from orchestrator.tokens import token_digest

    first = TokenStore()
    token = first.create_token("a")
    key = first.create_llm_key("a", token)
    restarted = TokenStore()
    restarted.adopt_llm_key_digest("a", token_digest(key))
    # The bridge derives the same key from its token after the restart too.
    assert restarted.validate_llm_key("a", llm_key_for(token, "a"))
