"""``agentcli benchmark --threshold``: the load tester's grammar, evaluated in every round and for the median;
exit 0 when every verdict passed, 1 when one failed, 2 when a threshold cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner, Result

from agentcli.bench.report import THRESHOLD_FIGURES
from agentcli.loadtest.figures import THRESHOLD_FIGURES as LOADTEST_FIGURES
from agentcli.main import app
from agentcli.thresholds import ThresholdSyntaxError, parse_threshold

cli = CliRunner()


def plain(output: str) -> str:
    """The output as one line, without the error panel's borders (it wraps long sentences)."""
    return " ".join(output.replace("│", " ").split())


def bench(tmp_path: Path, *args: str, code: int) -> tuple[Result, dict[str, Any]]:
    path = tmp_path / "report.json"
    result = cli.invoke(app, ["benchmark", "--scenario", "noop", *args, "--json", str(path)])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result, msgspec.json.decode(path.read_bytes())


def test_passing_thresholds_exit_0_with_a_verdict_per_round_and_for_the_median(tmp_path: Path) -> None:
    args = ["--mode", "throughput", "--requests", "1000", "--compare-raw", "--repeat", "2"]
    result, data = bench(
        tmp_path, *args, "--threshold", "p99<60s", "--threshold", "raw_ratio>0", "--threshold", "error_rate<=0",
        "--threshold", "throughput>=1", code=0,
    )  # fmt: skip
    assert data["passed"] is True
    scopes = [(v["threshold"], v["scope"]) for v in data["thresholds"]]
    assert scopes == [(t, s) for t in ("p99<60s", "raw_ratio>0", "error_rate<=0", "throughput>=1")
                      for s in ("round 1", "round 2", "median")]  # fmt: skip
    assert all(v["passed"] is True for v in data["thresholds"])
    median = {v["threshold"]: v for v in data["thresholds"] if v["scope"] == "median"}
    assert median["raw_ratio>0"]["observed"] == data["ratios"]["raw"]
    assert median["p99<60s"]["observed"] == pytest.approx(data["latency_ms"]["p99"] / 1e3)  # seconds, as bounds
    assert median["p99<60s"]["limit"] == 60.0
    round2 = next(v for v in data["thresholds"] if v["scope"] == "round 2" and v["threshold"] == "raw_ratio>0")
    assert round2["observed"] == data["round_ratios"][1]["ratios"]["raw"]
    assert "all thresholds passed" in result.output


def test_a_failing_threshold_exits_1_and_says_so(tmp_path: Path) -> None:
    result, data = bench(tmp_path, "--requests", "500", "--threshold", "throughput>=1e12", "--threshold", "p99<1h",
                         code=1)  # fmt: skip
    assert data["passed"] is False
    verdicts = {(v["threshold"], v["scope"]): v["passed"] for v in data["thresholds"]}
    assert verdicts == {("throughput>=1e12", "round 1"): False, ("throughput>=1e12", "median"): False,
                        ("p99<1h", "round 1"): True, ("p99<1h", "median"): True}  # fmt: skip
    out = plain(result.output)
    assert "FAIL" in out and "a threshold failed" in out


def test_one_bad_round_fails_the_run(tmp_path: Path) -> None:
    # Every round is checked, not only the median: 'completed>=N' holds for no round of a smaller run.
    _, data = bench(tmp_path, "--requests", "300", "--repeat", "3", "--threshold", "completed>=301", code=1)
    assert [v["passed"] for v in data["thresholds"]] == [False, False, False, False]


@pytest.mark.parametrize(
    ("threshold", "extra", "expected"),
    [
        ("p99 1ms", [], "is not a threshold"),
        ("latency<1ms", [], "unknown figure 'latency'"),
        ("p99<fast", [], "is not a duration"),
        ("throughput>=many", [], "is not a number"),
        ("throughput>=0.9*target", [], "no figure here has a target"),
        ("raw_ratio>=0.5", [], "has no 'raw' ratio; it reports no ratio (add --compare-raw"),
        ("sdk_ratio>=10", ["--compare-raw"], "has no 'sdk' ratio; it reports raw_ratio"),
    ],
)
def test_thresholds_that_cannot_be_used_exit_2_before_anything_runs(
    threshold: str, extra: list[str], expected: str
) -> None:
    result = cli.invoke(app, ["benchmark", "--scenario", "noop", "--requests", "100", *extra, "--threshold", threshold])
    out = plain(result.output)
    assert result.exit_code == 2, out
    assert "Usage: agentcli benchmark" in out and expected in out and "Traceback" not in out
    assert "agentcli benchmark: noop" not in out  # refused before the run


def test_the_llm_scenarios_name_their_own_ratios(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    args = ["benchmark", "--scenario", "llm-chat", "--compare-raw", "--requests", "200", "--json", str(path)]
    result = cli.invoke(app, [*args, "--threshold", "pooled_vs_per_request_ratio>0", "--threshold", "raw_ratio>0"])
    assert result.exit_code == 0, result.output
    assert all(v["passed"] for v in msgspec.json.decode(path.read_bytes())["thresholds"])
    result = cli.invoke(app, ["benchmark", "--scenario", "llm-embed", "--threshold", "raw_ratio>0"])
    assert result.exit_code == 2 and "batched_vs_unbatched" not in result.output  # llm-embed at batch size 1


def test_one_grammar_for_the_benchmark_and_the_load_tester() -> None:
    for figures in (THRESHOLD_FIGURES, LOADTEST_FIGURES):
        th = parse_threshold("p99 <= 1.5ms", figures)
        assert (th.metric, th.op, th.bound) == ("p99", "<=", pytest.approx(0.0015))
        assert parse_threshold("p99<2", figures).bound == pytest.approx(0.002)  # a plain number is milliseconds
        assert parse_threshold("error_rate<1%", figures).bound == pytest.approx(0.01)
        with pytest.raises(ThresholdSyntaxError, match="is not a threshold"):
            parse_threshold("p99 1ms", figures)
    assert parse_threshold("raw_ratio>=0.5", THRESHOLD_FIGURES).metric == "raw_ratio"
    with pytest.raises(ThresholdSyntaxError, match="unknown figure"):
        parse_threshold("raw_ratio>=0.5", LOADTEST_FIGURES)
    with pytest.raises(ThresholdSyntaxError, match="unknown figure"):
        parse_threshold("ratio>=0.5", THRESHOLD_FIGURES)
