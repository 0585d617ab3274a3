"""Event buses: the in-memory bus (default) behind one small contract, :class:`Bus` / :class:`Subscription`."""

from .base import Bus, BusStatistics, Item, Subscription, SubscriptionStatistics
from .memory import MemoryBus

__all__ = ["Bus", "BusStatistics", "Item", "MemoryBus", "Subscription", "SubscriptionStatistics"]
