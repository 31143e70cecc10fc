"""One contract for every bus: the embedded bus and both Kafka clients must behave the same."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest

from drainwatch.bus import (
    Bus,
    ConfluentBus,
    Consumer,
    EmbeddedBus,
    Follower,
    KafkaBus,
    Message,
    TopicPartition,
    TopicSpec,
)
from drainwatch.bus.base import FOLLOW_CHECK_S


class ContractBus(Bus, Protocol):
    """What the tests use beyond :class:`Bus`; every implementation offers it."""

    def committed(self, group: str, tp: TopicPartition) -> int | None: ...


@dataclass
class BusUnderTest:
    bus: ContractBus
    prefix: str

    def topic(self, name: str, partitions: int = 1) -> str:
        full = f"{self.prefix}{name}"
        self.bus.ensure_topics([TopicSpec(full, partitions=partitions)])
        return full

    def group(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture(
    params=[
        pytest.param("embedded"),
        pytest.param("kafka", marks=pytest.mark.services),
        pytest.param("confluent", marks=pytest.mark.services),
    ]
)
def under_test(request: pytest.FixtureRequest, kafka_topic_prefix: str) -> Iterator[BusUnderTest]:
    bus: ContractBus
    if request.param == "embedded":
        bus = EmbeddedBus(":memory:")
    else:
        # Requested lazily so the embedded part runs without starting a broker.
        kafka = request.getfixturevalue("kafka")
        client_id = f"{kafka_topic_prefix}contract"
        if request.param == "kafka":
            bus = KafkaBus([kafka.bootstrap_servers], client_id=client_id)
        else:
            bus = ConfluentBus([kafka.bootstrap_servers], client_id=client_id)
    yield BusUnderTest(bus, kafka_topic_prefix)
    bus.close()


def produce(bus: Bus, messages: Sequence[tuple[str, str, bytes, int | None]]) -> None:
    producer = bus.producer()
    for topic, key, value, ts_ms in messages:
        producer.send(topic, key, value, ts_ms)
    producer.flush()
    producer.close()


def consume(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Message]:
    """Poll until ``count`` messages arrived, then make sure no more come."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll(0.5))
    got.extend(consumer.poll(0.5))
    return got


def test_round_trip_keeps_key_value_timestamp_and_order_per_key(under_test: BusUnderTest) -> None:
    topic = under_test.topic("roundtrip", partitions=3)
    now_ms = int(time.time() * 1000)
    sent = [(topic, f"wallet-{i % 5}", f"{i}".encode(), now_ms + i) for i in range(40)]
    produce(under_test.bus, sent)

    consumer = under_test.bus.consumer([topic], under_test.group("g"))
    got = consume(consumer, len(sent))
    consumer.close()

    assert sorted((m.key, m.value, m.timestamp_ms) for m in got) == sorted(
        (k, v, ts) for _, k, v, ts in sent
    )
    for key in {k for _, k, _, _ in sent}:
        assert [m.value for m in got if m.key == key] == [v for _, k, v, _ in sent if k == key]


def test_same_key_lands_on_one_partition_the_bus_can_name(under_test: BusUnderTest) -> None:
    topic = under_test.topic("keys", partitions=4)
    keys = [f"ethereum:0x{i:040x}" for i in range(12)]
    produce(under_test.bus, [(topic, k, b"x", None) for _ in range(3) for k in keys])

    consumer = under_test.bus.consumer([topic], under_test.group("g"))
    got = consume(consumer, 36)
    consumer.close()

    partitions_of = {k: {m.partition for m in got if m.key == k} for k in keys}
    assert all(len(p) == 1 for p in partitions_of.values()), partitions_of
    # What a detector replica reckons it owns is where the producer put the key.
    assert partitions_of == {k: {under_test.bus.partition_of(topic, k)} for k in keys}
    assert len(got) == 36
    assert len({m.partition for m in got}) > 1  # 12 keys do not all hash to one of 4 partitions


