"""A new member's wait for its partitions (agentflow/bus/kafka/subscription.py): progress and bound."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentflow import config_from_dict


async def test_a_join_says_it_is_still_waiting_and_gives_up_at_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The wait itself (no broker needed): a member whose partitions never come logs its progress and returns
    # False at the bound; one whose partitions come returns True at once.
    from agentflow.bus.kafka import subscription

    monkeypatch.setattr(subscription, "JOIN_PROGRESS_S", 0.05)
    sub = subscription.KafkaSubscription.__new__(subscription.KafkaSubscription)
    sub.group, sub._kname, sub._assigned_evt = "g", "agentflow.t", asyncio.Event()
    with caplog.at_level(logging.WARNING, logger=subscription.__name__):
        assert await sub._wait_assigned(0.2) is False
    waits = [r.getMessage() for r in caplog.records if "Still joining consumer group 'g'" in r.getMessage()]
    assert 2 <= len(waits) <= 4 and "giving up after 0.2 s" in waits[0]
    sub._assigned_evt.set()
    assert await sub._wait_assigned(0.2) is True
    assert subscription.join_timeout_s(config_from_dict({}).kafka) == 40.0  # 4 x the 10 s session timeout
