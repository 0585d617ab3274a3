"""agentcli: the command line that drives agentflow (``agentcli benchmark``, ``agentcli version``).

It uses agentflow's public API only, and is the one place that starts an event loop and installs signal
handlers. See docs/benchmarking.md.
"""
