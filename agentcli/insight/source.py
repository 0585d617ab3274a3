"""Where the insight commands get their figures: a worker's HTTP routes, or a JSON file.

A worker's routes need the bearer token when it has one set; it is read from the environment variable named by
``--token-env`` (``AGENTFLOW_HTTP_TOKEN``), never from the command line. Failures become :class:`SourceError`
with a sentence; the commands print it and exit 1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from agentflow import ProfileReport, ProfileSnapshot, build_profile

__all__ = ["SourceError", "fetch", "profile_from_file", "profile_from_url"]

TIMEOUT_S = 60.0


class SourceError(Exception):
    """The figures could not be fetched or read; the message says why and what to do."""


async def fetch(url: str, path: str, token_env: str, *, timeout_s: float = TIMEOUT_S, **params: str) -> Any:
    """GET ``url + path`` as JSON with the bearer token from ``token_env`` (when set)."""
    token = os.environ.get(token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + path
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(target, headers=headers, params=params) as resp,
        ):
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SourceError(f"cannot reach {target}: {type(exc).__name__}: {exc}".rstrip(": ") + ".") from None
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if resp.status != 200:
        if resp.status == 404:
            raise SourceError(
                f"{target} answered 404: this worker does not serve it (an older agentflow, or, for /debug, "
                "[monitoring] profiling is off)."
            )
        reason = data.get("error") if isinstance(data, dict) else body[:200].decode(errors="replace")
        hint = f" Set {token_env} to the worker's token." if resp.status in (401, 403) else ""
        raise SourceError(f"{target} answered {resp.status}: {reason}{hint}")
    if data is None:
        raise SourceError(f"{target} did not answer JSON.")
    return data


async def profile_from_url(url: str, token_env: str, window_s: float | None) -> ProfileReport:
    """The worker's profile since it started, or over the next ``window_s`` seconds (two snapshots, diffed)."""
    if window_s is None:
        return msgspec.convert(await fetch(url, "/v1/profile", token_env), ProfileReport)
    first = msgspec.convert(await fetch(url, "/v1/profile", token_env, format="snapshot"), ProfileSnapshot)
    await asyncio.sleep(window_s)
    second = msgspec.convert(await fetch(url, "/v1/profile", token_env, format="snapshot"), ProfileSnapshot)
    return build_profile(second.minus(first), source=f"{url}, {window_s:g} s window")


def profile_from_file(path: Path) -> ProfileReport:
    """The profile in a benchmark or load-test report, a saved profile report, or a saved snapshot."""
    try:
        data = msgspec.json.decode(path.read_bytes())
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}.") from None
    except msgspec.DecodeError as exc:
        raise SourceError(f"{path} is not JSON ({exc}).") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    try:
        if fmt == "agentflow.profile/1":
            return msgspec.convert(data, ProfileReport)
        if fmt == "agentflow.profile-snapshot/1":
            return build_profile(msgspec.convert(data, ProfileSnapshot), source=str(path))
        if fmt in ("agentcli.benchmark/1", "agentcli.loadtest/1", "agentcli.loadtest/2"):
            snap = data.get("profile_snapshot")
            if snap is None:
                raise SourceError(
                    f"{path} holds no profile snapshot: benchmarks record one for the noop and --app scenarios, "
                    "load tests against an in-process runner with one worker. Run one of those, or profile a "
                    "running worker with --url."
                )
            return build_profile(
                msgspec.convert(snap, ProfileSnapshot), source=f"{path} ({data.get('scenario') or fmt})"
            )
    except msgspec.ValidationError as exc:
        raise SourceError(f"{path} does not hold a profile agentcli can read ({exc}).") from None
    raise SourceError(
        f"{path} is not an agentcli benchmark or loadtest report, nor a saved profile (its format is {fmt!r})."
    )
