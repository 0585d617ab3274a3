"""The README's examples run as written: the agent that uses a tool, against the mock LLM."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)


def test_the_agent_that_uses_a_tool_runs_as_written() -> None:
    [block] = [b for b in python_blocks() if "@runner.tool" in b]
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "tool results: get_weather: sunny in Oslo\n"
