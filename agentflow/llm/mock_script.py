"""What the mock LLM (:mod:`agentflow.llm.mock`) answers, deterministically, and how it cuts answers into
server-sent events the way OpenAI does.

A chat request gets, in this order of rules:

1. With ``tools`` (and ``tool_choice`` not ``"none"``), ``[[loop NAME {json}]]`` directives in the last user
   message: those tool calls, on every turn (a model stuck in a doom loop). Several come in an order that
   rotates each turn; ``$turn`` in the JSON is replaced by the model's turn (1, 2 ...), so arguments that
   change every turn (a model retrying with new arguments, not a loop) can be scripted too.
2. When the last message is a tool result (``role: "tool"``): a text that quotes each result of that turn,
   ``tool results: NAME: CONTENT; NAME: CONTENT``.
3. With ``tools``, ``[[call NAME {json}]]`` directives in the last message (from the user): those tool calls,
   in parallel when there are several (only the first with ``parallel_tool_calls: false``); ``finish_reason``
   is ``"tool_calls"``. Without a directive, ``tool_choice: "required"`` or a named tool gets a call of that
   (or the first) tool with ``{}``.
4. Otherwise ``echo:<the last message, 64 characters> tok0 tok1 ...``, ``reply_tokens`` tokens (capped by
   ``max_tokens``).

The JSON of a directive is sent as the call's arguments exactly as written, so ``[[call f {bad json]]`` gives
a model's malformed arguments; ``[[call f]]`` sends ``{}``. Tool-call ids are ``call_<turn>_<i>``, where the
turn is the number of messages, so every turn has fresh ids. A streamed answer sends the role first, then the
text one token per chunk, or each tool call as its id and name followed by its arguments in three fragments.
"""

from __future__ import annotations

import functools
import json
import re
import time
from typing import Any

from .types import ENCODER, ChatRequest

__all__ = ["Reply", "chat_chunks", "chat_reply", "completion_chunks", "text_of", "tokens"]

_DIRECTIVE = re.compile(r"\[\[(call|loop)\s+([^\s\]]+)")
_JSON = json.JSONDecoder()
_WORDS = re.compile(r"\S+\s*|\s+")
#: Arguments of a streamed tool call are sent in this many fragments (fewer when shorter).
ARGUMENT_FRAGMENTS = 3


def tokens(text: str) -> int:
    """~4 characters per token, the usual rule of thumb; deterministic so tests can predict usage."""
    return max(1, (len(text) + 3) // 4)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def directives(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The ``[[call ...]]`` and ``[[loop ...]]`` directives of ``text``, as (name, arguments) pairs."""
    calls: list[tuple[str, str]] = []
    loops: list[tuple[str, str]] = []
    pos = 0
    while (match := _DIRECTIVE.search(text, pos)) is not None:
        kind, name = match.groups()
        i = match.end()
        while i < len(text) and text[i].isspace():
            i += 1
        end = text.find("]]", i)
        if end < 0:
            break  # an unclosed directive is plain text
        args = text[i:end].strip()
        if end > i:
            try:  # JSON may itself hold "]]": take the whole value, then the closing brackets
                _, j = _JSON.raw_decode(text, i)
                close = text.find("]]", j)
                if close >= 0 and not text[j:close].strip():
                    args, end = text[i:j], close
            except ValueError:
                pass  # malformed on purpose: sent as written, up to the brackets
        (calls if kind == "call" else loops).append((name, args or "{}"))
        pos = end + 2
    return calls, loops


class Reply:
    """One answer: text pieces (joined, the text) or tool calls ``(id, name, arguments)``."""

    __slots__ = ("calls", "finish_reason", "pieces")

    def __init__(
        self, pieces: list[str], calls: list[tuple[str, str, str]] | None = None, *, cut: bool = False
    ) -> None:
        self.pieces = pieces
        self.calls = calls or []
        # "length": max_tokens cut the answer short, as OpenAI reports it
        self.finish_reason = "tool_calls" if self.calls else "length" if cut else "stop"

    @property
    def text(self) -> str | None:
        return None if self.calls else "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        if self.calls:
            return sum(tokens(name + args) for _, name, args in self.calls)
        return len(self.pieces)

    def message(self) -> dict[str, Any]:
        if not self.calls:
            return {"role": "assistant", "content": "".join(self.pieces)}
        calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in self.calls]
        return {"role": "assistant", "content": None, "tool_calls": calls}


