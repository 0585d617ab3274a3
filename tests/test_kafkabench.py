"""``agentcli benchmark --bus kafka``: both pipelines run against the session broker and count every event."""

from __future__ import annotations

import json
from pathlib import Path

from kafka_broker import TansuBroker
from typer.testing import CliRunner

from agentcli.kafkabench import run_kafka_benchmark
from agentcli.main import app
from agentflow import config_from_dict

TANSU = {"enable_idempotence": False, "fetch_max_wait_ms": 5, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


async def test_agentflow_and_raw_pipelines_handle_every_event(kafka_broker: TansuBroker) -> None:
    results, where = await run_kafka_benchmark(
        config_from_dict({"kafka": TANSU}),
        bootstrap=kafka_broker.bootstrap,
        events=3000,
        batch=200,
        emitters=2,
        partitions=2,
        latency=True,
        load_fraction=0.5,
        compare_raw=True,
    )
    assert where == f"brokers at {kafka_broker.bootstrap}"
    assert [r.label for r in results] == ["raw aiokafka", "raw aiokafka (paced)", "agentflow", "agentflow (paced)"]
    for r in results:
        assert r.hist.count == r.events, r.label  # every event emitted was handled exactly once
        assert r.per_s > 0
    assert results[1].rate_per_s == results[0].per_s * 0.5


def test_cli_runs_on_the_given_brokers_and_writes_json(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    config = tmp_path / "agentflow.toml"
    config.write_text(  # what Tansu needs (docs/kafka.md)
        "[kafka]\nenable_idempotence = false\nfetch_max_wait_ms = 5\nsession_timeout_ms = 2000\n"
        "heartbeat_interval_ms = 500\n"
    )
    args = ["benchmark", "--bus", "kafka", "--bootstrap", kafka_broker.bootstrap, "--config", str(config)]
    args += ["--mode", "throughput"]
    result = CliRunner().invoke(app, [*args, "--requests", "2000", "--compare-raw", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "agentflow / raw aiokafka throughput" in result.output
    report = json.loads(out.read_text())
    assert [r["events"] for r in report["results"]] == [2000, 2000]
    assert report["ratio"] > 0


def test_cli_refuses_bootstrap_without_kafka_and_closed_mode_on_kafka() -> None:
    result = CliRunner().invoke(app, ["benchmark", "--bootstrap", "127.0.0.1:9"])
    assert result.exit_code == 2 and "--bus kafka" in result.output
    result = CliRunner().invoke(app, ["benchmark", "--bus", "kafka", "--mode", "closed"])
    assert result.exit_code == 2 and "--mode throughput" in result.output
