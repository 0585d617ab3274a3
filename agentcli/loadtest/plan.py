"""A validated run plan from a :class:`~.scenario.LoadSpec`, and the target it names.

Everything a user can get wrong is checked here, before anything starts, and raised as
:class:`~.scenario.ScenarioError` or :class:`agentcli.parse.ParseError` (a duration, rate, stage list or
threshold) — the CLI turns each into a sentence and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from agentflow import Config, ConfigError, load_config

from ..parse import parse_duration, parse_rate
from ..thresholds import Threshold, parse_threshold
from .figures import THRESHOLD_FIGURES
from .model import AUTO_VUS_LIMIT
from .scenario import LoadSpec, ScenarioError
from .stages import Profile, Stage, parse_stages
from .targets import NOOP_TOPIC, HttpTarget, KafkaTarget, LoadTarget, RunnerTarget, noop_runner

__all__ = ["Plan", "make_target", "resolve"]

MAX_VUS_LIMIT = 100_000
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class Plan:
    spec: LoadSpec
    stages: list[Stage]
    start: float
    open_model: bool
    thresholds: list[Threshold]
    window_s: float
    think_time_s: float
    graceful_stop_s: float
    abort_grace_s: float
    timeout_s: float
    #: this process's share of the load (1/N in each of N workers)
    scale: float = 1.0

    def profile(self) -> Profile:
        return Profile([Stage(s.duration_s, s.target * self.scale) for s in self.stages], self.start * self.scale)

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    def describe(self) -> str:
        unit = "/s" if self.open_model else " VUs"
        if len(self.stages) == 1 and self.start == self.stages[0].target:
            shape = f"{self.start:g}{unit} for {self.duration_s:g}s"
        else:
            shape = f"{self.start:g}{unit} → " + " → ".join(
                f"{s.target:g}{unit} in {s.duration_s:g}s" for s in self.stages
            )
        model = "open model (arrival rate)" if self.open_model else "closed model (virtual users)"
        return f"{model}: {shape}"

    def scaled(self, scale: float) -> Plan:
        return Plan(
            self.spec, self.stages, self.start, self.open_model, self.thresholds, self.window_s, self.think_time_s,
            self.graceful_stop_s, self.abort_grace_s, self.timeout_s, scale,
        )  # fmt: skip


def resolve(spec: LoadSpec) -> Plan:
    """Check a spec and work out its load profile."""
    open_model = spec.rate is not None
    if spec.rate is not None and spec.vus is not None:
        raise ScenarioError(
            "give rate (open model: arrivals per second) or vus (closed model: virtual users), not both."
        )
    if spec.stages is not None and spec.duration is not None:
        raise ScenarioError("give stages or duration, not both; a constant load takes duration.")
    start = parse_rate(spec.rate) if spec.rate is not None else float(spec.vus or 0)
    if spec.vus is not None and spec.vus < 1:
        raise ScenarioError(f"vus must be 1 or more, not {spec.vus}.")
    if spec.stages is not None:
        stages = parse_stages(spec.stages)
    elif spec.duration is not None:
        if spec.rate is None and spec.vus is None:
            raise ScenarioError("a constant load needs a rate (open model, like 100/s) or vus (closed model).")
        stages = [Stage(parse_duration(spec.duration), start)]
    else:
        raise ScenarioError("say how long to run: a duration (like 30s) or stages (like 10s:50,20s:50,10s:0).")
    if spec.max_vus is not None and not 1 <= spec.max_vus <= MAX_VUS_LIMIT:
        raise ScenarioError(f"max_vus must be from 1 to {MAX_VUS_LIMIT:,}, not {spec.max_vus}.")
    if not 1 <= spec.workers <= MAX_WORKERS:
        raise ScenarioError(f"workers must be from 1 to {MAX_WORKERS}, not {spec.workers}.")
    if spec.workers > 1 and not open_model:
        raise ScenarioError("workers split an arrival rate, so they need the open model; give a rate.")
    if spec.url is not None and spec.app is not None:
        raise ScenarioError("give url (an HTTP endpoint) or app (your Runner), not both.")
    if spec.stream and spec.url is None:
        raise ScenarioError("stream applies to an HTTP url (an OpenAI-compatible chat endpoint); add a url.")
    if spec.url is not None and not spec.url.startswith(("http://", "https://")):
        raise ScenarioError(f"url {spec.url!r} should start with http:// or https://.")
    _check_bus(spec)
    if spec.payload_file is not None and spec.payload not in ({}, None):
        raise ScenarioError("give payload (a template) or payload_file (JSONL), not both.")
    window_s = parse_duration(spec.window)
    if window_s < 0.1:
        raise ScenarioError(f"window {spec.window!r} is too short; use 100ms or more.")
    thresholds = [parse_threshold(t, THRESHOLD_FIGURES, open_model=open_model) for t in spec.thresholds]
    return Plan(
        spec=spec,
        stages=stages,
        start=start,
        open_model=open_model,
        thresholds=thresholds,
        window_s=window_s,
        think_time_s=parse_duration(spec.think_time, allow_zero=True),
        graceful_stop_s=parse_duration(spec.graceful_stop, allow_zero=True),
        abort_grace_s=parse_duration(spec.abort_grace, allow_zero=True),
        timeout_s=parse_duration(spec.timeout),
    )


def _check_bus(spec: LoadSpec) -> None:
    if spec.bus not in ("memory", "kafka"):
        raise ScenarioError(f"bus {spec.bus!r} is not a bus; use memory (in-process) or kafka.")
    if spec.bus == "memory":
        for key, value in (("bootstrap", spec.bootstrap), ("topic", spec.topic), ("emit_only", spec.emit_only)):
            if value:
                raise ScenarioError(f"{key} applies to the Kafka target; add bus = kafka (--bus kafka).")
        return
    if spec.url is not None or spec.app is not None:
        raise ScenarioError(
            "the Kafka target sends events to a topic that your workers consume; give bus = kafka with a topic, "
            "or url / app, not both."
        )
    if not spec.topic:
        raise ScenarioError("the Kafka target needs the topic your workers consume: add --topic NAME.")


def _kafka_config(spec: LoadSpec) -> Config:
    """The config file's settings (or the defaults) on the Kafka backend, with --bootstrap winning."""
    try:
        cfg = load_config(spec.config)
    except ConfigError as exc:
        raise ScenarioError(f"config: {exc}") from None
    kafka = cfg.kafka
    if spec.bootstrap is not None:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=spec.bootstrap)
    return msgspec.structs.replace(cfg, bus=msgspec.structs.replace(cfg.bus, backend="kafka"), kafka=kafka)


