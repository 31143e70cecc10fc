"""What every notification channel shares: the notification, the Channel protocol, its errors.

A channel turns one :class:`Notification` into one request (a Slack post, a PagerDuty event, a
signed webhook, a mail) and says whether the far end *acknowledged* it. It never retries: the
outbox (:mod:`alerts.delivery`) owns retries, persistently, so a channel outage never blocks the
stage and survives a restart.

Errors::

    AlertsError
    └── ChannelError                  a notification was not acknowledged (carries the channel)
        ├── ChannelUnavailableError   no answer, a timeout, 5xx, 429 or 408: try again later
        └── ChannelRejectedError      refused (other 4xx, a bad PagerDuty answer, SMTP 5xx):
                                      reported undeliverable at once, still retried

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     wallet_label="nem-hot", severity=Severity.CRITICAL, detector="velocity", freeze=True,
...     summary="31% drained in 4 min", metrics={"share": "0.31"})
>>> n = Notification("n1", "oncall", NotificationAction.TRIGGER, "nem:nc3b", alert)
>>> title(n)
'CRITICAL nem-hot: 31% drained in 4 min [FREEZE requested]'
>>> n.dedup_key
'drainwatch/nem:nc3b'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

import httpx

from alerts.errors import AlertsError
from drainwatch.events import Alert

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelRejectedError",
    "ChannelUnavailableError",
    "Notification",
    "NotificationAction",
    "check_http_answer",
    "details",
    "title",
]

_DEDUP_KEY_MAX: Final = 255
RETRYABLE_STATUS: Final = frozenset({408, 425, 429})


class NotificationAction(StrEnum):
    """What a notification tells a channel about an incident's page."""

    TRIGGER = "trigger"
    """The first alert of an incident on this channel: open a page."""
    UPDATE = "update"
    """A later alert of the same incident: the same page, updated (same dedup key)."""
    ESCALATE = "escalate"
    """A critical page nobody acknowledged in time, sent to the escalation channels."""
    ACKNOWLEDGE = "acknowledge"
    """Someone took the incident: PagerDuty stops notifying, other channels are told who."""
    RESOLVE = "resolve"
    """The incident is over: PagerDuty closes the page, other channels are told."""

    @property
    def opens_page(self) -> bool:
        """True for the actions that carry an alert (trigger, update, escalate)."""
        return self in (self.TRIGGER, self.UPDATE, self.ESCALATE)


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for one channel about one incident, as kept in the outbox.

    Attributes:
        id: Deterministic (alert or incident, channel, action), so queueing it twice is a no-op.
        channel: The configured channel name.
        action: What to tell the channel.
        incident_id: The incident; every notification about it shares one dedup key.
        alert: The alert it is about (for acknowledge/resolve: the incident's latest alert).
        note: Who acknowledged or resolved, or why it escalated.
    """

    id: str
    channel: str
    action: NotificationAction
    incident_id: str
    alert: Alert
    note: str = ""

    @property
    def dedup_key(self) -> str:
        """The incident's key on the channel (PagerDuty allows 255 characters)."""
        key = f"drainwatch/{self.incident_id}"
        if len(key) <= _DEDUP_KEY_MAX:
            return key
        return "drainwatch/sha256:" + hashlib.sha256(self.incident_id.encode()).hexdigest()


class ChannelError(AlertsError):
    """A channel did not acknowledge a notification.

    >>> str(ChannelError("sec-slack", "HTTP 500: oops"))
    'channel sec-slack: HTTP 500: oops'
    """

    permanent: bool = False

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"channel {channel}: {reason}")
        self.channel = channel
        self.reason = reason


class ChannelUnavailableError(ChannelError):
    """No answer, or an answer that says "later" (5xx, 429, 408): retried with back-off."""


class ChannelRejectedError(ChannelError):
    """The channel refused the notification; a repeat is unlikely to help until someone acts."""

    permanent = True


