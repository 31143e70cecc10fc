"""The alerts stage: tells people, keeps a timeline, and freezes wallets through a kill switch.

Consume the transfers and alerts topics with :class:`Alerter` as the handler of a
:class:`drainwatch.stage.StageLoop`; it publishes the kill switch's orders on the freezes topic.

>>> import io
>>> from drainwatch.bus import EmbeddedBus
>>> from drainwatch.events import ALERTS, TRANSFERS
>>> from drainwatch.stage import StageLoop
>>> alerter = Alerter(Timeline(":memory:"), None, ConsoleNotifier(io.StringIO()))
>>> loop = StageLoop(EmbeddedBus(":memory:"), [TRANSFERS, ALERTS], "alerts", alerter.handle)
>>> loop.run_once(timeout_s=0.01)
0
"""

from alerts.alerter import Alerter, FreezeDecision, freeze_decision
from alerts.channels import ChannelError, ChannelRejectedError, ChannelUnavailableError
from alerts.console import ConsoleNotifier, format_alert
from alerts.delivery import DeliveryWorker, Outbox, OutboxEntry
from alerts.errors import (
    AlertsError,
    KillSwitchError,
    KillSwitchRejectedError,
    KillSwitchStateError,
    KillSwitchUnavailableError,
    ServerStartError,
    UnfreezeRequestError,
)
from alerts.incidents import Incident, IncidentNotFoundError, incidents_from
from alerts.killswitch import (
    FreezeStore,
    HmacCredentials,
    KillSwitchClient,
    KillSwitchSettings,
    SignerClient,
    create_app,
    load_killswitch_settings,
    open_store,
    serve_in_thread,
    server_port,
    stop_server,
    verify_audit,
)
from alerts.report import render_json, render_markdown
from alerts.routing import Route, Router
from alerts.timeline import (
    ActionKind,
    ActionRecord,
    AlertRecord,
    NoteRecord,
    Timeline,
    TimelineEntry,
    TransferRecord,
    incident_of,
)
from alerts.web import create_web_app, incidents_router

__all__ = [
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
