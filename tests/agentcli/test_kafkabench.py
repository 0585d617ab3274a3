"""``agentcli benchmark --bus kafka``: both pipelines run against the session broker and count every event."""

from __future__ import annotations

import json
from pathlib import Path

from kafka_broker import TansuBroker
from typer.testing import CliRunner

from agentcli.bench.kafka import KafkaSpec, run_kafka_benchmark
from agentcli.main import app
from agentflow import config_from_dict

TANSU = {"enable_idempotence": False, "fetch_max_wait_ms": 5, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


async def test_agentflow_and_raw_pipelines_handle_every_event(kafka_broker: TansuBroker) -> None:
    spec = KafkaSpec(
        events=3000, batch=200, emitters=2, partitions=2, latency=True, load_fraction=0.5, compare_raw=True, repeat=2
    )
    m = await run_kafka_benchmark(
        config_from_dict({"kafka": TANSU}), spec, bootstrap=kafka_broker.bootstrap, options={}
    )
    assert m.details.brokers == f"brokers at {kafka_broker.bootstrap}"  # type: ignore[union-attr]
    assert [(r.round, r.side) for r in m.runs] == [(1, "raw"), (1, "agentflow"), (2, "raw"), (2, "agentflow")]
    for r in m.runs:
        assert r.latency_ms is not None and r.latency_ms.count == r.completed, r.label  # every event, exactly once
        assert r.errors == 0 and r.throughput_per_s > 0 and r.label.endswith("(paced)")
        assert r.saturation_per_s is not None and r.rate_per_s == r.saturation_per_s * 0.5
    for n, ratios in enumerate(m.round_ratios, 1):
        ours, raw = (next(r for r in m.runs if r.round == n and r.side == side) for side in ("agentflow", "raw"))
        assert ratios["raw"] == ours.saturation_per_s / raw.saturation_per_s  # type: ignore[operator]


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
    assert "ratio raw:" in result.output and "raw aiokafka" in result.output
    report = json.loads(out.read_text())
    assert (report["scenario"], report["bus"], report["mode"], report["details"]["kind"]) == (
        "noop", "kafka", "throughput", "kafka",
    )  # fmt: skip
    assert [r["completed"] for r in report["runs"]] == [2000, 2000]
    assert report["completed"] == 2000 and report["ratios"]["raw"] > 0


def test_cli_refuses_bootstrap_without_kafka_and_closed_mode_on_kafka() -> None:
    result = CliRunner().invoke(app, ["benchmark", "--bootstrap", "127.0.0.1:9"])
    assert result.exit_code == 2 and "--bus kafka" in result.output
    result = CliRunner().invoke(app, ["benchmark", "--bus", "kafka", "--mode", "closed"])
    assert result.exit_code == 2 and "--mode throughput" in result.output


async def test_rate_paces_every_side_at_the_same_rate_and_compares_their_medians(kafka_broker: TansuBroker) -> None:
    spec = KafkaSpec(
        events=3000, batch=200, emitters=2, partitions=2, latency=True, load_fraction=0.5, compare_raw=True,
        repeat=1, rate=400.0,
    )  # fmt: skip
    m = await run_kafka_benchmark(
        config_from_dict({"kafka": TANSU}), spec, bootstrap=kafka_broker.bootstrap, options={}
    )
    assert m.details.rate_per_s == 400.0 and m.details.load_fraction is None  # type: ignore[union-attr]
    assert {r.side for r in m.runs} == {"raw", "agentflow"}
    for r in m.runs:  # no saturation run: the paced run alone, every event counted once
        assert r.saturation_per_s is None and r.rate_per_s == 400.0
        assert r.latency_ms is not None and r.latency_ms.count == r.completed == 2000, r.label
    ours, raw = (next(r for r in m.runs if r.side == side) for side in ("agentflow", "raw"))
    assert m.round_ratios == [{"p50": ours.latency_ms.p50 / raw.latency_ms.p50}]  # type: ignore[union-attr]


def test_cli_refuses_rate_outside_kafka_latency_mode() -> None:
    result = CliRunner().invoke(app, ["benchmark", "--bus", "kafka", "--mode", "throughput", "--rate", "100"])
    assert result.exit_code == 2 and "--mode latency" in result.output
    result = CliRunner().invoke(
        app, ["benchmark", "--bus", "kafka", "--mode", "latency", "--rate", "100", "--load-fraction", "0.5"]
    )
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(app, ["benchmark", "--mode", "latency", "--rate", "100"])
    assert result.exit_code == 2 and "--load-fraction" in result.output
