"""What a load test drives: the in-process runner (default), a user's app, a topic on Kafka, or an HTTP endpoint.

A target is an async context manager with one hot method, ``call(payload, probe)``, that returns the result or
raises; ``error_kind`` names a failure with a short, bounded label (``timeout``, ``http_503``, ``connect``...).
Streaming targets report time to first token and inter-token gaps through the ``probe``.
"""

from __future__ import annotations

import abc
import asyncio
import socket
from time import perf_counter
from types import TracebackType
from typing import Any

import msgspec

from agentflow import (
    BusUnavailableError,
    Config,
    Context,
    DeadLetteredError,
    DeliveryUncertainError,
    Event,
    Producer,
    ProfileSnapshot,
    RequestTimeoutError,
    Runner,
    take_snapshot,
)
from agentflow.http1 import Http1Pool, ProtocolError

__all__ = ["HttpTarget", "KafkaTarget", "LoadTarget", "Probe", "RunnerTarget", "noop_runner"]

NOOP_TOPIC = "agentcli.loadtest"
#: Largest response body read from an HTTP target; bigger ones count as error ``too_large``.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Headers the plain-HTTP client writes itself.
_OWN_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection"}


class BodyTooLargeError(Exception):
    """An answer over MAX_BODY_BYTES."""


class Probe:
    """Where a streaming target reports token timings; the generator points it at the live window."""

    __slots__ = ("itl", "ttft")

    def __init__(self) -> None:
        self.ttft: Any = None
        self.itl: Any = None


class LoadTarget(abc.ABC):
    """Base of every target; subclasses open resources in ``__aenter__`` and release them in ``aclose``."""

    name = "target"
    streaming = False

    async def __aenter__(self) -> LoadTarget:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        return None

    @abc.abstractmethod
    async def call(self, payload: Any, probe: Probe) -> Any:
        """Run one iteration; raise on failure."""

    def error_kind(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError | asyncio.TimeoutError | RequestTimeoutError):
            return "timeout"
        if isinstance(exc, DeadLetteredError):
            return "dead_lettered"
        return type(exc).__name__

    def describe(self) -> str:
        return self.name


def noop_runner(config: Config) -> Runner:
    """The default target: a Runner whose one agent returns at once, so the figures are agentflow's overhead."""
    runner = Runner(config)

    async def noop(event: Event, ctx: Context) -> None:
        return None

    runner.agent(NOOP_TOPIC, name="noop")(noop)
    return runner


class RunnerTarget(LoadTarget):
    """``runner.request(topic, payload)`` per iteration against an in-process Runner on its own bus."""

    def __init__(self, runner: Runner, topic: str, name: str, timeout_s: float | None = None) -> None:
        self.runner = runner
        self.topic = topic
        self.name = name
        self.timeout_s = timeout_s
        self._entered = False
        self._start: ProfileSnapshot | None = None
        #: the runner's profile snapshot over the load test, taken as the target closes
        self.profile: ProfileSnapshot | None = None

    async def __aenter__(self) -> RunnerTarget:
        await self.runner.__aenter__()
        self._entered = True
        self._start = take_snapshot(self.runner)
        return self

    async def aclose(self) -> None:
        if self._entered:
            self._entered = False
            if self._start is not None:
                self.profile = take_snapshot(self.runner).minus(self._start)
            await self.runner.aclose()

    async def call(self, payload: Any, probe: Probe) -> Any:
        return await self.runner.request(self.topic, payload, timeout_s=self.timeout_s)


class KafkaTarget(LoadTarget):
    """Events to a Kafka topic through :class:`agentflow.Producer`, handled by whatever workers consume it.

    Request mode (default): ``producer.request`` per iteration, so an iteration ends when the worker's result
    arrives on the producer's reply topic and latency runs from the intended start to that result. Emit mode
    (``emit_only``, for agents that return nothing): ``producer.emit``, which ends when the brokers confirmed the
    write (``[kafka] acks``) — it measures the ingest path, not the handling.
    """

    def __init__(self, config: Config, topic: str, *, timeout_s: float, emit_only: bool = False) -> None:
        self.config = config
        self.topic = topic
        self.timeout_s = timeout_s
        self.emit_only = emit_only
        mode = "emit" if emit_only else "request"
        self.name = f"kafka {config.kafka.bootstrap_servers} topic {topic} ({mode})"
        self._producer: Producer | None = None

    async def __aenter__(self) -> KafkaTarget:
        producer = Producer(self.config)
        await producer.start()
        self._producer = producer
        if not self.emit_only:
            # Join the reply topic's consumer group before the clock starts: the join takes about half the session
            # timeout, which would otherwise land in the latency of the first arrivals.
            await producer._ensure_replies()
        return self

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.aclose()

    def error_kind(self, exc: BaseException) -> str:
        if isinstance(exc, DeliveryUncertainError):
            return "delivery_uncertain"  # not confirmed, but may have been written
        if isinstance(exc, BusUnavailableError):
            return "bus_unavailable"
        return super().error_kind(exc)

    async def call(self, payload: Any, probe: Probe) -> Any:
        producer = self._producer
        assert producer is not None, "KafkaTarget used outside 'async with'"
        if self.emit_only:
            async with asyncio.timeout(self.timeout_s):
                return await producer.emit(self.topic, payload)
        return await producer.request(self.topic, payload, timeout_s=self.timeout_s)


class HttpStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class HttpTarget(LoadTarget):
    """POST the payload as JSON to ``url`` (GET when the payload is None); 4xx/5xx are errors.

    Requests go through the lean :class:`agentflow.http1.Http1Pool` (``http://`` and ``https://``, streams
    included), which costs the generator a fraction of a general-purpose client's time per request.
    With ``stream`` the payload is an OpenAI chat request sent with ``"stream": true``; the server-sent events
    are read as they arrive, the first content chunk gives time to first token and the gaps between content
    chunks give inter-token latency.
    """

    streaming = False

    def __init__(
        self,
        url: str,
        *,
        connections: int,
        timeout_s: float,
        stream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.name = f"http {url}"
        self.streaming = stream
        self.connections = connections
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._lean: Http1Pool | None = None
        self._decoder = msgspec.json.Decoder()

    async def __aenter__(self) -> HttpTarget:
        own = {"Content-Type": "application/json"}  # the plan checked the URL: http:// or https://
        own.update({k: v for k, v in self.headers.items() if k.lower() not in _OWN_HEADERS})
        self._lean = Http1Pool(self.url, own, limit=self.connections, max_body=MAX_BODY_BYTES)
        return self

    async def aclose(self) -> None:
        lean, self._lean = self._lean, None
        if lean is not None:
            lean.close()

    def error_kind(self, exc: BaseException) -> str:
        if isinstance(exc, HttpStatusError):
            return f"http_{exc.status}"
        if isinstance(exc, BodyTooLargeError):
            return "too_large"
        if isinstance(exc, ConnectionError | socket.gaierror):
            return "connect"
        if isinstance(exc, msgspec.DecodeError | ProtocolError):
            return "bad_response"
        return super().error_kind(exc)

    async def call(self, payload: Any, probe: Probe) -> Any:
        lean = self._lean
        assert lean is not None, "HttpTarget used outside 'async with'"
        if self.streaming:
            return await self._stream(lean, payload, probe)
        async with asyncio.timeout(self.timeout_s):
            resp = await lean.request(self.url, None if payload is None else msgspec.json.encode(payload))
        if (resp.content_length or 0) > MAX_BODY_BYTES:
            raise BodyTooLargeError(f"response body over {MAX_BODY_BYTES} bytes")
        if resp.status >= 400:
            raise HttpStatusError(resp.status)
        return resp.body

    async def _stream(self, lean: Http1Pool, payload: Any, probe: Probe) -> Any:
        body = dict(payload) if isinstance(payload, dict) else {"messages": [{"role": "user", "content": "hi"}]}
        body["stream"] = True
        reader = _SSEText(self._decoder, probe, perf_counter())
        async with asyncio.timeout(self.timeout_s):
            resp = await lean.request(self.url, msgspec.json.encode(body), stream=True)
            try:
                if resp.status >= 400:
                    raise HttpStatusError(resp.status)
                content = resp.content
                assert content is not None
                size = 0
                while chunk := await content.readany():  # read to the end, [DONE] included: the connection is kept
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise BodyTooLargeError(f"stream over {MAX_BODY_BYTES} bytes")
                    reader.feed(chunk)
            finally:
                resp.release()
        reader.feed(b"\n")
        return "".join(reader.parts)


class _SSEText:
    """The text deltas of an OpenAI chat stream, fed as its bytes arrive; the first gives time to first token,
    each next one an inter-token gap."""

    __slots__ = ("_decoder", "_done", "_last", "_pending", "_probe", "_t0", "parts")

    def __init__(self, decoder: msgspec.json.Decoder[Any], probe: Probe, t0: float) -> None:
        self._decoder = decoder
        self._probe = probe
        self._t0 = t0
        self._last: float | None = None
        self._pending = b""
        self._done = False
        self.parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.strip()
            if self._done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self._done = True
                continue
            text = _delta_text(self._decoder.decode(data))
            if not text:
                continue
            now = perf_counter()
            probe = self._probe
            if self._last is None:
                if probe.ttft is not None:
                    probe.ttft.record(now - self._t0)
            elif probe.itl is not None:
                probe.itl.record(now - self._last)
            self._last = now
            self.parts.append(text)


def _delta_text(chunk: Any) -> str:
    try:
        choice = chunk["choices"][0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or choice.get("text") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""
