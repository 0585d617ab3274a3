"""Broker restart mid-run with durable storage: Tansu on moto's S3 server is SIGKILLed under load and started
again on the same port and storage; the worker process and the producer recover by themselves and no event is
lost (counted by id from the worker's output file)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_broker import S3Emulator, TansuBroker
from worker_processes import handled_lines, kafka_config, report, start_worker, until

from agentflow import BusUnavailableError, Producer, config_from_dict

EVENTS = 4000


@pytest.fixture
def durable_broker() -> Iterator[TansuBroker]:
    with S3Emulator() as s3, TansuBroker(storage="s3://tansu/", env=s3.broker_env) as broker:
        yield broker


@pytest.mark.slow
async def test_broker_killed_and_restarted_mid_run_loses_nothing(tmp_path: Path, durable_broker: TansuBroker) -> None:
    broker = durable_broker
    # Tansu on S3 answers a fetch that needs longer than fetch_max_wait_ms to read the storage with nothing, every
    # time: at 5 ms the consumer never gets a record; 100 ms leaves room for the emulator's round trips.
    config, data = kafka_config(tmp_path, broker, fetch_max_wait_ms=100)
    out = tmp_path / "handled.txt"
    worker = await start_worker(tmp_path, config, out)
    sent: list[str] = []
    failed_emits = 0

    async def produce() -> None:
        # The producer lives through the outage: an emit that the brokers did not confirm raises
        # BusUnavailableError (maybe written, maybe not) and is emitted again — never counted as sent unconfirmed.
        nonlocal failed_emits
        async with Producer(config_from_dict(data)) as producer:
            for i in range(0, EVENTS, 50):
                batch = [{"n": j} for j in range(i, i + 50)]
                while True:
                    try:
                        sent.extend(await producer.emit_many("jobs", batch))
                        break
                    except BusUnavailableError:
                        failed_emits += 1
                await asyncio.sleep(0.01)

    try:
        producing = asyncio.ensure_future(produce())
        await until(lambda: producing.done() or sum(handled_lines(out).values()) >= 800, 60, "800 handled events")
        if producing.done():
            producing.result()  # a producer that died: its error, not a time-out
            raise AssertionError("the producer finished before the broker was killed; emit more events")
        broker.stop(kill=True)  # SIGKILL: nothing flushed beyond what the storage engine already holds
        killed_at = len(sent)
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        broker.start()  # same port, same s3://tansu/ storage
        await asyncio.wait_for(producing, 120)
        assert len(sent) == EVENTS and killed_at < EVENTS, "the broker must go down while events are still emitted"
        await until(lambda: set(handled_lines(out)) >= set(sent), 120, "every event handled after the restart")
        recovered_s = time.monotonic() - t0
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0, worker.stderr()
    finally:
        await worker.kill()
    lost, dups = report("broker restart", sent, handled_lines(out))
    print(f"broker restart: {failed_emits} emit(s) failed and were retried; all handled {recovered_s:.1f} s after it")
    assert lost == 0
