"""Lint and types as tests, so the one test command enforces them (STYLE item 16).

Both tools read their configuration from pyproject.toml (ruff: E, F, I, B, UP, ASYNC, and its formatter; mypy:
strict, files = agentflow) and run from the repository root.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_ruff_is_clean() -> None:
    targets = [t for t in ("agentflow", "agentcli", "tests") if (ROOT / t).exists()]
    proc = run("ruff", "check", "--no-cache", *targets, timeout_s=60)
    assert proc.returncode == 0, f"ruff check {' '.join(targets)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_ruff_format_is_clean() -> None:
    targets = [t for t in ("agentflow", "agentcli", "tests", "loadtests") if (ROOT / t).exists()]
    proc = run("ruff", "format", "--check", "--no-cache", *targets, timeout_s=60)
    assert proc.returncode == 0, f"ruff format --check failed (run `ruff format`):\n{proc.stdout}\n{proc.stderr}"


def test_mypy_strict_is_clean() -> None:
    proc = run("mypy", timeout_s=110)
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Success" in proc.stdout
