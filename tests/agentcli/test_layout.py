"""agentcli's packages depend on each other the way the architecture says: the operator commands never load the
benchmark or the load tester, the root app loads no scenario until one runs, and agentflow is reached through its
public API (the few exceptions are listed here, so a new one is a decision, not an accident)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT
AGENTCLI = ROOT / "agentcli"
#: agentflow modules agentcli imports beyond `from agentflow import ...`, and why.
PRIVATE_IMPORTS = {
    # mock-llm's option defaults; MockLLMServer is public, but a lazy attribute of agentflow that mypy sees untyped
    ("agentcli/ops/mockllm.py", "agentflow.llm.mock"),
    ("agentcli/bench/llm.py", "agentflow.llm.mock"),
    ("agentcli/bench/tools.py", "agentflow.llm.mock"),
    ("agentcli/bench/stream.py", "agentflow.llm.mock"),
    # the raw aiokafka baseline connects exactly as the Kafka bus does (security, bootstrap, client id)
    ("agentcli/bench/kafka.py", "agentflow.bus.kafka"),
    # config show/check name the environment overrides by the loader's own prefix
    ("agentcli/ops/config.py", "agentflow.config"),
    # run --dry-run answers every LLM call with the mock server, typed (as mock-llm does)
    ("agentcli/ops/dryrun.py", "agentflow.llm.mock"),
    # cost-report --store opens the state backend that keeps the cost history, as the runner's [memory] does
    ("agentcli/insight/cost_report.py", "agentflow.state"),
    # the load generator's plain-HTTP requests share the LLM client's lean HTTP/1.1 client (one implementation)
    ("agentcli/loadtest/targets.py", "agentflow.http1"),
    # the memory state benchmark's bare loop: the memory backend's own get/commit, without the store
    ("agentcli/bench/state.py", "agentflow.state"),
}


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module", ["agentcli.ops.run", "agentcli.ops.emit", "agentcli.ops.dlq", "agentcli.ops.mockllm"]
)
def test_the_operator_commands_load_neither_the_benchmark_nor_the_load_tester(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    assert not {m for m in loaded if m.startswith(("agentcli.bench", "agentcli.loadtest"))}


def test_the_root_app_loads_no_benchmark_scenario_until_one_runs() -> None:
    loaded = _loaded_after("import agentcli.main")
    scenarios = {"harness", "noop_report", "raw", "llm", "kafka", "kafka_workers", "overload", "blocked", "profiling",
                 "tansu", "page", "tools", "mcp_pools", "mcp_server", "stream", "state", "workflow",
                 "redisd"}  # fmt: skip
    assert not {m for m in loaded if m.removeprefix("agentcli.bench.") in scenarios}


def test_agentcli_reaches_agentflow_through_its_public_api() -> None:
    found = set()
    for path in AGENTCLI.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("agentflow."):
                    found.add((path.relative_to(ROOT).as_posix(), name))
    assert found == PRIVATE_IMPORTS
