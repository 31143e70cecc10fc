"""Slack through an incoming webhook: a ``text`` fallback and Block Kit ``blocks``.

Incoming webhooks cannot edit a message, so each update of an incident is a new message that
names the incident; the cooldown keeps them few. Slack answers ``200 ok``.

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     wallet_label="nem-hot", severity=Severity.CRITICAL, detector="velocity", freeze=True,
...     summary="31% drained in 4 min", metrics={"share": "0.31"})
>>> body = slack_message(Notification("n1", "s", NotificationAction.TRIGGER, "nem:nc3b", alert))
>>> body["text"]
'CRITICAL nem-hot: 31% drained in 4 min [FREEZE requested]'
>>> [b["type"] for b in body["blocks"]]
['header', 'section', 'section', 'context']
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx

from alerts.channels.base import Notification, NotificationAction, details, post, title

__all__ = ["SlackChannel", "slack_message"]

_HEADER_MAX: Final = 150
_SECTION_MAX: Final = 3000
_FIELD_MAX: Final = 2000
_FIELDS_MAX: Final = 10

_EMOJI: Final = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Slack's three control characters; everything else in mrkdwn is plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(notification: Notification) -> dict[str, Any]:
    """The JSON body of a Slack incoming-webhook post for a notification (within Slack's limits)."""
    alert = notification.alert
    head = title(notification)
    facts = details(notification)
    numbers = [(k, v) for k, v in facts if k in alert.metrics]
    summary_lines = [f"*{_escape(alert.summary)}*"]
    if notification.note:
        summary_lines.append(_escape(notification.note))
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(f"{_EMOJI[alert.severity.value]} {head}", _HEADER_MAX),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _cut("\n".join(summary_lines), _SECTION_MAX)},
        },
    ]
    if numbers:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{_escape(k)}*\n{_escape(v)}", _FIELD_MAX)}
                    for k, v in numbers[:_FIELDS_MAX]
                ],
            }
        )
    context = [
        f"incident `{_escape(notification.incident_id)}`",
        f"{alert.detector} · alert `{_escape(alert.id)}`",
    ]
    if notification.action is NotificationAction.UPDATE:
        context.append("update of an open incident")
    if alert.tx_hashes:
        context.append("tx " + _escape(", ".join(alert.tx_hashes[:5])))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _cut(c, _FIELD_MAX)} for c in context],
        }
    )
    return {"text": head, "blocks": blocks}


class SlackChannel:
    """Posts to a Slack incoming webhook.

    Args:
        name: The configured channel name.
        url: The webhook URL (a secret: it is never put in an error or a log).
        http: The HTTP client; one is made (and closed by :meth:`close`) when None.
        timeout_s: Per-request timeout of the client made here.
    """

    kind = "slack"

    def __init__(
        self, name: str, url: str, http: httpx.Client | None = None, *, timeout_s: float = 10.0
    ) -> None:
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout_s)

    def send(self, notification: Notification) -> str:
        """Post the message; return Slack's answer (``ok``)."""
        body = json.dumps(slack_message(notification), ensure_ascii=False).encode()
        response = post(self.name, self._http, self.url, body, {})
        return f"HTTP {response.status_code} {response.text[:100]}"

    def close(self) -> None:
        """Close the HTTP client if this channel made it."""
        if self._owns_http:
            self._http.close()
