"""Several providers at once, built from ``[llm.NAME]``, and the ``ctx.llm`` view an agent gets.

The hub owns one :class:`~agentflow.llm.client.ProviderClient` per provider and the resilience parts each
needs: a breaker registry keyed by (provider, model), a rate limiter per (provider, model), a retry budget per
provider and micro-batchers for the batchable endpoints. The Runner opens it in ``start`` and closes it in its
one shutdown path; ``ctx.llm`` attributes every call to the agent and the workflow (correlation id)::

    @runner.agent("questions")
    async def answer(event, ctx):
        reply = await ctx.llm.chat([{"role": "user", "content": event.payload["q"]}], temperature=0)
        return reply.text
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..config import LLMConfig
from ..errors import ConfigError, LifecycleError, LLMError
from ..lifecycle import Lifecycle
from ..metrics import Metrics
from ..resilience.breaker import BreakerConfig, BreakerRegistry
from ..resilience.budget import RetryBudget
from ..resilience.limits import RateLimiter
from .batching import MicroBatcher
from .client import ProviderClient
from .cost import CostTracker
from .metrics import LLMMetrics
from .protocols import BatcherLike, LimiterLike, SharedCacheLike
from .stream import ChatStream
from .types import ChatMessage, ChatResponse, CompletionResponse, EmbeddingResponse, Usage

if TYPE_CHECKING:
    from ..agents.loop import AgentRun
    from ..tools import ToolBox

__all__ = ["AgentLLM", "AgentSettings", "LLMHub"]


def _is_failure(exc: BaseException) -> bool:
    # 429, 5xx, timeouts and resets count against the provider; a bad request is the caller's fault.
    return isinstance(exc, LLMError) and exc.retriable


def _is_ignored(exc: BaseException) -> bool:
    return isinstance(exc, LLMError) and not exc.retriable


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What one agent's ``ctx.llm`` calls use when they name none: ``[agents.NAME]`` over ``@runner.agent(...)``.

    ``temperature`` applies to chat, streamed chat and completions; ``cache_ttl_s`` to cached chat answers and
    embeddings::

        AgentSettings(provider="openai", model="gpt-4o-mini", temperature=0.0, cache_ttl_s=3600)
    """

    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    cache_ttl_s: float | None = None


