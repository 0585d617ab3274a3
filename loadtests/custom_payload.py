"""An example Python scenario: per-request payloads and a check on each result.

agentcli loadtest --script loadtests/custom_payload.py
agentcli loadtest --script loadtests/custom_payload.py --rate 200/s --duration 30s   # options override
"""

from __future__ import annotations

import random
from typing import Any

options = {
    "description": "custom payloads with a check, 50 arrivals/s for 10 s",
    "rate": "50/s",
    "duration": "10s",
    "thresholds": ["error_rate<0.01", "p95<50ms"],
}

QUESTIONS = ["why is the sky blue?", "what is 2 + 2?", "summarize this ticket"]


def payload(i: int) -> Any:
    """The payload of iteration ``i``: any msgspec-encodable value."""
    return {"q": QUESTIONS[i % len(QUESTIONS)], "user": f"user-{random.randrange(100)}", "n": i}


def check(result: Any) -> bool | str | None:
    """True/None: ok; False: error 'check_failed'; a string: an error of that kind. The noop agent returns None."""
    return result is None or "unexpected_result"
