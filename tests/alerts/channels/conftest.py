"""Fixtures: local Slack, PagerDuty and webhook receivers and a real SMTP server, per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.alerts.channels.receivers import (
    MailServer,
    PagerDutyReceiver,
    Receiver,
    pagerduty_receiver,
    slack_receiver,
    webhook_receiver,
)

ROUTING_KEY = "R0UT1NGKEY"
WEBHOOK_SECRET = "whsec-test"


@pytest.fixture
def slack() -> Iterator[Receiver]:
    receiver = slack_receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    receiver = pagerduty_receiver(ROUTING_KEY)
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = webhook_receiver(WEBHOOK_SECRET)
    yield receiver
    receiver.stop()


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    yield server
    server.stop()
