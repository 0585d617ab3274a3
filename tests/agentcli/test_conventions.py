"""CLI conventions: ``--version``, ``-h``, shell completion, a default in every ``--help``, square brackets shown
rather than eaten as markup, ``config check`` / ``config show``, and ``agentcli init`` making a project that
passes its own tests and load test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import REPO_ROOT
from typer.core import TyperOption
from typer.testing import CliRunner, Result

from agentcli.main import app
from agentflow import __version__

cli = CliRunner()
#: Options typer adds itself.
TYPER_OWN = ("help", "install_completion", "show_completion")


def invoke(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = cli.invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_version_and_h_and_completion() -> None:
    assert f"agentflow {__version__}" in invoke("--version").output
    for args in ([], ["loadtest"], ["benchmark"], ["benchmark", "compare"], ["config", "show"], ["init"], ["run"]):
        assert "Usage: agentcli" in invoke(*args, "-h").output, args
    # The script --show-completion prints, asked for through click's variable: --show-completion itself guesses
    # the shell from the process tree, which a test run in the background does not have.
    assert "--show-completion" in invoke("--help").output and "--install-completion" in invoke("--help").output
    completion = cli.invoke(app, [], prog_name="agentcli", env={"_AGENTCLI_COMPLETE": "source_bash"}).output
    assert "_AGENTCLI_COMPLETE" in completion and "complete " in completion


def test_every_option_shows_a_default_and_its_brackets() -> None:
    root = typer.main.get_command(app)
    missing = []
    for path, cmd in commands(root):
        for p in cmd.params:
            if not isinstance(p, TyperOption) or p.hidden or p.required or p.name in TYPER_OWN:
                continue
            if p.show_default is False or (p.default is None and not isinstance(p.show_default, str)):
                missing.append((" ".join(path), p.opts[0]))
    assert missing == []
    # Square brackets in help text are shown, not swallowed as rich markup.
    assert "(the [kafka] settings)" in invoke("emit", "--help").output
    assert "[monitoring] host" in invoke("run", "--help").output
    loadtest = " ".join(invoke("loadtest", "--help").output.split())
    assert "past it arrivals are dropped. [default: (derived: up to 1000 while the generator is on time)]" in loadtest
    assert "[default: ([kafka] bootstrap_servers of --config)]" in loadtest


def test_config_check_and_show(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[runner]\nworker_pool_size = 8\n\n[llm.openai]\nbase_url = "https://user:hunter2@example.com/v1"\n'
                    'api_key_env = "OPENAI_API_KEY"\n')  # fmt: skip
    assert f"{good}: valid" in invoke("config", "check", str(good)).output
    bad = tmp_path / "bad.toml"
    bad.write_text("[runner]\nworker_pool_sise = 8\n")
    out = invoke("config", "check", str(bad), code=1).output
    assert "Error:" in out and "worker_pool_sise" in out and "worker_pool_size" in out
    shown = invoke("config", "show", str(good), env={"AGENTFLOW__RUNNER__MAX_CONCURRENT_EVENTS": "77"}).output
    assert "# overridden from the environment: AGENTFLOW__RUNNER__MAX_CONCURRENT_EVENTS" in shown
    assert "worker_pool_size = 8" in shown and "max_concurrent_events = 77" in shown
    assert "hunter2" not in shown  # the credentials in the URL are masked
    assert 'api_key_env = "OPENAI_API_KEY"' in shown  # the name of a variable is not a secret
    assert "[llm.openai]" in shown and "[runner]" in shown
    import tomllib

    parsed = tomllib.loads(shown)  # it is TOML
    assert parsed["runner"]["max_concurrent_events"] == 77
    assert "backend = " in invoke("config", "show").output  # no file: the built-in defaults


@pytest.mark.slow
def test_init_makes_a_project_that_passes_its_own_test_and_load_test(tmp_path: Path) -> None:
    out = invoke("init", "hello-agents", "--dir", str(tmp_path)).output
    project = tmp_path / "hello-agents"
    assert f"created {project}/" in " ".join(out.split())
    assert {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} == {
        "app.py", "agentflow.toml", "tests/test_app.py", "loadtests/smoke.toml", "pyproject.toml", "README.md",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AGENTFLOW__"))}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    load = subprocess.run(
        [sys.executable, "-m", "agentcli", "loadtest", "--script", "loadtests/smoke.toml", "--duration", "1s"],
        cwd=project, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert load.returncode == 0, load.stdout + load.stderr
    assert "all thresholds passed" in load.stdout and "no subscriber" not in load.stderr
    again = invoke("init", "hello-agents", "--dir", str(tmp_path), code=2).output
    assert "already exists" in again
