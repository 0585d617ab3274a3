"""The Kafka bus (``[bus] backend = "kafka"``): the bus contract on Apache Kafka and compatible brokers.

``bus`` (:class:`KafkaBus`: producer, topics, publishing, dead letters), ``subscription`` (one consumer in an
agent's group: fetch, pause, rebalance, commit), ``records`` (fetched records into events, or raw bytes the agent
dead-letters), ``offsets`` (which offsets may be committed), ``retry`` (retry tiers as topics), ``client``
(connection options, TLS and the connect loop) and ``link`` (the one interface between a subscription and its
bus). Only this package imports aiokafka, and ``import agentflow`` does not import it. See docs/kafka.md.
"""

try:
    import aiokafka  # type: ignore[import-untyped]  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("The Kafka bus needs aiokafka; install it with: pip install 'agentflow-runner[kafka]'") from exc

from .bus import KafkaBus
from .client import client_options
from .subscription import KafkaSubscription

__all__ = ["KafkaBus", "KafkaSubscription", "client_options"]
