"""The regression gate of ``agentcli loadtest compare`` and ``agentcli benchmark compare``: significant (a
one-sided Mann-Whitney U test on the windows or rounds) and larger than the tolerance and the absolute floor, or it
is no regression. Two runs of the same load pass; a target made twice as slow fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner, Result

from agentcli.gate import Gate, judge, mann_whitney_p, parse_tolerance
from agentcli.main import app

TESTS = REPO_ROOT / "tests"
cli = CliRunner()


def run(*args: str, code: int | None = None) -> Result:
    result = cli.invoke(app, list(args))
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def test_mann_whitney_is_exact_for_small_samples() -> None:
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / 252)  # no overlap: 1 of C(10,5)
    assert mann_whitney_p([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert mann_whitney_p([1, 3, 5, 7, 9], [2, 4, 6, 8, 10]) == pytest.approx(0.3452, abs=1e-3)
    assert mann_whitney_p([1.0] * 8, [1.0] * 8) > 0.4  # all tied: no evidence either way


def test_the_rule_needs_significance_the_tolerance_and_the_floor() -> None:
    gate = Gate()  # 10%, 1 ms, alpha 0.01
    base = [0.000095 + i * 1e-7 for i in range(10)]
    slower = [x * 1.33 for x in base]  # +33% and significant, but 0.03 ms: scheduling noise
    assert judge("p50", "ms", base, slower, gate, higher_is_worse=True, min_delta=gate.min_delta_s).verdict == "ok"
    base = [0.005 + i * 1e-5 for i in range(10)]
    twice = [x * 2 for x in base]
    assert judge("p50", "ms", base, twice, gate, higher_is_worse=True, min_delta=0.001).verdict == "REGRESSED"
    assert judge("p50", "ms", twice, base, gate, higher_is_worse=True, min_delta=0.001).verdict == "improved"
    assert judge("p50", "ms", base[:4], twice[:4], gate, higher_is_worse=True).verdict == "inconclusive"
    noisy = [0.005, 0.02, 0.005, 0.02, 0.005, 0.02]  # overlapping: not significant, however large the mean
    assert judge("p50", "ms", noisy, list(reversed(noisy)), gate, higher_is_worse=True).verdict == "ok"
    assert parse_tolerance("10%") == pytest.approx(0.1) == parse_tolerance("0.1")


@pytest.mark.slow
def test_loadtest_same_load_twice_is_no_regression_and_a_target_twice_as_slow_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):  # the case: back-to-back runs of the in-process noop agent
        run("loadtest", "--rate", "200/s", "--duration", "3s", "--window", "250ms", "--json", str(path), code=0)
    for first, second in ((a, b), (b, a)):
        same = run("loadtest", "compare", str(first), str(second), code=0)
        assert "no regression" in same.output and "REGRESSED" not in same.output
    app_args = ["--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--agent", "slow",
                "--rate", "100/s", "--duration", "3s", "--window", "250ms"]  # fmt: skip
    fast, slow = tmp_path / "fast.json", tmp_path / "slow.json"
    monkeypatch.setenv("AGENTCLI_APP_SLEEP_MS", "5")
    run("loadtest", *app_args, "--json", str(fast), code=0)
    monkeypatch.setenv("AGENTCLI_APP_SLEEP_MS", "10")
    run("loadtest", *app_args, "--json", str(slow), code=0)
    worse = run("loadtest", "compare", str(fast), str(slow), code=1)
    line = next(x for x in worse.output.splitlines() if "latency p50" in x)
    assert "REGRESSED" in line, worse.output
    assert "regression beyond tolerance" in worse.output
    better = run("loadtest", "compare", str(slow), str(fast), code=0)
    assert "improved" in better.output
    loose = run("loadtest", "compare", str(fast), str(slow), "--min-delta", "20ms", code=0)  # the floor holds
    assert "no regression" in loose.output


def test_compare_options_and_reports_are_checked(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    run("loadtest", "--rate", "50/s", "--duration", "1s", "--json", str(a), code=0)
    assert "not a tolerance" in run("loadtest", "compare", str(a), str(a), "--tolerance", "ten", code=2).output
    assert "is not a duration" in run("loadtest", "compare", str(a), str(a), "--min-delta", "x", code=2).output
    assert "cannot read" in run("loadtest", "compare", str(a), str(tmp_path / "missing.json"), code=2).output
    short = run("loadtest", "compare", str(a), str(a), code=0)  # one window a side: too few for the test
    assert "inconclusive" in short.output and "no regression" in short.output


def test_a_loadtest_report_of_format_1_is_still_read(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    run("loadtest", "--rate", "50/s", "--duration", "1s", "--json", str(a), code=0)
    data = json.loads(a.read_text())
    data["format"] = "agentcli.loadtest/1"
    data["interrupted"] = data.pop("iterations_interrupted")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    run("loadtest", "compare", str(old), str(a), code=0)


@pytest.mark.slow
def test_benchmark_compare_uses_the_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["benchmark", "--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--agent", "slow",
            "--concurrent-users", "8", "--requests", "200", "--repeat", "5"]  # fmt: skip
    a, b, slow = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "slow.json"
    monkeypatch.setenv("AGENTCLI_APP_SLEEP_MS", "5")
    run(*args, "--json", str(a), code=0)
    run(*args, "--json", str(b), code=0)
    same = run("benchmark", "compare", str(a), str(b), code=0)
    assert "no regression" in same.output and "5 / 5" in same.output
    monkeypatch.setenv("AGENTCLI_APP_SLEEP_MS", "10")
    run(*args, "--json", str(slow), code=0)
    worse = run("benchmark", "compare", str(a), str(slow), code=1)
    for figure in ("latency p50", "throughput"):
        line = next(x for x in worse.output.splitlines() if figure in x)
        assert "REGRESSED" in line, worse.output
    one = tmp_path / "one.json"
    run("benchmark", "--scenario", "noop", "--requests", "500", "--json", str(one), code=0)
    few = run("benchmark", "compare", str(one), str(one), code=0)
    assert "inconclusive" in few.output
