"""Scale-out benchmark: ``agentcli run`` worker processes on Kafka, 1 against N, in the same run.

    python -m agentcli.bench.kafka_workers [--bootstrap HOST:PORT] [--workers 2] [--events 20000] [--work-us 500]

For each worker count (1, then ``--workers``) on a fresh topic prefix: emit ``--events`` events with
:class:`agentflow.Producer` (4 concurrent emitters, batches of 500) into the topic, then start ``agentcli run
agentcli.bench.kafka_workers:bench_app --workers K`` and time the events handled from the moment the last worker
reported ready (it holds its partitions) to the last event, from the timestamps the workers write (one line per
event). Events handled while the workers were still joining are not timed (``timed_events`` says how many were).
The handler burns ``--work-us`` µs of CPU per event (0 = noop), the case scaling out is for; with the broker,
the producer and the workers on the same cores the ratio is bounded by the free cores (see docs/kafka.md).
Without ``--bootstrap`` a Tansu test broker is started. Prints one JSON object per worker count and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from agentflow import Config, Context, Event, Producer, Runner, config_from_dict

from .kafka import TANSU_SETTINGS

__all__ = ["bench_app", "main", "run_scaling"]

TOPIC = "agentcli.scale"
PARTITIONS = 8
_READY = re.compile(r"\(pid (\d+)\) ready on http://")
_ROOT = Path(__file__).resolve().parents[2]


def bench_app(config: Config) -> Runner:
    """The worker app: one agent on ``agentcli.scale`` that burns ``KAFKAWORKERS_WORK_US`` µs of CPU per event and
    appends the time it finished to ``KAFKAWORKERS_OUT`` (single O_APPEND writes: lines never interleave)."""
    app = Runner(config)
    work_s = float(os.environ.get("KAFKAWORKERS_WORK_US", "0")) / 1e6
    fd = os.open(os.environ["KAFKAWORKERS_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    perf = time.perf_counter

    @app.agent(TOPIC)
    async def work(event: Event, ctx: Context) -> None:
        if work_s:
            end = perf() + work_s
            while perf() < end:  # CPU work, like parsing or scoring: it holds the process, not just the task
                pass
        os.write(fd, b"%.6f\n" % time.time())

    return app


def _cpu_now(pid: int | None) -> tuple[float, float, float] | None:
    """(machine busy jiffies, machine total jiffies, ``pid``'s CPU jiffies) from /proc; None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        own = 0.0
        if pid is not None:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            own = float(int(stat[11]) + int(stat[12]))  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return float(total - idle), float(total), own


def _cpu_use(before: tuple[float, float, float] | None, pid: int | None) -> dict[str, float | None]:
    """Cores busy on the whole machine, and in the broker, between ``before`` and now."""
    after = _cpu_now(pid)
    if before is None or after is None or after[1] <= before[1]:
        return {"machine_busy_cores": None, "broker_cores": None}
    cores = os.cpu_count() or 1
    span = (after[1] - before[1]) / cores  # jiffies of wall time
    return {
        "machine_busy_cores": round((after[0] - before[0]) / span, 2),
        "broker_cores": round((after[2] - before[2]) / span, 2) if pid is not None else None,
    }


def _toml(data: dict[str, Any]) -> str:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {msgspec.json.encode(v).decode()}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


async def _one(
    bootstrap: str, tansu: bool, workers: int, events: int, work_us: int, tmp: Path, broker_pid: int | None = None
) -> dict[str, Any]:
    kafka: dict[str, Any] = {"bootstrap_servers": bootstrap, "topic_prefix": f"scale-{uuid.uuid4().hex[:8]}."}
    if tansu:
        kafka.update(TANSU_SETTINGS)
    data: dict[str, Any] = {"bus": {"backend": "kafka", "partitions": PARTITIONS}, "kafka": kafka}
    config = tmp / f"w{workers}.toml"
    config.write_text(_toml(data))
    out = tmp / f"w{workers}.out"
    env = {**os.environ, "KAFKAWORKERS_OUT": str(out), "KAFKAWORKERS_WORK_US": str(work_us)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    # The events wait in the topic before any worker starts: the workers' consumption is measured, not the
    # producer's speed (with a noop handler that would be the bottleneck).
    async with Producer(config_from_dict(data)) as producer:
        per = events // 4

        async def emit(start: int) -> None:
            for i in range(start, start + per, 500):
                await producer.emit_many(TOPIC, [{"n": j} for j in range(i, min(start + per, i + 500))])

        await asyncio.gather(*(emit(k * per) for k in range(4)))
    total = per * 4
    err_path = tmp / f"w{workers}.err"
    cmd = [sys.executable, "-m", "agentcli", "run", "agentcli.bench.kafka_workers:bench_app", "--config", str(config)]
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, "--port", "0", "--workers", str(workers), "--log-level", "warning",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    finally:
        os.close(err)  # the child has its own copy
    spawned = time.monotonic()
    try:
        assert proc.stdout is not None
        ready = 0
        try:
            async with asyncio.timeout(60):
                while ready < workers:
                    line = (await proc.stdout.readline()).decode()
                    if not line:
                        break
                    ready += bool(_READY.search(line))
        except TimeoutError:
            pass
        if ready < workers:
            tail = err_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{workers - ready} of {workers} worker(s) were not ready within 60 s:\n{tail}")
        # A worker prints its ready line once its subscription has partitions, after any rebalance its arrival
        # caused: from the last one on, all K workers share the partitions. Events handled before are not timed.
        t0 = time.time()
        cpu0 = _cpu_now(broker_pid)
        ready_s = time.monotonic() - spawned
        # Every line is "<10-digit epoch>.<6 digits>\n", 18 bytes: the file size counts the events handled.
        deadline = time.monotonic() + 600
        for _ in iter(int, 1):
            n = out.stat().st_size // 18 if out.exists() else 0
            if n >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Only {n} of {total} events were handled within 600 s.")
            await asyncio.sleep(0.2 if n < total * 0.9 else 0.02)
        cpu = _cpu_use(cpu0, broker_pid)
        stamps = [float(x) for x in out.read_text().split()]
    finally:
        await _stop(proc, err_path)
    timed = [t for t in stamps if t > t0]
    last = max(stamps)
    return {
        "workers": workers,
        "events": total,
        "handled": len(stamps),
        "timed_events": len(timed),
        "seconds": round(last - t0, 3),
        "first_event_after_s": round(min(stamps) - t0, 3),
        # None when every event was handled before the last worker was ready (a loaded machine, few events).
        "events_per_s": round(len(timed) / (last - t0)) if timed and last > t0 else None,
        "work_us": work_us,
        "ready_after_s": round(ready_s, 3),
        # How busy the machine (and the broker, when started here) was while the events were handled: with
        # every core busy, more workers cannot go faster on this machine, whatever the bus does.
        **cpu,
    }


async def _stop(proc: asyncio.subprocess.Process, err_path: Path, grace_s: float = 60.0) -> None:
    """SIGTERM the supervisor (it forwards it; the workers drain and leave the group), bounded: a run that does
    not stop within ``grace_s`` is killed and reported, rather than hanging the benchmark or its test."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
            return
    except TimeoutError:
        proc.kill()  # the workers have their own session; they notice the supervisor is gone and drain
        await proc.wait()
    tail = (await asyncio.to_thread(err_path.read_text, errors="replace"))[-2000:]
    raise RuntimeError(f"The workers did not stop within {grace_s:g} s of SIGTERM:\n{tail}")


async def run_scaling(
    bootstrap: str | None, workers: int, events: int, work_us: int, *, tansu: bool | None = None
) -> list[dict[str, Any]]:
    """1 worker, then ``workers`` workers, on the same broker; a Tansu broker is started without ``bootstrap``.
    ``tansu`` applies the test broker's client settings (default: when the broker was started here)."""
    from .tansu import TansuBroker

    broker = None if bootstrap else await asyncio.to_thread(TansuBroker().start)  # it polls the port with time.sleep
    limits = broker is not None if tansu is None else tansu
    try:
        where = bootstrap or (broker.bootstrap if broker else "")
        with tempfile.TemporaryDirectory(prefix="agentcli-scale-") as tmp:
            pid = broker.proc.pid if broker is not None and broker.proc is not None else None
            return [await _one(where, limits, k, events, work_us, Path(tmp), pid) for k in (1, workers)]
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentcli.bench.kafka_workers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers to use (default: start a Tansu broker)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes to compare with one (default 2)")
    parser.add_argument(
        "--events", type=int, default=20_000, help="events per run (default 20000; more with --work-us 0)"
    )
    parser.add_argument("--tansu-settings", action="store_true", help="with --bootstrap: the broker is Tansu")
    parser.add_argument("--work-us", type=int, default=500, help="CPU µs per event in the handler (default 500)")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.events < 4 or args.work_us < 0:
        parser.error("--workers must be >= 2, --events >= 4 and --work-us >= 0.")
    tansu = True if args.tansu_settings else None
    rows = asyncio.run(run_scaling(args.bootstrap, args.workers, args.events, args.work_us, tansu=tansu))
    for row in rows:
        print(json.dumps(row))
    one, many = rows[0]["events_per_s"], rows[-1]["events_per_s"]
    if one and many:
        print(json.dumps({"ratio": round(many / one, 2), "workers": args.workers}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
