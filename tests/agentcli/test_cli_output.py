"""What agentcli prints, run as a user runs it (a real process, its output piped as in CI): agentflow errors as one
``Error:`` sentence within a bounded time, without a traceback unless ``--debug``; tables at full width; progress
lines every ``--progress-every``; ``--quiet``; log records as JSON lines with the agent and the event id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT
#: The address nothing listens on: connections are refused at once.
NOWHERE = "127.0.0.1:1"


def agentcli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m agentcli ARGS`` with stdout and stderr piped (not a terminal), as in CI."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "agentcli", *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def kafka_config(tmp_path: Path, connect_timeout_s: float = 2.0) -> Path:
    path = tmp_path / "kafka.toml"
    path.write_text(
        f'[bus]\nbackend = "kafka"\n\n[kafka]\nbootstrap_servers = "{NOWHERE}"\n'
        f"connect_timeout_s = {connect_timeout_s}\n"
    )
    return path


def assert_one_error_sentence(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, one ``Error:`` line that ends a sentence and holds ``needles``; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.rstrip().endswith("."), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def assert_little_noise(stderr: str) -> None:
    """aiokafka's retries appear once, not once per attempt, and the whole error output stays short."""
    assert stderr.count("Unable connect") <= 1, stderr
    assert stderr.count("retrying") <= 1, stderr
    assert len(stderr.splitlines()) <= 6, stderr


# ---- §1 errors are sentences ----------------------------------------------------------------------------------


def test_benchmark_against_an_unreachable_broker_is_one_sentence_within_the_connect_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = agentcli("benchmark", "--bus", "kafka", "--mode", "throughput", "--bootstrap", NOWHERE,
                    "--config", str(kafka_config(tmp_path)))  # fmt: skip
    assert time.monotonic() - t0 < 15
    line = assert_one_error_sentence(proc, NOWHERE, "within 2 s", "attempt", "kafka.bootstrap_servers")
    assert "kafka.connect_timeout_s" in line
    assert_little_noise(proc.stderr)


@pytest.mark.slow
def test_the_default_connect_timeout_is_about_ten_seconds() -> None:
    t0 = time.monotonic()
    proc = agentcli("benchmark", "--bus", "kafka", "--mode", "throughput", "--bootstrap", NOWHERE)
    took = time.monotonic() - t0
    assert_one_error_sentence(proc, NOWHERE, "within 10 s")
    assert took < 20, took
    assert_little_noise(proc.stderr)


def test_loadtest_on_kafka_against_an_unreachable_broker(tmp_path: Path) -> None:
    proc = agentcli("loadtest", "--bus", "kafka", "--topic", "jobs", "--bootstrap", NOWHERE, "--config",
                    str(kafka_config(tmp_path)), "--rate", "10/s", "--duration", "1s")  # fmt: skip
    assert_one_error_sentence(proc, NOWHERE, "within 2 s")
    assert_little_noise(proc.stderr)


def test_run_on_kafka_against_an_unreachable_broker(tmp_path: Path) -> None:
    proc = agentcli("run", "tests/workerapp.py:runner", "--config", str(kafka_config(tmp_path)), "--port", "0")
    assert_one_error_sentence(proc, NOWHERE, "within 2 s")
    assert_little_noise(proc.stderr)


def test_run_with_an_unset_api_key_names_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "llm.toml"
    config.write_text('[llm.openai]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "AGENTCLI_TEST_UNSET_KEY"\n')
    env = {k: v for k, v in os.environ.items() if k != "AGENTCLI_TEST_UNSET_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "agentcli", "run", "tests/workerapp.py:runner", "--config", str(config), "--port", "0"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert_one_error_sentence(proc, "AGENTCLI_TEST_UNSET_KEY", "[llm.openai]")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = agentcli("--debug", "loadtest", "--bus", "kafka", "--topic", "jobs", "--bootstrap", NOWHERE,
                    "--config", str(kafka_config(tmp_path, 0.5)), "--rate", "10/s", "--duration", "1s")  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "BusUnavailableError" in proc.stderr


# ---- §2 output in CI ------------------------------------------------------------------------------------------


def test_piped_tables_print_whole_numbers_at_full_width() -> None:
    proc = agentcli("loadtest", "--rate", "100/s", "--duration", "2s")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if "achieved/s" in line)
    assert "lag p99 ms" in header  # the last column, on the same line: nothing wrapped
    run = next(line for line in proc.stdout.splitlines() if line.startswith("│ run "))
    assert re.search(r"│\s+200\s+│", run), run  # done: the whole number
    assert "no thresholds set" in proc.stdout


def test_piped_loadtest_prints_a_progress_line_every_few_seconds() -> None:
    proc = agentcli("--progress-every", "1s", "loadtest", "--rate", "50/s", "--duration", "3500ms")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("agentcli loadtest: 0:")]
    assert 2 <= len(lines) <= 4, proc.stdout
    pattern = r"agentcli loadtest: 0:00:0\d/0:00:03 stage 1/1, (-|[\d.,]+/s) \(target 50\.0/s\), [\d,]+ done, "
    pattern += r"0 errors, 0 dropped, VUs \d+/\d+, p99 (-|[\d.]+) ms"
    for line in lines:
        assert re.fullmatch(pattern, line), line
    quiet = agentcli("--quiet", "--progress-every", "1s", "loadtest", "--rate", "50/s", "--duration", "2500ms")
    assert quiet.returncode == 0
    assert not [line for line in quiet.stdout.splitlines() if line.startswith("agentcli loadtest: 0:")]
    assert "│ run " in quiet.stdout  # the summary stays


def test_piped_benchmark_prints_rate_and_eta_in_every_phase_including_the_llm_phase() -> None:
    proc = agentcli("--progress-every", "100ms", "benchmark", "--duration", "1s")
    assert proc.returncode == 0, proc.stderr
    noop = [line for line in proc.stdout.splitlines() if line.startswith("agentcli benchmark: agentflow:")]
    llm = [line for line in proc.stdout.splitlines() if line.startswith("agentcli benchmark: llm-chat agentflow:")]
    assert noop and llm, proc.stdout
    done = r"([\d,]+/[\d,]+|[\d.]+/1 s, [\d,]+ done)"  # a count, or a duration (the noop phase runs for 1s)
    for line in noop + llm:
        assert re.search(done + r", [\d,]+/s, ETA (\d+:\d\d:\d\d|-)$", line), line


def test_json_log_lines_carry_the_agent_and_the_event_id(tmp_path: Path) -> None:
    out = tmp_path / "handled.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKERAPP_OUT": str(out)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "agentcli", "--log-format", "json", "run", "tests/workerapp.py:runner", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        ready = worker.stdout.readline()
        url = re.search(r"ready on (http://\S+)", ready)
        assert url, ready
        sent = agentcli("emit", "--url", url.group(1), "--topic", "jobs", "--data", '{"reject": true}')
        assert sent.returncode == 0, sent.stderr
        event_id = sent.stdout.strip()
        time.sleep(1.0)
    finally:
        worker.send_signal(2)
        _, stderr = worker.communicate(timeout=30)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records, stderr
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    dead = [r for r in records if "dead-lettered" in r["message"]]
    assert dead, records
    assert dead[0]["agent"] == "work" and dead[0]["event_id"] == event_id and dead[0]["level"] == "warning"
    assert dead[0]["correlation_id"] == event_id and dead[0]["topic"] == "jobs"
