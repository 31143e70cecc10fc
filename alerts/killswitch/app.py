"""The kill switch over HTTP (FastAPI), and a helper that serves it from a thread.

Routes (OpenAPI at ``/openapi.json``, both behind credentials like everything but ``/healthz``):

========================================  ==================  =====================================
route                                     permission (roles)  does
========================================  ==================  =====================================
``POST /v1/freezes``                      detector, operator  freeze a wallet now (idempotent); a
                                                              detector's freeze obeys the policy
``POST /v1/freeze-all``                   operator            freeze every known wallet at once
``POST /v1/unfreeze-requests``            operator            ask to lift a freeze
``POST /v1/unfreeze-requests/{id}/approve`` approver          approve; the 2nd distinct approver
                                                              (never the requester) unfreezes
``POST /v1/authorize``                    signer              may this wallet send this now?
``GET /v1/wallets/{chain}/{wallet}``      any                 a wallet's state
``GET /v1/freezes``, ``/v1/unfreeze-requests[/{id}]``, ``/v1/hooks[/{id}]``, ``/v1/audit``,
``/v1/audit/head``, ``/v1/audit/verify``, ``/metrics``: any role
``GET /healthz``                          none                ``{"status": "ok"}``, nothing else
========================================  ==================  =====================================

Authentication (see :mod:`alerts.killswitch.auth`) happens in a middleware before routing, so an
unauthenticated caller learns nothing, not even which routes exist: 401 with an audit entry for a
missing, expired, replayed or wrongly signed request; 403 (audited) for a role without the right;
422 naming the field for a malformed body.

Signers must fail closed: if the kill switch cannot be reached or answers anything but an
explicit allow, do not sign. :class:`alerts.killswitch.signer.SignerClient` does exactly that.

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

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime.
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

import anyio.to_thread
import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.errors import KillSwitchStateError, ServerStartError, UnfreezeRequestError
from alerts.killswitch.audit import AuditEntry, VerifyResult, verify_audit
from alerts.killswitch.auth import (
    HEADER_KEY,
    ApiKey,
    AuthFailure,
    Permission,
    Principal,
    Role,
    verify_bearer,
    verify_signature,
)
from alerts.killswitch.hooks import HookWorker, hook_targets
from alerts.killswitch.metrics import KillSwitchMetrics
from alerts.killswitch.policy import auto_freeze_verdict
from alerts.killswitch.settings import AutoFreezePolicy, KillSwitchSettings, RetrySettings
from alerts.killswitch.store import HookRecord, KillSwitchStore, UnfreezeRequestRecord
from drainwatch.events import FreezeAction, FreezeOrder, Severity, normalize_address, wallet_key

__all__ = [
    "AuthorizeRequest",
    "AuthorizeResponse",
    "FreezeAllRequest",
    "FreezeAllResult",
    "FreezeList",
    "FreezeNotApplied",
    "FreezeRequest",
    "HookView",
    "UnfreezeRequestBody",
    "UnfreezeRequestView",
    "WalletStatus",
    "create_app",
    "serve_in_thread",
    "server_port",
    "stop_server",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
_ALL_ROLES = frozenset(Role)


# -- request and response bodies ----------------------------------------------------------------


class FreezeRequest(BaseModel):
    """The body of ``POST /v1/freezes``. Unknown fields are ignored (tolerant reader)."""

    model_config = ConfigDict(frozen=True)

    chain: str = Field(min_length=1, max_length=64)
    wallet: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=2000)
    alert_id: str | None = Field(default=None, max_length=256)
    requested_by: str = Field(min_length=1, max_length=256)
    severity: Severity | None = None
    """The alert's severity; the automatic-freeze policy reads it (absent: critical)."""


class FreezeNotApplied(BaseModel):
    """A detector's freeze that the policy did not carry out (``dry_run``: it would have)."""

    applied: bool = False
    dry_run: bool
    reason: str


class WalletStatus(BaseModel):
    """A wallet's freeze state: its latest order, if any."""

    frozen: bool
    order: FreezeOrder | None = None


class FreezeList(BaseModel):
    """The orders in force for every frozen wallet."""

    freezes: list[FreezeOrder]


