"""docs/testing.md, run as written: its files are written to an empty directory and its pytest command passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "testing.md"
_BLOCK = re.compile(r"```(\w+)[^\n]*\n(.*?)```", re.DOTALL)


def test_the_testing_guide_runs_as_written(tmp_path: Path) -> None:
    files: dict[str, str] = {}
    current = None
    commands = []
    for lang, text in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        if lang == "python":
            first = text.split("\n", 1)[0]
            if first.startswith("# ") and first.endswith(".py"):
                current = first[2:]
                files[current] = text
            else:  # a block without a file name continues the file before it
                assert current is not None
                files[current] += "\n\n" + text
        elif lang == "console":
            commands += [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    assert set(files) == {"answers.py", "test_answers.py"} and commands == ["pytest -q test_answers.py"]
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_answers.py"],
        cwd=tmp_path, env={**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
