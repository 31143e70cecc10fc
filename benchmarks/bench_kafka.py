"""Throughput through a real Kafka broker: raw clients, then producer -> detectors -> alerts topic.

Usage: ``.venv/bin/python benchmarks/bench_kafka.py [-n 200000] [--wallets 20] [--detectors 1 2]
[--client kafka-python confluent]``

1. Raw: N transfer-sized messages produced (acks=all, idempotent) and consumed by one group
   member, with kafka-python and, if installed, confluent-kafka, on the same broker.
2. State rebuild: the transfers read back from the broker, decoded and judged by a fresh
   engine, as a detector does for a partition it takes over without a usable snapshot.
3. Pipeline: detector processes (``drainwatch run detect --bus kafka``, one consumer group) are
   started and have joined; then N generated transfers are produced as fast as the producer
   goes. Reported: transfers/s from the first send until the group has committed every transfer
   (every alert is on the alerts topic by then: the stage commits after its output is flushed).
   ``--client`` picks the Kafka client of the whole pipeline (``[bus] client``: the detector
   processes, the benchmark's producer and its offset checks); several run one after another.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.traffic import HotWalletSpec, config_toml, evm_hot_wallets, generate_traffic
from drainwatch.bus import BusError, ConfluentBus, KafkaBus, TopicPartition
from drainwatch.events import ALERTS, TRANSFERS, Transfer
from drainwatch.stage import default_topics
from tests.harness.services import KafkaService

PARTITIONS = 6


def transfers(specs: list[HotWalletSpec], n: int) -> list[tuple[str, bytes, int]]:
    """(key, JSON, timestamp ms) of N transfers of watched wallets, ending now."""
    days = max(1.0, 1.1 * n / (1400 * len(specs)))
    start = datetime.now(UTC) - timedelta(days=days)
    rows = generate_traffic(specs, start, days=days, seed=1, panic_day=None).transfers
    watched = {s.address for s in specs}
    out = []
    for i, row in enumerate(rows):
        sender, receiver = row["from"], row["to"]
        wallet, direction, other = (
            (sender, "out", receiver) if sender in watched else (receiver, "in", sender)
        )
        if wallet not in watched:
            continue
        t = Transfer.create(
            chain=row["chain"],
            wallet=wallet,
            direction=direction,
            counterparty=other,
            asset=row["asset"],
            amount=int(Decimal(row["amount"]) * 10**18),
            decimals=18,
            tx_hash=row.get("tx_hash") or f"0x{i:064x}",
            position=0,
            time=datetime.fromisoformat(row["ts"].replace("Z", "+00:00")),
        )
        out.append((t.key, t.to_json(), int(t.time.timestamp() * 1000)))
        if len(out) == n:
            break
    return out


def raw_kafka_python(
    bootstrap: str, topic: str, msgs: list[tuple[str, bytes, int]]
) -> tuple[float, float]:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    began = time.perf_counter()
    for key, value, ts in msgs:
        producer.send(topic, value=value, key=key.encode(), timestamp_ms=ts)
    producer.flush()
    produce_s = time.perf_counter() - began
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got, began = 0, 0.0
    while got < len(msgs):
        batch = consumer.poll(timeout_ms=1000, max_records=500)
        if batch and not began:
            began = time.perf_counter()
        got += sum(len(r) for r in batch.values())
    consume_s = time.perf_counter() - began
    consumer.close()
    return len(msgs) / produce_s, len(msgs) / consume_s


def raw_confluent(
    bootstrap: str, topic: str, msgs: list[tuple[str, bytes, int]]
) -> tuple[float, float]:
    from confluent_kafka import Consumer, Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    began = time.perf_counter()
    for key, value, ts in msgs:
        while True:
            try:
                producer.produce(topic, value=value, key=key.encode(), timestamp=ts)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    produce_s = time.perf_counter() - began
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got, began = 0, 0.0
    while got < len(msgs):
        batch = consumer.consume(num_messages=500, timeout=1.0)
        if batch and not began:
            began = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    consume_s = time.perf_counter() - began
    consumer.close()
    return len(msgs) / produce_s, len(msgs) / consume_s


def caught_up(bus: KafkaBus | ConfluentBus, group: str, topic: str) -> bool:
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(topic, p)
            if (bus.committed(group, tp) or 0) < bus.end_offset(tp):
                return False
    except BusError:  # on a fresh broker the group coordinator takes a moment to appear
        return False
    return True


def pipeline(
    kafka: KafkaService,
    specs: list[HotWalletSpec],
    msgs: list[tuple[str, bytes, int]],
    detectors: int,
    client: str = "kafka-python",
) -> dict[str, Any]:
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    group_prefix = f"{prefix}dw"
    workdir = Path(tempfile.mkdtemp(prefix="dw-bench-"))
    config = workdir / "drainwatch.toml"
    config.write_text(
        f'state_dir = "{workdir / "state"}"\n'
        + config_toml(specs)
        + f"""
