"""``agentcli profile-report``, ``cost-report`` and ``profile`` end to end: from a benchmark report with a
deliberately saturated agent, from a running worker, and from the cost history in a state backend."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import REPO_ROOT
from state_env import PASSWORD_ENV, StateEnv
from system_packages import ensure
from typer.testing import CliRunner
from worker_processes import WorkerProcess, post_events

from agentcli import runtime
from agentcli.main import app
from agentflow import ProfileReport

cli = CliRunner()
APP = "insight_app:make_runner"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mock_llm() -> Iterator[str]:
    """``agentcli mock-llm`` in its own process: the tests' benchmarks run in this one, on their own loop."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcli", "mock-llm", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "agentcli mock-llm did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def write_config(path: Path, llm_url: str | None, **extra: str) -> Path:
    lines = ["[agents.research]", "concurrency = 1", "[agents.notify]", "concurrency = 8"]
    if llm_url is not None:
        lines += [
            "[llm.mock]", f'base_url = "{llm_url}"', 'default_model = "m"', "[llm.mock.cache]", "enabled = false",
            '[llm.mock.prices."m"]', "input_usd_per_mtok = 1.0", "output_usd_per_mtok = 2.0",
        ]  # fmt: skip
    for table, body in extra.items():
        lines += [f"[{table}]", body]
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> str:
    runtime.ARGV = list(args)
    try:
        result = cli.invoke(app, list(args))
    finally:
        runtime.ARGV = None
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory: pytest.TempPathFactory, mock_llm: str) -> Path:
    """A benchmark of ``research`` (one slot, 3 ms an event) flooded with 200 events."""
    out = tmp_path_factory.mktemp("insight")
    config = write_config(out / "app.toml", mock_llm)
    invoke("benchmark", "--app", APP, "--app-dir", str(REPO_ROOT / "tests"), "--agent", "research",
           "--config", str(config), "--mode", "throughput", "--requests", "200",
           "--json", str(out / "bench.json"))  # fmt: skip
    return out / "bench.json"


def row(report: ProfileReport, kind: str, name: str) -> Any:
    return next(r for r in report.rows if r.kind == kind and r.name == name)


def test_a_benchmark_with_a_saturated_agent_is_flagged_and_gets_the_concurrency_recommendation(
    bench_report: Path,
) -> None:
    out = invoke("profile-report", "--from", str(bench_report), "--json")
    report = msgspec.json.decode(out, type=ProfileReport)
    research = row(report, "agent", "research")
    assert "BOTTLENECK" in [f.flag for f in research.flags]
    assert research.utilisation > 0.85 and research.calls == 200
    settings = {r.setting: r for r in report.recommendations}
    assert "[agents.research] concurrency" in settings
    assert "(1 now)" in settings["[agents.research] concurrency"].text
    # notify's 200 deterministic calls all missed the (disabled) cache: the cache recommendation, with the figure
    cache = settings["[llm.mock.cache] enabled"]
    assert cache.name == "notify" and "0% cache hits on 200 deterministic calls" in cache.text
    assert row(report, "agent", "audit").flags == []  # no problem, no flag
    assert {r.name for r in report.recommendations} == {"research", "notify"}
    provider = row(report, "provider", "mock/m")
    assert provider.calls == 200 and provider.cost_usd > 0 and provider.cache_hit_rate == 0.0


def test_the_text_table_reads_whole_in_a_pipe(bench_report: Path) -> None:
    text = invoke("profile-report", "--from", str(bench_report))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("kind"))
    assert len(header) > 150  # wider than a terminal: nothing is cut to 80 columns
    assert "flags" in header and "wait p95 ms" in header
    research = next(line for line in lines if line.startswith("agent") and " research " in line)
    assert research.rstrip().endswith("BOTTLENECK")
    assert "Recommendations" in text and "raise `[agents.research] concurrency` (1 now)" in text
    assert "Totals: 600 events" in text


def test_the_html_report_is_self_contained_and_renders_in_headless_chromium(bench_report: Path, tmp_path: Path) -> None:
    chromium = ensure("chromium", "chromium")
    html = tmp_path / "profile.html"
    invoke("profile-report", "--from", str(bench_report), "--html", str(html))
    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            f"--user-data-dir={tmp_path / 'p'}"]  # fmt: skip
    shot = tmp_path / "shot.png"
    subprocess.run([*args, f"--screenshot={shot}", "--window-size=1300,900", html.as_uri()],
                   capture_output=True, timeout=90, check=False)  # fmt: skip
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    dom = subprocess.run([*args, "--dump-dom", html.as_uri()], capture_output=True, timeout=90, check=False)
    page = dom.stdout.decode()
    assert page.count('class="bars"') == 2 and 'class="rows"' in page and "BOTTLENECK" in page
    assert "<code>[agents.research] concurrency</code>" in page


