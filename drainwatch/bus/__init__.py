"""The bus between stages: one interface; an embedded and two Kafka implementations.

:class:`ConfluentBus` needs the optional confluent-kafka (``pip install 'drainwatch[confluent]'``),
which it imports only when one is created: importing this package never needs it.
"""

from drainwatch.bus.base import (
    AssignCallback,
    Bus,
    BusError,
    Consumer,
    Message,
    Producer,
    TopicPartition,
    TopicSpec,
    partition_for,
)
from drainwatch.bus.confluent import ConfluentBus
from drainwatch.bus.embedded import EmbeddedBus
from drainwatch.bus.kafka import KafkaBus

__all__ = [
    "AssignCallback",
    "Bus",
    "BusError",
    "ConfluentBus",
    "Consumer",
    "EmbeddedBus",
    "KafkaBus",
    "Message",
    "Producer",
    "TopicPartition",
    "TopicSpec",
    "partition_for",
]
