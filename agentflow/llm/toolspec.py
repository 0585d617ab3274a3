"""The tool fields of a chat request (``tools``, ``tool_choice``, ``parallel_tool_calls``), checked lightly
before anything is sent, so a typo is a sentence here rather than a provider's 400 after a round trip.

Only the shape OpenAI, Azure, vLLM and Ollama all accept is checked: each tool is
``{"type": "function", "function": {"name": ..., "description": ..., "parameters": {JSON Schema}}}``. The
schema itself is the provider's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LLMBadRequestError

__all__ = ["CheckedTools", "tool_fields"]

_CHOICES = ("none", "auto", "required")
_NO_PARAMS: Any = object()


class CheckedTools(list[dict[str, Any]]):
    """A ``tools`` list checked once, when it was made (:class:`~agentflow.tools.ToolBox` hands these out):
    :func:`tool_fields` takes its ``names`` instead of checking every entry on every call of an agent loop.
    Treat it as read-only; a list changed after it was made would be sent as it is."""

    __slots__ = ("names",)

    def __init__(self, tools: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(tools)  # type: ignore[arg-type]
        self.names = _tool_names(self, "tools")


def tool_fields(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    parallel_tool_calls: bool | None,
    provider: str,
) -> dict[str, Any]:
    """The request fields for these arguments; an empty ``tools`` sends no tool fields at all.

    ``tool_choice`` is ``"none"``, ``"auto"``, ``"required"``, ``{"type": "function", "function": {"name":
    ...}}``, or the name of one of ``tools`` (turned into the latter).
    """
    if type(tools) is CheckedTools:  # a ToolBox's list (the agent loop's, every turn): checked when made
        names = tools.names
    else:
        # type() checks first: a list of dicts (the common case) skips the slower ABC checks.
        if type(tools) is not list and (
            tools is None or isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence)
        ):
            if tools is None and tool_choice is None and parallel_tool_calls is None:
                return {}
            if tools is None:
                raise _bad(provider, "tool_choice and parallel_tool_calls need tools; pass tools=[...] as well.")
            raise _bad(
                provider,
                'tools must be a list of {"type": "function", "function": {"name": ..., "parameters": {...}}}, '
                f"not a {type(tools).__name__}.",
            )
        names = _tool_names(tools, provider)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _bad(provider, "parallel_tool_calls must be True or False.")
    if not names:  # an agent without tools: send none of the fields (OpenAI refuses "tools": [])
        if tool_choice not in (None, "none", "auto"):
            raise _bad(provider, f"tool_choice {tool_choice!r} needs at least one tool in tools.")
        return {}
    fields: dict[str, Any] = {"tools": list(tools)}
    if tool_choice is not None:
        fields["tool_choice"] = _tool_choice(tool_choice, names, provider)
    if parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = parallel_tool_calls
    return fields


def _bad(provider: str, message: str) -> LLMBadRequestError:
    return LLMBadRequestError(message, provider=provider)


def _tool_names(tools: Sequence[Mapping[str, Any]], provider: str) -> list[str]:
    """The names of ``tools``, each checked to be a function tool; unique."""
    names: list[str] = []
    for i, tool in enumerate(tools):
        if type(tool) is not dict and not isinstance(tool, Mapping):
            raise _bad(provider, f"tools[{i}] is a {type(tool).__name__}; each tool must be a dict like OpenAI's.")
        if tool.get("type") != "function":
            raise _bad(provider, f'tools[{i}] has type {tool.get("type")!r}; only "function" tools can be called.')
        fn = tool.get("function")
        if type(fn) is not dict and not isinstance(fn, Mapping):
            fn = None
        name = None if fn is None else fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(provider, f'tools[{i}] needs "function": {{"name": ...}} with a non-empty name.')
        params = fn.get("parameters", _NO_PARAMS) if fn is not None else _NO_PARAMS
        if params is not _NO_PARAMS and type(params) is not dict and not isinstance(params, Mapping):
            raise _bad(provider, f"The parameters of tool {name!r} must be a JSON Schema object (a dict).")
        names.append(name)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise _bad(provider, f"Tool names must be unique; {', '.join(dupes)} appear more than once.")
    return names


def _tool_choice(choice: str | Mapping[str, Any], names: list[str], provider: str) -> str | Mapping[str, Any]:
    """``tool_choice`` as sent: a mode, or the function form (a tool's name is turned into it)."""
    if isinstance(choice, str):
        if choice in names:
            return {"type": "function", "function": {"name": choice}}
        if choice not in _CHOICES:
            raise _bad(
                provider,
                f"tool_choice {choice!r} is neither one of {', '.join(_CHOICES)} nor the name of a tool in tools "
                f"({', '.join(names)}).",
            )
        return choice
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if choice.get("type") != "function" or name not in names:
            raise _bad(
                provider,
                f'tool_choice {dict(choice)!r} must be {{"type": "function", "function": {{"name": N}}}} with N '
                f"one of the tools ({', '.join(names)}).",
            )
        return choice
    raise _bad(provider, f"tool_choice must be a string or a dict, not a {type(choice).__name__}.")
