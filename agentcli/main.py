"""The ``agentcli`` command line: the root app, wiring the commands of :mod:`.ops`, :mod:`.bench` and
:mod:`.loadtest` together.

User errors — a bad flag, a bad ``--config`` file, an ``--app`` that cannot be imported — print a sentence and
exit 2, never a traceback. The event loop and signal handlers are set up in :mod:`agentcli.runtime`.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from . import runtime
from .bench.cli import benchmark
from .insight.cost_report import cost_report
from .insight.profile import profile
from .insight.profile_report import profile_report
from .loadtest.cli import loadtest_app
from .ops.dlq import dlq_app
from .ops.emit import emit
from .ops.mockllm import mock_llm
from .ops.run import run
from .runtime import version_lines

__all__ = ["app", "main"]

app = typer.Typer(
    name="agentcli",
    help="Drive agentflow: run workers, emit events, serve a mock LLM, benchmark, load-test, profile and cost reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the versions of agentflow, Python, uvloop and msgspec."""
    console = Console()
    for line in version_lines():
        console.print(line, highlight=False)


app.command()(benchmark)
app.add_typer(loadtest_app, name="loadtest")
app.command(name="run")(run)
app.command(name="emit")(emit)
app.add_typer(dlq_app, name="dlq")
app.command(name="mock-llm")(mock_llm)
app.command(name="profile-report")(profile_report)
app.command(name="cost-report")(cost_report)
app.command(name="profile")(profile)


def main() -> None:
    """The ``agentcli`` console script."""
    runtime.ARGV = sys.argv[1:]
    app(prog_name="agentcli")
