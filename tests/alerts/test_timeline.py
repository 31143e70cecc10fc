"""The timeline: append-only records, de-duplication by id, per-wallet queries in time order."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerts import ActionKind, ActionRecord, AlertRecord, Timeline, TransferRecord
from drainwatch.events import FreezeAction, FreezeOrder, TransferStatus
from tests.alerts.conftest import T0, make_alert, make_transfer

WALLET = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
RECORDED = datetime(2018, 1, 26, 3, 30, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def timeline() -> Timeline:
    return Timeline(":memory:", clock=lambda: RECORDED)


def test_an_alert_id_is_recorded_once(timeline: Timeline) -> None:
    alert = make_alert()
    assert timeline.record_alert(alert) is True
    assert timeline.record_alert(alert.model_copy(update={"summary": "changed"})) is False
    [record] = timeline.alerts()
    assert record.alert == alert
    assert record.recorded_at == RECORDED


def test_a_retraction_is_recorded_next_to_the_transfer_it_undoes(timeline: Timeline) -> None:
    transfer = make_transfer()
    retraction = transfer.model_copy(update={"status": TransferStatus.RETRACTED})
    assert timeline.record_transfer(transfer) is True
    assert timeline.record_transfer(transfer) is False
    assert timeline.record_transfer(retraction) is True
    assert [r.transfer.status for r in timeline.transfers(WALLET)] == [
        TransferStatus.CONFIRMED,
        TransferStatus.RETRACTED,
    ]


def test_the_wallet_timeline_is_in_event_time_order(timeline: Timeline) -> None:
    # Written out of order on purpose: the query must sort by event time, not by insertion.
    late_alert = make_alert(id="a2", time=at(4), detected_at=at(5))
    timeline.record_alert(late_alert)
    timeline.record_action(ActionKind.NOTIFIED, late_alert, time=at(6), detail="console")
    timeline.record_transfer(make_transfer(tx_hash="0x04", time=at(4)))
    timeline.record_transfer(make_transfer(tx_hash="0x01", time=at(0)))
    early_alert = make_alert(id="a1", time=at(1), detected_at=at(1))
    timeline.record_alert(early_alert)
    # Other wallets, and the same address on another chain, stay out.
    timeline.record_transfer(make_transfer(tx_hash="0x02", wallet="NOTHER", time=at(2)))
    timeline.record_alert(make_alert(id="a3", chain="nem-testnet", time=at(2)))

    entries = timeline.wallet_timeline("nem", WALLET)

    described = [
        (
            type(e).__name__,
            e.time,
            e.transfer.tx_hash
            if isinstance(e, TransferRecord)
            else e.alert.id
            if isinstance(e, AlertRecord)
            else e.action.value,
        )
        for e in entries
    ]
    assert described == [
        ("TransferRecord", at(0), "0x01"),
        ("AlertRecord", at(1), "a1"),
        ("TransferRecord", at(4), "0x04"),  # the cause before the alert of the same instant
        ("AlertRecord", at(4), "a2"),
        ("ActionRecord", at(6), "notified"),
    ]


def test_queries_filter_by_wallet_and_chain(timeline: Timeline) -> None:
    mine = make_alert(id="a1")
    other = make_alert(id="a2", wallet="NOTHER")
    for alert in (mine, other):
        timeline.record_alert(alert)
        timeline.record_action(ActionKind.NOTIFIED, alert, time=at(1), detail="console")
    assert [r.alert.id for r in timeline.alerts(WALLET)] == ["a1"]
    assert [r.alert.id for r in timeline.alerts()] == ["a1", "a2"]
    assert [r.alert.id for r in timeline.alerts(WALLET, chain="bitcoin")] == []
    assert [r.alert_id for r in timeline.actions("NOTHER")] == ["a2"]
    assert [r.alert_id for r in timeline.actions(alert_id="a1")] == ["a1"]


def test_evm_addresses_are_matched_in_any_case(timeline: Timeline) -> None:
    alert = make_alert(chain="ethereum", wallet="0xAbCdEf0000000000000000000000000000000001")
    timeline.record_alert(alert)
    assert len(timeline.alerts("0xABCDEF0000000000000000000000000000000001")) == 1


def test_actions_carry_incident_and_freeze_order(timeline: Timeline) -> None:
    grouped = make_alert(id="a1", incident_id="incident-7")
    alone = make_alert(id="a2")
    order = FreezeOrder(
        id="o1",
        time=at(2),
        chain="nem",
        wallet=WALLET,
        action=FreezeAction.FREEZE,
        reason="drain",
        requested_by="drainwatch-alerts",
        alert_id="a1",
    )
    timeline.record_alert(grouped)
    written = timeline.record_action(
        ActionKind.FREEZE_ACCEPTED, grouped, time=at(2), detail="order o1", order=order
    )
    timeline.record_action(ActionKind.NOTIFIED, alone, time=at(3), detail="console")
    [read, other] = timeline.actions(WALLET)
    assert read == written
    assert isinstance(read, ActionRecord)
    assert read.order == order
    assert (read.incident_id, other.incident_id) == ("incident-7", f"nem:{WALLET}")
    assert timeline.alerts()[0].incident_id == "incident-7"
    assert timeline.accepted_order("a1") == order
    assert timeline.accepted_order("a2") is None
    assert timeline.has_action("a2", ActionKind.NOTIFIED)
    assert not timeline.has_action("a2", ActionKind.FREEZE_ACCEPTED)


def test_everything_survives_a_reopen_and_cannot_be_rewritten(tmp_path: Path) -> None:
    path = str(tmp_path / "timeline.sqlite3")
    first = Timeline(path)
    alert = make_alert()
    first.record_alert(alert)
    first.record_transfer(make_transfer())
    first.mark_processed(alert.id)
    first.close()

    again = Timeline(path)
    assert again.is_processed(alert.id)
    assert not again.is_processed("another")
    assert again.record_alert(alert) is False
    assert len(again.wallet_timeline("nem", WALLET)) == 2
    again.close()

    db = sqlite3.connect(path)
    for statement in ("UPDATE alerts SET severity = 'info'", "DELETE FROM transfers"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    db.close()


def test_times_are_aware_utc_and_a_naive_clock_is_refused() -> None:
    tz9 = Timeline(":memory:", clock=lambda: datetime(2018, 1, 26, 12, tzinfo=UTC))
    tz9.record_alert(make_alert())
    [record] = tz9.alerts()
    assert record.recorded_at.tzinfo is UTC
    assert record.time == T0
    naive = Timeline(":memory:", clock=lambda: datetime(2018, 1, 26, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        naive.record_alert(make_alert())
