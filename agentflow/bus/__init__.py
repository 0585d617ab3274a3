"""Event buses behind one small contract, :class:`Bus` / :class:`Subscription`: the in-memory bus (default) and
the Kafka bus (``[bus] backend = "kafka"``, in :mod:`agentflow.bus.kafka`, which needs ``agentflow-runner[kafka]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Bus, BusStatistics, Item, Subscription, SubscriptionStatistics
from .memory import MemoryBus

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Bus", "BusStatistics", "Item", "MemoryBus", "Subscription", "SubscriptionStatistics", "create_bus"]


def create_bus(config: Config) -> Bus:
    """Build the bus ``config.bus.backend`` names (not started); the Kafka bus is imported only when chosen."""
    if config.bus.backend == "kafka":
        from .kafka import KafkaBus

        return KafkaBus.from_config(config)
    return MemoryBus(
        partitions=config.bus.partitions,
        buffer_size=config.runner.event_buffer_size,
        dlq_max_entries=config.dlq.max_entries,
        refuse_unrouted=config.bus.refuse_unrouted,
    )
