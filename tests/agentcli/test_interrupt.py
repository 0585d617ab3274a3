"""Ctrl-C and SIGTERM during ``agentcli benchmark`` and ``agentcli loadtest``, in real processes: the first signal
stops the load, the summary of what ran is printed and the JSON and HTML reports are written, marked
``interrupted`` with the time they cover, exit 130; a second signal exits at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT
TESTS = ROOT / "tests"


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcli", "--progress-every", "500ms", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _started.append(proc)
    return proc


def wait_for_progress(proc: subprocess.Popen[str], prefix: str, lines: int = 2) -> list[str]:
    """Read stdout until ``lines`` progress lines starting with ``prefix`` went by: the load is running."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while len([s for s in seen if s.startswith(prefix)]) < lines:
        assert time.monotonic() < deadline, seen
        line = proc.stdout.readline()
        assert line, seen  # the process ended before its load ran
        seen.append(line.rstrip("\n"))
    return seen


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_ctrl_c_during_loadtest_keeps_what_ran(tmp_path: Path) -> None:
    report, page = tmp_path / "i.json", tmp_path / "i.html"
    proc = start("loadtest", "--rate", "200/s", "--duration", "20s", "--json", str(report), "--report", str(page))
    before = wait_for_progress(proc, "agentcli loadtest: 0:")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert time.monotonic() - t0 < 15
    assert code == 130, (out, err)
    assert "Traceback" not in err
    assert "│ run " in out and f"JSON report written to {report}" in out and f"HTML report written to {page}" in out
    assert "Interrupted by SIGINT after" in err
    data = json.loads(report.read_text())
    assert data["format"] == "agentcli.loadtest/2"
    assert data["interrupted"]["signal"] == "SIGINT" and data["interrupted"]["planned_s"] == 20
    assert 0.5 < data["interrupted"]["covered_s"] < 15
    assert data["run"]["completed"] >= 100 and data["duration_s"] < 15 and data["aborted"] is False
    assert data["iterations_interrupted"] == 0
    assert "INTERRUPTED" in page.read_text()
    assert before  # the load ran before the signal


def test_sigterm_during_benchmark_keeps_what_ran(tmp_path: Path) -> None:
    report, page = tmp_path / "b.json", tmp_path / "b.html"
    proc = start("benchmark", "--scenario", "noop", "--duration", "30s", "--compare-raw", "--repeat", "3",
                 "--json", str(report), "--report", str(page))  # fmt: skip
    wait_for_progress(proc, "agentcli benchmark: agentflow 1/3:", lines=1)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "Traceback" not in err and "Interrupted by SIGTERM after" in err
    assert "throughput (events/s)" in out and f"report written to {report}" in out
    data = json.loads(report.read_text())
    assert data["interrupted"]["signal"] == "SIGTERM" and data["interrupted"]["covered_s"] > 0
    sides = [(r["round"], r["side"]) for r in data["runs"]]
    assert sides == [(1, "raw"), (1, "agentflow")]  # round 1 ran raw, then agentflow was stopped; nothing else ran
    ours = data["runs"][1]
    assert ours["completed"] > 0 and ours["duration_s"] < 30 and ours["errors"] == 0
    assert data["latency_ms"]["count"] == ours["completed"]
    assert "INTERRUPTED" in page.read_text()


@pytest.mark.slow
def test_ctrl_c_during_loadtest_with_workers_keeps_what_ran(tmp_path: Path) -> None:
    report = tmp_path / "w.json"
    proc = start("loadtest", "--rate", "200/s", "--duration", "20s", "--workers", "2", "--json", str(report))
    wait_for_progress(proc, "agentcli loadtest: 0:")
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    data = json.loads(report.read_text())
    assert data["interrupted"]["signal"] == "SIGINT" and data["workers"] == 2
    assert data["run"]["completed"] > 0
    assert data["run"]["completed"] == sum(w["completed"] for w in data["windows"])  # every worker's windows


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    report = tmp_path / "x.json"
    # Each iteration takes 20 s, so the first Ctrl-C waits for the ones in flight (graceful_stop, 10 s).
    proc = start("loadtest", "--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--agent", "slow",
                 "--rate", "20/s", "--duration", "30s", "--json", str(report),
                 env={"AGENTCLI_APP_SLEEP_MS": "20000"})  # fmt: skip
    wait_for_progress(proc, "agentcli loadtest: 0:")
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # still finishing the iterations in flight
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, _out, err = finish(proc, timeout=10)
    assert time.monotonic() - t0 < 3
    assert code == 130 and "again: exiting now" in err
    assert not report.exists()
