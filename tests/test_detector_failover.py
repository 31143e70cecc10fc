"""Detectors scale out on Kafka and survive a crash in the middle of a drain.

Two `drainwatch run detect --bus kafka` processes share one consumer group. A drain spread over
many wallets starts; one detector is killed with SIGKILL between the drain's two halves. Neither
half alone is enough to freeze a wallet: only a detector that rebuilt the wallets' recent history
from the transfers topic sees the whole drain. Every wallet must still be frozen, by exactly one
distinct alert per detector.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from detectors import DetectionEngine
from drainwatch.bus import BusError, TopicPartition
from drainwatch.bus.kafka import KafkaBus
from drainwatch.config import load
from drainwatch.events import (
    ALERTS,
    LEDGER,
    LEDGER_USES,
    TRANSFERS,
    Alert,
    ApprovalUse,
    ApprovedWithdrawal,
    Direction,
    Transfer,
    decode,
)
from drainwatch.stage import default_topics, topic_name
from tests.harness.services import KafkaService
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.services

WALLETS = 8
PARTITIONS = 4
BALANCE = 1_000
ETH = 10**18
STEP_ETH = 30  # 3% of the balance to one new address: a warning, not a freeze


def wallet(i: int) -> str:
    return "0x" + f"{0xA0000 + i:040x}"


def attacker(i: int) -> str:
    return "0x" + f"{0xBAD0000 + i:040x}"


def write_config(path: Path, kafka: KafkaService, prefix: str) -> None:
    wallets = "".join(
        f"""
[[wallets]]
chain = "eth"
address = "{wallet(i)}"
label = "eth-hot-{i}"
opening_balance = "{BALANCE}"
"""
        for i in range(WALLETS)
    )
    path.write_text(
        f"""
state_dir = "{path.parent / "state"}"
{wallets}
[bus]
kind = "kafka"
bootstrap_servers = ["{kafka.bootstrap_servers}"]
topic_prefix = "{prefix}"
partitions = {PARTITIONS}
group_prefix = "{prefix}dw"
"""
    )


def transfer(i: int, n: int, to: str, eth: int, at: datetime) -> Transfer:
    return Transfer.create(
        chain="eth",
        wallet=wallet(i),
        direction=Direction.OUT,
        counterparty=to,
        asset="ETH",
        amount=eth * ETH,
        decimals=18,
        tx_hash=f"0x{i:04x}{n:060x}",
        position=0,
        time=at,
        block_number=1000 + n,
    )


def broker(kafka: KafkaService, prefix: str, tmp_path: Path) -> tuple[Path, KafkaBus]:
    """The config file of the test's wallets on ``kafka``, and a bus with the topics made."""
    path = tmp_path / "drainwatch.toml"
    write_config(path, kafka, prefix)
    bus = KafkaBus(kafka.bootstrap_servers)
    bus.ensure_topics(default_topics(prefix, PARTITIONS))
    return path, bus


def send(bus: KafkaBus, topic: str, events: Sequence[Transfer | ApprovedWithdrawal]) -> None:
    """Publish ``events`` keyed as the pipeline keys them, stamped with their own time."""
    producer = bus.producer()
    for e in events:
        producer.send(topic, e.key, e.to_json(), int(e.time.timestamp() * 1000))
    producer.flush()
    producer.close()


def publish(bus: KafkaBus, prefix: str, transfers: list[Transfer]) -> None:
    send(bus, topic_name(prefix, TRANSFERS), transfers)


def log_tails(procs: Mapping[str, object], logdir: Path) -> Callable[[], str]:
    """The end of each detector's log, for a failure's message."""
    return lambda: "\n".join(
        f"--- {n}\n" + (logdir / f"{n}.log").read_text()[-4000:] for n in procs
    )


def alerts_on_topic(bus: KafkaBus, prefix: str) -> list[Alert]:
    out: list[Alert] = []
    for p in range(PARTITIONS):
        tp = TopicPartition(topic_name(prefix, ALERTS), p)
        out += [decode(ALERTS, m.value, Alert) for m in bus.read_range(tp, 0, bus.end_offset(tp))]
    return out


def transfer_partitions(log: Path, prefix: str) -> set[int]:
    """The transfers partitions a detector process was last assigned, from kafka-python's log."""
    lines = [
        line for line in log.read_text().splitlines() if "Setting newly assigned partitions" in line
    ]
    if not lines:
        return set()
    topic = re.escape(topic_name(prefix, TRANSFERS))
    return {int(p) for p in re.findall(rf"topic='{topic}', partition=(\d+)", lines[-1])}


