"""agentcli loadtest's Kafka target against a real Tansu broker, with an in-process Runner on Kafka as the worker.

Request mode: every iteration's result comes back on the reply topic and the latency includes the handling;
emit mode: every emitted event reaches the worker; no worker: timeouts are counted as errors; the CLI end to end.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import REPO_ROOT
from kafka_broker import TansuBroker, kafka_settings

from agentcli.loadtest.plan import resolve
from agentcli.loadtest.report import read_report
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import run_local
from agentflow import Context, Event, Runner, config_from_dict

ROOT = REPO_ROOT
HANDLE_S = 0.03  # the worker's handling time: request-mode latency can never be below it


class Setup(msgspec.Struct):
    path: Path
    data: dict[str, Any]


@pytest.fixture
def kafka_setup(kafka_broker: TansuBroker, tmp_path: Path) -> Setup:
    """A TOML config for the load generator and the same settings as a dict for the worker Runner."""
    data: dict[str, Any] = {
        "bus": {"backend": "kafka", "partitions": 2},
        "kafka": kafka_settings(kafka_broker.bootstrap, prefix=f"lt{uuid.uuid4().hex[:8]}."),
    }
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {msgspec.json.encode(v).decode()}" for k, v in table.items()]
    path = tmp_path / "kafka.toml"
    path.write_text("\n".join(lines) + "\n")
    return Setup(path, data)


@pytest.fixture
async def worker(kafka_setup: Setup) -> AsyncIterator[list[Any]]:
    """A Runner on the same broker: ``jobs`` answers {"echo": n} after HANDLE_S, ``sink`` only records."""
    runner = Runner(config_from_dict(kafka_setup.data))
    seen: list[Any] = []

    @runner.agent("jobs")
    async def jobs(event: Event, ctx: Context) -> dict[str, Any]:
        await asyncio.sleep(HANDLE_S)
        seen.append(event.payload["n"])
        return {"echo": event.payload["n"]}

    @runner.agent("sink")
    async def sink(event: Event, ctx: Context) -> None:
        seen.append(event.payload["n"])

    async with runner:
        yield seen


class EchoCheck:
    """A Python scenario's check(): the result must be the worker's answer, not an ack or an empty reply."""

    @staticmethod
    def check(result: Any) -> str | None:
        return None if isinstance(result, dict) and isinstance(result.get("echo"), int) else "not_the_result"


async def test_request_mode_waits_for_each_result_on_the_reply_topic(kafka_setup: Setup, worker: list[Any]) -> None:
    spec = LoadSpec(rate="40/s", duration="1500ms", bus="kafka", topic="jobs", config=str(kafka_setup.path),
                    payload={"n": "${i}"}, timeout="10s")  # fmt: skip
    outcome = await run_local(resolve(spec), EchoCheck())
    total = outcome.collector.total()
    assert (total.started, total.completed, total.errors, total.dropped) == (60, 60, 0, 0), total.errors_by_kind
    assert sorted(worker) == list(range(60)), "each iteration is one event handled once"
    lat = total.hists["latency"]
    assert lat.count == 60
    # Latency runs to the result, so it includes the worker's handling; a producer ack alone would be faster.
    assert lat.percentile(0) >= HANDLE_S
    assert "topic jobs (request)" in outcome.target


async def test_emit_only_mode_ends_at_the_broker_ack_and_every_event_reaches_the_worker(
    kafka_setup: Setup, worker: list[Any], eventually: Any
) -> None:
    spec = LoadSpec(rate="50/s", duration="1s", bus="kafka", topic="sink", emit_only=True,
                    config=str(kafka_setup.path), payload={"n": "${i}"})  # fmt: skip
    outcome = await run_local(resolve(spec), None)
    total = outcome.collector.total()
    assert (total.completed, total.errors) == (50, 0)
    assert "(emit)" in outcome.target
    await eventually(lambda: len(worker) >= 50, timeout_s=10, what="50 emitted events handled")
    assert sorted(worker) == list(range(50))


async def test_requests_nobody_answers_count_as_timeouts(kafka_setup: Setup) -> None:
    spec = LoadSpec(rate="10/s", duration="1s", bus="kafka", topic="nobody-listens", config=str(kafka_setup.path),
                    timeout="300ms", graceful_stop="2s")  # fmt: skip
    total = (await run_local(resolve(spec), None)).collector.total()
    assert (total.started, total.completed) == (10, 0)
    assert (total.errors, total.errors_by_kind) == (10, {"timeout": 10})


async def test_cli_loads_a_kafka_worker_end_to_end(kafka_setup: Setup, worker: list[Any], tmp_path: Path) -> None:
    # The config file gives the Tansu client settings and a dead bootstrap; --bootstrap must win over it.
    text = kafka_setup.path.read_text()
    bootstrap = kafka_setup.data["kafka"]["bootstrap_servers"]
    kafka_setup.path.write_text(text.replace(f'"{bootstrap}"', '"127.0.0.1:1"'))
    out = tmp_path / "run.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from agentcli.main import main; main()", "loadtest", "--bus", "kafka",
        "--bootstrap", bootstrap, "--topic", "jobs", "--config", str(kafka_setup.path), "--rate", "20/s",
        "--duration", "1s", "--payload", '{"n": "${i}"}', "--threshold", "error_rate<0.01", "--json", str(out),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text_out = stdout.decode()
    assert proc.returncode == 0, text_out
    assert "Traceback" not in text_out and "all thresholds passed" in text_out
    rep = read_report(out)
    assert (rep.run.completed, rep.run.errors) == (20, 0)
    assert rep.spec["bus"] == "kafka" and rep.spec["topic"] == "jobs"
    assert sorted(worker) == list(range(20))


def test_an_unconfirmed_emit_that_may_have_been_written_has_its_own_error_kind() -> None:
    from agentcli.loadtest.targets import KafkaTarget
    from agentflow import BusUnavailableError, DeliveryUncertainError

    target = KafkaTarget(config_from_dict({"bus": {"backend": "kafka"}}), "t", timeout_s=1.0)
    assert target.error_kind(DeliveryUncertainError("maybe written", event_ids=("a",))) == "delivery_uncertain"
    assert target.error_kind(BusUnavailableError("brokers down")) == "bus_unavailable"
