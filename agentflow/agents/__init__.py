"""Agents (L4): the handler a user registers and the workers that feed it from the bus.

``spec`` (the registration record, the handler type, what a runner provides), ``context`` (what a handler gets
beside its event), ``worker`` (the per-event worker: dispatch, ordering by key, the hot path), ``batch`` (the
batch worker and :class:`BatchContext`) and ``failures`` (the slow path both share: timeouts, retries, dead
letters).
"""

from .batch import BatchAgentWorker, BatchContext, BatchHandler
from .context import Context
from .spec import AgentSpec, Handler, Host
from .worker import AgentWorker

__all__ = ["AgentSpec", "AgentWorker", "BatchAgentWorker", "BatchContext", "BatchHandler", "Context", "Handler", "Host"]
