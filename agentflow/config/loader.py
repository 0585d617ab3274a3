"""Loading the configuration: TOML files, ``AGENTFLOW__SECTION__KEY`` environment overrides, and validation.

Usage::

    config = load_config("config/agentflow.toml")      # env overrides from os.environ
    config.runner.worker_pool_size                      # 64
    config.retry_for("summarize")                       # [retry] with [agents.summarize.retry] applied

Every problem raises :class:`~agentflow.errors.ConfigError` with one sentence naming the source (the file,
or the environment variable the value came from), the dotted key, what was expected, and for a typo the
closest valid key.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from ..errors import ConfigError
from .schema import Config

__all__ = ["ENV_PREFIX", "config_from_dict", "load_config"]

ENV_PREFIX = "AGENTFLOW__"


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (defaults when ``None``), apply ``AGENTFLOW__SECTION__KEY`` overrides
    from ``env`` (``os.environ`` when ``None``) and validate; raise :class:`ConfigError` on any problem."""
    source = "<defaults>" if path is None else os.fspath(path)
    data = {} if path is None else _read_toml(source)
    origins = _apply_env(data, os.environ if env is None else env)
    return _build(data, _Reporter(source, origins))


def config_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Config:
    """Validate ``data`` (shaped like the TOML file) into a Config; errors name ``source``."""
    return _build(data, _Reporter(source, {}))


