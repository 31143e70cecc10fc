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
        "ChannelError",
        "ChannelRejectedError",
        "ChannelUnavailableError",
        "ConsoleNotifier",
        "DeliveryWorker",
        "FreezeDecision",
        "FreezeStore",
        "HmacCredentials",
        "Incident",
        "IncidentNotFoundError",
        "KillSwitchClient",
        "KillSwitchError",
        "KillSwitchRejectedError",
        "KillSwitchSettings",
        "KillSwitchStateError",
        "KillSwitchUnavailableError",
        "NoteRecord",
        "Outbox",
        "OutboxEntry",
        "Route",
        "Router",
        "ServerStartError",
        "SignerClient",
        "Timeline",
        "TimelineEntry",
        "TransferRecord",
        "UnfreezeRequestError",
        "create_app",
        "create_web_app",
        "format_alert",
        "freeze_decision",
        "incident_of",
        "incidents_from",
        "incidents_router",
        "load_killswitch_settings",
        "open_store",
        "render_json",
        "render_markdown",
        "serve_in_thread",
        "server_port",
        "stop_server",
        "verify_audit",
    ]
    for name in alerts.__all__:
        assert getattr(alerts, name) is not None


def test_killswitch_public_api_is_pinned() -> None:
    assert sorted(alerts.killswitch.__all__) == [
        "ApiKey",
        "AuditEntry",
        "AuthorizeRequest",
        "AuthorizeResponse",
        "AutoFreezePolicy",
        "DEFAULT_REQUESTER",
        "FreezeAllRequest",
        "FreezeAllResult",
        "FreezeList",
        "FreezeNotApplied",
        "FreezeRequest",
        "FreezeRequestRecord",
        "FreezeStore",
        "HmacCredentials",
        "HookRecord",
        "HookSettings",
        "HookView",
        "HookWorker",
        "KeySettings",
        "KillSwitchClient",
        "KillSwitchSettings",
        "KillSwitchStore",
        "PostgresStore",
        "Principal",
        "RetrySettings",
        "Role",
        "SignerClient",
        "UnfreezeRequestBody",
        "UnfreezeRequestRecord",
        "UnfreezeRequestView",
        "VelocityBudget",
        "Verdict",
        "VerifyResult",
        "WalletStatus",
        "audit_verify",
        "create_app",
        "load_killswitch_settings",
        "loads_killswitch_settings",
        "open_store",
        "serve",
        "serve_in_thread",
        "server_port",
        "signed_headers",
        "stop_server",
        "verify_audit",
    ]
    for name in alerts.killswitch.__all__:
        assert getattr(alerts.killswitch, name) is not None


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
