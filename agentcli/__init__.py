"""agentcli: the command line that drives agentflow.

* :mod:`.ops` — the operator commands: ``run`` (worker processes), ``emit``, ``dlq``, ``mock-llm``;
* :mod:`.bench` — ``benchmark``: the harness, the baselines, the scenarios and the one machine report;
* :mod:`.loadtest` — ``loadtest``: workload models, stages, live view, reports;
* shared by all of them: :mod:`.parse` (durations, rates, sizes), :mod:`.thresholds`, :mod:`.runtime` (event
  loop, signals, versions) and :mod:`.apps` (loading ``--app``); :mod:`.main` wires the commands together.

It is the one place that starts an event loop and installs signal handlers. See docs/benchmarking.md,
docs/load-testing.md and docs/operations.md.
"""
