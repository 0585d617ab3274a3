"""One OpenAI-compatible provider over a pooled aiohttp session: chat (plain and SSE), embeddings, completions.

Each call goes: token budget → cache (in-process, then the shared second level when there is one) → (batcher,
for embeddings and list-prompt completions) → rate limiter
→ circuit breaker → HTTP, with retries of retriable failures (429, 5xx, timeouts, resets) inside one deadline
shared by all attempts. The connections are a :class:`~agentflow.llm.transport.ConnectionPool`; failures
become :class:`~agentflow.errors.LLMError` instances in :mod:`agentflow.llm.failures`. The resilience parts are passed
in (see :mod:`agentflow.llm.hub`, which builds them from ``[llm.NAME]``), so this module only needs them to look
like the small protocols of :mod:`agentflow.llm.protocols`.

Works against OpenAI, vLLM, Ollama and the mock server through ``base_url``; ``api_style = "azure"`` sends the
key in an ``api-key`` header and adds ``?api-version=`` (``base_url`` is then the deployment's URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from .. import tracing as _tracing
from .._deadlines import TimedTask
from ..config import LLMConfig
from ..errors import (
    CircuitOpenError,
    LifecycleError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMRateLimitedError,
    LLMTimeoutError,
)
from ..lifecycle import Lifecycle, State
from ..resilience.retry import RetryPolicy
from .cache import TTLCache
from .cost import CostTracker
from .failures import Failures, outcome
from .metrics import LLMMetrics, ModelMetrics, SharedCacheStats
from .protocols import (
    NO_BREAKER,
    BatcherFactory,
    BatcherLike,
    BreakerLike,
    BreakersLike,
    BudgetLike,
    LimiterLike,
    SharedCacheLike,
)
from .stream import ChatStream, StreamAssembler, open_stream, read_stream
from .tokens import estimate_tokens, split_tokens
from .toolspec import tool_fields
from .transport import USER_AGENT, ConnectionPool
from .types import (
    CHAT_DECODER,
    COMPLETION_DECODER,
    EMBEDDING_DECODER,
    ENCODER,
    ChatMessage,
    ChatResponse,
    CompletionChoice,
    CompletionResponse,
    Embedding,
    EmbeddingResponse,
    ToolCall,
    Usage,
)

__all__ = ["ProviderClient"]

#: Models whose metrics, breaker and limiter are remembered for the hot path.
MAX_ROUTES = 256
_RUNNING = State.RUNNING

#: ``_send``'s ``stream``: 0 (False) reads a JSON answer, 1 (True) a whole SSE answer (``chat(stream=True)``),
#: ``_OPEN`` reads until the first delta is ready and hands the open response to a :class:`ChatStream`.
_OPEN = 2

Messages = Sequence[Mapping[str, Any] | ChatMessage]

logger = logging.getLogger(__name__)


class ProviderClient(Lifecycle):
    """A pooled client for one provider, named as in ``[llm.NAME]``::

    async with ProviderClient("local", LLMConfig(base_url=server.url, default_model="mock")) as client:
        reply = await client.chat([{"role": "user", "content": "hi"}], temperature=0)
        vectors = (await client.embed(["a", "b"])).vectors
    """

    def __init__(
        self,
        name: str,
        config: LLMConfig,
        *,
        env: Mapping[str, str] | None = None,
        llm_metrics: LLMMetrics | None = None,
        breakers: BreakersLike | None = None,
        limiter_factory: Callable[[str], LimiterLike | None] | None = None,
        budget: BudgetLike | None = None,
        batcher_factory: BatcherFactory | None = None,
        secret_envs: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.config = config
        self._env = os.environ if env is None else env
        # Variables whose values are scrubbed from error messages, besides this provider's own *_env keys.
        self._secret_envs = tuple(secret_envs)
        self.metrics = llm_metrics or LLMMetrics(CostTracker())
        self.costs = self.metrics.costs
        self.costs.set_prices(name, config.prices)
        self.costs.set_budget(name, config.token_budget_per_workflow, config.token_budget_warn_share)
        self._breakers = breakers
        self._limiter_factory = limiter_factory
        self._limiters: dict[str, LimiterLike | None] = {}
        self._routes: dict[str, tuple[ModelMetrics, BreakerLike, LimiterLike | None]] = {}
        self._budget = budget
        self._batcher_factory = batcher_factory if config.batching.enabled else None
        self._batchers: dict[tuple[Any, ...], BatcherLike[Any, Any]] = {}
        cc = config.cache
        self.cache: TTLCache[object, object] | None = (
            TTLCache(max_entries=cc.max_entries, ttl_s=cc.ttl_s) if cc.enabled else None
        )
        if self.cache is not None:
            self.metrics.add_cache(name, self.cache)
        #: The second cache level, shared by every worker (Redis, when [memory] backend = "redis"); None: none.
        self.shared_cache: SharedCacheLike | None = None
        self.shared_stats = SharedCacheStats()
        rc = config.retry
        self._policy = RetryPolicy(
            max_attempts=rc.max_attempts,
            initial_backoff_s=rc.initial_backoff_s,
            max_backoff_s=rc.max_backoff_s,
            multiplier=rc.multiplier,
            jitter_s=rc.jitter_s,
        )
        base = config.base_url.rstrip("/")
        query = f"?api-version={config.api_version}" if config.api_style == "azure" and config.api_version else ""
        self._urls = {e: f"{base}/{e}{query}" for e in ("chat/completions", "embeddings", "completions")}
        self._base = base
        # For the LLM spans ([tracing]): the GenAI system and the server they reach.
        self._system = "az.ai.openai" if config.api_style == "azure" else "openai"
        url = URL(base)
        self._server = (url.host or "", url.port or 0)
        # A User-Agent of our own also keeps aiohttp off its slower skip-auto-headers path.
        self._pool = ConnectionPool(name, config, {"Content-Type": "application/json", "User-Agent": USER_AGENT})
        self._failures = Failures(name, config)
        # Requests with the full request_timeout_s are bounded by one shared timer (_deadlines.Deadlines), so
        # aiohttp gets no total timeout of its own for them: its per-request timer costs ~4 µs on uvloop.
        self.requests = 0
        self.in_flight = 0

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        # The API key is deliberately absent: only the variable's name is shown.
        return (
            f"<ProviderClient {self.name!r} state={self.state.value} base_url={self._base!r} "
            f"api_key_env={self.config.api_key_env!r} requests={self.requests} in_flight={self.in_flight}>"
        )

    def _kind(self) -> str:
        return f"LLM provider client {self.name!r}"

    async def _open(self) -> None:
        """Read the API key from the environment, open the pool and pre-warm ``min_connections``."""
        cfg = self.config
        names = {getattr(cfg, f) for f in cfg.__struct_fields__ if f.endswith("_env")}.union(self._secret_envs)
        self._failures.secrets = tuple(v for n in sorted(n for n in names if n) if (v := self._env.get(n)))
        if cfg.api_key_env is not None:
            key = self._env.get(cfg.api_key_env)
            if not key:
                raise LLMAuthError(
                    f"The environment variable {cfg.api_key_env} (api_key_env of [llm.{self.name}]) is not set; "
                    "export the provider's API key in it before starting.",
                    provider=self.name,
                )
            if cfg.api_style == "azure":
                self._pool.headers["api-key"] = key
            else:
                self._pool.headers["Authorization"] = f"Bearer {key}"
        await self._pool.open()

    async def _close(self) -> None:
        """Close batchers (flushing what they hold), then the pool."""
        for batcher in list(self._batchers.values()):
            await batcher.aclose()
        self._batchers.clear()
        await self._pool.aclose()

    # ---- public calls ----------------------------------------------------------------------------------

    async def chat(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        stream: bool = False,
        agent: str | None = None,
        workflow: str | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        cache: bool | None = None,
        cache_ttl_s: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResponse:
        """One chat completion. ``stream=True`` reads it as server-sent events and records time to first token
        and inter-token latency (the answer is still returned whole). ``cache=None`` caches only when
        ``temperature == 0`` (and ``[llm.NAME.cache] deterministic_only``), for ``cache_ttl_s`` (default
        ``[llm.NAME.cache] ttl_s``), in this process and in the shared second level when there is one; ``extra``
        adds body fields.

        ``tools`` (OpenAI function tools), ``tool_choice`` and ``parallel_tool_calls`` are checked and sent;
        the calls the model asks for are ``response.tool_calls``."""
        if not messages:
            raise LLMBadRequestError("chat() needs at least one message.", provider=self.name)
        model = model or self.config.default_model
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if tools is not None or tool_choice is not None or parallel_tool_calls is not None:
            body.update(tool_fields(tools, tool_choice, parallel_tool_calls, self.name))
        if extra:
            body.update(extra)
        if workflow is not None and self.config.token_budget_per_workflow is not None:
            self._check_budget(workflow)
        key = None if self.cache is None or cache is False else self._cache_key(cache, temperature, ("chat", body))
        if key is not None or temperature == 0:
            cached = await self._lookup(key, temperature, agent, cache_ttl_s)
            if cached is not None:
                return cached
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        # Only the rate limiter charges estimates.
        est = 0 if self._limiter_factory is None else _estimate(messages, max_tokens)
        resp: ChatResponse
        if _tracing.TRACER is None:
            resp = await self._send("chat/completions", body, model, est, priority, timeout_s, stream=stream)
        else:
            resp = await self._traced("chat", "chat/completions", body, model, est, priority, timeout_s, stream, agent)
        self.costs.record(self.name, model, agent or "_none", workflow, resp.usage)  # _account(), inlined
        if tools is not None:
            self._report_tool_calls(resp, model)
        if key is not None and self.cache is not None:
            self.cache.put(key, resp, cache_ttl_s)
            if self.shared_cache is not None:
                await self._shared_put(key, resp, cache_ttl_s)
        return resp

    async def _lookup(
        self, key: bytes | None, temperature: float | None, agent: str | None, cache_ttl_s: float | None
    ) -> ChatResponse | None:
        """The cached answer for ``key``: this process's cache first, then the shared level (whose answer the
        local cache keeps). Chat calls with temperature 0 are counted by how the cache answered: what the
        profile report's cache recommendation reads."""
        found: ChatResponse | None = None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if isinstance(hit, ChatResponse):
                found = hit
            elif self.shared_cache is not None:
                found = await self._shared_get(key)
                if found is not None:
                    self.cache.put(key, found, cache_ttl_s)
        if temperature == 0:
            self.metrics.deterministic(self.name, agent, "off" if key is None else "miss" if found is None else "hit")
        return None if found is None else msgspec.structs.replace(found, cached=True)

    def _shared_key(self, key: bytes) -> str:
        # Hashed: the request body can be large, and the key names the provider (models differ between them).
        return f"llm:{self.name}:{hashlib.blake2b(key, digest_size=20).hexdigest()}"

    async def _shared_get(self, key: bytes) -> ChatResponse | None:
        shared, stats = self.shared_cache, self.shared_stats
        assert shared is not None
        try:
            raw = await shared.get_blob(self._shared_key(key))
            resp = None if raw is None else CHAT_DECODER.decode(raw)
        except Exception as exc:  # noqa: BLE001 - the shared level is an optimisation: a failure is a miss
            stats.errors += 1
            logger.debug("LLM cache of %r: the shared level failed a read (%s); calling the provider", self.name, exc)
            resp = None
        if resp is None:
            stats.misses += 1
        else:
            stats.hits += 1
        return resp

    async def _shared_put(self, key: bytes, resp: ChatResponse, ttl_s: float | None) -> None:
        shared = self.shared_cache
        assert shared is not None
        ttl = self.config.cache.ttl_s if ttl_s is None else ttl_s
        try:
            await shared.set_blob(self._shared_key(key), ENCODER.encode(resp), ttl)
        except Exception as exc:  # noqa: BLE001 - the answer is good; only sharing it failed
            self.shared_stats.errors += 1
            logger.debug("LLM cache of %r: the shared level failed a write (%s)", self.name, exc)

    def stream(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        agent: str | None = None,
        workflow: str | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatStream:
        """A chat completion handed out as it arrives: ``async with client.stream(messages) as s: async for
        delta in s: ...`` (see :class:`~agentflow.llm.stream.ChatStream`). Never cached.

        Until the first delta, the call goes through the budget, the rate limiter, the breaker and retries
        like :meth:`chat`, bounded by ``timeout_s`` (or ``retry.deadline_s``) and ``request_timeout_s``. After
        it, each wait for the next chunk is bounded by ``request_timeout_s``, and a failure raises
        :class:`~agentflow.errors.LLMStreamInterruptedError` without a retry. The body is built as
        :meth:`chat` builds it with ``stream=True`` (a test compares them)."""
        if not messages:
            raise LLMBadRequestError("stream() needs at least one message.", provider=self.name)
        model = model or self.config.default_model
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if tools is not None or tool_choice is not None or parallel_tool_calls is not None:
            body.update(tool_fields(tools, tool_choice, parallel_tool_calls, self.name))
        if extra:
            body.update(extra)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        est = 0 if self._limiter_factory is None else _estimate(messages, max_tokens)
        m, _, limiter = self._route(model)

        async def opener() -> StreamAssembler:
            if workflow is not None:
                self._check_budget(workflow)
            asm: StreamAssembler
            if _tracing.TRACER is None:
                asm = await self._send("chat/completions", body, model, est, priority, timeout_s, stream=_OPEN)
            else:  # the span covers the wait for the first delta
                asm = await self._traced(
                    "chat", "chat/completions", body, model, est, priority, timeout_s, _OPEN, agent
                )
            return asm

        def on_end(asm: StreamAssembler, response: ChatResponse | None, failure: LLMError | None) -> None:
            # The HTTP attempt that _send handed over ends here: its duration, outcome, connection and usage.
            m.duration.observe(time.perf_counter() - asm.t0)
            m.outcomes["interrupted" if failure is not None else "success"] += 1
            self.in_flight -= 1
            inuse = self._pool.in_use
            if asm.sid in inuse:
                inuse[asm.sid] -= 1
            if response is None:  # left early or failed: what arrived, with usage estimated if none came
                response = asm.response()
            usage = response.usage
            if limiter is not None:
                used = usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
                if used:
                    limiter.adjust(used - est)
            self._account(model, agent, workflow, usage)
            if tools is not None and failure is None:
                self._report_tool_calls(response, model)

        return ChatStream(opener, on_end)

    def _report_tool_calls(self, resp: ChatResponse, model: str) -> None:
        """Log tool calls whose arguments the model sent malformed (named, not quoted: they may hold data)."""
        for i, choice in enumerate(resp.choices):
            raw = choice.message.tool_calls
            if not raw:
                continue
            calls = (
                resp.tool_calls
                if i == 0
                else [ToolCall.decode(c.id, c.function.name, c.function.arguments) for c in raw]
            )
            for tc in calls:
                if tc.error is not None:
                    logger.warning(
                        "LLM provider %r (model %r) asked for tool %r with arguments that are not a JSON object "
                        "(%d characters); the call carries arguments=None and the reason in ToolCall.error.",
                        self.name,
                        model,
                        tc.name,
                        len(tc.arguments_raw),
                    )

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        agent: str | None = None,
        workflow: str | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        cache: bool | None = None,
        cache_ttl_s: float | None = None,
    ) -> EmbeddingResponse:
        """Embeddings of ``inputs`` in order. Concurrent calls are coalesced into batched requests when
        batching is on; each input is cached on its own (embeddings are deterministic), for ``cache_ttl_s``
        (default ``[llm.NAME.cache] ttl_s``)."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise LLMBadRequestError("embed() needs at least one input.", provider=self.name)
        model = model or self.config.default_model
        self._check_budget(workflow)
        use_cache = self.cache is not None and cache is not False
        vectors: list[list[float] | None] = [None] * len(texts)
        missing: list[int] = []
        for i, text in enumerate(texts):
            hit = self.cache.get(("embed", model, dimensions, text)) if use_cache and self.cache is not None else None
            if isinstance(hit, list):
                vectors[i] = hit
            else:
                missing.append(i)
        usage = Usage()
        if missing:
            todo = [texts[i] for i in missing]
            if self._batcher_factory is not None:
                # One batcher serves many callers, so its requests use the provider's deadline and priority 0;
                # each caller's own deadline still bounds its wait for the batch.
                batcher = self._batcher(
                    ("embed", model, dimensions), self._embed_dispatch(model, dimensions, None, batched=True)
                )
                deadline = self._deadline(timeout_s)
                if len(todo) == 1:  # the common case: no gather, so no task per call
                    results = [await batcher.submit(todo[0], tokens=estimate_tokens(todo[0]), deadline=deadline)]
                else:
                    results = await asyncio.gather(
                        *(batcher.submit(t, tokens=estimate_tokens(t), deadline=deadline) for t in todo)
                    )
            else:
                results = await self._embed_dispatch(model, dimensions, timeout_s, priority)(todo)
            for i, (vec, tokens) in zip(missing, results, strict=True):
                vectors[i] = vec
                usage.prompt_tokens += tokens
                if use_cache and self.cache is not None:
                    self.cache.put(("embed", model, dimensions, texts[i]), vec, cache_ttl_s)
            usage.total_tokens = usage.prompt_tokens
            self._account(model, agent, workflow, usage)
        data = [Embedding(index=i, embedding=v or []) for i, v in enumerate(vectors)]
        return EmbeddingResponse(model=model, data=data, usage=usage, cached=not missing)

    async def complete(
        self,
        prompts: str | Sequence[str],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        agent: str | None = None,
        workflow: str | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> CompletionResponse:
        """Completions of a list of prompts (one choice per prompt, in order); batched like embeddings."""
        items = [prompts] if isinstance(prompts, str) else list(prompts)
        if not items:
            raise LLMBadRequestError("complete() needs at least one prompt.", provider=self.name)
        model = model or self.config.default_model
        self._check_budget(workflow)
        if self._batcher_factory is not None:
            dispatch = self._complete_dispatch(model, max_tokens, temperature, None, 0, batched=True)
            batcher = self._batcher(("complete", model, max_tokens, temperature), dispatch)
            deadline = self._deadline(timeout_s)
            results = await asyncio.gather(
                *(batcher.submit(p, tokens=estimate_tokens(p) + (max_tokens or 0), deadline=deadline) for p in items)
            )
        else:
            results = await self._complete_dispatch(model, max_tokens, temperature, timeout_s, priority)(items)
        usage = Usage()
        choices = []
        for i, (text, prompt_tokens, completion_tokens) in enumerate(results):
            choices.append(CompletionChoice(index=i, text=text, finish_reason="stop"))
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        self._account(model, agent, workflow, usage)
        return CompletionResponse(model=model, choices=choices, usage=usage)

    # ---- batching --------------------------------------------------------------------------------------

    def _batcher(
        self, key: tuple[Any, ...], dispatch: Callable[[list[Any]], Awaitable[Sequence[Any]]]
    ) -> BatcherLike[Any, Any]:
        b = self._batchers.get(key)
        if b is None:
            assert self._batcher_factory is not None
            b = self._batchers[key] = self._batcher_factory(dispatch, f"{self.name}/{key[0]}/{key[1]}")
        return b

    def _embed_dispatch(
        self, model: str, dimensions: int | None, timeout_s: float | None, priority: int = 0, *, batched: bool = False
    ) -> Callable[[list[str]], Awaitable[list[tuple[list[float], int]]]]:
        async def dispatch(texts: list[str]) -> list[tuple[list[float], int]]:
            body: dict[str, Any] = {"model": model, "input": texts}
            if dimensions is not None:
                body["dimensions"] = dimensions
            est = sum(estimate_tokens(t) for t in texts)
            resp: EmbeddingResponse
            if _tracing.TRACER is None:
                resp = await self._send("embeddings", body, model, est, priority, timeout_s)
            else:
                resp = await self._traced(
                    "embeddings", "embeddings", body, model, est, priority, timeout_s, 0, None, batched
                )
            if len(resp.data) != len(texts):
                raise LLMError(
                    f"Provider {self.name!r} returned {len(resp.data)} embeddings for {len(texts)} inputs; check "
                    "that base_url points at an OpenAI-compatible embeddings endpoint.",
                    provider=self.name,
                    model=model,
                )
            vecs = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
            return [(v, s) for v, s in zip(vecs, split_tokens(resp.usage.prompt_tokens, texts), strict=True)]

        return dispatch

    def _complete_dispatch(
        self,
        model: str,
        max_tokens: int | None,
        temperature: float | None,
        timeout_s: float | None,
        priority: int,
        *,
        batched: bool = False,
    ) -> Callable[[list[str]], Awaitable[list[tuple[str, int, int]]]]:
        async def dispatch(prompts: list[str]) -> list[tuple[str, int, int]]:
            body: dict[str, Any] = {"model": model, "prompt": prompts}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            if temperature is not None:
                body["temperature"] = temperature
            est = sum(estimate_tokens(p) for p in prompts) + (max_tokens or 0) * len(prompts)
            resp: CompletionResponse
            if _tracing.TRACER is None:
                resp = await self._send("completions", body, model, est, priority, timeout_s)
            else:
                resp = await self._traced(
                    "text_completion", "completions", body, model, est, priority, timeout_s, 0, None, batched
                )
            texts = resp.texts
            if len(texts) != len(prompts):
                raise LLMError(
                    f"Provider {self.name!r} returned {len(texts)} completions for {len(prompts)} prompts; list "
                    "prompts need an OpenAI-compatible /completions endpoint (n = 1).",
                    provider=self.name,
                    model=model,
                )
            p = split_tokens(resp.usage.prompt_tokens, prompts)
            c = split_tokens(resp.usage.completion_tokens, prompts)
            return list(zip(texts, p, c, strict=True))

        return dispatch

    # ---- the request pipeline --------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        return asyncio.get_running_loop().time() + (
            timeout_s if timeout_s is not None else self.config.retry.deadline_s
        )

    def _check_budget(self, workflow: str | None) -> None:
        self.costs.check_budget(workflow, self.config.token_budget_per_workflow)

    def _cache_key(self, cache: bool | None, temperature: float | None, what: Any) -> bytes | None:
        if self.cache is None or cache is False:
            return None
        if cache is None and self.config.cache.deterministic_only and temperature != 0:
            return None
        try:
            return ENCODER.encode(what)
        except (TypeError, msgspec.EncodeError):
            return None

    def _account(self, model: str, agent: str | None, workflow: str | None, usage: Usage) -> None:
        self.costs.record(self.name, model, agent or "_none", workflow, usage)

    def _limiter(self, model: str) -> LimiterLike | None:
        if self._limiter_factory is None:
            return None
        if model not in self._limiters:
            self._limiters[model] = self._limiter_factory(model)
        return self._limiters[model]

    def _route(self, model: str) -> tuple[ModelMetrics, BreakerLike, LimiterLike | None]:
        """The metrics, breaker and limiter of ``model``, looked up once per model."""
        route = self._routes.get(model)
        if route is None:
            breaker = self._breakers.get(self.name, model) if self._breakers is not None else NO_BREAKER
            route = (self.metrics.model(self.name, model), breaker, self._limiter(model))
            if len(self._routes) < MAX_ROUTES:  # models come from code, but a typo loop must not grow this
                self._routes[model] = route
        return route

    async def _traced(
        self,
        operation: str,
        endpoint: str,
        body: dict[str, Any],
        model: str,
        est_tokens: int,
        priority: int,
        timeout_s: float | None,
        stream: int,
        agent: str | None,
        batched: bool = False,
    ) -> Any:
        """:meth:`_send` inside an LLM span (``[tracing]``): a batch serves many callers, so it starts its own trace."""
        with _tracing.llm_span(
            operation, self._system, self.name, model, body, agent=agent, server=self._server, detached=batched
        ) as span:
            result = await self._send(endpoint, body, model, est_tokens, priority, timeout_s, stream=stream)
            if stream != _OPEN:
                _tracing.llm_response(span, result)
            return result

    async def _send(  # noqa: C901 - the measured per-call pipeline, one coroutine on purpose (see docstring)
        self,
        endpoint: str,
        body: dict[str, Any],
        model: str,
        est_tokens: int,
        priority: int,
        timeout_s: float | None,
        *,
        stream: int = 0,
    ) -> Any:
        """POST ``body`` with rate limiting, the breaker and retries inside one deadline; return the decoded answer.

        One coroutine for the whole pipeline on purpose: every extra coroutine layer costs its creation and a
        resumption per suspension, and this path is measured against a bare aiohttp loop (docs/benchmarking.md).
        ``stream`` is 0 (a JSON answer), 1 (a whole SSE answer) or ``_OPEN``: the attempt ends when the first delta
        is ready and the response, still open, goes to a :class:`ChatStream`, which ends the attempt's accounting.
        """
        if self._lifecycle is not _RUNNING:
            raise LifecycleError(f"LLM provider client {self.name!r} is not running; use it inside the Runner.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if timeout_s is not None else self.config.retry.deadline_s)
        data = ENCODER.encode(body)
        url = self._urls[endpoint]
        pool, failures = self._pool, self._failures
        route = self._routes.get(model)
        m, breaker, limiter = route if route is not None else self._route(model)
        if self._budget is not None:
            self._budget.record_call()
        cfg = self.config
        attempt = 0
        handed_over = False
        result: Any  # a decoded answer, or a StreamAssembler when _OPEN
        while True:
            attempt += 1
            grant = None if limiter is None else await limiter.acquire(est_tokens, priority=priority)
            try:
                permit = breaker.acquire()
            except CircuitOpenError:  # fail fast; the agent's retry policy waits its retry_after_s (after_s)
                m.outcomes["circuit_open"] += 1
                if limiter is not None:
                    limiter.refund(grant)  # nothing was sent: the request and its tokens go back
                raise
            remaining_s = deadline - loop.time()
            lean = pool.http1
            session: Any = lean if lean is not None else pool.session
            assert session is not None
            inuse = pool.in_use
            sid = id(session)
            inuse[sid] = inuse.get(sid, 0) + 1
            self.requests += 1
            self.in_flight += 1
            t0 = time.perf_counter()
            call: TimedTask | None = None
            resp: Any = None  # an aiohttp ClientResponse, or an http1.Http1Response of the same shape
            try:
                if remaining_s <= 0:
                    raise LLMTimeoutError(
                        f"The deadline for this call to LLM provider {self.name!r} passed before it could be sent; "
                        "raise [llm.NAME.retry] deadline_s or the call's timeout_s.",
                        provider=self.name,
                        model=model,
                    )
                if stream == _OPEN:
                    # The timer bounds the wait for the first delta only; afterwards each read of the open stream
                    # waits at most request_timeout_s (sock_read), however long the consumer takes per delta.
                    stream_task = asyncio.current_task(loop)
                    assert stream_task is not None  # a coroutine awaited by a ChatStream runs in a task
                    call = TimedTask(stream_task)
                    pool.expiries.add(loop, call, None, min(cfg.request_timeout_s, remaining_s))
                    timeout = pool.streaming
                elif remaining_s >= cfg.request_timeout_s and (task := asyncio.current_task(loop)) is not None:
                    call = TimedTask(task)  # the common case: request_timeout_s on the shared timer
                    pool.expiries.add(loop, call, None, cfg.request_timeout_s)
                    timeout = pool.untimed
                else:  # less than request_timeout_s left of the deadline: aiohttp's own timer, cut to fit
                    timeout = aiohttp.ClientTimeout(
                        total=min(cfg.request_timeout_s, remaining_s), sock_connect=cfg.connection_timeout_s
                    )
                # Not ``async with``: an open stream outlives this attempt, and two coroutine layers fewer.
                if lean is None:
                    resp = await session.post(url, data=data, timeout=timeout)
                elif stream:  # a stream's reads each wait at most request_timeout_s, as aiohttp's sock_read
                    resp = await lean.post(url, data, timeout, stream=True, read_timeout_s=cfg.request_timeout_s)
                else:
                    resp = await lean.post(url, data, timeout)
                if resp.status >= 400:
                    raise failures.http_error(resp.status, await self._read(resp, model), resp.headers, model)
                if stream:
                    if stream == _OPEN:
                        result = await open_stream(resp, failures, model, t0, m)
                    else:
                        result = await read_stream(resp, failures, model, t0, m)
                else:
                    length = resp.content_length  # _read's common case, without its coroutine layer
                    if length is not None and length <= cfg.max_response_bytes:
                        raw = await resp.read()
                    else:
                        raw = await self._read(resp, model)
                    try:
                        result = _DECODERS[endpoint].decode(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise failures.not_openai(exc, model) from None
            except LLMError as exc:
                permit.failure(exc)
                failure: LLMError = exc
            except BaseException as exc:  # noqa: BLE001 - translated, or re-raised untouched
                if call is not None and call.timed_out():
                    # The shared timer cancelled this request (as asyncio.timeout does): a timeout, unless the task
                    # was also cancelled from outside, which then propagates.
                    exc = TimeoutError() if isinstance(exc, asyncio.CancelledError) else exc
                translated = failures.translate(exc, model, remaining_s)
                if translated is None:
                    if isinstance(exc, Exception):
                        permit.failure(exc)  # a bug, not the provider's answer: counted, and raised untouched
                    else:
                        permit.cancel()  # cancelled: the call has no outcome, and its permit goes back
                    raise
                permit.failure(translated)
                failure = translated
            else:
                if call is not None:
                    call.settle()  # answered as the timer fired: take its cancellation back
                permit.success()
                if stream == _OPEN:
                    result.resp, result.sid = resp, sid
                    resp = None
                    handed_over = True
                    return result
                m.outcomes["success"] += 1
                if limiter is not None:
                    usage = result.usage
                    used = usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
                    if used:
                        limiter.adjust(used - est_tokens)
                return result
            finally:
                if call is not None:
                    pool.expiries.discard(call)
                if resp is not None:
                    resp.release()
                if not handed_over:
                    took = time.perf_counter() - t0  # m.duration.observe(took), inlined: never negative, never huge
                    duration = m.duration
                    duration.counts[int(took * 1_000_000).bit_length()] += 1
                    duration.sum += took
                    self.in_flight -= 1
                    inuse[sid] -= 1
            m.outcomes[outcome(failure)] += 1
            if isinstance(failure, LLMRateLimitedError) and failure.retry_after_s:
                breaker.open_for(failure.retry_after_s)
            wait = self._retry_wait(failure, attempt, deadline - loop.time())
            if wait is None:
                raise failure
            m.retries += 1
            logger.debug(
                "Retrying %s call to %r after %s (attempt %d).", endpoint, self.name, type(failure).__name__, attempt
            )
            await asyncio.sleep(wait)

    def _retry_wait(self, exc: LLMError, attempt: int, remaining_s: float) -> float | None:
        """Seconds to wait before retrying, or None when this failure must not be retried."""
        if not exc.retriable or not self._policy.should_retry(attempt):
            return None
        wait = self._policy.delay_s(attempt, None)
        if isinstance(exc, LLMRateLimitedError) and exc.retry_after_s is not None:
            wait = max(wait, exc.retry_after_s)
        if wait >= remaining_s:
            return None  # the shared deadline would pass while waiting
        if self._budget is not None and not self._budget.try_spend():
            logger.warning("Retry budget of LLM provider %r exhausted; not retrying %s.", self.name, type(exc).__name__)
            return None
        return wait

    async def _read(self, resp: aiohttp.ClientResponse, model: str) -> bytes:
        limit = self.config.max_response_bytes
        length = resp.content_length
        if length is not None and length <= limit:
            return await resp.read()
        if length is not None:
            raise self._failures.too_large(model, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise self._failures.too_large(model, limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _estimate(messages: Messages, max_tokens: int | None) -> int:
    """Tokens a chat request may use, charged to the rate limiter until the answer says how many it did."""
    est = sum(
        estimate_tokens(str(m.get("content") or "") if isinstance(m, Mapping) else (m.content or "")) for m in messages
    )
    return est + (max_tokens or 0)


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "chat/completions": CHAT_DECODER,
    "embeddings": EMBEDDING_DECODER,
    "completions": COMPLETION_DECODER,
}
