"""Pipeline metrics: consumer lag on both buses, what the stage loop counts, /healthz."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from drainwatch.bus import Bus, EmbeddedBus, KafkaBus, TopicPartition, TopicSpec
from drainwatch.config import loads
from drainwatch.events import (
    ALERTS,
    FREEZES,
    TRANSFERS,
    Alert,
    Event,
    FreezeAction,
    FreezeOrder,
    Severity,
    Transfer,
)
from drainwatch.metrics import WalletMetrics, serve_metrics
from drainwatch.stage import HANDLE_SAMPLE_EVERY, Output, StageLoop
from tests.harness.services import KafkaService

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def transfer(i: int) -> Transfer:
    return Transfer.create(
        chain="anvil",
        wallet="0xab",
        direction="out",
        counterparty=f"0x{i:040x}",
        asset="ETH",
        amount=10**18,
        decimals=18,
        tx_hash=f"0x{i:064x}",
        position=0,
        time=T0 + timedelta(seconds=i),
    )


def fill(bus: Bus, topic: str, n: int) -> None:
    bus.ensure_topics([TopicSpec(topic, partitions=1)])
    producer = bus.producer()
    for i in range(n):
        producer.send(topic, "anvil:0xab", transfer(i).to_json())
    producer.flush()
    producer.close()


def lag_after_reading(bus: Bus, topic: str, group: str, read: int) -> dict[TopicPartition, int]:
    consumer = bus.consumer([topic], group)
    got = 0
    deadline = time.monotonic() + 60
    while got < read and time.monotonic() < deadline:
        got += len(consumer.poll(1.0, max_records=read - got))
    assert got == read
    lag: dict[TopicPartition, int] = consumer.lag()  # type: ignore[attr-defined]
    consumer.close()
    return lag


def test_embedded_consumer_reports_what_it_has_not_read() -> None:
    bus = EmbeddedBus(":memory:")
    fill(bus, "lag-t", 10)
    assert lag_after_reading(bus, "lag-t", "g", 4) == {TopicPartition("lag-t", 0): 6}


@pytest.mark.services
def test_kafka_consumer_reports_lag_from_the_high_water_mark(
    kafka: KafkaService, kafka_topic_prefix: str
) -> None:
    bus = KafkaBus(kafka.bootstrap_servers)
    topic = f"{kafka_topic_prefix}lag"
    fill(bus, topic, 10)
    try:
        assert lag_after_reading(bus, topic, f"{kafka_topic_prefix}g", 4) == {
            TopicPartition(topic, 0): 6
        }
    finally:
        bus.close()


def test_stage_loop_counts_alerts_freezes_latency_and_lag() -> None:
    bus = EmbeddedBus(":memory:")
    fill(bus, TRANSFERS, 3)
    alert = Alert(
        id="m-1",
        time=T0,
        detected_at=T0 + timedelta(seconds=2),
        chain="anvil",
        wallet="0xab",
        severity=Severity.CRITICAL,
        detector="metrics-test",
        freeze=True,
        summary="drained",
    )
    order = FreezeOrder(
        id="o-1",
        time=T0,
        chain="anvil",
        wallet="0xab",
        action=FreezeAction.FREEZE,
        reason="r",
        requested_by="detector",
    )

    def handler(topic: str, event: Event) -> list[Output]:
        assert isinstance(event, Transfer)
        return [Output(ALERTS, alert), Output(FREEZES, order)] if event.time == T0 else []

    before = {
        "alerts": sample("drainwatch_alerts_total", severity="critical", detector="metrics-test"),
        "freezes": sample("drainwatch_freeze_orders_total", action="freeze"),
        "latency": sample("drainwatch_pipeline_latency_seconds_sum", point="detected"),
        "handled": sample("drainwatch_stage_handle_seconds_count", stage="metrics-test"),
    }
    loop = StageLoop(bus, [TRANSFERS], "metrics-test", handler, stage="metrics-test")
    assert loop.run_once(0.1) == 3
    assert sample("drainwatch_alerts_total", severity="critical", detector="metrics-test") == (
        before["alerts"] + 1
    )
    assert sample("drainwatch_freeze_orders_total", action="freeze") == before["freezes"] + 1
    latency = sample("drainwatch_pipeline_latency_seconds_sum", point="detected")
    assert latency - before["latency"] == pytest.approx(2.0)
    # Handle times: every event that raised something, and one quiet event in eight.
    assert sample("drainwatch_stage_handle_seconds_count", stage="metrics-test") == (
        before["handled"] + 1
    )
    producer = bus.producer()
    for i in range(3, 3 + 2 * HANDLE_SAMPLE_EVERY):
        producer.send(TRANSFERS, "anvil:0xab", transfer(i).to_json())
    producer.flush()
    assert loop.run_once(0.1) == 2 * HANDLE_SAMPLE_EVERY
    assert sample("drainwatch_stage_handle_seconds_count", stage="metrics-test") == (
        before["handled"] + 3
    )
    # All read: lag 0 on the one partition, reported without the deployment's topic prefix.
    assert (
        sample(
            "drainwatch_bus_consumer_lag_messages",
            stage="metrics-test",
            topic=TRANSFERS,
            partition="0",
        )
        == 0.0
    )
    loop.close()


def test_healthz_is_503_when_a_check_fails_and_metrics_are_served() -> None:
    checks = {"detect": True, "alert": True}
    server = serve_metrics("127.0.0.1", 0, health=lambda: checks)
    try:
        with urllib.request.urlopen(f"{server.url}/healthz") as reply:
            assert json.loads(reply.read())["status"] == "ok"
        checks["alert"] = False
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"{server.url}/healthz")
        assert failed.value.code == 503
        assert json.loads(failed.value.read()) == {
            "status": "failing",
            "checks": {"detect": True, "alert": False},
        }
        with urllib.request.urlopen(f"{server.url}/metrics") as reply:
            text = reply.read().decode()
        assert "# TYPE drainwatch_alerts_total counter" in text
    finally:
        server.close()


def test_a_wallet_listed_per_asset_reports_each_asset_under_its_own_label() -> None:
    cfg = loads(
        '[[wallets]]\nchain = "anvil"\naddress = "0xAB"\nasset = "ETH"\nlabel = "m-eth"\n'
        '[[wallets]]\nchain = "anvil"\naddress = "0xab"\nasset = "USDT"\nlabel = "m-usdt"\n'
    )
    metrics = WalletMetrics(cfg.wallets)
    usdt = transfer(1).model_copy(update={"asset": "USDT", "balance_after": 5 * 10**18})
    before = sample("drainwatch_wallet_transfers_total", chain="anvil", wallet_label="m-usdt",
                    direction="out")  # fmt: skip
    metrics.observe([usdt])
    assert metrics.label("anvil", "0xab", "ETH") == "m-eth"
    assert (
        sample(
            "drainwatch_wallet_transfers_total",
            chain="anvil",
            wallet_label="m-usdt",
            direction="out",
        )
        == before + 1
    )
    assert sample("drainwatch_wallet_balance", chain="anvil", wallet_label="m-usdt",
                  asset="USDT") == 5.0  # fmt: skip
