"""The Alerter against a real kill switch: once-only effects, shadow mode, outage and retry."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from alerts import (
    ActionKind,
    Alerter,
    AlertsError,
    ConsoleNotifier,
    KillSwitchClient,
    KillSwitchUnavailableError,
    Timeline,
)
from drainwatch.bus import EmbeddedBus, TopicPartition
from drainwatch.config import AlertsConfig
from drainwatch.events import ALERTS, FREEZES, FreezeAction, FreezeOrder, decode
from drainwatch.stage import Output, StageLoop
from tests.alerts.conftest import (
    KillSwitchFactory,
    KillSwitchService,
    free_port,
    make_alert,
    make_transfer,
)

NOW = datetime(2018, 1, 26, 3, 0, tzinfo=UTC)
WALLET = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"


def make_alerter(url: str | None, out: io.StringIO, attempts: int = 3) -> Alerter:
    client = KillSwitchClient(url, attempts=attempts, backoff_s=0.01) if url else None
    return Alerter(Timeline(":memory:"), client, ConsoleNotifier(out), clock=lambda: NOW)


def kinds(alerter: Alerter, alert_id: str = "alert-1") -> list[str]:
    return [a.action.value for a in alerter.timeline.actions(alert_id=alert_id)]


def test_a_freeze_alert_freezes_once_however_often_it_arrives(
    killswitch: KillSwitchService,
) -> None:
    out = io.StringIO()
    alerter = make_alerter(killswitch.url, out)
    alert = make_alert()

    first = alerter.handle(ALERTS, alert)
    again = alerter.handle(ALERTS, alert)

    [order] = killswitch.store.orders()
    assert first == [Output(FREEZES, order)]
    assert again == []
    assert len(killswitch.store.requests()) == 1
    assert out.getvalue().count(alert.summary) == 1
    assert "FREEZE" in out.getvalue()
    assert kinds(alerter) == ["notified", "freeze_requested", "freeze_accepted"]
    assert alerter.timeline.accepted_order(alert.id) == order


def test_a_shadow_alert_never_freezes(killswitch: KillSwitchService) -> None:
    out = io.StringIO()
    alerter = make_alerter(killswitch.url, out)
    assert alerter.handle(ALERTS, make_alert(shadow=True)) == []
    assert alerter.handle(ALERTS, make_alert(shadow=True)) == []
    assert killswitch.store.requests() == []
    assert kinds(alerter) == ["notified", "freeze_skipped"]
    assert "FREEZE (shadow, not sent)" in out.getvalue()


def test_alerts_that_do_not_ask_or_cannot_freeze(killswitch: KillSwitchService) -> None:
    with_switch = make_alerter(killswitch.url, io.StringIO())
    assert with_switch.handle(ALERTS, make_alert(id="warn", freeze=False)) == []
    assert kinds(with_switch, "warn") == ["notified"]

    without_switch = make_alerter(None, io.StringIO())
    assert without_switch.handle(ALERTS, make_alert()) == []
    [skipped] = without_switch.timeline.actions(alert_id="alert-1")[1:]
    assert (skipped.action, skipped.detail) == (
        ActionKind.FREEZE_SKIPPED,
        "no kill switch configured",
    )
    assert killswitch.store.requests() == []


def test_kill_switch_down_then_up_freezes_exactly_once(
    killswitch_factory: KillSwitchFactory,
) -> None:
    port = free_port()
    out = io.StringIO()
    alerter = make_alerter(f"http://127.0.0.1:{port}", out, attempts=2)
    alert = make_alert()

    with pytest.raises(KillSwitchUnavailableError) as caught:
        alerter.handle(ALERTS, alert)
    assert isinstance(caught.value, AlertsError)
    assert not alerter.timeline.is_processed(alert.id)
    assert kinds(alerter) == ["notified", "freeze_requested", "freeze_failed"]

    service = killswitch_factory.start(port=port)
    outputs = alerter.handle(ALERTS, alert)
    assert alerter.handle(ALERTS, alert) == []

    [order] = service.store.orders()
    assert outputs == [Output(FREEZES, order)]
    assert len(service.store.requests()) == 1
    assert out.getvalue().count(alert.summary) == 1, "the retry does not page again"
    assert kinds(alerter) == [
        "notified",
        "freeze_requested",
        "freeze_failed",
        "freeze_requested",
        "freeze_accepted",
    ]


def test_a_second_alert_on_a_frozen_wallet_publishes_no_second_order(
    killswitch: KillSwitchService,
) -> None:
    alerter = make_alerter(killswitch.url, io.StringIO())
    [first] = alerter.handle(ALERTS, make_alert(id="alert-1"))
    assert alerter.handle(ALERTS, make_alert(id="alert-2", summary="still draining")) == []
    assert isinstance(first.event, FreezeOrder)
    assert first.event.alert_id == "alert-1"
    assert [r.created for r in killswitch.store.requests()] == [True, False]
    [accepted] = [a for a in alerter.timeline.actions(alert_id="alert-2") if a.order is not None]
    assert "already frozen, by alert alert-1" in accepted.detail


def test_transfers_are_recorded_and_other_events_ignored(killswitch: KillSwitchService) -> None:
    alerter = make_alerter(killswitch.url, io.StringIO())
    transfer = make_transfer()
    assert alerter.handle("drainwatch.transfers.v1", transfer) == []
    [order_output] = alerter.handle(ALERTS, make_alert())
    assert alerter.handle(FREEZES, order_output.event) == []
    entries = alerter.timeline.wallet_timeline("nem", WALLET)
    assert [e.kind for e in entries] == ["transfer", "alert", "action", "action", "action"]


def test_the_stage_loop_does_not_commit_until_the_freeze_is_delivered(
    killswitch_factory: KillSwitchFactory,
) -> None:
    bus = EmbeddedBus(":memory:")
    producer = bus.producer()
    alert = make_alert()
    producer.send(ALERTS, alert.key, alert.to_json())
    producer.flush()
    port = free_port()
    alerter = make_alerter(f"http://127.0.0.1:{port}", io.StringIO(), attempts=2)

    down = StageLoop(bus, [ALERTS], "alerts", alerter.handle, stage="alerts")
    with pytest.raises(AlertsError):
        down.run_once(timeout_s=0.1)
    down.close()
    assert bus.committed("alerts", TopicPartition(ALERTS, 0)) is None

    service = killswitch_factory.start(port=port)
    up = StageLoop(bus, [ALERTS], "alerts", alerter.handle, stage="alerts")
    assert up.run_once(timeout_s=0.1) == 1
    up.close()

    assert bus.committed("alerts", TopicPartition(ALERTS, 0)) == 1
    [published] = bus.read_range(TopicPartition(FREEZES, 0), 0, 10)
    order = decode(FREEZES, published.value, FreezeOrder)
    assert order == service.store.orders()[0]
    assert (order.action, order.alert_id, published.key) == (
        FreezeAction.FREEZE,
        alert.id,
        alert.key,
    )
    assert len(service.store.requests()) == 1


def test_from_config_wires_the_configured_pieces(killswitch: KillSwitchService) -> None:
    out = io.StringIO()
    config = AlertsConfig(
        timeline_path=":memory:", killswitch_url=killswitch.url, killswitch_token=None
    )
    alerter = Alerter.from_config(config, console=ConsoleNotifier(out))
    try:
        alerter.handle(ALERTS, make_alert())
    finally:
        alerter.close()
    assert killswitch.store.is_frozen("nem", WALLET)
    assert make_alert().summary in out.getvalue()
    quiet = Alerter.from_config(AlertsConfig(timeline_path=":memory:", console=False))
    assert (quiet.killswitch, quiet.console) == (None, None)
    quiet.close()
