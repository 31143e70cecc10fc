"""The alerter against a kill switch whose policy declines or only dry-runs a detector's freeze."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from alerts import ActionKind, Alerter, ConsoleNotifier, HmacCredentials, KillSwitchClient, Timeline
from alerts.killswitch import AutoFreezePolicy
from drainwatch.events import ALERTS, Alert, Severity
from tests.alerts.killswitch.conftest import ETH_HOT, KEYS, ServerFactory, make_settings

T = datetime(2018, 1, 25, 15, 4, tzinfo=UTC)


def _alert(severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(
        id=f"a-{severity.value}",
        time=T,
        detected_at=T,
        chain="ethereum",
        wallet=ETH_HOT,
        severity=severity,
        detector="velocity",
        freeze=True,
        summary="19% of eth-hot drained in 2 min to 1 new address",
    )


def _alerter(url: str, timeline: Timeline) -> Alerter:
    client = KillSwitchClient(
        url, credentials=HmacCredentials("alerts", KEYS["alerts"][0]), attempts=2
    )
    return Alerter(timeline, client, ConsoleNotifier(io.StringIO()), clock=lambda: T)


def test_dry_run_policy_records_a_skip_and_freezes_nothing(servers: ServerFactory) -> None:
    ks = servers.start(make_settings(policy=AutoFreezePolicy(dry_run=True)))
    timeline = Timeline(":memory:")
    outputs = _alerter(ks.url, timeline).handle(ALERTS, _alert())
    assert outputs == []
    assert not ks.store.is_frozen("ethereum", ETH_HOT)
    kinds = [a.action for a in timeline.actions()]
    assert ActionKind.FREEZE_SKIPPED in kinds
    assert ActionKind.FREEZE_ACCEPTED not in kinds
    assert "dry run" in timeline.actions()[-1].detail
    assert timeline.is_processed("a-critical")


def test_policy_below_min_severity_declines_a_warning_freeze(servers: ServerFactory) -> None:
    ks = servers.start(make_settings(policy=AutoFreezePolicy(min_severity=Severity.CRITICAL)))
    timeline = Timeline(":memory:")
    alerter = _alerter(ks.url, timeline)
    assert alerter.handle(ALERTS, _alert(Severity.WARNING)) == []
    assert not ks.store.is_frozen("ethereum", ETH_HOT)
    (order,) = alerter.handle(ALERTS, _alert(Severity.CRITICAL))
    assert ks.store.is_frozen("ethereum", ETH_HOT)
    assert order.event.alert_id == "a-critical"  # type: ignore[attr-defined]
