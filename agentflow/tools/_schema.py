"""From a Python function to a tool's description, parameters Struct and JSON Schema.

The parameters become a msgspec Struct built from the signature, so one object both validates (and converts)
the model's arguments and produces the JSON Schema the model sees: they cannot disagree. A parameter's
description comes from ``Annotated[T, msgspec.Meta(description=...)]`` or from a Google-style ``Args:`` section
of the docstring.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

__all__ = ["describe", "parameters_struct", "parameters_schema"]

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def describe(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's text before its first section, and the ``Args:`` entries by parameter name."""
    doc = inspect.getdoc(fn) or ""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        head = _SECTION.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if head is not None:
            section = head.group(1)
            current = None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            stripped = line.strip()
            entry = _ARG_LINE.match(stripped)
            indent = len(line) - len(line.lstrip())
            if entry is not None and indent <= 4:
                current = entry.group(1).lstrip("*")
                params[current] = entry.group(2).strip()
            elif current is not None and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(summary).strip(), params


def parameters_struct(fn: Callable[..., Any], name: str, docs: dict[str, str]) -> type[msgspec.Struct]:
    """A Struct with one field per parameter of ``fn`` (defaults kept); unknown fields are refused."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # NameError for a forward reference that does not resolve, mostly
        raise TypeError(f"Cannot read the type hints of tool {name!r}: {exc}. Import the types it names.") from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"Tool {name!r} has parameter {param.name!r} that cannot be passed by name (*args, **kwargs or "
                "positional-only); give each argument the model sends a named parameter."
            )
        tp = hints.get(param.name, Any)
        doc = docs.get(param.name)
        if doc and not _has_description(tp):
            tp = Annotated[tp, msgspec.Meta(description=doc)]
        if param.default is param.empty:
            fields.append((param.name, tp))
        else:
            fields.append((param.name, tp, param.default))
    try:
        struct = msgspec.defstruct(f"{name}_arguments", fields, kw_only=True, forbid_unknown_fields=True)
        msgspec.json.schema(struct)  # a type msgspec cannot describe fails here, at definition, not at a call
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Tool {name!r} has parameters msgspec cannot validate: {exc}.") from exc
    return struct


def parameters_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of the parameters, inlined at the top (nested types stay under ``$defs``)."""
    (top,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    name = top["$ref"].rsplit("/", 1)[-1]
    schema = dict(components.pop(name))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    if components:
        schema["$defs"] = components
    return schema


def _has_description(tp: Any) -> bool:
    if typing.get_origin(tp) is not Annotated:
        return False
    return any(isinstance(m, msgspec.Meta) and m.description for m in typing.get_args(tp)[1:])
