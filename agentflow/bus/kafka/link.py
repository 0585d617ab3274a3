"""The one interface between the Kafka bus and its subscriptions: what a subscription (and its retry tiers) may
ask of the bus that created it. :class:`~agentflow.bus.kafka.bus.KafkaBus` implements it; nothing in the
subscription modules reaches into the bus beyond it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ...config import KafkaConfig
from ...events import EventCodec

if TYPE_CHECKING:
    from .subscription import KafkaSubscription

__all__ = ["BusLink"]


class BusLink(Protocol):
    """What a subscription needs from its bus: settings, connections, topics, records out, and the group's members
    in this process."""

    kafka: KafkaConfig
    codec: EventCodec
    buffer_size: int
    #: Connection and security options shared by every client of the bus (producer, consumers, admin).
    client_opts: dict[str, Any]

    @property
    def closed(self) -> bool: ...

    def topic_name(self, topic: str) -> str: ...

    async def connect(
        self, start: Callable[[], Awaitable[None]], what: str, attempt_timeout_s: float | None = None
    ) -> None:
        """Call ``start`` until it connects, backing off, within ``connect_timeout_s``; BusUnavailableError after."""

    async def ensure_topic(self, name: str, partitions: int | None = None) -> None: ...

    async def send_records(
        self,
        name: str,
        records: list[tuple[bytes, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
        items: Sequence[Any] | None = None,
    ) -> None:
        """Write records to the Kafka topic ``name`` and wait for the brokers' confirmation."""

    def member_left(self, sub: KafkaSubscription) -> list[KafkaSubscription]:
        """Forget ``sub`` as a member of its group; the members of that group left in this process."""

    async def settle(self, before: dict[KafkaSubscription, int]) -> None:
        """Wait (bounded) until each of these members has been through a rebalance after the generation given."""
