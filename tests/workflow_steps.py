"""Step handlers named by import path in the workflow tests' TOML (``handler = "workflow_steps:plan"``)."""

from __future__ import annotations

from typing import Any

from agentflow import Context, Event


async def plan(event: Event, ctx: Context) -> dict[str, Any]:
    return {"topic": event.payload["topic"], "planned_by": ctx.agent}


async def web(event: Event, ctx: Context) -> str:
    return f"web on {event.payload['topic']}"


async def papers(event: Event, ctx: Context) -> str:
    return f"papers on {event.payload['topic']}"


async def merge(event: Event, ctx: Context) -> list[str]:
    return [f"{step}: {text}" for step, text in event.payload.items()]


def not_async(event: Event, ctx: Context) -> None:
    return None
