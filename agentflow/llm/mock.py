"""A real OpenAI-compatible HTTP server for tests, benchmarks and demos (``agentcli mock-llm``).

Endpoints: ``POST /v1/chat/completions`` (plain and SSE streaming, ``n`` choices, tool calls scripted by
``[[call ...]]`` directives: :mod:`agentflow.llm.mock_script`), ``POST /v1/embeddings`` (strings or token
ids, ``dimensions``, float or base64), ``POST /v1/completions`` (a list of prompts, plain and SSE),
``GET /v1/models``, the three POST endpoints again under Azure's ``/openai/deployments/{name}/...``;
``GET /stats`` (the server's own counts) and ``POST /admin/faults`` / ``POST /admin/reset`` to change faults
and zero the counts while it runs. The official openai SDK accepts every answer (tests/test_mock_llm_sdk.py).

Latency model: ``base_ms + per_token_ms * output_tokens + per_item_ms * items``, scaled by a random factor
from ``distribution`` (seeded). ``capacity`` caps requests served at once; the rest queue, as at a real
provider. Faults are drawn per request with the same seeded generator::

    async with MockLLMServer(latency=LatencyModel(base_ms=5), faults=Faults(error_rate=0.1)) as server:
        client_base_url = server.url          # http://127.0.0.1:<port>/v1
        server.stats().requests               # counts kept by the server itself
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import random
import struct
import time
from typing import Any, Literal

import msgspec
from aiohttp import web

from ..lifecycle import Lifecycle
from .mock_script import chat_chunks, chat_reply, completion_chunks, text_of, tokens
from .types import (
    CHAT_REQUEST_DECODER,
    COMPLETION_REQUEST_DECODER,
    EMBEDDING_REQUEST_DECODER,
    ENCODER,
)

__all__ = ["Faults", "LatencyModel", "MockLLMServer", "MockStats"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 * 1_048_576
#: OpenAI's own limit on inputs per embeddings request.
DEFAULT_MAX_ITEMS = 2048
DEFAULT_DIMENSIONS = 8
DEFAULT_REPLY_TOKENS = 16
MAX_DIMENSIONS = 8192
#: Choices per chat request (``n``); OpenAI allows 128, a mock needs few.
MAX_CHOICES = 16
#: The ``created`` time of the mock's one model, fixed so answers are repeatable.
MODEL_CREATED = 1_700_000_000


class LatencyModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How long the server takes: ``(base_ms + per_token_ms * tokens + per_item_ms * items) * factor``.

    ``factor`` is 1 for ``fixed``, uniform in [0.5, 1.5] for ``uniform``, exponential with mean 1 for
    ``exponential`` and log-normal with median 1 (sigma 0.5) for ``lognormal``; ``seed`` makes it repeatable.
    """

    base_ms: float = 0.0
    per_token_ms: float = 0.0
    per_item_ms: float = 0.0
    distribution: Literal["fixed", "uniform", "exponential", "lognormal"] = "fixed"
    seed: int | None = None


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fault injection, drawn per request. Rates are fractions of requests (0..1) and add up to at most 1.

    ``error_rate``: answer ``error_status`` (500); ``rate_limit_rate``: 429 with ``Retry-After:
    retry_after_s``; ``burst_429``: the next N requests get a 429 whatever the rates; ``hang_rate``: never
    answer (until the client gives up); ``reset_rate``: drop the connection without an answer;
    ``slow_rate``: add ``slow_ms`` to the latency.
    """

    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    burst_429: int = 0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 1000.0

    def validate(self) -> Faults:
        rates = (self.error_rate, self.rate_limit_rate, self.hang_rate, self.reset_rate, self.slow_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError("Fault rates must each be between 0 and 1 and add up to at most 1.")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status from 400 to 599.")
        if self.retry_after_s < 0 or self.slow_ms < 0 or self.burst_429 < 0:
            raise ValueError("retry_after_s, slow_ms and burst_429 must not be negative.")
        return self


class MockStats(msgspec.Struct, kw_only=True):
    """The server's own counts, as ``GET /stats`` returns them."""

    requests: int = 0
    by_endpoint: dict[str, int] = msgspec.field(default_factory=dict)
    items: int = 0
    batch_sizes: dict[str, int] = msgspec.field(default_factory=dict)
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Chat requests by the model they named, and by their temperature ("unset" when they sent none).
    models: dict[str, int] = msgspec.field(default_factory=dict)
    temperatures: dict[str, int] = msgspec.field(default_factory=dict)
    streams: int = 0
    tool_calls: int = 0
    connections_opened: int = 0
    connections_open: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    queued: int = 0
    max_queued: int = 0