def wait_until_shared(procs: Mapping[str, object], logdir: Path, prefix: str) -> None:
    """Until every detector holds transfers partitions, and together all of them."""

    def shared() -> bool:
        held = [transfer_partitions(logdir / f"{n}.log", prefix) for n in procs]
        return all(held) and sum(len(h) for h in held) == PARTITIONS

    wait_for(
        shared,
        90,
        "the detectors to share the transfers partitions",
        every_s=0.5,
        context=log_tails(procs, logdir),
    )


def every_wallet_frozen(bus: KafkaBus, prefix: str) -> bool:
    frozen = {a.wallet for a in alerts_on_topic(bus, prefix) if a.freeze}
    return frozen == {wallet(i) for i in range(WALLETS)}


def stop(procs: Mapping[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)


def start_detector(
    name: str, config: Path, logdir: Path, instance: str | None = None
) -> subprocess.Popen[bytes]:
    """A ``drainwatch run detect`` process logging to ``<name>.log``; ``instance`` is its
    static membership id (``--instance-id``, as the Kubernetes StatefulSet passes it)."""
    log = (logdir / f"{name}.log").open("wb")
    static = ["--instance-id", instance] if instance is not None else []
    command = [sys.executable, "-m", "drainwatch", "-v", "run", "detect", "--config", str(config)]
    return subprocess.Popen(
        [*command, *static],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_killed_detector_loses_no_drain_and_repeats_no_alert(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    config = load(path)

    start = datetime.now(UTC) - timedelta(hours=20)
    publish(bus, prefix, ordinary(start, 12))

    procs = {n: start_detector(n, path, tmp_path) for n in ("d1", "d2")}

    logs = log_tails(procs, tmp_path)

    try:
        wait_until_shared(procs, tmp_path, prefix)
        # each wallet is drained at its own time, hours apart, so no cross-wallet correlation
        # can stand in for the per-wallet history the restarted detector must rebuild
        drain_at = [start + timedelta(hours=3 + 2 * i) for i in range(WALLETS)]
        first_half = [transfer(i, 100, attacker(i), STEP_ETH, drain_at[i]) for i in range(WALLETS)]
        publish(bus, prefix, first_half)
        wait_for(
            lambda: (
                {a.wallet for a in alerts_on_topic(bus, prefix)}
                >= {wallet(i) for i in range(WALLETS)}
            ),
            90,
            "a warning for every wallet after the first half",
            every_s=0.5,
            context=logs,
        )
        assert not [a for a in alerts_on_topic(bus, prefix) if a.freeze], (
            "the first half alone must not freeze: the test would prove nothing"
        )

        assert transfer_partitions(tmp_path / "d1.log", prefix), "d1 must hold wallets to lose"
        # The warnings alone do not say d1 has judged anything: they may be d2's, from before
        # the partitions were shared. d1 dies once it has saved the state of a partition.
        wait_for(
            lambda: "saved the snapshot of" in (tmp_path / "d1.log").read_text(),
            60,
            "d1 to save the snapshot of a partition it holds",
            every_s=0.2,
            context=logs,
        )
        procs["d1"].send_signal(signal.SIGKILL)
        procs["d1"].wait(10)

        second_half = [
            transfer(i, 101, attacker(i), STEP_ETH, drain_at[i] + timedelta(minutes=2))
            for i in range(WALLETS)
        ]
        publish(bus, prefix, second_half)

        wait_for(
            lambda: every_wallet_frozen(bus, prefix),
            120,
            "a freeze for every wallet",
            every_s=0.5,
            context=logs,
        )
        assert procs["d2"].poll() is None, logs()
    finally:
        stop(procs)

    freezes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for alert in alerts_on_topic(bus, prefix):
        if alert.freeze:
            freezes[(alert.wallet, alert.detector)].add(alert.id)
    # a repeat after the crash carries the same id, which the alerts stage drops: one distinct
    # freezing alert per wallet and per-wallet detector
    repeated = {
        (w, d): [
            (a.id, a.time.isoformat(), a.tx_hashes, a.summary)
            for a in alerts_on_topic(bus, prefix)
            if a.wallet == w and a.detector == d and a.freeze
        ]
        for (w, d), ids in freezes.items()
        if len(ids) != 1
    }
    assert not repeated, repeated
    assert {w for w, d in freezes if d == "velocity"} == {wallet(i) for i in range(WALLETS)}
    for alert in alerts_on_topic(bus, prefix):
        if alert.freeze and alert.detector == "velocity":
            # the whole drain (6%) was seen, not just the second half (3%)
            assert Decimal(alert.metrics.get("share", "0")) >= Decimal("0.05"), alert
    survivor = (tmp_path / "d2.log").read_text()
    assert "rebuilt" in survivor, logs()
    # d2 took d1's wallets over from d1's snapshots (they share the state directory, as the
    # compose file's replicas share a volume), replaying only what came after them.
    assert "restored" in survivor, logs()
    assert config.bus.partitions == PARTITIONS
    bus.close()


@pytest.mark.parametrize("mid_batch", [False, True], ids=["between", "mid-batch"])
def test_a_broker_crash_in_the_middle_of_a_drain_loses_no_transfer_and_repeats_no_alert(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path, mid_batch: bool
) -> None:
    # The broker is SIGKILLed between a drain's two halves, with a detector running; it is
    # back a few seconds later. The detector rides it out (its clients reconnect), judges the
    # second half with the first still in its windows, and freezes every wallet once.
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    start = datetime.now(UTC) - timedelta(hours=20)
    publish(bus, prefix, ordinary(start, 6))
    procs = {"d1": start_detector("d1", path, tmp_path)}
    logs = log_tails(procs, tmp_path)
    # Each wallet drained at its own time, hours apart: no incident stands in for the history.
    drain_at = [start + timedelta(hours=3 + 2 * i) for i in range(WALLETS)]
    try:
        wait_for(lambda: all_judged(bus, prefix), 90, "the ordinary payments judged", context=logs)
        first_half = [transfer(i, 100, attacker(i), STEP_ETH, drain_at[i]) for i in range(WALLETS)]
        publish(bus, prefix, first_half)
        if mid_batch:  # while the detector judges the first half (its alerts, its commits)
            time.sleep(0.3)
        else:
            wait_for(lambda: all_judged(bus, prefix), 60, "the first half judged", context=logs)
            assert not [a for a in alerts_on_topic(bus, prefix) if a.freeze], (
                "the first half alone must not freeze: the test would prove nothing"
            )
        bus.close()
        kafka.kill()
        time.sleep(5.0)
        kafka.start()
        bus = KafkaBus(kafka.bootstrap_servers)
        second_half = [
            transfer(i, 101, attacker(i), STEP_ETH, drain_at[i] + timedelta(minutes=2))
            for i in range(WALLETS)
        ]
        publish(bus, prefix, second_half)
        wait_for(
            lambda: every_wallet_frozen(bus, prefix),
            180,
            "a freeze for every wallet after the broker came back",
            every_s=0.5,
            context=logs,
        )
        time.sleep(2.0)  # anything more said
        assert procs["d1"].poll() is None, logs()
    finally:
        stop(procs)
        if not kafka.running:
            kafka.start()
    said = alerts_on_topic(bus, prefix)
    bus.close()
    freezes: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for alert in said:
        if alert.freeze:
            freezes[alert.wallet].add((alert.detector, alert.id))
    # One freezing alert per wallet: a repeat (a publish retried across the crash) would carry
    # the same id, and the alerts stage drops it.
    assert {w: len(ids) for w, ids in freezes.items()} == {wallet(i): 1 for i in range(WALLETS)}, [
        (a.wallet[-4:], a.detector, a.id[:8], a.summary) for a in said
    ]
    for alert in said:
        if alert.freeze:  # the whole drain (6%) was judged, not just the second half (3%)
            assert Decimal(alert.metrics.get("share", "0")) >= Decimal("0.05"), alert


def customer(i: int, n: int) -> str:
    return "0x" + f"{0xC0570000 + i * 100 + n:040x}"


def ordinary(start: datetime, count: int) -> list[Transfer]:
    """``count`` payments of 2 ETH from every wallet to its customers, 9 minutes apart."""
    return [
        transfer(i, n, customer(i, n), 2, start + timedelta(minutes=9 * n))
        for i in range(WALLETS)
        for n in range(count)
    ]


def approvals_for(payments: list[Transfer]) -> list[ApprovedWithdrawal]:
    return [
        ApprovedWithdrawal(
            id=f"approval-{t.tx_hash}",
            time=t.time - timedelta(minutes=1),
            chain=t.chain,
            asset=t.asset,
            to=t.counterparty,
            amount=Decimal(t.amount).scaleb(-t.decimals),
        )
        for t in payments
    ]


def publish_approvals(bus: KafkaBus, prefix: str, approvals: list[ApprovedWithdrawal]) -> None:
    send(bus, topic_name(prefix, LEDGER), approvals)


def all_judged(bus: KafkaBus, prefix: str) -> bool:
    """Whether the detectors' group has committed every transfer published so far."""
    tps = [TopicPartition(topic_name(prefix, TRANSFERS), p) for p in range(PARTITIONS)]
    group = f"{prefix}dw-detect"
    try:
        return all(
            bus.committed(group, tp) == bus.end_offset(tp) for tp in tps if bus.end_offset(tp)
        )
    except BusError:  # the group has no coordinator yet
        return False


def test_every_detector_of_a_group_learns_every_approval(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # An approval is keyed by the customer's address, a transfer by the paying wallet: in one
    # consumer group a detector would learn only the approvals of its ledger partitions, and
    # freeze the payments of its wallets whose approvals another detector holds. Each follows
    # the whole ledger instead; on start it reads the last two match windows of it again.
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    start = datetime.now(UTC) - timedelta(hours=2)
    early = ordinary(start, 6)
    publish_approvals(bus, prefix, approvals_for(early))  # before the detectors start

    procs = {n: start_detector(n, path, tmp_path) for n in ("d1", "d2")}

    logs = log_tails(procs, tmp_path)

    def judged() -> bool:
        return all_judged(bus, prefix)

    try:
        wait_for(
            lambda: all(transfer_partitions(tmp_path / f"{n}.log", prefix) for n in procs),
            90,
            "both detectors to hold transfers partitions",
            every_s=0.5,
            context=logs,
        )
        publish(bus, prefix, early)
        wait_for(judged, 90, "the early payments judged", every_s=0.5, context=logs)
        # Approvals that come while the detectors run, each a minute before its payment.
        later = [
            transfer(i, n, customer(i, n), 2, start + timedelta(minutes=9 * n))
            for i in range(WALLETS)
            for n in range(6, 9)
        ]
        publish_approvals(bus, prefix, approvals_for(later))
        time.sleep(1.0)
        publish(bus, prefix, later)
        wait_for(judged, 90, "the later payments judged", every_s=0.5, context=logs)
        assert not [a for a in alerts_on_topic(bus, prefix) if a.detector == "ledger"], logs()
        # The ledger is live on both: a payment nobody approved freezes its wallet at once.
        thefts = [
            transfer(i, 50, attacker(i), 1, start + timedelta(minutes=100)) for i in range(WALLETS)
        ]
        publish(bus, prefix, thefts)
        wait_for(judged, 90, "the thefts judged", every_s=0.5, context=logs)
        ledger = {a.wallet for a in alerts_on_topic(bus, prefix) if a.detector == "ledger"}
        assert ledger == {wallet(i) for i in range(WALLETS)}
        # A ledger feed running behind: payments judged before their approvals come are
        # flagged; when the approvals come, the detector that judged each payment says, once,
        # that it is explained after all (the freeze stands).
        behind = [
            transfer(i, 60, customer(i, 60), 2, start + timedelta(minutes=110))
            for i in range(WALLETS)
        ]
        publish(bus, prefix, behind)
        wait_for(judged, 90, "the payments ahead of their approvals judged", context=logs)
        publish_approvals(bus, prefix, approvals_for(behind))

        def explained() -> list[Alert]:
            return [a for a in alerts_on_topic(bus, prefix) if a.detector == "ledger_explained"]

        wait_for(lambda: len(explained()) >= WALLETS, 60, "the late approvals' info", context=logs)
        time.sleep(2.0)  # anything more said
        said = explained()
        assert sorted(a.transfer_ids[0] for a in said) == sorted(t.id for t in behind), logs()
        assert {(a.severity.value, a.freeze) for a in said} == {("info", False)}
        assert all(p.poll() is None for p in procs.values()), logs()
    finally:
        stop(procs)


@pytest.mark.parametrize("hours_ago", [2, 10])
def test_a_detector_far_behind_reads_the_approvals_before_judging_their_payments(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path, hours_ago: int
) -> None:
    # A detector that comes back from an outage far behind: thousands of payments wait in the
    # transfers topic, and their approvals in the ledger. It takes 2,000 transfers a poll;
    # until the nineteenth session its ledger follower took 500 approvals a poll, so it judged
    # most payments before their approvals and froze them (830 of 3,000 here). Now each poll of
    # the followers reads everything published before it. And a detector reads the ledger
    # from a match window before the oldest transfer it has not judged: after a ten-hour
    # outage the approvals are older than the six hours it read before, so it read none and
    # its ledger detector stayed asleep, even for the payment nobody approved (with new
    # approvals coming in, it would have frozen the backlog's approved payments instead).
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    start = datetime.now(UTC) - timedelta(hours=hours_ago)
    payments = [
        transfer(
            k % WALLETS, k + 1, f"0x{0xD0000000 + k:040x}", 1, start + timedelta(seconds=2 * k + 1)
        )
        for k in range(3000)
    ]
    procs = {"d1": start_detector("d1", path, tmp_path)}
    logs = log_tails(procs, tmp_path)
    try:
        # The group commits where it is, and the detector stops (an outage) ...
        publish(bus, prefix, [transfer(i, 0, customer(i, 0), 1, start) for i in range(WALLETS)])
        wait_for(lambda: all_judged(bus, prefix), 120, "the group committed", context=logs)
        stop(procs)
        # ... while the payments of two hours and their approvals come; then it is back.
        publish_approvals(bus, prefix, approvals_for(payments))
        publish(bus, prefix, payments)
        procs["d1b"] = start_detector("d1b", path, tmp_path)
        logs = log_tails(procs, tmp_path)
        wait_for(lambda: all_judged(bus, prefix), 120, "the payments judged", context=logs)
        ledger = [a for a in alerts_on_topic(bus, prefix) if a.detector == "ledger"]
        assert ledger == [], f"{len(ledger)} approved payments frozen\n" + logs()
        # And the ledger is live: a payment nobody approved freezes its wallet.
        publish(bus, prefix, [transfer(0, 9999, attacker(0), 1, datetime.now(UTC))])
        wait_for(
            lambda: any(a.detector == "ledger" for a in alerts_on_topic(bus, prefix)),
            60,
            "the unapproved payment frozen",
            context=logs,
        )
    finally:
        stop(procs)
    bus.close()


def test_an_approval_explains_one_payment_across_the_detectors(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # Every detector reads every approval, but judges only its own wallets' payments. A
    # customer paid twice for one approval, from a wallet of each detector, would be explained
    # on both; they share which approval each payment used up (drainwatch.ledger-uses.v1), so
    # the later payment freezes its wallet, once. A customer approved twice and paid from both
    # is explained, and so is a withdrawal paid in two parts from both.
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    transfers = topic_name(prefix, TRANSFERS)
    procs = {n: start_detector(n, path, tmp_path) for n in ("d1", "d2")}
    logs = log_tails(procs, tmp_path)

    def judged() -> bool:
        return all_judged(bus, prefix)

    try:
        wait_until_shared(procs, tmp_path, prefix)
        held = transfer_partitions(tmp_path / "d1.log", prefix)
        ones = [
            i for i in range(WALLETS) if bus.partition_of(transfers, f"eth:{wallet(i)}") in held
        ]
        twos = [i for i in range(WALLETS) if i not in ones]
        assert ones, held
        assert twos, held
        one, two = ones[0], twos[0]
        now = datetime.now(UTC) - timedelta(minutes=30)
        twice, double, parts = customer(90, 1), customer(90, 2), customer(90, 3)

        def approve(aid: str, to: str, eth: int, minutes: float) -> ApprovedWithdrawal:
            return ApprovedWithdrawal(
                id=aid,
                time=now + timedelta(minutes=minutes),
                chain="eth",
                asset="ETH",
                to=to,
                amount=Decimal(eth),
            )

        publish_approvals(
            bus,
            prefix,
            [
                approve("once", double, 2, 0),
                approve("first", twice, 2, 0),
                approve("second", twice, 2, 0.5),
                approve("parts", parts, 4, 0),
            ],
        )
        time.sleep(1.0)
        # All at once: each detector judges its payment before it hears of the other's.
        paid_again = transfer(two, 1, double, 2, now + timedelta(minutes=2))
        publish(
            bus,
            prefix,
            [
                transfer(one, 1, double, 2, now + timedelta(minutes=1)),
                paid_again,
                transfer(one, 2, twice, 2, now + timedelta(minutes=1)),
                transfer(two, 2, twice, 2, now + timedelta(minutes=2)),
                transfer(one, 3, parts, 1, now + timedelta(minutes=1)),
                transfer(two, 3, parts, 3, now + timedelta(minutes=2)),
            ],
        )
        wait_for(judged, 90, "the payments judged", every_s=0.5, context=logs)

        def ledger_alerts() -> list[Alert]:
            return [a for a in alerts_on_topic(bus, prefix) if a.detector == "ledger"]

        wait_for(lambda: bool(ledger_alerts()), 60, "a ledger alert", every_s=0.5, context=logs)
        time.sleep(3.0)  # every use read by both, anything more said
        [alert] = ledger_alerts()
        assert (alert.wallet, alert.freeze, alert.transfer_ids) == (
            wallet(two),
            True,
            (paid_again.id,),
        ), logs()
        uses_topic = topic_name(prefix, LEDGER_USES)
        uses = [
            decode(LEDGER_USES, m.value, ApprovalUse)
            for p in range(PARTITIONS)
            for m in bus.read_range(
                TopicPartition(uses_topic, p), 0, bus.end_offset(TopicPartition(uses_topic, p))
            )
        ]
        # The payments to the customer approved twice ended on different approvals.
        latest = {u.transfer_id: u.approval_id for u in uses if u.to == twice}
        assert sorted(latest.values()) == ["first", "second"], uses
        assert all(p.poll() is None for p in procs.values()), logs()
    finally:
        stop(procs)
    bus.close()


@contextmanager
def two_detectors(
    kafka: KafkaService, prefix: str, tmp_path: Path
) -> Iterator[tuple[KafkaBus, dict[str, subprocess.Popen[bytes]], list[tuple[str, list[int]]]]]:
    """Two detector processes sharing the transfers partitions; with the bus, the processes
    and, for each, the wallets (by number) it holds, the one holding more first."""
    _, bus = broker(kafka, prefix, tmp_path)
    procs = {n: start_detector(n, tmp_path / "drainwatch.toml", tmp_path) for n in ("d1", "d2")}
    transfers = topic_name(prefix, TRANSFERS)
    try:
        wait_until_shared(procs, tmp_path, prefix)
        held = {n: transfer_partitions(tmp_path / f"{n}.log", prefix) for n in procs}
        holds = {
            n: [i for i in range(WALLETS) if bus.partition_of(transfers, f"eth:{wallet(i)}") in p]
            for n, p in held.items()
        }
        yield bus, procs, sorted(holds.items(), key=lambda item: -len(item[1]))
    finally:
        stop(procs)
        bus.close()


def drain_within_minutes(bus: KafkaBus, prefix: str, drained: Sequence[int]) -> None:
    """40% of each wallet to its attacker, a minute apart: each alone freezes its wallet."""
    at = datetime.now(UTC) - timedelta(minutes=10)
    publish(
        bus,
        prefix,
        [
            transfer(i, 7, attacker(i), 400, at + timedelta(minutes=k))
            for k, i in enumerate(drained)
        ],
    )


def wait_until_every_wallet_frozen(
    bus: KafkaBus, prefix: str, procs: Mapping[str, object], logdir: Path
) -> None:
    wait_for(
        lambda: every_wallet_frozen(bus, prefix),
        120,
        "a freeze for every wallet",
        every_s=0.5,
        context=log_tails(procs, logdir),
    )
    time.sleep(3.0)  # time for a second freeze of any wallet, were one coming


def test_detectors_of_a_group_correlate_one_incident_across_the_wallets_each_holds(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # Three wallets emptied within minutes freeze the whole hot fleet (the Phemex and KuCoin
    # pattern). Two of them are on one detector and one on the other: neither detector alone
    # sees three. Each follows the alerts topic, so both see the incident, and each freezes the
    # fleet wallets it holds: every wallet once, under one incident id.
    prefix = kafka_topic_prefix
    with two_detectors(kafka, prefix, tmp_path) as (bus, procs, holds):
        (_, one), (_, other) = holds
        assert len(one) >= 2, holds
        assert other, holds
        drained = [one[0], other[0], one[1]]
        drain_within_minutes(bus, prefix, drained)
        wait_until_every_wallet_frozen(bus, prefix, procs, tmp_path)
        assert all(p.poll() is None for p in procs.values())
        alerts = alerts_on_topic(bus, prefix)
    freezes = sorted(a.wallet for a in alerts if a.freeze)
    assert freezes == sorted(wallet(i) for i in range(WALLETS))
    fleet = [a for a in alerts if a.detector == "correlation"]
    assert {a.wallet for a in fleet} == {wallet(i) for i in range(WALLETS)} - {
        wallet(i) for i in drained
    }
    # One incident: only a drained wallet judged before the incident formed has alerts outside
    # it (which one depends on the order the partitions were read in).
    assert {a.wallet for a in alerts if a.incident_id is None} <= {wallet(i) for i in drained}
    assert len({a.incident_id for a in alerts if a.incident_id is not None}) == 1
    assert None not in {a.incident_id for a in fleet}


def test_a_detector_taking_over_a_dead_ones_wallets_freezes_them_with_the_fleet(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # One detector dies; three wallets of the other are drained before the group hands the dead
    # one's wallets over. The fleet freeze is decided while nobody holds those: the survivor
    # freezes them once it has taken them over.
    prefix = kafka_topic_prefix
    with two_detectors(kafka, prefix, tmp_path) as (bus, procs, holds):
        (survivor, theirs), (dead, orphaned) = holds
        assert len(theirs) >= 3, holds
        assert orphaned, holds
        procs[dead].send_signal(signal.SIGKILL)
        procs[dead].wait(10)
        drain_within_minutes(bus, prefix, theirs[:3])
        wait_until_every_wallet_frozen(bus, prefix, procs, tmp_path)
        assert procs[survivor].poll() is None
        alerts = alerts_on_topic(bus, prefix)
    assert sorted(a.wallet for a in alerts if a.freeze) == sorted(wallet(i) for i in range(WALLETS))
    orphans = {wallet(i) for i in orphaned}
    taken_over = [a for a in alerts if a.freeze and a.wallet in orphans]
    # Frozen on taking them over (no transfer of theirs or of the incident's set it off then),
    # not by the fleet freeze itself: the group had not handed them over yet.
    assert [(a.detector, a.transfer_ids) for a in taken_over] == [("correlation", ())] * len(
        orphans
    )


def test_a_restarted_detector_takes_its_wallets_back_from_their_snapshot(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # A market maker is paid 5% of wallet 0 to its usual address every two days. The detector
    # replays one day of transfers for a partition it takes over without a snapshot
    # (``rebuild_s``), and the market maker was last paid three days ago: only a detector that
    # took the wallet back from its snapshot still knows the address when the next payment comes.
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    path.write_text(path.read_text() + "\n[detection]\nrebuild_s = 86400\n")
    config = load(path)
    group = f"{prefix}dw-detect"
    now = datetime.now(UTC)
    maker = "0x" + f"{0x3A4E000:040x}"
    history = [
        transfer(0, d * 100 + n, customer(0, d * 100 + n), 1, now - timedelta(days=6 - d, hours=n))
        for d in range(6)
        for n in range(20)
    ]
    history += [transfer(0, 9000 + k, maker, 50, now - timedelta(days=7 - 2 * k)) for k in range(3)]
    history.sort(key=lambda t: t.time)
    payment = transfer(0, 9999, maker, 50, now)

    # What is at stake, judged in this process: a day's replay freezes the payment.
    never_stopped = DetectionEngine(config)
    for t in history:
        never_stopped.process(t)
    assert never_stopped.process(payment) == []
    replayed = DetectionEngine(config)
    replayed.replay(t for t in history if t.time >= history[-1].time - timedelta(days=1))
    assert [a.freeze for a in replayed.process(payment)] == [True]

    transfers = topic_name(prefix, TRANSFERS)
    tps = [TopicPartition(transfers, p) for p in range(PARTITIONS)]

    def judged() -> bool:
        try:
            return all((bus.committed(group, tp) or 0) == bus.end_offset(tp) for tp in tps)
        except BusError:  # the group has no coordinator yet
            return False

    snapshots = tmp_path / "state" / "snapshots"
    held = bus.partition_of(transfers, f"eth:{wallet(0)}")
    publish(bus, prefix, history)
    procs = {"d1": start_detector("d1", path, tmp_path)}
    logs = log_tails(procs, tmp_path)
    try:
        wait_for(
            lambda: judged() and (snapshots / f"{transfers}-{held}.snapshot").exists(),
            90,
            "the history judged and a snapshot saved",
            every_s=0.5,
            context=logs,
        )
        procs["d1"].send_signal(signal.SIGKILL)
        procs["d1"].wait(10)
        publish(bus, prefix, [payment])
        procs["d2"] = start_detector("d2", path, tmp_path)
        logs = log_tails(procs, tmp_path)
        wait_for(
            judged, 90, "the payment judged by the restarted detector", every_s=0.5, context=logs
        )
    finally:
        stop(procs)
    log = (tmp_path / "d2.log").read_text()
    assert "restored" in log, logs()
    frozen = [
        a for a in alerts_on_topic(bus, prefix) if a.freeze and payment.tx_hash in a.tx_hashes
    ]
    assert frozen == [], logs()
    bus.close()


def assignments(log: Path) -> int:
    """How many times a detector process was assigned partitions (each rebalance it saw)."""
    return log.read_text().count("Setting newly assigned partitions")


def test_a_detector_restarted_under_its_instance_id_keeps_its_wallets_without_a_rebalance(
    kafka: KafkaService, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    # Static membership: d1 is killed and comes back under the same instance id within the
    # session timeout. The group does not rebalance (d2 is not reassigned anything), d1 gets
    # its partitions back, takes their state back from the snapshots and freezes a drain of
    # its wallets that began before it was killed.
    prefix = kafka_topic_prefix
    path, bus = broker(kafka, prefix, tmp_path)
    start = datetime.now(UTC) - timedelta(hours=3)
    publish(bus, prefix, ordinary(start, 12))
    transfers = topic_name(prefix, TRANSFERS)
    procs = {"d2": start_detector("d2", path, tmp_path, instance="d2")}
    logs = log_tails(procs, tmp_path)
    try:
        # d2 first, so that it leads the group: a returning leader may rebalance it.
        wait_for(
            lambda: len(transfer_partitions(tmp_path / "d2.log", prefix)) == PARTITIONS,
            90,
            "d2 to hold every partition",
            every_s=0.5,
            context=logs,
        )
        procs["d1"] = start_detector("d1", path, tmp_path, instance="d1")
        logs = log_tails(procs, tmp_path)
        wait_until_shared(procs, tmp_path, prefix)
        held = transfer_partitions(tmp_path / "d1.log", prefix)
        mine = [
            i for i in range(WALLETS) if bus.partition_of(transfers, f"eth:{wallet(i)}") in held
        ]
        assert mine, held
        # The first half of a drain of d1's wallets (a warning each), then d1 is killed.
        drain_at = datetime.now(UTC) - timedelta(minutes=30)
        publish(bus, prefix, [transfer(i, 100, attacker(i), STEP_ETH, drain_at) for i in mine])
        wait_for(
            lambda: {a.wallet for a in alerts_on_topic(bus, prefix)} >= {wallet(i) for i in mine},
            90,
            "a warning for each of d1's wallets",
            every_s=0.5,
            context=logs,
        )
        before = assignments(tmp_path / "d2.log")
        procs["d1"].send_signal(signal.SIGKILL)
        procs["d1"].wait(10)
        procs["d1b"] = start_detector("d1b", path, tmp_path, instance="d1")
        logs = log_tails(procs, tmp_path)
        wait_for(
            lambda: transfer_partitions(tmp_path / "d1b.log", prefix) == held,
            60,
            "d1 back with its partitions",
            every_s=0.5,
            context=logs,
        )
        second_half = [
            transfer(i, 101, attacker(i), STEP_ETH, drain_at + timedelta(minutes=2)) for i in mine
        ]
        publish(bus, prefix, second_half)
        wait_for(
            lambda: (
                {a.wallet for a in alerts_on_topic(bus, prefix) if a.freeze}
                >= {wallet(i) for i in mine}
            ),
            90,
            "a freeze for each of d1's wallets",
            every_s=0.5,
            context=logs,
        )
        assert assignments(tmp_path / "d2.log") == before, "the group rebalanced: " + logs()
        assert procs["d2"].poll() is None, logs()
    finally:
        stop(procs)
    assert "restored" in (tmp_path / "d1b.log").read_text(), logs()
    bus.close()
