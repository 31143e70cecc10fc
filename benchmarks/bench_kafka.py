"""Throughput through a real Kafka broker: raw clients, then producer -> detectors -> alerts topic.

Usage: ``.venv/bin/python benchmarks/bench_kafka.py [-n 200000] [--wallets 20] [--detectors 1 2]
[--client kafka-python confluent] [--ledger]``

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
   ``--ledger`` publishes the ledger's approvals too, ten minutes of traffic ahead of the
   transfers (see :func:`send_order`), and checks that the pipeline freezes for the payments one
   engine judging the same events in the same order freezes for.
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
from drainwatch.events import ALERTS, LEDGER, TRANSFERS, Alert, ApprovedWithdrawal, Transfer, decode
from drainwatch.stage import default_topics
from tests.harness.services import KafkaService

PARTITIONS = 6


Msg = tuple[str, bytes, int]
"""(key, JSON, timestamp ms) of one event."""


def traffic(specs: list[HotWalletSpec], n: int) -> tuple[list[Msg], list[Msg]]:
    """N transfers of watched wallets, ending now, and the ledger's approvals of the customer
    withdrawals among them (each seconds to minutes before its payment)."""
    days = max(1.0, 1.1 * n / (1400 * len(specs)))
    start = datetime.now(UTC) - timedelta(days=days)
    generated = generate_traffic(specs, start, days=days, seed=1, panic_day=None)
    sent = transfers(specs, generated.transfers, n)
    last_ms = max(ts for _, _, ts in sent)
    approvals = []
    for row in generated.ledger:
        a = ApprovedWithdrawal(
            id=row["withdrawal_id"],
            time=datetime.fromisoformat(row["ts"].replace("Z", "+00:00")),
            chain=row["chain"],
            asset=row["asset"],
            to=row["to"],
            amount=Decimal(row["amount"]),
        )
        ts = int(a.time.timestamp() * 1000)
        if ts <= last_ms:
            approvals.append((a.key, a.to_json(), ts))
    return sent, approvals


def transfers(specs: list[HotWalletSpec], rows: list[dict[str, Any]], n: int) -> list[Msg]:
    """The first N generated rows that move a watched wallet, as transfers."""
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


def joined(bootstrap: str, group: str, members: int) -> bool:
    """Whether ``group`` is stable with ``members`` members (asked through kafka-python's admin
    client whichever client the pipeline runs on: this is the benchmark's own check)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (info,) = admin.describe_consumer_groups([group])
    finally:
        admin.close()
    return bool(info.state == "Stable" and len(info.members) == members)


def pipeline(
    kafka: KafkaService,
    specs: list[HotWalletSpec],
    msgs: list[Msg],
    detectors: int,
    *,
    client: str = "kafka-python",
    approvals: list[Msg] | None = None,
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
        while not (
            caught_up(bus, group, transfers_topic)
            and joined(kafka.bootstrap_servers, group, detectors)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("detectors did not join the group")
            time.sleep(0.2)
        time.sleep(1)
        began = time.perf_counter()
        for ledger, chain in send_order(prefix, msgs[1:], approvals or []):
            for topic, key, value, ts in ledger:
                producer.send(topic, key, value, ts)
            if ledger:
                producer.flush()
            for topic, key, value, ts in chain:
                producer.send(topic, key, value, ts)
        producer.flush()
        produced_s = time.perf_counter() - began
        while not caught_up(bus, group, transfers_topic):
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        alerts = [
            decode(ALERTS, m.value, Alert)
            for p in range(PARTITIONS)
            for m in bus.read_range(
                TopicPartition(f"{prefix}{ALERTS}", p),
                0,
                bus.end_offset(TopicPartition(f"{prefix}{ALERTS}", p)),
            )
        ]
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
        "alerts": len(alerts),
        "ledger_freezes": ledger_freezes(alerts),
    }


AHEAD_MS = 600_000
"""How far, in traffic time, the ledger feed publishes ahead of the chain watcher."""


def send_order(
    prefix: str, msgs: list[Msg], approvals: list[Msg]
) -> list[tuple[list[tuple[str, str, bytes, int]], list[tuple[str, str, bytes, int]]]]:
    """Rounds of (approvals, transfers), each (topic, key, value, ms), in time order.

    An exchange approves a withdrawal seconds to minutes before the payment is signed, mined
    and seen: the approvals of a round are flushed before its transfers are sent, so each is on
    the broker before its payment (one producer sending both microseconds apart would not
    guarantee that: its batches for different partitions go out in any order). A round holds
    ``AHEAD_MS`` of transfers and the approvals up to ``AHEAD_MS`` after them.
    """
    ledger = [(f"{prefix}{LEDGER}", k, v, ts) for k, v, ts in sorted(approvals, key=_ms)]
    chain = [(f"{prefix}{TRANSFERS}", k, v, ts) for k, v, ts in sorted(msgs, key=_ms)]
    rounds = []
    sent_ledger = 0
    i = 0
    while i < len(chain) or sent_ledger < len(ledger):
        end = chain[i][3] + AHEAD_MS if i < len(chain) else ledger[-1][3] + 1
        j = i
        while j < len(chain) and chain[j][3] < end:
            j += 1
        k = sent_ledger
        while k < len(ledger) and ledger[k][3] < end + AHEAD_MS:
            k += 1
        rounds.append((ledger[sent_ledger:k], chain[i:j]))
        sent_ledger, i = k, j
    return rounds


def _ms(msg: Msg) -> int:
    return msg[2]


def ledger_freezes(alerts: list[Alert]) -> int:
    """Payments the ledger detector froze a wallet for."""
    return len({a.id for a in alerts if a.detector == "ledger" and a.freeze})


def in_process_ledger_freezes(
    specs: list[HotWalletSpec], msgs: list[Msg], approvals: list[Msg]
) -> int:
    """:func:`ledger_freezes` of one engine judging the same events in the same order as
    :func:`pipeline` sends them (the first transfer alone, then :func:`send_order`): what the
    pipeline must match."""
    from detectors import DetectionEngine
    from drainwatch.config import loads

    engine = DetectionEngine(loads(config_toml(specs)))
    alerts = engine.process(decode(TRANSFERS, msgs[0][1], Transfer))
    for ledger, chain in send_order("", msgs[1:], approvals):
        for _, _, value, _ in ledger:
            alerts += engine.process_approval(decode(LEDGER, value, ApprovedWithdrawal))
        for _, _, value, _ in chain:
            alerts += engine.process(decode(TRANSFERS, value, Transfer))
    return ledger_freezes(alerts)


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
    parser.add_argument(
        "--ledger",
        action="store_true",
        help="also publish the ledger's approvals, in time order with the transfers, and check "
        "that the pipeline's ledger freezes are one engine's (run with --skip-raw)",
    )
    args = parser.parse_args()

    specs = evm_hot_wallets(args.wallets, cold_offset=5000)
    msgs, approvals = traffic(specs, args.transfers)
    size = sum(len(v) for _, v, _ in msgs) / len(msgs)
    print(f"{len(msgs)} transfers of {len(specs)} wallets, {size:.0f} bytes each on average")
    expected = None
    if args.ledger:
        expected = in_process_ledger_freezes(specs, msgs, approvals)
        print(f"with {len(approvals)} approvals; one engine, same order: {expected} ledger freezes")
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
                r = pipeline(
                    kafka,
                    specs,
                    msgs,
                    n,
                    client=client,
                    approvals=approvals if args.ledger else None,
                )
                print(
                    f"pipeline ({r['client']}), {r['detectors']} detector process(es): "
                    f"producer {r['produce_per_s']:,.0f}"
                    f" transfers/s; producer -> detectors -> alerts {r['end_to_end_per_s']:,.0f}"
                    f" transfers/s ({r['alerts']} alerts"
                    + (f", {r['ledger_freezes']} ledger freezes)" if args.ledger else ")")
                )
                if expected is not None and r["ledger_freezes"] != expected:
                    print(f"  MISMATCH: one engine froze for {expected} payments")


if __name__ == "__main__":
    main()
