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
    │   ├── BackpressureError        a bounded buffer is full and the caller asked not to wait, or too many wait
    │   └── BusUnavailableError      brokers unreachable, or a delivery not confirmed in time
    │       └── DeliveryUncertainError  not confirmed, and possibly written: ``event_ids`` names the events
    ├── HandlerTimeoutError          an attempt ran past its timeout and was cancelled
    ├── WorkflowError                a workflow's definition or one of its runs went wrong
    │   ├── WorkflowDepthError       a follow-up event would exceed ``max_workflow_depth``
    │   ├── WorkflowGraphError       the steps do not form a valid graph: a cycle, an unknown step (also a ValueError)
    │   ├── WorkflowDeadlineError    the run passed its ``max_execution_time_s``
    │   ├── JoinTimeoutError         a join did not get all its parents within its ``timeout_s``
    │   └── WorkflowFailedError      ``run.result()``: a step of the run ended in the dead-letter queue
    ├── RequestTimeoutError          ``runner.request`` got no result in time
    ├── DeadLetteredError            ``runner.request``'s event ended in the dead-letter queue
    ├── AgentRunError                ``ctx.llm.run`` stopped before the model gave its answer
    │   ├── MaxTurnsExceededError    the model still asked for tools after ``max_turns`` turns
    │   └── AgentRunTimeoutError     the run went past its ``timeout_s``
    ├── CircuitOpenError             a circuit breaker refused the call; ``retry_after_s`` says when to retry
    ├── RateLimitError
    │   ├── RateLimitQueueFullError  ``max_queue`` callers already wait for the rate limiter
    │   └── RateLimitTooLargeError   one call needs more than the limit allows per period (also a ValueError)
    ├── BatchError                   a micro-batch's dispatch returned the wrong number of results
    │   └── BatchItemTooLargeError   one item is over ``max_batch_tokens`` (also a ValueError)
    ├── StateError                   the state store refused or failed an operation; ``key`` names the key
    │   ├── StateTooLargeError       a value encodes to more than ``max_state_bytes`` (also a ValueError)
    │   ├── StateEncodeError         a value msgspec cannot encode (also a TypeError)
    │   ├── StateDecodeError         stored bytes that do not decode, or not as the type asked for
    │   ├── StateConflictError       ``update`` lost to other writers ``max_update_attempts`` times in a row
    │   └── StateUnavailableError    the backend could not be reached or did not confirm a commit
    ├── LLMError                     a call through ``ctx.llm`` failed; ``provider`` and ``model`` say where
    │   ├── LLMTimeoutError          no (complete) answer within the deadline shared by all attempts
    │   ├── LLMRateLimitedError      HTTP 429; ``retry_after_s`` is the provider's Retry-After
    │   ├── LLMUnavailableError      5xx, connection refused or reset
    │   ├── LLMBadRequestError       4xx other than 401/403/429: the request itself is wrong
    │   ├── LLMAuthError             401/403: a missing or wrong API key
    │   ├── LLMStreamInterruptedError  a streamed answer failed after its first token; not retried
    │   └── TokenBudgetExceededError the workflow used up its token budget
    └── ToolError                    a tool call failed; ``tool`` names the tool
        ├── UnknownToolError         no tool of that name is offered to the agent
        ├── ToolArgumentsError       arguments that are not JSON or do not match the tool's schema
        ├── ToolTimeoutError         the call ran past the tool's ``timeout_s`` and was cancelled
        ├── ToolExecutionError       the tool raised; the exception is the ``__cause__``
        ├── ToolLoopError            the model repeated the same tool calls in ``threshold`` consecutive turns
        └── MCPError                 an MCP server failed a call, or its session broke mid-call
            └── MCPUnavailableError  no healthy session of the server could take the call (nothing was sent)

