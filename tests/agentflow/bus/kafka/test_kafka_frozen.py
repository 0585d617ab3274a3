"""Closing a Kafka subscription while the broker does not answer (SIGSTOP: connections open, no replies) is bounded
by request_timeout_ms, where aiokafka alone retries the last commit until the coordinator comes back.

The scenario runs in a child process: aiokafka leaves objects of the abandoned requests to the garbage collector,
and their late warnings must not land in another test of this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from kafka_broker import TansuBroker

ROOT = REPO_ROOT

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
    await bus.publish("t", [Event(topic="t", payload=i) for i in range(10)])
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


EMIT_SCENARIO = r"""
import asyncio, json, os, signal, sys, time
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_broker import kafka_settings
from agentflow import DeliveryUncertainError, EventCodec, Producer, config_from_dict

REQUEST_S, DELIVERY_S = 1.0, 5.0

async def written(bootstrap, topic):
    # Every event id in the topic, in order, read until several polls in a row come back empty.
    codec = EventCodec()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ids, idle = [], 0
        while idle < 10:
            batches = await consumer.getmany(*tps, timeout_ms=100)
            idle = 0 if batches else idle + 1
            ids += [codec.decode(r.value).id for records in batches.values() for r in records]
        return ids
    finally:
        await consumer.stop()

async def frozen_emit(producer, pid, freeze_s, batch):
    # The broker stops answering (connections stay open), the emit starts, the broker resumes after freeze_s.
    os.kill(pid, signal.SIGSTOP)
    resume = asyncio.get_running_loop().call_later(freeze_s, os.kill, pid, signal.SIGCONT)
    t0 = time.monotonic()
    try:
        ids = await producer.emit_many("t", batch)
        return {"outcome": "confirmed", "took": time.monotonic() - t0, "ids": ids}
    except DeliveryUncertainError as err:
        took = time.monotonic() - t0
        await asyncio.sleep(max(0.0, freeze_s - took) + 0.5)
        return {"outcome": "uncertain", "took": took, "ids": list(err.event_ids), "message": str(err),
                "error": err}
    except Exception as err:
        return {"outcome": type(err).__name__, "took": time.monotonic() - t0, "message": str(err)}
    finally:
        if not resume.cancelled():
            resume.cancel()
            os.kill(pid, signal.SIGCONT)

async def main(bootstrap, pid):
    settings = kafka_settings(bootstrap, prefix="emit.", request_timeout_ms=int(REQUEST_S * 1000),
                              delivery_timeout_s=DELIVERY_S)
    config = config_from_dict({"bus": {"backend": "kafka", "partitions": 1}, "kafka": settings})
    async with Producer(config) as producer:
        warm = await producer.emit("t", "warm")  # the topic exists and the producer knows its leader
        # Frozen for longer than request_timeout_ms, shorter than delivery_timeout_s: the emit waits it out.
        short = await frozen_emit(producer, pid, 2.5 * REQUEST_S, [{"n": i} for i in range(20)])
        # Frozen for longer than delivery_timeout_s: the emit fails, naming what may have been written.
        long = await frozen_emit(producer, pid, DELIVERY_S + 3, [{"n": i} for i in range(20, 40)])
        before_resend = await written(bootstrap, "emit.t")
        resent = await producer.resend(long.pop("error")) if long["outcome"] == "uncertain" else []
        after_resend = await written(bootstrap, "emit.t")
    print(json.dumps({"warm": warm, "short": short, "long": long, "before_resend": before_resend,
                      "resent": resent, "after_resend": after_resend}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.slow
def test_emit_waits_out_a_freeze_shorter_than_the_delivery_timeout_and_names_what_a_longer_one_left_unknown() -> None:
    with TansuBroker() as broker:
        assert broker.proc is not None
        proc = subprocess.run(
            [sys.executable, "-c", EMIT_SCENARIO, broker.bootstrap, str(broker.proc.pid)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    short, long = report["short"], report["long"]
    # request_timeout_ms (1 s) passed while frozen, delivery_timeout_s (5 s) did not: confirmed once it resumed.
    assert short["outcome"] == "confirmed", short
    assert 2.0 <= short["took"] < 5.0, short
    # Frozen past delivery_timeout_s: DeliveryUncertainError after about 5 s, naming the 20 events in flight.
    assert long["outcome"] == "uncertain", long
    assert 4.5 <= long["took"] < 8.0, long
    assert len(long["ids"]) == 20 and "may or may not have been written" in long["message"], long
    # Every event in the topic was either confirmed to the caller or named by the error: none written unnamed.
    before = report["before_resend"]
    assert set(before) <= {report["warm"], *short["ids"], *long["ids"]}
    assert {report["warm"], *short["ids"]} <= set(before)
    # resend() emits the named events again under the same ids: a copy that was written shares its id.
    assert report["resent"] == long["ids"]
    after = report["after_resend"]
    assert set(after) == {report["warm"], *short["ids"], *long["ids"]}
    assert all(after.count(i) == 1 for i in short["ids"])


START_SCENARIO = r"""
import asyncio, json, os, signal, sys, time
import msgspec
from kafka_broker import kafka_settings
from agentflow import BusUnavailableError
from agentflow.bus.kafka import KafkaBus
from agentflow.config import KafkaConfig

async def main(bootstrap, pid):
    # The producer's requests may take delivery_timeout_s (30 s here); connecting must not.
    settings = kafka_settings(bootstrap, connect_timeout_s=3.0, request_timeout_ms=1000, delivery_timeout_s=30.0)
    bus = KafkaBus(msgspec.convert(settings, KafkaConfig))
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        await bus.start()
        outcome = "started"
    except BusUnavailableError as err:
        outcome = str(err)
    finally:
        took = time.monotonic() - t0
        os.kill(pid, signal.SIGCONT)
    await bus.aclose()
    print(json.dumps({"outcome": outcome, "took": took}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_starting_against_a_frozen_broker_is_bounded_by_connect_timeout_not_delivery_timeout() -> None:
    with TansuBroker() as broker:
        assert broker.proc is not None
        proc = subprocess.run(
            [sys.executable, "-c", START_SCENARIO, broker.bootstrap, str(broker.proc.pid)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "within 3 s" in report["outcome"] and "brokers are up" in report["outcome"], report
    assert report["took"] < 10, report  # connect_timeout_s (3 s) plus one attempt (1 s); not 30 s
