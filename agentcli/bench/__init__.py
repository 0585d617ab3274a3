"""``agentcli benchmark``: the harness, its scenarios (noop, app, llm-*, Kafka, overload), the raw baselines and the
one machine report."""
