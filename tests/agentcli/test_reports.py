"""The machine reports: every scenario's real ``--json`` output validates against the committed JSON Schemas,
which equal what the report Structs generate; docs/benchmarks.md is generated from such reports."""

from __future__ import annotations

import json
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from conftest import REPO_ROOT
from kafka_broker import TansuBroker
from typer.testing import CliRunner

from agentcli import runtime
from agentcli.bench.page import Entry, main, read_plan, render_page
from agentcli.bench.schema import (
    KafkaDetails,
    LLMDetails,
    MCPDetails,
    NoopDetails,
    OverloadDetails,
    Report,
    Run,
    StateDetails,
    StreamDetails,
    ToolsDetails,
    WorkflowDetails,
)
from agentcli.loadtest.report import LoadReport
from agentcli.main import app
from agentcli.schemas import DEFAULT_DIR, generate
from agentcli.schemas import main as schemas_main

ROOT = REPO_ROOT
TESTS = ROOT / "tests"
TANSU_TOML = (
    "[kafka]\nenable_idempotence = false\nfetch_max_wait_ms = 5\nsession_timeout_ms = 2000\n"
    "heartbeat_interval_ms = 500\n"
)
#: name → the command's arguments after `agentcli`; each writes REPORTS/NAME.json
BENCHMARKS: dict[str, list[str]] = {
    "bare": ["benchmark", "--requests", "500"],
    "noop-throughput": ["benchmark", "--scenario", "noop", "--mode", "throughput", "--batch-size", "16",
                        "--requests", "2000", "--compare-raw", "--repeat", "2", "--threshold", "raw_ratio>0"],
    "noop-latency": ["benchmark", "--scenario", "noop", "--mode", "latency", "--requests", "500", "--compare-raw"],
    "app": ["benchmark", "--app", "agentcli_app:make_runner", "--app-dir", str(TESTS), "--agent", "echo",
            "--requests", "200"],
    "llm-chat": ["benchmark", "--scenario", "llm-chat", "--compare-raw", "--requests", "100"],
    "llm-embed": ["benchmark", "--scenario", "llm-embed", "--batch-size", "8", "--concurrent-users", "32",
                  "--requests", "160", "--repeat", "2"],
    "overload": ["benchmark", "--scenario", "overload", "--requests", "300", "--duration", "1s", "--repeat", "1"],
    "tools": ["benchmark", "--scenario", "tools", "--requests", "60", "--compare-raw", "--repeat", "2",
              "--threshold", "raw_1call_ratio>0"],
    "mcp": ["benchmark", "--scenario", "mcp", "--requests", "40", "--compare-raw"],
    "stream": ["benchmark", "--scenario", "stream", "--requests", "40", "--compare-raw"],
    "state-memory": ["benchmark", "--scenario", "state", "--requests", "300", "--duration", "0.3s", "--repeat", "2",
                     "--threshold", "get_ratio>0"],
    "state-sqlite": ["benchmark", "--scenario", "state", "--backend", "sqlite", "--requests", "200",
                     "--duration", "0.3s"],
    "state-redis": ["benchmark", "--scenario", "state", "--backend", "redis", "--requests", "200",
                    "--duration", "0.3s"],
    "workflow": ["benchmark", "--scenario", "workflow", "--requests", "60", "--concurrent-users", "16"],
    "loadtest": ["loadtest", "--rate", "200/s", "--duration", "1s", "--threshold", "p99<1s"],
}  # fmt: skip


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, kafka_broker: TansuBroker) -> Iterator[Path]:
    """Real reports of every scenario and bus, written once for this module's tests."""
    out = tmp_path_factory.mktemp("reports")
    config = out / "tansu.toml"
    config.write_text(TANSU_TOML)
    kafka = ["benchmark", "--bus", "kafka", "--bootstrap", kafka_broker.bootstrap, "--config", str(config),
             "--mode", "latency", "--requests", "1000", "--compare-raw"]  # fmt: skip
    kafka_workflow = ["benchmark", "--scenario", "workflow", "--bus", "kafka", "--bootstrap", kafka_broker.bootstrap,
                      "--config", str(config), "--requests", "20", "--concurrent-users", "4"]  # fmt: skip
    small = out / "small.toml"
    small.write_text("[runner]\nevent_buffer_size = 200\nmax_concurrent_events = 50\nmax_waiting_emits = 20\n")
    cli = CliRunner()
    try:
        for name, args in {**BENCHMARKS, "kafka": kafka, "workflow-kafka": kafka_workflow}.items():
            argv = [
                *args,
                *(["--config", str(small)] if name == "overload" else []),
                "--json",
                str(out / f"{name}.json"),
            ]
            runtime.ARGV = argv  # what the console script records; CliRunner does not go through it
            result = cli.invoke(app, argv)
            assert result.exit_code == 0, f"{name}: {result.output}"
    finally:
        runtime.ARGV = None
    yield out


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((DEFAULT_DIR / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def test_the_committed_schemas_are_what_the_report_structs_generate() -> None:
    for name, data in generate().items():
        assert (DEFAULT_DIR / name).read_bytes() == data, f"run python -m agentcli.schemas to update {name}"
    assert schemas_main(["--check"]) == 0


def test_every_scenarios_report_validates_against_the_benchmark_schema(reports: Path) -> None:
    validator = _validator("benchmark-report.schema.json")
    seen = set()
    for path in sorted(reports.glob("*.json")):
        if path.stem == "loadtest":
            continue
        data: dict[str, Any] = json.loads(path.read_text())
        validator.validate(data)
        msgspec.json.decode(path.read_bytes(), type=Report)  # and the Structs read it back
        seen.add((data["scenario"], data["mode"], data["bus"], data["details"]["kind"]))
        for phase in data["phases"]:
            seen.add((phase["scenario"], phase["mode"], phase["bus"], phase["details"]["kind"]))
    assert seen == {
        ("noop", "closed", "memory", "noop"), ("noop", "throughput", "memory", "noop"),
        ("noop", "latency", "memory", "noop"), ("app", "closed", "memory", "noop"),
        ("llm-chat", "closed", "memory", "llm"), ("llm-embed", "closed", "memory", "llm"),
        ("overload", None, "memory", "overload"), ("noop", "latency", "kafka", "kafka"),
        ("tools", "closed", "memory", "tools"), ("mcp", "closed", "memory", "mcp"),
        ("stream", "closed", "memory", "stream"),
        ("state", "closed", "memory", "state"), ("workflow", "closed", "memory", "workflow"),
        ("workflow", "closed", "kafka", "workflow"),
    }  # fmt: skip


def test_the_loadtest_report_validates_against_its_schema(reports: Path) -> None:
    path = reports / "loadtest.json"
    _validator("loadtest-report.schema.json").validate(json.loads(path.read_text()))
    assert msgspec.json.decode(path.read_bytes(), type=LoadReport).machine is not None


def test_the_workflow_report_gives_the_frameworks_own_time_per_step(reports: Path) -> None:
    for name in ("workflow", "workflow-kafka"):
        details = json.loads((reports / f"{name}.json").read_text())["details"]
        # steps that return at once, one run at a time, beside the time beyond the LLM calls' critical path
        assert details["framework_alone_us_per_step"] > 0, name
        assert details["overhead_per_step_us_p50"] is not None, name


def test_a_report_that_breaks_the_schema_is_refused(reports: Path) -> None:
    validator = _validator("benchmark-report.schema.json")
    data = json.loads((reports / "llm-chat.json").read_text())
    for key, bad in (("format", "agentcli.benchmark/0"), ("latency_ms", {"p50": 1.0}), ("ratios", {"raw": "x"})):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**data, key: bad})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({k: v for k, v in data.items() if k != "throughput_per_s"})


