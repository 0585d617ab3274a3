"""docs/prometheus/alerts.yml and docs/grafana/agentflow.json: promtool accepts the rules and every dashboard
query, the rules do what they say on sample series, and every metric they name exists in a real scrape."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest
from conftest import REPO_ROOT
from prometheus_client.parser import text_string_to_metric_families
from system_packages import ensure

from agentflow import Context, Event, Runner, config_from_dict
from agentflow.testing import MockLLM

RULES = REPO_ROOT / "docs" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "agentflow.json"
_METRIC = re.compile(r"\bagentflow_[a-z0-9_]+")
FIRING_DESCRIPTION = (
    "The worker's [monitoring.alerts] check fired; GET /alerts on the worker gives the figure, the threshold and a "
    "recommendation."
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = ensure("promtool", "prometheus")  # the test command installs Debian's prometheus when missing
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False)


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 20
    return queries


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(dashboard_queries()):
        expr = q.replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard.yml"
    path.write_text("\n".join(rules) + "\n")
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_do_what_they_say_on_sample_series(tmp_path: Path) -> None:
    tests = tmp_path / "tests.yml"
    tests.write_text(
        f"""rule_files: [{json.dumps(str(RULES))}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'agentflow_events_handled_total{{instance="w1",job="a",agent="plan",outcome="success"}}'
        values: '0+10x10'
      - series: 'agentflow_events_handled_total{{instance="w1",job="a",agent="plan",outcome="dead_lettered"}}'
        values: '0+1x10'
      - series: 'agentflow_breaker_state{{instance="w1",job="a",breaker="openai/gpt-4o",state="open"}}'
        values: '1x10'
      - series: 'agentflow_alert_firing{{instance="w1",job="a",alert="event_loop_lag",subject="process"}}'
        values: '0 0 1 1 1'
    promql_expr_test:
      - expr: agent_requests_total
        eval_time: 10m
        exp_samples:
          - labels: 'agent_requests_total{{instance="w1",job="a",agent_name="plan",status="success"}}'
            value: 100
          - labels: 'agent_requests_total{{instance="w1",job="a",agent_name="plan",status="error"}}'
            value: 10
    alert_rule_test:
      - eval_time: 5m
        alertname: AgentflowBreakerOpen
        exp_alerts:
          - exp_labels: {{severity: warning, instance: w1, breaker: openai/gpt-4o}}
            exp_annotations:
              summary: "Circuit breaker openai/gpt-4o is open on w1"
              description: "Calls through it fail fast until it recovers; check what it protects."
      - eval_time: 3m
        alertname: AgentflowAlertFiring
        exp_alerts:
          - exp_labels: {{severity: warning, instance: w1, job: a, alert: event_loop_lag, subject: process}}
            exp_annotations:
              summary: "agentflow alert event_loop_lag is firing for 'process' on w1"
              description: "{FIRING_DESCRIPTION}"
"""
    )
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


async def scrape() -> set[str]:
    """Every sample name of a real /metrics scrape of a runner that used each part the rules watch."""
    async with MockLLM() as server:
        config = {
            "monitoring": {"metrics_enabled": True, "port": 0, "alerts": {"rss_mb": 1e6}},
            "llm": {
                "mock": {
                    "base_url": server.url,
                    "default_model": "m",
                    "limits": {"rpm": 100_000},
                    "token_budget_per_workflow": 10,
                    "prices": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}},
                }
            },
            "retry": {"max_attempts": 1},
        }
        runner = Runner(config_from_dict(config))

        @runner.agent("ask")
        async def ask(event: Event, ctx: Context) -> None:
            await ctx.llm.chat([{"role": "user", "content": "hi"}], temperature=0)
            raise ValueError("dead-letter this one")

        async with runner:
            await runner.emit("ask", 1)
            await runner.drain(timeout_s=5.0)
            assert runner.insight.alerts is not None
            runner.insight.alerts.check()
            assert runner.http_address is not None
            host, port = runner.http_address
            async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as resp:
                text = await resp.text()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


async def test_every_metric_the_rules_and_the_dashboard_use_exists_in_a_real_scrape() -> None:
    scraped = await scrape()
    used = set(_METRIC.findall(RULES.read_text())) | {m for q in dashboard_queries() for m in _METRIC.findall(q)}
    assert len(used) >= 25
    missing = sorted(used - scraped)
    assert missing == [], f"the rules or the dashboard use metrics a runner does not render: {missing}"


@pytest.mark.parametrize("path", [RULES, DASHBOARD])
def test_no_query_names_a_metric_twice_spelled_differently(path: Path) -> None:
    # counters are queried with _total, histograms through _bucket/_sum/_count: a bare family name is a typo
    for name in set(_METRIC.findall(path.read_text())):
        assert not name.endswith(("_seconds", "_usd", "_calls", "_lookups")), name
