"""The agent loop behind ``ctx.llm.run``: model → tool calls → tool messages → model …, until an answer.

Each turn sends the conversation with the tools' schemas; when the answer asks for tools, they run in parallel
under the agent's ``max_parallel_tools`` (:meth:`~agentflow.tools.ToolBox.call_many`: results in call order, a
failed call is a tool message the model can act on, never an exception), their messages are appended, and the
model is asked again. The loop is bounded four ways:

- ``max_turns`` model turns: a model still asking for tools in its last turn raises
  :class:`~agentflow.errors.MaxTurnsExceededError` (the tools of that turn are not run, no turn would read them);
- the workflow's token budget (``token_budget_per_workflow``): the next model call raises
  :class:`~agentflow.errors.TokenBudgetExceededError`;
- ``timeout_s`` of wall-clock time for the whole run: :class:`~agentflow.errors.AgentRunTimeoutError`;
- loop detection (:class:`~agentflow.tools.LoopDetector`): the same calls in ``loop_threshold`` consecutive
  turns add a warning to that turn's last tool message; one more raises :class:`~agentflow.errors.ToolLoopError`,
  which the runner dead-letters at once with reason ``tool_loop``.

::

    run = await ctx.llm.run([{"role": "user", "content": q}], tools=ctx.tools, max_turns=8)
    run.text, run.turns, [(c.name, c.outcome) for c in run.tool_calls]
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from ..errors import AgentRunTimeoutError, MaxTurnsExceededError, TokenBudgetExceededError, ToolLoopError
from ..llm.types import ChatMessage, ChatResponse, Usage
from ..tools import LoopDetector, ToolBox, ToolRegistry
from ..tools.loops import DEFAULT_LOOP_THRESHOLD

__all__ = ["DEFAULT_MAX_TURNS", "AgentRun", "ConversationLike", "ToolCallRecord", "run_agent"]

DEFAULT_MAX_TURNS = 8

Message = Mapping[str, Any] | ChatMessage
Chat = Callable[[list[Message], list[dict[str, Any]] | None], Awaitable[ChatResponse]]


class ConversationLike(Protocol):
    """What ``memory=`` needs: :class:`agentflow.state.ConversationMemory`, or anything with these two."""

    async def window(self) -> Sequence[Mapping[str, Any]]: ...

    async def append(self, *messages: Any) -> Any: ...


class ToolCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call of an agent run: in which model ``turn`` (from 1), the call's ``id``, the tool's
    ``name``, the ``arguments`` as the tool received them (converted), its ``outcome`` (``"ok"``,
    ``"bad_arguments"``, ``"timeout"`` ... see docs/tools.md), ``duration_s`` and whether its result was cut."""

    turn: int
    id: str
    name: str
    arguments: Any
    outcome: str
    duration_s: float
    truncated: bool = False


class AgentRun(msgspec.Struct, kw_only=True):
    """What ``ctx.llm.run`` returns: the model's final ``text``; every message of the run (``messages``: the
    history from ``memory``, the messages given, then each assistant turn and its tool messages); ``turns``
    (model calls); ``tool_calls`` in the order they were made; ``usage`` summed over the turns and its
    ``cost_usd``; and the last ``response``.
    """

    text: str
    messages: list[Any]
    turns: int
    tool_calls: list[ToolCallRecord]
    usage: Usage
    cost_usd: float
    response: ChatResponse | None = None


@functools.cache
def _no_tools() -> ToolBox:
    # A model may ask for tools a run offered none of: each call then gets the "unknown tool" message.
    return ToolBox(ToolRegistry())


