"""``agentcli run``: real worker processes, HTTP ingest into them, signals, exit codes.

The helpers here (:class:`WorkerProcess`, :func:`post_events`, :func:`handled_lines`) are reused by the
multi-process Kafka tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner

from agentcli.main import app

ROOT = REPO_ROOT
APP = "tests/workerapp.py:runner"
READY = re.compile(r"\(pid (\d+)\) ready on http://([^:\s]+):(\d+)")
START_TIMEOUT_S = 30.0


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
