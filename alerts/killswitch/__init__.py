"""The built-in kill switch: freeze state (SQLite), its HTTP API (FastAPI) and a client (httpx).

Run it in-process with ``serve_in_thread(create_app(FreezeStore(path), token), host, port)``.
"""

from alerts.killswitch.app import (
    FreezeList,
    FreezeRequest,
    WalletStatus,
    create_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from alerts.killswitch.client import DEFAULT_REQUESTER, KillSwitchClient
from alerts.killswitch.store import FreezeRequestRecord, FreezeStore

__all__ = [
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
