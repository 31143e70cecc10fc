"""PagerDuty Events API v2: trigger, acknowledge and resolve, checked by a local receiver."""

from __future__ import annotations

from datetime import datetime

import pytest

from alerts.channels import (
    ChannelRejectedError,
    ChannelUnavailableError,
    NotificationAction,
    PagerDutyChannel,
)
from tests.alerts.channels.conftest import ROUTING_KEY
from tests.alerts.channels.factories import make_notification
from tests.alerts.channels.receivers import PagerDutyReceiver, Receiver, Reply

DEDUP = "drainwatch/nem:NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"


def test_a_trigger_carries_the_documented_payload(pagerduty: PagerDutyReceiver) -> None:
    channel = PagerDutyChannel(
        "oncall", ROUTING_KEY, pagerduty.url, tx_urls={"nem": "https://explorer/tx/{tx_hash}"}
    )
    receipt = channel.send(make_notification())
    channel.close()

    assert pagerduty.problems == []
    assert receipt == f"Event processed dedup_key={DEDUP}"
    event = pagerduty.accepted[0].json
    assert (event["routing_key"], event["event_action"], event["dedup_key"]) == (
        ROUTING_KEY,
        "trigger",
        DEDUP,
    )
    payload = event["payload"]
    assert payload["severity"] == "critical"
    assert payload["source"] == "nem:NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
    assert (payload["component"], payload["group"], payload["class"]) == (
        "nem-hot",
        "nem",
        "velocity",
    )
    assert datetime.fromisoformat(payload["timestamp"]).utcoffset() is not None
    details = payload["custom_details"]
    assert details["metrics"] == {
        "window_s": "240",
        "share_of_balance": "0.31",
        "outflow": "523000000.5",
    }
    assert details["freeze_requested"] is True
    assert event["links"] == [
        {"href": "https://explorer/tx/0xabc1", "text": "tx 0xabc1"},
        {"href": "https://explorer/tx/0xabc2", "text": "tx 0xabc2"},
    ]


def test_acknowledge_and_resolve_carry_only_the_key_and_the_action(
    pagerduty: PagerDutyReceiver,
) -> None:
    channel = PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)
    channel.send(make_notification())
    channel.send(make_notification(NotificationAction.ACKNOWLEDGE, note="acknowledged by alice"))
    assert pagerduty.alerts[0].status == "acknowledged"
    channel.send(make_notification(NotificationAction.RESOLVE))
    assert pagerduty.problems == []
    assert [sorted(r.json) for r in pagerduty.accepted[1:]] == [
        ["dedup_key", "event_action", "routing_key"]
    ] * 2
    assert pagerduty.actions == ["trigger", "acknowledge", "resolve"]
    assert pagerduty.alerts[0].status == "resolved"


def test_updates_of_an_incident_update_one_page(pagerduty: PagerDutyReceiver) -> None:
    channel = PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)
    channel.send(make_notification(id="a1", summary="first"))
    channel.send(make_notification(NotificationAction.UPDATE, id="a2", summary="second"))
    channel.send(make_notification(NotificationAction.ESCALATE, id="a3", summary="third"))
    assert pagerduty.problems == []
    [page] = pagerduty.alerts
    assert [s.split(": ", 1)[1] for s in page.summaries] == [
        "first [FREEZE requested]",
        "second [FREEZE requested]",
        "third [FREEZE requested]",
    ]
    assert page.summaries[1].startswith("UPDATE ")
    assert page.summaries[2].startswith("ESCALATED ")


def test_a_long_summary_is_cut_to_1024_characters(pagerduty: PagerDutyReceiver) -> None:
    PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url).send(
        make_notification(summary="y" * 3000)
    )
    assert pagerduty.problems == []
    assert len(pagerduty.accepted[0].json["payload"]["summary"]) == 1024


def test_only_202_success_is_an_acknowledgement(pagerduty: PagerDutyReceiver) -> None:
    # A 200 "ok" (a proxy, a wrong URL) is not PagerDuty accepting the event.
    not_pagerduty = Receiver(lambda _: [], lambda _: Reply(200, b"ok", "text/plain")).start()
    try:
        with pytest.raises(ChannelUnavailableError, match="not acknowledged: HTTP 200"):
            PagerDutyChannel("oncall", ROUTING_KEY, not_pagerduty.url).send(make_notification())
    finally:
        not_pagerduty.stop()
    with pytest.raises(ChannelRejectedError, match="HTTP 400"):
        PagerDutyChannel("oncall", "WRONGKEY", pagerduty.url).send(make_notification())
    assert pagerduty.problems == ["routing_key: 'WRONGKEY'"]
    pagerduty.fail_next(1, status=429)
    with pytest.raises(ChannelUnavailableError, match="HTTP 429"):
        PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url).send(make_notification())
