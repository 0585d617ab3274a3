"""``agentcli benchmark``: what agentflow costs, against the same work without it, in one machine report.

Modules, bottom up: :mod:`.measure` (the load shapes, shared by both sides), :mod:`.raw` (the bare asyncio.Queue
baseline), :mod:`.schema` (the report's Structs) and :mod:`.report` (medians, ratios, thresholds, the common
output); the scenarios :mod:`.harness` with :mod:`.noop_report` (noop and ``--app``), :mod:`.llm`, :mod:`.kafka`,
:mod:`.overload` with :mod:`.blocked` and :mod:`.overload_report`, :mod:`.tools` (the agent loop),
:mod:`.mcp_pools` with its server :mod:`.mcp_server`, :mod:`.stream`, :mod:`.state` (``ctx.state`` against a bare
loop) and :mod:`.workflow` (a multi-agent workflow over a mock LLM); :mod:`.profiling`; :mod:`.tansu` (the Kafka
test broker) and :mod:`.redisd` (a redis-server for the state scenario); :mod:`.options` and :mod:`.cli` (the
command); :mod:`.kafka_workers` (scale-out across processes, ``python -m agentcli.bench.kafka_workers``) and
:mod:`.page` (docs/benchmarks.md, ``python -m agentcli.bench.page``). See docs/benchmarking.md.
"""
