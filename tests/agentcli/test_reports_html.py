"""The HTML reports of ``agentcli loadtest --report`` and ``agentcli benchmark --report``, rendered in Debian's
headless Chromium: one file that loads nothing from the network, whose charts (uPlot, inlined) all draw, with the
verdict, the thresholds, the latency distribution, TTFT and inter-token latency for a streamed run, the generator's
lag and RSS, and for a benchmark its rounds and ratios."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from system_packages import ensure
from typer.testing import CliRunner

from agentcli.loadtest.plan import resolve
from agentcli.loadtest.report import build
from agentcli.loadtest.report_html import write_html
from agentcli.loadtest.scenario import LoadSpec
from agentcli.loadtest.session import run_local
from agentcli.main import app
from agentflow.testing import LatencyModel, MockLLM

cli = CliRunner()
#: Anything that would make the page reach the network: a script, style, image or font from a URL.
_NETWORK = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I)


def _chromium(html_path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    chromium = ensure("chromium", "chromium")  # the test command installs Debian's Chromium when it is missing
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", *args, html_path.as_uri()],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip


def rendered(html_path: Path, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran; asserts that it is self-contained and that every chart drew."""
    text = html_path.read_text()
    assert not _NETWORK.search(text), "the report must open offline"
    assert "Copyright (c) 2022 Leon Sorokin" in text  # the vendored library's license notice travels with it
    shot = tmp_path / "shot.png"
    proc = _chromium(html_path, tmp_path, f"--screenshot={shot}", "--window-size=1100,2400")
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 40_000  # a blank page compresses to a few kB
    dom = _chromium(html_path, tmp_path, "--dump-dom").stdout.decode()
    figures = dom.count('class="plot"')
    assert figures and f'data-charts="{figures}/{figures}"' in dom, re.findall(r'data-charts="[^"]*"', dom)
    assert dom.count('class="uplot') == figures  # uPlot's own root element, once per chart
    assert re.search(r'<pre id="chart-errors">\s*</pre>', dom)
    return dom


@pytest.mark.slow
def test_loadtest_report_shows_the_verdict_distribution_and_the_generator(tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    result = cli.invoke(app, ["loadtest", "--rate", "100/s", "--stages", "1s:200,1s:50", "--window", "250ms",
                              "--threshold", "p99<5s", "--report", str(html)])  # fmt: skip
    assert result.exit_code == 0, result.output
    dom = rendered(html, tmp_path)
    assert "PASSED" in dom and 'class="thresholds"' in dom and "p99&lt;5s" in dom
    for title in (
        "Latency distribution of the whole run (percentile spectrum)",
        "Latency percentiles over time (from intended start)",
        "Throughput: target (dashed), achieved and finished",
        "The generator itself: start lag p99 and resident memory",
    ):
        assert f'data-title="{title}"' in dom, title
    assert "time to first token" not in dom  # not a streamed run


def test_a_report_without_thresholds_says_so_instead_of_passed(tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    result = cli.invoke(app, ["loadtest", "--rate", "100/s", "--duration", "1s", "--report", str(html)])
    assert result.exit_code == 0, result.output
    assert "no thresholds set" in result.output
    text = html.read_text()
    assert "no thresholds set" in text and "PASSED" not in text


@pytest.mark.slow
async def test_a_streamed_run_shows_time_to_first_token_and_inter_token_latency(tmp_path: Path) -> None:
    async with MockLLM(latency=LatencyModel(base_ms=5, per_token_ms=1)) as server:
        spec = LoadSpec(rate="40/s", duration="1s", url=f"{server.url}/chat/completions", stream=True,
                        payload={"model": "m", "messages": [{"role": "user", "content": "say ${i}"}]})  # fmt: skip
        plan = resolve(spec)
        outcome = await run_local(plan, None)
    rep = build(plan, outcome.collector, target=outcome.target, started_at="now", aborted=False,
                iterations_interrupted=0, command=["agentcli", "loadtest"])  # fmt: skip
    assert rep.run.hists["ttft"] and rep.run.hists["itl"]
    html = tmp_path / "s.html"
    write_html(html, rep)
    dom = rendered(html, tmp_path)
    assert 'data-title="Streaming: time to first token and inter-token latency"' in dom
    assert "time to first token" in dom and "inter-token latency" in dom


@pytest.mark.slow
def test_benchmark_report_shows_rounds_ratios_and_the_distribution(tmp_path: Path) -> None:
    html = tmp_path / "b.html"
    result = cli.invoke(app, ["benchmark", "--scenario", "noop", "--requests", "2000", "--compare-raw", "--repeat",
                              "3", "--threshold", "p99<5s", "--report", str(html)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"HTML report written to {html}" in " ".join(result.output.split())
    dom = rendered(html, tmp_path)
    assert "PASSED" in dom and 'class="runs"' in dom and 'class="ratios"' in dom
    for title in ("Latency distribution (percentile spectrum)", "Throughput by round", "Ratios by round"):
        assert f'data-title="{title}"' in dom, title
    assert "agentflow 3/3" in dom and "raw 3/3" in dom


def test_a_profiled_benchmark_report_carries_the_profile_summary(tmp_path: Path) -> None:
    html = tmp_path / "p.html"
    result = cli.invoke(app, ["benchmark", "--scenario", "noop", "--requests", "500", "--profile", "cpu",
                              "--output", str(tmp_path / "cpu.pstats"), "--report", str(html)])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "<h2>Profile</h2>" in text and "tottime s" in text and "no thresholds set" in text
