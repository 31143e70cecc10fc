"""Incident correlation across wallets and chains, and the engine's state rebuild."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import pytest

from detectors import BaselineDetector, DetectionEngine, IncidentCorrelator, VelocityDetector
from detectors.evaluate import FixedRule
from drainwatch.config import Config, DetectionConfig
from drainwatch.events import Direction
from tests.detectors.factories import T0, transfer, wallet


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
        incident, others = c.observe("eth:B", 100.0, 2)
        assert others == []  # one frozen wallet does not lower the bar yet
        _, others = c.observe("btc:C", 150.0, 2)
        assert others == ["nem:A"]
        assert incident is not None
        assert c.incident_of("nem:A", 200.0) == incident
        ids.append(incident)
    assert ids[0] == ids[1]


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
    # Once per incident: the next drain transfer does not freeze the fleet again.
    again = engine.process(transfer("T4", 300, wallet="HOT3", minutes=5))
    assert not any(a.freeze and a.wallet == "HOT2" for a in again)


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
