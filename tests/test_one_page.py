"""A fleet drain, judged by the detection engine, reaches the on-call person as one page, and
the responders' timeline as one incident.

The engine names no incident in the first drained wallet's alert (there is none yet); the
incident that the second wallet opens names the first among its wallets, and the alerts stage
joins it to the first wallet's page. The fleet freeze's alerts update that page too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alerts import Timeline
from alerts.channels import PagerDutyChannel
from alerts.incidents import incidents_from
from alerts.routing import Route
from detectors.engine import DetectionEngine
from drainwatch.events import ALERTS, Alert, Severity
from tests.alerts.channels.receivers import PagerDutyReceiver, pagerduty_receiver
from tests.alerts.test_delivery import ROUTING_KEY, make_rig
from tests.detectors.factories import transfer
from tests.detectors.test_correlation import fleet


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    receiver = pagerduty_receiver(ROUTING_KEY)
    yield receiver
    receiver.stop()


def fleet_drain() -> list[Alert]:
    engine = DetectionEngine(fleet())
    return [
        *engine.process(transfer("T1", 400, wallet="HOT1", minutes=0)),
        *engine.process(
            transfer("0xb", 400, wallet="0xE0", chain="ethereum", asset="ETH", minutes=2)
        ),
        *engine.process(transfer("T3", 400, wallet="HOT3", minutes=4)),
    ]


def test_a_fleet_drain_is_one_page(pagerduty: PagerDutyReceiver) -> None:
    alerts = fleet_drain()
    assert alerts[0].incident_id is None  # the first wallet, paged before any incident
    named = {a.incident_id for a in alerts} - {None}
    assert len(named) == 1
    frozen = {a.wallet for a in alerts if a.freeze}
    assert frozen == {"HOT1", "0xe0", "HOT2", "HOT3"}

    rig = make_rig(
        {"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)},
        [Route(Severity.CRITICAL, (), ("oncall",))],
    )
    for alert in alerts:
        rig.alerter.handle(ALERTS, alert)
    rig.worker.run_once()
    assert len(pagerduty.alerts) == 1, [a.dedup_key for a in pagerduty.alerts]
    assert pagerduty.alerts[0].dedup_key == f"drainwatch/{alerts[0].key}"
    summaries = " | ".join(pagerduty.alerts[0].summaries)
    for label in ("HOT2", "HOT3"):
        assert label.lower() in summaries.lower(), summaries


def test_a_fleet_drain_is_one_incident_in_the_timeline() -> None:
    # The first wallet's alerts name no incident; the incident's alerts name it among their
    # wallets, and the timeline puts them together.
    timeline = Timeline(":memory:")
    for alert in fleet_drain():
        timeline.record_alert(alert)
    [incident] = incidents_from(timeline)
    assert {w.key for w in incident.wallets} == {
        "nem:HOT1",
        "ethereum:0xe0",
        "nem:HOT2",
        "nem:HOT3",
    }