class LLMHub(Lifecycle):
    """The providers of ``[llm.*]``; ``hub.client("openai")`` is one of them, started and closed with the hub."""

    def __init__(
        self,
        providers: Mapping[str, LLMConfig],
        *,
        metrics: Metrics | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.costs = CostTracker()
        self.llm_metrics = LLMMetrics(self.costs)
        self._metrics = metrics
        if metrics is not None:
            metrics.add_families(self.llm_metrics.collect)
        self._env = os.environ if env is None else env
        self._clients: dict[str, ProviderClient] = {}
        self._limiters: list[RateLimiter] = []
        # Every provider scrubs every provider's keys from its error messages, not only its own.
        self._secret_envs = sorted(
            {
                v
                for cfg in providers.values()
                for f in cfg.__struct_fields__
                if f.endswith("_env") and (v := getattr(cfg, f))
            }
        )
        for name, cfg in providers.items():
            self._clients[name] = self._build(name, cfg)
        self._first: ProviderClient | None = next(iter(self._clients.values()), None)
        self._settings: dict[str, AgentSettings] = {}

    def _build(self, name: str, cfg: LLMConfig) -> ProviderClient:
        metrics = self._metrics
        bc = cfg.breaker
        breakers = None
        if bc.enabled:
            fields = {k: v for k, v in msgspec.structs.asdict(bc).items() if k != "enabled"}
            try:
                breaker_config = BreakerConfig(**fields)
            except (ValueError, msgspec.ValidationError) as exc:
                raise ConfigError(f"[llm.{name}.breaker]: {exc}", key=f"llm.{name}.breaker") from None
            breakers = BreakerRegistry(breaker_config, is_failure=_is_failure, is_ignored=_is_ignored, metrics=metrics)
        rc = cfg.retry
        budget = RetryBudget(
            ratio=rc.budget_ratio,
            window_s=rc.budget_window_s,
            min_retries_per_s=rc.budget_min_per_s,
            name=name,
            metrics=metrics,
        )
        lc = cfg.limits

        def limiter(model: str) -> LimiterLike | None:
            if lc.rpm is None and lc.tpm is None:
                return None
            lim = RateLimiter(rpm=lc.rpm, tpm=lc.tpm, max_queue=lc.max_queue, name=f"{name}/{model}", metrics=metrics)
            self._limiters.append(lim)
            return lim

        bt = cfg.batching

        def batcher(dispatch: Callable[[list[Any]], Awaitable[Sequence[Any]]], label: str) -> BatcherLike[Any, Any]:
            return MicroBatcher(
                dispatch,
                max_batch_size=bt.max_batch_size,
                max_wait_ms=bt.max_wait_ms,
                max_batch_tokens=bt.max_batch_tokens,
                adaptive=bt.adaptive,
                target_latency_ms=bt.target_latency_ms,
                name=label,
                metrics=metrics,
            )

        return ProviderClient(
            name,
            cfg,
            env=self._env,
            llm_metrics=self.llm_metrics,
            breakers=breakers,
            limiter_factory=None if lc.rpm is None and lc.tpm is None else limiter,  # none: no token estimates
            budget=budget,
            batcher_factory=batcher,
            secret_envs=self._secret_envs,
        )

    def __repr__(self) -> str:
        return f"<LLMHub state={self.state.value} providers={sorted(self._clients)} {self.costs!r}>"

    @property
    def providers(self) -> list[str]:
        return list(self._clients)

    def client(self, provider: str | None = None) -> ProviderClient:
        """The client of ``provider``; with None, the only (or first configured) provider."""
        c = self._first if provider is None else self._clients.get(provider)
        if c is not None:
            return c
        if not self._clients:
            raise LifecycleError(
                "No LLM provider is configured; add an [llm.NAME] table with base_url to the config (docs/llm.md)."
            )
        raise LifecycleError(
            f"No LLM provider named {provider!r} is configured; configured: {', '.join(sorted(self._clients))}."
        )

    async def _open(self) -> None:
        for c in self._clients.values():
            await c.start()

    async def _close(self) -> None:
        """Close every client (flushing batchers) and rate limiter."""
        for c in self._clients.values():
            await c.aclose()
        for lim in self._limiters:
            await lim.aclose()

    def for_agent(self, agent: str | None, workflow: str | None) -> AgentLLM:
        return AgentLLM(self, agent, workflow, None if agent is None else self._settings.get(agent))

    def set_agent_settings(self, agent: str, settings: AgentSettings) -> None:
        """Give ``agent``'s ``ctx.llm`` these defaults; a provider that is not configured is refused."""
        if settings.provider is not None and settings.provider not in self._clients:
            import difflib

            close = difflib.get_close_matches(settings.provider, self._clients, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(
                f"Agent {agent!r} asks for LLM provider {settings.provider!r}, which no [llm.NAME] table configures"
                f"{hint} Configured: {', '.join(sorted(self._clients))}.",
                key=f"agents.{agent}.provider",
            )
        self._settings[agent] = settings

    def set_shared_cache(self, shared: SharedCacheLike) -> None:
        """Give every provider's response cache a second level shared by all workers (``shared.name``: redis)."""
        for name, client in self._clients.items():
            if client.cache is not None:
                client.shared_cache = shared
                self.llm_metrics.add_shared_cache(name, shared.name, client.shared_stats)


class AgentLLM(msgspec.Struct, gc=False):
    """``ctx.llm``: the hub's calls, attributed to one agent and workflow (the event's correlation id).

    ``provider`` picks an ``[llm.NAME]`` (default: the agent's ``provider``, else the first configured); ``model``
    defaults to the agent's ``model``, else the provider's ``default_model``; the agent's ``temperature`` and
    ``cache_ttl_s`` apply to calls that give none (:class:`AgentSettings`). Raises
    :class:`~agentflow.errors.TokenBudgetExceededError` once the workflow used up ``token_budget_per_workflow``.
    """

    # A struct, made with each ctx.llm: cheaper to make than a class with __init__; nothing in it refers back.
    _hub: LLMHub
    _agent: str | None
    _workflow: str | None
    _settings: AgentSettings | None = None

    def __repr__(self) -> str:
        return f"<AgentLLM agent={self._agent!r} workflow={self._workflow!r} providers={self._hub.providers}>"

    def _apply(
        self, provider: str | None, model: str | None, kwargs: dict[str, Any], *, cached: bool, sampled: bool
    ) -> tuple[ProviderClient, str | None]:
        """The client and model of a call, with the agent's settings filled in where the call gave none."""
        s = self._settings
        if s is not None:
            provider = provider or s.provider
            model = model or s.model
            if sampled and s.temperature is not None and kwargs.get("temperature") is None:
                kwargs["temperature"] = s.temperature
            if cached and s.cache_ttl_s is not None and kwargs.get("cache_ttl_s") is None:
                kwargs["cache_ttl_s"] = s.cache_ttl_s
        return self._hub.client(provider), model

    # Plain functions returning the client's coroutine: ``await ctx.llm.chat(...)`` works the same, and the
    # call path has one coroutine layer less (each layer costs on every suspension of every call).

    def chat(
        self,
        messages: Sequence[Mapping[str, Any] | ChatMessage],
        *,
        model: str | None = None,
        provider: str | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, ChatResponse]:
        """``await ctx.llm.chat(messages, ...)``: :meth:`ProviderClient.chat` for this agent and workflow."""
        client, model = self._apply(provider, model, kwargs, cached=True, sampled=True)
        return client.chat(messages, model=model, agent=self._agent, workflow=self._workflow, **kwargs)

    def stream(
        self,
        messages: Sequence[Mapping[str, Any] | ChatMessage],
        *,
        model: str | None = None,
        provider: str | None = None,
        **kwargs: Any,
    ) -> ChatStream:
        """``async with ctx.llm.stream(messages, ...) as s: async for delta in s: ...``: the answer as it
        arrives (:meth:`ProviderClient.stream` for this agent and workflow)."""
        client, model = self._apply(provider, model, kwargs, cached=False, sampled=True)
        return client.stream(messages, model=model, agent=self._agent, workflow=self._workflow, **kwargs)

    def embed(
        self, inputs: str | Sequence[str], *, model: str | None = None, provider: str | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, EmbeddingResponse]:
        """``await ctx.llm.embed(inputs, ...)``: :meth:`ProviderClient.embed` for this agent and workflow."""
        client, model = self._apply(provider, model, kwargs, cached=True, sampled=False)
        return client.embed(inputs, model=model, agent=self._agent, workflow=self._workflow, **kwargs)

    def complete(
        self, prompts: str | Sequence[str], *, model: str | None = None, provider: str | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, CompletionResponse]:
        """``await ctx.llm.complete(prompts, ...)``: :meth:`ProviderClient.complete` for this agent and workflow."""
        client, model = self._apply(provider, model, kwargs, cached=False, sampled=True)
        return client.complete(prompts, model=model, agent=self._agent, workflow=self._workflow, **kwargs)

    async def run(
        self,
        messages: Sequence[Mapping[str, Any] | ChatMessage],
        *,
        tools: ToolBox | None = None,
        max_turns: int | None = None,
        model: str | None = None,
        provider: str | None = None,
        memory: Any = None,
        timeout_s: float | None = None,
        loop_threshold: int | None = None,
        **kwargs: Any,
    ) -> AgentRun:
        """``await ctx.llm.run(messages, tools=ctx.tools, max_turns=8)``: the agent loop — model, tool calls in
        parallel, tool messages, model … until it answers (:mod:`agentflow.agents.loop`; docs/tools.md).

        ``max_turns`` (default 8) bounds the model turns; ``timeout_s`` the whole run (wall clock);
        ``loop_threshold`` (default 3) identical turns in a row get a warning, one more raises
        :class:`~agentflow.errors.ToolLoopError`; ``memory`` (a
        :class:`~agentflow.state.ConversationMemory`, or anything with ``window()`` and ``append()``) gives
        the history and keeps the run's messages. Other keyword arguments (``temperature``, ``tool_choice``,
        ``parallel_tool_calls``, ``max_tokens`` ...) go to every model call.
        """
        run_agent = _agent_loop()
        client = self._hub.client(provider)
        used_model = model or client.config.default_model
        costs = self._hub.costs

        def chat(conversation: list[Any], schemas: list[dict[str, Any]] | None) -> Coroutine[Any, Any, ChatResponse]:
            return client.chat(
                conversation, model=used_model, tools=schemas, agent=self._agent, workflow=self._workflow, **kwargs
            )

        def cost(usage: Usage) -> float:
            return costs.cost_usd(client.name, used_model, usage)

        limits: dict[str, Any] = {}
        if max_turns is not None:
            limits["max_turns"] = max_turns
        if loop_threshold is not None:
            limits["loop_threshold"] = loop_threshold
        return await run_agent(chat, messages, cost=cost, tools=tools, timeout_s=timeout_s, memory=memory, **limits)

    def used_tokens(self) -> int:
        """Tokens this workflow has used so far, across providers."""
        return 0 if self._workflow is None else self._hub.costs.used(self._workflow)


_RUN_AGENT: Callable[..., Awaitable[AgentRun]] | None = None


def _agent_loop() -> Callable[..., Awaitable[AgentRun]]:
    """``agents.loop.run_agent``. The loop is layer L4, above both llm/ and tools/: it is imported when the first run
    starts, so the LLM layer itself never depends on the tool layer (and later runs skip the import statement)."""
    global _RUN_AGENT
    if _RUN_AGENT is None:
        from ..agents import loop

        _RUN_AGENT = loop.run_agent
    return _RUN_AGENT