#: Above this size a vector is a rotation of one fixed unit vector: hashing 1536 values per input would make the
#: mock's own cost hide the client's in the embedding benchmarks.
_HASHED_DIMS = 64
_BASES: dict[int, list[float]] = {}


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from the text, so equal inputs embed equally."""
    if dims > _HASHED_DIMS:
        base = _BASES.get(dims)
        if base is None:
            base = _BASES[dims] = _hashed("agentflow-mock-base", dims)
        shift = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % dims
        return base[shift:] + base[:shift]
    return _hashed(text, dims)


def _hashed(text: str, dims: int) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        out.extend(v / 2**31 - 1.0 for v in struct.unpack("<16I", digest))
        counter += 1
    vec = out[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


#: Distinct values a by-value count of the stats keeps; further ones are counted under "_other".
MAX_TALLIED = 100


def _tally(counts: dict[str, int], value: str) -> None:
    if value in counts:
        counts[value] += 1
        return
    if len(counts) >= MAX_TALLIED:
        value = "_other"
    counts[value] = counts.get(value, 0) + 1


class MockLLMServer(Lifecycle):
    """The mock server; an async context manager that binds ``host:port`` (0 = a free port) on enter."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: LatencyModel | None = None,
        faults: Faults | None = None,
        capacity: int | None = None,
        dimensions: int = DEFAULT_DIMENSIONS,
        reply_tokens: int = DEFAULT_REPLY_TOKENS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_items: int = DEFAULT_MAX_ITEMS,
        api_key: str | None = None,
        hang_s: float = 3600.0,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1 (or None for no limit).")
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be from 1 to {MAX_DIMENSIONS}.")
        self.host = host
        self._port = port
        self.latency = latency or LatencyModel()
        self.faults = (faults or Faults()).validate()
        self.capacity = capacity
        self.dimensions = dimensions
        self.reply_tokens = reply_tokens
        self.max_request_bytes = max_request_bytes
        self.max_items = max_items
        self.hang_s = hang_s
        self._api_key = api_key
        self._rng = random.Random(self.latency.seed)
        self._burst_left = self.faults.burst_429
        self._sem = asyncio.Semaphore(capacity) if capacity is not None else None
        self._stats = MockStats()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI-style API root, ``http://host:port/v1``."""
        return f"http://{self.host}:{self._port}/v1"

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self._port}"

    async def _open(self) -> None:
        app = web.Application(client_max_size=self.max_request_bytes)
        for prefix in ("/v1", "/openai/deployments/{deployment}"):
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_post(prefix + "/embeddings", self._embeddings)
            app.router.add_post(prefix + "/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_get("/stats", self._stats_handler)
        app.router.add_post("/admin/faults", self._set_faults)
        app.router.add_post("/admin/reset", self._reset)
        # Last, so it only answers what no route above matched: an OpenAI-shaped 404 instead of aiohttp's text.
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a hung request ends when its client gives up, not at server close.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        server = runner.server
        assert server is not None
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            self._stats.connections_opened += 1
            self._stats.connections_open += 1
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self._stats.connections_open -= 1
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        self._runner = runner
        self._site = web.TCPSite(runner, self.host, self._port, backlog=1024)
        await self._site.start()  # a failure closes the server (_close cleans the runner up)
        addresses = runner.addresses  # (host, port, ...) of each listening socket: port 0 resolved
        if addresses:
            self._port = int(addresses[0][1])
        logger.info("Mock LLM server listening on %s", self.url)

    async def _close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def __repr__(self) -> str:
        s = self._stats
        return (
            f"<MockLLMServer url={self.url} requests={s.requests} in_flight={s.in_flight} queued={s.queued} "
            f"connections={s.connections_open}>"
        )

    # ---- run-time control ------------------------------------------------------------------------------

    def stats(self) -> MockStats:
        """A copy of the counts."""
        return msgspec.convert(msgspec.to_builtins(self._stats), MockStats)

    def statistics(self) -> MockStats:
        return self.stats()

    def reset_stats(self) -> None:
        """Zero the counts (connections open and work in progress are kept)."""
        s = self._stats
        self._stats = MockStats(connections_open=s.connections_open, in_flight=s.in_flight, queued=s.queued)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults.validate()
        self._burst_left = faults.burst_429

    # ---- handlers --------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [_model("mock")]})

    async def _model(self, request: web.Request) -> web.Response:
        # Any model name is served, so any name is a model.
        return web.json_response(_model(request.match_info["model"]))

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404, f"No endpoint {request.method} {request.path} on the mock LLM server.", "not_found")

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=ENCODER.encode(self._stats), content_type="application/json")

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError('Send a JSON object of Faults fields, like {"error_rate": 0.3}.')
            # A burst is one-shot: it is re-armed only when this change asks for one.
            merged = msgspec.structs.asdict(self.faults) | {"burst_429": 0} | changes
            self.set_faults(msgspec.convert(merged, Faults))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return self._error(400, f"Bad faults: {exc}", "invalid_request_error")
        return web.Response(body=ENCODER.encode(self.faults), content_type="application/json")

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"reset": True})

    def _hit(self, endpoint: str) -> None:
        """Count a request as it arrives, rejected ones included."""
        s = self._stats
        s.requests += 1
        s.by_endpoint[endpoint] = s.by_endpoint.get(endpoint, 0) + 1

    def _count(self, items: int) -> None:
        s = self._stats
        s.items += items
        key = str(items)
        s.batch_sizes[key] = s.batch_sizes.get(key, 0) + 1

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
        body = ENCODER.encode({"error": {"message": message, "type": kind, "param": None, "code": None}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    def _reject(self, reason: str, status: int, message: str) -> web.Response:
        r = self._stats.rejected
        r[reason] = r.get(reason, 0) + 1
        return self._error(status, message, "invalid_request_error")

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        given = request.headers.get("api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self._api_key:
            return self._reject("auth", 401, "Incorrect API key provided.")
        return None

    def _draw_fault(self) -> str | None:
        if self._burst_left > 0:
            self._burst_left -= 1
            return "rate_limited"
        f = self.faults
        r = self._rng.random()
        for kind, rate in (
            ("error", f.error_rate),
            ("rate_limited", f.rate_limit_rate),
            ("hang", f.hang_rate),
            ("reset", f.reset_rate),
            ("slow", f.slow_rate),
        ):
            if r < rate:
                return kind
            r -= rate
        return None

    def _delay_s(self, tokens: int, items: int) -> float:
        m = self.latency
        ms = m.base_ms + m.per_token_ms * tokens + m.per_item_ms * items
        if ms <= 0:
            return 0.0
        rng = self._rng
        if m.distribution == "uniform":
            ms *= rng.uniform(0.5, 1.5)
        elif m.distribution == "exponential":
            ms *= rng.expovariate(1.0)
        elif m.distribution == "lognormal":
            ms *= rng.lognormvariate(0.0, 0.5)
        return ms / 1000.0

    async def _serve(
        self, request: web.Request, endpoint: str, items: int, tokens: int, body: Any
    ) -> web.StreamResponse:
        """Common path: count, queue for capacity, inject a fault, wait the modelled latency, answer."""
        self._count(items)
        s = self._stats
        fault = self._draw_fault()
        if fault is not None:
            s.faults[fault] = s.faults.get(fault, 0) + 1
        if self._sem is not None and self._sem.locked():
            s.queued += 1
            s.max_queued = max(s.max_queued, s.queued)
            try:
                await self._sem.acquire()
            finally:
                s.queued -= 1
        elif self._sem is not None:
            await self._sem.acquire()
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if fault == "error":
                status = self.faults.error_status
                return self._error(status, f"Injected error {status}: the mock server failed.", "server_error")
            if fault == "rate_limited":
                after = self.faults.retry_after_s
                return self._error(
                    429,
                    "Injected rate limit: too many requests.",
                    "rate_limit_error",
                    {"Retry-After": f"{after:g}", "retry-after-ms": str(int(after * 1000))},
                )
            if fault == "hang":
                await asyncio.sleep(self.hang_s)
            if fault == "reset":
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise asyncio.CancelledError  # nothing to answer on a dropped connection
            delay = self._delay_s(tokens, items)
            if fault == "slow":
                delay += self.faults.slow_ms / 1000.0
            if isinstance(body, _Stream):
                return await self._stream(request, body, delay)
            if delay > 0:
                await asyncio.sleep(delay)
            return web.Response(body=ENCODER.encode(body), content_type="application/json")
        finally:
            s.in_flight -= 1
            if self._sem is not None:
                self._sem.release()

    async def _read(self, request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
        try:
            return decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return exc

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._hit("chat")
        if (denied := self._check_auth(request)) is not None:
            return denied
        req = await self._read(request, CHAT_REQUEST_DECODER)
        if isinstance(req, Exception):
            return self._reject("invalid", 400, f"Invalid chat request: {req}")
        if not req.messages:
            return self._reject("invalid", 400, "messages must not be empty.")
        n = req.n
        if not 1 <= n <= MAX_CHOICES:
            return self._reject("invalid", 400, f"n must be from 1 to {MAX_CHOICES}; got {n}.")
        if req.tools is not None and not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in req.tools
        ):  # fmt: skip
            return self._reject("invalid", 400, 'Each tool must be {"type": "function", "function": {"name": ...}}.')
        s = self._stats
        prompt = 0
        for m in req.messages:
            content = m.content
            prompt += tokens(content if type(content) is str else text_of(content))
            if m.tool_calls:
                for c in m.tool_calls:
                    prompt += tokens(c.function.name + c.function.arguments)
        reply = chat_reply(req, self.reply_tokens)
        out = reply.completion_tokens * n
        usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        s.prompt_tokens += prompt
        s.completion_tokens += out
        _tally(s.models, req.model)
        if req.temperature is None:  # the usual case, without formatting a number
            _tally(s.temperatures, "unset")
        else:
            _tally(s.temperatures, f"{req.temperature:g}")
        s.tool_calls += len(reply.calls) * n
        cid = f"chatcmpl-{s.requests}"
        if req.stream:
            s.streams += 1
            include = bool((req.stream_options or {}).get("include_usage"))
            steps = chat_chunks(cid, req.model, reply, n, usage, include)
            answer = _Stream(steps)
            return await self._serve(request, "chat", 1, answer.tokens, answer)
        message = reply.message()
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
                for i in range(n)
            ]
            if n > 1
            else [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": usage,
        }
        return await self._serve(request, "chat", 1, out, body)

    async def _stream(self, request: web.Request, answer: _Stream, first_delay_s: float) -> web.StreamResponse:
        per_token_s = self.latency.per_token_ms / 1000.0
        base_s = max(0.0, first_delay_s - per_token_s * answer.tokens)  # the first token after the base latency
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if base_s > 0:
            await asyncio.sleep(base_s)
        for gap, data in answer.steps:
            if gap and per_token_s > 0:
                await asyncio.sleep(per_token_s)
            await resp.write(data)
        await resp.write_eof()
        return resp

    def _items(self, raw: Any) -> tuple[list[str], list[int]] | str:
        """The inputs as texts and their token counts; token-id inputs become their ids as text."""
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            return "input must not be empty."
        if all(isinstance(x, int) for x in raw):  # one input given as token ids
            raw = [raw]
        if len(raw) > self.max_items:
            return f"At most {self.max_items} inputs per request; got {len(raw)}. Split the request."
        texts: list[str] = []
        counts: list[int] = []
        for x in raw:
            if isinstance(x, str):
                texts.append(x)
                counts.append(tokens(x))
            elif isinstance(x, list) and x and all(isinstance(t, int) for t in x):
                texts.append(" ".join(map(str, x)))
                counts.append(len(x))
            else:
                return "input must be a string, a list of strings, a list of token ids or a list of such lists."
        return texts, counts

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        self._hit("embeddings")
        if (denied := self._check_auth(request)) is not None:
            return denied
        req = await self._read(request, EMBEDDING_REQUEST_DECODER)
        if isinstance(req, Exception):
            return self._reject("invalid", 400, f"Invalid embeddings request: {req}")
        parsed = self._items(req.input)
        if isinstance(parsed, str):
            return self._reject("too_many_items" if "At most" in parsed else "invalid", 400, parsed)
        items, counts = parsed
        dims = req.dimensions or self.dimensions
        if not 1 <= dims <= MAX_DIMENSIONS:
            return self._reject("invalid", 400, f"dimensions must be from 1 to {MAX_DIMENSIONS}.")
        prompt = sum(counts)
        self._stats.prompt_tokens += prompt
        as_base64 = req.encoding_format == "base64"
        data = []
        for i, t in enumerate(items):
            vec = _vector(t, dims)
            # base64 (the openai SDK's default): the little-endian float32 bytes, as OpenAI sends them.
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_base64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        body = {
            "object": "list",
            "model": req.model,
            "data": data,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return await self._serve(request, "embeddings", len(items), 0, body)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self._hit("completions")
        if (denied := self._check_auth(request)) is not None:
            return denied
        req = await self._read(request, COMPLETION_REQUEST_DECODER)
        if isinstance(req, Exception):
            return self._reject("invalid", 400, f"Invalid completions request: {req}")
        parsed = self._items(req.prompt)
        if isinstance(parsed, str):
            return self._reject("too_many_items" if "At most" in parsed else "invalid", 400, parsed)
        items, counts = parsed
        out = self.reply_tokens if req.max_tokens is None else max(1, min(req.max_tokens, self.reply_tokens))
        finish = "length" if out < self.reply_tokens else "stop"  # max_tokens cut the answers short
        prompt = sum(counts)
        self._stats.prompt_tokens += prompt
        self._stats.completion_tokens += out * len(items)
        texts = [f"echo:{t[:64]}" for t in items]
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": out * len(items),
            "total_tokens": prompt + out * len(items),
        }
        cid = f"cmpl-{self._stats.requests}"
        if req.stream:
            self._stats.streams += 1
            include = bool((req.stream_options or {}).get("include_usage"))
            answer = _Stream(completion_chunks(cid, req.model, texts, usage, include, finish))
            return await self._serve(request, "completions", len(items), answer.tokens, answer)
        body = {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {"index": i, "text": t, "logprobs": None, "finish_reason": finish} for i, t in enumerate(texts)
            ],
            "usage": usage,
        }
        return await self._serve(request, "completions", len(items), out, body)


class _Stream:
    """An answer sent as server-sent events: ``(after_a_token_gap, bytes)`` steps (see mock_script).

    ``tokens`` is the number of steps that carry tokens: the first, and each one after a gap.
    """

    __slots__ = ("steps", "tokens")

    def __init__(self, steps: list[tuple[bool, bytes]]) -> None:
        self.steps = steps
        self.tokens = 1 + sum(1 for gap, _ in steps if gap)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "agentflow"}
