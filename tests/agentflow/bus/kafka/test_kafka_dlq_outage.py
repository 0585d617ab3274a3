"""The brokers stop answering while a worker dead-letters events: no exit, and the dead letters are written once
they are back.

``agentcli run tests/workerapp.py:runner`` rejects events marked ``"reject": true`` after a 2 s handler; the broker
(its own, not the session's) is frozen with SIGSTOP while those handlers run, so every dead-letter write fails
(``delivery_timeout_s`` 2 s) and is retried. ``/readyz`` answers 503 meanwhile; after SIGCONT the letters reach
the ``.dlq`` topic, the worker handles new events, and a SIGTERM ends it with 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from kafka_broker import TansuBroker
from worker_processes import handled_lines, kafka_config, start_worker, until

from agentflow import DeadLetter, Producer, config_from_dict


async def dead_letter_ids(bootstrap: str, topic: str) -> list[str | None]:
    """The event ids of the dead letters in ``topic``, read from the beginning with a plain consumer."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=1000)
        dec = msgspec.msgpack.Decoder(DeadLetter)
        return [dec.decode(r.value).event_id for records in batches.values() for r in records]
    finally:
        await consumer.stop()


async def readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/readyz") as r:
        return r.status, await r.json()


@pytest.mark.slow
async def test_a_broker_outage_while_dead_lettering_is_waited_out(tmp_path: Path) -> None:
    with TansuBroker() as broker:
        assert broker.proc is not None
        config, data = kafka_config(tmp_path, broker, delivery_timeout_s=2.0, request_timeout_ms=2000)
        out = tmp_path / "handled.txt"
        w = await start_worker(tmp_path, config, out, sleep_ms=2000)
        frozen = False
        try:
            async with Producer(config_from_dict(data)) as producer:
                rejected = await producer.emit_many("jobs", [{"reject": True, "n": n} for n in range(6)])
                good = await producer.emit_many("jobs", [{"n": n} for n in range(6)])
            await asyncio.sleep(0.5)  # fetched: the handlers run for 2 s, then reject
            os.kill(broker.proc.pid, signal.SIGSTOP)
            frozen = True
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                seen: dict[str, Any] = {}

                async def failing() -> bool:
                    status, body = await readyz(http, w.urls[0])
                    seen.update(body)
                    return status == 503 and body.get("dead_letters_failing", 0) > 0

                # The writes fail (delivery_timeout_s) and are retried: not ready, and the worker keeps running.
                deadline = asyncio.get_running_loop().time() + 30
                while not await failing():
                    assert w.proc.returncode is None, w.stderr()
                    assert asyncio.get_running_loop().time() < deadline, seen
                    await asyncio.sleep(0.2)
                await asyncio.sleep(3.0)  # an outage several delivery timeouts long
                assert w.proc.returncode is None, "the worker exited during the outage: " + w.stderr()
                os.kill(broker.proc.pid, signal.SIGCONT)
                frozen = False
                dlq = f"{data['kafka']['topic_prefix']}jobs.dlq"
                letters: list[str | None] = []
                deadline = asyncio.get_running_loop().time() + 60
                while not set(rejected) <= set(letters):
                    assert asyncio.get_running_loop().time() < deadline, (letters, w.stderr())
                    await asyncio.sleep(0.5)
                    letters = await dead_letter_ids(broker.bootstrap, dlq)
                await until(lambda: set(handled_lines(out)) >= set(good), 60, "the good events handled")
                # Back to ready, and handling new events.
                status = 0
                for _ in range(100):
                    status, body = await readyz(http, w.urls[0])
                    if status == 200:
                        break
                    await asyncio.sleep(0.2)
                assert status == 200, body
            async with Producer(config_from_dict(data)) as producer:
                later = await producer.emit_many("jobs", [{"n": n} for n in range(3)])
            await until(lambda: set(handled_lines(out)) >= set(later), 60, "events after the outage handled")
            w.signal(signal.SIGTERM)
            assert await w.wait() == 0, w.stderr()
        finally:
            if frozen:
                os.kill(broker.proc.pid, signal.SIGCONT)
            await w.kill()
    assert not set(handled_lines(out)) & set(rejected)
    assert "could not write dead letter" in w.stderr()
