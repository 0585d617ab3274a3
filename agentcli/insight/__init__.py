"""``agentcli profile-report``, ``agentcli cost-report`` and ``agentcli profile``: the insight of a running worker
(its ``/v1/profile``, ``/v1/costs`` and ``/debug/*`` routes), of a benchmark or load-test report, or of the cost
history in a state backend. The reports are computed by agentflow (:mod:`agentflow.insight`); these modules
fetch, read and print them.

* :mod:`.source` — fetching from a worker (bearer token from the environment) and reading report files.
* :mod:`.profile_report` — the profile report as a text table, JSON or HTML (:mod:`.html`).
* :mod:`.cost_report` — the cost report.
* :mod:`.profile` — a CPU profile, heap, tasks or loop-lag snapshot of a running worker.
"""
