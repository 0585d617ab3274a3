"""``agentcli run``: real worker processes, HTTP ingest into them, signals, exit codes.

The helpers here (:class:`WorkerProcess`, :func:`post_events`, :func:`handled_lines`) are reused by the
multi-process Kafka tests.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner
from worker_processes import APP, WorkerProcess, handled_lines, post_events, until

from agentcli.main import app

ROOT = REPO_ROOT


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentflow.toml"
    path.write_text(text)
    return path


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


# ---- usage errors (in-process: they fail before anything runs) -------------------------------------------------

cli = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "Missing argument"),
        (["nocolon"], "module:attribute"),
        (["no_such_module_xyz:runner"], "cannot import"),
        (["tests/workerapp.py:nothing"], "has no attribute"),
        (["tests/missing.py:runner"], "is not a file"),
        ([APP, "--workers", "0"], "--workers"),
        ([APP, "--port", "70000"], "--port"),
        ([APP, "--log-level", "loud"], "not a log level"),
        ([APP, "--workers", "2"], "memory bus lives inside one process"),
        (["agentcli_app:make_runner", "--app-dir", "tests", "--bogus"], "No such option"),
    ],
)
def test_bad_flags_print_usage_and_exit_2(args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = cli.invoke(app, ["run", *args])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "Usage: agentcli run" in out or "Error" in out
    assert expected in out


def test_bad_config_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = write_config(tmp_path, "[runner]\nworkers = 3\n")
    result = cli.invoke(app, ["run", APP, "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown key 'runner.workers'" in " ".join(result.output.split())


# ---- real processes ----------------------------------------------------------------------------------------------


async def test_sigterm_under_load_drains_every_accepted_event(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    out = tmp_path / "handled.txt"
    config = write_config(tmp_path, "[runner]\nworker_pool_size = 32\nshutdown_grace_s = 20\n")
    worker = await WorkerProcess.start(
        tmp_path,
        APP,
        "--config",
        str(config),
        "--port",
        "0",
        env={"WORKERAPP_OUT": str(out), "WORKERAPP_SLEEP_MS": "20"},
    )
    try:
        [url] = await worker.wait_ready()
        async with http.get(url + "/healthz") as r:
            assert r.status == 200
        async with http.get(url + "/readyz") as r:
            assert r.status == 200
        accepted = await post_events(http, url, list(range(3000)))
        handled_before = sum(handled_lines(out).values())
        worker.signal(signal.SIGTERM)
        code = await worker.wait()
    finally:
        await worker.kill()
    handled = handled_lines(out)
    print(f"accepted {len(accepted)}, handled before SIGTERM {handled_before}, after {sum(handled.values())}")
    assert handled_before < len(accepted), "the test must signal while work is still pending"
    assert code == 0, worker.stderr()
    assert set(handled) == set(accepted), "lost events"
    assert max(handled.values()) == 1, "duplicates"
    assert "got SIGTERM; draining" in worker.stderr()
    assert "LOST" not in worker.stderr()


async def test_ingest_answers_503_while_draining_and_a_second_signal_forces_exit(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    out = tmp_path / "handled.txt"
    worker = await WorkerProcess.start(
        tmp_path, APP, "--port", "0", env={"WORKERAPP_OUT": str(out), "WORKERAPP_SLEEP_MS": "30000"}
    )
    try:
        [url] = await worker.wait_ready()
        await post_events(http, url, [1, 2, 3])
        worker.signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while True:  # the handlers sleep 30 s, so the worker stays in its drain
                async with http.get(url + "/readyz") as r:
                    if r.status == 503:
                        break
                await asyncio.sleep(0.02)
        async with http.post(url + "/v1/events", json={"topic": "jobs"}) as r:
            assert r.status == 503 and "Retry-After" in r.headers
        worker.signal(signal.SIGINT)
        code = await worker.wait(timeout_s=10)
    finally:
        await worker.kill()
    assert code == 128 + signal.SIGINT, worker.stderr()
    assert "second signal" in worker.stderr()
    assert handled_lines(out) == Counter()


async def test_ingest_beyond_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    env = {"WORKERAPP_OUT": str(tmp_path / "x"), "AGENTFLOW_HTTP_TOKEN": ""}
    worker = await WorkerProcess.start(tmp_path, APP, "--host", "0.0.0.0", "--port", "0", env=env)
    try:
        code = await worker.wait(timeout_s=30)
    finally:
        await worker.kill()
    assert code == 2
    err = " ".join(worker.stderr().split())
    assert "AGENTFLOW_HTTP_TOKEN" in err and "127.0.0.1" in err


async def test_ingest_beyond_loopback_with_token(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    out = tmp_path / "handled.txt"
    env = {"WORKERAPP_OUT": str(out), "AGENTFLOW_HTTP_TOKEN": "t0ken-for-test"}
    worker = await WorkerProcess.start(tmp_path, APP, "--host", "0.0.0.0", "--port", "0", env=env)
    try:
        [url] = await worker.wait_ready()
        url = url.replace("0.0.0.0", "127.0.0.1")
        async with http.post(url + "/v1/events", json={"topic": "jobs"}) as r:
            assert r.status == 401
        headers = {"Authorization": "Bearer t0ken-for-test"}
        async with http.post(url + "/v1/events", json={"topic": "jobs"}, headers=headers) as r:
            assert r.status == 202
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        await worker.kill()
    assert sum(handled_lines(out).values()) == 1
    assert "t0ken-for-test" not in worker.stderr()


# ---- a worker stuck in its start (here an MCP server that never answers) ---------------------------------------

_SILENT_MCP = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"


def hanging_start_config(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose runner.start() waits up to 120 s for an MCP server that starts and never answers."""
    started = tmp_path / "mcp-started"
    config = write_config(
        tmp_path,
        f'[mcp.silent]\ntransport = "stdio"\ncommand = {str(sys.executable)!r}\n'
        f'args = ["-c", {_SILENT_MCP!r}, {str(started)!r}]\nconnect_timeout_s = 120\n',
    )
    return config, started


async def test_sigterm_while_the_worker_is_still_starting_stops_it_at_once(tmp_path: Path) -> None:
    config, started = hanging_start_config(tmp_path)
    env = {"WORKERAPP_OUT": str(tmp_path / "x")}
    worker = await WorkerProcess.start(tmp_path, APP, "--config", str(config), "--port", "0", env=env)
    try:
        await until(started.exists, 60, "the MCP server to start")
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout_s=20) == 0  # not after the 120 s connect timeout
    finally:
        await worker.kill()
    assert "stopped before it was ready" in worker.stderr()


async def test_a_worker_orphaned_while_still_starting_exits(tmp_path: Path) -> None:
    # --parent-pid names the supervisor; a worker whose parent is not that process has lost its supervisor.
    config, started = hanging_start_config(tmp_path)
    env = {"WORKERAPP_OUT": str(tmp_path / "x")}
    worker = await WorkerProcess.start(
        tmp_path, APP, "--config", str(config), "--port", "0", "--parent-pid", "1", env=env
    )
    try:
        assert await worker.wait(timeout_s=20) == 0
    finally:
        await worker.kill()
    err = " ".join(worker.stderr().split())
    assert "supervisor (pid 1) is gone" in err and "stopped before it was ready" in err