def test_a_loadtest_report_with_a_saturated_agent_is_flagged(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app.toml", None)
    out = tmp_path / "lt.json"
    invoke("loadtest", "--app", APP, "--app-dir", str(REPO_ROOT / "tests"), "--agent", "research",
           "--config", str(config), "--rate", "500/s", "--duration", "1s", "--json", str(out))  # fmt: skip
    report = msgspec.json.decode(invoke("profile-report", "--from", str(out), "--json"), type=ProfileReport)
    assert "agentcli.loadtest/2" in report.source
    research = row(report, "agent", "research")
    assert research.calls == 500 and "BOTTLENECK" in [f.flag for f in research.flags]
    assert [r.setting for r in report.recommendations] == ["[agents.research] concurrency"]
    assert row(report, "agent", "audit").flags == [] and row(report, "agent", "notify").flags == []


def test_a_report_without_a_profile_says_why(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"format": "agentcli.benchmark/1", "scenario": "llm-chat", "profile_snapshot": None}))
    result = cli.invoke(app, ["profile-report", "--from", str(report)])
    assert result.exit_code == 1 and "holds no profile snapshot" in result.output
    result = cli.invoke(app, ["profile-report"])
    assert result.exit_code == 2


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentcli", *args, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_running_worker_profiled_over_http(tmp_path: Path, mock_llm: str) -> None:
    token = "cli-token"
    config = write_config(tmp_path / "app.toml", mock_llm, monitoring="profiling = true")
    worker = await WorkerProcess.start(
        tmp_path, "tests/insight_app.py:make_runner", "--config", str(config), "--port", "0",
        env={"AGENTFLOW_HTTP_TOKEN": token, "INSIGHT_SLEEP_MS": "10"},
    )  # fmt: skip
    try:
        [url] = await worker.wait_ready()
        import aiohttp

        env = {"AGENTFLOW_HTTP_TOKEN": token}
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            # 3 s of work for research's one slot: the 1 s window below falls inside the backlog
            await post_events(http, url, list(range(300)), topic="research")
            code, out, err = await run_cli("profile-report", "--url", url, "--window", "1s", "--json", env=env)
        assert code == 0, err
        window = msgspec.json.decode(out, type=ProfileReport)
        assert "1 s window" in window.source
        assert "BOTTLENECK" in [f.flag for f in row(window, "agent", "research").flags]
        assert "[agents.research] concurrency" in {r.setting for r in window.recommendations}
        await asyncio.sleep(3.5)  # the backlog drains
        code, out, err = await run_cli("profile-report", "--url", url, "--json", env=env)
        assert code == 0, err
        report = msgspec.json.decode(out, type=ProfileReport)
        assert report.source == "worker since start" and row(report, "agent", "research").calls == 300
        code, out, err = await run_cli("cost-report", "--url", url, "--json", env=env)
        assert code == 0, err
        costs = json.loads(out)
        assert costs["total"]["calls"] == 300 and costs["most_expensive_agent"] == "notify"
        prof = tmp_path / "prof.json"
        code, out, err = await run_cli("profile", "--url", url, "--seconds", "1", "--output", str(prof), env=env)
        assert code == 0 and "CPU profile written to" in err, err
        assert json.loads(prof.read_text())["profiles"][0]["type"] == "sampled"
        code, _, err = await run_cli("profile-report", "--url", url)  # no token
        assert code == 1 and "answered 401" in err and "Set AGENTFLOW_HTTP_TOKEN" in err
    finally:
        worker.signal(signal.SIGTERM)
        await worker.wait()


async def test_cost_report_reads_the_history_a_worker_with_durable_memory_wrote(
    durable_state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentflow import Runner, config_from_dict
    from agentflow.testing import MockLLM

    for name, value in durable_state.env.items():
        monkeypatch.setenv(name, value)
    async with MockLLM() as server:
        prices = {"m": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 6.0}}
        config = {
            "llm": {"mock": {"base_url": server.url, "default_model": "m", "prices": prices}},
            "memory": msgspec.to_builtins(durable_state.config()),  # the runner keeps its cost history there
        }
        runner = Runner(config_from_dict(config))

        @runner.agent("q")
        async def ask(event: Any, ctx: Any) -> None:
            await ctx.llm.chat([{"role": "user", "content": "x" * (4 * event.payload)}], temperature=0.5)

        async with runner:
            await runner.emit_many("q", [1, 10, 100])
            await runner.drain(timeout_s=10)
            assert runner.llm is not None
            rows = runner.llm.costs.rows()
    if durable_state.kind == "sqlite":
        store = [f"sqlite:{durable_state.path}"]
    else:
        assert durable_state.redis is not None
        store = [durable_state.redis.url, "--password-env", PASSWORD_ENV, "--key-prefix", durable_state.prefix]
    code, out, err = await run_cli("cost-report", "--store", *store, "--window", "1h", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["total"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    assert rep["total"]["calls"] == sum(r.calls for r in rows) == 3
    assert rep["runs"]["runs"] == 3 and rep["runs"]["min_usd"] < rep["runs"]["max_usd"]
    assert rep["by_workflow"][0]["workflow"] == "q" and rep["most_expensive_agent"] == "ask"
    code, out, _ = await run_cli("cost-report", "--store", *store)
    assert code == 0 and "Most expensive agent: ask" in out and "By workflow (cost per run)" in out


async def test_cost_report_refuses_a_store_it_cannot_read() -> None:
    code, _, err = await run_cli("cost-report", "--store", "mysql://x")
    assert code == 2 and "sqlite:PATH" in err and "mysql://x" in err