class FreezeAllRequest(BaseModel):
    """The body of ``POST /v1/freeze-all``."""

    reason: str = Field(min_length=1, max_length=2000)
    requested_by: str | None = Field(default=None, min_length=1, max_length=256)


class FreezeAllResult(BaseModel):
    """Every known wallet's freeze order, and how many this call created."""

    freezes: list[FreezeOrder]
    created: int


class UnfreezeRequestBody(BaseModel):
    """The body of ``POST /v1/unfreeze-requests``."""

    chain: str = Field(min_length=1, max_length=64)
    wallet: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=2000)


class ApprovalView(BaseModel):
    """One approval."""

    approver: str
    time: str


class UnfreezeRequestView(BaseModel):
    """An unfreeze request: ``pending``, ``approved`` (unfrozen) or ``superseded``."""

    id: str
    chain: str
    wallet: str
    reason: str
    requested_by: str
    status: str
    approvals: list[ApprovalView]
    approvals_needed: int = 2
    freeze_order_id: str
    unfreeze_order_id: str | None


class UnfreezeRequestList(BaseModel):
    """Every unfreeze request."""

    requests: list[UnfreezeRequestView]


AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,59})(\.[0-9]{1,30})?$"


def _decimal_string(value: object) -> Decimal:
    """An amount: a plain decimal string, at most 60 digits before the point and 30 after.

    >>> _decimal_string("1.5")
    Decimal('1.5')
    >>> _decimal_string(1.5)
    Traceback (most recent call last):
    ...
    ValueError: give the amount as a decimal string, like "1.5"
    """
    if not isinstance(value, str) or not re.fullmatch(AMOUNT_PATTERN, value):
        raise ValueError('give the amount as a decimal string, like "1.5"')
    return Decimal(value)


class AuthorizeRequest(BaseModel):
    """A signer's question: may ``wallet`` send ``amount`` of ``asset`` to ``to`` now?"""

    chain: str = Field(min_length=1, max_length=64)
    wallet: str = Field(min_length=1, max_length=256)
    asset: str = Field(min_length=1, max_length=64)
    amount: Annotated[
        Decimal,
        BeforeValidator(_decimal_string),
        WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN}),
    ]
    """In the asset's units, as a decimal string (a JSON number may have been a float)."""
    to: str = Field(min_length=1, max_length=256)


class AuthorizeResponse(BaseModel):
    """Allow or deny, with the reason. Anything but ``allowed: true`` means do not sign."""

    allowed: bool
    reason: str
    wallet: str


class HookView(BaseModel):
    """One delivery of one order to one hook target (times are unix seconds)."""

    id: str
    target: str
    order_id: str
    wallet: str
    action: FreezeAction
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    delivered_at: float | None
    escalated: bool


class HookList(BaseModel):
    """Every hook delivery."""

    hooks: list[HookView]


class AuditList(BaseModel):
    """A page of the audit log."""

    entries: list[AuditEntry]


class AuditHead(BaseModel):
    """The newest entry's seq and hash: keep it somewhere the kill switch cannot write."""

    seq: int
    hash: str


def _unfreeze_view(record: UnfreezeRequestRecord) -> UnfreezeRequestView:
    return UnfreezeRequestView(
        id=record.id,
        chain=record.chain,
        wallet=record.wallet,
        reason=record.reason,
        requested_by=record.requested_by,
        status=record.status,
        approvals=[
            ApprovalView(approver=a.approver, time=a.time.isoformat()) for a in record.approvals
        ],
        freeze_order_id=record.freeze_order_id,
        unfreeze_order_id=record.unfreeze_order_id,
    )


def _hook_view(record: HookRecord) -> HookView:
    return HookView(
        id=record.id,
        target=record.target,
        order_id=record.order_id,
        wallet=record.key,
        action=record.action,
        status=record.status,
        attempts=record.attempts,
        created_at=record.created_at,
        next_attempt_at=record.next_attempt_at,
        last_status=record.last_status,
        last_error=record.last_error,
        delivered_at=record.delivered_at,
        escalated=record.escalated,
    )


# -- authentication -----------------------------------------------------------------------------


