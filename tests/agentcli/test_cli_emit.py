"""``agentcli emit``: usage errors, the drift-free schedule, and round trips into a worker's HTTP ingest."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import typer
from conftest import REPO_ROOT
from typer.testing import CliRunner

from agentcli.main import app
from agentcli.ops.emit import read_payloads, schedule
from agentflow import Context, Event, Runner

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

ROOT = REPO_ROOT
cli = CliRunner()


# ---- pure parts -------------------------------------------------------------------------------------------------


def test_schedule_is_anchored_to_the_start_so_it_never_drifts() -> None:
    # Fake clock: 100 events/s. Whatever the sends cost, event i is due at start + i/100.
    start = 1000.0
    assert schedule(1000, 100.0, start, start) == (1, pytest.approx(start + 0.01))
    assert schedule(1000, 100.0, start, start + 0.5)[0] == 51  # events 0..50 are due at 0.5 s
    # A send that stalled for 2 s: everything due is released at once, the next is still on the grid.
    due, next_at = schedule(1000, 100.0, start, start + 2.0049)
    assert due == 201 and next_at == pytest.approx(start + 2.01)
    assert schedule(1000, 100.0, start, start + 60)[0] == 1000  # never more than count
    # Simulate a sender whose every send costs 3 ms and that sleeps until next_at: after 10 s of fake time,
    # exactly 1000 events have gone out (no accumulated drift from summing sleeps).
    now, sent = start, 0
    while sent < 1000:
        due, next_at = schedule(1000, 100.0, start, now)
        if due > sent:
            sent = due
            now += 0.003
        else:
            now = next_at
    assert now == pytest.approx(start + 9.99 + 0.003, abs=1e-6)
    assert schedule(5, None, start, start) == (5, start)  # no rate: everything at once


def test_read_payloads_names_the_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    f.write_text('{"a": 1}\n\n[1, 2]\n{"broken": \n"ok"\n')
    with pytest.raises(typer.BadParameter, match="line 4 is not valid JSON"):
        read_payloads(None, f)
    f.write_text('{"a": 1}\n\n[1, 2]\n"x"\n')
    assert read_payloads(None, f) == [{"a": 1}, [1, 2], "x"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--url", "http://127.0.0.1:1"], "--data JSON or --file"),
        (["--data", "1", "--file", "x.jsonl", "--url", "http://127.0.0.1:1"], "give --data JSON"),
        (["--data", "1"], "--url http://host:port"),
        (["--data", "1", "--url", "http://127.0.0.1:1", "--bootstrap", "127.0.0.1:2"], "give --url"),
        (["--data", "{nope", "--url", "http://127.0.0.1:1"], "not valid JSON"),
        (["--data", "1", "--url", "127.0.0.1:1"], "is not http://host:port"),
        (["--data", "1", "--url", "http://127.0.0.1:1", "--rate", "fast"], "is not a rate"),
        (["--data", "1", "--url", "http://127.0.0.1:1", "--count", "0"], "--count"),
        (["--file", "/no/such.jsonl", "--url", "http://127.0.0.1:1"], "cannot read"),
    ],
)
def test_bad_flags_exit_2(args: list[str], expected: str) -> None:
    result = cli.invoke(app, ["emit", "--topic", "t", *args])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "Usage: agentcli emit" in out and expected in out


def test_bad_line_in_file_exits_2_with_line_number_and_sends_nothing(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    f.write_text("1\n2\n{oops}\n")
    # The URL points nowhere: a send would fail with exit 1, so exit 2 proves nothing was attempted.
    result = cli.invoke(app, ["emit", "--topic", "t", "--file", str(f), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "line 3 is not valid JSON" in " ".join(result.output.split())


# ---- round trips over real HTTP ----------------------------------------------------------------------------------


async def agentcli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentcli", *args,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def worker(make_runner: RunnerFactory, seen: list[Event], *, delay_s: float = 0.0, **runner_cfg: Any) -> Runner:
    runner = make_runner(
        {"monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True}, "runner": runner_cfg}
    )

    @runner.agent("jobs")
    async def record(event: Event, ctx: Context) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        seen.append(event)

    return runner


def url_of(runner: Runner) -> str:
    assert runner.http_address is not None
    return "http://{}:{}".format(*runner.http_address)


async def test_emit_a_file_round_trip(tmp_path: Path, make_runner: RunnerFactory, eventually: Eventually) -> None:
    seen: list[Event] = []
    runner = worker(make_runner, seen)
    f = tmp_path / "events.jsonl"
    f.write_text("".join(f'{{"n": {n}}}\n' for n in range(25)))
    async with runner:
        code, out, err = await agentcli(
            "emit", "--topic", "jobs", "--file", str(f), "--key", "k", "--batch", "10", "--url", url_of(runner)
        )
        assert code == 0, err
        ids = out.split()
        await eventually(lambda: len(seen) == 25, what="25 events")
    assert ids == [e.id for e in seen]  # one key: handled in the order emitted
    assert [e.payload["n"] for e in seen] == list(range(25))
    assert all(e.key == "k" for e in seen)
    assert "emitted 25 events to 'jobs'" in err


async def test_emit_count_and_rate_cycle_the_data_in_paced_batches(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    seen: list[Event] = []
    runner = worker(make_runner, seen)
    async with runner:
        code, out, err = await agentcli(
            "emit", "--topic", "jobs", "--data", '{"x": 1}', "--count", "12", "--rate", "40/s", "--no-ids",
            "--url", url_of(runner),
        )  # fmt: skip
        assert code == 0, err
        await eventually(lambda: len(seen) == 12, what="12 events")
    assert out == ""
    assert all(e.payload == {"x": 1} for e in seen)
    # Events of one request share a timestamp: paced at 40/s, 12 events take several requests.
    assert len({e.created_at for e in seen}) >= 6


async def test_emit_waits_out_429_and_delivers_everything(make_runner: RunnerFactory, eventually: Eventually) -> None:
    seen: list[Event] = []
    runner = worker(make_runner, seen, delay_s=0.002, event_buffer_size=5, worker_pool_size=2,
                    max_concurrent_events=2)  # fmt: skip
    async with runner:
        code, out, err = await agentcli(
            "emit", "--topic", "jobs", "--data", "7", "--count", "16", "--batch", "4", "--url", url_of(runner)
        )
        assert code == 0, err
        await eventually(lambda: len(seen) == 16, what="16 events")
        assert runner.service.ingest.refused.get(429, 0) > 0, "the test must hit backpressure"
    assert sorted(out.split()) == sorted(e.id for e in seen)


async def test_emit_refused_without_token_exits_1(make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMIT_TEST_TOKEN", "right-token")
    runner = make_runner(
        {"monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True, "token_env": "EMIT_TEST_TOKEN"}}
    )

    @runner.agent("jobs")
    async def record(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        args = ("emit", "--topic", "jobs", "--data", "1", "--url", url_of(runner), "--token-env", "EMIT_TEST_TOKEN")
        code, _, err = await agentcli(*args, env={"EMIT_TEST_TOKEN": "wrong"})
        assert code == 1 and "answered 401" in err and "bearer token" in err
        code, out, err = await agentcli(*args)
        assert code == 0 and len(out.split()) == 1
        assert "right-token" not in err


async def test_emit_to_nothing_listening_fails_after_timeout() -> None:
    code, _, err = await agentcli(
        "emit", "--topic", "jobs", "--data", "1", "--url", "http://127.0.0.1:9", "--timeout", "0.5"
    )
    assert code == 1 and "did not accept the events within 0.5 s" in " ".join(err.split())
