"""The built-in kill switch over HTTP (FastAPI), and a helper that serves it from a thread.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/freezes``: freeze a wallet. 201 with the new order, 200 with the order already in
  force when the wallet is frozen (idempotent), 422 on a malformed body.
- ``GET /v1/wallets/{chain}/{wallet}``: ``{"frozen": bool, "order": <latest order or null>}``.
- ``GET /v1/freezes``: ``{"freezes": [<order in force>, ...]}`` for every frozen wallet.
- ``GET /healthz``: liveness, never authenticated.

With a token, every ``/v1`` route needs ``Authorization: Bearer <token>`` (401 otherwise). Signed
requests, replay protection, roles and the two-approver unfreeze are later issues; there is no
unfreeze route until then.

>>> import httpx
>>> from alerts.killswitch.store import FreezeStore
>>> server, thread = serve_in_thread(create_app(FreezeStore(":memory:"), token="s3cret"))
>>> http = httpx.Client(base_url=f"http://127.0.0.1:{server_port(server)}")
>>> body = {"chain": "nem", "wallet": "NC3B", "reason": "drain", "requested_by": "ops"}
>>> http.post("/v1/freezes", json=body).status_code
401
>>> auth = {"Authorization": "Bearer s3cret"}
>>> [http.post("/v1/freezes", json=body, headers=auth).status_code for _ in range(2)]
[201, 200]
>>> http.get("/v1/wallets/nem/NC3B", headers=auth).json()["frozen"]
True
>>> http.close(); stop_server(server, thread)
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime,
# and the auth dependency's annotation refers to a local variable.
import hmac
import logging
import threading
import time
from typing import Annotated

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from alerts.errors import ServerStartError
from alerts.killswitch.store import FreezeStore
from drainwatch.events import FreezeAction, FreezeOrder

__all__ = [
    "FreezeList",
    "FreezeRequest",
    "WalletStatus",
    "create_app",
    "serve_in_thread",
    "server_port",
    "stop_server",
]

log = logging.getLogger(__name__)


class FreezeRequest(BaseModel):
    """The body of ``POST /v1/freezes``. Unknown fields are ignored (tolerant reader)."""

    model_config = ConfigDict(frozen=True)

    chain: str = Field(min_length=1)
    wallet: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    alert_id: str | None = None
    requested_by: str = Field(min_length=1)


class WalletStatus(BaseModel):
    """A wallet's freeze state: its latest order, if any."""

    frozen: bool
    order: FreezeOrder | None = None


class FreezeList(BaseModel):
    """The orders in force for every frozen wallet."""

    freezes: list[FreezeOrder]


def create_app(store: FreezeStore, token: str | None = None) -> FastAPI:
    """Build the kill-switch app over ``store``; with ``token``, ``/v1`` needs that bearer token.

    Args:
        store: The freeze state (shared with nothing else that writes).
        token: The bearer token every ``/v1`` request must carry; None turns auth off (tests and
            a local demo only).
    """
    bearer = HTTPBearer(auto_error=False)

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        # Constant-time comparison, so the token cannot be guessed byte by byte from timings.
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(title="drainwatch kill switch", version="1")
    app.state.store = store
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])

    @v1.post(
        "/freezes",
        status_code=status.HTTP_201_CREATED,
        responses={
            status.HTTP_200_OK: {
                "model": FreezeOrder,
                "description": "The wallet was already frozen: the order in force.",
            },
            status.HTTP_401_UNAUTHORIZED: {"description": "Missing or wrong bearer token."},
        },
    )
    def freeze(request: FreezeRequest, response: Response) -> FreezeOrder:
        """Freeze a wallet now. Idempotent: a frozen wallet keeps the order that froze it."""
        order, created = store.freeze(
            request.chain,
            request.wallet,
            request.reason,
            alert_id=request.alert_id,
            requested_by=request.requested_by,
        )
        response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return order

    @v1.get("/wallets/{chain}/{wallet}")
    def wallet_status(chain: str, wallet: str) -> WalletStatus:
        """Whether a wallet is frozen, with its latest order."""
        order = store.status(chain, wallet)
        return WalletStatus(
            frozen=order is not None and order.action is FreezeAction.FREEZE, order=order
        )

    @v1.get("/freezes")
    def freezes() -> FreezeList:
        """Every frozen wallet's order in force."""
        return FreezeList(freezes=store.frozen())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    app.include_router(v1)
    return app


def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 10.0
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``app`` with uvicorn from a daemon thread; return once it accepts connections.

    ``port=0`` picks a free port (see :func:`server_port`). Stop it with :func:`stop_server`.

    Raises:
        ServerStartError: The server did not start (port taken, bad host) within ``timeout_s``.
    """
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def run() -> None:
        # uvicorn installs signal handlers only on the main thread, so this does not steal Ctrl-C.
        try:
            server.run()
        except SystemExit:
            # uvicorn exits on a failed startup (port taken); the waiting loop below reports it.
            log.debug("kill switch server on %s:%d exited during startup", host, port)

    thread = threading.Thread(target=run, name=f"killswitch-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise ServerStartError(f"kill switch server on {host}:{port} did not start")
        if time.monotonic() > deadline:
            stop_server(server, thread)
            raise ServerStartError(f"kill switch server on {host}:{port}: no start in {timeout_s}s")
        time.sleep(0.01)
    return server, thread


def server_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful after ``port=0``)."""
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


def stop_server(server: uvicorn.Server, thread: threading.Thread, timeout_s: float = 10.0) -> None:
    """Shut a server down cleanly (finish in-flight requests), then force it if it lingers."""
    server.should_exit = True
    thread.join(timeout_s)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout_s)
