"""Tokens and cost per agent, provider and model, and the token budget per workflow.

Prices come from ``[llm.NAME.prices.MODEL]`` (US dollars per million tokens); a model without a price costs 0
and is still counted in tokens. A workflow is one correlation id: every event of one emitted workflow shares
it, so the budget stops a runaway chain of agents rather than one call::

    tracker = CostTracker()
    tracker.set_prices("openai", {"gpt-4o-mini": LLMPrice(input_usd_per_mtok=0.15, output_usd_per_mtok=0.6)})
    tracker.check_budget("wf-1", budget=10_000)           # raises TokenBudgetExceededError once used up
    tracker.record("openai", "gpt-4o-mini", "summarize", "wf-1", Usage(prompt_tokens=900, completion_tokens=100))
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from ..config import LLMPrice
from ..errors import TokenBudgetExceededError
from .ledger import CostLedger, CostLine
from .types import Usage

__all__ = ["CostRow", "CostTracker"]

logger = logging.getLogger(__name__)

#: Workflows whose usage is remembered; the oldest are forgotten first, so memory stays bounded.
DEFAULT_MAX_WORKFLOWS = 100_000


#: Usage of one (provider, model, agent) since the start: calls, tokens and US dollars; the ledger's struct for
#: a minute's row (``CostRow`` is its name in the totals).
CostRow = CostLine


class CostTracker:
    """Accumulates usage and cost, and the tokens each workflow has used."""

    def __init__(self, *, max_workflows: int = DEFAULT_MAX_WORKFLOWS) -> None:
        self._prices: dict[str, dict[str, LLMPrice]] = {}
        # Tokens per workflow for the budgets, kept only while a provider has a budget: remembered for the most
        # recently active max_workflows (the run ledger, which serves used() otherwise, keeps fewer runs).
        self._workflows: OrderedDict[str, int] = OrderedDict()
        self._max_workflows = max_workflows
        self.budget_refusals = 0
        #: Workflows that passed the warning share of their token budget (each warned once).
        self.budget_warnings = 0
        # provider -> (budget, tokens at which a workflow is warned): set_budget
        self._warn_at: dict[str, tuple[int, int]] = {}
        #: Cost over time and per run (bounded), for cost reports; its ``totals`` are this tracker's rows.
        self.ledger = CostLedger()
        self._rows = self.ledger.totals

    def __repr__(self) -> str:
        total = self.total()
        return (
            f"<CostTracker rows={len(self._rows)} workflows={len(self._workflows)} tokens="
            f"{total.prompt_tokens + total.completion_tokens} cost_usd={total.cost_usd:.6f}>"
        )

    def set_prices(self, provider: str, prices: dict[str, LLMPrice]) -> None:
        self._prices[provider] = dict(prices)

    def set_budget(self, provider: str, budget: int | None, warn_share: float) -> None:
        """Warn (log and ``budget_warnings``) when a workflow calling ``provider`` passes ``warn_share`` of
        ``budget`` tokens, before :meth:`check_budget` stops it."""
        if budget is None:
            self._warn_at.pop(provider, None)
        else:
            self._warn_at[provider] = (budget, max(1, int(budget * warn_share)))

    def cost_usd(self, provider: str, model: str, usage: Usage) -> float:
        price = self._prices.get(provider, {}).get(model)
        if price is None:
            return 0.0
        return (
            usage.prompt_tokens * price.input_usd_per_mtok + usage.completion_tokens * price.output_usd_per_mtok
        ) / 1e6

    def record(self, provider: str, model: str, agent: str, workflow: str | None, usage: Usage) -> float:
        """Count one call's usage; return its cost in US dollars."""
        prompt = usage.prompt_tokens
        completion = usage.completion_tokens
        prices = self._prices.get(provider)
        price = None if prices is None else prices.get(model)  # cost_usd(), inlined: this runs on every call
        cost = (
            0.0 if price is None else (prompt * price.input_usd_per_mtok + completion * price.output_usd_per_mtok) / 1e6
        )
        self.ledger.add(provider, model, agent, workflow, prompt, completion, cost, now=time.time())
        if workflow is not None and self._warn_at:
            used = self._workflows.pop(workflow, 0) + prompt + completion
            self._workflows[workflow] = used
            if len(self._workflows) > self._max_workflows:
                self._workflows.popitem(last=False)
            warn = self._warn_at.get(provider)
            if warn is not None and used - prompt - completion < warn[1] <= used:
                self._warn(workflow, used, warn[0])
        return cost

    def step_usage(self, workflow: str, agent: str) -> tuple[int, int, float]:
        """Prompt tokens, completion tokens and US dollars ``agent`` used in ``workflow`` in this process (0 when
        unknown or forgotten)."""
        return self.ledger.step(workflow, agent)

    def _warn(self, workflow: str, used: int, budget: int) -> None:
        self.budget_warnings += 1
        logger.warning(
            "Workflow %r has used %d LLM tokens, %.0f%% of its budget of %d (token_budget_per_workflow); its LLM "
            "calls stop at the budget. Look for a loop between agents, or raise the budget.",
            workflow,
            used,
            100.0 * used / budget,
            budget,
        )

    def used(self, workflow: str) -> int:
        """Tokens the workflow has used so far (0 when unknown or forgotten)."""
        if self._warn_at:
            return self._workflows.get(workflow, 0)
        return self.ledger.tokens(workflow)

    def check_budget(self, workflow: str | None, budget: int | None) -> None:
        """Raise TokenBudgetExceededError when ``workflow`` has used ``budget`` tokens or more.

        Calls already running when the budget is reached still finish and are counted, so a workflow can end a
        little over its budget; no call starts after it.
        """
        if workflow is None or budget is None:
            return
        used = self._workflows.get(workflow, 0)
        if used >= budget:
            self.budget_refusals += 1
            raise TokenBudgetExceededError(
                f"Workflow {workflow!r} has used {used} LLM tokens, reaching its budget of {budget} "
                "(token_budget_per_workflow); no further LLM calls are made for it. Raise the budget, or look for "
                "a loop between agents.",
                workflow=workflow,
                used=used,
                budget=budget,
            )

    def rows(self) -> list[CostRow]:
        return [self._rows[k] for k in sorted(self._rows)]

    def total(self) -> CostRow:
        out = CostRow(provider="*", model="*", agent="*")
        for r in self._rows.values():
            out.calls += r.calls
            out.prompt_tokens += r.prompt_tokens
            out.completion_tokens += r.completion_tokens
            out.cost_usd += r.cost_usd
        return out
