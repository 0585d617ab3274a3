"""Loading what ``--app`` names: a user's un-started Runner, or a function that builds one from a Config.

Everything that can go wrong here is the user's to fix, so it becomes ``typer.BadParameter`` (usage, exit 2)
or, for a bad config file, the ConfigError's own sentence (exit 2) — never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from agentflow import Config, ConfigError, Runner, RunnerState, load_config

from .output import error_line

__all__ = ["App", "check_destination", "config_or_exit", "fail", "load_app", "load_runner"]


@dataclass(frozen=True, slots=True)
class App:
    """A user's un-started Runner and the agent of it to load: what ``--app`` and ``--agent`` named."""

    runner: Runner
    ref: str
    agent: str
    topic: str


def fail(message: str) -> typer.Exit:
    error_line(message)
    return typer.Exit(code=2)


def config_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def load_runner(ref: str, app_dir: Path, config_path: Path | None) -> Runner:
    """Import ``module:attr`` or ``path/to/file.py:attr``: an un-started Runner, or a function (config) -> Runner."""
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(
            f"{ref!r} should look like module:attribute or path/to/app.py:attribute, for example myapp.agents:runner."
        )
    obj = _import(module_name, app_dir)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise typer.BadParameter(f"{module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    runner = _runner_of(obj, ref, config_path)
    if runner.state is not RunnerState.CREATED:
        raise typer.BadParameter(f"the Runner {ref} is {runner.state.value}; agentcli needs one not yet started.")
    if not runner.agent_topics:
        raise typer.BadParameter(f"the Runner {ref} has no agents registered.")
    return runner


def _import(module_name: str, app_dir: Path) -> Any:
    """The module a ``--app`` names (a dotted name searched in ``app_dir`` first, or a ``.py`` file)."""
    try:
        if not module_name.endswith(".py"):
            sys.path.insert(0, str(app_dir.resolve()))
            return importlib.import_module(module_name)
        path = Path(module_name)
        if not path.is_file():
            raise typer.BadParameter(f"{module_name!r} is not a file.")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        sys.path.insert(0, str(path.resolve().parent))
        spec.loader.exec_module(module)
        return module
    except typer.BadParameter:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise typer.BadParameter(
                f"cannot import {module_name!r}: no such module in {app_dir.resolve()} (set --app-dir) or on sys.path."
            ) from None
        raise typer.BadParameter(f"importing {module_name!r} failed: {exc}.") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: report it as their error, briefly
        raise typer.BadParameter(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None


def _runner_of(obj: Any, ref: str, config_path: Path | None) -> Runner:
    """``obj`` itself when it is a Runner, else what calling it with the loaded config returns."""
    if isinstance(obj, Runner):
        if config_path is not None:
            raise typer.BadParameter(
                f"{ref} is a Runner built with its own config, so --config cannot apply to it; point at a "
                "function that takes a Config and returns the Runner, or drop --config."
            )
        return obj
    if not callable(obj):
        raise typer.BadParameter(f"{ref} is a {type(obj).__name__}, not a Runner or a function returning one.")
    config = config_or_exit(config_path)
    try:
        runner = obj(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise typer.BadParameter(f"calling {ref}(config) raised {type(exc).__name__}: {exc}") from None
    if not isinstance(runner, Runner):
        raise typer.BadParameter(f"{ref}(config) returned {type(runner).__name__}, not an agentflow Runner.")
    return runner


def load_app(ref: str, app_dir: Path, agent: str | None, config_path: Path | None) -> App:
    """Load ``ref`` with :func:`load_runner` and pick the agent to load (``agent``, or the only one)."""
    runner = load_runner(ref, app_dir, config_path)
    topics = runner.agent_topics
    if not topics:
        raise typer.BadParameter(f"the Runner {ref} has no agents registered.")
    names = ", ".join(sorted(topics))
    if agent is None:
        if len(topics) > 1:
            raise typer.BadParameter(f"{ref} has several agents ({names}); choose one.", param_hint="'--agent'")
        agent = next(iter(topics))
    elif agent not in topics:
        raise typer.BadParameter(f"{ref} has no agent named {agent!r}; it has: {names}.", param_hint="'--agent'")
    return App(runner, ref, agent, topics[agent])


def check_destination(url: str | None, bootstrap: str | None, config: Path | None, *, worker: str = "a worker") -> None:
    """``--url`` (a worker's HTTP server) or ``--bootstrap`` (Kafka): exactly one, well formed; usage error else."""
    if (url is None) == (bootstrap is None):
        raise typer.BadParameter(
            f"give --url http://host:port ({worker}) or --bootstrap HOST:PORT (Kafka), one of them.",
            param_hint="'--url'",
        )
    if url is not None and not re.fullmatch(r"https?://[^/\s]+/?", url):
        raise typer.BadParameter(f"{url!r} is not http://host:port.", param_hint="'--url'")
    if url is not None and config is not None:
        raise typer.BadParameter(
            "--config holds the [kafka] settings; it goes with --bootstrap.", param_hint="'--config'"
        )
