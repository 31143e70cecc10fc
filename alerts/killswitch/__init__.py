"""The built-in kill switch: freeze state (SQLite or PostgreSQL), its authenticated HTTP API
(FastAPI), outbound hooks, a hash-chained audit log, and its clients (httpx; a fail-closed signer).

Run it in-process with ``serve_in_thread(create_app(store, settings=settings), host, port)``, or
from the config with :func:`serve`; verify an audit log with :func:`audit_verify`.
"""

from alerts.killswitch.app import (
    AuthorizeRequest,
    AuthorizeResponse,
    FreezeAllRequest,
    FreezeAllResult,
    FreezeList,
    FreezeNotApplied,
    FreezeRequest,
    HookView,
    UnfreezeRequestBody,
    UnfreezeRequestView,
    WalletStatus,
    create_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from alerts.killswitch.audit import AuditEntry, VerifyResult, verify_audit
from alerts.killswitch.auth import ApiKey, Principal, Role, signed_headers
from alerts.killswitch.client import DEFAULT_REQUESTER, HmacCredentials, KillSwitchClient
from alerts.killswitch.commands import audit_verify, serve
from alerts.killswitch.hooks import HookWorker
from alerts.killswitch.settings import (
    AutoFreezePolicy,
    HookSettings,
    KeySettings,
    KillSwitchSettings,
    RetrySettings,
    VelocityBudget,
    load_killswitch_settings,
    loads_killswitch_settings,
)
from alerts.killswitch.signer import SignerClient, Verdict
from alerts.killswitch.store import (
    FreezeRequestRecord,
    FreezeStore,
    HookRecord,
    KillSwitchStore,
    PostgresStore,
    UnfreezeRequestRecord,
    open_store,
)

__all__ = [
    "DEFAULT_REQUESTER",
    "ApiKey",
    "AuditEntry",
    "AuthorizeRequest",
    "AuthorizeResponse",
    "AutoFreezePolicy",
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
