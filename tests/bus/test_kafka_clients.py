"""What both Kafka clients (kafka-python and confluent-kafka) have to get right beyond the bus
contract: topic settings, rejected messages, broker crashes, group rebalances.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, untyped
    AdminClient,
    ConfigResource,
    ResourceType,
)

from drainwatch.app import build_bus
from drainwatch.bus import (
    Bus,
    BusError,
    ConfluentBus,
    KafkaBus,
    Message,
    TopicPartition,
    TopicSpec,
)
from drainwatch.config import loads
from drainwatch.stage import Output, StageLoop
from tests.bus.group import consume, join_group
from tests.harness.services import KafkaService

pytestmark = pytest.mark.services

KafkaClientBus = KafkaBus | ConfluentBus


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest) -> str:
    """Which Kafka client the test runs on."""
    return str(request.param)


@pytest.fixture
def bus(client: str, kafka: KafkaService, kafka_topic_prefix: str) -> Iterator[KafkaClientBus]:
    bus: KafkaClientBus
    if client == "confluent":
        bus = ConfluentBus([kafka.bootstrap_servers], client_id=f"{kafka_topic_prefix}test")
    else:
        bus = KafkaBus([kafka.bootstrap_servers], client_id=f"{kafka_topic_prefix}test")
    yield bus
    bus.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def test_created_topics_carry_cleanup_policy_and_retention(
    bus: KafkaClientBus, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    freezes = f"{kafka_topic_prefix}freezes"
    transfers = f"{kafka_topic_prefix}transfers"
    bus.ensure_topics(
        [
            TopicSpec(freezes, partitions=2, compacted=True, retention_ms=None),
            TopicSpec(transfers, partitions=3, retention_ms=86_400_000),
        ]
    )

    # Read back with confluent-kafka's admin client.
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, freezes), ConfigResource(ResourceType.TOPIC, transfers)]
    )
    described = {
        resource.name: {
            name: entry.value
            for name, entry in future.result(timeout=30).items()
            if not entry.is_default
        }
        for resource, future in futures.items()
    }
    assert described[freezes]["cleanup.policy"] == "compact"
    assert "retention.ms" not in described[freezes]  # only non-default settings are listed
    assert described[transfers]["cleanup.policy"] == "delete"
    assert described[transfers]["retention.ms"] == "86400000"
    assert len(bus.partitions(freezes)) == 2
    assert len(bus.partitions(transfers)) == 3
    assert bus.partitions(f"{kafka_topic_prefix}nothing") == []


def test_flush_reports_a_message_the_broker_rejects(
    bus: KafkaClientBus, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}small"
    kafka.create_topics([topic], partitions=1, configs={"max.message.bytes": "1024"})
    producer = bus.producer()

    producer.send(topic, "k", b"x" * 10_000)
    with pytest.raises(BusError, match="not delivered"):
        producer.flush()

    producer.send(topic, "k", b"fits")  # the producer stays usable after a failure
    producer.flush()
    producer.close()
    assert [m.value for m in consume(bus, topic, f"{kafka_topic_prefix}g", 1)] == [b"fits"]


def test_broker_crash_never_loses_a_flushed_message(
    bus: KafkaClientBus, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}crash"
    group = f"{kafka_topic_prefix}g"
    bus.ensure_topics([TopicSpec(topic, partitions=3)])
    producer = bus.producer()
    delivered: list[bytes] = []

    def send_batch(name: str) -> bool:
        batch = [b"%s-%d" % (name.encode(), i) for i in range(20)]
        for i, value in enumerate(batch):
            producer.send(topic, f"wallet-{i % 7}", value)
        try:
            producer.flush(timeout_s=45)
        except BusError:
            return False
        delivered.extend(batch)
        return True

    assert send_batch("before")
    try:
        kafka.kill()
        # Queued while the broker is down: delivered after it is back, or reported; never lost.
        for i in range(20):
            producer.send(topic, f"wallet-{i % 7}", b"during-%d" % i)
        kafka.start()
        during_ok = True
        try:
            producer.flush(timeout_s=45)
            delivered.extend(b"during-%d" % i for i in range(20))
        except BusError:
            during_ok = False
        assert send_batch("after")
    finally:
        if not kafka.running:
            kafka.start()
    producer.close()

    got = [m.value for m in consume(bus, topic, group, len(delivered))]
    assert set(delivered) <= set(got)
    assert len(got) >= 40 + (20 if during_ok else 0)


def test_rebalance_tells_both_members_and_the_group_reads_each_message_once(
    bus: KafkaClientBus, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}rebalance"
    group = f"{kafka_topic_prefix}detectors"
    bus.ensure_topics([TopicSpec(topic, partitions=4)])
    producer = bus.producer()

    first = join_group(bus, topic, group)
    wait_until(lambda: first.assigned == {0, 1, 2, 3}, what="first member owns everything")
    second = join_group(bus, topic, group)

    def split() -> bool:
        a, b = first.assigned, second.assigned
        return bool(a and b and a | b == {0, 1, 2, 3} and not a & b)

    wait_until(split, what="the partitions split between the two members")
    for i in range(40):
        producer.send(topic, f"wallet-{i}", b"a-%d" % i)
    producer.flush()
    wait_until(lambda: len(first.messages) + len(second.messages) >= 40, what="40 messages")
    time.sleep(0.5)  # anything read twice would show up now

    values = sorted(m.value for m in first.messages + second.messages)
    assert values == sorted(b"a-%d" % i for i in range(40))
    assert {m.partition for m in first.messages} <= first.assigned
    assert {m.partition for m in second.messages} <= second.assigned

    # The second member leaves after committing: the first takes over exactly where it stopped.
    taken_over = second.assigned
    second.leave()
    wait_until(lambda: first.assigned == {0, 1, 2, 3}, what="first member owns everything again")
    ends = {p: bus.end_offset(TopicPartition(topic, p)) for p in taken_over}
    positions = {tp.partition: pos for tp, pos in first.positions_at_assign[-1].items()}
    assert {p: positions[p] for p in taken_over} == ends
    assert all(p > 0 for p in ends.values())
    before = len(first.messages)
    for i in range(20):
        producer.send(topic, f"wallet-{i}", b"b-%d" % i)
    producer.close()
    wait_until(lambda: len(first.messages) - before >= 20, what="20 more messages")
    time.sleep(0.5)
    first.leave()

    assert sorted(m.value for m in first.messages[before:]) == sorted(
        b"b-%d" % i for i in range(20)
    )
    assert len(first.assignments) >= 3
    assert len(second.assignments) >= 1
    assert first.thread is not None
    assert second.thread is not None
    assert set(first.threads_at_assign) == {first.thread.ident}
    assert set(second.threads_at_assign) == {second.thread.ident}
    assert first.errors == []
    assert second.errors == []


def test_commit_after_losing_the_group_raises_and_messages_come_again(
    client: str, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}slow"
    group = f"{kafka_topic_prefix}g"
    # A member that does not poll for max.poll.interval.ms is dropped from the group.
    bus: KafkaClientBus
    if client == "confluent":
        # The broker's smallest session timeout is 6 s, and librdkafka wants
        # max.poll.interval.ms >= it.
        max_poll_interval_s = 6.0
        bus = ConfluentBus(
            [kafka.bootstrap_servers],
            consumer_config={
                "max.poll.interval.ms": 6000,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            },
        )
    else:
        max_poll_interval_s = 2.0
        bus = KafkaBus(
            [kafka.bootstrap_servers],
            max_poll_interval_ms=2000,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
    bus.ensure_topics([TopicSpec(topic, partitions=2)])
    producer = bus.producer()
    for i in range(10):
        producer.send(topic, f"k{i}", b"%d" % i)
    producer.close()
    assigned: list[list[TopicPartition]] = []
    consumer = bus.consumer([topic], group, on_assign=assigned.append)
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while len(got) < 10 and time.monotonic() < deadline:
        got.extend(consumer.poll(0.5))

    time.sleep(max_poll_interval_s + 1.5)  # a handler far slower than max.poll.interval.ms
    with pytest.raises(BusError, match="rebalanced"):
        consumer.commit()
    assert all(bus.committed(group, tp) is None for tp in bus.partitions(topic))

    again: list[Message] = []
    deadline = time.monotonic() + 30
    while len(again) < 10 and time.monotonic() < deadline:
        again.extend(consumer.poll(0.5))
    consumer.commit()
    consumer.close()
    for tp in bus.partitions(topic):
        assert bus.committed(group, tp) == bus.end_offset(tp)
    bus.close()

    assert len(assigned) >= 2  # rejoining the group is a new assignment
    assert sorted(m.value for m in again) == sorted(m.value for m in got)


def test_a_static_member_that_comes_back_keeps_its_partitions_without_a_rebalance(
    client: str, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    # [bus] instance_id: a member that stops does not leave the group, and one that comes back
    # under the same id within the session timeout gets its partitions back; the other member
    # is not reassigned anything meanwhile. A static member's session timeout is 45 s: away for
    # longer than a dynamic member's 10 s (a pod replaced), it still comes back to its own.
    def static(instance: str) -> KafkaClientBus:
        if client == "confluent":
            return ConfluentBus([kafka.bootstrap_servers], instance_id=instance)
        return KafkaBus([kafka.bootstrap_servers], instance_id=instance)

    topic = f"{kafka_topic_prefix}static"
    group = f"{kafka_topic_prefix}detectors"
    buses = [static("a"), static("b"), static("b")]
    buses[0].ensure_topics([TopicSpec(topic, partitions=4)])
    try:
        first = join_group(buses[0], topic, group)
        wait_until(lambda: first.assigned == {0, 1, 2, 3}, what="first member owns everything")
        second = join_group(buses[1], topic, group)

        def split() -> bool:
            a, b = first.assigned, second.assigned
            return bool(a and b and a | b == {0, 1, 2, 3} and not a & b)

        wait_until(split, what="the partitions split between the two members")
        kept, away = first.assigned, second.assigned
        rebalances = len(first.assignments)
        second.leave()  # a restart: the process is gone, and did not leave the group
        time.sleep(12.0)
        assert (first.assigned, len(first.assignments)) == (kept, rebalances)
        back = join_group(buses[2], topic, group)  # the same instance id again
        # (Members without an instance id rebalance here instead, and this times out.)
        wait_until(
            lambda: back.assigned == away, timeout_s=30, what="the member back with its partitions"
        )
        time.sleep(1.0)
        assert (first.assigned, len(first.assignments)) == (kept, rebalances)
        back.leave()
        first.leave()
        assert first.errors == back.errors == []
    finally:
        for bus in buses:
            bus.close()


def test_a_configured_session_timeout_hands_a_static_members_partitions_over_sooner(
    client: str, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    # [bus] session_timeout_s overrides the static member's 45 s: with 6 s, a member away for
    # longer is dropped, and the other takes its partitions (built as `drainwatch run` builds
    # its bus, so the setting reaches each client under its own name).
    def configured(instance: str) -> Bus:
        return build_bus(
            loads(
                '[[wallets]]\nchain = "eth"\naddress = "0x' + "11" * 20 + '"\nlabel = "hot"\n'
                f'[bus]\nkind = "kafka"\nclient = "{client}"\n'
                f'bootstrap_servers = ["{kafka.bootstrap_servers}"]\n'
                f'topic_prefix = "{kafka_topic_prefix}"\npartitions = 2\n'
                f'instance_id = "{instance}"\nsession_timeout_s = 6\n'
            )
        )

    topic = f"{kafka_topic_prefix}short"
    group = f"{kafka_topic_prefix}detectors"
    first_bus, second_bus = configured("a"), configured("b")
    first_bus.ensure_topics([TopicSpec(topic, partitions=4)])
    try:
        first = join_group(first_bus, topic, group)
        wait_until(lambda: first.assigned == {0, 1, 2, 3}, what="first member owns everything")
        second = join_group(second_bus, topic, group)
        wait_until(
            lambda: bool(second.assigned) and len(first.assigned) < 4,
            what="the partitions split between the two members",
        )
        second.leave()  # gone without leaving the group
        wait_until(
            lambda: first.assigned == {0, 1, 2, 3},
            timeout_s=30,
            what="the static member dropped after 6 s, its partitions handed over",
        )
        first.leave()
        assert first.errors == []
    finally:
        first_bus.close()
        second_bus.close()


def test_a_stage_reads_what_its_followed_topic_got_a_moment_before_its_messages(
    bus: KafkaClientBus, kafka_topic_prefix: str
) -> None:
    # An approval published a moment before its payment (the ledger feed and the chain watcher
    # racing) is learned before the payment is judged, by a detector that is live: its
    # followers read up to the ends after every group poll that brought something to judge.
    prefix = kafka_topic_prefix
    bus.ensure_topics(
        [TopicSpec(f"{prefix}approvals", partitions=3), TopicSpec(f"{prefix}payments", 3)]
    )
    learned: set[bytes] = set()
    judged: list[bytes] = []
    judged_unexplained: list[bytes] = []

    def handler(topic: str, event: bytes) -> list[Output]:
        if topic == "approvals":
            learned.add(event)
        else:
            judged.append(event)
            if event not in learned:
                judged_unexplained.append(event)
        return []

    loop = StageLoop(
        bus,
        ["payments"],
        f"{prefix}detectors",
        handler,
        prefix=prefix,
        broadcast=["approvals"],
        broadcast_since_ms=int(time.time() * 1000) - 60_000,
        decoders={"approvals": bytes, "payments": bytes},
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop, 0.2), daemon=True)
    thread.start()
    producer = bus.producer()
    try:

        def pay(name: bytes) -> None:
            producer.send(f"{prefix}approvals", name.decode(), name)
            producer.flush()
            producer.send(f"{prefix}payments", name.decode(), name)
            producer.flush()

        pay(b"warm-up")
        wait_until(lambda: b"warm-up" in judged, what="the stage to be live")
        for i in range(60):
            pay(b"w%d" % i)
            time.sleep(0.02 * (i % 4))  # sometimes into an idle round, sometimes not
        wait_until(lambda: len(judged) == 61, timeout_s=60, what="every payment judged")
    finally:
        stop.set()
        thread.join(timeout=30)
        producer.close()
    assert judged_unexplained == []


def test_kafka_python_reads_a_backlog_bigger_than_a_megabyte_a_fetch_without_reconnecting(
    kafka: KafkaService, kafka_topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # kafka-python 2.x drops the connection on a response over receive_message_max_bytes (1 MB
    # by default), and a fetch may bring up to 1 MB per partition: a detector catching up on
    # three partitions reconnected at every fetch, and its followers fell behind.
    topic = f"{kafka_topic_prefix}backlog"
    bus = KafkaBus([kafka.bootstrap_servers], client_id=f"{kafka_topic_prefix}test")
    try:
        bus.ensure_topics([TopicSpec(topic, partitions=3)])
        producer = bus.producer()
        for i in range(900):  # 1.8 MB a partition
            producer.send(topic, f"k{i}", b"x" * 6000)
        producer.close()
        with caplog.at_level(logging.ERROR, logger="kafka"):
            follower = bus.follower(topic, since_ms=0)
            assert len(follower.poll()) == 900
            follower.close()
            assert len(consume(bus, topic, f"{kafka_topic_prefix}g", 900)) == 900
    finally:
        bus.close()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kafka")] == []
