"""Incidents built from a real Timeline: grouping, windows, freeze state, totals, chart data."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from alerts.incidents import (
    Incident,
    IncidentNotFoundError,
    IncidentPolicy,
    balances_before,
    chart_markers,
    find_incident,
    flow_series,
    format_units,
    incidents_from,
)
from alerts.timeline import ActionKind, Timeline
from drainwatch.config import WalletConfig, wallets_by_key
from drainwatch.events import FreezeAction, Severity, TransferStatus
from tests.alerts.incident_data import (
    ETH_WALLET,
    HOT,
    XEM,
    Drain,
    alert,
    at,
    freeze_order,
    record_drain,
    transfer,
)


@pytest.fixture
def timeline() -> Timeline:
    return Timeline(":memory:", clock=lambda: at(30))


@pytest.fixture
def drain(timeline: Timeline) -> Drain:
    return record_drain(timeline)


def _the(incidents: list[Incident], chain: str) -> Incident:
    [found] = [i for i in incidents if i.wallets[0].chain == chain]
    return found


def test_the_drain_is_one_frozen_incident_with_exact_totals(drain: Drain) -> None:
    incidents = incidents_from(drain.timeline)
    assert len(incidents) == 2
    nem = _the(incidents, "nem")

    assert [r.alert.id for r in nem.alerts] == [
        drain.warning.id,
        drain.critical.id,
        drain.repeat.id,
    ]
    assert nem.max_severity is Severity.CRITICAL
    assert nem.title == drain.critical.summary  # the worst alert speaks first
    assert nem.frozen
    assert nem.frozen_wallets == (f"nem:{HOT}",)
    assert nem.frozen_at == at(2.1)
    assert nem.time_to_freeze == timedelta(seconds=126)
    assert nem.freeze_requested
    # 800 + 2,500 (customers in the lead-in) + 10 + 100M + 30M; the in-flight transfer counts
    # once although seen pending then confirmed, the retracted one not at all.
    [total] = nem.totals_out
    assert (total.asset, total.amount_out, total.transfers_out) == ("XEM", 130_003_310 * XEM, 5)
    assert total.text == "130003310 XEM"
    assert nem.usd_out == Decimal("113100008.70")
    assert nem.last_at == at(3.05)
    # Every action is about one of its alerts; none of the other wallet's.
    assert [a.action for a in nem.actions] == [
        ActionKind.NOTIFIED,
        ActionKind.NOTIFIED,
        ActionKind.FREEZE_REQUESTED,
        ActionKind.FREEZE_ACCEPTED,
        ActionKind.FREEZE_ACCEPTED,
    ]
    eth = _the(incidents, "ethereum")
    assert not eth.frozen
    assert not eth.freeze_requested
    assert eth.max_severity is Severity.WARNING
    assert eth.wallets[0].label == "eth-hot-1"


def test_entries_are_in_time_order_causes_first_notes_last(drain: Drain) -> None:
    nem = _the(incidents_from(drain.timeline), "nem")
    drain.timeline.add_note(nem.id, "same instant as the big transfer", author="k", time=at(2))
    nem = _the(incidents_from(drain.timeline), "nem")

    entries = nem.entries
    times = [e.time for e in entries]
    assert times == sorted(times)
    at_two = [e.kind for e in entries if e.time == at(2)]
    assert at_two == ["transfer", "alert", "note"]


def test_unlabelled_alerts_split_on_the_gap(timeline: Timeline) -> None:
    for n, hours in enumerate((0, 5, 12, 12.5)):
        timeline.record_alert(alert(n, hours * 60, Severity.WARNING, f"warning {n}", freeze=False))
    default = incidents_from(timeline)
    assert [len(i.alerts) for i in default] == [2, 2]  # 5 h apart joins, 7 h apart splits
    tight = incidents_from(timeline, IncidentPolicy(gap=timedelta(hours=4)))
    assert [len(i.alerts) for i in tight] == [1, 1, 2]
    # Ids are stable: reading again gives the same ones.
    assert [i.id for i in incidents_from(timeline)] == [i.id for i in default]
    assert default[0].id.startswith("20180125-1502-nem-")


def test_a_labelled_incident_spans_wallets_and_absorbs_nearby_alerts(timeline: Timeline) -> None:
    other = "NBZMQO7ZPBYNBDUR7F75MAKA2S3DHDCIFG775N3D"
    timeline.record_alert(
        alert(1, 0, Severity.CRITICAL, "hot drained", freeze=True, incident_id="coincheck")
    )
    timeline.record_alert(
        alert(
            2, 1, Severity.CRITICAL, "sister wallet", freeze=True, wallet=other,
            incident_id="coincheck",
        )
    )  # fmt: skip
    # The same hot wallet, unlabelled, 20 minutes later: part of the same incident.
    timeline.record_alert(alert(3, 20, Severity.WARNING, "follow-up", freeze=False))
    # ...but not a day later.
    timeline.record_alert(alert(4, 24 * 60, Severity.WARNING, "next day", freeze=False))

    first, second = incidents_from(timeline)
    assert first.id == "coincheck"
    assert {w.address for w in first.wallets} == {HOT, other}
    assert [r.alert.summary for r in first.alerts] == ["hot drained", "sister wallet", "follow-up"]
    assert [r.alert.summary for r in second.alerts] == ["next day"]


def test_two_ids_for_one_incident_with_a_common_wallet_are_one_incident(
    timeline: Timeline,
) -> None:
    # Two detector replicas opened the incident at the same moment and named it differently.
    other = "NBZMQO7ZPBYNBDUR7F75MAKA2S3DHDCIFG775N3D"
    third = "NCXIP5JXP5R3ZCQ7HRFQ2LNFOGQ2ZWOHY4A2I3Q6"
    timeline.record_alert(alert(1, 0, Severity.CRITICAL, "hot", freeze=True, incident_id="a"))
    timeline.record_alert(
        alert(2, 1, Severity.CRITICAL, "sister", freeze=True, wallet=other, incident_id="b")
    )
    timeline.record_alert(alert(3, 2, Severity.CRITICAL, "hot again", freeze=True, incident_id="b"))
    # A labelled incident of other wallets only, at the same time, stays apart.
    timeline.record_alert(
        alert(4, 3, Severity.CRITICAL, "elsewhere", freeze=True, wallet=third, incident_id="c")
    )
    incidents = incidents_from(timeline)
    assert [(i.id, [r.alert.summary for r in i.alerts]) for i in incidents] == [
        ("a", ["hot", "sister", "hot again"]),
        ("c", ["elsewhere"]),
    ]
    assert find_incident(incidents, "b") is incidents[0]


def test_transfers_come_from_the_window_plus_evidence(timeline: Timeline) -> None:
    old_evidence = transfer("0xold", -300, 50)  # 5 h before: outside the 1 h lead-in
    unrelated_old = transfer("0xolder", -200, 60)
    lead_in = transfer("0xlead", -30, 70)
    after = transfer("0xafter", 50, 80)
    later = transfer("0xlater", 100, 85)
    too_late = transfer("0xlate", 200, 90)
    elsewhere = transfer("0xother", 1, 99, wallet="NOTHERWALLET")
    for t in (old_evidence, unrelated_old, lead_in, after, later, too_late, elsewhere):
        timeline.record_transfer(t)
    timeline.record_alert(
        alert(1, 0, Severity.CRITICAL, "s", freeze=False, evidence=(old_evidence,))
    )

    [incident] = incidents_from(timeline)
    assert [r.transfer.tx_hash for r in incident.transfers] == ["0xold", "0xlead", "0xafter"]
    assert incident.evidence_ids == frozenset({old_evidence.id})
    assert incident.window == (at(-60), at(60))
    # The tail is measured from the last action, not only the last alert.
    timeline.record_action(
        ActionKind.NOTIFIED,
        alert(1, 0, Severity.CRITICAL, "s", freeze=False, evidence=(old_evidence,)),
        time=at(45),
        detail="console",
    )
    [incident] = incidents_from(timeline)
    assert [r.transfer.tx_hash for r in incident.transfers] == [
        "0xold",
        "0xlead",
        "0xafter",
        "0xlater",
    ]
    assert incident.window == (at(-60), at(105))


def test_an_unfreeze_leaves_the_incident_unfrozen(drain: Drain) -> None:
    order = freeze_order(drain.critical, 10)
    unfreeze = order.model_copy(update={"id": "unfreeze-1", "action": FreezeAction.UNFREEZE})
    drain.timeline.record_action(
        ActionKind.FREEZE_ACCEPTED, drain.critical, time=at(10), detail="unfreeze", order=unfreeze
    )
    nem = _the(incidents_from(drain.timeline), "nem")
    assert not nem.frozen
    assert nem.frozen_at == at(2.1)  # when it was frozen stays in the record
    kinds = [m.kind for m in chart_markers(nem)]
    assert kinds.count("freeze") == 1  # the same order came back twice: marked once
    assert kinds.count("unfreeze") == 1
    assert kinds.count("alert") == 3


def test_notes_belong_to_their_incident_and_are_append_only(tmp_path: Path) -> None:
    path = tmp_path / "timeline.sqlite3"
    timeline = Timeline(str(path), clock=lambda: at(30))
    drain = record_drain(timeline)
    nem, eth = incidents_from(timeline)
    timeline.add_note(nem.id, "signer halted", author=" kenji ", time=at(8))
    timeline.add_note(eth.id, "market maker confirmed this payout", author="aiko")
    nem, eth = incidents_from(timeline)
    assert [(n.author, n.text, n.time) for n in nem.notes] == [("kenji", "signer halted", at(8))]
    assert [n.text for n in eth.notes] == ["market maker confirmed this payout"]
    assert eth.notes[0].time == at(30)  # defaults to the timeline's clock
    with pytest.raises(ValueError, match="text"):
        timeline.add_note(nem.id, "   ", author="kenji")
    with pytest.raises(ValueError, match="author"):
        timeline.add_note(nem.id, "text", author="")
    timeline.close()

    db = sqlite3.connect(path)
    for statement in ("UPDATE notes SET text = 'nothing happened'", "DELETE FROM notes"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    db.close()
    reopened = Timeline(str(path))
    assert [n.text for n in reopened.notes(nem.id)] == ["signer halted"]
    assert len(reopened.alerts()) == 4
    assert drain.critical.id in {r.alert.id for r in reopened.alerts()}
    reopened.close()


def test_find_incident_by_id_or_unique_prefix(drain: Drain) -> None:
    incidents = incidents_from(drain.timeline)
    nem = _the(incidents, "nem")
    assert find_incident(incidents, nem.id) is nem
    assert find_incident(incidents, "20180125") is nem
    with pytest.raises(IncidentNotFoundError, match="candidates"):
        find_incident(incidents, "2018")
    with pytest.raises(IncidentNotFoundError, match="no incident matches 'nope'"):
        find_incident(incidents, "nope")


def test_flow_series_uses_the_balance_read_on_chain(drain: Drain) -> None:
    nem = _the(incidents_from(drain.timeline), "nem")
    [series] = flow_series(nem)
    assert series.balance_source == "chain"
    assert series.asset == "XEM"
    values = [
        (p.outflow // XEM, None if p.balance is None else p.balance // XEM) for p in series.points
    ]
    assert values == [
        (0, 523_002_810),
        (800, 523_002_010),
        (3_300, 522_999_510),
        (3_310, 522_999_500),
        (100_003_310, 422_999_500),
        (130_003_310, 392_999_500),
    ]


def test_flow_series_falls_back_to_the_alerts_balance(drain: Drain) -> None:
    eth = _the(incidents_from(drain.timeline), "ethereum")
    [series] = flow_series(eth)
    assert series.balance_source == "alert"
    last = series.points[-1]
    assert format_units(last.outflow, 18) == "42"
    assert last.balance is not None
    assert format_units(last.balance, 18) == "658"


def test_flow_series_falls_back_to_the_opening_balance(timeline: Timeline) -> None:
    # No balance on chain, none in the alert: the configured opening balance, carried over the
    # wallet's earlier history, gives the balance.
    timeline.record_transfer(transfer("0xdeposit", -600, 500, direction="in"))
    timeline.record_transfer(transfer("0xwithdrawal", -300, 100))
    drained = transfer("0xdrain", 0, 900)
    timeline.record_transfer(drained)
    timeline.record_alert(alert(1, 0, Severity.CRITICAL, "s", freeze=True, evidence=(drained,)))
    [incident] = incidents_from(timeline)
    assert flow_series(incident)[0].balance_source == "unknown"
    assert flow_series(incident)[0].points[-1].balance is None

    hot = WalletConfig(chain="nem", address=HOT, opening_balance=Decimal("1000"))
    before = balances_before(timeline, incident, wallets_by_key([hot]))
    assert before == {(f"nem:{HOT}", "XEM"): 1_400 * XEM}
    [series] = flow_series(incident, before)
    assert series.balance_source == "opening"
    assert [p.balance for p in series.points] == [1_400 * XEM, 500 * XEM]


def test_flow_series_of_a_wallet_holding_two_assets_takes_each_balance_from_its_own_alert(
    timeline: Timeline,
) -> None:
    # The XEM drain and a TOK drain of one wallet; each alert names its asset.
    xem, tok = transfer("0xx", 0, 900), transfer("0xt", 1, 40, asset="TOK", decimals=0)
    for t in (xem, tok):
        timeline.record_transfer(t)
    for n, (t, before) in enumerate(((xem, "5000"), (tok, "100"))):
        metrics = {"asset": t.asset, "balance_before": before, "balance_known": "1"}
        timeline.record_alert(
            alert(n, n, Severity.CRITICAL, "s", freeze=n == 0, evidence=(t,), metrics=metrics)
        )
    [incident] = incidents_from(timeline)
    series = {s.asset: s for s in flow_series(incident)}
    assert {a: s.balance_source for a, s in series.items()} == {"XEM": "alert", "TOK": "alert"}
    assert [p.balance for p in series["XEM"].points] == [5_000 * XEM, 4_100 * XEM]
    assert [p.balance for p in series["TOK"].points] == [100, 60]


def test_a_wallet_listed_per_asset_is_one_wallet_of_the_incident_with_both_labels(
    timeline: Timeline,
) -> None:
    xem, tok = transfer("0xx", 0, 900), transfer("0xt", 1, 40, asset="TOK", decimals=0)
    for n, (t, label) in enumerate(((xem, "nem-hot"), (tok, "tok-hot"), (xem, "nem-hot"))):
        timeline.record_transfer(t)
        metrics = {"asset": t.asset}
        timeline.record_alert(
            alert(n, n, Severity.CRITICAL, "s", freeze=False, evidence=(t,), metrics=metrics,
                  label=label)
        )  # fmt: skip
    [incident] = incidents_from(timeline)
    assert [w.name for w in incident.wallets] == ["nem-hot / tok-hot"]


def test_wei_amounts_stay_exact(timeline: Timeline) -> None:
    huge = 10**30 + 1  # more digits than a float or a default Decimal context keeps
    for n in range(3):
        timeline.record_transfer(
            transfer(
                f"0x{n}", n, 0, wallet=ETH_WALLET, chain="ethereum", asset="ETH", decimals=18
            ).model_copy(update={"amount": huge})
        )
    timeline.record_alert(
        alert(1, 2, Severity.CRITICAL, "s", freeze=True, wallet=ETH_WALLET, chain="ethereum")
    )
    [incident] = incidents_from(timeline)
    [total] = incident.totals_out
    assert total.amount_out == 3 * huge
    assert format_units(total.amount_out, 18) == "3000000000000.000000000000000003"


def test_a_retraction_recorded_before_the_incident_is_read_still_counts(timeline: Timeline) -> None:
    t = transfer("0xr", 0, 10)
    timeline.record_transfer(t)
    timeline.record_transfer(t.model_copy(update={"status": TransferStatus.RETRACTED}))
    timeline.record_alert(alert(1, 0, Severity.WARNING, "s", freeze=False, evidence=(t,)))
    [incident] = incidents_from(timeline)
    assert incident.totals_out == ()
    assert len(incident.transfers) == 2  # both records stay visible