class _Run:
    """The state of one run; :meth:`turn` is one model call and the tool calls it asks for."""

    def __init__(self, chat: Chat, cost: Callable[[Usage], float], tools: ToolBox | None, threshold: int) -> None:
        self.chat = chat
        self.cost = cost
        self.tools = tools
        self.schemas = tools.schemas() if tools is not None else None
        self.detector = LoopDetector(threshold)
        self.convo: list[Any] = []
        self.records: list[ToolCallRecord] = []
        self.usage = Usage()
        self.cost_usd = 0.0
        self.turns = 0
        self.response: ChatResponse | None = None

    async def turn(self, max_turns: int) -> bool:
        """One model turn; True when it was the answer."""
        self.turns += 1
        resp = self.response = await self.chat(self.convo, self.schemas or None)
        u = resp.usage
        self.usage.prompt_tokens += u.prompt_tokens
        self.usage.completion_tokens += u.completion_tokens
        self.usage.total_tokens += u.total_tokens or (u.prompt_tokens + u.completion_tokens)
        self.cost_usd += self.cost(u)
        self.convo.append(resp.message)
        calls = resp.tool_calls
        if not calls:
            return True
        verdict = self.detector.observe(calls)  # past the warning: ToolLoopError, and these calls never run
        if self.turns >= max_turns:
            names = ", ".join(dict.fromkeys(c.name for c in calls))
            raise MaxTurnsExceededError(
                f"The model still asked for tools ({names}) in turn {self.turns}, its last (max_turns={max_turns}), "
                "instead of answering; the run was stopped. Raise max_turns, or make the task or the tools' results "
                "clearer.",
                turns=self.turns,
                max_turns=max_turns,
            )
        box = self.tools if self.tools is not None else _no_tools()
        results = await box.call_many(calls)
        messages = [r.message() for r in results]
        if verdict.warn:
            messages[-1]["content"] += "\n\n" + verdict.text()
            if box.metrics is not None:
                box.metrics.loops["warned"] += 1
        self.convo.extend(messages)
        turn = self.turns
        self.records.extend(
            ToolCallRecord(
                turn=turn,
                id=r.id,
                name=r.name,
                arguments=r.arguments,
                outcome=r.outcome,
                duration_s=r.duration_s,
                truncated=r.truncated,
            )
            for r in results
        )
        return False


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ToolLoopError):
        return "tool_loop"
    if isinstance(exc, MaxTurnsExceededError):
        return "max_turns"
    if isinstance(exc, AgentRunTimeoutError):
        return "timeout"
    if isinstance(exc, TokenBudgetExceededError):
        return "budget"
    return "error"


async def run_agent(
    chat: Chat,
    messages: Sequence[Message],
    *,
    cost: Callable[[Usage], float],
    tools: ToolBox | None = None,
    max_turns: int = DEFAULT_MAX_TURNS,
    timeout_s: float | None = None,
    loop_threshold: int = DEFAULT_LOOP_THRESHOLD,
    memory: ConversationLike | None = None,
) -> AgentRun:
    """Run the agent loop (see the module docstring). ``chat(conversation, tool_schemas)`` is one model call
    (``ctx.llm.run`` binds the model, the provider and the request options into it), ``cost(usage)`` prices
    one call's usage. With ``memory``, its window comes first and the run's messages are appended to it once
    the model answered (a run that fails stores nothing)."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, not {max_turns!r}.")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be greater than 0, not {timeout_s!r}.")
    run = _Run(chat, cost, tools, loop_threshold)
    metrics = tools.metrics if tools is not None else None
    try:
        history = list(await memory.window()) if memory is not None else []
        run.convo = [*history, *messages]
        if timeout_s is None:
            while not await run.turn(max_turns):
                pass
        else:
            try:
                async with asyncio.timeout(timeout_s) as scope:
                    while not await run.turn(max_turns):
                        pass
            except TimeoutError:
                if not scope.expired():
                    raise
                raise AgentRunTimeoutError(
                    f"The agent run did not finish within timeout_s={timeout_s:g} s ({run.turns} model turns); it "
                    "was cancelled where it was. Raise timeout_s, lower max_turns, or make the tools faster.",
                    turns=run.turns,
                    timeout_s=timeout_s,
                ) from None
        if memory is not None:
            await memory.append(*run.convo[len(history) :])
    except Exception as exc:
        if metrics is not None:
            metrics.observe_run(run.turns, _outcome(exc))
            if isinstance(exc, ToolLoopError):
                metrics.loops["stopped"] += 1
        raise
    if metrics is not None:
        metrics.observe_run(run.turns, "answered")
    resp = run.response
    return AgentRun(
        text=resp.text if resp is not None else "",
        messages=run.convo,
        turns=run.turns,
        tool_calls=run.records,
        usage=run.usage,
        cost_usd=run.cost_usd,
        response=resp,
    )
