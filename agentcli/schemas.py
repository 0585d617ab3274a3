"""The JSON Schemas of agentcli's machine reports, generated from the msgspec Structs that write them.

    python -m agentcli.schemas            # writes docs/schemas/*.schema.json
    python -m agentcli.schemas --check    # exit 1 if a committed file differs from its Structs

The Structs are the one source of truth (:class:`agentcli.bench.schema.Report` for ``agentcli benchmark
--json``, :class:`agentcli.loadtest.report.LoadReport` for ``agentcli loadtest --json``); the files let tools
that do not read Python validate a report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from .bench.schema import FORMAT as BENCHMARK_FORMAT
from .bench.schema import Report
from .loadtest.report import FORMAT as LOADTEST_FORMAT
from .loadtest.report import LoadReport

__all__ = ["SCHEMAS", "generate", "main"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: file name under docs/schemas → (the Struct, the report format it describes, a title)
SCHEMAS: dict[str, tuple[type[msgspec.Struct], str, str]] = {
    "benchmark-report.schema.json": (Report, BENCHMARK_FORMAT, "agentcli benchmark --json"),
    "loadtest-report.schema.json": (LoadReport, LOADTEST_FORMAT, "agentcli loadtest --json"),
}
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def schema_of(struct: type[msgspec.Struct], fmt: str, title: str) -> dict[str, Any]:
    schema = msgspec.json.schema(struct)
    return {"$schema": DIALECT, "title": f"{title} ({fmt})", **schema}


def generate() -> dict[str, bytes]:
    """Every schema file's name and its bytes, as committed."""
    return {
        name: msgspec.json.format(msgspec.json.encode(schema_of(*spec)), indent=2) + b"\n"
        for name, spec in SCHEMAS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcli.schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the files go (default docs/schemas)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, data in generate().items():
        path = args.dir / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path}")
    if stale:
        print(f"{', '.join(stale)} differ from the report Structs; run python -m agentcli.schemas.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