class _Authenticator:
    """Turns a request into a :class:`Principal` or an :class:`AuthFailure` (sync: store I/O)."""

    def __init__(
        self,
        keys: Mapping[str, ApiKey] | None,
        store: KillSwitchStore,
        window_s: int,
        clock: Callable[[], float],
    ) -> None:
        self.keys = keys
        self.store = store
        self.window_s = window_s
        self.clock = clock

    def authenticate(self, method: str, path: str, headers: Headers, body: bytes) -> Principal:
        if self.keys is None:
            return Principal("anonymous", _ALL_ROLES, "none")
        authorization = headers.get("authorization")
        if authorization is not None and headers.get(HEADER_KEY) is None:
            key = verify_bearer(self.keys.values(), authorization)
            return Principal(key.id, key.roles, "bearer")
        verified = verify_signature(
            self.keys, headers, method, path, body, now=self.clock(), window_s=self.window_s
        )
        if not self.store.remember_nonce(verified.key.id, verified.nonce, verified.expires_at):
            raise AuthFailure("replayed nonce", verified.key.id)
        return Principal(verified.key.id, verified.key.roles, "hmac")

    def record_failure(self, failure: AuthFailure, method: str, path: str, client: str) -> None:
        # The claimed key id is attacker-controlled: bound what goes into the log.
        actor = (failure.key_id or "-")[:64]
        self.store.audit(
            "auth_failed",
            actor,
            f"{method} {path[:200]}",
            {"reason": failure.reason, "client": client},
        )
        log.warning(
            "401 %s %s from %s: %s (key %s)", method, path[:200], client, failure.reason, actor
        )


