"""A generic webhook: a JSON body signed with HMAC-SHA256, for a SIEM or your own automation.

Headers: ``X-Drainwatch-Timestamp`` (Unix seconds) and ``X-Drainwatch-Signature``:
``"sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``. A receiver recomputes it over
the raw body with :func:`verify_signature` and rejects old timestamps (replays).

>>> body = b'{"action":"trigger"}'
>>> sig = sign("s3cret", "1700000000", body)
>>> sig
'sha256=...'
>>> verify_signature("s3cret", "1700000000", body, sig, now=1700000100)
True
>>> verify_signature("s3cret", "1700000000", body + b" ", sig, now=1700000100)
False
>>> verify_signature("s3cret", "1700000000", body, sig, now=1700009999)
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import httpx

from alerts.channels.base import Notification, post, title
from alerts.timeline import utc_now

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "sign",
    "verify_signature",
    "webhook_body",
]

SIGNATURE_HEADER: Final = "X-Drainwatch-Signature"
TIMESTAMP_HEADER: Final = "X-Drainwatch-Timestamp"
WEBHOOK_VERSION: Final = 1


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float,
    tolerance_s: float = 300,
) -> bool:
    """Whether a received webhook is authentic and recent (constant-time comparison)."""
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_body(notification: Notification) -> dict[str, Any]:
    """The JSON body: the notification's envelope and the alert as on the alerts topic.

    >>> from datetime import UTC, datetime
    >>> from alerts.channels.base import NotificationAction
    >>> from drainwatch.events import Alert, Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N",
    ...     severity=Severity.CRITICAL, detector="velocity", freeze=True, summary="s")
    >>> b = webhook_body(Notification("n1", "siem", NotificationAction.TRIGGER, "nem:n", a))
    >>> b["action"], b["dedup_key"], b["alert"]["severity"]
    ('trigger', 'drainwatch/nem:n', 'critical')
    """
    return {
        "version": WEBHOOK_VERSION,
        "id": notification.id,
        "action": notification.action.value,
        "incident_id": notification.incident_id,
        "dedup_key": notification.dedup_key,
        "title": title(notification),
        "note": notification.note,
        "alert": json.loads(notification.alert.to_json()),
    }


class WebhookChannel:
    """POSTs signed JSON to a URL.

    Args:
        name: The configured channel name.
        url: Where to POST.
        secret: The HMAC key shared with the receiver.
        http: The HTTP client; one is made (and closed by :meth:`close`) when None.
        timeout_s: Per-request timeout of the client made here.
        clock: Gives the signing time (aware UTC).
    """

    kind = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        http: httpx.Client | None = None,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.clock = clock
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout_s)

    def send(self, notification: Notification) -> str:
        """POST the signed body; any 2xx acknowledges it."""
        body = json.dumps(webhook_body(notification), separators=(",", ":")).encode()
        timestamp = str(int(self.clock().timestamp()))
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        response = post(self.name, self._http, self.url, body, headers)
        return f"HTTP {response.status_code}"

    def close(self) -> None:
        """Close the HTTP client if this channel made it."""
        if self._owns_http:
            self._http.close()