def _read_toml(source: str) -> dict[str, Any]:
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: configuration file not found. Check the path, or call load_config() without a path "
            "to use the built-in defaults.",
            source=source,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{source}: cannot read the configuration file ({exc}). Check the path, its permissions, and "
            "that it is UTF-8 text.",
            source=source,
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        raise ConfigError(
            f"{source}: invalid TOML: {detail[:1].lower()}{detail[1:]}. Fix the syntax there.", source=source
        ) from exc


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Write each AGENTFLOW__ variable into ``data``; return which variable set (or created) which path."""
    origins: dict[tuple[str, ...], str] = {}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        if not all(parts):
            raise ConfigError(
                f"{name}: environment variable names must look like AGENTFLOW__SECTION__KEY, with double "
                "underscores between non-empty parts. Rename or unset the variable.",
                source=name,
            )
        node: dict[str, Any] = data
        path: tuple[str, ...] = ()
        for part in parts[:-1]:
            # Match existing keys case-insensitively so AGENTFLOW__AGENTS__SUMMARIZE finds [agents.Summarize].
            key = next((k for k in node if str(k).lower() == part.lower()), part.lower())
            path += (key,)
            if key not in node:
                node[key] = {}
                origins.setdefault(path, name)
            elif not isinstance(node[key], dict):
                raise ConfigError(
                    f"{name}: cannot set a key under '{_dotted(path)}' because it is already set to "
                    f"{_show(node[key])}, not a table. Remove that value or unset this variable.",
                    source=name,
                    key=_dotted(path),
                )
            node = node[key]
        key = next((k for k in node if str(k).lower() == parts[-1].lower()), parts[-1].lower())
        node[key] = _parse_env_value(env[name])
        origins[(*path, key)] = name
    return origins


def _parse_env_value(raw: str) -> Any:
    try:
        parsed = tomllib.loads("v = " + raw)
    except tomllib.TOMLDecodeError:
        return raw  # not a TOML value, so a bare string: AGENTFLOW__MONITORING__HOST=0.0.0.0
    return parsed["v"] if len(parsed) == 1 else raw


def _build(data: Any, reporter: _Reporter) -> Config:
    # Walk the data against the schema first: msgspec's own errors lose agent names ("$.agents[...]") and
    # cannot tell which key came from the environment.
    _check_table(data, Config, (), reporter)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:  # a safety net: the walk above should have caught it
        raise reporter.from_validation_error(str(exc)) from None


def _check_table(data: Any, struct: type[msgspec.Struct], path: tuple[str, ...], reporter: _Reporter) -> None:
    if not isinstance(data, Mapping):
        raise reporter.bad_value(path, "a table", data, "the defaults")
    fields = {field.name: field for field in msgspec.structs.fields(struct)}
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise reporter.unknown(path, str(key), struct)
        key_path, inner = (*path, key), _strip_none(field.type)
        if value is None and inner is not field.type:
            continue
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            _check_table(value, inner, key_path, reporter)
        elif get_origin(inner) is dict and _is_struct(get_args(inner)[1]):  # [llm.NAME], [mcp.NAME] ...
            if not isinstance(value, Mapping):
                raise reporter.bad_value(key_path, "a table", value, "the defaults")
            item_type = get_args(inner)[1]
            for name, item in value.items():
                if not isinstance(name, str):
                    raise reporter.bad_value(key_path, "names that are strings", name, "the defaults")
                _check_table(item, item_type, (*key_path, name), reporter)
                _check_rules(item, item_type, (*key_path, name), reporter)
        else:
            try:
                msgspec.convert(value, field.type)
            except msgspec.ValidationError:
                default = field.default
                fallback = "the global setting" if default is None else f"the default ({_show(default)})"
                raise reporter.bad_value(key_path, _expected(field.type), value, fallback) from None


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _check_rules(data: Any, struct: type[msgspec.Struct], path: tuple[str, ...], reporter: _Reporter) -> None:
    """The rules between the fields of one table (a Struct's ``__post_init__``), named by the table's path."""
    try:
        msgspec.convert(data, struct)
    except msgspec.ValidationError as exc:
        source, from_env = reporter.source_for(path)
        message = str(exc).partition(" - at `$")[0]
        raise ConfigError(
            f"{source}: [{_dotted(path)}]: {message[:1].lower()}{message[1:]}"
            + ("" if message.endswith(".") else ".")
            + (" Fix the variable." if from_env else " Fix the table."),
            source=source,
            key=_dotted(path),
        ) from None


class _Reporter:
    """Turns a path into a ConfigError naming the file, or the environment variable the value came from."""

    def __init__(self, source: str, origins: dict[tuple[str, ...], str]) -> None:
        self.source = source
        self.origins = origins

    def source_for(self, path: tuple[str, ...]) -> tuple[str, bool]:
        """Return the variable that set (or created) the longest prefix of ``path``, else the file."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]], True
        return self.source, False

    def unknown(self, path: tuple[str, ...], key: str, struct: type[msgspec.Struct]) -> ConfigError:
        import difflib  # only on this error path; it is a noticeable share of import time

        source, from_env = self.source_for((*path, key))
        valid = sorted(struct.__struct_fields__)
        match = difflib.get_close_matches(key.lower(), valid, n=1)
        suggestion = _dotted((*path, match[0])) if match else None
        if suggestion is None:  # a key one level too high: [runner] keys at the top, retry keys in an agent
            for field in msgspec.structs.fields(struct):
                inner = _strip_none(field.type)
                if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                    if key.lower() in inner.__struct_fields__:
                        suggestion = _dotted((*path, field.name, key.lower()))
                        break
        where = f"in [{_dotted(path)}]" if path else "at the top level"
        hint = f"; did you mean '{suggestion}'?" if suggestion else "."
        return ConfigError(
            f"{source}: unknown key '{_dotted((*path, key))}'{hint} Valid keys {where}: {', '.join(valid)}. "
            f"Rename or {'unset the variable' if from_env else 'remove the key'}.",
            source=source,
            key=_dotted((*path, key)),
        )

    def bad_value(self, path: tuple[str, ...], expected: str, value: Any, fallback: str) -> ConfigError:
        source, from_env = self.source_for(path)
        fix = (
            f"Fix the value, or unset the variable to use the file's value or {fallback}."
            if from_env
            else f"Fix the value or remove the key to use {fallback}."
        )
        return ConfigError(
            f"{source}: key '{_dotted(path)}' expected {expected}, got {_show(value)} ({_kind(value)}). " + fix,
            source=source,
            key=_dotted(path),
        )

    def from_validation_error(self, message: str) -> ConfigError:
        """Translate a msgspec message like "Expected `int` >= 1 - at `$.runner.workers`" into a sentence."""
        what, _, where = message.partition(" - at `$")
        what = what.replace("`", "")
        key = where.rstrip("`").lstrip(".").replace("[...]", ".<name>") or "(top level)"
        return ConfigError(
            f"{self.source}: key '{key}' is invalid: {what[:1].lower()}{what[1:]}. Fix the value or remove "
            "the key to use the default.",
            source=self.source,
            key=key,
        )


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        rest = [arg for arg in get_args(tp) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _expected(tp: Any) -> str:
    """Describe a field type the way a TOML user reads it: "an integer from 0 to 65535"."""
    tp = _strip_none(tp)
    metas: list[msgspec.Meta] = []
    if get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metas = [meta for meta in extra if isinstance(meta, msgspec.Meta)]
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(_show(choice) for choice in get_args(tp))
    if get_origin(tp) is tuple:  # a TOML array: its length bounds, then what each item must be
        sizes = next((m for m in metas if m.min_length is not None or m.max_length is not None), None)
        count = f" of {sizes.min_length or 0} to {sizes.max_length} items" if sizes is not None else ""
        return f"an array{count}, each {_expected(get_args(tp)[0])}"
    text = _TYPE_NAMES.get(tp, "a table")
    for meta in metas:
        if meta.ge is not None and meta.le is not None:
            text += f" from {meta.ge} to {meta.le}"
            continue
        for op, bound in ((">=", meta.ge), (">", meta.gt), ("<=", meta.le), ("<", meta.lt)):
            if bound is not None:
                text += f" {op} {bound}"
    return text


def _show(value: Any) -> str:
    """Render a value as it would be written in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # array fields hold tuples (frozen); show them as the TOML array they came from
        value = list(value)
    text = repr(value)
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}
    return next((name for cls, name in kinds.items() if isinstance(value, cls)), type(value).__name__)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(path: tuple[str, ...]) -> str:
    if not path:
        return "(top level)"
    return ".".join(part if _BARE_KEY.fullmatch(part) else _show(part) for part in path)
