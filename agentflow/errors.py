"""The agentflow error tree.

Every error agentflow raises on purpose derives from :class:`AgentflowError`; third-party exceptions
(aiohttp, aiokafka) are translated at the adapter boundary, so callers catch one family::

    AgentflowError
    ├── ConfigError                  bad file, key or value; names all three
    ├── LifecycleError               wrong state: reuse after close, emit before start
    ├── EventError
    │   ├── EventTooLargeError       encoded event over the size limit
    │   └── EventDecodeError         bytes that are not an event, or a payload of the wrong schema
    ├── BusError
    │   └── BackpressureError        a bounded buffer is full and the caller asked not to wait
    ├── HandlerTimeoutError          an attempt ran past its timeout and was cancelled
    ├── WorkflowDepthError           a follow-up event would exceed ``max_workflow_depth``
    ├── RequestTimeoutError          ``runner.request`` got no result in time
    └── DeadLetteredError            ``runner.request``'s event ended in the dead-letter queue

Handler outcomes are small control-flow exceptions, not errors: :class:`Retry` (try again, optionally after
a delay), :class:`Skip` (acknowledge without handling) and :class:`Reject` (dead-letter now, no retries).
"""

from __future__ import annotations

__all__ = [
    "AgentflowError",
    "BackpressureError",
    "BusError",
    "ConfigError",
    "DeadLetteredError",
    "EventDecodeError",
    "EventError",
    "EventTooLargeError",
    "HandlerTimeoutError",
    "LifecycleError",
    "Reject",
    "RequestTimeoutError",
    "Retry",
    "Skip",
    "WorkflowDepthError",
]


class AgentflowError(Exception):
    """Base of every error agentflow raises on purpose."""


class ConfigError(AgentflowError):
    """A configuration file, key or value is invalid.

    ``source`` is the file (or environment variable) and ``key`` the dotted key, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.key = key


class LifecycleError(AgentflowError):
    """An object was used in a state that does not allow it (closed, not started)."""


class EventError(AgentflowError):
    """An event could not be encoded, decoded or accepted."""


class EventTooLargeError(EventError):
    """An encoded event is larger than the configured limit."""


class EventDecodeError(EventError):
    """Bytes are not a valid event, or a payload does not match the agent's declared type."""


class BusError(AgentflowError):
    """The event bus failed or refused an operation."""


class BackpressureError(BusError):
    """A bounded buffer is full and the caller asked not to wait."""


class HandlerTimeoutError(AgentflowError):
    """A handler attempt ran past its timeout and was cancelled."""


class WorkflowDepthError(AgentflowError):
    """A follow-up event would nest deeper than ``max_workflow_depth``."""


class RequestTimeoutError(AgentflowError):
    """``runner.request`` did not get a result within its timeout."""


class DeadLetteredError(AgentflowError):
    """The event behind ``runner.request`` ended in the dead-letter queue; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Retry(Exception):  # noqa: N818 - a control-flow outcome, named for what the handler asks
    """Raise from a handler to retry the event, after ``after_s`` seconds if given.

    The retry still counts against the agent's ``max_attempts``::

        if not ready(event.payload):
            raise Retry(after_s=2.0)
    """

    def __init__(self, after_s: float | None = None, reason: str = "handler asked for a retry") -> None:
        super().__init__(reason)
        self.after_s = after_s
        self.reason = reason


class Skip(Exception):  # noqa: N818
    """Raise from a handler to acknowledge the event without handling it (counted as skipped)."""


class Reject(Exception):  # noqa: N818
    """Raise from a handler to dead-letter the event at once with ``reason``; no retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
