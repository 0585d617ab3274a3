"""Closing a Kafka subscription while the broker does not answer (SIGSTOP: connections open, no replies) is bounded
by request_timeout_ms, where aiokafka alone retries the last commit until the coordinator comes back.

The scenario runs in a child process: aiokafka leaves objects of the abandoned requests to the garbage collector,
and their late warnings must not land in another test of this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kafka_broker import TansuBroker

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = r"""
import asyncio, json, logging, os, signal, sys, time
import msgspec
from kafka_broker import kafka_settings
from agentflow import Event
from agentflow.bus.kafka import KafkaBus
from agentflow.config import KafkaConfig

class Seen(logging.Handler):
    lines: list[str] = []
    def emit(self, record):
        Seen.lines.append(record.getMessage())

async def main(bootstrap, pid):
    logging.getLogger("agentflow").addHandler(Seen())
    settings = kafka_settings(bootstrap, prefix="frozen.", request_timeout_ms=3000)
    bus = KafkaBus(msgspec.convert(settings, KafkaConfig), partitions=2, buffer_size=100)
    await bus.start()
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [Event("t", i) for i in range(10)])
    taken = []
    while len(taken) < 10:
        taken += sub.take_nowait(10)
        if len(taken) < 10:
            await sub.wait()
    for item in taken:
        sub.ack(item)  # finished, not yet committed: the close must try to commit them
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(sub.aclose(), 60)
            outcome = "closed"
        except TimeoutError:
            outcome = "hung"
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    await bus.aclose()
    print(json.dumps({"outcome": outcome, "took": took, "warnings": Seen.lines}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_closing_while_the_broker_is_frozen_is_bounded() -> None:
    with TansuBroker() as broker:
        assert broker.proc is not None
        proc = subprocess.run(
            [sys.executable, "-c", SCENARIO, broker.bootstrap, str(broker.proc.pid)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "closed", report  # unbounded, it did not return within 60 s
    assert report["took"] < 20, report  # 3 s (request_timeout_ms) per bounded step
    # The commit was given up, and the log says what that means for the events it covered.
    assert any("did not finish within 3 s" in w for w in report["warnings"]), report
