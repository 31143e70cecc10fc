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
from alerts.console import ConsoleNotifier, format_alert
from alerts.errors import (
    AlertsError,
    KillSwitchError,
    KillSwitchRejectedError,
    KillSwitchUnavailableError,
    ServerStartError,
)
from alerts.killswitch import (
    FreezeStore,
    KillSwitchClient,
    create_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from alerts.timeline import (
    ActionKind,
    ActionRecord,
    AlertRecord,
    Timeline,
    TimelineEntry,
    TransferRecord,
    incident_of,
)

__all__ = [
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
