"""``--workers N``: N generator processes, each offering 1/N of the rate; the parent merges their windows exactly.

Each worker is ``python -m agentcli.loadtest.workers``: it reads its :class:`Hello` (the spec and its share) as
one JSON line on stdin, builds its own target, reports :class:`Ready`, and starts when the parent sends the
common wall-clock start time, so every worker's windows cover the same stretch of time. It streams each closed
window (counters + histogram bytes) and a status every half second to stdout as length-prefixed msgpack
frames; ``stop`` on stdin ends it early. Windows with the same index are merged (histograms added bucket by
bucket, which is exact) and fed to one :class:`~.collector.Collector`, as if one process had measured them.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .collector import Collector
from .figures import WindowRecord, merge_records
from .plan import Plan, make_target, resolve
from .scenario import LoadSpec, ScenarioError, load_scenario
from .session import LiveStatus, Outcome, engine_for

if TYPE_CHECKING:
    from ..runtime import Stop

__all__ = ["run_workers"]

_FRAME = struct.Struct(">I")
#: A worker frame larger than this is corrupt (a window's histograms are a few tens of kB).
MAX_FRAME = 64 * 1024 * 1024
READY_TIMEOUT_S = 60.0


class Hello(msgspec.Struct, frozen=True):
    spec: LoadSpec
    scale: float


class Ready(msgspec.Struct, tag="ready"):
    target: str


class Status(msgspec.Struct, tag="status"):
    elapsed_s: float
    started: int
    finished: int
    dropped: int
    errors: int
    busy: int
    vus: int


class Window(msgspec.Struct, tag="window"):
    rec: WindowRecord


class Done(msgspec.Struct, tag="done"):
    aborted: bool
    iterations_interrupted: int


class Failed(msgspec.Struct, tag="failed"):
    message: str


Message = Ready | Status | Window | Done | Failed
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


# ---------------------------------------------------------------------------------------------- worker side


def _send(msg: Any) -> None:
    data = _encoder.encode(msg)
    out = sys.stdout.buffer
    out.write(_FRAME.pack(len(data)) + data)
    out.flush()


async def _worker(stop: Stop) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    hello = msgspec.json.decode(await reader.readline(), type=Hello)
    try:
        plan = resolve(hello.spec).scaled(hello.scale)
        script = load_scenario(__import__("pathlib").Path(hello.spec.script))[1] if hello.spec.script else None
        target = make_target(plan)
    except (ScenarioError, ValueError) as exc:
        _send(Failed(str(exc)))
        return
    errors = 0

    def on_window(rec: WindowRecord, live: Any) -> bool:
        nonlocal errors
        errors += rec.errors
        _send(Window(rec))
        return False

    async with target:
        engine = engine_for(plan, target, on_window, script)
        # A terminal's Ctrl-C reaches the workers too: they stop the load like the parent's "stop" line does.
        stop.on_stop(engine.stop)
        _send(Ready(target.describe()))
        go = (await reader.readline()).split()
        start_at = float(go[1]) if len(go) == 2 and go[0] == b"go" else time.time()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        run = asyncio.create_task(engine.run())

        async def stopper() -> None:
            while (line := await reader.readline()) and line.strip() != b"stop":
                pass
            engine.stop()

        stop_task = asyncio.create_task(stopper())
        while not run.done():
            await asyncio.wait({run}, timeout=0.5)
            s = engine.stats
            _send(Status(engine.elapsed(), s.started, s.finished, s.dropped, errors + engine.window.errors,
                         engine.busy, engine.vus))  # fmt: skip
        stop_task.cancel()
        await asyncio.gather(stop_task, return_exceptions=True)
        await run
        _send(Done(engine.aborted, engine.stats.interrupted))


# ---------------------------------------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.status = Status(0.0, 0, 0, 0, 0, 0, 0)
        self.done: Done | None = None

    async def read(self) -> Message | None:
        assert self.proc.stdout is not None
        try:
            head = await self.proc.stdout.readexactly(_FRAME.size)
        except asyncio.IncompleteReadError:
            return None
        (n,) = _FRAME.unpack(head)
        if n > MAX_FRAME:
            raise ScenarioError(f"a worker process sent a {n}-byte frame; its output is corrupt.")
        msg: Message = _decoder.decode(await self.proc.stdout.readexactly(n))
        return msg

    def tell(self, line: bytes) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(line)


class _Fleet:
    """The parent's side of ``n`` worker processes: start them, merge their windows, stop them."""

    def __init__(self, plan: Plan, status: LiveStatus, collector: Collector) -> None:
        self.plan = plan
        self.n = plan.spec.workers
        self.status = status
        self.collector = collector
        self.procs: list[_Worker] = []
        self.pending: dict[int, list[WindowRecord]] = {}
        self.target = "?"
        self.aborted = False

    async def start(self) -> None:
        for _ in range(self.n):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentcli.loadtest.workers",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self.procs.append(_Worker(proc))

    async def ready(self) -> None:
        """Send every worker its share, wait until all are ready, then start them at one wall-clock instant."""
        hello = msgspec.json.encode(Hello(self.plan.spec, 1.0 / self.n)) + b"\n"
        for w in self.procs:
            w.tell(hello)
        async with asyncio.timeout(READY_TIMEOUT_S):
            for w in self.procs:
                msg = await w.read()
                if isinstance(msg, Failed):
                    raise ScenarioError(msg.message)
                if not isinstance(msg, Ready):
                    raise ScenarioError("a worker process exited before it was ready; see its error output above.")
                self.target = msg.target
        go = f"go {time.time() + 0.1!r}\n".encode()
        for w in self.procs:
            w.tell(go)

    def _merge(self, index: int, *, running: bool = True) -> None:
        group = self.pending.pop(index)
        merged = group[0]
        for other in group[1:]:
            merged = merge_records(merged, other, concurrent=True)
        if self.collector.on_window(merged, None) and running and not self.aborted:
            self.aborted = True
            for w in self.procs:
                w.tell(b"stop\n")

    def feed(self, rec: WindowRecord) -> None:
        group = self.pending.setdefault(rec.index, [])
        group.append(rec)
        if len(group) == self.n:
            self._merge(rec.index)

    async def pump(self, w: _Worker) -> None:
        while (msg := await w.read()) is not None:
            if isinstance(msg, Window):
                self.feed(msg.rec)
            elif isinstance(msg, Status):
                w.status = msg
                _sum_status(self.status, [p.status for p in self.procs], self.plan)
            elif isinstance(msg, Done):
                w.done = msg
            elif isinstance(msg, Failed):
                raise ScenarioError(msg.message)

    def finish(self) -> None:
        for index in sorted(self.pending):  # a worker that stopped early leaves windows unmatched
            self._merge(index, running=False)
        if any(w.done is None for w in self.procs):
            raise ScenarioError("a worker process ended without finishing its run; see its error output above.")

    def stop_load(self) -> None:
        """End every worker's load early (a signal): each sends what it measured and finishes."""
        for w in self.procs:
            w.tell(b"stop\n")

    async def stop(self) -> None:
        for w in self.procs:
            if w.proc.returncode is None:
                w.tell(b"stop\n")
                if w.proc.stdin is not None:
                    w.proc.stdin.close()
        for w in self.procs:
            try:
                async with asyncio.timeout(self.plan.graceful_stop_s + 5):
                    await w.proc.wait()
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()

    def outcome(self) -> Outcome:
        return Outcome(
            self.collector,
            f"{self.target} in each of {self.n} processes",
            self.aborted or any(w.done is not None and w.done.aborted for w in self.procs),
            sum(w.done.iterations_interrupted for w in self.procs if w.done is not None),
        )


