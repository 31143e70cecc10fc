"""One contract over every channel kind, built from config: deliver, or raise a ChannelError."""

from __future__ import annotations

import pytest

import alerts.channels
from alerts.channels import Channel, ChannelError, build_channel
from drainwatch.config import (
    ChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    WebhookChannelConfig,
)
from tests.alerts.channels.conftest import ROUTING_KEY, WEBHOOK_SECRET
from tests.alerts.channels.factories import make_notification
from tests.alerts.channels.receivers import MailServer, PagerDutyReceiver, Receiver

KINDS = ["slack", "pagerduty", "webhook", "email"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def configured(
    kind: str, slack: Receiver, pagerduty: PagerDutyReceiver, webhook: Receiver, mail: MailServer
) -> tuple[ChannelConfig, int]:
    """The config of a channel of this kind pointing at its receiver, and its delivered count."""
    if kind == "slack":
        return SlackChannelConfig.model_validate({"kind": "slack", "url": slack.url}), 0
    if kind == "pagerduty":
        return PagerDutyChannelConfig.model_validate(
            {"kind": "pagerduty", "routing_key": ROUTING_KEY, "url": pagerduty.url}
        ), 0
    if kind == "webhook":
        return WebhookChannelConfig.model_validate(
            {"kind": "webhook", "url": webhook.url, "secret": WEBHOOK_SECRET}
        ), 0
    return EmailChannelConfig.model_validate(
        {
            "kind": "email",
            "smtp_port": mail.port,
            "sender": "d@example.org",
            "to": ["s@example.org"],
        }
    ), 0


def delivered(
    kind: str, slack: Receiver, pagerduty: PagerDutyReceiver, webhook: Receiver, mail: MailServer
) -> int:
    return {
        "slack": lambda: len(slack.accepted),
        "pagerduty": lambda: len(pagerduty.accepted),
        "webhook": lambda: len(webhook.accepted),
        "email": lambda: len(mail.messages),
    }[kind]()


def test_every_channel_delivers_or_raises(
    kind: str, slack: Receiver, pagerduty: PagerDutyReceiver, webhook: Receiver, mail: MailServer
) -> None:
    config, _ = configured(kind, slack, pagerduty, webhook, mail)
    channel = build_channel("c", config)
    assert isinstance(channel, Channel)
    assert (channel.name, channel.kind) == ("c", kind)

    assert channel.send(make_notification())
    assert delivered(kind, slack, pagerduty, webhook, mail) == 1
    assert slack.problems == pagerduty.problems == webhook.problems == []

    for receiver in (slack, pagerduty, webhook):
        receiver.fail_next(1, status=503)
    mail.handler.fail_data = ["421 4.3.2 shutting down"]
    with pytest.raises(ChannelError) as caught:
        channel.send(make_notification())
    assert caught.value.permanent is False
    assert delivered(kind, slack, pagerduty, webhook, mail) == 1
    channel.close()


def test_the_channels_api_is_pinned() -> None:
    assert sorted(alerts.channels.__all__) == [
        "Channel",
        "ChannelError",
        "ChannelRejectedError",
        "ChannelUnavailableError",
        "DEFAULT_EVENTS_URL",
        "EmailChannel",
        "Notification",
        "NotificationAction",
        "PagerDutyChannel",
        "SIGNATURE_HEADER",
        "SlackChannel",
        "TIMESTAMP_HEADER",
        "WebhookChannel",
        "build_channel",
        "build_channels",
        "email_message",
        "pagerduty_event",
        "sign",
        "slack_message",
        "verify_signature",
        "webhook_body",
    ]


def test_channel_errors_are_alerts_errors() -> None:
    from alerts import AlertsError, ChannelError, ChannelRejectedError, ChannelUnavailableError

    for error in (ChannelError, ChannelRejectedError, ChannelUnavailableError):
        assert issubclass(error, AlertsError)
    assert ChannelRejectedError("c", "r").permanent
    assert not ChannelUnavailableError("c", "r").permanent
