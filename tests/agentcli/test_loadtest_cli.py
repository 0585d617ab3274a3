"""agentcli loadtest from the command line: thresholds and exit codes, bad syntax, scenarios, workers, and the HTTP
target (plain and streaming); compare is tested in test_compare.py, the HTML report in test_reports_html.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import REPO_ROOT
from typer.testing import CliRunner, Result

from agentcli.loadtest.plan import resolve
from agentcli.loadtest.report import read_report
from agentcli.loadtest.scenario import LoadSpec, load_scenario, make_spec
from agentcli.loadtest.session import run_local
from agentcli.main import app

ROOT = REPO_ROOT
cli = CliRunner()


def loadtest(*args: str, code: int) -> Result:
    result = cli.invoke(app, ["loadtest", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def test_passing_thresholds_exit_0_and_a_failing_one_exits_1(tmp_path: Path) -> None:
    ok = loadtest("--rate", "100/s", "--duration", "1s", "--threshold", "p99<10s", "--threshold",
                  "rate>=0.9*target", "--json", str(tmp_path / "a.json"), code=0)  # fmt: skip
    assert "all thresholds passed" in ok.output
    rep = read_report(tmp_path / "a.json")
    assert rep.passed and rep.run.started == 100 and rep.run.errors == 0
    assert {v.scope for v in rep.thresholds} == {"stage 1", "run"}
    assert rep.spec["rate"] == "100/s" and rep.versions["agentflow"]
    bad = loadtest("--rate", "100/s", "--duration", "1s", "--threshold", "p50<1us", "--threshold",
                   "error_rate<0.01", "--json", str(tmp_path / "b.json"), code=1)  # fmt: skip
    assert "FAIL" in bad.output and "a threshold failed" in bad.output
    rep = read_report(tmp_path / "b.json")
    assert not rep.passed
    assert [v.passed for v in rep.thresholds] == [False, False, True, True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "10/s", "--stages", "30s:x"], "has target 'x'"),
        (["--rate", "10/s", "--stages", "30x:10"], "not a duration"),
        (["--rate", "10/s", "--stages", "10s"], "has no target"),
        (["--rate", "fast", "--duration", "1s"], "is not a rate"),
        (["--rate", "10/s", "--duration", "1s", "--threshold", "p99<<3"], "is not a duration"),
        (["--rate", "10/s", "--duration", "1s", "--threshold", "latency<3ms"], "unknown figure"),
        (["--rate", "10/s", "--duration", "1s", "--threshold", "p99 fast"], "is not a threshold"),
        (["--vus", "2", "--duration", "1s", "--threshold", "rate>=target"], "only the open model"),
        (["--rate", "10/s", "--vus", "2", "--duration", "1s"], "not both"),
        (["--rate", "10/s"], "say how long to run"),
        (["--vus", "2", "--duration", "1s", "--workers", "2"], "need the open model"),
        (["--rate", "10/s", "--duration", "1s", "--bus", "kafka"], "needs the topic"),
        (["--rate", "10/s", "--duration", "1s", "--bus", "nats", "--topic", "t"], "is not a bus"),
        (["--rate", "10/s", "--duration", "1s", "--topic", "t"], "add bus = kafka"),
        (["--rate", "10/s", "--duration", "1s", "--bus", "kafka", "--topic", "t", "--url", "http://x"], "not both"),
        (["--script", "nope.toml"], "does not exist"),
    ],
)
def test_bad_usage_exits_2_with_a_sentence(args: list[str], message: str) -> None:
    result = loadtest(*args, code=2)
    assert message in " ".join(result.output.replace("│", " ").split()), result.output


@pytest.mark.parametrize("path", sorted((ROOT / "loadtests").glob("*.*")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    options, script = load_scenario(path)
    plan = resolve(make_spec(options, str(path)))
    assert plan.spec.description
    assert plan.duration_s > 0 and plan.thresholds
    if path.suffix == ".py":
        assert script is not None and script.payload(3)["n"] == 3


def test_python_scenario_payloads_and_checks(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "options = {'description': 'x', 'rate': '200/s', 'duration': '1s'}\n"
        "def payload(i):\n    return i\n"
        "def check(result):\n    return None\n"
    )
    out = tmp_path / "s.json"
    loadtest("--script", str(script), "--json", str(out), code=0)
    assert read_report(out).run.completed == 200
    toml = tmp_path / "t.toml"
    toml.write_text('rate = "50/s"\nduration = "1s"\nthreshold = ["p99<1s"]\n')
    result = loadtest("--script", str(toml), code=2)
    assert "threshold" in result.output


@pytest.mark.slow
def test_workers_merge_their_windows_into_one_report(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    loadtest("--rate", "300/s", "--duration", "2s", "--workers", "2", "--window", "500ms", "--json", str(out),
             code=0)  # fmt: skip
    rep = read_report(out)
    assert rep.workers == 2
    assert rep.run.scheduled == 600 and rep.run.started + rep.run.dropped == 600
    assert rep.run.latency_ms["latency"]["count"] == rep.run.completed
    assert len(rep.windows) == 4
    assert sum(w.scheduled for w in rep.windows) == 600


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(0.02)  # time to first token
    for word in ("one ", "two ", "three"):
        chunk = {"choices": [{"delta": {"content": word}}]}
        await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
        await asyncio.sleep(0.005)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _fail(request: web.Request) -> web.Response:
    return web.Response(status=503)


async def test_http_target_plain_streaming_and_errors() -> None:
    http = web.Application()
    http.router.add_post("/v1/chat/completions", _chat)
    http.router.add_post("/fail", _fail)
    async with TestServer(http, host="127.0.0.1") as server:
        url = str(server.make_url("/v1/chat/completions"))
        plain = await run_local(resolve(LoadSpec(rate="100/s", duration="1s", url=url)), None)
        assert plain.collector.total().completed == 100
        spec = LoadSpec(rate="50/s", duration="1s", url=url, stream=True,
                        payload={"model": "m", "messages": [{"role": "user", "content": "${i}"}]})  # fmt: skip
        streamed = (await run_local(resolve(spec), None)).collector.total()
        assert streamed.completed == 50
        assert streamed.hists["ttft"].count == 50 and streamed.hists["ttft"].percentile(50) >= 0.02
        assert streamed.hists["itl"].count == 100 and streamed.hists["itl"].max_s >= 0.004
        failing = await run_local(
            resolve(LoadSpec(rate="50/s", duration="1s", url=str(server.make_url("/fail")))), None
        )
        total = failing.collector.total()
        assert total.errors == 50 and total.errors_by_kind == {"http_503": 50}