class _AuthMiddleware:
    """Authenticates every request but ``/healthz`` before routing (pure ASGI, body replayed)."""

    def __init__(self, app: ASGIApp, authenticator: _Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > MAX_BODY_BYTES:
                await JSONResponse({"detail": "body too large"}, 413)(scope, receive, send)
                return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        method = scope["method"]
        headers = Headers(scope=scope)
        try:
            principal = await anyio.to_thread.run_sync(
                self.authenticator.authenticate, method, path, headers, body
            )
        except AuthFailure as failure:
            client = scope.get("client") or ("-", 0)
            await anyio.to_thread.run_sync(
                self.authenticator.record_failure, failure, method, path, str(client[0])
            )
            response = JSONResponse(
                {"detail": f"unauthenticated: {failure.reason}"},
                status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# -- the app ------------------------------------------------------------------------------------


def create_app(  # noqa: PLR0915 - the routes are closures over the app's parts
    store: KillSwitchStore,
    token: str | None = None,
    *,
    settings: KillSwitchSettings | None = None,
    publish: Callable[[FreezeOrder], None] | None = None,
    on_hook_result: Callable[[HookRecord], None] | None = None,
    hook_http: httpx.Client | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the kill-switch app over ``store``.

    Args:
        store: The state (SQLite or PostgreSQL); the caller closes it after the server stops.
        token: A bearer token with every role (the single-token mode of earlier versions).
        settings: Keys, budgets, policy, hooks. With neither ``settings`` nor ``token``,
            authentication is OFF (tests and a local demo only; a warning is logged).
        publish: Called with every new order, to put it on the compacted freezes topic; also
            called at startup with every wallet's latest order (idempotent on a compacted topic).
        on_hook_result: Called after every hook attempt with the updated delivery.
        hook_http: The HTTP client hooks are sent with (default: one of the worker's own).
        registry: Where the metrics are registered (default: a registry of this app's own).
        clock: Unix seconds, for the signature window and the hook schedule.
    """
    cfg = settings
    keys: dict[str, ApiKey] | None = None
    if cfg is not None or token is not None:
        keys = cfg.api_keys() if cfg is not None else {}
        if token is not None:
            keys["token"] = ApiKey("token", token.encode(), _ALL_ROLES, bearer=True)
    else:
        log.warning("kill switch authentication is OFF: no keys and no token were given")
    hooks = cfg.hooks if cfg is not None else ()
    policy = cfg.policy if cfg is not None else None
    registry = registry or CollectorRegistry()
    worker = HookWorker(
        store,
        hooks,
        cfg.retry if cfg is not None else RetrySettings(),
        http=hook_http,
        on_result=on_hook_result,
        registry=registry,
        clock=clock,
    )
    ks_metrics = KillSwitchMetrics.of(registry)
    authenticator = _Authenticator(
        keys, store, cfg.signature_window_s if cfg is not None else 300, clock
    )

    def targets(chain: str, wallet: str, action: FreezeAction) -> list[str]:
        return hook_targets(hooks, chain, normalize_address(wallet), action)

    def label_of(chain: str, wallet: str, asset: str | None = None) -> str | None:
        return cfg.label_of(chain, wallet, asset) if cfg is not None else None

    def policy_label(chain: str, wallet: str, policy: AutoFreezePolicy) -> str | None:
        """The label the automatic-freeze policy is checked against: a freeze stops the whole
        address, so any label of a wallet listed once per asset that the policy names."""
        labels = [w.label for w in cfg.entries_of(chain, wallet)] if cfg is not None else []
        return next((x for x in labels if x in policy.labels), label_of(chain, wallet))

    def announce(orders: list[FreezeOrder]) -> None:
        # Only newly created orders come here.
        for order in orders:
            ks_metrics.order_created(order.action)
        if orders:
            worker.notify()
        if publish is None:
            return
        for order in orders:
            try:
                publish(order)
            except Exception as exc:
                # The freeze holds (it is in the store); the topic catches up at the next start.
                log.exception("publishing order %s failed", order.id)
                store.audit(
                    "publish_failed",
                    "killswitch",
                    order.key,
                    {"order": order.id, "error": str(exc)},
                )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if publish is not None:
            for order in await anyio.to_thread.run_sync(store.latest_orders):
                await anyio.to_thread.run_sync(publish, order)
        worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)

    app = FastAPI(
        title="drainwatch kill switch",
        version="2",
        description=(__doc__ or "").split(">>>")[0],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.hook_worker = worker
    app.add_middleware(_AuthMiddleware, authenticator=authenticator)

    def principal(request: Request) -> Principal:
        found: Principal = request.state.principal
        return found

    def needs(*permissions: Permission) -> Callable[[Request], Awaitable[Principal]]:
        # Async, so an allowed request does not pay for a trip through the thread pool.
        async def check(request: Request) -> Principal:
            who = principal(request)
            if not any(who.can(p) for p in permissions):
                await anyio.to_thread.run_sync(
                    store.audit,
                    "forbidden",
                    who.id,
                    f"{request.method} {request.url.path[:200]}",
                    {"roles": sorted(r.value for r in who.roles)},
                )
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"key {who.id} has no role allowed to {request.method} {request.url.path}",
                )
            return who

        return check

    Reader = Annotated[Principal, Depends(needs(Permission.READ))]  # noqa: N806 - a type
    forbidden: dict[int | str, dict[str, Any]] = {
        status.HTTP_403_FORBIDDEN: {"description": "The key's roles do not allow it."}
    }
    unauthenticated: dict[int | str, dict[str, Any]] = {
        status.HTTP_401_UNAUTHORIZED: {
            "description": "Missing, expired, replayed or wrongly signed credentials."
        }
    }
    v1 = APIRouter(prefix="/v1", responses=unauthenticated)

    @v1.post(
        "/freezes",
        status_code=status.HTTP_201_CREATED,
        responses={
            status.HTTP_200_OK: {
                "model": FreezeOrder,
                "description": "The wallet was already frozen: the order in force.",
            },
            status.HTTP_202_ACCEPTED: {
                "model": FreezeNotApplied,
                "description": "A detector's freeze the policy declined (or dry run).",
            },
            **forbidden,
        },
    )
    def freeze(
        request: FreezeRequest,
        response: Response,
        who: Annotated[
            Principal, Depends(needs(Permission.FREEZE_MANUAL, Permission.FREEZE_AUTOMATIC))
        ],
    ) -> Any:
        """Freeze a wallet now. Idempotent: a frozen wallet keeps the order that froze it.

        An operator's freeze is always carried out; a detector's obeys the automatic-freeze policy.
        """
        key = wallet_key(request.chain, normalize_address(request.wallet))
        if not who.can(Permission.FREEZE_MANUAL) and policy is not None:
            verdict = auto_freeze_verdict(
                policy, request.severity, key, policy_label(request.chain, request.wallet, policy)
            )
            if not verdict.freeze:
                store.audit(
                    "freeze_dry_run" if verdict.dry_run else "freeze_declined",
                    who.id,
                    key,
                    {
                        "reason": verdict.reason,
                        "alert_id": request.alert_id,
                        "severity": request.severity,
                    },
                )
                return JSONResponse(
                    FreezeNotApplied(dry_run=verdict.dry_run, reason=verdict.reason).model_dump(),
                    status.HTTP_202_ACCEPTED,
                )
        order, created = store.freeze(
            request.chain,
            request.wallet,
            request.reason,
            alert_id=request.alert_id,
            requested_by=request.requested_by,
            actor=who.id,
            hooks=targets(request.chain, request.wallet, FreezeAction.FREEZE),
            detail={"manual": who.can(Permission.FREEZE_MANUAL)},
        )
        if created:
            announce([order])
        response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return order

    @v1.post("/freeze-all", responses=forbidden)
    def freeze_all(
        request: FreezeAllRequest,
        who: Annotated[Principal, Depends(needs(Permission.FREEZE_ALL))],
    ) -> FreezeAllResult:
        """Exchange-wide emergency: freeze every configured wallet and every wallet ever frozen."""
        wallets: dict[str, tuple[str, str]] = {}
        for w in cfg.wallets if cfg is not None else ():
            wallets[w.key] = (w.chain, w.address)
        for chain, wallet in store.known_wallets():
            wallets.setdefault(wallet_key(chain, wallet), (chain, wallet))
        if not wallets:
            raise HTTPException(status.HTTP_409_CONFLICT, "no wallets are known")
        results = store.freeze_many(
            list(wallets.values()),
            request.reason,
            request.requested_by or who.id,
            actor=who.id,
            hooks_for=targets,
        )
        announce([order for order, created in results if created])
        return FreezeAllResult(
            freezes=[order for order, _ in results], created=sum(c for _, c in results)
        )

    @v1.get("/wallets/{chain}/{wallet}")
    def wallet_status(chain: str, wallet: str, _: Reader) -> WalletStatus:
        """Whether a wallet is frozen, with its latest order."""
        order = store.status(chain, wallet)
        return WalletStatus(
            frozen=order is not None and order.action is FreezeAction.FREEZE, order=order
        )

    @v1.get("/freezes")
    def freezes(_: Reader) -> FreezeList:
        """Every frozen wallet's order in force."""
        return FreezeList(freezes=store.frozen())

    @v1.post(
        "/unfreeze-requests",
        status_code=status.HTTP_201_CREATED,
        responses={
            status.HTTP_409_CONFLICT: {"description": "The wallet is not frozen."},
            **forbidden,
        },
    )
    def request_unfreeze(
        request: UnfreezeRequestBody,
        who: Annotated[Principal, Depends(needs(Permission.UNFREEZE_REQUEST))],
    ) -> UnfreezeRequestView:
        """Ask for a wallet's freeze to be lifted. Nothing changes until two approvals."""
        try:
            record = store.request_unfreeze(request.chain, request.wallet, request.reason, who.id)
        except UnfreezeRequestError as exc:
            raise HTTPException(exc.status_code, exc.reason) from exc
        return _unfreeze_view(record)

    @v1.get("/unfreeze-requests")
    def unfreeze_requests(_: Reader) -> UnfreezeRequestList:
        """Every unfreeze request, oldest first."""
        return UnfreezeRequestList(requests=[_unfreeze_view(r) for r in store.unfreeze_requests()])

    @v1.get(
        "/unfreeze-requests/{request_id}",
        responses={status.HTTP_404_NOT_FOUND: {"description": "No such request."}},
    )
    def unfreeze_request(request_id: str, _: Reader) -> UnfreezeRequestView:
        """One unfreeze request."""
        record = store.unfreeze_request(request_id)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no unfreeze request {request_id}")
        return _unfreeze_view(record)

    @v1.post(
        "/unfreeze-requests/{request_id}/approve",
        responses={
            status.HTTP_403_FORBIDDEN: {
                "description": "Not an approver, or the requester approving their own request."
            },
            status.HTTP_404_NOT_FOUND: {"description": "No such request."},
            status.HTTP_409_CONFLICT: {"description": "The request is no longer pending."},
        },
    )
    def approve(
        request_id: str,
        who: Annotated[Principal, Depends(needs(Permission.UNFREEZE_APPROVE))],
    ) -> UnfreezeRequestView:
        """Approve an unfreeze. The second distinct approver (never the requester) unfreezes."""
        try:
            record, order = store.approve_unfreeze(request_id, who.id, hooks_for=targets)
        except UnfreezeRequestError as exc:
            raise HTTPException(exc.status_code, exc.reason) from exc
        if order is not None:
            announce([order])
        return _unfreeze_view(record)

    @v1.post("/authorize", responses=forbidden)
    def authorize(
        request: AuthorizeRequest,
        who: Annotated[Principal, Depends(needs(Permission.AUTHORIZE))],
    ) -> AuthorizeResponse:
        """Pre-sign check: allow, or deny (frozen, unknown wallet, velocity budget) with a reason.

        An allowed amount counts against the wallet's budgets from now on. Signers must treat
        anything but ``"allowed": true`` in a 200, including no answer at all, as deny.
        """
        started = time.perf_counter()
        verdict = store.authorize(
            chain=request.chain,
            wallet=request.wallet,
            asset=request.asset,
            amount=request.amount,
            recipient=request.to,
            actor=who.id,
            label=label_of(request.chain, request.wallet, request.asset),
            known=cfg.is_known(request.chain, request.wallet) if cfg is not None else True,
            allow_unknown=cfg.allow_unknown_wallets if cfg is not None else True,
            budgets=cfg.budgets if cfg is not None else (),
        )
        ks_metrics.authorized(verdict.allowed, time.perf_counter() - started)
        return AuthorizeResponse(
            allowed=verdict.allowed,
            reason=verdict.reason,
            wallet=wallet_key(request.chain, normalize_address(request.wallet)),
        )

    @v1.get("/hooks")
    def hook_list(_: Reader) -> HookList:
        """Every hook delivery and its state: ``pending``, ``escalated`` or ``delivered``."""
        return HookList(hooks=[_hook_view(h) for h in store.hooks()])

    @v1.get("/hooks/{hook_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "None."}})
    def hook_one(hook_id: str, _: Reader) -> HookView:
        """One hook delivery."""
        record = store.hook(hook_id)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no hook delivery {hook_id}")
        return _hook_view(record)

    @v1.get("/audit")
    def audit(
        _: Reader,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditList:
        """Audit entries with ``seq > after``, oldest first."""
        return AuditList(entries=store.audit_entries(after, limit))

    @v1.get("/audit/head")
    def audit_head(_: Reader) -> AuditHead:
        """The newest entry's seq and hash."""
        seq, digest = store.audit_head()
        return AuditHead(seq=seq, hash=digest)

    @v1.get("/audit/verify")
    def audit_verify(_: Reader) -> VerifyResult:
        """Verify the whole hash chain now."""
        return verify_audit(store)

    app.include_router(v1)

    @app.get("/metrics", response_class=Response, responses=unauthenticated)
    def metrics(_: Reader) -> Response:
        """Prometheus metrics (any role; a read-only bearer key suits a scraper)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness. No credentials needed, and it tells nothing else."""
        return {"status": "ok"}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == status.HTTP_400_BAD_REQUEST:
            # FastAPI's answer to a body that is not even text: malformed like any other, 422.
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": str(exc.detail), "type": "body_invalid"}]},
                status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
            return await http_exception_handler(request, exc)
        # Starlette lists only the first matching route's methods; a path served by several
        # routes (GET and POST /v1/freezes) must list them all.
        allowed: set[str] = set()
        for route in app.router.routes:
            methods = getattr(route, "methods", None)
            if methods and route.matches(request.scope)[0] is not Match.NONE:
                allowed |= set(methods)
        return JSONResponse(
            {"detail": exc.detail},
            exc.status_code,
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @app.exception_handler(KillSwitchStateError)
    async def state_error(_: Request, exc: KillSwitchStateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

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
