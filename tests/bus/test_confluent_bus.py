"""What only the confluent-kafka bus has to get right: the partitioner it shares with kafka-python,
lag, being built from the configuration, and working without confluent-kafka.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drainwatch.app import build_bus
from drainwatch.bus import ConfluentBus, KafkaBus, Message, TopicPartition, TopicSpec
from drainwatch.config import loads
from drainwatch.stage import default_topics
from tests.bus.group import consume
from tests.harness.services import KafkaService

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bus(kafka: KafkaService, kafka_topic_prefix: str) -> Iterator[ConfluentBus]:
    bus = ConfluentBus([kafka.bootstrap_servers], client_id=f"{kafka_topic_prefix}test")
    yield bus
    bus.close()


def test_importing_the_bus_needs_no_confluent_kafka_and_creating_one_says_how_to_install() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["confluent_kafka"] = None  # what an environment without it looks like
        import drainwatch.bus
        from drainwatch.bus import BusError, ConfluentBus
        try:
            ConfluentBus("127.0.0.1:9")
        except BusError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "pip install 'drainwatch[confluent]'" in out.stdout


@pytest.mark.services
def test_a_key_lands_on_the_partition_kafka_python_picks(
    bus: ConfluentBus, kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    # A wallet's state lives with its partition's owner: both clients must agree on it.
    topic = f"{kafka_topic_prefix}mixed"
    group = f"{kafka_topic_prefix}g"
    bus.ensure_topics([TopicSpec(topic, partitions=6)])
    keys = [f"ethereum:0x{i:040x}" for i in range(30)]
    kbus = KafkaBus([kafka.bootstrap_servers])
    try:
        for which, producer in (("confluent", bus.producer()), ("kafka-python", kbus.producer())):
            for key in keys:
                producer.send(topic, key, which.encode())
            producer.close()
        got = consume(kbus, topic, group, 2 * len(keys))
    finally:
        kbus.close()

    by_client = {
        which: {m.key: m.partition for m in got if m.value == which.encode()}
        for which in ("confluent", "kafka-python")
    }
    assert len(by_client["confluent"]) == len(keys)
    assert by_client["confluent"] == by_client["kafka-python"]
    assert len(set(by_client["confluent"].values())) > 1


@pytest.mark.services
def test_lag_is_the_high_water_mark_minus_the_position(
    bus: ConfluentBus, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}lag"
    bus.ensure_topics([TopicSpec(topic, partitions=1)])
    producer = bus.producer()
    for i in range(10):
        producer.send(topic, "w", b"%d" % i)
    producer.close()

    consumer = bus.consumer([topic], f"{kafka_topic_prefix}g")
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while len(got) < 4 and time.monotonic() < deadline:
        got.extend(consumer.poll(1.0, max_records=4 - len(got)))
    lag = consumer.lag()
    consumer.close()

    assert [m.offset for m in got] == [0, 1, 2, 3]
    assert lag == {TopicPartition(topic, 0): 6}


@pytest.mark.services
def test_build_bus_uses_the_configured_client(kafka: KafkaService, kafka_topic_prefix: str) -> None:
    config = loads(
        f"""
        [[wallets]]
        chain = "ethereum"
        address = "0x{1:040x}"

        [bus]
        kind = "kafka"
        client = "confluent"
        bootstrap_servers = ["{kafka.bootstrap_servers}"]
        topic_prefix = "{kafka_topic_prefix}"
        partitions = 2
        """
    )
    bus = build_bus(config)
    try:
        assert isinstance(bus, ConfluentBus)
        for spec in default_topics(kafka_topic_prefix, 2):
            assert len(bus.partitions(spec.name)) == spec.partitions
    finally:
        bus.close()


@pytest.mark.services
def test_end_offsets_of_many_partitions_are_each_ones_end_offset(
    bus: ConfluentBus, kafka_topic_prefix: str
) -> None:
    # A follower looks up its partitions' ends in one request (ListOffsets), not one each.
    topic = f"{kafka_topic_prefix}ends"
    bus.ensure_topics([TopicSpec(topic, partitions=4)])
    producer = bus.producer()
    for i in range(30):
        producer.send(topic, f"key-{i}", b"x")
    producer.flush()
    producer.close()
    tps = bus.partitions(topic)
    ends = bus.end_offsets(tps)
    assert ends == {tp: bus.end_offset(tp) for tp in tps}
    assert sum(ends.values()) == 30
    assert bus.end_offsets([]) == {}
