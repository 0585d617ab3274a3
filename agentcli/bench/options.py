"""What ``agentcli benchmark`` was asked for (:class:`Options`), and the checks that refuse, with a sentence and
exit code 2, what does not apply to the chosen scenario, mode or bus."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import typer

from ..thresholds import Threshold
from .measure import Mode

__all__ = [
    "BusChoice",
    "Options",
    "StateBackendChoice",
    "ProfileKind",
    "Scenario",
    "check_kafka",
    "check_llm",
    "check_noop",
    "check_overload",
    "check_paths",
    "check_ratios",
    "check_tool_scenario",
    "check_state",
    "check_workflow",
    "usage",
]


class Scenario(enum.StrEnum):
    noop = "noop"
    llm_chat = "llm-chat"
    llm_embed = "llm-embed"
    overload = "overload"
    tools = "tools"
    mcp = "mcp"
    stream = "stream"
    state = "state"
    workflow = "workflow"


class StateBackendChoice(enum.StrEnum):
    memory = "memory"
    sqlite = "sqlite"
    redis = "redis"


class BusChoice(enum.StrEnum):
    memory = "memory"
    kafka = "kafka"


class ProfileKind(enum.StrEnum):
    cpu = "cpu"
    memory = "memory"


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, parsed but not yet checked against the scenario."""

    scenario: Scenario | None
    app_ref: str | None
    agent: str | None
    app_dir: Path
    payload: str | None
    config: Path | None
    mode: Mode
    users: int | None
    requests: int | None
    seconds: float | None
    batch_size: int
    agent_batch_size: int | None
    load_fraction: float | None
    compare_raw: bool
    repeat: int | None
    profile: ProfileKind | None
    output: Path | None
    json_path: Path | None
    html_path: Path | None
    llm_url: str | None
    dimensions: int
    bus: BusChoice
    bootstrap: str | None
    thresholds: list[Threshold]
    started_at: str
    backend: StateBackendChoice | None = None
    #: --bus kafka, latency mode: the offered rate of every side (events/s)
    rate: float | None = None

    def given(self) -> dict[str, bool]:
        """Which of the options that only some scenarios take were given."""
        return {
            "--app": self.app_ref is not None,
            "--agent": self.agent is not None,
            "--payload": self.payload is not None,
            "--mode": self.mode is not Mode.closed,
            "--concurrent-users": self.users is not None,
            "--batch-size": self.batch_size > 1,
            "--agent-batch-size": self.agent_batch_size is not None,
            "--load-fraction": self.load_fraction is not None,
            "--rate": self.rate is not None,
            "--compare-raw": self.compare_raw,
            "--profile": self.profile is not None,
            "--output": self.output is not None,
            "--llm-url": self.llm_url is not None,
            "--dimensions": self.dimensions != 8,
            "--bootstrap": self.bootstrap is not None,
            "--backend": self.backend is not None,
        }


