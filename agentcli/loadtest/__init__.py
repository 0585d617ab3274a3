"""``agentcli loadtest``: open and closed workload models, k6-style stages, thresholds, live view, reports.

Modules, bottom up: :mod:`.stages` (stage syntax, load profile), :mod:`.thresholds`, :mod:`.figures`
(windows and histograms in bounded memory), :mod:`.targets`, :mod:`.scenario` and :mod:`.plan` (options →
a checked plan), :mod:`.model` (the generator), :mod:`.collector`, :mod:`.session`, :mod:`.workers`,
:mod:`.report` (JSON), :mod:`.report_html`, :mod:`.compare`, :mod:`.live`, :mod:`.cli`. See docs/load-testing.md.
"""