Handler outcomes are small control-flow exceptions, not errors: :class:`Retry` (try again, optionally after
a delay), :class:`Skip` (acknowledge without handling) and :class:`Reject` (dead-letter now, no retries).
"""

from __future__ import annotations

__all__ = [
    "AgentRunError",
    "AgentRunTimeoutError",
    "AgentflowError",
    "BackpressureError",
    "BatchError",
    "BatchItemTooLargeError",
    "BusError",
    "BusUnavailableError",
    "CircuitOpenError",
    "ConfigError",
    "DeadLetteredError",
    "DeliveryUncertainError",
    "EventDecodeError",
    "EventError",
    "EventTooLargeError",
    "HandlerTimeoutError",
    "JoinTimeoutError",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMError",
    "LLMRateLimitedError",
    "LLMStreamInterruptedError",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "LifecycleError",
    "MCPError",
    "MCPUnavailableError",
    "MaxTurnsExceededError",
    "RateLimitError",
    "RateLimitQueueFullError",
    "RateLimitTooLargeError",
    "Reject",
    "RequestTimeoutError",
    "Retry",
    "Skip",
    "StateConflictError",
    "StateDecodeError",
    "StateEncodeError",
    "StateError",
    "StateTooLargeError",
    "StateUnavailableError",
    "TokenBudgetExceededError",
    "ToolArgumentsError",
    "ToolError",
    "ToolExecutionError",
    "ToolLoopError",
    "ToolTimeoutError",
    "UnknownToolError",
    "WorkflowDeadlineError",
    "WorkflowDepthError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowGraphError",
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
    """A bounded buffer is full and the caller asked not to wait, or a runner bound on waiting callers
    (``runner.max_waiting_emits``, ``runner.max_pending_requests``) was reached; nothing was published."""


class BusUnavailableError(BusError):
    """The brokers could not be reached, or did not confirm a delivery in time; nothing was lost silently."""


class DeliveryUncertainError(BusUnavailableError):
    """The brokers did not confirm these events, but they may have been written all the same.

    A produce request that timed out or lost its connection may still have been applied by the broker.
    ``event_ids`` names every event of the emit whose outcome is unknown (the others were confirmed, or surely
    not written), and ``events`` holds them: emit them again *under the same ids* (``Producer.resend(error)``),
    so a consumer that records the ids it handled can drop the copy, instead of emitting new events::

        try:
            await producer.emit_many("orders", batch)
        except DeliveryUncertainError as err:
            await producer.resend(err)
    """

    def __init__(self, message: str, *, event_ids: tuple[str, ...] = (), events: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.event_ids = event_ids
        self.events = events


class HandlerTimeoutError(AgentflowError):
    """A handler attempt ran past its timeout and was cancelled."""


class WorkflowError(AgentflowError):
    """A workflow's definition or one of its runs went wrong (docs/workflows.md)."""


class WorkflowDepthError(WorkflowError):
    """A follow-up event would nest deeper than ``max_workflow_depth``."""


class WorkflowGraphError(WorkflowError, ValueError):
    """A workflow's steps do not form a valid graph (a cycle, an unknown or duplicate step); raised at start."""


class WorkflowDeadlineError(WorkflowError):
    """A workflow run passed its ``max_execution_time_s``; the step's event goes to the dead-letter queue with
    reason ``deadline_exceeded`` and is not retried. ``run_id`` names the run."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class JoinTimeoutError(WorkflowError):
    """A join step did not receive all its parents' results within its ``timeout_s``; the run fails to the
    dead-letter queue with reason ``join_timeout`` and the parts it had. ``missing`` names the parents."""

    def __init__(self, message: str, *, run_id: str | None = None, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.missing = missing


class WorkflowFailedError(WorkflowError):
    """``await run.result()`` of a run that failed: ``step`` ended in the dead-letter queue with ``reason``."""

    def __init__(self, message: str, *, run_id: str, step: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step = step
        self.reason = reason


class RequestTimeoutError(AgentflowError):
    """``runner.request`` did not get a result within its timeout."""


class DeadLetteredError(AgentflowError):
    """The event behind ``runner.request`` ended in the dead-letter queue; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AgentRunError(AgentflowError):
    """The agent loop (``ctx.llm.run``) stopped before the model answered; ``turns`` says how many model turns
    it made."""

    def __init__(self, message: str, *, turns: int) -> None:
        super().__init__(message)
        self.turns = turns


