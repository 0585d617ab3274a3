"""OpenAI-compatible request and response shapes as msgspec Structs, with one encoder and decoder per type.

Only the fields agentflow reads are declared; providers add fields freely and those are ignored on decode
(``forbid_unknown_fields`` stays off here on purpose: vLLM, Ollama and Azure each add their own).

Tool calling follows OpenAI's protocol: an assistant message carries ``tool_calls`` (each an id and a function
name with its arguments as a JSON string), and each result goes back as a ``role: "tool"`` message with the
call's ``tool_call_id``. :attr:`ChatResponse.tool_calls` gives the calls with their arguments decoded
(:class:`ToolCall`); arguments that are not a JSON object are kept raw and reported in ``ToolCall.error``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "ChatMessage",
    "ChatResponse",
    "CompletionResponse",
    "EmbeddingResponse",
    "FunctionCall",
    "MessageToolCall",
    "StreamDelta",
    "ToolCall",
    "Usage",
]


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one call, as the provider reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCall(msgspec.Struct, kw_only=True):
    """The function of a tool call: its ``name`` and ``arguments``, a JSON string as OpenAI sends them.

    Some OpenAI-compatible servers send the arguments as a JSON object instead of a string; such arguments
    are turned into a JSON string here, so a message sent back to any provider carries the standard shape.
    """

    name: str = ""
    # Any on purpose: a string (OpenAI, Azure, vLLM) or an object (some Ollama versions); a string afterwards.
    arguments: Any = ""

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, str):
            self.arguments = "" if self.arguments is None else ENCODER.encode(self.arguments).decode()


class MessageToolCall(msgspec.Struct, kw_only=True):
    """A tool call as it appears in an assistant message: ``{"id", "type": "function", "function": {...}}``.

    Every field is always encoded: OpenAI requires ``type`` and ``arguments`` in the messages sent back.
    """

    id: str = ""
    type: str = "function"
    function: FunctionCall = msgspec.field(default_factory=FunctionCall)


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One chat message; plain dicts ``{"role": ..., "content": ...}`` work as well.

    An assistant message that asks for tools carries ``tool_calls`` (its ``content`` is then usually None);
    the answer to each call is a message with ``role="tool"``, the call's ``tool_call_id`` and the result as
    ``content`` (:meth:`ToolCall.result` builds it)::

        reply = await ctx.llm.chat(messages, tools=[weather_tool])
        messages.append(reply.message)
        for call in reply.tool_calls:
            messages.append(call.result(json.dumps(await get_weather(**call.arguments))))
    """

    role: str
    content: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    """One answer of a chat completion."""

    index: int = 0
    message: ChatMessage = msgspec.field(default_factory=lambda: ChatMessage(role="assistant", content=""))
    finish_reason: str | None = None


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call the model asked for, with its arguments decoded from JSON.

    ``arguments`` is the decoded JSON object. When the model sent arguments that are not a JSON object
    (malformed JSON, a list, a number), ``arguments`` is None, ``error`` says why and ``arguments_raw`` keeps
    what was sent, so the caller can tell the model and let it correct itself. Empty arguments decode to
    ``{}``.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    arguments_raw: str = ""
    error: str | None = None

    @classmethod
    def decode(cls, id: str, name: str, raw: str) -> ToolCall:
        """The call ``id`` of ``name`` with its JSON ``raw`` arguments decoded (or the reason they were not)."""
        if not raw.strip():
            return cls(id=id, name=name, arguments={}, arguments_raw=raw)
        try:
            value = _JSON_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            return cls(
                id=id,
                name=name,
                arguments=None,
                arguments_raw=raw,
                error=f"The arguments of tool call {id!r} to {name!r} are not valid JSON ({exc}).",
            )
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), "value")
            return cls(
                id=id,
                name=name,
                arguments=None,
                arguments_raw=raw,
                error=(
                    f"The arguments of tool call {id!r} to {name!r} are a JSON {kind}, "
                    "not an object of named arguments."
                ),
            )
        return cls(id=id, name=name, arguments=value, arguments_raw=raw)

    def result(self, content: str) -> ChatMessage:
        """The ``role: "tool"`` message that answers this call with ``content``."""
        return ChatMessage(role="tool", tool_call_id=self.id, content=content)


