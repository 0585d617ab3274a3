"""The quantities every agentcli command takes, read one way: durations, rates and sizes.

* durations: ``500us``, ``250ms``, ``2s``, ``1.5m``, ``1h``, or a plain number of seconds;
* rates: ``500/s``, ``60/m``, ``10/h``, or a plain number per second;
* sizes: ``64KiB``, ``1MiB``, ``1MB``, ``2GB``, or a plain number of bytes.

Units are case-insensitive; ``µs`` equals ``us``, ``/sec`` and ``/min`` equal ``/s`` and ``/m``. KB, MB and GB
are powers of 1000, KiB, MiB and GiB powers of 1024. A value that cannot be read raises :class:`ParseError`
with a sentence showing a good one; :func:`option` turns that into a usage error of the flag that held it.
This module imports no command-line library: the load tester's worker processes read their plans with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ParseError", "option", "parse_duration", "parse_rate", "parse_size"]

T = TypeVar("T")

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(_NUMBER + r"\s*(us|µs|ms|s|m|h)?")
_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(_NUMBER + r"\s*(?:/\s*(s|sec|m|min|h))?")
_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SIZE = re.compile(_NUMBER + r"\s*(b|kb|mb|gb|kib|mib|gib)?")
_BYTES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


class ParseError(ValueError):
    """A duration, rate or size that cannot be read; the message says what a good one looks like."""


def parse_duration(text: str | float, *, allow_zero: bool = False) -> float:
    """``500us``, ``250ms``, ``30s``, ``2m``, ``1h`` or plain seconds → seconds (more than 0 unless ``allow_zero``)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.fullmatch(str(text).strip().lower())
        if m is None:
            raise ParseError(f"{text!r} is not a duration; write a number and a unit, like 500us, 250ms, 30s or 2m.")
        seconds = float(m.group(1)) * _SECONDS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ParseError(f"{text!r} is not a positive duration; give more than 0, like 10s.")
    return seconds


def parse_rate(text: str | float) -> float:
    """``500/s``, ``60/m``, ``10/h`` or a plain number (per second) → events per second, more than 0."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE.fullmatch(str(text).strip().lower())
        if m is None:
            raise ParseError(f"{text!r} is not a rate; write a number per unit of time, like 500/s, 60/m or 10/h.")
        value = float(m.group(1)) / _PER[m.group(2) or "s"]
    if not (math.isfinite(value) and value > 0):
        raise ParseError(f"{text!r} is not a positive rate; give more than 0, like 100/s.")
    return value


def parse_size(text: str | int) -> int:
    """``512``, ``64KiB``, ``1MiB``, ``1MB``, ``2GB`` → bytes (a whole number, more than 0)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = float(text)
    else:
        m = _SIZE.fullmatch(str(text).strip().lower())
        if m is None:
            raise ParseError(f"{text!r} is not a size; write a number and a unit, like 512, 64KiB or 1MB.")
        size = float(m.group(1)) * _BYTES[m.group(2) or "b"]
    if not (math.isfinite(size) and size >= 1) or size != int(size):
        raise ParseError(f"{text!r} is not a whole positive number of bytes; write one like 512, 64KiB or 1MB.")
    return int(size)


def option(parse: Callable[[str], T], text: str, flag: str) -> T:
    """``parse(text)``, with a :class:`ParseError` turned into a usage error (exit 2) of ``flag``."""
    try:
        return parse(text)
    except ParseError as exc:
        import typer  # here, not at the top: the load tester's worker processes never need it

        raise typer.BadParameter(str(exc), param_hint=f"'{flag}'") from None
