"""Workflows (L5): steps, parallel groups and joins over agents and topics (docs/workflows.md).

* :mod:`.graph` — the definition (:class:`Workflow`, from ``runner.workflow(name)`` or ``[workflows.NAME]``) and
  its checks at start: no cycle, no unknown step.
* :mod:`.steps` — a step at run time: deadline, join parts, status, the user's handler, the edges to the next
  steps.
* :mod:`.records` — what runs keep in the state store and carry in headers; :class:`WorkflowStatus`.
* :mod:`.runs` — ``runner.workflows``: starting runs, their results and status, failures, join timeouts.
"""

from .graph import Workflow
from .records import StepStatus, WorkflowStatus
from .runs import WorkflowRun, Workflows

__all__ = ["StepStatus", "Workflow", "WorkflowRun", "WorkflowStatus", "Workflows"]