def chat_reply(req: ChatRequest, reply_tokens: int) -> Reply:
    """The deterministic answer to ``req`` (see the module docstring for the rules)."""
    messages = req.messages
    last = messages[-1]
    tools = req.tools if req.tools and req.tool_choice != "none" else None
    if tools is not None:
        user = next((m for m in reversed(messages) if m.role == "user"), None)
        calls, loops = directives(text_of(user.content)) if user is not None else ([], [])
        if loops:
            return _calls(req, _looped(loops, messages))
        if last.role != "tool":
            if calls and last is user:
                return _calls(req, calls)
            forced = _forced(req.tool_choice, tools)
            if forced is not None:
                return _calls(req, [(forced, "{}")])
    if last.role == "tool":
        return Reply(_WORDS.findall(_tool_results(req)))
    out = reply_tokens if req.max_tokens is None else max(1, min(req.max_tokens, reply_tokens))
    head = f"echo:{text_of(last.content)[:64]}"
    return Reply([f"{head} tok0", *_tokens_after_first(out)], cut=out < reply_tokens)


@functools.lru_cache(maxsize=64)
def _tokens_after_first(out: int) -> tuple[str, ...]:
    """`` tok1`` … `` tok<out-1>``: the same for every answer of ``out`` tokens, so made once."""
    return tuple(f" tok{i}" for i in range(1, out))


def _looped(loops: list[tuple[str, str]], messages: list[Any]) -> list[tuple[str, str]]:
    """A doom loop's calls for this turn: ``$turn`` in the arguments is the model's turn (1, 2 ...), and several
    directives come in an order that rotates from turn to turn, as a model's parallel calls would."""
    turn = 1 + sum(1 for m in messages if m.role == "assistant")
    calls = [(name, args.replace("$turn", str(turn))) for name, args in loops]
    k = (turn - 1) % len(calls)
    return calls[k:] + calls[:k]


def _forced(choice: Any, tools: list[dict[str, Any]]) -> str | None:
    if choice == "required":
        return str(tools[0].get("function", {}).get("name", ""))
    if isinstance(choice, dict):
        return str(choice.get("function", {}).get("name", ""))
    return None


def _calls(req: ChatRequest, wanted: list[tuple[str, str]]) -> Reply:
    if req.parallel_tool_calls is False:
        wanted = wanted[:1]
    turn = len(req.messages)
    return Reply([], [(f"call_{turn}_{i}", name, args) for i, (name, args) in enumerate(wanted)])


def _tool_results(req: ChatRequest) -> str:
    names = {c.id: c.function.name for m in req.messages for c in (m.tool_calls or ())}
    results = []
    for m in reversed(req.messages):
        if m.role != "tool":
            break
        results.append(f"{names.get(m.tool_call_id or '', m.name or 'tool')}: {text_of(m.content)}")
    return "tool results: " + "; ".join(reversed(results))


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + ENCODER.encode(data) + b"\n\n"


def chat_chunks(
    cid: str, model: str, reply: Reply, n: int, usage: dict[str, int] | None, include_usage: bool
) -> list[tuple[bool, bytes]]:
    """The SSE events of ``reply`` for ``n`` choices, as ``(after_a_token_gap, bytes)`` steps."""
    created = int(time.time())
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    if include_usage:
        head["usage"] = None  # as OpenAI: every chunk carries "usage": null, the last one the counts

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    steps: list[tuple[bool, bytes]] = []
    if reply.calls:
        role = {"role": "assistant", "content": None}
        steps.append((False, b"".join(chunk(c, role) for c in range(n))))
        for k, (call_id, name, args) in enumerate(reply.calls):
            first = {"index": k, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            steps.append((k > 0, b"".join(chunk(c, {"tool_calls": [first]}) for c in range(n))))
            for piece in _split(args, ARGUMENT_FRAGMENTS):
                frag = {"index": k, "function": {"arguments": piece}}
                steps.append((True, b"".join(chunk(c, {"tool_calls": [frag]}) for c in range(n))))
    else:
        for k, piece in enumerate(reply.pieces):
            delta: dict[str, Any] = {"role": "assistant", "content": piece} if k == 0 else {"content": piece}
            steps.append((k > 0, b"".join(chunk(c, delta) for c in range(n))))
    tail = b"".join(chunk(c, {}, reply.finish_reason) for c in range(n))
    if include_usage and usage is not None:
        tail += _event({**head, "choices": [], "usage": usage})
    steps.append((False, tail + b"data: [DONE]\n\n"))
    return steps


def completion_chunks(
    cid: str, model: str, texts: list[str], usage: dict[str, int] | None, include_usage: bool, finish: str = "stop"
) -> list[tuple[bool, bytes]]:
    """The SSE events of a streamed ``/completions`` answer, one choice per prompt, each ending with ``finish``."""
    head = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model}

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    pieces = [_WORDS.findall(t) or [""] for t in texts]
    steps: list[tuple[bool, bytes]] = []
    for k in range(max(len(p) for p in pieces)):
        step = b"".join(chunk(i, p[k]) for i, p in enumerate(pieces) if k < len(p))
        steps.append((k > 0, step))
    tail = b"".join(chunk(i, "", finish) for i in range(len(texts)))
    if include_usage and usage is not None:
        tail += _event({**head, "choices": [], "usage": usage})
    steps.append((False, tail + b"data: [DONE]\n\n"))
    return steps
