"""The generic webhook: a JSON envelope signed with HMAC-SHA256 over timestamp and body."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from alerts.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ChannelRejectedError,
    NotificationAction,
    WebhookChannel,
)
from tests.alerts.channels.conftest import WEBHOOK_SECRET
from tests.alerts.channels.factories import make_notification
from tests.alerts.channels.receivers import Receiver


def test_the_body_is_signed_over_timestamp_and_raw_body(webhook: Receiver) -> None:
    channel = WebhookChannel("siem", webhook.url, WEBHOOK_SECRET)
    assert channel.send(make_notification(NotificationAction.UPDATE)) == "HTTP 204"
    assert webhook.problems == []
    [received] = webhook.accepted
    timestamp = received.headers[TIMESTAMP_HEADER.lower()]
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert received.headers[SIGNATURE_HEADER.lower()] == "sha256=" + expected
    body = received.json
    assert (body["action"], body["alert"]["id"], body["alert"]["metrics"]["share_of_balance"]) == (
        "update",
        "alert-1",
        "0.31",
    )


def test_a_wrong_secret_or_a_stale_clock_is_refused(webhook: Receiver) -> None:
    with pytest.raises(ChannelRejectedError, match="HTTP 400"):
        WebhookChannel("siem", webhook.url, "not-the-secret").send(make_notification())
    stale = WebhookChannel(
        "siem", webhook.url, WEBHOOK_SECRET, clock=lambda: datetime(2018, 1, 26, tzinfo=UTC)
    )
    with pytest.raises(ChannelRejectedError):
        stale.send(make_notification())
    assert webhook.accepted == []
    assert len(webhook.problems) == 2
