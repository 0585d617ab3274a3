"""``agentcli benchmark --scenario llm-*`` and ``agentcli mock-llm``: small runs whose counts cross-check."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from typer.testing import CliRunner

from agentcli.main import app

cli = CliRunner()


def test_llm_chat_benchmark_compares_raw_and_counts_on_the_server(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = cli.invoke(
        app, ["benchmark", "--scenario", "llm-chat", "--compare-raw", "--requests", "300", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = msgspec.json.decode(out.read_bytes())
    labels = [r["label"] for r in report["results"]]
    assert labels[:3] == ["raw aiohttp", "agentflow", "raw, one connection per request"]
    for r in report["results"]:
        assert r["errors"] == 0
        assert r["server_requests"] == r["requests"]  # agentcli's count agrees with the server's own
    assert {"agentflow/raw", "pooled/one connection per request"} <= set(report["ratios"])
    assert report["items_per_s"] > 0
    sdk = 300 if "openai SDK" in labels else 0  # its figure is shown when the SDK happens to be installed
    assert ("openai SDK" in labels) == (importlib.util.find_spec("openai") is not None)
    assert report["server_stats"]["by_endpoint"]["chat"] == 300 + 300 + 60 + sdk
    [cost] = report["cost"]
    assert (cost["agent"], cost["calls"]) == ("chat", 300)
    assert "LLM cost summary" in result.output


def test_llm_embed_benchmark_batches(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["benchmark", "--scenario", "llm-embed", "--batch-size", "32", "--requests", "640", "--json", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = msgspec.json.decode(out.read_bytes())
    single, batched = report["results"]
    assert single["server_requests"] == single["items"] == 640  # batch size 1: one request per item
    assert batched["server_items"] == batched["items"] == 640
    assert batched["server_requests"] < 640  # coalesced
    assert "items/s batch 32 / batch 1" in report["ratios"]


def test_llm_chat_benchmark_whose_requests_fail_exits_1_and_says_how_many(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens: every request fails
    result = cli.invoke(
        app,
        ["benchmark", "--scenario", "llm-chat", "--llm-url", url, "--requests", "12", "--concurrent-users", "12",
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "12 of 12 requests failed" in " ".join(result.output.split())
    [ours] = msgspec.json.decode(out.read_bytes())["results"]
    assert (ours["requests"], ours["errors"]) == (0, 12)  # the report is still written


def test_llm_url_must_be_http() -> None:
    result = cli.invoke(app, ["benchmark", "--scenario", "llm-chat", "--llm-url", "ftp://x"])
    assert result.exit_code == 2
    assert "not an http(s) URL" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mock_llm_command_serves_until_sigint_and_an_external_benchmark_reads_its_stats(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcli", "mock-llm", "--port", str(port), "--error-rate", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        out = tmp_path / "r.json"
        url = f"http://127.0.0.1:{port}/v1"
        result = cli.invoke(
            app, ["benchmark", "--scenario", "llm-chat", "--llm-url", url, "--requests", "200", "--json", str(out)]
        )
        assert result.exit_code == 0, result.output
        report = msgspec.json.decode(out.read_bytes())
        assert report["server"] == url
        assert report["results"][0]["server_requests"] == 200
        assert report["server_stats"]["requests"] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert '"requests": 200' in output
