"""The bus between stages: one interface, an embedded and a Kafka implementation."""

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
from drainwatch.bus.embedded import EmbeddedBus
from drainwatch.bus.kafka import KafkaBus

__all__ = [
    "AssignCallback",
    "Bus",
    "BusError",
    "Consumer",
    "EmbeddedBus",
    "KafkaBus",
    "Message",
    "Producer",
    "TopicPartition",
    "TopicSpec",
    "partition_for",
]
