"""Chat completions streamed as server-sent events: one parser (:class:`StreamAssembler`) for both ways of
reading them.

* ``chat(stream=True)`` (:func:`read_stream`) reads the whole stream inside one HTTP attempt and returns the
  joined answer; a failure anywhere is retried like any other attempt, since nothing was handed out yet.
* ``ctx.llm.stream`` (:class:`ChatStream`) hands out :class:`~agentflow.llm.types.StreamDelta` objects as
  they arrive: text pieces, whole tool calls (their fragments assembled), then the whole answer. The HTTP
  attempt ends when the first delta is ready to be handed out (:func:`open_stream`): until then nothing was
  seen by the caller, so failures go through the client's retries; a failure after it raises
  :class:`~agentflow.errors.LLMStreamInterruptedError`, and is not retried.

Time to first token and inter-token latency are recorded as chunks arrive. Both text and tool-call fragments
count as tokens: a model answering with a tool call generates its arguments token by token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from ..errors import LLMBadRequestError, LLMError, LLMStreamInterruptedError, LLMUnavailableError
from .failures import MAX_ERROR_DETAIL_CHARS, Failures
from .metrics import ModelMetrics
from .tokens import estimate_tokens
from .types import (
    CHUNK_DECODER,
    ENCODER,
    ChatChoice,
    ChatChunk,
    ChatMessage,
    ChatResponse,
    FunctionCall,
    MessageToolCall,
    StreamDelta,
    ToolCall,
    Usage,
    _ErrorDetail,
    _ToolCallDelta,
)

__all__ = ["ChatStream", "StreamAssembler", "open_stream", "read_stream"]

logger = logging.getLogger(__name__)


class _PartialCall:
    """One tool call while its fragments arrive."""

    __slots__ = ("args", "done", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.args: list[str] = []
        self.done = False


class _ChoiceState:
    __slots__ = ("calls", "finish_reason", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, _PartialCall] = {}  # by the provider's tool-call index, in arrival order
        self.finish_reason: str | None = None


class StreamAssembler:
    """The state of one streamed chat completion: feed it the body as it arrives, read the answer at the end.

    ``feed`` takes bytes as they come off the socket (any split); ``done`` is set by ``[DONE]`` or the end of
    the body. With ``pending`` (a deque), each event's deltas are appended to it for a
    :class:`ChatStream` to hand out; without, only the answer is kept. The body is bounded by
    ``max_response_bytes``.
    """

    __slots__ = (
        "_buf",
        "_choices",
        "_first",
        "_last",
        "_limit",
        "_warned",
        "chunks",
        "done",
        "failures",
        "m",
        "model",
        "pending",
        "resp",
        "rid",
        "sid",
        "size",
        "t0",
        "usage",
    )

    def __init__(
        self, failures: Failures, model: str, t0: float, m: ModelMetrics, pending: deque[StreamDelta] | None = None
    ) -> None:
        self.failures = failures
        self.model = model
        self.t0 = t0
        self.m = m
        self.pending = pending
        self.size = 0
        self._limit = failures.config.max_response_bytes
        self._buf = b""
        self.rid = ""
        self.usage: Usage | None = None
        self._first: float | None = None
        self._last = 0.0
        self._choices: dict[int, _ChoiceState] = {}
        self._warned = False
        self.chunks = 0
        self.done = False
        # Set when the stream is handed to a ChatStream: the response to read and release, its session's id.
        self.resp: aiohttp.ClientResponse | None = None
        self.sid = 0

    @property
    def ttft_s(self) -> float | None:
        return None if self._first is None else self._first - self.t0

    def feed(self, data: bytes) -> None:
        """Parse the complete lines of ``data`` (the rest waits for the next bytes); ``b""`` is the end."""
        if not data:  # the end of the body: a last line without its newline still counts
            tail, self._buf = self._buf, b""
            if tail:
                self._line(tail)
            self.done = True
            return
        self.size += len(data)
        if self.size > self._limit:
            raise self.failures.too_large(self.model, self._limit)
        if self._buf:
            data = self._buf + data
        lines = data.split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            self._line(line)
            if self.done:
                return

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments (": keep-alive"), "event:" lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = CHUNK_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise LLMBadRequestError(
                f"LLM provider {self.failures.name!r} sent a stream event that is not valid JSON ({exc}); check "
                "base_url.",
                provider=self.failures.name,
                model=self.model,
            ) from None
        if chunk.error is not None:
            raise self._provider_error(chunk)
        self.chunks += 1
        self.rid = self.rid or chunk.id
        if chunk.usage is not None:
            self.usage = chunk.usage
        out = self.pending
        for choice in chunk.choices:
            delta = choice.delta
            index = choice.index
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _ChoiceState()
            token = False
            if delta.content:
                token = True
                state.parts.append(delta.content)
                if out is not None:
                    out.append(StreamDelta(kind="text", text=delta.content, choice=index))
            if delta.tool_calls:
                token = True
                self._fragments(state, delta.tool_calls, index)
            if choice.finish_reason:
                state.finish_reason = choice.finish_reason
                self._complete(state, index)
            if token:
                now = time.perf_counter()
                if self._first is None:
                    self._first = now
                    self.m.ttft.observe(now - self.t0)
                else:
                    self.m.inter_token.observe(now - self._last)
                self._last = now

    def _fragments(self, state: _ChoiceState, deltas: list[_ToolCallDelta], index: int) -> None:
        calls = state.calls
        for d in deltas:
            i = d.index
            if i is None:  # servers that leave the index out: a new id starts a new call
                last = next(reversed(calls), None)
                i = len(calls) if last is None or (d.id and d.id != calls[last].id) else last
            call = calls.get(i)
            if call is None:
                # Providers stream parallel calls one after another, so a new call completes the ones before it.
                self._complete(state, index)
                call = calls[i] = _PartialCall()
            elif call.done and not self._warned:
                self._warned = True
                logger.warning(
                    "LLM provider %r interleaved the fragments of parallel tool calls, so a call was handed out "
                    "before its last fragment; the final response's tool_calls are complete.",
                    self.failures.name,
                )
            if d.id:
                call.id = d.id
            f = d.function
            if f is not None:
                if f.name:
                    call.name = f.name
                a = f.arguments
                if isinstance(a, str):
                    if a:
                        call.args.append(a)
                elif a is not None:  # some servers send the whole arguments as a JSON object
                    call.args.append(ENCODER.encode(a).decode())

    def _complete(self, state: _ChoiceState, index: int) -> None:
        out = self.pending
        for call in state.calls.values():
            if not call.done:
                call.done = True
                if out is not None:
                    tc = ToolCall.decode(call.id, call.name, "".join(call.args))
                    out.append(StreamDelta(kind="tool_call", tool_call=tc, choice=index))

    def finish(self) -> ChatResponse:
        """Complete the tool calls still open (the stream ended) and build the whole answer."""
        for index, state in self._choices.items():
            self._complete(state, index)
        return self.response()

    def response(self) -> ChatResponse:
        """The answer as received so far; usage is estimated when the provider sent none."""
        choices = []
        generated: list[str] = []  # what the model wrote, for an estimate when no usage came
        for index in sorted(self._choices):
            state = self._choices[index]
            text = "".join(state.parts)
            generated.append(text)
            for c in state.calls.values():
                generated.append(c.name)
                generated.extend(c.args)
            calls = [
                MessageToolCall(id=c.id, function=FunctionCall(name=c.name, arguments="".join(c.args)))
                for c in state.calls.values()
            ]
            content = text if text or not calls else None  # as non-streamed: no content beside tool calls
            message = ChatMessage(role="assistant", content=content, tool_calls=calls or None)
            choices.append(ChatChoice(index=index, message=message, finish_reason=state.finish_reason))
        if not choices:
            choices.append(ChatChoice(index=0, message=ChatMessage(role="assistant", content="")))
        usage = self.usage
        if usage is None:  # a provider that ignores stream_options: estimate, so budgets and costs still move
            written = "".join(generated)
            usage = Usage(completion_tokens=estimate_tokens(written) if written else 0)
            usage.total_tokens = usage.completion_tokens
        return ChatResponse(id=self.rid, model=self.model, choices=choices, usage=usage, ttft_s=self.ttft_s)

    def _provider_error(self, chunk: ChatChunk) -> LLMError:
        err = chunk.error
        detail = err.message if isinstance(err, _ErrorDetail) else str(err)
        detail = self.failures.scrub(detail)[:MAX_ERROR_DETAIL_CHARS]
        return LLMUnavailableError(
            f"LLM provider {self.failures.name!r} (model {self.model!r}) reported an error inside the stream "
            f"({detail}); it was retried if no token had arrived yet.",
            provider=self.failures.name,
            model=self.model,
        )


async def read_stream(
    resp: aiohttp.ClientResponse, failures: Failures, model: str, t0: float, m: ModelMetrics
) -> ChatResponse:
    """Read the whole SSE body of ``resp`` into one :class:`ChatResponse` (``chat(stream=True)``)."""
    asm = StreamAssembler(failures, model, t0, m)
    readany = resp.content.readany
    while not asm.done:
        asm.feed(await readany())
    return asm.finish()


async def open_stream(
    resp: aiohttp.ClientResponse, failures: Failures, model: str, t0: float, m: ModelMetrics
) -> StreamAssembler:
    """Read ``resp`` until a delta is ready to be handed out (or the end); the deltas wait in ``pending``."""
    pending: deque[StreamDelta] = deque()
    asm = StreamAssembler(failures, model, t0, m, pending)
    readany = resp.content.readany
    while not pending and not asm.done:
        asm.feed(await readany())
    return asm


#: What the client does when a stream ends (finished, left early, or failed with the error given): it ends the
#: HTTP attempt's accounting (see ProviderClient.stream).
OnEnd = Callable[[StreamAssembler, ChatResponse | None, LLMError | None], None]


class ChatStream:
    """A streamed chat answer, as ``ctx.llm.stream(...)`` returns it: an async iterator of
    :class:`~agentflow.llm.types.StreamDelta`, and an async context manager that closes it::

        async with ctx.llm.stream(messages, tools=tools) as stream:
            async for delta in stream:
                if delta.kind == "text":
                    print(delta.text, end="")
                elif delta.kind == "tool_call":
                    calls.append(delta.tool_call)
        reply = stream.response  # the whole answer: text, tool calls, usage, finish_reason

    The request is sent on ``async with`` (or the first ``async for`` step). Failures before the first delta
    are retried like any call; one after it raises :class:`~agentflow.errors.LLMStreamInterruptedError`.
    Leaving early (``break``, an exception, :meth:`aclose`) closes the response and its connection; without
    ``async with``, that happens when the stream object is dropped.
    """

    __slots__ = ("_asm", "_failure", "_on_end", "_open", "_state", "response")

    def __init__(self, opener: Callable[[], Awaitable[StreamAssembler]], on_end: OnEnd) -> None:
        self._open: Callable[[], Awaitable[StreamAssembler]] | None = opener
        self._on_end = on_end
        self._asm: StreamAssembler | None = None
        self._failure: LLMStreamInterruptedError | None = None  # raised once the deltas before it are out
        self._state = "created"
        #: The whole answer, once the stream has ended (None before, or when it was left early or failed).
        self.response: ChatResponse | None = None

    def __repr__(self) -> str:
        chunks = 0 if self._asm is None else self._asm.chunks
        return f"<ChatStream state={self._state} chunks={chunks}>"

    async def __aenter__(self) -> ChatStream:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> ChatStream:
        return self

    async def _start(self) -> None:
        if self._open is None:
            return
        opener, self._open = self._open, None
        self._state = "opening"
        try:
            self._asm = await opener()
        except BaseException:
            self._state = "closed"
            raise
        self._state = "open"

    async def __anext__(self) -> StreamDelta:
        asm = self._asm
        if asm is None:
            if self._state != "created":
                raise StopAsyncIteration
            await self._start()
            asm = self._asm
            assert asm is not None
        pending = asm.pending
        assert pending is not None
        if pending:
            return pending.popleft()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._state != "open":
            raise StopAsyncIteration
        resp = asm.resp
        assert resp is not None
        readany = resp.content.readany
        while not pending:
            if asm.done:
                self._finish(asm, resp)
                break
            try:
                asm.feed(await readany())
            except asyncio.CancelledError:
                self._end(asm, None)
                raise
            except Exception as exc:  # noqa: BLE001 - the provider's and the connection's failures, translated
                cause = exc if isinstance(exc, LLMError) else self._translate(asm, exc)
                failure = self._interrupted(asm, cause)
                if not pending:
                    raise failure from None
                self._failure = failure  # hand out what arrived before the failure first
        return pending.popleft()

    def _finish(self, asm: StreamAssembler, resp: aiohttp.ClientResponse) -> None:
        response = asm.finish()
        self.response = response
        assert asm.pending is not None
        asm.pending.append(StreamDelta(kind="done", response=response))
        self._state = "ended"
        resp.release()  # read to the end: the connection goes back to the pool
        asm.resp = None
        self._on_end(asm, response, None)

    def _translate(self, asm: StreamAssembler, exc: Exception) -> LLMError:
        translated = asm.failures.translate(exc, asm.model, asm.failures.config.request_timeout_s)
        if translated is not None:
            return translated
        return LLMBadRequestError(
            f"LLM provider {asm.failures.name!r} sent a stream the client cannot read ({type(exc).__name__}: "
            f"{asm.failures.scrub(str(exc))[:MAX_ERROR_DETAIL_CHARS]}).",
            provider=asm.failures.name,
            model=asm.model,
        )

    def _interrupted(self, asm: StreamAssembler, cause: LLMError) -> LLMStreamInterruptedError:
        err = LLMStreamInterruptedError(
            f"The stream from LLM provider {asm.failures.name!r} (model {asm.model!r}) failed after "
            f"{asm.chunks} chunks: {cause} It was not retried, because part of the answer had already been "
            "delivered; start the call again if the agent can use a fresh answer.",
            provider=asm.failures.name,
            model=asm.model,
            cause=cause,
            chunks=asm.chunks,
        )
        self._end(asm, err)
        return err

    def _end(self, asm: StreamAssembler, failure: LLMError | None) -> None:
        """Close the response before its end (left early, or failed) and account for the attempt."""
        if self._state != "open":
            return
        self._state = "closed"
        resp, asm.resp = asm.resp, None
        if resp is not None:
            resp.close()  # unread body: the connection cannot be reused, so it is closed
        self._on_end(asm, None, failure)

    async def aclose(self) -> None:
        """Close the stream; idempotent. An unfinished answer's connection is closed, not reused."""
        self._open = None
        if self._asm is not None:
            self._end(self._asm, None)
        elif self._state == "created":
            self._state = "closed"

    def __del__(self) -> None:
        # A loop left with break and no ``async with``: release what the stream holds as soon as it is dropped.
        asm = getattr(self, "_asm", None)
        if asm is not None and getattr(self, "_state", None) == "open":
            self._end(asm, None)
