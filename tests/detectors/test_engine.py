"""The detection engine: duplicates, retractions, shadow mode, cooldown, ledger, stage loop."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

import detectors
from detectors import run_backtest
from detectors.base import Finding, WalletState
from detectors.engine import DetectionEngine, default_detectors
from detectors.ledger import LedgerReconciliation
from detectors.move import TransferView
from detectors.traffic import (
    DrainSpec,
    config_toml,
    evm_hot_wallets,
    generate_traffic,
    write_jsonl,
)
from detectors.velocity import VelocityDetector
from drainwatch.bus import EmbeddedBus, TopicPartition
from drainwatch.config import Config, DetectionConfig, loads
from drainwatch.events import (
    ALERTS,
    LEDGER,
    TRANSFERS,
    Alert,
    Direction,
    Severity,
    TransferStatus,
    decode,
    event_id,
)
from drainwatch.stage import StageLoop
from tests.detectors.factories import approval, at, config, transfer, wallet

DETECTED = datetime(2030, 1, 1, tzinfo=UTC)


def engine(**kwargs: object) -> DetectionEngine:
    return DetectionEngine(config(), clock=lambda: DETECTED, **kwargs)  # type: ignore[arg-type]


def summary(alerts: list[Alert]) -> list[tuple[str, str, bool]]:
    return [(a.detector, a.severity.value, a.freeze) for a in alerts]


def test_public_api_is_pinned() -> None:
    assert detectors.__all__ == [
        "BacktestFileError",
        "BacktestInputError",
        "BacktestSummary",
        "BaselineDetector",
        "DetectionEngine",
        "Detector",
        "DetectorError",
        "Finding",
        "IncidentCorrelator",
        "LedgerAware",
        "LedgerReconciliation",
        "Snapshot",
        "SnapshotFile",
        "SnapshotStore",
        "StateLearner",
        "VelocityDetector",
        "WalletState",
        "default_detectors",
        "fingerprint",
        "message_digest",
        "run_backtest",
    ]
    assert issubclass(detectors.BacktestInputError, detectors.DetectorError)
    assert issubclass(detectors.BacktestFileError, detectors.DetectorError)


def test_alert_fields_and_deterministic_id() -> None:
    t = transfer("THIEF", 300, minutes=4)
    first, second = engine().process(t), engine().process(t)
    assert len(first) == 1
    alert = first[0]
    assert alert == second[0]
    assert (alert.time, alert.detected_at) == (at(4), DETECTED)
    assert (alert.chain, alert.wallet, alert.wallet_label) == ("nem", "HOT", "nem-hot")
    assert alert.tx_hashes == (t.tx_hash,)
    assert alert.transfer_ids == (t.id,)
    assert engine().process(t, detected_at=at(5))[0].detected_at == at(5)


def test_duplicate_transfer_is_ignored() -> None:
    e = engine()
    t = transfer("FRIEND", 30)
    assert summary(e.process(t)) == [("velocity", "warning", False)]
    assert e.process(t) == []
    state = e.state(e.config.wallets[0], "XEM")
    assert state.balance_units() == 970


def test_retraction_undoes_the_transfer() -> None:
    e = engine(cooldown_s=0)
    first = transfer("THIEF", 30, minutes=0)
    e.process(first)
    e.process(first.model_copy(update={"status": TransferStatus.RETRACTED}))
    state = e.state(e.config.wallets[0], "XEM")
    assert state.balance_units() == 1000
    assert state.first_seen("THIEF") is None
    # Had the first stayed, 6% to one new address would freeze; alone it is a warning.
    assert summary(e.process(transfer("THIEF", 30, minutes=5))) == [("velocity", "warning", False)]


def test_late_transfer_is_counted_in_its_window() -> None:
    e = engine()
    e.process(transfer("THIEF", 30, minutes=10))
    alerts = e.process(transfer("THIEF", 30, minutes=9))
    assert summary(alerts) == [("velocity", "critical", True)]
    assert alerts[0].metrics["drained"] == "60"


def test_internal_transfers_and_unwatched_wallets_are_ignored() -> None:
    e = engine()
    assert e.process(transfer("COLD", 900)) == []
    assert e.process(transfer("X", 900, wallet="STRANGER")) == []
    assert e.process(transfer("COLD", 100, wallet="COLD", minutes=1)) == []
    state = e.state(e.config.wallets[0], "XEM")
    assert state.balance_units() == 100


def test_wallet_with_an_asset_sees_only_that_asset() -> None:
    e = DetectionEngine(config(wallet(asset="XEM")))
    assert e.process(transfer("THIEF", 900, asset="MOSAIC")) == []
    assert summary(e.process(transfer("THIEF", 900, asset="xem"))) == [
        ("velocity", "critical", True)
    ]


def test_cold_wallet_outflow_is_a_critical_freeze() -> None:
    alerts = engine().process(transfer("ANYONE", 1, wallet="COLD"))
    assert summary(alerts) == [("velocity", "critical", True)]
    assert alerts[0].wallet == "COLD"


def test_shadow_mode_alerts_but_never_freezes() -> None:
    e = DetectionEngine(config(wallet(), shadow=("velocity",)))
    alerts = e.process(transfer("THIEF", 300))
    assert summary(alerts) == [("velocity", "critical", False)]
    assert alerts[0].shadow
    assert alerts[0].metrics["would_freeze"] == "1"


def test_cooldown_keeps_one_freeze_per_wallet_and_detector() -> None:
    e = engine(cooldown_s=3600)
    first = e.process(transfer("T1", 100, minutes=0))
    again = e.process(transfer("T2", 100, minutes=10))
    later = e.process(transfer("T3", 100, minutes=70))
    assert summary(first) == [("velocity", "critical", True)]
    assert summary(again) == [("velocity", "info", False)]  # recorded, not paged again
    assert again[0].metrics["freeze_suppressed"] == "1"
    assert again[0].metrics["cooldown_remaining_s"] == "3000"
    assert summary(later) == [("velocity", "critical", True)]


def test_repeated_warnings_need_a_higher_score() -> None:
    e = engine()
    minutes = [0, 20, 40, 60, 80, 200, 250]
    results = [e.process(transfer(f"W{i}", 30, minutes=m)) for i, m in enumerate(minutes)]
    # Each is 3% to a new address: the same warning. Said once while findings keep coming less
    # than two hours (twice the cooldown) apart, and again after two quiet hours.
    assert [summary(r) for r in results] == [
        [("velocity", "warning", False)],
        [],
        [],
        [],
        [],
        [("velocity", "warning", False)],
        [],
    ]


def test_a_finding_every_hour_is_one_episode() -> None:
    # A wallet that pays out in hourly batches: a warning at each batch of a surge, 61 minutes
    # apart. Said when it starts and again after the repeat time (4 h), not at every batch.
    e = engine()
    results = [e.process(transfer(f"W{i}", 30, minutes=i * 61)) for i in range(9)]
    said = [i * 61 for i, r in enumerate(results) if r]
    assert said == [0, 244, 488]
    # Findings more than two hours apart are separate episodes.
    e = engine()
    results = [e.process(transfer(f"W{i}", 30, minutes=i * 121)) for i in range(3)]
    assert all(results)


def test_a_warning_episode_that_goes_on_is_said_again_after_the_repeat_time() -> None:
    e = engine(warning_repeat_s=2 * 3600)
    results = [e.process(transfer(f"W{i}", 30, minutes=i * 30)) for i in range(9)]
    said = [i * 30 for i, r in enumerate(results) if r]
    assert said == [0, 120, 240]


class _ScoreIsAmount:
    """A warning for every outflow, scored by its amount: a surge whose numbers rise."""

    name = "rising"
    outflows_only = True

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        return Finding(self.name, Severity.WARNING, False, float(state.units), "rising")

    def learn_one(self, transfer: TransferView) -> None:
        return None

    def learn_approval(self, approval: object) -> None:
        return None


def test_a_warning_rising_within_minutes_is_said_once_then_only_when_worse_still() -> None:
    # A panic's first minute: the numbers climb 8x, 20x, 30x, 45x within 40 seconds. Said
    # once, not at every step; after the 5-minute gap a warning must be worse than the worst
    # held back (45 * 1.5), not only than the one said.
    e = DetectionEngine(config(), detectors=[_ScoreIsAmount()], correlator=None)
    steps = [(0.0, 8), (0.1, 20), (0.3, 30), (0.6, 45), (6, 50), (7, 67), (8, 68), (8.5, 200)]
    said = [
        amount
        for i, (minute, amount) in enumerate(steps)
        if e.process(transfer(f"S{i}", amount, minutes=minute))
    ]
    assert said == [8, 68]
    # Without the gap every 1.5-fold step is said, as before.
    e = DetectionEngine(config(), detectors=[_ScoreIsAmount()], correlator=None, escalation_gap_s=0)
    said = [
        amount
        for i, (minute, amount) in enumerate(steps)
        if e.process(transfer(f"S{i}", amount, minutes=minute))
    ]
    assert said == [8, 20, 30, 45, 68, 200]


def test_ledger_reconciliation_starts_with_the_first_approval() -> None:
    e = engine()
    e.handle(LEDGER, approval("CUSTOMER", "5", minutes=-1))
    assert e.process(transfer("CUSTOMER", 5)) == []
    alerts = e.process(transfer("THIEF", 1, minutes=1))
    assert summary(alerts) == [("ledger", "critical", True)]
    # The approval explains one transfer only.
    assert summary(e.process(transfer("CUSTOMER", 5, minutes=2, tx="again"))) == [
        ("ledger", "info", False)  # frozen a minute ago: recorded, not frozen or paged again
    ]


def test_a_payment_takes_the_approval_nearest_its_amount_not_the_first_within_tolerance() -> None:
    # Two wallets pay one address (a market maker's payouts): approvals of 100 (for B's
    # payment) and 97 (for A's). A detector catching up judges A's later payment of 98 first:
    # both approvals are within 2% of it, and taking the first (100) left B's 100 with only
    # 97, which does not explain it: a false freeze.
    e = DetectionEngine(
        config(wallet("A", balance="10000"), wallet("B", balance="10000")),
        clock=lambda: DETECTED,
    )
    e.process_approval(approval("MM", "100", minutes=0))
    e.process_approval(approval("MM", "97", minutes=1))
    assert e.process(transfer("MM", 98, minutes=10, wallet="A")) == []
    assert e.process(transfer("MM", 100, minutes=5, wallet="B")) == []


def test_without_a_ledger_feed_reconciliation_stays_silent() -> None:
    assert engine().process(transfer("THIEF", 1)) == []


def test_reconciliation_ignores_inflows_internal_and_stale_approvals() -> None:
    e = engine(reconcile=True)
    assert e.process(transfer("SRC", 50, direction=Direction.IN)) == []
    assert e.process(transfer("COLD", 50, minutes=1)) == []
    e.process_approval(approval("LATE", "5", minutes=0))
    # Three hours is as long as an approval may wait in the payout queue.
    assert summary(e.process(transfer("LATE", 5, minutes=181))) == [("ledger", "critical", True)]


def test_an_approval_explains_a_payout_that_waited_in_the_queue() -> None:
    # Approved, then paid 30 minutes later (a payout queue): explained under the default three
    # hours; a config that allows 10 minutes freezes it.
    for window_s, expected in ((None, []), (600, [("ledger", "critical", True)])):
        detection = (
            DetectionConfig()
            if window_s is None
            else DetectionConfig(ledger_match_window_s=window_s)
        )
        e = DetectionEngine(
            Config(wallets=(wallet(),), detection=detection), clock=lambda: DETECTED
        )
        e.process_approval(approval("CUSTOMER", "5", minutes=0))
        assert summary(e.process(transfer("CUSTOMER", 5, minutes=30))) == expected


def _ledger(alerts: list[Alert]) -> list[tuple[str, str, bool]]:
    return [t for t in summary(alerts) if t[0] == "ledger"]


def test_a_payout_less_than_approved_is_explained_and_more_is_not() -> None:
    e = engine(reconcile=True)
    # A withdrawal fee taken from the payment (10%, beyond the 2% tolerance): explained.
    e.process_approval(approval("FEE", "5", minutes=0))
    assert e.process(transfer("FEE", 4, minutes=1)) == []
    # Paid in two parts: both explained, and nothing is left for a third payment.
    e.process_approval(approval("SPLIT", "10", minutes=2))
    assert e.process(transfer("SPLIT", 6, minutes=3)) == []
    assert e.process(transfer("SPLIT", 4, minutes=4)) == []
    assert _ledger(e.process(transfer("SPLIT", 1, minutes=5))) == [("ledger", "critical", True)]
    # More than approved: not explained (a wallet not frozen yet).
    e = engine(reconcile=True)
    e.process_approval(approval("MORE", "5", minutes=6))
    assert _ledger(e.process(transfer("MORE", 6, minutes=7))) == [("ledger", "critical", True)]


def test_an_approved_payout_that_would_freeze_warns_and_says_it_was_approved() -> None:
    # 30% of the wallet to a new address would freeze; the exchange approved it, so it warns,
    # and the warning says why it is not a freeze.
    e = engine(reconcile=True)
    e.process_approval(approval("OTC-DESK", "300", minutes=0))
    [alert] = e.process(transfer("OTC-DESK", 300, minutes=1))
    assert (alert.detector, alert.severity, alert.freeze) == ("velocity", Severity.WARNING, False)
    assert alert.summary.endswith("; matches an approved withdrawal, so not frozen")
    assert alert.summary.startswith("30% of nem-hot drained at once to 1 new address")
    assert alert.metrics["ledger_approved"] == "1"
    assert alert.metrics["rule_single"] == "1"  # the numbers of the rule that would have frozen


def test_a_small_payment_does_not_use_up_a_larger_approval_it_could_share() -> None:
    # Two approvals to one customer, 8 then 3, and a payment of 2 (the second's, less a fee):
    # it pays the smaller approval in part, so the payment of 8 that follows finds its own.
    e = engine(reconcile=True)
    e.process_approval(approval("CUSTOMER", "8", minutes=0))
    e.process_approval(approval("CUSTOMER", "3", minutes=0))
    assert e.process(transfer("CUSTOMER", 2, minutes=1)) == []
    assert e.process(transfer("CUSTOMER", 8, minutes=2)) == []


DAY_MIN = 24 * 60


def _sweeps(e: DetectionEngine, to: str, amounts: list[int], *, day: int = 0) -> None:
    """Unapproved payments to ``to`` from HOT, an hour apart on ``day``: each is flagged."""
    for hour, amount in enumerate(amounts):
        minutes = day * DAY_MIN + 60 * hour
        assert _ledger(e.process(transfer(to, amount, minutes=minutes)))  # flagged


def test_a_destination_flagged_on_earlier_days_is_trusted_up_to_twice_its_largest() -> None:
    # The exchange's cold wallet, not listed in the config: its sweeps are not withdrawals, so
    # the ledger never approves them. Flagged three times, each a freeze and a page, then
    # trusted from a day later for up to twice the largest; the other detectors still judge.
    e = engine(reconcile=True)
    _sweeps(e, "TREASURY", [100, 60, 80])
    later = DAY_MIN + 120  # a day after the first, not after the last: not yet
    assert _ledger(e.process(transfer("TREASURY", 50, minutes=later))) == [
        ("ledger", "critical", True)  # the wallet's freeze episode ended an hour after it began
    ]
    for minutes, amount in ((2 * DAY_MIN, 150), (2 * DAY_MIN + 90, 200)):
        assert _ledger(e.process(transfer("TREASURY", amount, minutes=minutes))) == []
    # More than twice the largest flagged, two days after the trusted 200: flagged (what was
    # trusted does not raise the bar, or it would double every day).
    assert _ledger(e.process(transfer("TREASURY", 201, minutes=4 * DAY_MIN)))
    # The trust is per address: a new one is flagged at once.
    assert _ledger(e.process(transfer("ELSEWHERE", 1, minutes=4 * DAY_MIN + 300)))


def test_only_flagged_payments_of_the_same_wallet_make_a_destination_trusted() -> None:
    # A thief who withdrew to his address as a customer, approved three times, is not trusted.
    e = engine(reconcile=True)
    for hour in range(3):
        e.process_approval(approval("THIEF", "100", minutes=60 * hour))
        assert _ledger(e.process(transfer("THIEF", 100, minutes=60 * hour + 1))) == []
    assert _ledger(e.process(transfer("THIEF", 10, minutes=2 * DAY_MIN)))
    # Another wallet's flagged payments do not vouch for an address this wallet pays.
    two = DetectionEngine(config(wallet(), wallet("HOT2")), clock=lambda: DETECTED, reconcile=True)
    _sweeps(two, "TREASURY", [100, 100, 100])
    assert _ledger(two.process(transfer("TREASURY", 10, minutes=2 * DAY_MIN, wallet="HOT2")))
    assert _ledger(two.process(transfer("TREASURY", 10, minutes=2 * DAY_MIN + 5))) == []
    # ledger_repeat_trust = 0: every unexplained payment is flagged, however often.
    strict = DetectionEngine(
        Config(wallets=(wallet(),), detection=DetectionConfig(ledger_repeat_trust=0)),
        clock=lambda: DETECTED,
        reconcile=True,
    )
    _sweeps(strict, "TREASURY", [100, 100, 100])
    assert _ledger(strict.process(transfer("TREASURY", 10, minutes=2 * DAY_MIN)))


def test_payments_replayed_in_a_state_rebuild_do_not_make_a_destination_trusted() -> None:
    # A restarted detector replays its wallets' last two days of transfers, but not the
    # approvals of those days: the ledger flags every replayed payment, and must not count them
    # (every customer paid three times would be trusted after a restart).
    e = engine(reconcile=True)
    replayed = [transfer("CUSTOMER", 100, minutes=60 * hour) for hour in range(3)]
    assert e.replay(replayed) == 3
    assert _ledger(e.process(transfer("CUSTOMER", 100, minutes=2 * DAY_MIN)))
    # The same payments judged live, each flagged and paging: trusted.
    live = engine(reconcile=True)
    _sweeps(live, "CUSTOMER", [100, 100, 100])
    assert _ledger(live.process(transfer("CUSTOMER", 100, minutes=2 * DAY_MIN))) == []


def test_an_approval_that_comes_after_its_payment_was_flagged_says_so() -> None:
    # A ledger feed running behind the chain: the payment is judged before its approval (made a
    # minute before it) reaches the detector. The freeze stands; an info alert tells whoever
    # holds it that the exchange approved the payment after all, and what is still unexplained.
    e = engine(reconcile=True)
    e.process_approval(approval("CUSTOMER", "5", minutes=-30))
    paid = transfer("CUSTOMER", 9, minutes=1, tx="paid")
    assert _ledger(e.process(paid)) == [("ledger", "critical", True)]
    assert _ledger(e.process(transfer("THIEF", 2, minutes=2, tx="stolen")))
    late = e.process_approval(approval("CUSTOMER", "9", minutes=0))
    assert summary(late) == [("ledger_explained", "info", False)]
    alert = late[0]
    assert alert.id == event_id("ledger", "explained-late", paid.id)
    assert (alert.time, alert.transfer_ids, alert.tx_hashes) == (paid.time, (paid.id,), ("paid",))
    assert alert.summary == (
        f"approved withdrawal {event_id('approval', 'CUSTOMER', '9', 0)} (9 XEM to CUSTOMER, "
        "approved at 15:00:00) came after nem-hot's payment of 9 XEM at 15:01:00 was judged "
        "unapproved: that payment is explained; 1 other payment of nem-hot still unexplained"
    )
    assert alert.metrics["unexplained_payments"] == "1"
    # The approval is used up by the payment it explained: it explains no second one.
    assert _ledger(e.process(transfer("CUSTOMER", 9, minutes=3, tx="again")))
    # An approval that explains no flagged payment (less than it paid, or to another address)
    # says nothing.
    assert e.process_approval(approval("THIEF", "1", minutes=4)) == []
    assert e.process_approval(approval("OTHER", "9", minutes=5)) == []


def test_a_ledger_alert_says_when_no_approval_has_come_for_half_an_hour() -> None:
    # A ledger feed that stopped makes every payment unexplained, and every wallet freezes at
    # its next one: the alert says how long the feed has been quiet, so on-call sees the cause.
    e = engine(reconcile=True)
    e.process_approval(approval("SEED", "1", minutes=0))
    [soon] = _alerts_of(e.process(transfer("A", 1, minutes=10)), "ledger")
    assert soon.metrics["approvals_quiet_s"] == "600"
    assert "ledger feed" not in soon.summary
    other = DetectionEngine(config(wallet("HOT2")), clock=lambda: DETECTED, reconcile=True)
    other.process_approval(approval("SEED", "1", minutes=0))
    [late] = _alerts_of(other.process(transfer("B", 1, minutes=125, wallet="HOT2")), "ledger")
    assert late.metrics["approvals_quiet_s"] == "7500"
    assert late.summary.endswith("; no approval at all for 2 h 5 min: is the ledger feed down?")


def _alerts_of(alerts: list[Alert], detector: str) -> list[Alert]:
    return [a for a in alerts if a.detector == detector]


def test_a_late_approval_explains_the_flagged_payment_nearest_its_amount() -> None:
    e = engine(reconcile=True)
    for minutes, amount in ((1, 20), (2, 10), (3, 11)):
        assert _ledger(e.process(transfer("CUSTOMER", amount, minutes=minutes)))
    late = e.process_approval(approval("CUSTOMER", "10.1", minutes=0))
    assert [(a.metrics["amount"], a.metrics["unexplained_payments"]) for a in late] == [("10", "2")]
    # Approved long before (beyond the three-hour window): it explains nothing.
    assert e.process_approval(approval("CUSTOMER", "20", minutes=-200)) == []


def test_a_flagged_payment_retracted_by_a_reorg_is_not_explained_later() -> None:
    # Its block was reorganised away: the approval that comes later stays open for the payment
    # that is made again, and says nothing of the one that no longer exists.
    e = engine(reconcile=True)
    e.process_approval(approval("SEED", "1", minutes=-10))
    paid = transfer("CUSTOMER", 9, minutes=1, tx="gone")
    assert _ledger(e.process(paid))
    retracted = paid.model_copy(update={"status": TransferStatus.RETRACTED})
    assert e.process(retracted) == []
    assert e.process_approval(approval("CUSTOMER", "9", minutes=0)) == []
    assert _ledger(e.process(transfer("CUSTOMER", 9, minutes=3, tx="again"))) == []


def test_flagged_payments_are_kept_two_windows_even_with_no_approval_coming() -> None:
    # A ledger feed that stops: every payment is flagged, and kept for a late approval only
    # while one could still explain it (two three-hour windows), so memory stays bounded.
    e = engine(reconcile=True)
    e.process_approval(approval("SEED", "1", minutes=-10))
    assert _ledger(e.process(transfer("EARLY", 9, minutes=0)))
    assert _ledger(e.process(transfer("LATER", 9, minutes=7 * 60)))
    assert e.process_approval(approval("EARLY", "9", minutes=-1)) == []
    assert len(e.process_approval(approval("LATER", "9", minutes=7 * 60 - 1))) == 1


def test_payments_replayed_in_a_state_rebuild_are_not_explained_again() -> None:
    # A restarted detector replays its transfers without their approvals, then reads the last
    # hours of the ledger again: an approval read again explains nothing it did not before (its
    # payments were matched, or explained, before the restart), so no alert repeats.
    e = engine(reconcile=True)
    e.process_approval(approval("SEED", "1", minutes=-10))
    assert e.replay([transfer("CUSTOMER", 9, minutes=1)]) == 1
    assert e.process_approval(approval("CUSTOMER", "9", minutes=0)) == []


def test_a_late_approval_in_shadow_mode_is_recorded_as_shadow() -> None:
    e = DetectionEngine(config(shadow=("ledger",)), clock=lambda: DETECTED, reconcile=True)
    assert [a.freeze for a in e.process(transfer("CUSTOMER", 9, minutes=1))] == [False]
    [late] = e.process_approval(approval("CUSTOMER", "9", minutes=0))
    assert (late.detector, late.shadow, late.freeze) == ("ledger_explained", True, False)


def test_flagged_payments_travel_with_snapshots_and_join_across_engines() -> None:
    # A snapshot carries what was flagged; a split backtest joins each worker's wallets.
    state = WalletState(wallet(), "XEM")
    other = WalletState(wallet("HOT2"), "XEM")
    first, second = LedgerReconciliation(active=True), LedgerReconciliation(active=True)
    for ledger, wallet_state, name in ((first, state, "HOT"), (second, other, "HOT2")):
        for hour in range(3):
            paid = transfer("TREASURY", 100, minutes=60 * hour, wallet=name)
            wallet_state.prepare(paid)
            assert ledger.score_one(paid, wallet_state) is not None
            ledger.learn_with_state(paid, wallet_state)
    joined = pickle.loads(pickle.dumps(first))
    joined.adopt(second)
    for wallet_state, name in ((state, "HOT"), (other, "HOT2")):
        later = transfer("TREASURY", 100, minutes=2 * DAY_MIN, wallet=name)
        wallet_state.prepare(later)
        assert joined.score_one(later, wallet_state) is None
        assert LedgerReconciliation(active=True).score_one(later, wallet_state) is not None
    # Forgotten after four weeks without a flagged payment.
    fresh_state = WalletState(wallet(), "XEM")
    joined.learn_approval(approval("SOMEONE", "1", minutes=29 * DAY_MIN))
    late = transfer("TREASURY", 100, minutes=29 * DAY_MIN + 1)
    fresh_state.prepare(late)
    assert joined.score_one(late, fresh_state) is not None


def test_approvals_never_paid_are_forgotten_while_others_keep_coming() -> None:
    # One approval is never paid (the customer cancelled); approvals keep coming every minute
    # for seven hours. It is forgotten after two windows, so the alert on a later unexplained
    # payment to that address says no approval to it is open.
    ledger = LedgerReconciliation(active=True)
    state = WalletState(wallet(), "XEM")
    ledger.learn_approval(approval("CANCELLED", "7", minutes=0))
    for minute in range(1, 421):
        ledger.learn_approval(approval(f"C{minute}", "1", minutes=minute))
    unexplained = transfer("CANCELLED", 9, minutes=420)
    state.prepare(unexplained)
    finding = ledger.score_one(unexplained, state)
    assert finding is not None
    assert finding.metrics["approvals_to_address"] == "0"
    # Within the window it is still open (and counted).
    recent = LedgerReconciliation(active=True)
    recent.learn_approval(approval("CANCELLED", "7", minutes=0))
    soon = transfer("CANCELLED", 9, minutes=30)
    state.prepare(soon)
    finding = recent.score_one(soon, state)
    assert finding is not None
    assert finding.metrics["approvals_to_address"] == "1"


def test_a_detector_behind_on_transfers_keeps_the_approvals_its_backlog_needs() -> None:
    # Back from a ten-hour outage, a detector reads the approvals up to now at once (the ledger
    # is small and quick to read), then works through ten hours of payments. Approvals are kept
    # two windows behind the latest payment judged, not behind the latest approval: the first
    # hour's payments still find theirs. A payment nobody approved still freezes.
    e = engine(reconcile=True)
    for minute in range(0, 600, 5):
        e.process_approval(approval(f"C{minute}", "1", minutes=minute))
    for minute in range(0, 600, 5):
        assert _ledger(e.process(transfer(f"C{minute}", 1, minutes=minute + 1))) == [], minute
    assert _ledger(e.process(transfer("THIEF", 1, minutes=601))) == [("ledger", "critical", True)]


def test_a_pending_transfers_balance_anchors_only_a_wallet_with_none_known() -> None:
    # Pending transfers each read the latest mined balance, moved by themselves: the first one
    # tells a wallet with no balance what it holds; the next must not undo the first's count.
    state = WalletState(wallet(balance=None), "XEM")

    def seen(amount: int, after: int, minutes: int, status: TransferStatus) -> int:
        t = transfer("C", amount, minutes=minutes, status=status).model_copy(
            update={"balance_after": after}
        )
        state.prepare(t)
        before = state.balance_units()
        state.apply(t)
        return before

    pending = TransferStatus.PENDING
    assert seen(100, 900, 0, pending) == 1000  # the latest balance was 1000
    assert seen(100, 900, 1, pending) == 900  # still 1000 mined, but 100 is on its way already
    assert seen(50, 750, 2, TransferStatus.CONFIRMED) == 800  # a mined balance re-anchors
    assert state.balance_units() == 750


def test_reconciliation_asks_the_approvals_again_once_they_change() -> None:
    # The ledger detector remembers its last match (the engine asks up to three times per
    # outflow); an approval arriving, or one used up, must make it look again.
    ledger = LedgerReconciliation(active=True)
    state = WalletState(wallet(), "XEM")
    paid = transfer("CUSTOMER", 5)
    state.prepare(paid)
    assert ledger.score_one(paid, state) is not None  # nothing approved yet
    ledger.learn_approval(approval("CUSTOMER", "5", minutes=-1))
    assert ledger.score_one(paid, state) is None
    assert ledger.explains(paid, state)
    kept = pickle.loads(pickle.dumps(ledger))  # a snapshot carries the approval
    ledger.learn_one(paid)  # used up
    assert not ledger.explains(paid, state)
    again = transfer("CUSTOMER", 5, tx="again")
    state.prepare(again)
    assert ledger.score_one(again, state) is not None
    assert kept.score_one(again, state) is None


def test_handle_runs_in_the_stage_loop_over_the_embedded_bus() -> None:
    e = engine()
    bus = EmbeddedBus(":memory:")
    producer = bus.producer()
    t = transfer("THIEF", 300)
    producer.send(TRANSFERS, t.key, t.to_json())
    producer.flush()
    loop = StageLoop(bus, [TRANSFERS, LEDGER], "detectors", handler=e.handle)
    assert loop.run_once(timeout_s=0.5) == 1
    messages = bus.read_range(TopicPartition(ALERTS, 0), 0, 10)
    assert len(messages) == 1
    alert = decode(ALERTS, messages[0].value, Alert)
    assert (alert.severity, alert.freeze, alert.key) == (Severity.CRITICAL, True, t.key)
    loop.close()


def test_a_whale_withdrawal_frozen_by_its_size_is_learned_so_the_next_one_is_not() -> None:
    # Velocity keeps the sizes paid as facts: a false freeze does not make the size frozen for ever.
    detector = VelocityDetector(fresh_min_history_s=0)
    engine = DetectionEngine(
        config(wallet(balance="1000000")), detectors=[detector], correlator=None, cooldown_s=0
    )
    assert engine.process(transfer("C1", 3000, minutes=0)) == []  # a customer: 0.3%
    first = engine.process(transfer("WHALE-A", 20000, minutes=60))  # 2% to a fresh address
    assert [(a.detector, a.freeze, a.metrics.get("rule_large_fresh")) for a in first] == [
        ("velocity", True, "1")
    ]
    # A day later, another whale withdrawal of the same size to another fresh address.
    assert engine.process(transfer("WHALE-B", 20000, minutes=60 + 1440)) == []


def test_the_large_fresh_rule_follows_the_config_switch() -> None:
    wallets = '[[wallets]]\nchain = "nem"\naddress = "HOT"\n'
    for extra, expected in (("", True), ("[detection]\nlarge_fresh = false\n", False)):
        engine = DetectionEngine(loads(wallets + extra))
        velocity = next(d for d in engine.detectors if isinstance(d, VelocityDetector))
        assert velocity.large_fresh is expected


class _EagerOnly:
    """A detector seen through ``score_one`` alone: every finding described at once."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "judge":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_findings_described_on_demand_match_findings_described_at_once(tmp_path: Path) -> None:
    # A surge day, a fan-out drain on one wallet and a burst on the other, over wallets that
    # start without a balance: thousands of findings, most of them dropped as repeats. The engine
    # describes only those it alerts on, and must describe them against the state they were
    # judged in (a description after the transfer was counted would count it twice).
    start = datetime(2024, 1, 1, tzinfo=UTC)
    day = 86400
    wallets = [
        replace(
            spec,
            surge_multiplier=12.0,
            drains=(
                DrainSpec(4.4 * day + 600 * i, "fresh_fanout" if i else "burst", 0.01, 25, 40),
            ),
        )
        for i, spec in enumerate(evm_hot_wallets(2, cold_offset=0xC0))
    ]
    traffic = generate_traffic(wallets, start, days=5.0, seed=7, panic_days=(3,))
    cfg = loads(config_toml(wallets, opening_balance=False))
    rows = write_jsonl(tmp_path / "transfers.jsonl", traffic.transfers)

    def alerts(engine: DetectionEngine, name: str) -> bytes:
        run_backtest(cfg, rows, None, tmp_path / name, engine=engine)
        return (tmp_path / name).read_bytes()

    lazy = DetectionEngine(cfg)
    eager = DetectionEngine(cfg, detectors=[_EagerOnly(d) for d in default_detectors(cfg)])  # type: ignore[misc]
    described_later = alerts(lazy, "lazy.jsonl")
    assert described_later == alerts(eager, "eager.jsonl")
    records = [orjson.loads(line) for line in described_later.splitlines()]
    assert any(r["freeze"] for r in records)
    assert all(r["summary"] and r["metrics"] for r in records)
    assert {r["detector"] for r in records} >= {"velocity", "baseline"}


def test_joined_engines_keep_what_either_paid_in_part() -> None:
    # A split backtest joins its workers' engines: an approval one of them saw paid in part
    # stays open for the rest only, whichever engine is adopted first.
    for order in ((0, 1), (1, 0)):
        engines = [engine(reconcile=True), engine(reconcile=True)]
        for e in engines:
            e.process_approval(approval("CUSTOMER", "10", minutes=0))
        assert engines[1].process(transfer("CUSTOMER", 6, minutes=1)) == []
        joined = engine()
        for index in order:
            joined.adopt(engines[index])
        assert joined.process(transfer("CUSTOMER", 4, minutes=2)) == []
        assert _ledger(joined.process(transfer("CUSTOMER", 4, minutes=3, tx="again"))) == [
            ("ledger", "critical", True)
        ]
