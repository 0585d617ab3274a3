"""``ctx.memory``: the message history of one conversation, kept in the state store.

The history is one state value, a list of chat messages (``{"role": ..., "content": ...}``). Appends are
read-modify-write with a version check (``StateHandle.update``), so two events appending at once both land;
the stored list keeps at most ``max_messages`` (the oldest go first; system messages at the start stay).
A *window* is what to send to a model: the most recent messages that fit a message count and/or a token
budget, with the leading system messages always included::

    memory = ConversationMemory(ctx.state.of("chat", user_id), max_messages=200, ttl_s=86_400)
    await memory.append({"role": "user", "content": text}, once=True)
    history = await memory.window(max_tokens=3000)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from .handle import StateHandle

__all__ = ["ConversationMemory", "Message"]

Message = dict[str, Any]

#: Tokens a chat message costs beyond its content (role and framing), as OpenAI's chat format counts them.
MESSAGE_OVERHEAD_TOKENS = 4


def _default_count_tokens(text: str) -> int:
    # The estimate the LLM client charges its rate limiter with, so windows and limits agree; imported on
    # first use because the LLM layer pulls in aiohttp.
    from ..llm.tokens import estimate_tokens

    return estimate_tokens(text)


def _leading_system(history: Sequence[Message]) -> int:
    n = 0
    for m in history:
        if m.get("role") != "system":
            break
        n += 1
    return n


class ConversationMemory:
    """The chat history stored in ``state`` (a state handle, usually ``ctx.state.of(...)``).

    ``max_messages`` bounds what is stored; ``ttl_s`` makes the whole history expire that long after its last
    append (None: never). ``count_tokens`` estimates the tokens of a text (default: ~4 characters a token,
    the LLM client's estimate).
    """

    def __init__(
        self,
        state: StateHandle[Any],
        *,
        max_messages: int = 200,
        ttl_s: float | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1.")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be greater than 0, or None for a history that never expires.")
        self._state = state.typed(list[dict[str, Any]])
        self.max_messages = max_messages
        self.ttl_s = ttl_s
        self._count = count_tokens or _default_count_tokens

    def __repr__(self) -> str:
        return f"<ConversationMemory {self._state.namespace}:{self._state.key!r} max_messages={self.max_messages}>"

    def tokens(self, message: Mapping[str, Any]) -> int:
        """The estimated tokens of one message: its content plus the per-message overhead."""
        content = message.get("content")
        text = content if isinstance(content, str) else "" if content is None else msgspec.json.encode(content).decode()
        return self._count(text) + MESSAGE_OVERHEAD_TOKENS

    async def append(self, *messages: Mapping[str, Any] | msgspec.Struct, once: bool = False) -> int:
        """Add ``messages`` at the end (dicts or msgspec Structs such as ``ChatMessage``); return how many
        the history holds now. ``once=True``: a redelivered event does not append its messages twice."""
        new = [_message(m) for m in messages]
        max_messages = self.max_messages

        def add(history: list[Message] | None) -> list[Message]:
            return _trim([*(history or ()), *new], max_messages)

        history = await self._state.update(add, ttl_s=self.ttl_s, once=once)
        return len(history)

    async def messages(self) -> list[Message]:
        """The whole stored history, oldest first."""
        history: list[Message] = await self._state.get([])
        return history

    async def window(
        self, *, max_messages: int | None = None, max_tokens: int | None = None, keep_system: bool = True
    ) -> list[Message]:
        """The most recent messages within ``max_messages`` and ``max_tokens`` (both optional), oldest first.

        With ``keep_system`` the system messages at the start of the history are always included and count
        against both limits; a message that does not fit ends the window (older ones are not considered).
        """
        history = await self.messages()
        head = history[: _leading_system(history)] if keep_system else []
        rest = history[len(head) :]
        count_left = None if max_messages is None else max(0, max_messages - len(head))
        tokens_left = None if max_tokens is None else max_tokens - sum(map(self.tokens, head))
        taken: list[Message] = []
        for m in reversed(rest):
            if count_left is not None and len(taken) >= count_left:
                break
            if tokens_left is not None:
                cost = self.tokens(m)
                if cost > tokens_left:
                    break
                tokens_left -= cost
            taken.append(m)
        taken.reverse()
        return head + taken

    async def clear(self) -> None:
        """Forget the whole history."""
        await self._state.delete()


def _message(m: Mapping[str, Any] | msgspec.Struct) -> Message:
    out: Any = msgspec.to_builtins(m) if isinstance(m, msgspec.Struct) else dict(m)
    if not isinstance(out, dict) or not isinstance(out.get("role"), str):
        raise ValueError(f"A chat message needs a string 'role', got {m!r}; append {{'role': ..., 'content': ...}}.")
    return out


def _trim(history: list[Message], max_messages: int) -> list[Message]:
    if len(history) <= max_messages:
        return history
    head = _leading_system(history)
    if head >= max_messages:  # only system messages fit: keep the newest of them
        return history[head - max_messages : head]
    return history[:head] + history[len(history) - (max_messages - head) :]
