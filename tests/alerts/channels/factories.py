"""Notifications for channel tests."""

from __future__ import annotations

from alerts.channels import Notification, NotificationAction
from alerts.timeline import incident_of
from tests.alerts.conftest import make_alert


def make_notification(
    action: NotificationAction = NotificationAction.TRIGGER,
    channel: str = "test",
    note: str = "",
    **alert_fields: object,
) -> Notification:
    """A notification about ``make_alert(**alert_fields)`` (a critical freeze alert by default)."""
    fields: dict[str, object] = {
        "metrics": {"window_s": "240", "share_of_balance": "0.31", "outflow": "523000000.5"},
        "tx_hashes": ("0xabc1", "0xabc2"),
    }
    fields.update(alert_fields)
    alert = make_alert(**fields)
    return Notification(
        f"{alert.id}/{channel}/{action.value}", channel, action, incident_of(alert), alert, note
    )