def usage(message: str, flag: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def _only(o: Options, takes: set[str], where: str, listing: str) -> None:
    for flag, given in o.given().items():
        if given and flag not in takes:
            raise usage(f"{flag} does not apply to {where} (it takes {listing}).", flag)


def check_paths(o: Options) -> None:
    for path, flag in ((o.output, "--output"), (o.json_path, "--json"), (o.html_path, "--report")):
        if path is not None and not path.parent.is_dir():
            raise usage(f"directory {str(path.parent)!r} does not exist.", flag)
    if o.bootstrap is not None and o.bus is not BusChoice.kafka:
        raise usage("--bootstrap applies to --bus kafka.", "--bootstrap")
    if o.backend is not None and o.scenario is not Scenario.state:
        raise usage("--backend picks the state backend of --scenario state.", "--backend")


def _requests_or_duration(o: Options) -> None:
    if o.requests is not None and o.seconds is not None:
        raise usage("give --requests or --duration, not both.", "--duration")


def check_overload(o: Options) -> None:
    takes = "--requests, --duration, --repeat, --config, --bus, --bootstrap, --json and --threshold"
    _only(o, {"--bootstrap"}, "--scenario overload", takes)


def check_state(o: Options) -> None:
    if o.bus is BusChoice.kafka:
        raise usage("--scenario state measures the state store, on the memory bus; drop --bus.", "--bus")
    takes = {"--backend", "--concurrent-users", "--compare-raw"}
    listing = ", ".join(sorted(takes)) + ", --requests (operations), --duration (of acked_write), --repeat, --config"
    _only(o, takes, "--scenario state", listing)


def check_workflow(o: Options) -> None:
    takes = {"--concurrent-users", "--bootstrap"}
    _only(o, takes, "--scenario workflow", ", ".join(sorted(takes)) + ", --requests, --duration, --repeat, --bus")
    _requests_or_duration(o)


def check_llm(o: Options) -> None:
    if o.bus is BusChoice.kafka:
        raise usage("--bus kafka runs the noop scenario; drop --scenario or --bus.", "--bus")
    takes = {"--concurrent-users", "--compare-raw", "--batch-size", "--dimensions", "--llm-url"}
    _only(o, takes, f"--scenario {o.scenario}", ", ".join(sorted(takes)) + ", --requests, --duration, --repeat")
    _requests_or_duration(o)
    if o.llm_url is not None and not o.llm_url.startswith(("http://", "https://")):
        raise usage(f"{o.llm_url!r} is not an http(s) URL.", "--llm-url")


def check_tool_scenario(o: Options) -> None:
    """``--scenario tools | mcp | stream``: closed loops against servers the benchmark starts itself."""
    if o.bus is BusChoice.kafka:
        raise usage("--bus kafka runs the noop scenario; drop --scenario or --bus.", "--bus")
    takes = {"--concurrent-users", "--compare-raw"}
    _only(o, takes, f"--scenario {o.scenario}", ", ".join(sorted(takes)) + ", --requests, --duration, --repeat")
    _requests_or_duration(o)


def check_kafka(o: Options) -> None:
    if o.mode is Mode.closed:
        raise usage(
            "--bus kafka measures --mode throughput or --mode latency (latency also reports saturation).", "--mode"
        )
    takes = {"--mode", "--batch-size", "--load-fraction", "--rate", "--compare-raw", "--bootstrap"}
    _only(o, takes, "--bus kafka", ", ".join(sorted(takes)) + ", --requests, --repeat, --config")
    if o.seconds is not None:
        raise usage("--bus kafka runs a number of events: give --requests.", "--duration")
    _check_load_fraction(o)
    if o.rate is not None and o.mode is not Mode.latency:
        raise usage("--rate is the offered rate of --mode latency.", "--rate")
    if o.rate is not None and o.load_fraction is not None:
        raise usage("give --rate (events/s) or --load-fraction (of saturation), not both.", "--rate")


def _check_load_fraction(o: Options) -> None:
    if o.load_fraction is None:
        return
    if o.mode is not Mode.latency:
        raise usage("--load-fraction applies to --mode latency only.", "--load-fraction")
    if not 0 < o.load_fraction <= 1:
        raise usage(f"{o.load_fraction} is not in (0, 1]; 0.5 is half of saturation.", "--load-fraction")


def check_noop(o: Options) -> None:
    _requests_or_duration(o)
    if o.rate is not None:
        raise usage("--rate paces both sides of --bus kafka --mode latency; the memory bus takes --load-fraction.",
                    "--rate")  # fmt: skip
    for flag in ("--llm-url", "--dimensions"):
        if o.given()[flag]:
            raise usage(f"{flag} applies to --scenario llm-chat or llm-embed.", flag)
    if o.profile is not None and o.output is None:
        raise usage(f"--profile {o.profile.value} needs --output FILE.", "--output")
    if o.output is not None and o.profile is None:
        raise usage("--output is where --profile writes; add --profile cpu or --profile memory.", "--output")
    _check_app(o)
    if o.payload is not None and o.mode is Mode.latency and o.app_ref is None:
        raise usage(
            "the noop scenario's latency mode sends each event's intended time as its payload; drop --payload.",
            "--payload",
        )
    if o.users is not None and o.mode is not Mode.closed:
        raise usage("--concurrent-users applies to --mode closed only.", "--concurrent-users")
    if o.batch_size > 1 and (o.mode is Mode.closed or (o.mode is Mode.latency and o.app_ref is not None)):
        raise usage(
            "--batch-size applies to throughput and latency modes (and not to an --app in latency mode, which "
            "sends requests).",
            "--batch-size",
        )
    _check_load_fraction(o)


def _check_app(o: Options) -> None:
    if o.app_ref is not None and o.scenario is not None:
        raise usage("give --scenario or --app, not both.", "--app")
    if o.agent is not None and o.app_ref is None:
        raise usage("--agent picks an agent of --app; add --app MODULE:ATTR.", "--agent")
    if o.compare_raw and o.app_ref is not None:
        raise usage(
            "the raw baseline can only repeat the noop scenario's work, not your agent's; drop --compare-raw.",
            "--compare-raw",
        )
    if o.agent_batch_size is not None and o.app_ref is not None:
        raise usage(
            "--agent-batch-size shapes the noop agent; your --app agent is registered by your code.",
            "--agent-batch-size",
        )


def check_ratios(thresholds: list[Threshold], planned: set[str], how: str) -> None:
    """A threshold on a ratio this run does not measure is a usage error, not a silent 'no data'."""
    for th in thresholds:
        name = th.metric.removesuffix("_ratio")
        if th.metric.endswith("_ratio") and name not in planned:
            reports = ", ".join(f"{n}_ratio" for n in sorted(planned)) or "no ratio"
            raise usage(f"{th.text!r}: this run has no {name!r} ratio; it reports {reports}{how}.", "--threshold")
