"""The LLM layer (L3): ``client`` (one pooled provider), ``hub`` (several providers and ``ctx.llm``), ``mock``
(the OpenAI-compatible mock server), ``types`` (msgspec request/response Structs) and ``cost``.

The public names are re-exported from :mod:`agentflow`; this package imports nothing itself, so importing a
light module such as ``agentflow.llm.types`` does not pull in aiohttp. See docs/llm.md.
"""

__all__: list[str] = []
