"""The LLM layer (L3): providers over pooled HTTP connections, and the parts their calls go through.

``client`` (one provider's calls), ``transport`` (its connection pool and request timer), ``failures`` (HTTP
statuses and exceptions as LLMErrors, scrubbed of secrets), ``stream`` (SSE answers, joined or delta by delta),
``toolspec`` (checks of a request's tool fields), ``protocols`` (what the client needs of breakers, limiters
and batchers), ``tokens`` (estimates), ``batching`` (the micro-batcher), ``cache``, ``cost``, ``metrics``,
``hub`` (several providers and ``ctx.llm``), ``types`` (msgspec request and response Structs, tool calls
included), ``mock`` (the OpenAI-compatible mock server) and ``mock_script`` (what the mock answers).

The public names are re-exported from :mod:`agentflow`; this package imports nothing itself, so importing a
light module such as ``agentflow.llm.types`` does not pull in aiohttp. See docs/llm.md.
"""

__all__: list[str] = []
