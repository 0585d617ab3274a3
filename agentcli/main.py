"""The ``agentcli`` command line: the root app, its global flags, and the commands of :mod:`.ops`, :mod:`.bench`
and :mod:`.loadtest` wired together.

User errors — a bad flag, a bad ``--config`` file, an ``--app`` that cannot be imported — print a sentence and
exit 2, never a traceback. Any other agentflow error that reaches the command line (a broker that cannot be
reached, a missing API key) prints one ``Error: ...`` sentence and exits 1; ``agentcli --debug ...`` shows its
traceback instead. The event loop and signal handlers are set up in :mod:`agentcli.runtime`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

from agentflow import AgentflowError, ConfigError

from . import runtime
from .bench.cli import benchmark_app
from .init import init
from .insight.cost_report import cost_report
from .insight.profile import profile
from .insight.profile_report import profile_report
from .loadtest.cli import loadtest_app
from .ops.config import config_app
from .ops.dlq import dlq_app
from .ops.emit import emit
from .ops.mockllm import mock_llm
from .ops.run import run
from .output import OPTIONS, error_line
from .parse import option, parse_duration
from .runtime import version_lines

__all__ = ["app", "main"]


def _agentflow_error(exc: BaseException) -> AgentflowError | None:
    """The agentflow error behind ``exc``: itself, or the first of an exception group made only of them."""
    if isinstance(exc, AgentflowError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_agentflow_error(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None


def _conventions(cmd: Any) -> None:
    """Every option's help as the user should read it: square brackets shown, not taken for rich markup
    (``[monitoring] host``), and a default in every ``--help`` ("none" for an option that is simply unset)."""
    for param in getattr(cmd, "params", ()):
        if not isinstance(param, TyperOption) or param.hidden or param.name in _TYPER_OWN:
            continue
        if param.help:
            param.help = escape(param.help)
        if param.default is None and not isinstance(param.show_default, str) and not param.required:
            param.show_default = "none"
    for sub in getattr(cmd, "commands", {}).values():
        _conventions(sub)


#: Options typer adds itself.
_TYPER_OWN = frozenset({"help", "install_completion", "show_completion"})


class AgentcliGroup(TyperGroup):
    """The root group: an agentflow error that escapes a command becomes one ``Error:`` sentence, and every
    command's help follows :func:`_conventions`."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _conventions(self)

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except BaseException as exc:  # noqa: BLE001 - re-raised unless it is an agentflow error
            error = _agentflow_error(exc)
            if error is None or OPTIONS.debug:
                raise
            text = str(error).strip()
            error_line(text if text.endswith((".", "?", "!")) else text + ".")
            raise typer.Exit(code=2 if isinstance(error, ConfigError) else 1) from None


app = typer.Typer(
    name="agentcli",
    cls=AgentcliGroup,
    help="Drive agentflow: run workers, emit events, serve a mock LLM, benchmark, load-test, profile and cost reports.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console = Console()
        for line in version_lines():
            console.print(line, highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_version, help="Print the versions and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, not only its sentence.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live view and no progress lines; summaries and errors only.")
    ] = False,
    log_format: Annotated[
        str, typer.Option(metavar="text|json", help="Log records on stderr: text lines, or one JSON object per line.")
    ] = "text",
    progress_every: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="When the output is not a terminal: a progress line this often (5s, 30s)."
        ),
    ] = "5s",
) -> None:
    """Drive agentflow: run workers, emit events, serve a mock LLM, benchmark and load-test."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r} is not a log format; use text or json.", param_hint="'--log-format'")
    OPTIONS.debug = debug
    OPTIONS.quiet = quiet
    OPTIONS.log_format = log_format
    OPTIONS.progress_every_s = option(parse_duration, progress_every, "--progress-every")


@app.command()
def version() -> None:
    """Print the versions of agentflow, Python, uvloop and msgspec."""
    _version(True)


app.add_typer(benchmark_app, name="benchmark")
app.add_typer(loadtest_app, name="loadtest")
app.command(name="run")(run)
app.command(name="emit")(emit)
app.add_typer(dlq_app, name="dlq")
app.command(name="mock-llm")(mock_llm)
app.add_typer(config_app, name="config")
app.command(name="init")(init)
app.command(name="profile-report")(profile_report)
app.command(name="cost-report")(cost_report)
app.command(name="profile")(profile)


def main() -> None:
    """The ``agentcli`` console script."""
    runtime.ARGV = sys.argv[1:]
    app(prog_name="agentcli")
