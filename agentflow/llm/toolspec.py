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

__all__ = ["tool_fields"]

_CHOICES = ("none", "auto", "required")


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

    def bad(message: str) -> LLMBadRequestError:
        return LLMBadRequestError(message, provider=provider)

    if tools is None or isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        if tools is None and tool_choice is None and parallel_tool_calls is None:
            return {}
        if tools is None:
            raise bad("tool_choice and parallel_tool_calls need tools; pass tools=[...] as well.")
        raise bad(
            'tools must be a list of {"type": "function", "function": {"name": ..., "parameters": {...}}}, '
            f"not a {type(tools).__name__}."
        )
    names: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise bad(f"tools[{i}] is a {type(tool).__name__}; each tool must be a dict like OpenAI's.")
        if tool.get("type") != "function":
            raise bad(f'tools[{i}] has type {tool.get("type")!r}; only "function" tools can be called.')
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            raise bad(f'tools[{i}] needs "function": {{"name": ...}} with a non-empty name.')
        if isinstance(fn, Mapping) and "parameters" in fn and not isinstance(fn["parameters"], Mapping):
            raise bad(f"The parameters of tool {name!r} must be a JSON Schema object (a dict).")
        names.append(name)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise bad(f"Tool names must be unique; {', '.join(dupes)} appear more than once.")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise bad("parallel_tool_calls must be True or False.")
    if not names:  # an agent without tools: send none of the fields (OpenAI refuses "tools": [])
        if tool_choice not in (None, "none", "auto"):
            raise bad(f"tool_choice {tool_choice!r} needs at least one tool in tools.")
        return {}
    fields: dict[str, Any] = {"tools": list(tools)}
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice in names:
                tool_choice = {"type": "function", "function": {"name": tool_choice}}
            elif tool_choice not in _CHOICES:
                raise bad(
                    f"tool_choice {tool_choice!r} is neither one of {', '.join(_CHOICES)} nor the name of a tool "
                    f"in tools ({', '.join(names)})."
                )
        elif isinstance(tool_choice, Mapping):
            fn = tool_choice.get("function")
            name = fn.get("name") if isinstance(fn, Mapping) else None
            if tool_choice.get("type") != "function" or name not in names:
                raise bad(
                    f'tool_choice {dict(tool_choice)!r} must be {{"type": "function", "function": {{"name": N}}}} '
                    f"with N one of the tools ({', '.join(names)})."
                )
        else:
            raise bad(f"tool_choice must be a string or a dict, not a {type(tool_choice).__name__}.")
        fields["tool_choice"] = tool_choice
    if parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = parallel_tool_calls
    return fields
