"""``agentcli run --dry-run --estimate-cost --events``: an app's agents on a sample against the mock LLM, the cost
per event, per workflow and per agent — and nothing sent anywhere but the mock."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from insight_app import make_runner

from agentcli.ops.dryrun import SampleEvent, estimate
from agentflow import config_from_dict

#: socket.connect calls seen while a test records them (an audit hook cannot be removed, so it checks this).
_connects: list[Any] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)


class Canary:
    """A listening socket that counts the connections it accepts: where nothing may connect."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Canary:
        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def canaries() -> AsyncIterator[tuple[Canary, Canary]]:
    async with Canary() as provider, Canary() as broker:
        yield provider, broker


def app_config(provider: Canary, broker: Canary) -> dict[str, Any]:
    """What a production config looks like: a real provider, Kafka, state (and cost history) in Redis, the HTTP
    server on."""
    return {
        "bus": {"backend": "kafka"},
        "kafka": {"bootstrap_servers": f"127.0.0.1:{broker.port}"},
        "memory": {"backend": "redis", "url": f"redis://127.0.0.1:{broker.port}/0"},
        "monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True},
        "tracing": {"enabled": True, "exporter": "otlp", "otlp_endpoint": f"http://127.0.0.1:{broker.port}/v1/traces"},
        "agents": {"research": {"concurrency": 4}},
        "llm": {
            "openai": {
                "base_url": f"http://127.0.0.1:{provider.port}/v1",
                "api_key_env": "OPENAI_API_KEY_THAT_IS_NOT_SET",
                "default_model": "gpt-4o-mini",
                "limits": {"rpm": 1},
                "prices": {"gpt-4o-mini": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}},
            }
        },
    }


SAMPLE = [SampleEvent(topic="research", payload=i) for i in range(8)] + [
    SampleEvent(topic="notify", payload="x" * n) for n in (10, 1000)
]


async def test_the_dry_run_sends_nothing_anywhere_but_the_mock(canaries: tuple[Canary, Canary]) -> None:
    global _connects
    provider, broker = canaries
    runner = make_runner(config_from_dict(app_config(provider, broker)))
    _connects = []
    try:
        rep = await estimate(runner, SAMPLE, app="insight_app", completion_tokens=100)
        seen = list(_connects)
    finally:
        _connects = None
    assert provider.accepted == 0 and broker.accepted == 0
    assert seen, "the audit hook saw no connection at all: it is not watching"
    mock_ports = {addr[1] for addr in seen}
    assert len(mock_ports) == 1 and all(addr[0] == "127.0.0.1" for addr in seen)
    assert mock_ports.isdisjoint({provider.port, broker.port})
    assert rep.mock_requests == 10  # one deterministic call per event reaching notify
    assert rep.events == 10 and rep.dead_lettered == 0


async def test_the_estimate_per_event_per_workflow_and_per_agent(canaries: tuple[Canary, Canary]) -> None:
    provider, broker = canaries
    runner = make_runner(config_from_dict(app_config(provider, broker)))
    rep = await estimate(runner, SAMPLE, app="insight_app", completion_tokens=100)
    assert [e.calls for e in rep.per_event] == [1] * 10
    for e in rep.per_event:
        assert e.completion_tokens == 100
        assert e.cost_usd == pytest.approx((e.prompt_tokens * 0.15 + 100 * 0.6) / 1e6)
    notify, research = rep.workflows  # sorted by name
    assert (research.workflow, research.events, notify.workflow, notify.events) == ("research", 8, "notify", 2)
    assert notify.min_usd < notify.max_usd  # the longer prompt costs more: the range over the sample
    assert research.by_agent == {"notify": pytest.approx(research.total_usd)}  # research itself calls no LLM
    assert rep.total_usd == pytest.approx(sum(e.cost_usd for e in rep.per_event))
    assert rep.by_agent == {"notify": pytest.approx(rep.total_usd)} and rep.unpriced == []


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentcli", "run", "tests/insight_app.py:make_runner", *args, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "300"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_command_prints_the_estimate(canaries: tuple[Canary, Canary], tmp_path: Path) -> None:
    provider, broker = canaries
    config = tmp_path / "app.toml"
    lines = []
    for section, table in app_config(provider, broker).items():
        if section == "llm":
            continue
        for key, value in table.items():
            if isinstance(value, dict):
                lines.append(f"[{section}.{key}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
            else:
                lines.insert(0, f"{section}.{key} = {json.dumps(value)}")
    lines += ["[llm.openai]", f'base_url = "http://127.0.0.1:{provider.port}/v1"', 'default_model = "m"',
              "[llm.openai.prices.m]", "input_usd_per_mtok = 2.5", "output_usd_per_mtok = 10.0"]  # fmt: skip
    config.write_text("\n".join(lines) + "\n")
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(json.dumps({"topic": "research", "payload": i}) for i in range(5)) + "\n\n")
    code, out, err = await run_cli("--config", str(config), "--dry-run", "--estimate-cost", "--events", str(sample))
    assert code == 0, err
    assert "Dry run of tests/insight_app.py:make_runner: 5 events against the mock LLM (5 LLM requests)" in out
    assert "Per workflow" in out and "By agent" in out and "Estimated total $" in out
    assert "Nothing was sent to a real provider" in out
    code, out, err = await run_cli("--config", str(config), "--dry-run", "--events", str(sample), "--json")
    assert code == 0, err
    assert json.loads(out)["events"] == 5
    sample.write_text('{"topic": "research"}\n{"topic": 7}\n')
    code, _, err = await run_cli("--config", str(config), "--dry-run", "--events", str(sample))
    assert code == 2 and "line 2" in err
    code, _, err = await run_cli("--config", str(config), "--estimate-cost", "--events", str(sample))
    assert code == 2 and "go with --dry-run" in err
    assert provider.accepted == 0 and broker.accepted == 0
