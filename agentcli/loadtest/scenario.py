"""Scenarios: the options of a run from a TOML file, a Python file, and the command line, and their payloads.

A TOML scenario holds the same keys as the command-line options (see docs/load-testing.md); a Python scenario
may also define ``payload(i) -> object`` and ``check(result) -> bool | str | None`` for custom payloads and
checks (a ``str`` or ``False`` counts the iteration as an error of that kind). Command-line options override
the file. :class:`LoadSpec` is also what the parent process sends to ``--workers`` processes.
"""

from __future__ import annotations

import importlib.util
import random
import re
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["LoadSpec", "ScenarioError", "build_payload", "load_scenario"]

#: Largest JSONL payload file read into memory, and its line count.
MAX_PAYLOAD_FILE_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_LINES = 1_000_000
_PLACEHOLDER = re.compile(r"\$\{(i|uuid|random|time)\}")


class ScenarioError(ValueError):
    """A scenario file or option that cannot be used; the message says what to change."""


class LoadSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything that defines a run; the keys of a TOML scenario (durations and rates as text)."""

    description: str = ""
    #: open model: arrivals per second ("500/s"); with stages, the rate the first stage ramps from
    rate: str | float | None = None
    #: closed model: virtual users; with stages, the VUs the first stage ramps from
    vus: int | None = None
    stages: str | None = None
    duration: str | None = None
    #: open model: most iterations in flight; None derives it from the rate and the observed latency
    max_vus: int | None = None
    think_time: str = "0s"
    window: str = "1s"
    graceful_stop: str = "10s"
    thresholds: list[str] = msgspec.field(default_factory=list)
    abort_on_fail: bool = False
    abort_grace: str = "5s"
    url: str | None = None
    stream: bool = False
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: str = "30s"
    app: str | None = None
    agent: str | None = None
    app_dir: str = "."
    config: str | None = None
    #: "memory" (the in-process targets) or "kafka": events to ``topic`` through agentflow.Producer
    bus: str = "memory"
    bootstrap: str | None = None
    topic: str | None = None
    #: Kafka: emit without waiting for a result (latency = until the brokers confirmed the write)
    emit_only: bool = False
    payload: Any = msgspec.field(default_factory=dict)
    payload_file: str | None = None
    workers: int = 1
    #: a Python scenario file whose payload()/check() to use (set from --script)
    script: str | None = None

    @property
    def open_model(self) -> bool:
        return self.rate is not None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}.") from None


def _import_script(path: Path) -> Any:
    name = f"agentcli_scenario_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"{path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: report it as theirs
        raise ScenarioError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    return getattr(module, "scenario", module)


def load_scenario(path: Path) -> tuple[dict[str, Any], Any | None]:
    """(options, python scenario object or None) from a ``.toml`` or ``.py`` file."""
    if not path.is_file():
        raise ScenarioError(f"scenario file {str(path)!r} does not exist.")
    if path.suffix == ".toml":
        return _read_toml(path), None
    if path.suffix == ".py":
        obj = _import_script(path)
        options = getattr(obj, "options", {}) or {}
        if not isinstance(options, dict):
            raise ScenarioError(f"{path}: 'options' must be a dict of scenario keys, not {type(options).__name__}.")
        for name in ("payload", "check"):
            fn = getattr(obj, name, None)
            if fn is not None and not callable(fn):
                raise ScenarioError(f"{path}: {name!r} must be a function.")
        return dict(options), obj
    raise ScenarioError(f"{path} is neither a .toml nor a .py scenario.")


def make_spec(options: dict[str, Any], where: str) -> LoadSpec:
    try:
        return msgspec.convert(options, LoadSpec)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{where}: {exc}; see docs/load-testing.md for the scenario keys.") from None


def _compile(template: Any) -> Callable[[int], Any] | None:
    """A function i -> value for a template with placeholders, or None when it has none (sent as is)."""
    if isinstance(template, str):
        if _PLACEHOLDER.search(template) is None:
            return None
        whole = _PLACEHOLDER.fullmatch(template)
        if whole is not None:
            kind = whole.group(1)
            return lambda i: _value(kind, i)
        return lambda i: _PLACEHOLDER.sub(lambda m: str(_value(m.group(1), i)), template)
    if isinstance(template, dict):
        parts = {k: _compile(v) for k, v in template.items()}
        if all(p is None for p in parts.values()):
            return None
        return lambda i: {k: (p(i) if p is not None else template[k]) for k, p in parts.items()}
    if isinstance(template, list):
        items = [_compile(v) for v in template]
        if all(p is None for p in items):
            return None
        return lambda i: [p(i) if p is not None else v for p, v in zip(items, template, strict=True)]
    return None


def _value(kind: str, i: int) -> Any:
    if kind == "i":
        return i
    if kind == "uuid":
        return uuid.uuid4().hex
    if kind == "random":
        return random.random()
    return time.time()


def _read_jsonl(path: Path) -> list[Any]:
    if not path.is_file():
        raise ScenarioError(f"payload file {str(path)!r} does not exist.")
    if path.stat().st_size > MAX_PAYLOAD_FILE_BYTES:
        raise ScenarioError(f"payload file {path} is over {MAX_PAYLOAD_FILE_BYTES // 2**20} MB; use a smaller sample.")
    decoder = msgspec.json.Decoder()
    out: list[Any] = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(out) >= MAX_PAYLOAD_LINES:
                raise ScenarioError(f"payload file {path} has over {MAX_PAYLOAD_LINES:,} lines; use fewer.")
            try:
                out.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise ScenarioError(f"{path} line {n} is not JSON ({exc}); write one JSON value per line.") from None
    if not out:
        raise ScenarioError(f"payload file {path} has no payloads; write one JSON value per line.")
    return out


def build_payload(spec: LoadSpec, script: Any | None) -> Callable[[int], Any]:
    """The payload of iteration ``i``: the script's payload(i), the JSONL file's line i (cycling), or the template."""
    fn = getattr(script, "payload", None) if script is not None else None
    if fn is not None:
        return fn  # type: ignore[no-any-return]
    if spec.payload_file is not None:
        lines = _read_jsonl(Path(spec.payload_file))
        n = len(lines)
        return lambda i: lines[i % n]
    compiled = _compile(spec.payload)
    if compiled is not None:
        return compiled
    fixed = spec.payload
    return lambda i: fixed
