"""The bus interface every stage talks to; embedded.py and kafka.py implement it.

Delivery is at-least-once: a consumer commits only after it has processed what it polled, so a
crash repeats messages and never loses them; readers de-duplicate by event id.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from drainwatch.errors import DrainwatchError

__all__ = [
    "AssignCallback",
    "Bus",
    "BusError",
    "Consumer",
    "Follower",
    "Message",
    "OffsetFollower",
    "Producer",
    "TopicPartition",
    "TopicSpec",
    "partition_for",
]


log = logging.getLogger(__name__)

FOLLOW_WAIT_S = 30.0
"""The longest a follower's poll waits for its fetches to reach the ends the topic had when the
poll began; then it returns what it has (and logs that it is behind)."""
FOLLOW_CHECK_S = 1.0
"""How often a follower's poll that nothing waits on (``to_end=False``: a stage whose group poll
brought nothing to judge) looks up the topic's ends and reads up to them; between two looks it
takes only what its client has fetched."""
FOLLOW_BATCH = 5000
"""Messages a follower takes from its client at a time."""


STATIC_SESSION_TIMEOUT_MS = 45_000
"""A static group member's session timeout unless configured (``[bus] session_timeout_s``): how
long a replica restarted under its ``instance_id`` (a StatefulSet's pod, replaced) has to come
back before the group hands its partitions to the others. A dynamic member's is 10 s."""


class BusError(DrainwatchError):
    """The bus could not deliver or read a message."""


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message read from the bus."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is created when it does not exist yet."""

    name: str
    partitions: int = 6
    compacted: bool = False
    retention_ms: int | None = 14 * 24 * 3600 * 1000
    """Long enough to rebuild every detector window from the topic (the longest is 24 h)."""


AssignCallback = Callable[[list[TopicPartition]], None]


def partition_for(key: str, partitions: int) -> int:
    """A stable partition for a key (the embedded bus's choice; Kafka uses its own hash).

    >>> partition_for("ethereum:0xabc", 6) == partition_for("ethereum:0xabc", 6)
    True
    """
    return zlib.crc32(key.encode()) % partitions


def kafka_partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2 of its UTF-8 bytes, as
    the Java client, kafka-python and librdkafka's ``murmur2_random`` compute it).

    >>> kafka_partition_for("ethereum:0xabc", 6) == kafka_partition_for("ethereum:0xabc", 6)
    True
    """
    from kafka.partitioner.default import murmur2  # only Kafka buses need it

    return int(murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


class MurmurPartitions:
    """``partition_of`` for a bus on a Kafka broker, from its ``partitions`` (asked once per
    topic: adding partitions moves keys anyway, and a restart is the time for it)."""

    _partition_counts: dict[str, int]
    """Set to ``{}`` by the bus's ``__init__``."""

    def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of ``topic`` (the bus's own)."""
        raise NotImplementedError

    def partition_of(self, topic: str, key: str) -> int:
        """The partition of ``topic`` a message keyed ``key`` goes to (Kafka's murmur2)."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(self.partitions(topic))
            if not count:
                raise BusError(f"topic {topic} does not exist")
            self._partition_counts[topic] = count
        return kafka_partition_for(key, count)


class Producer(Protocol):
    """Sends keyed messages; ``flush`` returns once every sent message is durable."""

    def send(self, topic: str, key: str, value: bytes, timestamp_ms: int | None = None) -> None:
        """Queue one message (stamped with ``timestamp_ms``, event time, when given)."""

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every queued message is acknowledged; raise BusError on failure."""

    def close(self) -> None:
        """Flush and release resources."""


class Consumer(Protocol):
    """Reads topics as a member of a consumer group and commits after processing."""

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        """Return the next messages (possibly none after ``timeout_s``)."""

    def commit(self) -> None:
        """Commit the position after everything returned by ``poll`` so far."""

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next message this consumer will read from an assigned partition."""

    def close(self) -> None:
        """Leave the group (without committing)."""


class Bus(Protocol):
    """Creates producers and consumers; one per process."""

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the topics that are missing."""

    def producer(self) -> Producer:
        """A producer (acks from all replicas, idempotent where the bus supports it)."""

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assign: AssignCallback | None = None,
        from_beginning: bool = True,
    ) -> Consumer:
        """A group member reading ``topics``.

        ``on_assign`` is told the full current assignment from inside ``poll()``, in the caller's
        thread, before that poll returns any message; ``position()`` then gives the offset the
        next message of each partition will come from, so a state rebuild can replay up to it.
        """

    def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of ``topic``."""

    def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next message of this partition will get."""

    def partition_of(self, topic: str, key: str) -> int:
        """The partition of ``topic`` a message keyed ``key`` goes to."""

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The group's committed offset for a partition, if any."""

    def follower(self, topic: str, since_ms: int) -> Follower:
        """Every partition of ``topic`` for this caller alone, from the first message stamped at
        or after ``since_ms`` (see :class:`Follower`)."""

    def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int:
        """The first offset whose message timestamp is at or after ``timestamp_ms`` (or the end)."""

    def read_range(self, tp: TopicPartition, start_offset: int, end_offset: int) -> list[Message]:
        """Messages of one partition in ``[start_offset, end_offset)``: replay for state rebuild."""

    def close(self) -> None:
        """Release the bus."""


class Follower(Protocol):
    """Every partition of one topic, read by this process for itself: no group, nothing
    committed. What every member of a group must see whole, such as the ledger's approvals (any
    detector's wallet may pay any of them), is followed this way, next to the group's share of
    the keyed topics."""

    def poll(self, *, to_end: bool = True) -> list[Message]:
        """Everything published to the topic before this call that earlier polls did not
        return (waiting for the fetches, never for new messages): a detector that has polled
        its transfers then its followers has read every approval published before those
        transfers, however far behind it was, and however shortly before them.

        With ``to_end=False`` (nothing is about to be judged) a poll may return only what has
        already arrived; the rest comes with a later poll.
        """

    def close(self) -> None:
        """Release the client."""


class CatchingUpFollower:
    """What the Kafka clients' followers share: :meth:`poll` looks up the ends the topic has
    when it begins and reads up to them; asked ``to_end=False``, it looks at most every
    ``FOLLOW_CHECK_S`` and in between takes what the client has fetched. A client supplies
    :meth:`_take`, :meth:`_ends` and :meth:`_position`, each raising :class:`BusError`."""

    def __init__(self, topic: str, wait_s: float = FOLLOW_WAIT_S) -> None:
        self._topic = topic
        self._wait_s = wait_s
        self._next_check = 0.0
        """When the next poll looks up the ends."""

    def poll(self, *, to_end: bool = True) -> list[Message]:
        """Everything published before the call and not returned yet (see the class doc): the
        fetches are waited for for at most ``wait_s``; what is still behind then comes with a
        later poll, and is logged."""
        started = time.monotonic()
        if not to_end and started < self._next_check:
            return sorted(self._take(0.0), key=_message_order)
        self._next_check = started + FOLLOW_CHECK_S
        ends = self._ends()
        deadline = time.monotonic() + self._wait_s
        out: list[Message] = []
        timeout_s = 0.0
        while True:
            out += self._take(timeout_s)
            behind = [tp for tp, end in ends.items() if self._position(tp) < end]
            if not behind or time.monotonic() >= deadline:
                break
            timeout_s = 0.1
        if behind:
            log.warning(
                "following %s: %d partition(s) still behind their ends after %.0f s",
                self._topic,
                len(behind),
                self._wait_s,
            )
        return sorted(out, key=_message_order)

    def _take(self, timeout_s: float) -> list[Message]:
        """What the client has fetched, waiting up to ``timeout_s`` for some."""
        raise NotImplementedError

    def _ends(self) -> dict[TopicPartition, int]:
        """The end offset of every partition followed."""
        raise NotImplementedError

    def _position(self, tp: TopicPartition) -> int:
        """The next offset of ``tp`` this follower has not returned."""
        raise NotImplementedError


def _message_order(m: Message) -> tuple[str, int, int]:
    return m.topic, m.partition, m.offset


class OffsetFollower:
    """A :class:`Follower` on any bus, by its partitions' end offsets and ``read_range``, from the
    first message stamped at or after ``since_ms``: the embedded bus's (a Kafka bus has a client
    of its own for it, since a look at the ends costs a broker round trip per partition).

    >>> from drainwatch.bus.embedded import EmbeddedBus
    >>> bus = EmbeddedBus(":memory:")
    >>> p = bus.producer(); p.send("t", "a", b"old", 1_000); p.send("t", "b", b"new", 9_000)
    >>> p.flush()
    >>> [m.value for m in OffsetFollower(bus, "t", since_ms=5_000).poll()]
    [b'new']
    """

    def __init__(self, bus: Bus, topic: str, since_ms: int) -> None:
        self._bus = bus
        self._next = {tp: bus.offset_for_time(tp, since_ms) for tp in bus.partitions(topic)}

    def poll(self, *, to_end: bool = True) -> list[Message]:
        """What arrived since the last poll (never waits; always to the end)."""
        out: list[Message] = []
        for tp, start in self._next.items():
            end = self._bus.end_offset(tp)
            if end > start:
                out += self._bus.read_range(tp, start, end)
                self._next[tp] = end
        return out

    def close(self) -> None:
        """Nothing to release."""
