"""``agentcli run module:runner``: run a user's agents as worker processes with their HTTP server.

One worker (the default) runs in this process: it loads the app, starts the runner with its HTTP server
(health, readiness, metrics, ingest, DLQ) and runs until SIGTERM or SIGINT. The first signal drains — ingest and
``/readyz`` answer 503, then in-flight work finishes within ``runner.shutdown_grace_s`` (on the memory bus the
buffered events too, since nothing else would ever handle them) — and the process exits 0. A second signal
exits at once with 128 + the signal number; whatever was unfinished is redelivered by Kafka, and lost on the
memory bus.

``--workers N`` (N > 1) starts N such processes, each ``agentcli run --workers 1`` with its own uvloop, in their
own session so a terminal's Ctrl-C reaches only this supervisor, which forwards every signal once. A worker that
crashes (a non-zero exit, or killed by a signal) is restarted after a delay that doubles with each crash in a row
(1 s, 2 s, 4 s ... at most 30 s); a worker that exits cleanly (code 0) is not a crash and is not restarted; a
worker that cannot start with this app and config (code 2) stops the unit, since a restart would repeat it.
The memory bus lives inside one process, so N > 1 is refused for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
import uvloop
from rich.console import Console

from agentflow import BusUnavailableError, ConfigError, Runner

from ..apps import load_runner
from ..logs import log_records
from ..output import OPTIONS, error_line
from ..output import console as make_console

__all__ = ["run"]

logger = logging.getLogger("agentcli.run")

_PARENT_POLL_S = 1.0  # how often a worker checks that its supervisor is still alive


def run(
    app_ref: Annotated[str, typer.Argument(metavar="MODULE:RUNNER", help="Your app: module:attr or file.py:attr.")],
    config: Annotated[Path | None, typer.Option(help="agentflow TOML config, for an app that takes one.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=256, help="Worker processes (Kafka bus only for > 1).")] = 1,
    host: Annotated[
        str | None, typer.Option(help="Address of the HTTP server.", show_default="[monitoring] host")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port of the HTTP server; worker i uses PORT+i; 0 picks free ports.",
            show_default="[monitoring] port",
        ),
    ] = None,
    ingest: Annotated[
        bool, typer.Option(help="Serve POST /v1/events and the /v1/dlq endpoints (token needed beyond loopback).")
    ] = True,
    app_dir: Annotated[Path, typer.Option(help="Directory searched first when importing the app.")] = Path("."),
    log_level: Annotated[str, typer.Option(help="Log level of agentflow's records on stderr.")] = "info",
    worker_index: Annotated[int, typer.Option(hidden=True)] = 0,
    parent_pid: Annotated[int, typer.Option(hidden=True)] = 0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Run the agents on --events in this process against the mock LLM, on the memory bus, with no "
            "HTTP server: nothing reaches a provider, a broker or the network.",
            rich_help_panel="Dry run",
        ),
    ] = False,
    estimate_cost: Annotated[
        bool,
        typer.Option(
            "--estimate-cost",
            help="With --dry-run: the estimated cost per event, per workflow (min/max over the sample) and per agent, "
            "from the \\[llm.NAME.prices] tables.",
            rich_help_panel="Dry run",
        ),
    ] = False,
    events: Annotated[
        Path | None,
        typer.Option(help="With --dry-run: sample events, one JSON object per line.", rich_help_panel="Dry run"),
    ] = None,
    completion_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            max=100_000,
            help="With --dry-run: completion tokens the mock answers per call (max_tokens caps it).",
            rich_help_panel="Dry run",
        ),
    ] = 256,
    json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the estimate as JSON.", rich_help_panel="Dry run")
    ] = False,
) -> None:
    """Run your agents: worker processes with health, readiness, metrics and HTTP ingest; SIGTERM drains.

    With --dry-run --estimate-cost --events sample.jsonl: run the sample against the mock LLM and estimate its cost."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"{log_level!r} is not a log level; use debug, info, warning or error.")
    if port is not None and port and port + workers - 1 > 65535:
        raise typer.BadParameter(f"--port {port} with {workers} workers runs past port 65535.", param_hint="'--port'")
    try:
        runner = load_runner(app_ref, app_dir, config)
    except typer.BadParameter as exc:
        exc.param_hint = exc.param_hint or "'MODULE:RUNNER'"
        raise
    if dry_run or estimate_cost or events is not None:
        if not dry_run:
            raise typer.BadParameter("--estimate-cost and --events go with --dry-run.", param_hint="'--dry-run'")
        from .dryrun import run_dry  # the mock server is loaded only for a dry run

        raise typer.Exit(
            run_dry(runner, app_ref, events, completion_tokens=completion_tokens, estimate_cost=estimate_cost,
                    as_json=json)
        )  # fmt: skip
    mon = runner.config.monitoring
    if workers > 1:
        if runner.bus.backend == "memory":
            raise typer.BadParameter(
                "the memory bus lives inside one process, so each of several workers would have its own bus and "
                'see only its own events; use [bus] backend = "kafka" for several workers, or run one.',
                param_hint="'--workers'",
            )
        raise typer.Exit(_supervise(app_ref, config, workers, host, port, ingest, app_dir, log_level))
    # The runner is un-started, so its monitoring settings can still be swapped for the command line's.
    runner.config = msgspec.structs.replace(
        runner.config,
        monitoring=msgspec.structs.replace(
            mon,
            metrics_enabled=True,
            ingest_enabled=ingest,
            host=mon.host if host is None else host,
            port=mon.port if port is None else port,
        ),
    )
    with log_records(level, fmt=OPTIONS.log_format):
        code = uvloop.run(_serve(runner, app_ref, worker_index, parent_pid))
    raise typer.Exit(code)


