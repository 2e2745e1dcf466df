"""bound_json: whatever goes in, what comes out is JSON within the bound, says what it cut, and
keeps as much of every field as fits."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from ironclaw_contract.json_bounds import (
    TOO_DEEP,
    TRUNCATED_KEY,
    bound_json,
    json_size,
    truncate_text,
)
from ironclaw_contract.worker_api import MAX_EVENT_JSON_BYTES, MAX_EVENT_STRING_CHARS

BOUNDS = {"max_bytes": MAX_EVENT_JSON_BYTES, "max_string": MAX_EVENT_STRING_CHARS}


def test_a_value_within_the_bounds_is_returned_as_it_is() -> None:
    value = {"role": "assistant", "content": "hello", "n": [1, 2.5, None, True]}
    assert bound_json(value, **BOUNDS) is value


def test_long_strings_are_cut_with_a_marker_and_the_input_is_not_modified() -> None:
    value = {"tool_name": "shell", "output": "y" * 100_000, "is_error": False, "n": ["z" * 20_000]}
    before = copy.deepcopy(value)
    bounded = bound_json(value, **BOUNDS)
    assert value == before
    assert bounded["output"] == "y" * 16_000 + "…[truncated 84000 chars]"
    assert bounded["n"] == ["z" * 16_000 + "…[truncated 4000 chars]"]
    assert (bounded["tool_name"], bounded["is_error"]) == ("shell", False)


def test_when_the_whole_is_too_large_every_field_keeps_a_part() -> None:
    value = {f"k{i}": "z" * 5_000 for i in range(40)}
    bounded = bound_json(value, **BOUNDS)
    assert json_size(bounded) <= MAX_EVENT_JSON_BYTES
    assert list(bounded) == list(value)
    assert all(v.startswith("zzz") and v.endswith(" chars]") for v in bounded.values())


def test_the_amplification_attack_shape_is_cut_to_the_bound_and_says_so() -> None:
    # ~29 MB: nine objects of 200 strings of 16 KB each.
    value = {f"a{i}": {f"b{j}": "x" * 16_000 for j in range(200)} for i in range(9)}
    bounded = bound_json(value, **BOUNDS)
    assert json_size(bounded) <= MAX_EVENT_JSON_BYTES
    assert bounded[TRUNCATED_KEY] == "…[truncated: the JSON exceeded 64000 bytes]"
    assert next(iter(bounded)) == "a0"
    assert len(bounded["a0"]) == 200  # the values that fit come first, each cut short
    assert bounded["a0"]["b0"].startswith("x" * 64)


def test_a_swarm_of_tiny_values_is_cut_too() -> None:
    bounded = bound_json({"items": [[] for _ in range(100_000)]}, **BOUNDS)
    assert json_size(bounded) <= MAX_EVENT_JSON_BYTES
    assert TRUNCATED_KEY in bounded
    assert 1_000 < len(bounded["items"]) < 32_000


def test_nesting_deeper_than_the_bound_becomes_a_marker() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["a"] = {}
        node = node["a"]
    bounded = bound_json(deep, max_bytes=64_000, max_string=16_000, max_depth=10)
    node = bounded
    for _ in range(9):
        node = node["a"]
    assert node == {"a": TOO_DEEP}


def test_values_json_cannot_carry_become_text() -> None:
    bounded = bound_json(
        {"t": (1, 2), "inf": float("inf"), "big": 10**5000, "o": object(), 3: "key"}, **BOUNDS
    )
    assert bounded["t"] == [1, 2]
    assert bounded["inf"] == "inf"
    assert bounded["big"] == "…[a number too large]"
    assert bounded["o"].startswith("<object")
    assert bounded["3"] == "key"
    json.dumps(bounded, allow_nan=False)  # plain JSON now


def test_multibyte_and_escaped_text_is_measured_in_bytes() -> None:
    for char in ("é", "日", "😀", "\x00", '"'):
        bounded = bound_json({"a": char * 40_000, "b": char * 40_000}, **BOUNDS)
        assert json_size(bounded) <= MAX_EVENT_JSON_BYTES, char
        assert bounded["a"].startswith(char * 100)


def test_a_lone_string_is_cut_to_fit() -> None:
    bounded = bound_json("q" * 100_000, max_bytes=1_000, max_string=16_000)
    assert json_size(bounded) <= 1_000
    assert bounded.startswith("qqq")
    assert bounded.endswith(" chars]")


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth > 3 or kind < 0.5:
        return rng.choice(
            [
                None,
                True,
                rng.randint(-(10**12), 10**12),
                rng.random() * 1e6,
                "é" * rng.randint(0, 3_000),
                "x" * rng.choice([0, 10, 20_000, 70_000]),
            ]
        )
    if kind < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 12))]
    return {f"k{i}" * rng.randint(1, 3): _random_value(rng, depth + 1) for i in range(8)}


@pytest.mark.parametrize("seed", range(40))
def test_any_value_comes_out_within_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    value = {"data": _random_value(rng), "more": _random_value(rng)}
    for max_bytes in (256, 4_000, 64_000):
        bounded = bound_json(value, max_bytes=max_bytes, max_string=16_000)
        assert json_size(bounded) <= max_bytes
        if json_size(value) <= max_bytes and len(json.dumps(value, ensure_ascii=False)) <= 16_000:
            assert bounded == value


def test_truncate_text() -> None:
    assert truncate_text("abc", 3) == "abc"
    assert truncate_text("abcdef", 2) == "ab…[truncated 4 chars]"
