"""Incident correlation across wallets and chains, and the engine's state rebuild."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final

import pytest

from detectors import BaselineDetector, DetectionEngine, IncidentCorrelator, VelocityDetector
from detectors.evaluate import FixedRule
from drainwatch.config import Config, DetectionConfig
from drainwatch.events import Alert, Direction, Transfer
from tests.detectors.factories import T0, approval, at, transfer, wallet


def fleet() -> Config:
    return Config(
        wallets=(
            wallet("HOT1", balance="1000"),
            wallet("HOT2", balance="1000"),
            wallet("HOT3", balance="1000"),
            wallet("0xE0", chain="ethereum", balance="1000"),
        ),
        detection=DetectionConfig(),
    )


def test_two_warnings_alone_are_not_an_incident() -> None:
    c = IncidentCorrelator()
    assert c.observe("nem:A", 0.0, 1) == (None, [])
    assert c.observe("nem:B", 60.0, 1) == (None, [])
    assert not c.lowered(120.0)


def test_incident_id_is_deterministic_and_shared() -> None:
    ids = []
    for _ in range(2):
        c = IncidentCorrelator()
        c.observe("nem:A", 0.0, 1)
        incident, others = c.observe("eth:B", 100.0, 3)
        assert others == []  # one frozen wallet does not lower the bar yet
        _, others = c.observe("btc:C", 150.0, 3)
        assert others == ["nem:A"]
        assert incident is not None
        assert c.incident_of("nem:A", 200.0) == incident
        ids.append(incident)
    assert ids[0] == ids[1]


def test_a_finding_read_from_another_replica_names_the_incident_it_opened_there() -> None:
    c = IncidentCorrelator()
    c.observe("nem:A", 100.0, 1)
    # Another replica's freeze, already in an incident there (it saw findings this one did not):
    # the incident opens here under that replica's id, and an earlier finding counts in order.
    assert c.observe("eth:B", 90.0, 3, incident_id="theirs") == ("theirs", [])
    assert c.incident_of("nem:A", 200.0) == "theirs"
    _, others = c.observe("btc:C", 150.0, 3, incident_id="theirs")
    assert others == ["nem:A"]
    c.observe("tron:D", 80.0, 1)  # an older finding does not move the incident back in time
    assert c.incident_of("nem:A", 150.0 + 1800.0) == "theirs"


def test_findings_hours_apart_are_no_incident_in_whatever_order_they_come() -> None:
    # A detector catching up reads one partition hours ahead of another: a freeze at 10:00 read
    # after one at 20:00 is not "within 30 minutes" of it.
    c = IncidentCorrelator()
    c.observe("eth:A", 36_000.0, 3)
    assert c.observe("eth:B", 0.0, 3) == (None, [])
    assert not c.lowered(0.0)
    incident, _ = c.observe("eth:C", 36_100.0, 3)
    assert incident is not None
    assert c.incident_of("eth:A", 36_200.0) == incident
    assert c.incident_of("eth:B", 36_200.0) is None
    assert c.observe("eth:D", 100.0, 3) == (None, [])  # hours before the open incident


def test_a_wallet_frozen_hours_ago_counts_no_more_though_it_still_warns() -> None:
    # A panic: a whale's payment froze eth:A at 10:00, and A has warned every 20 minutes since,
    # which keeps its spell (and so its membership) open. At 12:00 two other wallets freeze:
    # A is no wallet frozen with them, so the fleet is not frozen; a third at 12:05 does it.
    c = IncidentCorrelator(window_s=1800)
    c.observe("eth:A", 0.0, 3)
    for k in range(1, 7):
        c.observe("eth:A", 1200.0 * k, 1)
    c.observe("btc:B", 7200.0, 3)
    c.observe("tron:C", 7230.0, 3)
    assert c.lowered(7230.0)  # B and C: two frozen on within the half hour
    assert not c.fleet_freeze_due(7230.0)
    assert c.incident_of("eth:A", 7230.0) is not None  # still a member, by its warnings
    c.observe("sol:D", 7500.0, 3)
    assert c.fleet_freeze_due(7500.0)


def test_two_frozen_wallets_freeze_a_wallet_that_only_warned_and_lower_the_bar() -> None:
    engine = DetectionEngine(fleet())
    # HOT1 pays 3% to a new address: a warning, not a freeze.
    warned = engine.process(transfer("T1", 30, wallet="HOT1", minutes=0))
    assert [(a.severity.value, a.freeze) for a in warned] == [("warning", False)]
    # The Ethereum wallet loses 40% at once: frozen; one incident, the bar not lowered yet.
    eth = engine.process(
        transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5)
    )
    assert {a.wallet for a in eth if a.freeze} == {"0xe0"}
    incident = eth[0].incident_id
    assert incident is not None
    # A second wallet frozen on: HOT1, which had only warned, is frozen with the incident.
    alerts = engine.process(transfer("T9", 400, wallet="HOT2", minutes=6))
    assert {a.wallet for a in alerts if a.freeze} == {"HOT2", "HOT1"}
    assert {a.incident_id for a in alerts} == {incident}
    # While it is open, 1.5% to a new address freezes HOT3, which alone would raise nothing.
    lowered = engine.process(transfer("T2", 15, wallet="HOT3", minutes=8))
    assert [(a.detector, a.freeze) for a in lowered] == [("correlation", True)]


@pytest.mark.parametrize("crowd", [False, True])
def test_a_crowds_warning_makes_a_member_that_the_lowered_bar_does_not_freeze(crowd: bool) -> None:
    # A panic: nem:A warns of its customers' mid-size payments (a crowd's evidence), nem:B of
    # something else; two wallets run down by their customers then freeze on their own evidence
    # within the half hour. A is a member of the incident, but only B is frozen with it.
    c = IncidentCorrelator()
    c.observe("nem:A", 0.0, 1, crowd=crowd)
    c.observe("nem:B", 60.0, 1)
    c.observe("eth:C", 100.0, 3)
    incident, others = c.observe("btc:D", 150.0, 3)
    assert c.lowered(150.0)
    assert c.incident_of("nem:A", 200.0) == incident
    frozen = ["nem:B"] if crowd else ["nem:A", "nem:B"]
    assert others == frozen
    # A replica that takes the two over owes the same.
    assert c.owed(["nem:A", "nem:B"], (), 200.0) == (incident, frozen)
    # A warning of A's own evidence, later in the incident, makes it one to freeze.
    c.observe("nem:A", 300.0, 1)
    assert c.owed(["nem:A"], (), 320.0) == (incident, ["nem:A"])


@pytest.mark.parametrize(("amount", "frozen"), [(8, False), (30, True)])
def test_a_wallet_that_warned_of_a_crowd_is_not_frozen_with_the_incident(
    amount: int, frozen: bool
) -> None:
    engine = DetectionEngine(fleet())
    # HOT1 pays 0.8% each to four new addresses in 3 minutes (a burst: a crowd's evidence), or
    # 3% to one (a single address: its own).
    first = [
        a
        for i in range(4 if amount == 8 else 1)
        for a in engine.process(transfer(f"C{i}", amount, wallet="HOT1", minutes=i))
    ]
    assert [(a.severity.value, a.freeze) for a in first] == [("warning", False)]
    assert ("incident_crowd" in first[0].metrics) is not frozen
    engine.process(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5))
    alerts = engine.process(transfer("T9", 400, wallet="HOT2", minutes=6))
    assert ("HOT1" in {a.wallet for a in alerts if a.freeze}) is frozen
    if not frozen:
        # Nor is the crowd's next warning made a freeze while the bar is lowered.
        more = engine.process(transfer("C9", amount, wallet="HOT1", minutes=8))
        assert not any(a.freeze for a in more)


def test_the_lowered_bar_stays_above_what_a_wallets_customers_often_pay() -> None:
    # HOT3's customers take 2% of it to new addresses four times a day: in any half hour of an
    # incident one may come by chance. The lowered bar (1%) is then above what they pay.
    engine = DetectionEngine(fleet())
    minutes_before = 9 * 24 * 60
    for i in range(9 * 4):
        minute = -minutes_before + 360 * i
        engine.process(transfer(f"CUSTOMER{i}", 20, wallet="HOT3", minutes=minute))
        engine.process(
            transfer("DEPOSITS", 20, wallet="HOT3", direction=Direction.IN, minutes=minute + 1)
        )
    engine.process(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=0))
    assert any(a.freeze for a in engine.process(transfer("T9", 400, wallet="HOT2", minutes=1)))
    assert engine.correlator is not None
    assert engine.correlator.lowered(at(2).timestamp())
    # What its customers pay raises nothing, as on any other day ...
    assert engine.process(transfer("NEWCUSTOMER", 15, wallet="HOT3", minutes=8)) == []
    # ... but more than any of them paid freezes it (and, a third wallet frozen, the fleet).
    alerts = engine.process(transfer("T3", 25, wallet="HOT3", minutes=9))
    watched = [a for a in alerts if a.wallet == "HOT3" and a.freeze]
    assert [a.detector for a in watched] == ["correlation"]
    assert watched[0].summary.startswith("2.5% of nem-hot3 sent to a new address while")


def test_the_lowered_bars_own_freezes_do_not_freeze_the_fleet() -> None:
    # Two wallets frozen lower the bar; a 1.5% payment of a third freezes it by that bar, but
    # is no third wallet frozen on its own evidence: the fleet (HOT1, HOT4) is not frozen.
    # HOT1's own drain is, and then the fleet is.
    config = fleet().model_copy(update={"wallets": (*fleet().wallets, wallet("HOT4"))})
    engine = DetectionEngine(config)
    engine.process(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=0))
    engine.process(transfer("T9", 400, wallet="HOT2", minutes=1))
    watched = engine.process(transfer("T2", 15, wallet="HOT3", minutes=2))
    assert [(a.wallet, a.detector, a.freeze) for a in watched] == [("HOT3", "correlation", True)]
    drained = engine.process(transfer("T1", 400, wallet="HOT1", minutes=3))
    assert {a.wallet for a in drained if a.freeze} == {"HOT1", "HOT4"}


def test_the_incident_does_not_freeze_again_a_wallet_it_has_frozen() -> None:
    # Two wallets drained lower the bar, and a 1.5% payment freezes HOT3 by it. The drains go
    # on for an hour, which keeps the incident open. 45 minutes later HOT3 pays 1.5% to a new
    # address again: the kill switch still holds it (unfreezing takes two approvers, who would
    # have judged it), so the lowered bar does not ask again. HOT1, never frozen, is.
    engine = DetectionEngine(fleet())
    engine.process(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=0))
    engine.process(transfer("T9", 400, wallet="HOT2", minutes=1))
    watched = engine.process(transfer("T2", 15, wallet="HOT3", minutes=2))
    assert [(a.wallet, a.freeze) for a in watched] == [("HOT3", True)]
    for minute in (15, 30, 45, 60):
        engine.process(transfer("T9", 20, wallet="HOT2", minutes=minute))
        engine.process(
            transfer("0xbad", 20, wallet="0xE0", chain="ethereum", asset="ETH", minutes=minute)
        )
    assert engine.correlator is not None
    assert engine.correlator.lowered(at(61).timestamp())
    again = engine.process(transfer("T3", 15, wallet="HOT3", minutes=61))
    assert not any(a.freeze for a in again)
    first = engine.process(transfer("T4", 15, wallet="HOT1", minutes=62))
    assert [(a.wallet, a.detector, a.freeze) for a in first] == [("HOT1", "correlation", True)]


def test_a_freeze_before_an_incident_holds_the_wallet_only_for_the_window() -> None:
    # A freeze requested within the half hour holds a wallet; one since the open incident
    # began holds it while the incident lasts; one before the incident, hours ago, does not.
    c = IncidentCorrelator(window_s=1800)
    c.mark_frozen("sol:E", 0.0)
    c.observe("eth:A", 7200.0, 3)
    c.mark_frozen("eth:A", 7200.0)
    c.observe("btc:B", 7300.0, 3)
    for k in range(1, 4):
        c.observe("btc:B", 7300.0 + 1200.0 * k, 3)
    now = 7300.0 + 3600.0
    assert c.incident_of("eth:A", now) is not None
    assert c.is_frozen("eth:A", now)  # an hour after its freeze, the incident still open
    assert not c.is_frozen("sol:E", now)
    assert c.is_frozen("sol:E", 1000.0)
    assert not c.is_frozen("eth:A", now + 2 * 3600.0)  # the incident over


def test_an_approved_withdrawal_is_no_loss_to_an_open_incident() -> None:
    # With the ledger feed, two wallets drained by unapproved transfers lower the bar; a third
    # wallet's customer withdrawal of 1.5% to a new address, which the exchange approved, is
    # what the ledger vouches for: a warning that says so, not a freeze, and the wallet does not
    # join the incident (to be frozen with it when a third wallet warns or freezes).
    engine = DetectionEngine(fleet(), reconcile=True)
    topic = engine.process(
        transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=0)
    )
    topic += engine.process(transfer("T9", 400, wallet="HOT2", minutes=1))
    assert any(a.freeze for a in topic)
    correlator = engine.correlator
    assert correlator is not None
    assert correlator.lowered(at(2).timestamp())
    engine.process_approval(approval("CUSTOMER", "15", minutes=7))
    alerts = engine.process(transfer("CUSTOMER", 15, wallet="HOT3", minutes=8))
    assert [(a.detector, a.severity.value, a.freeze) for a in alerts] == [
        ("correlation", "warning", False)
    ]
    assert alerts[0].summary.endswith("; matches an approved withdrawal, so not frozen")
    assert alerts[0].incident_id is None
    assert correlator.incident_of("nem:HOT3", at(9).timestamp()) is None
    # Another replica, reading the alerts topic, counts the warning as this one did.
    reader = DetectionEngine(fleet(), reconcile=True, owns=lambda key: False)
    for alert in [*topic, *alerts]:
        reader.process_alert(alert)
    assert alerts[0].metrics["incident_level"] == "0"
    assert reader.correlator is not None
    assert reader.correlator.lowered(at(8).timestamp())
    assert reader.correlator.incident_of("nem:HOT3", at(9).timestamp()) is None
    # The next one, which nobody approved, is frozen (the ledger), and with three wallets frozen
    # on, so is the fleet (HOT1).
    later = engine.process(transfer("OTHER", 15, wallet="HOT3", minutes=9))
    assert ("ledger", True) in [(a.detector, a.freeze) for a in later]
    assert {a.wallet for a in later if a.freeze} == {"HOT3", "HOT1"}


def test_without_an_incident_the_same_transfer_raises_nothing() -> None:
    engine = DetectionEngine(fleet())
    assert engine.process(transfer("T2", 15, wallet="HOT3", minutes=8)) == []


def test_replay_rebuilds_state_without_alerts() -> None:
    history = [
        transfer("SRC", 500, wallet="HOT1", direction=Direction.IN, minutes=0),
        transfer("THIEF", 1, wallet="HOT1", minutes=1),
        transfer("THIEF", 400, wallet="HOT1", minutes=2),
    ]
    rebuilt = DetectionEngine(fleet())
    assert rebuilt.replay(history) == 3
    live = DetectionEngine(fleet())
    emitted = [a for t in history for a in live.process(t)]
    assert emitted  # the same transfers, processed live, do alert
    nxt = transfer("THIEF", 300, wallet="HOT1", minutes=3)
    # Same state, same cooldowns: the next transfer is judged identically.
    assert [(a.id, a.freeze, a.summary) for a in rebuilt.process(nxt)] == [
        (a.id, a.freeze, a.summary) for a in live.process(nxt)
    ]


def test_three_wallets_frozen_within_minutes_freeze_the_whole_hot_fleet() -> None:
    engine = DetectionEngine(fleet())
    engine.process(transfer("T1", 400, wallet="HOT1", minutes=0))
    engine.process(transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2))
    alerts = engine.process(transfer("T3", 400, wallet="HOT3", minutes=4))
    # HOT2 has sent nothing yet: it is frozen with the incident, by an alert of its own.
    assert {a.wallet for a in alerts if a.freeze} == {"HOT3", "HOT2"}
    fleet_alert = next(a for a in alerts if a.wallet == "HOT2")
    assert (fleet_alert.detector, fleet_alert.severity.value) == ("correlation", "critical")
    assert fleet_alert.incident_id == alerts[0].incident_id is not None
    # It says which wallets are losing value, in the order they started, and names them all
    # for the alerts stage (one page: docs/alert-routing.md).
    assert fleet_alert.summary == (
        "freezing nem-hot2 with the incident: nem-hot1, ethereum-0xe0 and nem-hot3 are losing value"
    )
    assert fleet_alert.incident_wallets == ("nem:HOT1", "ethereum:0xe0", "nem:HOT3")
    # Once per incident: the next drain transfer does not freeze the fleet again.
    again = engine.process(transfer("T4", 300, wallet="HOT3", minutes=5))
    assert not any(a.freeze and a.wallet == "HOT2" for a in again)


@pytest.mark.parametrize("surge_wallets", [3, 0])
def test_a_fleet_freeze_kept_back_by_a_surge_is_said_once(surge_wallets: int) -> None:
    # The same three wallets frozen within minutes, while three other wallets (not frozen on)
    # warn of their customers' crowds: a market-wide surge. HOT2 is not frozen, and the third
    # wallet's freeze says why, and how on call freezes the fleet all the same; once. With
    # [detection] surge_wallets = 0 the fleet is frozen as outside a surge.
    detection = DetectionConfig.model_validate({"surge_wallets": surge_wallets})
    engine = DetectionEngine(fleet().model_copy(update={"detection": detection}))
    assert engine.correlator is not None
    for k in range(3):
        engine.correlator.observe(f"tron:CROWD{k}", at(1).timestamp(), 1, crowd=True)
    engine.process(transfer("T1", 400, wallet="HOT1", minutes=0))
    engine.process(transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2))
    alerts = engine.process(transfer("T3", 400, wallet="HOT3", minutes=4))
    if not surge_wallets:
        assert {a.wallet for a in alerts if a.freeze} == {"HOT3", "HOT2"}
        assert not any("fleet_withheld" in a.metrics for a in alerts)
        return
    assert {a.wallet for a in alerts if a.freeze} == {"HOT3"}
    said = next(a for a in alerts if a.freeze)
    assert said.metrics["fleet_withheld"] == "3"
    assert said.summary.endswith(
        "; the fleet is not frozen: 3 other wallets' customers are crowding (a market-wide"
        " withdrawal surge); POST /v1/freeze-all freezes it"
    )
    again = engine.process(transfer("T4", 400, wallet="HOT2", minutes=5))
    assert not any("fleet_withheld" in a.metrics for a in again)


@pytest.mark.parametrize(
    ("policy", "ledger", "fleet_frozen"),
    [
        ("always", True, True),
        ("without-ledger", True, False),
        ("without-ledger", False, True),
        ("never", False, False),
    ],
)
def test_the_fleet_freeze_follows_the_exchanges_policy(
    policy: str, ledger: bool, fleet_frozen: bool
) -> None:
    # Three wallets drained within minutes by payments no approval explains (or, without a
    # ledger, by the velocity rules). HOT2 has sent nothing: whether the incident freezes it
    # too is [detection] fleet_freeze's to say, and with a ledger feed "without-ledger" waits
    # for HOT2's own first unapproved payment.
    config = fleet().model_copy(
        update={"detection": DetectionConfig.model_validate({"fleet_freeze": policy})}
    )
    engine = DetectionEngine(config, reconcile=ledger)
    engine.process(transfer("T1", 400, wallet="HOT1", minutes=0))
    engine.process(transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2))
    alerts = engine.process(transfer("T3", 400, wallet="HOT3", minutes=4))
    assert "HOT3" in {a.wallet for a in alerts if a.freeze}
    assert ("HOT2" in {a.wallet for a in alerts if a.freeze}) is fleet_frozen
    assert alerts[0].incident_id is not None  # one incident, one page, in every policy
    correlator = engine.correlator
    assert correlator is not None
    assert correlator.lowered(at(4).timestamp())  # and the bar is lowered for the others
    if not fleet_frozen:
        # With a ledger, a wallet not frozen with the fleet is frozen at its own first
        # unapproved payment, however small; without one, 0.5% is under the lowered bar.
        later = engine.process(transfer("T5", 5, wallet="HOT2", minutes=6))
        assert any(a.freeze and a.wallet == "HOT2" for a in later) is ledger
    # After a restart, the rebuilt engine owes the incident's wallets what the policy says.
    rebuilt = DetectionEngine(config, reconcile=ledger)
    rebuilt.replay(
        [
            transfer("T1", 400, wallet="HOT1", minutes=0),
            transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2),
            transfer("T3", 400, wallet="HOT3", minutes=4),
        ]
    )
    owed = {a.wallet for a in rebuilt.take_over()}
    assert ("HOT2" in owed) is fleet_frozen


def test_crowds_freezes_on_three_wallets_are_one_incident_that_lowers_no_bar() -> None:
    # A panic day: on three wallets, customers each take 2.1% to new addresses within minutes,
    # which the large-pair and burst rules freeze. That is a crowd's evidence: it lowers the
    # bar (the third wallet's first such payment is frozen by it), but three such within the
    # half hour come by chance: the rest of the fleet (HOT2, HOT4) is not frozen.
    config = fleet().model_copy(update={"wallets": (*fleet().wallets, wallet("HOT4"))})
    engine = DetectionEngine(config)
    topic: list[Alert] = []
    for minute, hot in enumerate(("HOT1", "0xE0", "HOT3")):
        chain, asset = ("ethereum", "ETH") if hot.startswith("0x") else ("nem", "XEM")
        for i in range(3):
            topic += engine.process(
                transfer(f"C{hot}{i}", 21, wallet=hot, chain=chain, asset=asset, minutes=minute)
            )
    crowd = [a for a in topic if a.freeze and a.detector == "velocity"]
    assert {a.wallet.upper() for a in crowd} == {"HOT1", "0XE0", "HOT3"}
    assert all({"rule_burst", "rule_large_pair"} & a.metrics.keys() for a in crowd)
    assert {a.metrics["incident_level"] for a in crowd} == {"2"}
    assert {a.wallet for a in topic if a.freeze} == {"HOT1", "0xe0", "HOT3"}
    assert crowd[0].incident_id is None  # alone, it was no incident yet
    assert len({a.incident_id for a in crowd[1:]} - {None}) == 1
    correlator = engine.correlator
    assert correlator is not None
    assert not correlator.lowered(at(3).timestamp())
    assert engine.process(transfer("T2", 15, wallet="HOT2", minutes=4)) == []
    # Another replica counts them as this one did.
    reader = DetectionEngine(config, owns=lambda key: False)
    assert [a for alert in topic for a in reader.process_alert(alert)] == []
    assert reader.correlator is not None
    assert not reader.correlator.lowered(at(3).timestamp())
    # Three wallets frozen on one thief's address each (40% at once) do freeze the fleet.
    drained: list[Alert] = []
    for minute, hot in enumerate(("HOT1", "HOT3", "HOT2")):
        drained += engine.process(transfer("THIEF", 400, wallet=hot, minutes=30 + minute))
    assert "HOT4" in {a.wallet for a in drained if a.freeze}


@pytest.mark.parametrize(("share", "freezes_fleet"), [(600, True), (400, False)])
def test_two_wallets_half_emptied_within_minutes_freeze_the_fleet(
    share: int, freezes_fleet: bool
) -> None:
    # Phemex 2025: the thief emptied 80-90% of hot wallet after hot wallet, minutes apart. Two
    # wallets that each lost half or more are frozen with the rest of the fleet at once (HOT2,
    # HOT3 had sent nothing yet); two that lost 40% (whales of that size come, now and then)
    # wait for a third.
    engine = DetectionEngine(fleet())
    first = engine.process(transfer("T1", share, wallet="HOT1", minutes=0))
    assert [a.freeze for a in first] == [True]
    second = engine.process(
        transfer("0xb", share, wallet="0xE0", chain="ethereum", asset="ETH", minutes=3)
    )
    frozen = {a.wallet for a in second if a.freeze}
    assert frozen == ({"0xe0", "HOT2", "HOT3"} if freezes_fleet else {"0xe0"})
    # Another replica, reading the two alerts, comes to the same (it holds HOT2 and HOT3).
    reader = DetectionEngine(fleet(), owns=lambda key: key in {"nem:HOT2", "nem:HOT3"})
    read = [a for alert in [*first, *second] for a in reader.process_alert(alert)]
    assert {a.wallet for a in read if a.freeze} == ({"HOT2", "HOT3"} if freezes_fleet else set())


@pytest.mark.parametrize(("crowded", "fleet_due"), [(2, True), (3, False)])
def test_in_a_market_wide_surge_three_wallets_frozen_on_do_not_freeze_the_fleet(
    crowded: int, fleet_due: bool
) -> None:
    # A panic day: wallets warn of their customers' crowds, then three freeze on their own
    # evidence within half an hour (customers' single large payments: a long tail, balances run
    # down). With three wallets in a crowd that is a market-wide surge: the bar does not drop,
    # and only two wallets that each lost half freeze the fleet.
    c = IncidentCorrelator(window_s=1800)
    for k in range(crowded):
        c.observe(f"eth:W{k}", 300.0, 1, crowd=True)
    c.observe("btc:B", 600.0, 3)
    c.observe("bsc:C", 1000.0, 3)
    c.observe("nem:D", 1800.0, 3)
    assert c.lowered(1800.0) is fleet_due
    assert c.fleet_freeze_due(1800.0) is fleet_due
    # Kept back by the surge, it is said once (fleet_withheld: how many wallets crowd).
    assert c.fleet_withheld(1800.0) == (0 if fleet_due else 3)
    assert c.fleet_withheld(1810.0) == 0
    if not fleet_due:
        c.observe("sol:E", 1900.0, 4)
        assert not c.fleet_freeze_due(1900.0)
        c.observe("xrp:F", 1950.0, 4)
        assert c.fleet_freeze_due(1950.0)
    # Half an hour after the last crowd's finding the surge is over: three freeze the fleet.
    later = IncidentCorrelator(window_s=1800)
    for k in range(3):
        later.observe(f"eth:W{k}", 0.0, 2)  # a crowd's freezes count as a crowd's findings
    for k, key in enumerate(("btc:B", "bsc:C", "nem:D")):
        later.observe(key, 1900.0 + 60 * k, 3)
    assert later.fleet_freeze_due(2020.0)
    # Drained wallets' own crowd's findings make no surge (a thief's payments are many, and
    # mid-size): three wallets that warned so and then froze on their own freeze the fleet.
    drained = IncidentCorrelator(window_s=1800)
    for k, key in enumerate(("btc:B", "bsc:C", "nem:D")):
        drained.observe(key, 300.0, 1, crowd=True)
        drained.observe(key, 600.0 + 60 * k, 3)
    assert drained.fleet_freeze_due(720.0)


class _RateRule(FixedRule):
    """The fixed rule, marked as a rate detector whose freezes stand for their wallet only."""

    drives_incidents: Final = False


@pytest.mark.parametrize("drives", [True, False])
def test_rate_freezes_on_several_wallets_do_not_freeze_the_fleet(drives: bool) -> None:
    # A market-wide withdrawal surge lifts every wallet's rate at once: freezes of a detector
    # that only judges rates (the learned baseline) must not cascade into an incident.
    rule = FixedRule() if drives else _RateRule()
    engine = DetectionEngine(fleet(), detectors=[rule])
    frozen = set()
    for minute, hot in enumerate(("HOT1", "0xE0", "HOT3")):
        chain, asset = ("ethereum", "ETH") if hot.startswith("0x") else ("nem", "XEM")
        alerts = engine.process(
            transfer(f"T{hot}", 400, wallet=hot, chain=chain, asset=asset, minutes=minute)
        )
        frozen |= {a.wallet for a in alerts if a.freeze}
    if drives:
        assert "HOT2" in frozen  # the fleet freeze: HOT2 sent nothing
    else:
        assert frozen == {"HOT1", "0xe0", "HOT3"}  # each wallet for itself, HOT2 untouched
        assert engine.correlator is not None
        assert not engine.correlator.lowered(T0.timestamp() + 300)


def test_the_learned_baseline_does_not_drive_incidents_and_the_exact_rules_do() -> None:
    assert BaselineDetector.drives_incidents is False
    assert getattr(VelocityDetector(), "drives_incidents", True) is True


def test_a_wallet_frozen_by_a_rate_rule_is_not_frozen_again_by_the_incident() -> None:
    engine = DetectionEngine(
        fleet(), detectors=[_RateRule(), FixedRule(name="big", share=Decimal("0.3"))]
    )
    first = engine.process(transfer("A", 100, wallet="HOT1", minutes=0))
    assert [(a.detector, a.freeze) for a in first] == [("fixed_rule", True)]  # local only
    engine.process(transfer("B", 400, wallet="HOT2", minutes=1))
    alerts = engine.process(transfer("C", 400, wallet="HOT3", minutes=2))
    assert alerts, "two wallets frozen on by a driving rule: the incident acts"
    assert "HOT1" not in {a.wallet for a in alerts}  # already frozen: no second request


class Replicas:
    """Two detector replicas splitting a fleet's wallets, each reading the whole alerts topic
    (as ``drainwatch run detect`` does on Kafka): ``send`` gives a transfer to the replica that
    owns its wallet, then shows every new alert to both replicas until nothing more comes."""

    def __init__(self, config: Config, first: set[str], *, share: bool = True) -> None:
        self.share = share
        self.engines = (
            DetectionEngine(config, owns=lambda key: key in first),
            DetectionEngine(config, owns=lambda key: key not in first),
        )
        self.topic: list[Alert] = []
        self.made_by: dict[str, int] = {}
        """alert id -> the replica that made it."""

    def send(self, t: Transfer) -> list[Alert]:
        start = len(self.topic)
        mine = next(i for i, e in enumerate(self.engines) if e.owns(t.key))
        self._publish(mine, self.engines[mine].process(t))
        read = start
        while self.share and read < len(self.topic):
            alert = self.topic[read]
            read += 1
            for i, engine in enumerate(self.engines):
                self._publish(i, engine.process_alert(alert))
        return self.topic[start:]

    def _publish(self, replica: int, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self.made_by[alert.id] = replica
            self.topic.append(alert)


def keys(*names: str) -> set[str]:
    return {w.key for w in fleet().wallets if w.address in names}


@pytest.mark.parametrize("share", [True, False])
def test_two_replicas_make_one_incident_of_a_drain_across_the_wallets_each_holds(
    share: bool,
) -> None:
    # The same drain as above, with HOT1 and HOT3 on one replica and the rest on the other.
    replicas = Replicas(fleet(), keys("HOT1", "HOT3"), share=share)
    sent = [
        transfer("T1", 30, wallet="HOT1", minutes=0),  # a warning
        transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5),
        transfer("T9", 400, wallet="HOT2", minutes=6),
        transfer("T2", 15, wallet="HOT3", minutes=8),
    ]
    replicas.send(sent[0])
    replicas.send(sent[1])
    alerts = replicas.send(sent[2])
    lowered = replicas.send(sent[3])
    frozen = [a.wallet for a in replicas.topic if a.freeze]
    if not share:
        # What each replica saw alone: two frozen wallets on one, a warning on the other.
        assert frozen == ["0xe0", "HOT2"]
        assert lowered == []
        return
    # HOT1 only warned on its replica; the other froze two wallets: HOT1 is frozen, by its own
    # replica, as one engine would have; then 1.5% of HOT3 freezes it, the bar being lowered.
    assert frozen == ["0xe0", "HOT2", "HOT1", "HOT3"]
    member = next(a for a in alerts if a.wallet == "HOT1")
    assert (member.detector, replicas.made_by[member.id]) == ("correlation", 0)
    assert [(a.detector, replicas.made_by[a.id]) for a in lowered] == [("correlation", 0)]
    # Under the incident id one engine gives it (the first warning came before the incident).
    one = DetectionEngine(fleet())
    for t in sent:
        one.process(t)
    assert one.correlator is not None
    expected = one.correlator.incident_of("nem:HOT1", T0.timestamp() + 600)
    assert expected is not None
    assert {a.incident_id for a in replicas.topic[1:]} == {expected}


def test_a_fleet_freeze_is_made_once_per_wallet_by_the_replica_that_holds_it() -> None:
    replicas = Replicas(fleet(), keys("HOT1", "HOT3"))
    replicas.send(transfer("T1", 400, wallet="HOT1", minutes=0))
    replicas.send(transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2))
    replicas.send(transfer("T3", 400, wallet="HOT3", minutes=4))
    freezes = [(a.wallet, replicas.made_by[a.id]) for a in replicas.topic if a.freeze]
    # HOT2 sent nothing: the replica holding it froze it when the third wallet was frozen,
    # on the other replica; nobody froze it twice.
    assert sorted(freezes) == [("0xe0", 1), ("HOT1", 0), ("HOT2", 1), ("HOT3", 0)]
    assert len({a.incident_id for a in replicas.topic[1:]}) == 1
    replicas.send(transfer("T4", 300, wallet="HOT3", minutes=5))
    assert sum(a.freeze and a.wallet == "HOT2" for a in replicas.topic) == 1


@pytest.mark.parametrize("backwards", [False, True])
def test_a_restarted_replica_repeats_only_what_it_said_before_under_the_same_ids(
    backwards: bool,
) -> None:
    replicas = Replicas(fleet(), keys("HOT1", "HOT3"))
    replicas.send(transfer("T1", 30, wallet="HOT1", minutes=0))
    replicas.send(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5))
    replicas.send(transfer("T9", 400, wallet="HOT2", minutes=6))
    assert any(a.freeze and a.wallet == "HOT1" for a in replicas.topic)
    # The first replica restarts: it rebuilds HOT1 and HOT3 from their transfers, and reads
    # the alerts topic again from hours back, in whatever order its partitions come. What it
    # asks again it asks under the ids it used (the alerts stage drops those); and it knows the
    # incident: 1.5% of HOT3 to a new address still freezes it.
    restarted = DetectionEngine(fleet(), owns=replicas.engines[0].owns)
    restarted.replay([transfer("T1", 30, wallet="HOT1", minutes=0)])
    read = reversed(replicas.topic) if backwards else iter(replicas.topic)
    again = [a for alert in read for a in restarted.process_alert(alert)]
    # Read first, its own freeze of HOT1 is remembered; read last, it is asked again.
    assert [a.wallet for a in again] == ([] if backwards else ["HOT1"])
    assert {a.id for a in again} <= {a.id for a in replicas.topic}
    lowered = restarted.process(transfer("T2", 15, wallet="HOT3", minutes=8))
    assert [(a.detector, a.freeze) for a in lowered] == [("correlation", True)]
    assert lowered[0].incident_id == replicas.topic[-1].incident_id


def test_a_freeze_the_crash_cut_off_is_made_when_the_replica_restarts() -> None:
    replicas = Replicas(fleet(), keys("HOT1", "HOT3"))
    replicas.send(transfer("T1", 30, wallet="HOT1", minutes=0))
    replicas.send(transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5))
    replicas.send(transfer("T9", 400, wallet="HOT2", minutes=6))
    member = next(a for a in replicas.topic if a.wallet == "HOT1" and a.freeze)
    # The first replica died after reading HOT2's freeze, before its own freeze of HOT1 was
    # published: on restart it makes that freeze, with the same id, although it reads the
    # alerts in another order and another alert is the one that sets the freeze off.
    published = [a for a in replicas.topic if a is not member]
    restarted = DetectionEngine(fleet(), owns=replicas.engines[0].owns)
    restarted.replay([transfer("T1", 30, wallet="HOT1", minutes=0)])
    again = [a for alert in reversed(published) for a in restarted.process_alert(alert)]
    assert [a.id for a in again] == [member.id]


def test_a_replica_taking_over_a_dead_ones_wallets_freezes_what_the_incident_owes_them() -> None:
    # The first replica (HOT1, HOT2) dies; before the group gives its wallets to the second,
    # three wallets of the second are drained: the fleet freeze comes while nobody holds HOT1
    # and HOT2. The second replica freezes them once it has taken them over.
    config = fleet()
    config = config.model_copy(
        update={"wallets": (*config.wallets, wallet("HOT4"), wallet("HOT5"))}
    )
    mine = {w.key for w in config.wallets if w.address not in ("HOT1", "HOT2")}
    survivor = DetectionEngine(config, owns=lambda key: key in mine)
    alerts = [
        a
        for i, hot in enumerate(("HOT3", "HOT4", "HOT5"))
        for a in survivor.process(transfer(f"T{i}", 400, wallet=hot, minutes=i))
    ]
    # Its own fleet freeze covers only the wallet it holds (the Ethereum one).
    assert sorted(a.wallet for a in alerts if a.freeze) == ["0xe0", "HOT3", "HOT4", "HOT5"]
    taken = {w.key for w in config.wallets if w.address in ("HOT1", "HOT2")}
    mine |= taken
    owed = survivor.take_over()
    assert sorted(a.wallet for a in owed) == ["HOT1", "HOT2"]
    assert all(a.freeze and a.incident_id == alerts[-1].incident_id for a in owed)
    assert survivor.take_over() == []  # once


@pytest.mark.parametrize(("amount", "owed"), [(8, []), (30, ["HOT1"])])
def test_a_replica_taking_over_a_wallet_owes_no_freeze_for_a_crowds_warning(
    amount: int, owed: list[str]
) -> None:
    # HOT1's replica warns of a burst of its customers' mid-size payments (or of 3% to one new
    # address) and dies; two of the other replica's wallets are frozen on before it takes HOT1
    # over. It read the warning off the alerts topic as a crowd's: it owes HOT1 no freeze then,
    # and one for a warning of HOT1's own evidence.
    first = keys("HOT1")
    replicas = Replicas(fleet(), first, share=True)
    for i in range(4 if amount == 8 else 1):
        replicas.send(transfer(f"C{i}", amount, wallet="HOT1", minutes=i))
    survivor = replicas.engines[1]
    survivor.process(
        transfer("0xbad", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=5)
    )
    assert survivor.process(transfer("T9", 400, wallet="HOT2", minutes=6))
    first.clear()  # the survivor holds every wallet now
    assert [a.wallet for a in survivor.take_over()] == owed


def test_a_rebuild_decides_nothing_for_other_wallets_and_take_over_makes_up_for_it() -> None:
    # A rebalance gives the second replica the first one's wallets HOT1 and HOT2, whose last
    # transfers froze them a moment ago; their alerts have not reached it yet. Replaying those
    # transfers completes the fleet freeze's three wallets (with HOT3's, its own), but a replay
    # sends nothing: were the fleet freeze remembered as made, 0xE0 would never be frozen.
    mine = keys("HOT3", "0xe0")
    engine = DetectionEngine(fleet(), owns=lambda key: key in mine)
    engine.process(transfer("T3", 400, wallet="HOT3", minutes=2))
    mine |= keys("HOT1", "HOT2")
    engine.replay(
        [
            transfer("T1", 400, wallet="HOT1", minutes=0),
            transfer("T2", 400, wallet="HOT2", minutes=1),
        ]
    )
    owed = engine.take_over()
    assert [(a.wallet, a.detector, a.freeze) for a in owed] == [("0xe0", "correlation", True)]