def test_poll_returns_offsets_in_order_and_position_follows(under_test: BusUnderTest) -> None:
    topic = under_test.topic("order", partitions=2)
    produce(under_test.bus, [(topic, f"k{i % 3}", b"%d" % i, None) for i in range(20)])
    assigned: list[list[TopicPartition]] = []

    consumer = under_test.bus.consumer([topic], under_test.group("g"), on_assign=assigned.append)
    got = consume(consumer, 20)

    assert assigned
    assert sorted(assigned[-1], key=lambda tp: tp.partition) == under_test.bus.partitions(topic)
    for tp in assigned[-1]:
        offsets = [m.offset for m in got if m.partition == tp.partition]
        assert offsets == list(range(len(offsets)))
        assert consumer.position(tp) == len(offsets) == under_test.bus.end_offset(tp)
    consumer.close()


def test_commit_then_new_member_resumes_after_committed_offset(under_test: BusUnderTest) -> None:
    topic = under_test.topic("resume", partitions=2)
    group = under_test.group("g")
    produce(under_test.bus, [(topic, f"k{i}", b"old-%d" % i, None) for i in range(10)])

    first = under_test.bus.consumer([topic], group)
    old = consume(first, 10)
    first.commit()
    first.close()
    for tp in under_test.bus.partitions(topic):
        assert under_test.bus.committed(group, tp) == under_test.bus.end_offset(tp)

    produce(under_test.bus, [(topic, f"k{i}", b"new-%d" % i, None) for i in range(5)])
    second = under_test.bus.consumer([topic], group)
    new = consume(second, 5)
    second.close()

    assert sorted(m.value for m in old) == sorted(b"old-%d" % i for i in range(10))
    assert sorted(m.value for m in new) == sorted(b"new-%d" % i for i in range(5))


def test_uncommitted_messages_are_delivered_again(under_test: BusUnderTest) -> None:
    topic = under_test.topic("redeliver", partitions=2)
    group = under_test.group("g")
    produce(under_test.bus, [(topic, f"k{i}", b"%d" % i, None) for i in range(12)])

    first = under_test.bus.consumer([topic], group)
    committed: list[Message] = []
    deadline = time.monotonic() + 30
    while not committed and time.monotonic() < deadline:
        committed = first.poll(0.5, max_records=4)
    first.commit()
    rest = consume(first, 12 - len(committed))  # read but never committed: a crash
    first.close()

    second = under_test.bus.consumer([topic], group)
    again = consume(second, len(rest))
    second.close()

    assert 0 < len(committed) <= 4
    assert len(committed) + len(rest) == 12
    assert sorted((m.partition, m.offset) for m in again) == sorted(
        (m.partition, m.offset) for m in rest
    )


def test_offset_for_time_and_read_range_return_the_right_slice(under_test: BusUnderTest) -> None:
    topic = under_test.topic("replay")
    tp = TopicPartition(topic, 0)
    base_ms = int(time.time() * 1000) - 60_000
    produce(under_test.bus, [(topic, "w", b"%d" % i, base_ms + i * 1000) for i in range(10)])

    assert under_test.bus.offset_for_time(tp, base_ms - 5000) == 0
    assert under_test.bus.offset_for_time(tp, base_ms + 3500) == 4
    assert under_test.bus.offset_for_time(tp, base_ms + 4000) == 4
    assert under_test.bus.offset_for_time(tp, base_ms + 60_000) == 10

    window = under_test.bus.read_range(tp, 4, 7)
    assert [(m.offset, m.value, m.timestamp_ms) for m in window] == [
        (i, b"%d" % i, base_ms + i * 1000) for i in (4, 5, 6)
    ]
    assert all(m.key == "w" and m.topic == topic and m.partition == 0 for m in window)
    # An end beyond the partition's end, and empty ranges, still return promptly.
    assert [m.offset for m in under_test.bus.read_range(tp, 8, 1000)] == [8, 9]
    assert under_test.bus.read_range(tp, 5, 5) == []
    assert under_test.bus.read_range(tp, 10, 20) == []


