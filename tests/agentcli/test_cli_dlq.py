"""``agentcli dlq list|replay``: against a worker's HTTP endpoints (memory bus) and against Kafka's .dlq topics."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner

from agentcli.main import app
from agentflow import Context, Event, Reject, Runner, config_from_dict

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory
    from kafka_broker import TansuBroker

ROOT = REPO_ROOT
cli = CliRunner()


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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list"], "give --url"),
        (["list", "--url", "http://127.0.0.1:1", "--bootstrap", "127.0.0.1:2"], "give --url"),
        (["list", "--url", "nope"], "is not http://host:port"),
        (["list", "--url", "http://127.0.0.1:1", "--limit", "0"], "--limit"),
        (["list", "--url", "http://127.0.0.1:1", "--limit", "1001"], "--limit"),
        (["list", "--url", "http://127.0.0.1:1", "--cursor", "nope!"], "not one a dead-letter listing returned"),
        (["list", "--bootstrap", "127.0.0.1:1", "--cursor", "bm9wZQ"], "not one a dead-letter listing returned"),
        (["replay", "--url", "http://127.0.0.1:1"], "say which dead letters"),
        (["replay", "--url", "http://127.0.0.1:1", "--id", "x", "--all"], "not both"),
    ],
)
def test_bad_flags_exit_2(args: list[str], expected: str) -> None:
    result = cli.invoke(app, ["dlq", *args])
    out = " ".join(result.output.replace("│", " ").split())  # rich boxes the message, wrapped at words
    assert result.exit_code == 2, out
    assert "Usage: agentcli dlq" in out and expected in out


def picky_runner(runner: Runner, fixed: list[bool], handled: list[int]) -> Runner:
    @runner.agent("orders")
    async def picky(event: Event, ctx: Context) -> None:
        if not fixed and event.payload % 2:
            raise Reject("odd numbers are not accepted yet")
        handled.append(event.payload)

    return runner


async def test_list_and_replay_through_a_worker(
    make_runner: RunnerFactory, eventually: Eventually, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DLQ_TEST_TOKEN", "dlq-token")
    fixed: list[bool] = []
    handled: list[int] = []
    runner = picky_runner(
        make_runner(
            {"monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True, "token_env": "DLQ_TEST_TOKEN"}}
        ),
        fixed,
        handled,
    )
    async with runner:
        assert runner.http_address is not None
        url = "http://{}:{}".format(*runner.http_address)
        await runner.emit_many("orders", list(range(6)))
        await eventually(lambda: runner.statistics().dead_lettered == 3, what="3 dead letters")

        code, _, err = await agentcli("dlq", "list", "--url", url, env={"DLQ_TEST_TOKEN": ""})
        assert code == 1 and "answered 401" in err
        auth = ("--token-env", "DLQ_TEST_TOKEN")
        code, out, err = await agentcli("dlq", "list", "--url", url, "--json", *auth)
        assert code == 0, err
        page = msgspec.json.decode(out)
        letters: list[dict[str, Any]] = page["dead_letters"]
        assert page["count"] == 3 and page["next_cursor"] is None
        assert [d["event"]["payload"] for d in letters] == [1, 3, 5]
        assert {d["reason"] for d in letters} == {"rejected"}
        code, out, _ = await agentcli("dlq", "list", "--url", url, *auth)
        assert code == 0 and "3 dead letter(s)" in out and "rejected" in out and letters[0]["id"] in out

        fixed.append(True)
        code, out, err = await agentcli("dlq", "replay", "--url", url, "--id", letters[0]["id"], *auth)
        assert code == 0 and "replayed 1 dead letter(s)" in out, err
        code, out, err = await agentcli("dlq", "replay", "--url", url, "--id", "no-such-id", *auth)
        assert code == 1 and "replayed 0" in out and "not in the queue" in err
        code, out, _ = await agentcli("dlq", "replay", "--url", url, "--all", *auth)
        assert code == 0 and "replayed 2 dead letter(s)" in out
        await eventually(lambda: len(handled) == 6, what="every event handled")
        assert await runner.dlq.list() == []
    assert sorted(handled) == list(range(6))


async def test_list_and_replay_on_kafka(kafka_broker: TansuBroker, eventually: Eventually, tmp_path: Path) -> None:
    from kafka_broker import kafka_settings

    prefix = f"dlqcli{os.urandom(3).hex()}."
    config_path = tmp_path / "kafka.toml"
    settings = kafka_settings(kafka_broker.bootstrap, prefix=prefix)
    toml = '[bus]\nbackend = "kafka"\npartitions = 2\n[kafka]\n' + "".join(
        f"{k} = {msgspec.json.encode(v).decode()}\n" for k, v in settings.items()
    )
    config_path.write_text(toml)
    fixed: list[bool] = []
    handled: list[int] = []
    config = config_from_dict({"bus": {"backend": "kafka", "partitions": 2}, "kafka": settings})
    async with picky_runner(Runner(config), fixed, handled) as runner:
        await runner.emit_many("orders", list(range(6)))
        await eventually(lambda: runner.statistics().dead_lettered == 3, timeout_s=30, what="3 dead letters")
        boot = ("--bootstrap", kafka_broker.bootstrap, "--config", str(config_path))
        code, out, err = await agentcli("dlq", "list", "--json", *boot)
        assert code == 0, err
        letters = msgspec.json.decode(out)["dead_letters"]
        assert sorted(d["event"]["payload"] for d in letters) == [1, 3, 5]
        assert {d["agent"] for d in letters} == {"picky"}
        fixed.append(True)
        code, out, err = await agentcli("dlq", "replay", "--topic", "orders", *boot)
        assert code == 0 and "replayed 3 dead letter(s)" in out, err
        await eventually(lambda: len(handled) == 6, timeout_s=30, what="the replayed events handled")
        code, out, _ = await agentcli("dlq", "list", "--json", *boot)
        assert code == 0 and msgspec.json.decode(out)["dead_letters"] == []
    assert sorted(handled) == list(range(6))


async def test_an_event_failing_again_after_a_replay_is_listed_and_pages_on_kafka(
    kafka_broker: TansuBroker, eventually: Eventually, tmp_path: Path
) -> None:
    from kafka_broker import kafka_settings

    prefix = f"dlqagain{os.urandom(3).hex()}."
    config_path = tmp_path / "kafka.toml"
    settings = kafka_settings(kafka_broker.bootstrap, prefix=prefix)
    config_path.write_text(
        '[bus]\nbackend = "kafka"\npartitions = 2\n[kafka]\n'
        + "".join(f"{k} = {msgspec.json.encode(v).decode()}\n" for k, v in settings.items())
    )
    config = config_from_dict(
        {
            "bus": {"backend": "kafka", "partitions": 2},
            "kafka": settings,
            "monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True},
        }
    )
    handled: list[int] = []
    async with picky_runner(Runner(config), [], handled) as runner:
        assert runner.http_address is not None
        url = ("--url", "http://{}:{}".format(*runner.http_address))
        boot = ("--bootstrap", kafka_broker.bootstrap, "--config", str(config_path))
        await runner.emit_many("orders", [1, 3, 5])
        await eventually(lambda: runner.statistics().dead_lettered == 3, timeout_s=30, what="3 dead letters")
        code, out, err = await agentcli("dlq", "list", "--json", *boot)
        assert code == 0, err
        first = {d["event_id"]: d["id"] for d in msgspec.json.decode(out)["dead_letters"]}
        assert len(first) == 3 and not set(first) & set(first.values())

        code, out, err = await agentcli("dlq", "replay", *(a for i in first.values() for a in ("--id", i)), *boot)
        assert code == 0 and "replayed 3 dead letter(s)" in out, err
        await eventually(lambda: runner.statistics().dead_lettered == 6, timeout_s=30, what="all three fail again")
        for where in (boot, url):
            code, out, err = await agentcli("dlq", "list", "--json", *where)
            assert code == 0, err
            again = {d["event_id"]: d["id"] for d in msgspec.json.decode(out)["dead_letters"]}
            assert set(again) == set(first), f"the events that failed again are listed ({where[0]})"
            assert not set(again.values()) & set(first.values()), "each failure is a new dead letter"

            # Newest first, two per page: the cursor printed by one page fetches the rest.
            code, out, err = await agentcli("dlq", "list", "--json", "--newest", "--limit", "2", *where)
            assert code == 0, err
            page = msgspec.json.decode(out)
            assert page["count"] == 2 and page["next_cursor"]
            code, out, err = await agentcli("dlq", "list", "--cursor", page["next_cursor"], "--limit", "2", *where)
            assert code == 0, err
            assert "1 dead letter(s)" in out and "more:" not in out
            rest = [i for i in again.values() if i not in {d["id"] for d in page["dead_letters"]}]
            assert len(rest) == 1 and rest[0] in out
            code, out, err = await agentcli("dlq", "list", "--limit", "1", *where)
            assert code == 0 and "more: add --cursor " in out, err
            code, out, err = await agentcli("dlq", "list", "--oldest", "--cursor", page["next_cursor"], *where)
            assert code == 2 and "pages newest first" in " ".join(err.replace("│", " ").split()), err
    assert handled == []
