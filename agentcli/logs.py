"""Log records on stderr, for every command: whole lines (never wrapped), as text or as one JSON object per line.

``agentcli --log-format json ...`` writes each record as ``{"time", "level", "logger", "message"}`` plus
``agent``, ``event_id``, ``correlation_id`` and ``topic`` when the record carries them (agentflow passes them
with ``extra=``), and ``exception`` with the traceback when there is one.

aiokafka logs every failed connection attempt, and at debug level every request with its records. Its
records go through :class:`StateChanges`: below INFO they are never shown (they would print event payloads),
and the same message from the same logger is shown once a minute at most — one line per state change
instead of one per retry.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

__all__ = ["JsonFormatter", "LogLimiter", "StateChanges", "TEXT_FORMAT", "log_records"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes a JSON line carries when a record has them (set through ``extra=`` in agentflow).
CONTEXT_FIELDS = ("agent", "event_id", "correlation_id", "topic")
#: Loggers whose records are filtered by StateChanges: the third-party clients with noisy retry loops.
NOISY = ("aiokafka", "kafka")
REPEAT_AFTER_S = 60.0
_SEEN_MAX = 128


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    _encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return self._encode(out).decode()


class StateChanges(logging.Filter):
    """Drops aiokafka's debug records and its repeats: a message already shown within ``REPEAT_AFTER_S``."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in NOISY:
            return True
        if record.levelno < logging.INFO:
            return False
        key = (record.name, record.getMessage())
        now = time.monotonic()
        shown = self._seen.get(key)
        if shown is not None and now - shown < REPEAT_AFTER_S:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True


class LogLimiter(logging.Filter):
    """Shows the first ``limit`` records of a run and counts the rest (one per dead letter adds up)."""

    def __init__(self, limit: int = 5) -> None:
        super().__init__()
        self.limit = limit
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen += 1
        return self.seen <= self.limit

    def summary(self) -> str | None:
        hidden = self.seen - self.limit
        return f"{hidden:,} more log records were not shown." if hidden > 0 else None


@contextmanager
def log_records(
    level: int, *, fmt: str = "text", limit: int | None = None, stream: TextIO | None = None
) -> Iterator[LogLimiter | None]:
    """While the block runs, log records at ``level`` and above go to stderr as text or JSON lines, whole;
    yields the limiter when ``limit`` is given. The handler is removed afterwards."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(StateChanges())
    limiter = None
    if limit is not None:
        limiter = LogLimiter(limit)
        handler.addFilter(limiter)
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        # Their debug records carry requests and records (event payloads): never let them be built at all.
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    try:
        yield limiter
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)
