"""The public API of the alerts stage is exactly what ``__all__`` says (convention 6)."""

from __future__ import annotations

import alerts
import alerts.killswitch


def test_alerts_public_api_is_pinned() -> None:
    assert sorted(alerts.__all__) == [
        "ActionKind",
        "ActionRecord",
        "AlertRecord",
        "Alerter",
        "AlertsError",
        "ConsoleNotifier",
        "FreezeDecision",
        "FreezeStore",
        "KillSwitchClient",
        "KillSwitchError",
        "KillSwitchRejectedError",
        "KillSwitchUnavailableError",
        "ServerStartError",
        "Timeline",
        "TimelineEntry",
        "TransferRecord",
        "create_app",
        "format_alert",
        "freeze_decision",
        "incident_of",
        "serve_in_thread",
        "server_port",
        "stop_server",
    ]
    for name in alerts.__all__:
        assert getattr(alerts, name) is not None


def test_killswitch_public_api_is_pinned() -> None:
    assert sorted(alerts.killswitch.__all__) == [
        "DEFAULT_REQUESTER",
        "FreezeList",
        "FreezeRequest",
        "FreezeRequestRecord",
        "FreezeStore",
        "KillSwitchClient",
        "WalletStatus",
        "create_app",
        "serve_in_thread",
        "server_port",
        "stop_server",
    ]


def test_every_error_is_an_alerts_error() -> None:
    from drainwatch.errors import DrainwatchError

    for name in (
        "KillSwitchError",
        "KillSwitchRejectedError",
        "KillSwitchUnavailableError",
        "ServerStartError",
    ):
        assert issubclass(getattr(alerts, name), alerts.AlertsError)
    assert issubclass(alerts.AlertsError, DrainwatchError)
