"""Doom-loop detection: order-independent signatures, a warning at the threshold, then ToolLoopError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from agentflow.errors import ToolLoopError
from agentflow.tools import LoopDetector, call_signature, turn_signature


@dataclass
class Call:
    id: str
    name: str
    arguments: Any


def test_key_order_at_any_depth_does_not_change_a_signature() -> None:
    a = call_signature("search", {"q": "x", "opts": {"limit": 5, "lang": "en"}})
    b = call_signature("search", '{"opts": {"lang": "en", "limit": 5}, "q": "x"}')
    assert a == b
    assert call_signature("search", {"q": "y"}) != call_signature("search", {"q": "x"})
    assert call_signature("fetch", {"q": "x"}) != call_signature("search", {"q": "x"})
    assert call_signature("noop", None) == call_signature("noop", "") == call_signature("noop", {})
    assert call_signature("t", "{broken") == b't\x00"{broken"'  # undecodable arguments: the raw text


def test_the_order_of_parallel_calls_does_not_change_a_turn() -> None:
    one = [Call("1", "search", {"q": "x"}), Call("2", "fetch", {"url": "u", "n": 1})]
    other = [{"id": "9", "function": {"name": "fetch", "arguments": '{"n": 1, "url": "u"}'}}, ("search", {"q": "x"})]
    assert turn_signature(one) == turn_signature(other)
    # A multiset: the same call twice in a turn is not the same turn as once.
    assert turn_signature([("a", {})]) != turn_signature([("a", {}), ("a", {})])


def test_repeating_the_same_turn_warns_at_the_threshold_then_raises() -> None:
    detector = LoopDetector(threshold=3)
    turn = [Call("c1", "search", {"q": "weather", "n": 1}), Call("c2", "fetch", {"url": "u"})]
    shuffled = [Call("c3", "fetch", {"url": "u"}), Call("c4", "search", {"n": 1, "q": "weather"})]
    first = detector.observe(turn)
    second = detector.observe(shuffled)
    assert (first.repeats, first.warn, second.repeats, second.warn) == (1, False, 2, False)
    third = detector.observe(turn)
    assert third.warn and third.repeats == 3
    assert third.calls == (("search", {"q": "weather", "n": 1}), ("fetch", {"url": "u"}))
    text = third.text()
    assert "same tool calls (search(" in text and "in 3 consecutive turns" in text
    assert "Repeating it once more ends this run." in text
    with pytest.raises(ToolLoopError) as info:
        detector.observe(shuffled)
    err = info.value
    assert err.repeats == 4
    assert err.calls == (("fetch", {"url": "u"}), ("search", {"n": 1, "q": "weather"}))
    assert err.tool == "fetch" and err.arguments == {"url": "u"}
    assert "in 4 consecutive turns" in str(err)
    assert (detector.warnings, detector.detections) == (1, 1)


def test_retries_with_different_arguments_are_not_a_loop() -> None:
    detector = LoopDetector(threshold=2)
    for page in range(50):
        verdict = detector.observe([Call(str(page), "list_items", {"page": page})])
        assert (verdict.repeats, verdict.warn) == (1, False)
    assert detector.detections == 0


def test_a_turn_in_between_or_without_tool_calls_starts_over() -> None:
    detector = LoopDetector(threshold=3)
    same = [("search", {"q": "x"})]
    detector.observe(same)
    detector.observe(same)
    assert detector.observe([("search", {"q": "y"})]).repeats == 1
    detector.observe(same)
    detector.observe(same)
    assert detector.observe([]).repeats == 0
    assert detector.observe(same).repeats == 1
    detector.observe(same)
    detector.reset()
    assert detector.observe(same).repeats == 1


def test_the_threshold_must_allow_a_repeat() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LoopDetector(threshold=1)
    assert repr(LoopDetector()) == "<LoopDetector threshold=3 repeats=0 warnings=0 detections=0>"


def test_two_different_malformed_arguments_are_two_different_calls() -> None:
    # ToolCall keeps arguments that are not a JSON object as None and the text in arguments_raw: the text counts.
    from agentflow import ToolCall

    first = ToolCall.decode("c1", "search", '{"q": "agentfl')
    second = ToolCall.decode("c2", "search", '{"q": "agentflo')
    assert first.arguments is None and second.arguments is None
    assert turn_signature([first]) != turn_signature([second])
    detector = LoopDetector(threshold=2)
    for call in (first, second, first, second):
        assert detector.observe([call]).repeats == 1
