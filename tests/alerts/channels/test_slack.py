"""Slack incoming webhooks: the exact message format, checked by a local receiver."""

from __future__ import annotations

import pytest

from alerts.channels import (
    ChannelRejectedError,
    ChannelUnavailableError,
    NotificationAction,
    SlackChannel,
    slack_message,
)
from tests.alerts.channels.factories import make_notification
from tests.alerts.channels.receivers import Receiver, free_port


def test_a_trigger_is_a_valid_block_kit_message(slack: Receiver) -> None:
    channel = SlackChannel("sec-slack", slack.url)
    receipt = channel.send(make_notification())
    channel.close()

    assert slack.problems == []
    assert receipt == "HTTP 200 ok"
    [received] = slack.accepted
    body = received.json
    assert body["text"] == (
        "CRITICAL nem-hot: 31% of hot wallet drained in 4 min to 1 new address [FREEZE requested]"
    )
    header, summary, numbers, context = body["blocks"]
    assert header["text"]["text"].startswith(":rotating_light: CRITICAL nem-hot")
    assert summary["text"]["text"] == "*31% of hot wallet drained in 4 min to 1 new address*"
    assert [f["text"] for f in numbers["fields"]] == [
        "*outflow*\n523000000.5",
        "*share_of_balance*\n0.31",
        "*window_s*\n240",
    ]
    assert any(
        "incident `nem:NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ`" in e["text"]
        for e in context["elements"]
    )


def test_updates_and_acknowledgements_say_so(slack: Receiver) -> None:
    channel = SlackChannel("sec-slack", slack.url)
    channel.send(make_notification(NotificationAction.UPDATE))
    channel.send(make_notification(NotificationAction.ACKNOWLEDGE, note="acknowledged by alice"))
    assert slack.problems == []
    update, ack = (r.json for r in slack.accepted)
    assert update["text"].startswith("UPDATE CRITICAL")
    assert ack["text"].startswith("ACKNOWLEDGED CRITICAL")
    assert "acknowledged by alice" in ack["blocks"][1]["text"]["text"]


def test_long_and_hostile_text_stays_within_slack_limits(slack: Receiver) -> None:
    notification = make_notification(
        summary="<!channel> & " + "x" * 5000,
        metrics={f"m{i}": str(i) * 2500 for i in range(15)},
    )
    body = slack_message(notification)
    assert "<!channel>" not in body["blocks"][1]["text"]["text"]
    SlackChannel("s", slack.url).send(notification)
    assert slack.problems == []
    assert len(slack.accepted) == 1


def test_refusals_and_outages_are_told_apart(slack: Receiver) -> None:
    channel = SlackChannel("sec-slack", slack.url)
    slack.fail_next(1, status=404, body=b"no_service")
    with pytest.raises(ChannelRejectedError, match="HTTP 404: no_service"):
        channel.send(make_notification())
    slack.fail_next(1, status=500)
    with pytest.raises(ChannelUnavailableError, match="HTTP 500"):
        channel.send(make_notification())
    slack.fail_next(1, status=429)
    with pytest.raises(ChannelUnavailableError, match="HTTP 429"):
        channel.send(make_notification())


def test_an_unreachable_webhook_is_unavailable_and_its_url_is_not_leaked() -> None:
    secret_url = f"http://127.0.0.1:{free_port()}/services/T000/B000/SECRETTOKEN"
    with pytest.raises(ChannelUnavailableError) as caught:
        SlackChannel("sec-slack", secret_url, timeout_s=2).send(make_notification())
    assert "SECRETTOKEN" not in str(caught.value)
    assert caught.value.channel == "sec-slack"
