"""PagerDuty through the Events API v2: trigger, acknowledge and resolve one page per incident.

Every notification about an incident carries the same ``dedup_key``, so PagerDuty keeps one alert
and appends later triggers to it: one page, updated. Acknowledge and resolve carry only the
routing key, the dedup key and the action. PagerDuty acknowledges an event with ``202`` and
``{"status": "success", ...}``; anything else is not delivered.

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     wallet_label="nem-hot", severity=Severity.CRITICAL, detector="velocity", freeze=True,
...     summary="31% drained in 4 min", metrics={"share": "0.31"})
>>> event = pagerduty_event(
...     Notification("n1", "oncall", NotificationAction.TRIGGER, "nem:nc3b", alert), "KEY")
>>> event["event_action"], event["dedup_key"], event["payload"]["severity"]
('trigger', 'drainwatch/nem:nc3b', 'critical')
>>> pagerduty_event(
...     Notification("n2", "oncall", NotificationAction.RESOLVE, "nem:nc3b", alert), "KEY")
{'routing_key': 'KEY', 'event_action': 'resolve', 'dedup_key': 'drainwatch/nem:nc3b'}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import httpx

from alerts.channels.base import (
    ChannelUnavailableError,
    Notification,
    NotificationAction,
    post,
    title,
)

__all__ = ["DEFAULT_EVENTS_URL", "PagerDutyChannel", "pagerduty_event"]

DEFAULT_EVENTS_URL: Final = "https://events.pagerduty.com/v2/enqueue"
_SUMMARY_MAX: Final = 1024
_LINKS_MAX: Final = 5

_EVENT_ACTION: Final = {
    NotificationAction.TRIGGER: "trigger",
    NotificationAction.UPDATE: "trigger",
    NotificationAction.ESCALATE: "trigger",
    NotificationAction.ACKNOWLEDGE: "acknowledge",
    NotificationAction.RESOLVE: "resolve",
}


def pagerduty_event(
    notification: Notification, routing_key: str, tx_urls: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Events API v2 body for a notification.

    Args:
        notification: What to send.
        routing_key: The integration key of the PagerDuty service.
        tx_urls: Block-explorer links per chain, with ``{tx_hash}`` in them, for ``links``.
    """
    action = _EVENT_ACTION[notification.action]
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": notification.dedup_key,
    }
    if action != "trigger":
        return event
    alert = notification.alert
    summary = title(notification)
    custom: dict[str, Any] = {
        "incident": notification.incident_id,
        "alert_id": alert.id,
        "wallet": alert.wallet,
        "freeze_requested": alert.freeze,
        "shadow": alert.shadow,
        # Exact decimal strings, as the detector wrote them: never floats.
        "metrics": dict(alert.metrics),
        "tx_hashes": list(alert.tx_hashes),
    }
    if notification.note:
        custom["note"] = notification.note
    event["payload"] = {
        "summary": summary if len(summary) <= _SUMMARY_MAX else summary[: _SUMMARY_MAX - 1] + "…",
        "source": alert.key,
        "severity": alert.severity.value,
        "timestamp": alert.time.isoformat(),
        "component": alert.wallet_label or alert.wallet,
        "group": alert.chain,
        "class": alert.detector,
        "custom_details": custom,
    }
    template = (tx_urls or {}).get(alert.chain)
    if template:
        event["links"] = [
            {"href": template.format(tx_hash=h), "text": f"tx {h}"}
            for h in alert.tx_hashes[:_LINKS_MAX]
        ]
    return event


class PagerDutyChannel:
    """Sends Events API v2 events to one PagerDuty service.

    Args:
        name: The configured channel name.
        routing_key: The service's integration key (a secret).
        url: The events endpoint; tests point it at a local receiver.
        http: The HTTP client; one is made (and closed by :meth:`close`) when None.
        timeout_s: Per-request timeout of the client made here.
        tx_urls: Block-explorer links per chain (``{tx_hash}`` in them).
    """

    kind = "pagerduty"

    def __init__(
        self,
        name: str,
        routing_key: str,
        url: str = DEFAULT_EVENTS_URL,
        http: httpx.Client | None = None,
        *,
        timeout_s: float = 10.0,
        tx_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.routing_key = routing_key
        self.url = url
        self.timeout_s = timeout_s
        self.tx_urls = dict(tx_urls or {})
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout_s)

    def send(self, notification: Notification) -> str:
        """Send the event; return PagerDuty's message and dedup key once it answered 202 success."""
        event = pagerduty_event(notification, self.routing_key, self.tx_urls)
        response = post(self.name, self._http, self.url, json.dumps(event).encode(), {})
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if (
            response.status_code != 202
            or not isinstance(answer, dict)
            or answer.get("status") != "success"
        ):
            raise ChannelUnavailableError(
                self.name,
                f"not acknowledged: HTTP {response.status_code}: {response.text[:300]}",
            )
        return f"{answer.get('message', '')} dedup_key={answer.get('dedup_key', '')}".strip()

    def close(self) -> None:
        """Close the HTTP client if this channel made it."""
        if self._owns_http:
            self._http.close()
