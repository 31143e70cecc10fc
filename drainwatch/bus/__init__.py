"""The bus between stages: one interface; an embedded and two Kafka implementations.

:class:`ConfluentBus` needs the optional confluent-kafka (``pip install 'drainwatch[confluent]'``),
which it imports only when one is created: importing this package never needs it. The three
buses are loaded on first use (PEP 562): a stage that only needs the interface (the backtest, the
detector engine) does not import a Kafka client.
"""

from typing import TYPE_CHECKING

from drainwatch.bus.base import (
    AssignCallback,
    Bus,
    BusError,
    Consumer,
    Follower,
    Message,
    OffsetFollower,
    Producer,
    TopicPartition,
    TopicSpec,
    partition_for,
)
from drainwatch.lazy import lazy_exports

if TYPE_CHECKING:
    from drainwatch.bus.confluent import ConfluentBus
    from drainwatch.bus.embedded import EmbeddedBus
    from drainwatch.bus.kafka import KafkaBus

_LAZY = {
    "ConfluentBus": "drainwatch.bus.confluent",
    "EmbeddedBus": "drainwatch.bus.embedded",
    "KafkaBus": "drainwatch.bus.kafka",
}

__all__ = [
    "AssignCallback",
    "Bus",
    "BusError",
    "ConfluentBus",
    "Consumer",
    "EmbeddedBus",
    "Follower",
    "KafkaBus",
    "Message",
    "OffsetFollower",
    "Producer",
    "TopicPartition",
    "TopicSpec",
    "partition_for",
]


__getattr__ = lazy_exports(__name__, _LAZY)
