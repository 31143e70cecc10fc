"""Detector replicas share which approval each payment used up (``drainwatch.ledger-uses.v1``).

Each replica reads every approval but judges only its own wallets' payments; without sharing the
uses, one approval explained one payment on each replica. Here two engines stand for two
replicas, each owning one hot wallet, and the uses each publishes are handed to both, as the
topic does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from detectors.engine import DetectionEngine
from drainwatch.events import (
    ALERTS,
    LEDGER,
    LEDGER_USES,
    Alert,
    ApprovalUse,
    Transfer,
    decode,
    wallet_key,
)
from drainwatch.stage import Output
from tests.detectors.factories import approval, config, transfer, wallet

ONE, TWO = "HOT1", "HOT2"
DETECTED = datetime(2030, 1, 1, tzinfo=UTC)


def replica(owned: str) -> DetectionEngine:
    """An engine that owns ``owned``'s wallet, sharing its approvals' uses."""
    engine = DetectionEngine(
        config(wallet(ONE), wallet(TWO), wallet("COLD", role="cold", balance="100000")),
        clock=lambda: DETECTED,
        owns=lambda key: key == wallet_key("nem", owned),
    )
    engine.share_approval_uses()
    return engine


class Topic:
    """The ledger-uses topic: every use published is read by every replica (its own too)."""

    def __init__(self, *replicas: DetectionEngine) -> None:
        self.replicas = replicas
        self.pending: list[ApprovalUse] = []
        self.said: list[ApprovalUse] = []
        self.alerts: list[Alert] = []

    def take(self, outputs: Iterable[Output]) -> list[Alert]:
        """Queue the uses among ``outputs``; return the alerts."""
        alerts = []
        for out in outputs:
            if out.topic == LEDGER_USES:
                assert isinstance(out.event, ApprovalUse)
                self.pending.append(out.event)
            else:
                assert out.topic == ALERTS
                assert isinstance(out.event, Alert)
                alerts.append(out.event)
        self.alerts += alerts
        return alerts

    def deliver(self) -> list[Alert]:
        """Hand every queued use to every replica (through JSON), until none is left."""
        alerts: list[Alert] = []
        while self.pending:
            use = self.pending.pop(0)
            self.said.append(use)
            read = decode(LEDGER_USES, use.to_json())
            assert read == use
            for engine in self.replicas:
                alerts += self.take(engine.handle(LEDGER_USES, read))
        return alerts


def pay(engine: DetectionEngine, topic: Topic, t: Transfer) -> list[Alert]:
    return topic.take(engine.handle("drainwatch.transfers.v1", t))


def learn(topic: Topic, *approvals: object) -> None:
    for a in approvals:
        for engine in topic.replicas:
            topic.take(engine.handle(LEDGER, a))


def test_one_approval_paid_from_two_replicas_wallets_freezes_the_later_payment() -> None:
    # Each replica matches its own payment with the approval before it hears of the other's:
    # once the uses are shared, the later payment is one the approval does not explain, and its
    # replica (only) freezes its wallet, once, naming the approval and the first payment.
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    learn(topic, approval("CUSTOMER", "5", minutes=0))
    first = transfer("CUSTOMER", 5, minutes=1, wallet=ONE)
    second = transfer("CUSTOMER", 5, minutes=2, wallet=TWO)
    assert pay(r1, topic, first) == []
    assert pay(r2, topic, second) == []  # explained: r2 has not heard of r1's payment yet
    assert [u.transfer_id for u in topic.pending] == [first.id, second.id]
    [alert] = topic.deliver()
    assert (alert.detector, alert.severity.value, alert.freeze) == ("ledger", "critical", True)
    assert (alert.wallet, alert.transfer_ids, alert.tx_hashes) == (
        TWO,
        (second.id,),
        (second.tx_hash,),
    )
    assert alert.metrics["rule_approval_reused"] == "1"
    assert alert.summary.startswith("nem-hot2 sent 5 XEM to CUSTOMER, but approved withdrawal ")
    assert "already paid (nem-hot1 at " in alert.summary
    # Read again (a restart reads the topic's last hours again): the same alert id, if any.
    topic.pending = list(topic.said)
    again = topic.deliver()
    assert {a.id for a in again} <= {alert.id}


def test_a_replica_told_of_the_use_in_time_freezes_at_the_payment() -> None:
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    learn(topic, approval("CUSTOMER", "5", minutes=0))
    assert pay(r1, topic, transfer("CUSTOMER", 5, minutes=1, wallet=ONE)) == []
    assert topic.deliver() == []
    alerts = pay(r2, topic, transfer("CUSTOMER", 5, minutes=2, wallet=TWO))
    assert [(a.detector, a.wallet, a.freeze) for a in alerts] == [("ledger", TWO, True)]
    assert alerts[0].metrics["rule_unapproved_outflow"] == "1"


def test_an_approval_that_explains_a_flagged_payment_late_is_used_on_every_replica() -> None:
    # The ledger feed runs behind: r1 flags its payment, then the approval comes. r1 alone says
    # the payment is explained (an info alert), and tells r2 it used the approval, so that the
    # approval explains no payment of r2's wallet as well.
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    learn(topic, approval("SEED", "1", minutes=-10))
    paid = transfer("CUSTOMER", 5, minutes=1, wallet=ONE)
    assert [(a.detector, a.freeze) for a in pay(r1, topic, paid)] == [("ledger", True)]
    learn(topic, approval("CUSTOMER", "5", minutes=0))
    assert [(a.detector, a.wallet, a.freeze) for a in topic.alerts[1:]] == [
        ("ledger_explained", ONE, False)
    ]
    assert [u.transfer_id for u in topic.pending] == [paid.id]
    assert topic.deliver() == []
    alerts = pay(r2, topic, transfer("CUSTOMER", 5, minutes=2, wallet=TWO))
    assert [(a.detector, a.wallet, a.freeze) for a in alerts] == [("ledger", TWO, True)]


def test_a_customer_approved_twice_and_paid_from_both_wallets_is_explained() -> None:
    # Both replicas first match their payment with the same (earlier) approval; the later one
    # moves to the customer's other approval, says so, and nothing is frozen. Both replicas
    # then agree that both approvals are used: a third payment freezes.
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    learn(
        topic,
        approval("CUSTOMER", "5", minutes=0),
        approval("CUSTOMER", "5", minutes=0.5),
    )
    assert pay(r1, topic, transfer("CUSTOMER", 5, minutes=1, wallet=ONE)) == []
    second = transfer("CUSTOMER", 5, minutes=2, wallet=TWO)
    assert pay(r2, topic, second) == []
    assert topic.deliver() == []
    moved = [u for u in topic.said if u.transfer_id == second.id]
    assert len(moved) == 2
    assert moved[0].approval_id != moved[1].approval_id  # matched first, then moved
    third = transfer("CUSTOMER", 5, minutes=3, wallet=ONE)
    assert [(a.detector, a.wallet, a.freeze) for a in pay(r1, topic, third)] == [
        ("ledger", ONE, True)
    ]


def test_a_withdrawal_paid_in_parts_from_two_wallets_is_explained() -> None:
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    learn(topic, approval("CUSTOMER", "10", minutes=0))
    assert pay(r1, topic, transfer("CUSTOMER", 6, minutes=1, wallet=ONE)) == []
    assert pay(r2, topic, transfer("CUSTOMER", 4, minutes=1, wallet=TWO)) == []
    assert topic.deliver() == []
    # Nothing is left of it, on either replica.
    for engine, hot in ((r1, ONE), (r2, TWO)):
        alerts = pay(engine, topic, transfer("CUSTOMER", 1, minutes=5, wallet=hot))
        assert [(a.detector, a.freeze) for a in alerts] == [("ledger", True)]


def test_a_use_read_before_its_approval_counts_once_the_approval_comes() -> None:
    # The followers of the two topics deliver at their own pace: a use may come first.
    r1, r2 = replica(ONE), replica(TWO)
    topic = Topic(r1, r2)
    approved = approval("CUSTOMER", "5", minutes=0)
    topic.take(r1.handle(LEDGER, approved))
    assert pay(r1, topic, transfer("CUSTOMER", 5, minutes=1, wallet=ONE)) == []
    [use] = topic.pending
    topic.pending.clear()
    assert topic.take(r2.handle(LEDGER_USES, use)) == []
    topic.take(r2.handle(LEDGER, approved))
    alerts = pay(r2, topic, transfer("CUSTOMER", 5, minutes=2, wallet=TWO))
    assert [(a.detector, a.freeze) for a in alerts] == [("ledger", True)]


def test_a_paid_but_uncommitted_payment_judged_again_after_a_restart_is_still_explained() -> None:
    # A replica used the approval, published the use, and crashed before committing the
    # payment's offset. Restarted, it reads the approval and its own use again, then is handed
    # the payment again: explained (not a false freeze). A second payment is not.
    r1 = replica(ONE)
    topic = Topic(r1)
    approved = approval("CUSTOMER", "5", minutes=0)
    learn(topic, approved)
    paid = transfer("CUSTOMER", 5, minutes=1, wallet=ONE)
    assert pay(r1, topic, paid) == []
    [use] = topic.pending
    restarted = replica(ONE)
    topic = Topic(restarted)
    learn(topic, approved)
    assert topic.take(restarted.handle(LEDGER_USES, use)) == []
    assert pay(restarted, topic, paid) == []
    assert topic.pending == []  # nothing used again
    again = transfer("CUSTOMER", 5, minutes=2, wallet=ONE, tx="another")
    assert [(a.detector, a.freeze) for a in pay(restarted, topic, again)] == [("ledger", True)]


def test_without_sharing_an_engine_publishes_no_use() -> None:
    # A backtest, or a caller that did not ask: one process, nothing to tell.
    engine = DetectionEngine(config(wallet(ONE)), clock=lambda: DETECTED)
    engine.handle(LEDGER, approval("CUSTOMER", "5", minutes=0))
    assert engine.handle("drainwatch.transfers.v1", transfer("CUSTOMER", 5, wallet=ONE)) == []
