"""OpenAI-compatible request and response shapes as msgspec Structs, with one encoder and decoder per type.

Only the fields agentflow reads are declared; providers add fields freely and those are ignored on decode
(``forbid_unknown_fields`` stays off here on purpose: vLLM, Ollama and Azure each add their own).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["ChatMessage", "ChatResponse", "CompletionResponse", "EmbeddingResponse", "Usage"]


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one call, as the provider reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One chat message; plain dicts ``{"role": ..., "content": ...}`` work as well."""

    role: str
    content: str | None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    """One answer of a chat completion."""

    index: int = 0
    message: ChatMessage = msgspec.field(default_factory=lambda: ChatMessage(role="assistant", content=""))
    finish_reason: str | None = None


class ChatResponse(msgspec.Struct, kw_only=True):
    """A chat completion. ``text`` is the first choice's content; ``cached`` is True when it came from the
    cache, and ``ttft_s`` is the time to the first token of a streamed answer (None when not streamed)."""

    id: str = ""
    model: str = ""
    choices: list[ChatChoice] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    cached: bool = False
    ttft_s: float | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""


class _Delta(msgspec.Struct, kw_only=True):
    content: str | None = None
    role: str | None = None


class _ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    """One server-sent event of a streamed chat completion."""

    id: str = ""
    model: str = ""
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


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


class _ErrorDetail(msgspec.Struct, kw_only=True):
    message: str = ""
    type: str | None = None
    code: Any = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """The ``{"error": {"message": ...}}`` body OpenAI-compatible servers send with a 4xx/5xx."""

    error: _ErrorDetail | str | None = None

    @property
    def message(self) -> str:
        if isinstance(self.error, _ErrorDetail):
            return self.error.message
        return self.error or ""


# ---- request bodies (what the client sends and the mock server reads) -----------------------------------


class ChatRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    input: list[str] | str
    dimensions: int | None = None
    encoding_format: Literal["float"] | None = None


class CompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    prompt: list[str] | str
    max_tokens: int | None = None
    temperature: float | None = None


ENCODER = msgspec.json.Encoder()
CHAT_DECODER = msgspec.json.Decoder(ChatResponse)
CHUNK_DECODER = msgspec.json.Decoder(ChatChunk)
EMBEDDING_DECODER = msgspec.json.Decoder(EmbeddingResponse)
COMPLETION_DECODER = msgspec.json.Decoder(CompletionResponse)
ERROR_DECODER = msgspec.json.Decoder(ErrorBody)
CHAT_REQUEST_DECODER = msgspec.json.Decoder(ChatRequest)
EMBEDDING_REQUEST_DECODER = msgspec.json.Decoder(EmbeddingRequest)
COMPLETION_REQUEST_DECODER = msgspec.json.Decoder(CompletionRequest)
