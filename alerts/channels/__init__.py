"""Notification channels: Slack, PagerDuty, a signed webhook and email, built from the config.

>>> from drainwatch.config import SlackChannelConfig
>>> channel = build_channel("sec-slack", SlackChannelConfig(kind="slack", url="http://127.0.0.1:9"))
>>> channel.kind, isinstance(channel, Channel)
('slack', True)
>>> channel.close()
"""

from __future__ import annotations

from collections.abc import Mapping

from alerts.channels.base import (
    Channel,
    ChannelError,
    ChannelRejectedError,
    ChannelUnavailableError,
    Notification,
    NotificationAction,
)
from alerts.channels.email import EmailChannel, email_message
from alerts.channels.pagerduty import DEFAULT_EVENTS_URL, PagerDutyChannel, pagerduty_event
from alerts.channels.slack import SlackChannel, slack_message
from alerts.channels.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    sign,
    verify_signature,
    webhook_body,
)
from drainwatch.config import (
    ChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    WebhookChannelConfig,
)

__all__ = [
    "DEFAULT_EVENTS_URL",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Channel",
    "ChannelError",
    "ChannelRejectedError",
    "ChannelUnavailableError",
    "EmailChannel",
    "Notification",
    "NotificationAction",
    "PagerDutyChannel",
    "SlackChannel",
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


def build_channel(
    name: str, config: ChannelConfig, *, tx_urls: Mapping[str, str] | None = None
) -> Channel:
    """The channel a ``[alerts.channels.<name>]`` table describes.

    Args:
        name: The table's name.
        config: The table.
        tx_urls: Block-explorer links per chain (``{tx_hash}`` in them), for PagerDuty's links.
    """
    if isinstance(config, SlackChannelConfig):
        return SlackChannel(name, config.url.get_secret_value(), timeout_s=config.timeout_s)
    if isinstance(config, PagerDutyChannelConfig):
        return PagerDutyChannel(
            name,
            config.routing_key.get_secret_value(),
            config.url,
            timeout_s=config.timeout_s,
            tx_urls=tx_urls,
        )
    if isinstance(config, WebhookChannelConfig):
        return WebhookChannel(
            name, config.url, config.secret.get_secret_value(), timeout_s=config.timeout_s
        )
    if isinstance(config, EmailChannelConfig):
        return EmailChannel(
            name,
            config.smtp_host,
            config.smtp_port,
            config.sender,
            config.to,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            starttls=config.starttls,
            timeout_s=config.timeout_s,
        )
    raise TypeError(f"unknown channel config {type(config).__name__}")


def build_channels(
    configs: Mapping[str, ChannelConfig], *, tx_urls: Mapping[str, str] | None = None
) -> dict[str, Channel]:
    """Every configured channel, by name."""
    return {name: build_channel(name, cfg, tx_urls=tx_urls) for name, cfg in configs.items()}