class ChatResponse(msgspec.Struct, kw_only=True, dict=True):  # dict: room for the decoded tool calls
    """A chat completion. ``text`` is the first choice's content; ``cached`` is True when it came from the
    cache, and ``ttft_s`` is the time to the first token of a streamed answer (None when not streamed).

    ``tool_calls`` are the first choice's tool calls with their arguments decoded, ``message`` its whole
    assistant message (append it to the conversation before the tool results) and ``finish_reason`` why it
    ended (``"stop"``, ``"length"``, ``"tool_calls"``, ...).
    """

    id: str = ""
    model: str = ""
    choices: list[ChatChoice] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    cached: bool = False
    ttft_s: float | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""

    @property
    def message(self) -> ChatMessage:
        return self.choices[0].message if self.choices else ChatMessage(role="assistant", content="")

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        # Decoded once per response (kept in the instance's __dict__, which encoding ignores): the client checks
        # them as they arrive, the agent loop runs them. Not functools.cached_property: it takes a lock per read.
        d = self.__dict__
        got: list[ToolCall] | None = d.get("_tool_calls")
        if got is None:
            calls = self.choices[0].message.tool_calls if self.choices else None
            got = d["_tool_calls"] = (
                [ToolCall.decode(c.id, c.function.name, c.function.arguments) for c in calls] if calls else []
            )
        return got


class StreamDelta(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a streamed chat answer (``ctx.llm.stream``).

    ``kind`` is ``"text"`` (``text`` holds the next piece of the answer), ``"tool_call"`` (``tool_call`` is a
    whole call, yielded once its last fragment arrived) or ``"done"`` (the last delta: ``response`` is the
    whole answer with its usage, finish reason and tool calls). ``choice`` is the choice's index (0 unless
    the request asked for ``n`` > 1).
    """

    kind: Literal["text", "tool_call", "done"]
    text: str = ""
    tool_call: ToolCall | None = None
    response: ChatResponse | None = None
    choice: int = 0


class _ErrorDetail(msgspec.Struct, kw_only=True):
    message: str = ""
    type: str | None = None
    code: Any = None


class _FunctionDelta(msgspec.Struct, kw_only=True):
    name: str | None = None
    arguments: Any = None  # a string fragment, or (some servers) the whole arguments as an object


class _ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct, kw_only=True):
    content: str | None = None
    role: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    """One server-sent event of a streamed chat completion; ``error`` is set when the provider reports a
    failure inside the stream instead of an HTTP status."""

    id: str = ""
    model: str = ""
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: _ErrorDetail | str | None = None


class Embedding(msgspec.Struct, kw_only=True):
    """The vector of input ``index``."""

    index: int = 0
    embedding: list[float] = msgspec.field(default_factory=list)


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    """Embeddings in input order; ``vectors`` is the plain list of vectors."""

    model: str = ""
    data: list[Embedding] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    cached: bool = False

    @property
    def vectors(self) -> list[list[float]]:
        return [d.embedding for d in self.data]


class CompletionChoice(msgspec.Struct, kw_only=True):
    """The completion of prompt ``index``."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class CompletionResponse(msgspec.Struct, kw_only=True):
    """Completions, one choice per prompt (``n = 1``), in prompt order."""

    id: str = ""
    model: str = ""
    choices: list[CompletionChoice] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in sorted(self.choices, key=lambda c: c.index)]


class ErrorBody(msgspec.Struct, kw_only=True):
    """The ``{"error": {"message": ...}}`` body OpenAI-compatible servers send with a 4xx/5xx."""

    error: _ErrorDetail | str | None = None

    @property
    def message(self) -> str:
        if isinstance(self.error, _ErrorDetail):
            return self.error.message
        return self.error or ""


# ---- request bodies (what the client sends and the mock server reads) -----------------------------------


class _RequestMessage(msgspec.Struct, kw_only=True):
    # As sent by any client: content may also be a list of parts ({"type": "text", "text": ...}).
    role: str
    content: str | list[Any] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    messages: list[_RequestMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    # A string, a list of strings, a list of token ids (one input) or a list of such lists.
    input: str | list[Any]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] | None = None


class CompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    prompt: list[str] | str
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


ENCODER = msgspec.json.Encoder()
_JSON_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
CHAT_DECODER = msgspec.json.Decoder(ChatResponse)
CHUNK_DECODER = msgspec.json.Decoder(ChatChunk)
EMBEDDING_DECODER = msgspec.json.Decoder(EmbeddingResponse)
COMPLETION_DECODER = msgspec.json.Decoder(CompletionResponse)
ERROR_DECODER = msgspec.json.Decoder(ErrorBody)
CHAT_REQUEST_DECODER = msgspec.json.Decoder(ChatRequest)
EMBEDDING_REQUEST_DECODER = msgspec.json.Decoder(EmbeddingRequest)
COMPLETION_REQUEST_DECODER = msgspec.json.Decoder(CompletionRequest)