@runtime_checkable
class Channel(Protocol):
    """Delivers notifications to one configured destination.

    Attributes:
        name: The configured name (``[alerts.channels.<name>]``).
        kind: ``slack``, ``pagerduty``, ``webhook`` or ``email``.
    """

    name: str
    kind: str

    def send(self, notification: Notification) -> str:
        """Send one notification; return what the far end answered, once it acknowledged it.

        Raises:
            ChannelUnavailableError: Not acknowledged; worth another attempt.
            ChannelRejectedError: Refused.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


_NOTE_PREFIX: Final = {
    NotificationAction.UPDATE: "UPDATE ",
    NotificationAction.ESCALATE: "ESCALATED ",
    NotificationAction.ACKNOWLEDGE: "ACKNOWLEDGED ",
    NotificationAction.RESOLVE: "RESOLVED ",
}


def title(notification: Notification) -> str:
    """One line for a subject, a Slack fallback or a page summary: action, severity, wallet, what.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="ethereum", wallet="0xAB",
    ...     severity=Severity.WARNING, detector="velocity", freeze=False, summary="7% out")
    >>> title(Notification("n", "c", NotificationAction.UPDATE, "ethereum:0xab", a))
    'UPDATE WARNING ethereum:0xab: 7% out'
    """
    alert = notification.alert
    line = (
        f"{_NOTE_PREFIX.get(notification.action, '')}{alert.severity.value.upper()} "
        f"{alert.wallet_label or alert.key}: {alert.summary}"
    )
    if alert.freeze:
        line += " [FREEZE requested, shadow: not sent]" if alert.shadow else " [FREEZE requested]"
    return line


def details(notification: Notification) -> list[tuple[str, str]]:
    """The facts of a notification as (name, value) pairs, the alert's numbers included.

    Numbers stay the exact decimal strings the detector wrote.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N",
    ...     severity=Severity.CRITICAL, detector="velocity", freeze=True, summary="s",
    ...     metrics={"window_s": "240", "share": "0.31"}, tx_hashes=("0x01",))
    >>> dict(details(Notification("n", "c", NotificationAction.TRIGGER, "nem:n", a)))["share"]
    '0.31'
    """
    alert = notification.alert
    pairs = [
        ("incident", notification.incident_id),
        ("wallet", alert.key),
        ("label", alert.wallet_label or ""),
        ("severity", alert.severity.value),
        ("detector", alert.detector),
        (
            "freeze",
            ("requested (shadow: not sent)" if alert.shadow else "requested")
            if alert.freeze
            else "no",
        ),
        ("alert", alert.id),
        ("time", alert.time.isoformat()),
    ]
    pairs += sorted(alert.metrics.items())
    if alert.tx_hashes:
        pairs.append(("tx", ", ".join(alert.tx_hashes)))
    if notification.note:
        pairs.append(("note", notification.note))
    return [(k, v) for k, v in pairs if v]


def check_http_answer(channel: str, response: httpx.Response) -> None:
    """Raise the right :class:`ChannelError` unless the answer is a 2xx.

    >>> req = httpx.Request("POST", "http://x")
    >>> check_http_answer("c", httpx.Response(200, request=req))
    >>> check_http_answer("c", httpx.Response(503, text="busy", request=req))
    Traceback (most recent call last):
    ...
    alerts.channels.base.ChannelUnavailableError: channel c: HTTP 503: busy
    >>> check_http_answer("c", httpx.Response(404, text="no_service", request=req))
    Traceback (most recent call last):
    ...
    alerts.channels.base.ChannelRejectedError: channel c: HTTP 404: no_service
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"HTTP {status}: {response.text[:300]}"
    if status >= 500 or status in RETRYABLE_STATUS:
        raise ChannelUnavailableError(channel, reason)
    raise ChannelRejectedError(channel, reason)


def post(
    channel: str, http: httpx.Client, url: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST a body; a transport failure (refused, timeout) becomes :class:`ChannelUnavailableError`.

    The URL is left out of the error: for Slack it is the secret.
    """
    try:
        response = http.post(
            url, content=body, headers={"Content-Type": "application/json", **headers}
        )
    except httpx.HTTPError as exc:
        raise ChannelUnavailableError(channel, f"{type(exc).__name__}: {exc}") from exc
    check_http_answer(channel, response)
    return response
