"""The per-job LLM policy: model allowlist, per-call token cap, budgets."""

from __future__ import annotations

import pytest

from orchestrator.errors import BudgetExceeded, InvalidArgument
from orchestrator.llm.policy import cap_max_tokens, resolve_model


class TestResolveModel:
    def test_no_requested_model_means_the_default(self) -> None:
        assert resolve_model(None, "gpt-4o-mini", ()) == "gpt-4o-mini"
        assert resolve_model("  ", "gpt-4o-mini", ("other",)) == "gpt-4o-mini"

    def test_the_default_is_allowed_when_requested_by_name(self) -> None:
        assert resolve_model("gpt-4o-mini", "gpt-4o-mini", ()) == "gpt-4o-mini"
        assert resolve_model("gpt-4o-mini", "gpt-4o-mini", ("gpt-4o",)) == "gpt-4o-mini"

    def test_empty_allowlist_refuses_any_other_model(self) -> None:
        with pytest.raises(BudgetExceeded) as caught:
            resolve_model("gpt-4o", "gpt-4o-mini", ())
        assert caught.value.message == (
            "model 'gpt-4o' is not allowed for this job (allowed: gpt-4o-mini)"
        )

    def test_allowlisted_model_is_used(self) -> None:
        assert resolve_model("gpt-4o", "gpt-4o-mini", ("gpt-4o", "o3")) == "gpt-4o"

    def test_model_outside_the_allowlist_is_refused_with_the_list(self) -> None:
        with pytest.raises(BudgetExceeded, match=r"allowed: gpt-4o-mini, gpt-4o, o3\)$"):
            resolve_model("claude-opus-4", "gpt-4o-mini", ("gpt-4o", "o3"))

    def test_match_is_exact(self) -> None:
        with pytest.raises(BudgetExceeded):
            resolve_model("GPT-4O-MINI", "gpt-4o-mini", ())

    def test_no_model_at_all_is_an_invalid_request(self) -> None:
        with pytest.raises(InvalidArgument, match="LLM_MODEL"):
            resolve_model(None, "", ())


class TestCapMaxTokens:
    def test_none_means_the_cap(self) -> None:
        assert cap_max_tokens(None, 8192) == 8192

    def test_below_the_cap_is_kept(self) -> None:
        assert cap_max_tokens(100, 8192) == 100
        assert cap_max_tokens(8192, 8192) == 8192

    def test_above_the_cap_is_clamped(self) -> None:
        assert cap_max_tokens(32000, 8192) == 8192

    @pytest.mark.parametrize("bad", [0, -1])
    def test_non_positive_is_invalid(self, bad: int) -> None:
        with pytest.raises(InvalidArgument, match="max_tokens"):
            cap_max_tokens(bad, 8192)
