"""``agentcli config check FILE`` and ``agentcli config show [FILE]``.

``check`` validates a config file the way a worker would load it (with the ``AGENTFLOW__SECTION__KEY``
environment overrides), prints ``FILE: valid`` and exits 0, or prints the error's sentence and exits 1.
``show`` prints the effective config — the defaults, the file, then the environment overrides — as TOML; values
that look like credentials are masked (the keys that only name an environment variable, ``*_env``, are shown).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console

from agentflow import ConfigError, load_config, scrub_secrets
from agentflow.config import ENV_PREFIX

from ..output import error_line

__all__ = ["config_app", "to_toml"]

MASK = "***"
#: Keys whose values are credentials themselves (not the name of a variable holding one).
_SECRET_KEY = re.compile(r"(password|secret|token|api_key|apikey|credential)(?!_env$)", re.IGNORECASE)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: user:password@ in a URL (a base_url or bootstrap address may carry one).
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")

config_app = typer.Typer(
    help="Check a config file, or show the effective config with the environment overrides applied.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@config_app.command("check")
def check(file: Annotated[Path, typer.Argument(help="The agentflow TOML config to validate.")]) -> None:
    """Validate FILE as a worker would load it (environment overrides included); exit 0 when valid, 1 when not."""
    try:
        load_config(file)
    except ConfigError as exc:
        error_line(str(exc))
        raise typer.Exit(code=1) from None
    overrides = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
    Console().print(
        f"{file}: valid" + (f" (with {', '.join(overrides)} from the environment)" if overrides else ""),
        highlight=False,
        soft_wrap=True,
    )


@config_app.command("show")
def show(
    file: Annotated[
        Path | None,
        typer.Argument(help="The agentflow TOML config.", show_default="none: the built-in defaults"),
    ] = None,
) -> None:
    """Print the effective config as TOML: defaults, FILE, then AGENTFLOW__SECTION__KEY overrides; secrets masked."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        error_line(str(exc))
        raise typer.Exit(code=1) from None
    overrides = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
    head = [f"# effective agentflow config: {file if file is not None else 'built-in defaults'}"]
    head += [f"# overridden from the environment: {name}" for name in overrides]
    data = _masked(msgspec.to_builtins(config))
    Console().print("\n".join(head) + "\n\n" + to_toml(data), highlight=False, markup=False, soft_wrap=True)


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return MASK
        return scrub_secrets(_USERINFO.sub(MASK + "@", value))
    return value


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else msgspec.json.encode(k).decode()


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return msgspec.json.encode(v).decode()  # a JSON string is a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """``data`` as TOML: plain keys first, then one ``[table]`` per nested dict; None values are left out."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_scalar(v)}")
    out = []
    if lines:
        if prefix:
            out.append("[" + ".".join(_key(p) for p in prefix) + "]")
        out.append("\n".join(lines))
    for k, v in tables:
        out.append(to_toml(v, (*prefix, k)))
    if not out and prefix:
        out.append("[" + ".".join(_key(p) for p in prefix) + "]")
    return "\n\n".join(x for x in out if x)
