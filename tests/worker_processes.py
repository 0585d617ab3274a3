"""Worker processes for the tests: ``agentcli run`` subprocesses and what they handled, on the memory bus and on a
Kafka broker (configs, emitting, waiting, counting losses and duplicates)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from conftest import REPO_ROOT

from agentflow import Producer, config_from_dict

if TYPE_CHECKING:
    from kafka_broker import TansuBroker

ROOT = REPO_ROOT

APP = "tests/workerapp.py:runner"

READY = re.compile(r"\(pid (\d+)\) ready on http://([^:\s]+):(\d+)")

START_TIMEOUT_S = 60.0


class WorkerProcess:
    """``agentcli run ...`` as a real subprocess; stderr goes to a file, stdout is read for the ready line(s)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.urls: list[str] = []
        self.pids: list[int] = []

    @classmethod
    async def start(cls, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        stderr_path = tmp_path / f"worker-{os.urandom(3).hex()}.err"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentcli", "run", *args,
                cwd=ROOT, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        finally:
            os.close(err)
        return cls(proc, stderr_path)

    async def wait_ready(self, workers: int = 1, timeout_s: float = START_TIMEOUT_S) -> list[str]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while len(self.urls) < workers:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"agentcli run exited before it was ready:\n{self.stderr()}")
                m = READY.search(line)
                if m:
                    self.pids.append(int(m.group(1)))
                    self.urls.append(f"http://{m.group(2)}:{m.group(3)}")
        return self.urls

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 60.0) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def post_events(
    http: aiohttp.ClientSession, url: str, payloads: list[Any], *, topic: str = "jobs", batch: int = 100
) -> list[str]:
    """POST the payloads in batches, retrying 429/503 after Retry-After; return every accepted id."""
    ids: list[str] = []
    for i in range(0, len(payloads), batch):
        body = msgspec.json.encode([{"topic": topic, "payload": p} for p in payloads[i : i + batch]])
        while True:
            async with http.post(url + "/v1/events", data=body, headers={"Content-Type": "application/json"}) as r:
                if r.status == 202:
                    ids.extend((await r.json())["ids"])
                    break
                assert r.status in (429, 503), await r.text()
                await asyncio.sleep(min(float(r.headers["Retry-After"]), 0.05))
    return ids


def handled_lines(path: Path) -> Counter[str]:
    """How many times each event id was handled, from the workerapp's output file."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line)


MAX_IN_FLIGHT = 256  # runner.max_concurrent_events of each worker: the in-flight window

PARTITIONS = 4


def kafka_config(tmp_path: Path, broker: TansuBroker, **kafka: Any) -> tuple[Path, dict[str, Any]]:
    """A TOML file for the workers and the same settings as a dict for the test's Producer (``kafka``
    overrides [kafka] settings)."""
    from kafka_broker import kafka_settings

    data: dict[str, Any] = {
        "bus": {"backend": "kafka", "partitions": PARTITIONS},
        "runner": {"max_concurrent_events": MAX_IN_FLIGHT, "shutdown_grace_s": 15.0},
        "kafka": kafka_settings(broker.bootstrap, prefix=f"proc{os.urandom(4).hex()}.", **kafka),
    }
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {msgspec.json.encode(v).decode()}" for k, v in table.items()]
    path = tmp_path / "kafka.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, data


async def start_worker(
    tmp_path: Path, config: Path, out: Path, *extra: str, workers: int = 1, sleep_ms: int = 1
) -> WorkerProcess:
    # sleep_ms=20 with 64 handler slots: ~3k events/s per worker, so a signal or a kill lands mid-backlog.
    w = await WorkerProcess.start(
        tmp_path, APP, "--config", str(config), "--port", "0", "--workers", str(workers), *extra,
        env={"WORKERAPP_OUT": str(out), "WORKERAPP_SLEEP_MS": str(sleep_ms)},
    )  # fmt: skip
    await w.wait_ready(workers)
    return w


async def emit_all(data: dict[str, Any], n: int, *, batch: int = 500, pause_s: float = 0.0) -> list[str]:
    ids: list[str] = []
    async with Producer(config_from_dict(data)) as producer:
        for i in range(0, n, batch):
            ids += await producer.emit_many("jobs", [{"n": j} for j in range(i, min(n, i + batch))])
            if pause_s:
                await asyncio.sleep(pause_s)
    return ids


async def emit_until(
    data: dict[str, Any], stop: asyncio.Event, *, batch: int = 100, pause_s: float = 0.05
) -> list[str]:
    """Emit batches until ``stop`` is set: a steady load whatever the machine's speed (a fixed count can be
    handled completely before a slow-starting worker joins). Returns every id emitted."""
    ids: list[str] = []
    async with Producer(config_from_dict(data)) as producer:
        while not stop.is_set():
            n = len(ids)
            ids += await producer.emit_many("jobs", [{"n": j} for j in range(n, n + batch)])
            await asyncio.sleep(pause_s)
    return ids


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def report(name: str, sent: list[str], handled: Counter[str]) -> tuple[int, int]:
    lost = len(set(sent) - set(handled))
    dups = sum(handled.values()) - len(handled)
    print(f"\n{name}: sent {len(sent)}, handled {sum(handled.values())}, lost {lost}, duplicates {dups}")
    return lost, dups