def make_target(plan: Plan) -> LoadTarget:
    """The target the spec names; an --app is imported here (errors become ScenarioError)."""
    spec = plan.spec
    if spec.bus == "kafka":
        assert spec.topic is not None  # resolve() checked it
        return KafkaTarget(_kafka_config(spec), spec.topic, timeout_s=plan.timeout_s, emit_only=spec.emit_only)
    if spec.url is not None:
        return HttpTarget(
            spec.url,
            connections=spec.max_vus or AUTO_VUS_LIMIT,
            timeout_s=plan.timeout_s,
            stream=spec.stream,
            headers=spec.headers,
        )
    # Imported late: agentcli.apps pulls in typer, which a --workers process does not otherwise need.
    import typer

    from ..apps import config_or_exit, load_app

    config_path = Path(spec.config) if spec.config is not None else None
    if spec.app is not None:
        try:
            app = load_app(spec.app, Path(spec.app_dir), spec.agent, config_path)
        except typer.BadParameter as exc:
            raise ScenarioError(f"app: {exc.message}") from None
        return RunnerTarget(app.runner, app.topic, f"{spec.app} agent {app.agent}", plan.timeout_s)
    return RunnerTarget(noop_runner(config_or_exit(config_path)), NOOP_TOPIC, "in-process noop agent", plan.timeout_s)
