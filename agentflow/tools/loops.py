"""Doom-loop detection: the model making the same tool calls turn after turn.

A turn's signature is its tool calls as a multiset of (tool name, canonical JSON of the arguments): object
keys are sorted at every depth, and the order of parallel calls does not matter, so ``{"a": 1, "b": 2}`` and
``{"b": 2, "a": 1}`` are the same call and ``[search(x), fetch(y)]`` the same turn as ``[fetch(y), search(x)]``.
Any change in a tool or an argument value is a different turn: retrying with other arguments is not a loop::

    detector = LoopDetector(threshold=3)
    verdict = detector.observe(response.tool_calls)   # after each model turn; a 4th identical turn raises
    tool_messages = [r.message() for r in await box.call_many(response.tool_calls)]
    if verdict.warn:                                   # the 3rd identical turn in a row
        tool_messages[-1]["content"] += "\n\n" + verdict.text()   # tell the model it repeats itself

The warning rides in the turn's last tool message, since the chat protocol wants one tool message per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from ..errors import ToolLoopError

__all__ = ["DEFAULT_LOOP_THRESHOLD", "LoopDetector", "LoopVerdict", "call_parts", "call_signature", "turn_signature"]

DEFAULT_LOOP_THRESHOLD: Final = 3

_canonical = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode


def _arguments(arguments: Any) -> Any:
    """Arguments as data: a JSON string is decoded (kept as the raw string when it is not JSON)."""
    if isinstance(arguments, str | bytes):
        if not arguments:
            return {}
        try:
            return _decode(arguments)
        except msgspec.DecodeError:
            return arguments if isinstance(arguments, str) else arguments.decode(errors="replace")
    return {} if arguments is None else arguments


def call_signature(name: str, arguments: Any) -> bytes:
    """One call's signature: the name and the arguments as canonical JSON (keys sorted at every depth)."""
    try:
        body = _canonical(_arguments(arguments))
    except (TypeError, ValueError):  # not JSON data (an object from Python code): its repr stands in
        body = repr(arguments).encode()
    return name.encode() + b"\x00" + body


def call_parts(call: Any) -> tuple[str, str, Any]:
    """(id, name, arguments) of a tool call: an object with ``name``/``arguments`` (and ``id``), a
    ``(name, arguments)`` pair, or an OpenAI-shaped mapping (``{"id", "function": {"name", "arguments"}}``).

    A decoded call whose arguments were not a JSON object (``arguments`` None, as ``ToolCall`` keeps them)
    gives its raw text instead, so the tool can say what is wrong with it and two different mistakes are two
    different calls.
    """
    if isinstance(call, tuple):
        name, arguments = call
        return "", name, arguments
    if type(call) is dict or (not hasattr(call, "arguments") and isinstance(call, Mapping)):  # ABC check last
        fn = call.get("function")
        body = fn if isinstance(fn, Mapping) else call
        return str(call.get("id") or ""), str(body.get("name", "")), body.get("arguments")
    arguments = call.arguments
    if arguments is None:
        arguments = getattr(call, "arguments_raw", None) or None
    return str(getattr(call, "id", "") or ""), call.name, arguments


def _name_args(call: Any) -> tuple[str, Any]:
    _, name, arguments = call_parts(call)
    return name, arguments


def turn_signature(calls: Iterable[Any]) -> tuple[bytes, ...]:
    """A turn's signature: the sorted signatures of its calls (a multiset: two identical calls count twice).

    ``calls`` are objects with ``name`` and ``arguments``, ``(name, arguments)`` pairs or OpenAI-shaped dicts.
    """
    return tuple(sorted(call_signature(*_name_args(c)) for c in calls))


class LoopVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`LoopDetector.observe` concluded about a turn: ``repeats`` consecutive identical turns
    so far (1 for a new signature, 0 for a turn without tool calls); ``warn`` on the turn that reached the
    threshold. ``calls`` are the turn's (name, arguments) pairs."""

    repeats: int
    warn: bool
    calls: tuple[tuple[str, Any], ...] = ()

    def text(self) -> str:
        """What to tell the model on the turn that got ``warn``: it repeats itself, and what to do instead."""
        shown = "; ".join(f"{name}({_show(args)})" for name, args in self.calls[:5])
        return (
            f"You have made the same tool call{'s' if len(self.calls) > 1 else ''} ({shown}) with the same "
            f"arguments in {self.repeats} consecutive turns, and got the same results. Do not repeat it: use the "
            "results you already have, change the arguments, or give your final answer. Repeating it once more "
            "ends this run."
        )


class LoopDetector:
    """Counts consecutive turns with the same signature; warns at ``threshold``, raises past it.

    One detector per agent run (it holds the last signature); :meth:`reset` starts over.
    """

    __slots__ = ("_last", "_repeats", "detections", "threshold", "warnings")

    def __init__(self, threshold: int = DEFAULT_LOOP_THRESHOLD) -> None:
        if threshold < 2:
            raise ValueError(f"threshold must be at least 2 (two identical turns in a row), not {threshold!r}.")
        self.threshold = threshold
        self._last: tuple[bytes, ...] = ()
        self._repeats = 0
        self.warnings = 0
        self.detections = 0

    def observe(self, calls: Iterable[Any]) -> LoopVerdict:
        """Record one model turn's tool calls. Raises :class:`ToolLoopError` when the same signature comes
        ``threshold + 1`` times in a row (the model ignored the warning)."""
        pairs = tuple(_name_args(c) for c in calls)
        if not pairs:
            self._last = ()
            self._repeats = 0
            return LoopVerdict(repeats=0, warn=False)
        sig = tuple(sorted(call_signature(n, a) for n, a in pairs))
        if sig == self._last:
            self._repeats += 1
        else:
            self._last = sig
            self._repeats = 1
        repeats = self._repeats
        if repeats > self.threshold:
            self.detections += 1
            named = tuple((n, _arguments(a)) for n, a in pairs)
            shown = "; ".join(f"{n}({_show(a)})" for n, a in named[:5])
            raise ToolLoopError(
                f"The model made the same tool calls ({shown}) in {repeats} consecutive turns and kept on after "
                "being told it repeats itself; the run was stopped. Change the prompt or the tools so it can make "
                "progress, or raise the loop threshold.",
                calls=named,
                repeats=repeats,
            )
        warn = repeats == self.threshold
        if warn:
            self.warnings += 1
        return LoopVerdict(
            repeats=repeats, warn=warn, calls=tuple((n, _arguments(a)) for n, a in pairs) if warn else ()
        )

    def reset(self) -> None:
        self._last = ()
        self._repeats = 0

    def __repr__(self) -> str:
        return (
            f"<LoopDetector threshold={self.threshold} repeats={self._repeats} warnings={self.warnings} "
            f"detections={self.detections}>"
        )


def _show(arguments: Any, limit: int = 200) -> str:
    try:
        text = _canonical(arguments).decode()
    except (TypeError, ValueError):
        text = repr(arguments)
    return text if len(text) <= limit else text[: limit - 3] + "..."
