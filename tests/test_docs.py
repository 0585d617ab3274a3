"""Every Python snippet in the README and docs/ runs as written, or is marked as a fragment of a larger program.

A block fenced as ```python runs in a fresh interpreter from the repository root (it must exit 0 within the
timeout); one fenced as ```python fragment (a handler body, a line that needs a running runner) must at least
parse, with top-level ``await`` allowed, and so must a block whose first line names the file it is
(``# ask.py``): a file of a walkthrough, run by that walkthrough's own test (docs/tutorial.md:
tests/agentcli/test_tutorial.py). A typo in any of them fails here, not in a reader's terminal.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def snippets() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1).strip(), m.group(2)))
    return found


SNIPPETS = snippets()


def test_there_are_snippets_to_check() -> None:
    assert len(SNIPPETS) >= 10, [where for where, _, _ in SNIPPETS]


@pytest.mark.parametrize(("where", "info", "code"), SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_snippet(where: str, info: str, code: str) -> None:
    assert info in ("", "fragment"), f"{where}: fence it as ```python or ```python fragment, not ```python {info}"
    if info == "fragment" or re.match(r"# [\w./-]+\.py\n", code):
        compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (
        f"{where} failed (mark it ```python fragment if it is not a whole program):\n{out.stderr}"
    )