def test_the_benchmarks_page_is_made_from_real_reports(reports: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        "".join(
            f'[[benchmark]]\nname = "{name}"\ntitle = "The {name} run"\ncommand = "agentcli {args[0]} ..."\n'
            + ('note = "A note under its table."\n' if name == "overload" else "")
            for name, args in {**BENCHMARKS, "kafka": ["benchmark"], "workflow-kafka": ["benchmark"]}.items()
        )
    )
    page = tmp_path / "benchmarks.md"
    assert main(["--plan", str(plan), "--reports", str(reports), "--output", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Benchmarks\n") and "do not edit by hand" in text
    for heading in ("## Machine", "## Same-run ratios", "## The overload run", "## The loadtest run"):
        assert heading in text
    noop = json.loads((reports / "noop-throughput.json").read_text())
    assert f"**{noop['ratios']['raw']:.2f}x**" in text  # the median ratio, with every round beside it
    assert ", ".join(f"{rr['ratios']['raw']:.2f}" for rr in noop["round_ratios"]) in text
    for ratio in ("`raw`", "`pooled_vs_per_request`", "`batched_vs_unbatched`", "`blocked_vs_raw`"):
        assert ratio in text
    # the exact commands, without where the report went
    assert "`agentcli benchmark --scenario noop --mode throughput --batch-size 16" in text
    assert f"--json {reports}" not in text
    assert "| cores |" in text and "| agentflow, uvloop, msgspec" in text
    assert "A note under its table." in text
    assert "Thresholds: all passed." in text


def test_the_page_refuses_a_missing_report_and_a_bad_plan(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[benchmark]]\nname = "gone"\ntitle = "Gone"\ncommand = "agentcli benchmark"\n')
    assert main(["--plan", str(plan), "--reports", str(tmp_path), "--output", str(tmp_path / "p.md")]) == 2
    plan.write_text('[[benchmark]]\nname = "x"\ntitle = "X"\ncommand = "rm -rf /"\n')
    assert main(["--plan", str(plan), "--reports", str(tmp_path), "--output", str(tmp_path / "p.md")]) == 2
    with pytest.raises(ValueError, match="no reports"):
        render_page([], "plan.toml")


def test_the_repositorys_plan_lists_commands_whose_options_exist() -> None:
    entries = read_plan(ROOT / "loadtests" / "benchmarks" / "plan.toml")
    assert len(entries) >= 10 and all(isinstance(e, Entry) for e in entries)
    cli = CliRunner()
    for e in entries:
        for command in filter(None, (e.command, e.server)):
            # --help is handled after every option name was read and before anything runs: a renamed or removed
            # flag exits 2 ("No such option").
            result = cli.invoke(app, [*shlex.split(command)[1:], "--help"])
            assert result.exit_code == 0, f"{command}: {result.output}"
    result = cli.invoke(app, ["benchmark", "--no-such-flag", "--help"])
    assert result.exit_code == 2


def test_run_executes_the_plan_with_its_server_and_writes_the_page(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[benchmark]]\nname = "chat"\ntitle = "Chat against a server in another process"\n'
        f'server = "agentcli mock-llm --port {port}"\nready = "mock LLM serving on"\n'
        f'command = "agentcli benchmark --scenario llm-chat --requests 50 --llm-url http://127.0.0.1:{port}/v1"\n'
        '[[benchmark]]\nname = "load"\ntitle = "A short load test"\n'
        'command = "agentcli loadtest --rate 50/s --duration 500ms"\n'
    )
    page, reports = tmp_path / "benchmarks.md", tmp_path / "reports"
    assert main(["--plan", str(plan), "--run", "--reports", str(reports), "--output", str(page)]) == 0
    chat = json.loads((reports / "chat.json").read_text())
    assert chat["completed"] == 50 and chat["details"]["server"] == f"http://127.0.0.1:{port}/v1"
    assert chat["details"]["server_stats"]["requests"] == 50  # the server's own count, read before it stopped
    text = page.read_text()
    assert f"`agentcli benchmark --scenario llm-chat --requests 50 --llm-url http://127.0.0.1:{port}/v1`" in text
    assert "`agentcli loadtest --rate 50/s --duration 500ms`" in text
    with socket.socket() as s:  # the server was stopped
        assert s.connect_ex(("127.0.0.1", port)) != 0
    # --only re-runs one benchmark; the page keeps the other's report as it was.
    chat_before = (reports / "chat.json").stat().st_mtime_ns
    load_before = (reports / "load.json").read_bytes()
    assert main(["--plan", str(plan), "--run", "--only", "load", "--reports", str(reports), "--output", str(page)]) == 0
    assert (reports / "chat.json").stat().st_mtime_ns == chat_before
    assert (reports / "load.json").read_bytes() != load_before
    assert main(["--plan", str(plan), "--run", "--only", "nope", "--reports", str(reports), "--output", str(page)]) == 2
    assert main(["--plan", str(plan), "--only", "load", "--reports", str(reports), "--output", str(page)]) == 2


def test_every_report_key_is_documented() -> None:
    doc = (ROOT / "docs" / "benchmarking.md").read_text()
    section = doc[doc.index("## The JSON report") : doc.index("## LLM scenarios")]
    details = (NoopDetails, LLMDetails, KafkaDetails, OverloadDetails, ToolsDetails, MCPDetails, StreamDetails,
               StateDetails, WorkflowDetails)  # fmt: skip
    for struct in (Report, Run, *details):
        for name in struct.__struct_fields__:
            assert f"`{name}`" in section, f"{struct.__name__}.{name} is not in docs/benchmarking.md's report section"