async def run_workers(
    plan: Plan, *, status: LiveStatus, collector: Collector | None = None, stop: Stop | None = None
) -> Outcome:
    fleet = _Fleet(plan, status, collector if collector is not None else Collector(plan))
    if stop is not None:
        stop.on_stop(fleet.stop_load)
    try:
        await fleet.start()
        await fleet.ready()
        async with asyncio.TaskGroup() as tg:
            for w in fleet.procs:
                tg.create_task(fleet.pump(w))
        fleet.finish()
    except* ScenarioError as group:
        raise group.exceptions[0] from None
    finally:
        await fleet.stop()
    return fleet.outcome()


def _sum_status(into: LiveStatus, parts: list[Status], plan: Plan) -> None:
    into.elapsed_s = max(p.elapsed_s for p in parts)
    into.target = plan.profile().target_at(into.elapsed_s)
    into.started = sum(p.started for p in parts)
    into.finished = sum(p.finished for p in parts)
    into.dropped = sum(p.dropped for p in parts)
    into.errors = sum(p.errors for p in parts)
    into.vus_busy = sum(p.busy for p in parts)
    into.vus = sum(p.vus for p in parts)


def main() -> None:
    from ..runtime import Stop, run_async

    stop = Stop()
    run_async(_worker(stop), stop)


if __name__ == "__main__":
    main()