def test_read_range_of_an_empty_partition_is_empty(under_test: BusUnderTest) -> None:
    topic = under_test.topic("empty")
    tp = TopicPartition(topic, 0)
    assert under_test.bus.read_range(tp, 0, 10) == []
    assert under_test.bus.end_offset(tp) == 0
    assert under_test.bus.offset_for_time(tp, 0) == 0


def test_ensure_topics_is_idempotent(under_test: BusUnderTest) -> None:
    name = f"{under_test.prefix}idem"
    specs = [TopicSpec(name, partitions=3), TopicSpec(f"{name}-c", 2, compacted=True)]
    under_test.bus.ensure_topics(specs)
    produce(under_test.bus, [(name, "k", b"kept", None)])

    under_test.bus.ensure_topics(specs)
    under_test.bus.ensure_topics([TopicSpec(name, partitions=5)])  # an existing topic is kept

    assert len(under_test.bus.partitions(name)) == 3
    assert len(under_test.bus.partitions(f"{name}-c")) == 2
    consumer = under_test.bus.consumer([name], under_test.group("g"))
    assert [m.value for m in consume(consumer, 1)] == [b"kept"]
    consumer.close()


def follow(follower: Follower, count: int, timeout_s: float = 30.0) -> list[Message]:
    """Poll until ``count`` messages arrived, then make sure no more come."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(follower.poll())
        time.sleep(0.05)
    time.sleep(0.5)
    got.extend(follower.poll())
    return got


def test_a_follower_reads_every_partition_from_a_time_on_and_shares_nothing(
    under_test: BusUnderTest,
) -> None:
    # What every member of a group must see whole (the ledger): two followers of one topic
    # both get every partition's messages from a time on, and keep following.
    topic = under_test.topic("follow", partitions=3)
    base_ms = int(time.time() * 1000) - 60_000
    produce(
        under_test.bus,
        [(topic, f"k{i}", b"old%d" % i, base_ms) for i in range(6)]
        + [(topic, f"k{i}", b"new%d" % i, base_ms + 30_000) for i in range(6)],
    )
    followers = [under_test.bus.follower(topic, since_ms=base_ms + 10_000) for _ in range(2)]
    try:
        for follower in followers:
            got = follow(follower, 6)
            assert sorted(m.value for m in got) == [b"new%d" % i for i in range(6)]
        produce(under_test.bus, [(topic, "k0", b"later", base_ms + 40_000)])
        for follower in followers:
            assert [m.value for m in follow(follower, 1)] == [b"later"]
    finally:
        for follower in followers:
            follower.close()


def test_one_follower_poll_returns_everything_published_before_it(
    under_test: BusUnderTest,
) -> None:
    # A detector polls its share of the transfers, then its followers: the ledger's approvals
    # published before those transfers must all be in that one poll, however many there are
    # (a detector starting, or catching up after an outage, reads hours of them). Otherwise it
    # judges payments before their approvals and freezes them.
    topic = under_test.topic("backlog", partitions=3)
    base_ms = int(time.time() * 1000) - 60_000
    follower = under_test.bus.follower(topic, since_ms=base_ms)
    try:
        produce(
            under_test.bus, [(topic, f"k{i % 7}", b"%d" % i, base_ms + i) for i in range(12_000)]
        )
        got = follower.poll()
        assert sorted(int(m.value) for m in got) == list(range(12_000))
        assert follower.poll() == []
        # A message published a moment before the poll (an approval just before its payment)
        # is in it, at once.
        produce(under_test.bus, [(topic, "k0", b"later", base_ms + 20_000)])
        assert [m.value for m in follower.poll()] == [b"later"]
        # With nothing to judge, a poll may take only what has arrived; it looks up the ends
        # again FOLLOW_CHECK_S after its last look.
        produce(under_test.bus, [(topic, "k0", b"idle", base_ms + 30_000)])
        idle = follower.poll(to_end=False)
        time.sleep(FOLLOW_CHECK_S)
        idle += follower.poll(to_end=False)
        assert [m.value for m in idle] == [b"idle"]
    finally:
        follower.close()
