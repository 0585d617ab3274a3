"""What workflows keep in the state store and carry in event headers, and the status a run reports.

Every event of a run carries three headers: the workflow, the run id and the run's deadline (Unix time; absent
without ``max_execution_time_s``). A part on its way to a join also names the step it comes from. In the state
store (namespaces starting with ``_wf``, agentflow's own):

* ``_wf.run``, key ``RUN``: the run as started (:class:`RunRecord`).
* ``_wf.step``, key ``RUN/STEP``: each step's latest state (:class:`StepRecord`), with a last step's result.
* ``_wf.join``, key ``RUN/STEP``: a join's parts so far (:class:`JoinRecord`), updated with a version check.
* ``_wf.pending.WORKFLOW.STEP``, keys ``0`` … ``7``: joins waiting with a timeout, by run (the sweeper's list).
* ``_wf.failed``, key ``RUN``: the first step of the run that ended in the dead-letter queue (:class:`Failure`).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

__all__ = [
    "DEADLINE_HEADER",
    "FAILED_NS",
    "JOIN_NS",
    "PART_HEADER",
    "RUN_HEADER",
    "RUN_NS",
    "STEP_NS",
    "WORKFLOW_HEADER",
    "Failure",
    "JoinRecord",
    "RunRecord",
    "StepRecord",
    "StepStatus",
    "WorkflowStatus",
    "pending_namespace",
]

WORKFLOW_HEADER: Final = "agentflow-workflow"
RUN_HEADER: Final = "agentflow-run"
DEADLINE_HEADER: Final = "agentflow-deadline"
PART_HEADER: Final = "agentflow-part"

RUN_NS: Final = "_wf.run"
STEP_NS: Final = "_wf.step"
JOIN_NS: Final = "_wf.join"
FAILED_NS: Final = "_wf.failed"
#: Shards of a join's list of waiting runs: several workers add and remove runs with fewer version conflicts.
PENDING_SHARDS: Final = 8


def pending_namespace(workflow: str, step: str) -> str:
    return f"_wf.pending.{workflow}.{step}"


StepState = Literal["pending", "running", "done", "failed"]
RunState = Literal["running", "done", "failed"]


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A run as started: its workflow, key, start time and deadline (Unix time)."""

    workflow: str
    key: str
    started_at: float
    deadline: float | None = None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of one run, as its last attempt left it (``result`` kept for last steps only)."""

    state: StepState
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    reason: str | None = None
    error: str | None = None
    result: Any = None


class JoinRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A join of one run: the parts received (parent step → result), since when, until when it waits, and
    which part's event completed it (that event runs the join's handler; a redelivery of it runs it again)."""

    parts: dict[str, Any] = {}
    first_at: float = 0.0
    deadline: float | None = None
    state: Literal["waiting", "done", "timed_out"] = "waiting"
    completed_by: str | None = None


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a run failed: the step whose event ended in the dead-letter queue, the reason and the error."""

    step: str
    reason: str
    error: str
    failed_at: float


class StepStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One step in :class:`WorkflowStatus`. ``duration_s`` is from the start of its last attempt to its end;
    ``tokens`` and ``cost_usd`` are what its LLM calls used (on the worker that ran it)."""

    name: str
    state: StepState
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    attempts: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    reason: str | None = None
    error: str | None = None


class WorkflowStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``await runner.workflows.status(run_id)`` and ``GET /v1/workflows/{run_id}``: where a run stands.

    ``state`` is ``running``, ``done`` (every last step finished) or ``failed`` (a step ended in the dead-letter
    queue: its ``reason`` and ``error`` say why, ``failed_step`` names it). Replaying the dead letter
    (``runner.dlq.replay``) puts the run back to ``running``. ``steps`` lists every step in definition order,
    ``pending`` ones included; ``tokens`` and ``cost_usd`` add up the steps'.
    """

    run_id: str
    workflow: str
    key: str
    state: RunState
    started_at: float
    deadline: float | None
    finished_at: float | None
    duration_s: float | None
    tokens: int
    cost_usd: float
    steps: list[StepStatus]
    failed_step: str | None = None
