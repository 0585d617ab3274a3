"""One trace across two worker processes on Kafka: a handler's follow-up carries its span's ``traceparent`` in the
event's headers through the broker, and the worker that takes it continues the same trace."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from kafka_broker import TansuBroker
from worker_processes import WorkerProcess, emit_until, kafka_config, until


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _crossed(path: Path) -> set[str]:
    """Trace ids whose first step ran in one process and second step in another."""
    first = {t: pid for agent, t, pid in _lines(path) if agent == "first"}
    return {t for agent, t, pid in _lines(path) if agent == "second" and t in first and first[t] != pid}


@pytest.mark.slow
async def test_one_trace_spans_both_workers(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    config, data = kafka_config(tmp_path, kafka_broker)
    config.write_text(config.read_text() + "[tracing]\nenabled = true\n")
    lines, spans_dir = tmp_path / "lines.txt", tmp_path / "spans"
    spans_dir.mkdir()
    env = {"TRACE_LINES": str(lines), "TRACE_DIR": str(spans_dir)}
    workers = []
    try:
        for _ in range(2):
            w = await WorkerProcess.start(
                tmp_path, "tests/tracing_app.py:make_runner", "--config", str(config), "--port", "0", env=env
            )
            await w.wait_ready()
            workers.append(w)
        stop = asyncio.Event()
        emitting = asyncio.ensure_future(emit_until(data, stop, batch=10, pause_s=0.1))
        try:
            await until(lambda: len(_crossed(lines)) >= 3, 60.0, "a workflow whose two steps ran in two workers")
        finally:
            stop.set()
            await emitting
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            assert await w.wait() == 0, w.stderr()
    finally:
        for w in workers:
            await w.kill()
    spans = [json.loads(line) for f in spans_dir.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len({s["pid"] for s in spans}) == 2
    by_id = {s["span_id"]: s for s in spans}
    for trace_id in _crossed(lines):
        [second] = [s for s in spans if s["trace_id"] == trace_id and s["name"] == "process steps"]
        parent = by_id[second["parent_id"]]
        assert parent["name"] == "process jobs" and parent["trace_id"] == trace_id
        assert parent["pid"] != second["pid"]  # one trace, two processes
        assert second["attributes"]["messaging.system"] == "kafka"
        assert second["attributes"]["agentflow.agent"] == "second"