[bus]
kind = "kafka"
bootstrap_servers = ["{kafka.bootstrap_servers}"]
topic_prefix = "{prefix}"
partitions = {PARTITIONS}
group_prefix = "{group_prefix}"
client = "{client}"
"""
    )
    bus: KafkaBus | ConfluentBus = (
        ConfluentBus(kafka.bootstrap_servers)
        if client == "confluent"
        else KafkaBus(kafka.bootstrap_servers)
    )
    bus.ensure_topics(default_topics(prefix, PARTITIONS))
    transfers_topic = f"{prefix}{TRANSFERS}"
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "drainwatch",
                "run",
                "detect",
                "--config",
                str(config),
                "--bus",
                "kafka",
            ],
            stdout=(workdir / f"detect-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for i in range(detectors)
    ]
    group = f"{group_prefix}-detect"
    try:
        producer = bus.producer()
        key, value, ts = msgs[0]
        producer.send(transfers_topic, key, value, ts)
        producer.flush()
        deadline = time.monotonic() + 120
        while not caught_up(bus, group, transfers_topic):
            if time.monotonic() > deadline:
                raise RuntimeError("detectors did not join the group")
            time.sleep(0.2)
        time.sleep(5)  # let every member finish joining (no rebalance during the run)
        began = time.perf_counter()
        for key, value, ts in msgs:
            producer.send(transfers_topic, key, value, ts)
        producer.flush()
        produced_s = time.perf_counter() - began
        while not caught_up(bus, group, transfers_topic):
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        alerts = sum(
            bus.end_offset(TopicPartition(f"{prefix}{ALERTS}", p)) for p in range(PARTITIONS)
        )
        producer.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        bus.close()
    return {
        "client": client,
        "detectors": detectors,
        "transfers": len(msgs),
        "produce_per_s": len(msgs) / produced_s,
        "end_to_end_per_s": len(msgs) / elapsed,
        "alerts": alerts,
    }


def rebuild(
    kafka: KafkaService, specs: list[HotWalletSpec], msgs: list[tuple[str, bytes, int]]
) -> float:
    """Transfers/s of a detector's state rebuild without a snapshot: the partitions read from
    the broker (kafka-python), decoded and judged by a fresh engine (``rebuild_state``)."""
    from detectors import DetectionEngine
    from drainwatch.app import rebuild_state
    from drainwatch.config import loads

    prefix = f"rebuild-{uuid.uuid4().hex[:6]}-"
    bus = KafkaBus(kafka.bootstrap_servers)
    try:
        bus.ensure_topics(default_topics(prefix, PARTITIONS))
        topic = f"{prefix}{TRANSFERS}"
        producer = bus.producer()
        for key, value, ts in msgs:
            producer.send(topic, key, value, ts)
        producer.flush()
        producer.close()
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = {tp: bus.end_offset(tp) for tp in tps}
        engine = DetectionEngine(loads(config_toml(specs)))
        started = time.perf_counter()
        replayed = rebuild_state(bus, engine, ends.__getitem__, tps, rebuild_s=10**9)
        return replayed / (time.perf_counter() - started)
    finally:
        bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--transfers", type=int, default=200_000)
    parser.add_argument("--wallets", type=int, default=20)
    parser.add_argument("--detectors", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--client", nargs="+", choices=["kafka-python", "confluent"], default=["kafka-python"]
    )
    parser.add_argument("--skip-raw", action="store_true")
    args = parser.parse_args()

    specs = evm_hot_wallets(args.wallets, cold_offset=5000)
    msgs = transfers(specs, args.transfers)
    size = sum(len(v) for _, v, _ in msgs) / len(msgs)
    print(f"{len(msgs)} transfers of {len(specs)} wallets, {size:.0f} bytes each on average")
    with KafkaService(heap="1g") as kafka:
        if not args.skip_raw:
            clients = [("kafka-python", raw_kafka_python)]
            try:
                import confluent_kafka  # noqa: F401

                clients.append(("confluent-kafka", raw_confluent))
            except ImportError:
                print("confluent-kafka is not installed: raw comparison skipped")
            for name, run in clients:
                topic = f"raw-{name}-{uuid.uuid4().hex[:6]}"
                kafka.create_topics([topic], partitions=PARTITIONS)
                produce, consume = run(kafka.bootstrap_servers, topic, msgs)
                print(
                    f"raw {name:16s} produce {produce:>10,.0f} msg/s"
                    f"   consume {consume:>10,.0f} msg/s"
                )
        print(
            f"state rebuild without a snapshot (read, decoded, judged): "
            f"{rebuild(kafka, specs, msgs):,.0f} transfers/s"
        )
        for client in args.client:
            for n in args.detectors:
                r = pipeline(kafka, specs, msgs, n, client)
                print(
                    f"pipeline ({r['client']}), {r['detectors']} detector process(es): "
                    f"producer {r['produce_per_s']:,.0f}"
                    f" transfers/s; producer -> detectors -> alerts {r['end_to_end_per_s']:,.0f}"
                    f" transfers/s ({r['alerts']} alerts)"
                )


if __name__ == "__main__":
    main()