async def _serve(runner: Runner, app_ref: str, index: int, parent_pid: int) -> int:
    """Run one worker until the first signal, drain, close; return the exit code."""
    err = make_console(stderr=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(sig: int) -> None:
        signals.append(sig)
        if len(signals) == 1:
            err.print(f"agentcli run: worker {index} got {signal.Signals(sig).name}; draining.", highlight=False)
            stop.set()
        else:
            # Forced: exit without closing anything; unfinished events are redelivered (Kafka) or lost (memory).
            err.print(f"agentcli run: worker {index} got a second signal; exiting now.", highlight=False)
            sys.stderr.flush()
            os._exit(128 + sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, int(sig))
    # Watching from the start: a worker orphaned while it is still joining its groups must not hang there.
    watcher = asyncio.ensure_future(_watch_parent(parent_pid, stop)) if parent_pid else None
    try:
        try:
            started = await _start_unless_stopped(runner, stop)
        except ConfigError as exc:
            error_line(str(exc))
            return 2
        except (OSError, BusUnavailableError) as exc:
            error_line(f"the worker could not start: {exc}")
            return 1
        if not started:
            err.print(f"agentcli run: worker {index} stopped before it was ready.", highlight=False)
            return 0
        address = runner.http_address
        assert address is not None
        agents = ", ".join(f"{name} <- {topic}" for name, topic in sorted(runner.agent_topics.items()))
        print(
            f"agentcli run: worker {index} (pid {os.getpid()}) ready on http://{address[0]}:{address[1]} "
            f"— {app_ref}, bus {runner.bus.backend}, agents: {agents}",
            flush=True,
        )
        await stop.wait()
        return await _drain(runner, index, err)
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_unless_stopped(runner: Runner, stop: asyncio.Event) -> bool:
    """``runner.start()``, abandoned when ``stop`` is set first (a signal, or the supervisor gone): False then."""
    starting = asyncio.ensure_future(runner.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if starting.done():
        starting.result()  # its error, if it failed
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    # A supervisor killed with SIGKILL cannot forward anything; its workers notice they were orphaned and drain.
    while os.getppid() == parent_pid:
        try:
            await asyncio.wait_for(stop.wait(), _PARENT_POLL_S)
            return
        except TimeoutError:
            pass
    logger.warning("The agentcli run supervisor (pid %d) is gone; draining.", parent_pid)
    stop.set()


async def _drain(runner: Runner, index: int, err: Console) -> int:
    t0 = time.perf_counter()
    service = runner.service
    if service is not None:
        service.draining = True  # ingest and /readyz answer 503 from here on
    grace = runner.config.runner.shutdown_grace_s
    if runner.bus.backend == "memory":
        # Buffered events exist only in this process: handle them too, or they are gone at exit.
        try:
            await runner.drain(timeout_s=grace)
        except TimeoutError:
            pass
    await runner.aclose()
    s = runner.statistics()
    left = s.bus.buffered if runner.bus.backend == "memory" else 0
    report = s.shutdown
    cancelled = report.cancelled if report is not None else 0
    err.print(
        f"agentcli run: worker {index} stopped in {time.perf_counter() - t0:.1f} s: handled {s.handled}, "
        f"dead-lettered {s.dead_lettered}, cancelled {cancelled}"
        + (f", {left} buffered events LOST (the memory bus ends with the process)" if left else ""),
        highlight=False,
    )
    return 0


#: A crashed worker is restarted after RESTART_INITIAL_S, doubling with each crash in a row up to RESTART_MAX_S;
#: a worker that ran STABLE_AFTER_S before it crashed starts the series again.
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0
#: The exit code of a worker that could not start with this config (ConfigError): a restart would repeat it.
USAGE_EXIT = 2


def restart_delay_s(crashes: int) -> float:
    """Seconds before restarting a worker that crashed ``crashes`` times in a row: 1, 2, 4, ... at most 30."""
    return min(RESTART_INITIAL_S * 2.0 ** max(crashes - 1, 0), RESTART_MAX_S)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Worker:
    """One worker slot of the supervisor: its current process, and its crashes in a row."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.crashes = 0
        self.restart_at: float | None = None
        self.code: int | None = None  # the final exit code, once the slot is finished

    @property
    def finished(self) -> bool:
        return self.code is not None or (self.proc is None and self.restart_at is None)


class _Supervisor:
    """Starts the worker processes, forwards every signal once, restarts the ones that crash."""

    def __init__(self, argv: list[str], workers: int, port: int | None) -> None:
        self.argv = argv
        self.port = port
        self.slots = [_Worker(i) for i in range(workers)]
        self.signals: list[int] = []
        self.forwarded = 0
        self.fatal = 0
        self.err = make_console(stderr=True)

    def say(self, text: str) -> None:
        self.err.print(f"agentcli run: {text}", highlight=False)

    def spawn(self, w: _Worker) -> subprocess.Popen[bytes]:
        argv = [*self.argv, "--worker-index", str(w.index)]
        if self.port is not None:
            argv += ["--port", str(self.port + w.index if self.port else 0)]
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which forwards it exactly once.
        w.proc = proc = subprocess.Popen(argv, start_new_session=True)
        w.started_at = time.monotonic()
        w.restart_at = None
        return proc

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [w.proc for w in self.slots if w.proc is not None and w.proc.poll() is None]

    def forward(self) -> None:
        while self.forwarded < len(self.signals):
            sig = self.signals[self.forwarded]
            self.forwarded += 1
            for proc in self.running():
                proc.send_signal(sig)

    def check(self, w: _Worker, now: float) -> None:
        """Notice what became of one worker: running, exited, crashed (restart it later), or due a restart."""
        stopping = bool(self.signals) or bool(self.fatal)
        if w.proc is None:  # waiting to be restarted
            if stopping:
                w.restart_at = None  # finished: no restart while the unit stops
            elif w.restart_at is not None and now >= w.restart_at:
                self.say(f"worker {w.index} restarted (pid {self.spawn(w).pid}).")
            return
        code = w.proc.poll()
        if code is None:
            return
        if stopping or code == 0:
            w.code = code
            if not stopping:
                self.say(f"worker {w.index} (pid {w.proc.pid}) exited cleanly (code 0); it is not restarted.")
        elif code == USAGE_EXIT:
            w.code = self.fatal = code
            self.say(
                f"worker {w.index} (pid {w.proc.pid}) could not start with this app and config (code 2; "
                "see its error above), which a restart would repeat; stopping the rest."
            )
            for proc in self.running():
                proc.send_signal(signal.SIGTERM)
        else:
            w.crashes = 1 if now - w.started_at >= STABLE_AFTER_S else w.crashes + 1
            delay = restart_delay_s(w.crashes)
            self.say(
                f"worker {w.index} (pid {w.proc.pid}) {_exit_text(code)}; restarting it in {delay:.1f} s "
                f"({w.crashes} crash{'es' if w.crashes > 1 else ''} in a row)."
            )
            w.proc = None
            w.restart_at = now + delay

    def run(self, banner: str) -> None:
        for w in self.slots:
            self.spawn(w)
        self.say(banner)
        while not all(w.finished for w in self.slots):
            self.forward()
            now = time.monotonic()
            for w in self.slots:
                if w.code is None:
                    self.check(w, now)
            time.sleep(0.05)

    def kill(self) -> None:
        for w in self.slots:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def _supervise(
    app_ref: str,
    config: Path | None,
    workers: int,
    host: str | None,
    port: int | None,
    ingest: bool,
    app_dir: Path,
    log_level: str,
) -> int:
    """Start ``workers`` worker processes, restart the ones that crash, forward signals to them; return the exit
    code: 0 when every worker ended cleanly, 1 when one did not, 2 when one could not start with this config."""
    argv = [sys.executable, "-m", "agentcli", "--log-format", OPTIONS.log_format]
    argv += ["--debug"] if OPTIONS.debug else []
    argv += ["run", app_ref, "--workers", "1"]
    argv += ["--parent-pid", str(os.getpid()), "--app-dir", str(app_dir), "--log-level", log_level]
    argv += ["--ingest" if ingest else "--no-ingest"]
    if config is not None:
        argv += ["--config", str(config)]
    if host is not None:
        argv += ["--host", host]
    unit = _Supervisor(argv, workers, port)

    def on_signal(sig: int, frame: Any) -> None:
        unit.signals.append(sig)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        unit.run(f"supervising {workers} workers of {app_ref} (pid {os.getpid()}).")
    finally:
        unit.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if unit.fatal:
        return unit.fatal
    codes = [w.code for w in unit.slots]
    if any(codes):
        unit.say(f"worker exit codes {codes}.")
        return 1
    return 0
