"""Request/reply: ``runner.request`` and ``Producer.request`` emit an event and wait for its handler's result.

One module for both. A request is an event whose ``reply_to`` names where its result goes:

* in the same process (``runner.request``): the runner's inbox, ``inbox:<id>`` — the worker that handles it
  resolves the caller's future directly (:meth:`PendingRequests.resolve`);
* from another process (``Producer.request``): a topic (``[kafka] reply_topic``) — the worker publishes a
  :func:`reply_event` there (:class:`ReplySender`), and the producer, reading that topic, resolves its own
  :class:`PendingRequests` from it (:func:`reply_outcome`).

Either way the caller gets the result, :class:`~agentflow.errors.DeadLetteredError` when the event was
dead-lettered, or :class:`~agentflow.errors.RequestTimeoutError` when the deadline passed first. Pending
requests are bounded (``runner.max_pending_requests``) and their deadlines share one timer
(:class:`~agentflow._deadlines.Deadlines`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ._deadlines import Deadlines
from .bus.base import Bus
from .errors import BackpressureError, DeadLetteredError, EventError, RequestTimeoutError
from .events import DeadLetter, Event, new_event_id

__all__ = [
    "INBOX_PREFIX",
    "REPLY_HEADER",
    "PendingRequests",
    "ReplySender",
    "dead_lettered_error",
    "reply_event",
    "reply_outcome",
]

logger = logging.getLogger(__name__)

#: ``reply_to`` of a request whose caller waits in the same process.
INBOX_PREFIX = "inbox:"
#: Header of a reply event: ``ok``, or ``dead_lettered`` (with ``reason`` and ``agent`` headers).
REPLY_HEADER = "agentflow-reply"
#: The key of ``refused`` that counts requests turned away by the bound, and the config key of the bound.
LIMIT = "max_pending_requests"


def dead_lettered_error(agent: str | None, reason: str, error: str) -> DeadLetteredError:
    """The error a requester gets when its event was dead-lettered."""
    return DeadLetteredError(
        f"The event for this request was dead-lettered by agent {agent!r} ({reason}): {error}", reason=reason
    )


def reply_event(request: Event, result: Any, dead: DeadLetter | None) -> Event:
    """The event a worker publishes on ``request.reply_to``: the result, or why the request was dead-lettered.

    ``correlation_id`` carries the id of the request.
    """
    if dead is None:
        headers = {REPLY_HEADER: "ok"}
        payload = result
    else:
        headers = {REPLY_HEADER: "dead_lettered", "reason": dead.reason, "agent": dead.agent or ""}
        payload = f"{dead.error_type}: {dead.error}"
    return Event(
        topic=request.reply_to or "",
        payload=payload,
        id=new_event_id(),
        headers=headers,
        created_at=time.time(),
        correlation_id=request.id,
    )


def reply_outcome(reply: Event) -> Any:
    """The result a :func:`reply_event` carries; raises DeadLetteredError when it says the request failed."""
    hdrs = reply.headers or {}
    if hdrs.get(REPLY_HEADER) == "dead_lettered":
        raise dead_lettered_error(hdrs.get("agent"), hdrs.get("reason", ""), str(reply.payload))
    return reply.payload


class PendingRequests(Deadlines):
    """Requests waiting for their results: a future per request id, each with a deadline on one shared timer.

    ``limit`` bounds how many wait (:meth:`open` raises BackpressureError beyond it, counted in
    ``refused["max_pending_requests"]``). ``on_expire(id)`` is called when a request times out, after its future
    failed with RequestTimeoutError. Each request is one entry of the timer's table, tagged with its future and
    topic; :meth:`open`, :meth:`close_request` and :meth:`resolve` write out the timer's ``add``, ``discard``
    and ``tag`` for the default timeout, the common case.
    """

    __slots__ = ("_on_timeout", "_refused", "limit")

    def __init__(
        self,
        default_timeout_s: float,
        limit: int,
        refused: dict[str, int],
        on_expire: Callable[[str, RequestTimeoutError], None] | None = None,
    ) -> None:
        super().__init__(default_timeout_s, self._expire)
        self.limit = limit
        self._refused = refused
        self._on_timeout = on_expire

    def __contains__(self, eid: object) -> bool:
        return self.tag(eid) is not None

    def __repr__(self) -> str:
        return f"<PendingRequests pending={len(self)}/{self.limit}>"

    def open(
        self, loop: asyncio.AbstractEventLoop, eid: str, topic: str, timeout_s: float | None
    ) -> asyncio.Future[Any]:
        """Register request ``eid``: its future, which times out after ``timeout_s`` (None: the default). Raises
        BackpressureError (and counts it) when ``limit`` requests already wait, before anything is published."""
        waits = self._waits
        if len(waits) + len(self._others) >= self.limit:
            self._refused[LIMIT] = self._refused.get(LIMIT, 0) + 1
            raise BackpressureError(
                f"{len(self)} requests already wait for their results, the limit of "
                f"runner.max_pending_requests; the request to {topic!r} was refused and nothing was published. "
                "Retry later, slow down, or raise runner.max_pending_requests."
            )
        fut: asyncio.Future[Any] = loop.create_future()
        if timeout_s is None or timeout_s == self._default:  # self.add(...), written out
            deadline = loop.time() + self._default
            waits[eid] = (deadline, (fut, topic))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._fire, loop)
        else:
            self.add(loop, eid, (fut, topic), timeout_s)
        return fut

    def close_request(self, eid: str) -> None:
        """Forget request ``eid`` (answered, failed, timed out or abandoned by its caller)."""
        if self._waits.pop(eid, None) is None:  # self.discard(eid), written out
            self.discard(eid)

    def resolve(self, eid: str, result: Any) -> None:
        entry = self._waits.get(eid)  # self.tag(eid), written out
        tag = entry[1] if entry is not None else self.tag(eid)
        if tag is not None and not tag[0].done():
            tag[0].set_result(result)

    def fail(self, eid: str, exc: BaseException) -> None:
        tag = self.tag(eid)
        if tag is not None and not tag[0].done():
            tag[0].set_exception(exc)
            tag[0].exception()  # see _expire

    def fail_all(self, make: Callable[[], BaseException]) -> None:
        """Fail every pending request (the runner closes) and stop the timer."""
        tags = self.tags()
        self.close()
        for fut, _ in tags:
            if not fut.done():
                fut.set_exception(make())
                fut.exception()  # see _expire

    def _expire(self, eid: str, tag: tuple[asyncio.Future[Any], str], t: float) -> None:
        fut, topic = tag
        if fut.done():
            return
        exc = RequestTimeoutError(
            f"No result for the request to topic {topic!r} within {t:g} s; check that an agent handles that topic, "
            "or raise timeout_s."
        )
        fut.set_exception(exc)
        # Marked retrieved: the caller awaiting the future still gets the error, and one that stopped waiting
        # (its request was refused room in the bus, say) leaves no "exception was never retrieved" warning.
        fut.exception()
        if self._on_timeout is not None:
            self._on_timeout(eid, exc)


class ReplySender:
    """Publishes the results of requests made from other processes (``reply_to`` a topic) on the bus, in tasks
    of its own so the agent's worker does not wait for the brokers; :meth:`aclose` waits for the ones in flight."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, event: Event, result: Any, dead: DeadLetter | None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(event, result, dead), name="agentflow-reply")
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    async def _send(self, event: Event, result: Any, dead: DeadLetter | None) -> None:
        reply = reply_event(event, result, dead)
        try:
            await self._bus.publish(reply.topic, [reply], follow_up=True)
        except EventError as exc:  # a result that cannot be encoded: tell the requester why
            why = DeadLetter(
                topic=event.topic,
                agent=None,
                reason="rejected",
                error_type=type(exc).__name__,
                error=str(exc),
                attempts=event.attempt,
                failed_at=time.time(),
                event_id=event.id,
            )
            await self._bus.publish(reply.topic, [reply_event(event, None, why)], follow_up=True)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Could not send the result of a request to its reply topic: %s", task.exception())

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
