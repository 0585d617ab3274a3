"""``agentcli init NAME``: a new project that runs, tests and load-tests itself from its first minute.

It writes, into a new directory ``NAME``:

* ``app.py`` — ``build(config) -> Runner`` with one agent (``agentcli run app:build --config agentflow.toml``);
* ``agentflow.toml`` — the config (memory bus, the HTTP server on port 8080);
* ``tests/test_app.py`` — tests of the agent alone (:func:`agentflow.testing.run_handler`) and on a running
  Runner (:class:`agentflow.testing.EventRecorder`), run with ``pytest``;
* ``loadtests/smoke.toml`` — a load-test scenario with thresholds (``agentcli loadtest --script ...``);
* ``pyproject.toml`` and ``README.md``.

Nothing is overwritten: an existing ``NAME`` that is not an empty directory is refused.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agentflow import __version__

__all__ = ["init", "project_files"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

_APP = '''"""The agents of {name}: ``build(config)`` returns the Runner that ``agentcli run app:build`` starts."""

from __future__ import annotations

import logging

from agentflow import Config, Context, Event, Runner

logger = logging.getLogger(__name__)


async def greet(event: Event, ctx: Context) -> dict[str, str]:
    """Answer a greeting, and tell the ``greeted`` topic who was greeted."""
    name = str(event.payload.get("name", "world")) if isinstance(event.payload, dict) else "world"
    await ctx.emit("greeted", {{"name": name}}, key=event.key)
    return {{"text": f"Hello, {{name}}!"}}


async def audit(event: Event, ctx: Context) -> None:
    """Read the ``greeted`` topic (a topic nobody reads would drop its events)."""
    logger.debug("greeted %s", event.payload)


def build(config: Config | None = None) -> Runner:
    runner = Runner(config)
    runner.agent("greetings", name="greet")(greet)
    runner.agent("greeted", name="audit")(audit)
    return runner
'''

_CONFIG = """# The config of {name}; every key is described in agentflow's docs/configuration.md.
# Any key can be overridden from the environment: AGENTFLOW__RUNNER__WORKER_POOL_SIZE=128.

[runner]
worker_pool_size = 64
event_timeout_s = 30.0

[bus]
backend = "memory"

[monitoring]
host = "127.0.0.1"
port = 8080
"""

_TEST = '''"""Tests of {name}'s agents: one handler alone, then the whole Runner."""

from __future__ import annotations

import asyncio

from agentflow import config_from_dict
from agentflow.testing import EventRecorder, run_handler

from app import build, greet


def test_greet_answers_and_emits() -> None:
    result = asyncio.run(run_handler(greet, {{"name": "Ada"}}, topic="greetings"))
    assert result.error is None
    assert result.value == {{"text": "Hello, Ada!"}}
    assert result.emitted == [("greeted", {{"name": "Ada"}}, None)]


def test_the_runner_answers_a_request_and_the_follow_up_arrives() -> None:
    async def scenario() -> None:
        runner = build(config_from_dict({{}}))
        recorder = EventRecorder()
        runner.agent("greeted", name="recorder")(recorder.handler)
        async with runner:
            answer = await runner.request("greetings", {{"name": "Grace"}}, timeout_s=5)
            [event] = await recorder.wait_for(1)
        assert answer == {{"text": "Hello, Grace!"}}
        assert event.payload == {{"name": "Grace"}}

    asyncio.run(scenario())
'''

_LOADTEST = """# agentcli loadtest --script loadtests/smoke.toml (from the project's directory)
description = "{name}: greetings at a steady rate, in process"
app = "app:build"
config = "agentflow.toml"
agent = "greet"
rate = "200/s"
duration = "10s"
payload = {{ name = "load ${{i}}" }}
thresholds = ["p99<50ms", "error_rate<0.01"]
"""

_PYPROJECT = """[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["agentflow-runner>={version}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
"""

_README = """# {name}

An [agentflow](https://pypi.org/project/agentflow-runner/) project.

    pytest                                                    # the tests in tests/
    agentcli run app:build --config agentflow.toml            # a worker on http://127.0.0.1:8080
    agentcli emit --url http://127.0.0.1:8080 --topic greetings --data '{{"name": "Ada"}}'
    agentcli loadtest --script loadtests/smoke.toml           # load-test the agent in process
"""


def project_files(name: str) -> dict[str, str]:
    """The files of a new project called ``name``: path → text."""
    fields = {"name": name, "version": __version__}
    return {
        "app.py": _APP.format(**fields),
        "agentflow.toml": _CONFIG.format(**fields),
        "tests/test_app.py": _TEST.format(**fields),
        "loadtests/smoke.toml": _LOADTEST.format(**fields),
        "pyproject.toml": _PYPROJECT.format(**fields),
        "README.md": _README.format(**fields),
    }


def init(
    name: Annotated[str, typer.Argument(help="The project's name; a new directory of that name is created.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to create the project's directory.", show_default="the current one")
    ] = Path("."),
) -> None:
    """Create a new agentflow project: an app module, a config file, tests and a load-test scenario."""
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise typer.BadParameter(
            f"{name!r} is not a project name; start with a letter and use letters, digits, - and _ (like my-agents).",
            param_hint="'NAME'",
        )
    root = directory / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise typer.BadParameter(
            f"{root} already exists and is not an empty directory; pick another name or --dir.", param_hint="'NAME'"
        )
    for rel, text in project_files(name).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    out = Console()
    out.print(
        f"created {root}/ with app.py, agentflow.toml, tests/test_app.py and loadtests/smoke.toml", highlight=False
    )
    out.print(
        f"next: cd {root} && pytest && agentcli run app:build --config agentflow.toml", highlight=False, soft_wrap=True
    )
