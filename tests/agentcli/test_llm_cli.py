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
from conftest import REPO_ROOT
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
    sides = [r["side"] for r in report["runs"]]
    assert sides[:3] == ["raw", "agentflow", "per_request"]
    for r in report["runs"]:
        assert r["errors"] == 0
        assert r["server_requests"] == r["completed"]  # agentcli's count agrees with the server's own
    assert {"raw", "pooled_vs_per_request"} <= set(report["ratios"])
    assert (report["scenario"], report["mode"], report["completed"]) == ("llm-chat", "closed", 300)
    assert report["throughput_per_s"] > 0 and report["latency_ms"]["p99"] > 0
    sdk = 300 if "sdk" in sides else 0  # its figure is shown when the SDK happens to be installed
    assert ("sdk" in sides) == (importlib.util.find_spec("openai") is not None)
    assert ("sdk" in report["ratios"]) == ("sdk" in sides)
    details = report["details"]
    assert details["server_stats"]["by_endpoint"]["chat"] == 300 + 300 + 60 + sdk
    [cost] = details["cost"]
    assert (cost["agent"], cost["calls"]) == ("chat", 300)
    assert "LLM cost summary" in result.output


def test_llm_embed_benchmark_batches(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["benchmark", "--scenario", "llm-embed", "--batch-size", "32", "--requests", "640", "--json", str(out)]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = msgspec.json.decode(out.read_bytes())
    single, batched = report["runs"]
    assert (single["side"], batched["side"]) == ("unbatched", "agentflow")
    assert single["server_requests"] == single["server_items"] == single["completed"] == 640  # one request per item
    assert batched["server_items"] == batched["completed"] == 640
    assert batched["server_requests"] < 640  # coalesced
    assert report["ratios"]["batched_vs_unbatched"] == batched["items_per_s"] / single["items_per_s"]
    assert report["details"]["added_p50_ms"] is not None


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
    report = msgspec.json.decode(out.read_bytes())  # the report is still written
    [ours] = report["runs"]
    assert (ours["completed"], ours["errors"], report["passed"]) == (0, 12, False)


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
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentcli",
            "mock-llm",
            "--port",
            str(port),
            "--error-rate",
            "0",
            "--max-request-bytes",
            "64KiB",
        ],  # fmt: skip
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
        assert report["details"]["server"] == url
        assert report["runs"][0]["server_requests"] == 200
        assert report["details"]["server_stats"]["requests"] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert '"requests": 200' in output
