"""``agentcli loadtest``: open and closed workload models, k6-style stages, thresholds, live view, reports.

Modules, bottom up: :mod:`.stages` (stage syntax, load profile), :mod:`.figures` (windows and histograms in
bounded memory, and the figures thresholds may name), :mod:`.targets`, :mod:`.scenario` and :mod:`.plan`
(options → a checked plan), :mod:`.model` (the generator), :mod:`.collector`, :mod:`.session`, :mod:`.workers`,
:mod:`.report` (JSON), :mod:`.report_html`, :mod:`.compare`, :mod:`.live`, :mod:`.cli`. Durations and rates are
read by :mod:`agentcli.parse`, thresholds by :mod:`agentcli.thresholds`, as in every command. See
docs/load-testing.md.
"""
