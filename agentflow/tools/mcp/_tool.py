"""An MCP server's tool as an agentflow :class:`~agentflow.tools.Tool`, called through the server's pool."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import mcp.types as mcp_types

from ...errors import ToolArgumentsError, ToolExecutionError
from ..base import Tool

if TYPE_CHECKING:
    from ._pool import MCPPool


class MCPTool(Tool):
    """A tool of an MCP server, called through its pool. ``remote_name`` is the server's own name for it.

    Arguments are passed as the JSON object the model sent; the server validates them against its schema, and
    its complaint comes back as the tool message.
    """

    __slots__ = ("pool", "remote_name")

    def __init__(self, pool: MCPPool, remote: mcp_types.Tool) -> None:
        ann = remote.annotations
        idempotent = bool(ann is not None and (ann.idempotent_hint or ann.read_only_hint))
        super().__init__(
            f"{pool.name}.{remote.name}",
            remote.description or remote.title or "",
            dict(remote.input_schema),
            timeout_s=pool.config.call_timeout_s,
            idempotent=idempotent,
        )
        self.pool = pool
        self.remote_name = remote.name

    def prepare(self, arguments: Any) -> dict[str, Any]:
        if arguments is None or arguments == "":
            return {}
        if isinstance(arguments, str | bytes):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise ToolArgumentsError(
                    f"The arguments for tool {self.name!r} are not valid JSON ({exc}); send a JSON object.",
                    tool=self.name,
                ) from None
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                f"The arguments for tool {self.name!r} must be a JSON object, not {type(arguments).__name__}.",
                tool=self.name,
            )
        return dict(arguments)

    async def _run(self, args: dict[str, Any], key: str | None, workflow: str | None) -> Any:
        result = await self.pool.call(self.remote_name, args, key=key, workflow=workflow, idempotent=self.idempotent)
        text = "\n".join(_block_text(b) for b in result.content)
        if result.is_error:
            raise ToolExecutionError(f"Tool {self.name!r} reported an error: {text or '(no message)'}", tool=self.name)
        if result.structured_content is not None:
            return result.structured_content
        return text


def _block_text(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    resource = getattr(block, "resource", None)
    if resource is not None and isinstance(getattr(resource, "text", None), str):
        return str(resource.text)
    mime = getattr(block, "mime_type", None) or getattr(resource, "mime_type", None) or ""
    return f"[{block.type} content{' ' + mime if mime else ''} not shown]"