class MaxTurnsExceededError(AgentRunError):
    """The model still asked for tools in its ``max_turns``-th turn; ``max_turns`` is the limit."""

    def __init__(self, message: str, *, turns: int, max_turns: int) -> None:
        super().__init__(message, turns=turns)
        self.max_turns = max_turns


class AgentRunTimeoutError(AgentRunError):
    """The agent loop ran past its wall-clock ``timeout_s`` and was cancelled where it was."""

    def __init__(self, message: str, *, turns: int, timeout_s: float) -> None:
        super().__init__(message, turns=turns)
        self.timeout_s = timeout_s


class LLMError(AgentflowError):
    """A call to an LLM provider failed; ``provider``, ``model`` and ``status`` (HTTP, when known) say where.

    ``retriable`` tells the client's retry loop (and the breaker) whether trying again can help.
    """

    retriable = False

    def __init__(self, message: str, *, provider: str = "", model: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status = status


class LLMTimeoutError(LLMError):
    """No complete answer within the request timeout or the deadline shared by all attempts."""

    retriable = True


class LLMRateLimitedError(LLMError):
    """HTTP 429 from the provider; ``retry_after_s`` is its Retry-After (None when it sent none)."""

    retriable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = 429,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, model=model, status=status)
        self.retry_after_s = retry_after_s


class LLMUnavailableError(LLMError):
    """HTTP 5xx, or the connection was refused, reset or closed mid-answer."""

    retriable = True


class LLMBadRequestError(LLMError):
    """HTTP 4xx other than 401, 403 and 429, or an answer that is not valid: the request must change."""


class LLMAuthError(LLMError):
    """HTTP 401 or 403: the API key is missing, wrong or lacks access."""


class LLMStreamInterruptedError(LLMError):
    """A streamed answer (``ctx.llm.stream``) failed after tokens had arrived: the connection dropped, the
    provider stalled past ``request_timeout_s`` or sent an error or a malformed event.

    It is not retried, because part of the answer was already delivered; ``cause`` is the failure as the
    client saw it (an :class:`LLMError`), ``chunks`` how many stream events had arrived.
    """

    def __init__(self, message: str, *, provider: str, model: str, cause: LLMError, chunks: int) -> None:
        super().__init__(message, provider=provider, model=model, status=cause.status)
        self.cause = cause
        self.chunks = chunks


class TokenBudgetExceededError(LLMError):
    """The workflow (correlation id) has used its token budget; further LLM calls in it are refused."""

    def __init__(self, message: str, *, workflow: str, used: int, budget: int) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.used = used
        self.budget = budget


class ToolError(AgentflowError):
    """A tool call failed; ``tool`` names the tool (empty when unknown).

    Inside the agent loop a ToolError never crashes the agent: its message becomes the tool message the model
    reads, so every message says what went wrong in words the model can act on.
    """

    def __init__(self, message: str, *, tool: str = "") -> None:
        super().__init__(message)
        self.tool = tool


class UnknownToolError(ToolError):
    """No tool of that name is offered to the agent (a typo of the model's, or a tool not selected)."""


class ToolArgumentsError(ToolError, ValueError):
    """The arguments are not a JSON object, or do not match the tool's parameters."""


class ToolTimeoutError(ToolError):
    """A tool call ran past the tool's ``timeout_s`` (``timeout_s`` says how long) and was cancelled."""

    def __init__(self, message: str, *, tool: str = "", timeout_s: float = 0.0) -> None:
        super().__init__(message, tool=tool)
        self.timeout_s = timeout_s


