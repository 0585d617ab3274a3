"""Worker processes on a real Kafka-protocol broker (Tansu): crashes, SIGTERM, members joining and leaving.

Every test runs ``agentcli run tests/workerapp.py:runner`` as real subprocesses in one consumer group, emits
events through :class:`agentflow.Producer` (or HTTP ingest / ``agentcli emit``), and counts from the workers'
output file which event ids were handled, how often, and by which process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from worker_processes import (
    APP,
    MAX_IN_FLIGHT,
    ROOT,
    WorkerProcess,
    emit_all,
    emit_until,
    handled_lines,
    kafka_config,
    post_events,
    report,
    start_worker,
    until,
)

from agentcli.ops.run import restart_delay_s

if TYPE_CHECKING:
    from kafka_broker import TansuBroker


@pytest.mark.slow
async def test_kill_9_one_of_two_workers_mid_run(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    config, data = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    a = await start_worker(tmp_path, config, out, sleep_ms=20)
    b = await start_worker(tmp_path, config, out, sleep_ms=20)
    try:
        sending = asyncio.ensure_future(emit_all(data, 20_000, pause_s=0.01))
        await until(lambda: sum(handled_lines(out).values()) >= 5000, 60, "5000 handled events")
        by_pid = Counter(line.split()[1] for line in out.read_text().splitlines())
        assert by_pid[str(a.proc.pid)] > 0 and by_pid[str(b.proc.pid)] > 0, "both workers must be handling events"
        a.proc.kill()  # SIGKILL: no drain, no commit
        assert await a.wait() == -signal.SIGKILL
        sent = await sending
        await until(lambda: set(handled_lines(out)) >= set(sent), 90, "every event handled by the survivor")
        b.signal(signal.SIGTERM)
        assert await b.wait() == 0, b.stderr()
    finally:
        await a.kill()
        await b.kill()
    lost, dups = report("kill -9", sent, handled_lines(out))
    assert lost == 0
    # Redelivered: what the killed worker had taken but whose offsets were not committed yet — at most its
    # in-flight window plus what it finished within one commit interval (20 ms here).
    assert dups <= 2 * MAX_IN_FLIGHT, dups


@pytest.mark.slow
async def test_sigterm_during_load_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    config, data = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    # The supervisor: one SIGTERM to it reaches both children.
    pair = await start_worker(tmp_path, config, out, workers=2, sleep_ms=20)
    try:
        sent = await emit_all(data, 20_000)
        await until(lambda: sum(handled_lines(out).values()) >= 3000, 60, "3000 handled events")
        pair.signal(signal.SIGTERM)
        assert await pair.wait() == 0, pair.stderr()
        before = handled_lines(out)
        assert len(before) < len(sent), "the test must signal while work is still pending"
        rest = await start_worker(tmp_path, config, out)  # a fresh worker picks up from the committed offsets
        await until(lambda: set(handled_lines(out)) >= set(sent), 90, "every event handled")
        rest.signal(signal.SIGTERM)
        assert await rest.wait() == 0, rest.stderr()
    finally:
        await pair.kill()
    lost, dups = report("SIGTERM", sent, handled_lines(out))
    assert lost == 0 and dups == 0
    assert pair.stderr().count("got SIGTERM; draining") == 2


@pytest.mark.slow
async def test_a_second_worker_joins_and_leaves_under_load(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    config, data = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    a = await start_worker(tmp_path, config, out)
    b: WorkerProcess | None = None
    # Events keep coming until the second worker has joined, handled some and left, and the first has handled
    # more after that: both rebalances happen under load however slow or loaded the machine is.
    stop = asyncio.Event()
    sending = asyncio.ensure_future(emit_until(data, stop))
    try:
        await until(lambda: sum(handled_lines(out).values()) >= 3000, 60, "3000 handled events")
        b = await start_worker(tmp_path, config, out)
        b_pid = b.proc.pid
        await until(lambda: str(b_pid) in out.read_text(), 30, "the new member handling events")
        b.signal(signal.SIGTERM)
        assert await b.wait() == 0, b.stderr()
        left_at = sum(handled_lines(out).values())
        await until(lambda: sum(handled_lines(out).values()) >= left_at + 2000, 60, "handling after the leave")
        stop.set()
        sent = await sending
        await until(lambda: set(handled_lines(out)) >= set(sent), 90, "every event handled")
        a.signal(signal.SIGTERM)
        assert await a.wait() == 0, a.stderr()
    finally:
        stop.set()
        await asyncio.gather(sending, return_exceptions=True)
        await a.kill()
        if b is not None:
            await b.kill()
    lost, dups = report("join and leave", sent, handled_lines(out))
    by_pid = Counter(line.split()[1] for line in out.read_text().splitlines())
    print(f"handled per process: {dict(by_pid)}")
    assert lost == 0
    assert by_pid[str(b_pid)] > 0


async def test_http_ingest_and_agentcli_emit_into_a_kafka_worker(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    config, _ = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    w = await start_worker(tmp_path, config, out)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            via_http = await post_events(http, w.urls[0], [{"n": n} for n in range(200)], batch=50)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentcli", "emit", "--topic", "jobs", "--data", '{"x": 1}', "--count", "300",
            "--batch", "100", "--bootstrap", kafka_broker.bootstrap, "--config", str(config),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        via_kafka = stdout.decode().split()
        assert len(via_kafka) == 300
        sent = via_http + via_kafka
        await until(lambda: set(handled_lines(out)) >= set(sent), 60, "every event handled")
        w.signal(signal.SIGTERM)
        assert await w.wait() == 0, w.stderr()
    finally:
        await w.kill()
    lost, dups = report("ingest + emit", sent, handled_lines(out))
    assert lost == 0 and dups == 0


async def test_supervisor_restarts_a_crashed_worker_with_backoff_and_leaves_a_clean_exit_alone(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    config, data = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    sup = await start_worker(tmp_path, config, out, workers=2)
    try:
        first, other = sup.pids
        os.kill(first, signal.SIGKILL)  # a crash: restarted after 1 s
        await sup.wait_ready(3)
        flat = " ".join(sup.stderr().split())
        crashed = re.search(
            rf"worker (\d) \(pid {first}\) was killed by SIGKILL; restarting it in 1\.0 s \(1 crash in", flat
        )
        assert crashed is not None, sup.stderr()
        index = crashed.group(1)
        second = sup.pids[2]
        assert f"worker {index} restarted (pid {second})" in " ".join(sup.stderr().split())
        os.kill(second, signal.SIGKILL)  # crashed again soon after: the delay doubles
        await sup.wait_ready(4)
        assert f"worker {index} (pid {second}) was killed by SIGKILL; restarting it in 2.0 s (2 crashes in a row)" in (
            " ".join(sup.stderr().split())
        )
        sent = await emit_all(data, 500)  # the restarted unit handles events
        await until(lambda: set(handled_lines(out)) >= set(sent), 60, "every event handled")
        os.kill(other, signal.SIGTERM)  # a clean exit of one worker: reported, not restarted, the unit stays up
        await until(lambda: "exited cleanly" in sup.stderr(), 60, "the clean exit")
        assert f"(pid {other}) exited cleanly (code 0); it is not restarted." in " ".join(sup.stderr().split())
        await asyncio.sleep(1.5)
        assert sup.proc.returncode is None and len(sup.pids) == 4, sup.stderr()
        sup.signal(signal.SIGTERM)
        code = await sup.wait(timeout_s=60)
    finally:
        await sup.kill()
    assert code == 0, sup.stderr()
    assert "exited unexpectedly" not in sup.stderr()


async def test_supervisor_stops_when_a_worker_cannot_start_with_the_config(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    config, _ = kafka_config(tmp_path, kafka_broker)
    env = {"WORKERAPP_OUT": str(tmp_path / "x"), "AGENTFLOW_HTTP_TOKEN": ""}  # ingest beyond loopback, no token
    sup = await WorkerProcess.start(
        tmp_path, APP, "--config", str(config), "--workers", "2", "--host", "0.0.0.0", "--port", "0", env=env
    )
    try:
        code = await sup.wait(timeout_s=60)
    finally:
        await sup.kill()
    assert code == 2, sup.stderr()
    assert "which a restart would repeat; stopping the rest" in " ".join(sup.stderr().split())
    assert "restarting it" not in sup.stderr()


def test_restart_delay_doubles_and_is_capped() -> None:
    assert [restart_delay_s(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.slow
async def test_sigterm_to_one_of_two_workers_with_long_handlers_reruns_nothing_on_the_survivor(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    # Handlers run 5 s, longer than rebalance_grace_s (2 s in the test settings): when one worker leaves, the
    # survivor's revoke cannot wait its running events out. It gets its own partitions back in the next
    # assignment, and must not fetch and run those events a second time while the first run goes on.
    config, data = kafka_config(tmp_path, kafka_broker)
    out = tmp_path / "handled.txt"
    a = await start_worker(tmp_path, config, out, sleep_ms=5000)
    b = await start_worker(tmp_path, config, out, sleep_ms=5000)
    try:
        # Keyless events of one write share a partition (the sticky partitioner): writes of 10 spread the 200
        # events over every partition, so both workers have handlers running.
        sent = await emit_all(data, 200, batch=10)
        await asyncio.sleep(1.5)  # both workers are inside their first handlers
        a.signal(signal.SIGTERM)  # a drains what it runs, gives back what it had not started, and leaves
        assert await a.wait() == 0, a.stderr()
        await until(lambda: set(handled_lines(out)) >= set(sent), 90, "every event handled")
        b.signal(signal.SIGTERM)
        assert await b.wait() == 0, b.stderr()
    finally:
        await a.kill()
        await b.kill()
    lost, dups = report("long handlers, SIGTERM to one of two", sent, handled_lines(out))
    per_process = Counter(tuple(line.split()) for line in out.read_text().splitlines())
    print(f"handled per process: {dict(Counter(pid for _, pid in per_process))}")
    # The scenario happened: the survivor had events running across the rebalance, past the grace.
    assert "still running after" in b.stderr(), b.stderr()
    assert lost == 0
    assert max(per_process.values()) == 1, "the survivor ran an event twice"
    assert dups == 0
