"""Every command reads durations, rates and sizes the same way (``500us``, ``60/m``, ``64KiB``), through one
parser: :mod:`agentcli.parse`."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import pytest
import typer
from conftest import REPO_ROOT
from typer.testing import CliRunner

from agentcli.main import app
from agentcli.parse import ParseError, option, parse_duration, parse_rate, parse_size
from agentflow import Context, Event

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

ROOT = REPO_ROOT


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500us", 500e-6), ("500µs", 500e-6), ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1.5m", 90.0),
        ("1h", 3600.0), ("30", 30.0), (" 10 S ", 10.0), (".5s", 0.5), (2.5, 2.5),
    ],
)  # fmt: skip
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "per_s"),
    [("500/s", 500.0), ("60/m", 1.0), ("10/h", 10 / 3600), ("90/min", 1.5), ("2.5/sec", 2.5), ("20", 20.0),
     (" 10 / s ", 10.0), (7, 7.0)],
)  # fmt: skip
def test_rates(text: str | float, per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("64KiB", 65536), ("1MiB", 1 << 20), ("1MB", 1_000_000), ("2gb", 2_000_000_000),
     ("1.5KiB", 1536), ("3 kb", 3000), (4096, 4096)],
)  # fmt: skip
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_duration, "3x", "is not a duration"), (parse_duration, "0s", "not a positive duration"),
        (parse_duration, "-1s", "is not a duration"), (parse_duration, "", "is not a duration"),
        (parse_rate, "fast", "is not a rate"), (parse_rate, "0/s", "not a positive rate"),
        (parse_rate, "10/d", "is not a rate"), (parse_size, "1TB", "is not a size"),
        (parse_size, "0", "whole positive number"), (parse_size, "1.5", "whole positive number"),
    ],
)  # fmt: skip
def test_bad_values_say_what_a_good_one_looks_like(parse: object, text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(text)  # type: ignore[operator]


def test_zero_duration_where_zero_means_none() -> None:
    assert parse_duration("0s", allow_zero=True) == 0.0


def test_option_turns_a_parse_error_into_a_usage_error_of_its_flag() -> None:
    assert option(parse_rate, "60/m", "--rate") == 1.0
    with pytest.raises(typer.BadParameter) as exc:
        option(parse_rate, "fast", "--rate")
    assert exc.value.param_hint == "'--rate'" and "is not a rate" in exc.value.message


def test_benchmark_takes_a_duration_in_microseconds() -> None:
    # The load tester always took "500us"; the benchmark refused it ("is not a duration").
    result = CliRunner().invoke(app, ["benchmark", "--scenario", "noop", "--duration", "500us"])
    out = " ".join(result.output.split())
    assert "is not a duration" not in out
    assert result.exit_code == 0, out
    assert "0.0005 s" in out


async def test_emit_takes_a_rate_per_minute(make_runner: RunnerFactory, eventually: Eventually) -> None:
    # The load tester always took "60/m"; emit refused it ("is not a rate").
    seen: list[Event] = []
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True}})

    @runner.agent("jobs")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    async with runner:
        assert runner.http_address is not None
        url = "http://{}:{}".format(*runner.http_address)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentcli", "emit", "--topic", "jobs", "--data", "1", "--count", "3",
            "--rate", "600/m", "--url", url,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        await eventually(lambda: len(seen) == 3, what="3 events")
    assert sorted(out.decode().split()) == sorted(e.id for e in seen)


def test_loadtest_and_mock_llm_read_the_same_units() -> None:
    cli = CliRunner()
    # The load tester refuses a bad rate with the shared parser's sentence (exit 2, before anything runs).
    result = cli.invoke(app, ["loadtest", "--rate", "fast", "--duration", "1s"])
    assert result.exit_code == 2 and "is not a rate" in " ".join(result.output.split())
    result = cli.invoke(app, ["mock-llm", "--max-request-bytes", "1TB"])
    assert result.exit_code == 2 and "is not a size" in " ".join(result.output.split())
    result = cli.invoke(app, ["mock-llm", "--max-request-bytes", "512"])
    assert result.exit_code == 2 and "under 1KiB" in " ".join(result.output.split())