class ToolExecutionError(ToolError):
    """The tool itself raised; its exception is the ``__cause__``."""


class ToolLoopError(ToolError):
    """The model made the same tool calls (same tools, same arguments) in ``repeats`` consecutive turns.

    ``calls`` holds the repeated ``(name, arguments)`` pairs; ``tool`` and ``arguments`` the first of them.
    """

    def __init__(self, message: str, *, calls: tuple[tuple[str, object], ...], repeats: int) -> None:
        super().__init__(message, tool=calls[0][0] if calls else "")
        self.calls = calls
        self.arguments = calls[0][1] if calls else None
        self.repeats = repeats


class MCPError(ToolError):
    """An MCP server failed a call: the session broke while the call was in flight, or the server answered
    with a protocol error. ``server`` names the ``[mcp.NAME]`` entry; ``sent`` says whether the request may
    have reached the server (a call that was sent is retried only when the tool is idempotent)."""

    def __init__(self, message: str, *, tool: str = "", server: str = "", sent: bool = True) -> None:
        super().__init__(message, tool=tool)
        self.server = server
        self.sent = sent


class MCPUnavailableError(MCPError):
    """No healthy session of the MCP server could take the call in time; nothing was sent."""

    def __init__(self, message: str, *, tool: str = "", server: str = "") -> None:
        super().__init__(message, tool=tool, server=server, sent=False)


class CircuitOpenError(AgentflowError):
    """A circuit breaker refused a call: ``name`` is the breaker, ``state`` its state (``"open"``,
    ``"half_open"`` with every probe permit taken, ``"forced_open"``), ``retry_after_s`` the seconds until it
    lets a probe through (None when unknown, e.g. forced open).

    ``after_s`` mirrors ``retry_after_s`` so an agent's retry policy waits exactly that long, as for ``Retry``.
    """

    def __init__(self, message: str, *, name: str, state: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.name = name
        self.state = state
        self.retry_after_s = retry_after_s

    @property
    def after_s(self) -> float | None:
        return self.retry_after_s


class RateLimitError(AgentflowError):
    """A rate limiter refused a call instead of queueing it."""


class RateLimitQueueFullError(RateLimitError):
    """``max_queue`` callers already wait for this rate limiter; the call was not queued."""


class RateLimitTooLargeError(RateLimitError, ValueError):
    """One call asks for more tokens than the token limit allows per period, so it could never run."""


class BatchError(AgentflowError):
    """A micro-batch failed as a whole for a reason of the batcher's own (not the dispatch's exception)."""


class BatchItemTooLargeError(BatchError, ValueError):
    """One item's tokens are over the batcher's ``max_batch_tokens``, so no batch could hold it."""


class StateError(AgentflowError):
    """The state store refused or failed an operation; ``key`` is the state key concerned, when there is one."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StateTooLargeError(StateError, ValueError):
    """A state value encodes to more bytes than ``max_state_bytes`` allows; nothing was written.

    ``size_bytes`` is the encoded size, ``limit_bytes`` the limit. An event whose handler raises it goes to the
    dead-letter queue with reason ``state_too_large``.
    """

    def __init__(self, message: str, *, key: str | None = None, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(message, key=key)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class StateEncodeError(StateError, TypeError):
    """A state value is of a type msgspec cannot encode; nothing was written."""


class StateDecodeError(StateError):
    """Stored state bytes do not decode, or do not match the type a typed handle asked for."""


class StateConflictError(StateError):
    """``update`` found the value changed by another writer on each of its ``attempts``; nothing was written."""

    def __init__(self, message: str, *, key: str | None = None, attempts: int) -> None:
        super().__init__(message, key=key)
        self.attempts = attempts


class StateUnavailableError(StateError):
    """The state backend could not be reached, or did not confirm a commit; the writes concerned are not
    acknowledged, so their events are retried or redelivered."""


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
