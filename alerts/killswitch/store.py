"""The kill switch's state: freezes, unfreeze approvals, spending, nonces, hook outbox, audit log.

Two backends behind one Protocol, :class:`KillSwitchStore`: :class:`FreezeStore` (SQLite, the
default) and :class:`PostgresStore` (``postgresql://`` DSNs). Both run the same SQL through
:class:`_SqlStore`; only the schema, the placeholders and how a write locks differ.

Every change is one transaction with its audit entry (and, for a new order, its hook deliveries),
so the log, the state and the outbox never disagree, even across a crash. Orders, requests and the
audit log are append-only (triggers refuse UPDATE and DELETE). A wallet's state is its latest order.
Freezing is idempotent: a freeze of a frozen wallet creates nothing and returns the order in force.

>>> from datetime import UTC, datetime
>>> store = FreezeStore(":memory:", clock=lambda: datetime(2018, 1, 26, 3, 0, tzinfo=UTC))
>>> first, created = store.freeze("nem", "NC3B", "drain", alert_id="a1", requested_by="alerts")
>>> created, store.is_frozen("nem", "NC3B")
(True, True)
>>> again, created = store.freeze("nem", "NC3B", "drain again", alert_id="a2", requested_by="ops")
>>> created, again == first, len(store.requests()), len(store.audit_entries())
(False, True, 2, 2)
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Protocol

from alerts.errors import KillSwitchStateError, UnfreezeRequestError
from alerts.killswitch.audit import GENESIS, AuditEntry, chain_entry
from alerts.killswitch.policy import (
    AuthorizeVerdict,
    BudgetUse,
    authorize_verdict,
    budgets_for,
)
from alerts.killswitch.settings import VelocityBudget
from alerts.timeline import to_iso, utc_now
from drainwatch.events import (
    FREEZES,
    FreezeAction,
    FreezeOrder,
    decode,
    event_id,
    normalize_address,
    wallet_key,
)
from drainwatch.sqlite import open_sqlite

__all__ = [
    "Approval",
    "FreezeRequestRecord",
    "FreezeStore",
    "HookRecord",
    "HookStatus",
    "KillSwitchStore",
    "PostgresStore",
    "UnfreezeRequestRecord",
    "open_store",
]

APPROVALS_NEEDED = 2

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, key TEXT NOT NULL, action TEXT NOT NULL, time TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_key ON orders (key, seq);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    alert_id TEXT, requested_by TEXT NOT NULL, created INTEGER NOT NULL, order_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT NOT NULL, nonce TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE TABLE IF NOT EXISTS unfreeze_requests (
    id TEXT PRIMARY KEY, time TEXT NOT NULL, chain TEXT NOT NULL, wallet TEXT NOT NULL,
    key TEXT NOT NULL, reason TEXT NOT NULL, requested_by TEXT NOT NULL, status TEXT NOT NULL,
    freeze_order_id TEXT NOT NULL, unfreeze_order_id TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    request_id TEXT NOT NULL, approver TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS spends (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, label TEXT, asset TEXT NOT NULL,
    amount TEXT NOT NULL, at REAL NOT NULL, recipient TEXT NOT NULL, actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_key ON spends (key, asset, at);
CREATE INDEX IF NOT EXISTS spends_label ON spends (label, asset, at);
CREATE TABLE IF NOT EXISTS spend_buckets (
    scope TEXT NOT NULL, asset TEXT NOT NULL, bucket BIGINT NOT NULL, total TEXT NOT NULL,
    PRIMARY KEY (scope, asset, bucket)
);
CREATE TABLE IF NOT EXISTS hooks (
    id TEXT PRIMARY KEY, target TEXT NOT NULL, order_id TEXT NOT NULL, key TEXT NOT NULL,
    action TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, created_at REAL NOT NULL, next_attempt_at REAL NOT NULL,
    last_status INTEGER, last_error TEXT, delivered_at REAL, escalated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hooks_due ON hooks (status, next_attempt_at);
"""
_SQLITE_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the {table} log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'the {table} log is append-only'); END;
"""

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE, key TEXT NOT NULL, action TEXT NOT NULL, time TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_key ON orders (key, seq);
CREATE TABLE IF NOT EXISTS requests (
    seq BIGSERIAL PRIMARY KEY,
    time TEXT NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    alert_id TEXT, requested_by TEXT NOT NULL, created INTEGER NOT NULL, order_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT NOT NULL, nonce TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE TABLE IF NOT EXISTS unfreeze_requests (
    id TEXT PRIMARY KEY, time TEXT NOT NULL, chain TEXT NOT NULL, wallet TEXT NOT NULL,
    key TEXT NOT NULL, reason TEXT NOT NULL, requested_by TEXT NOT NULL, status TEXT NOT NULL,
    freeze_order_id TEXT NOT NULL, unfreeze_order_id TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    request_id TEXT NOT NULL, approver TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS spends (
    seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, label TEXT, asset TEXT NOT NULL,
    amount TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, recipient TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_key ON spends (key, asset, at);
CREATE INDEX IF NOT EXISTS spends_label ON spends (label, asset, at);
CREATE TABLE IF NOT EXISTS spend_buckets (
    scope TEXT NOT NULL, asset TEXT NOT NULL, bucket BIGINT NOT NULL, total TEXT NOT NULL,
    PRIMARY KEY (scope, asset, bucket)
);
CREATE TABLE IF NOT EXISTS hooks (
    id TEXT PRIMARY KEY, target TEXT NOT NULL, order_id TEXT NOT NULL, key TEXT NOT NULL,
    action TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL, last_status INTEGER, last_error TEXT,
    delivered_at DOUBLE PRECISION, escalated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hooks_due ON hooks (status, next_attempt_at);
CREATE OR REPLACE FUNCTION drainwatch_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the % log is append-only', TG_TABLE_NAME; END
$$ LANGUAGE plpgsql;
"""
_PG_APPEND_ONLY = """
CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION drainwatch_append_only();
"""
_APPEND_ONLY_TABLES = ("orders", "requests", "audit")
# Any constant shared by every process using the database: writers queue on it.
_PG_WRITE_LOCK = 0x6472_6169_6E77


class HookStatus:
    """The states of a hook delivery (``escalated`` ones keep being retried)."""

    PENDING = "pending"
    ESCALATED = "escalated"
    DELIVERED = "delivered"


@dataclass(frozen=True, slots=True)
class FreezeRequestRecord:
    """One freeze or unfreeze request the kill switch received, and what came of it."""

    seq: int
    time: datetime
    key: str
    action: FreezeAction
    reason: str
    alert_id: str | None
    requested_by: str
    created: bool
    """True when the request created an order; False when the wallet was already in that state."""
    order_id: str


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's approval of an unfreeze request."""

    approver: str
    time: datetime


@dataclass(frozen=True, slots=True)
class UnfreezeRequestRecord:
    """A request to lift a freeze; ``approved`` once two distinct approvers (not the requester)
    agreed, ``superseded`` when the freeze it was about is no longer the one in force."""

    id: str
    time: datetime
    chain: str
    wallet: str
    key: str
    reason: str
    requested_by: str
    status: str
    freeze_order_id: str
    unfreeze_order_id: str | None
    approvals: tuple[Approval, ...]


@dataclass(frozen=True, slots=True)
class HookRecord:
    """One delivery of one order to one hook target, and how it went so far."""

    id: str
    target: str
    order_id: str
    key: str
    action: FreezeAction
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    delivered_at: float | None
    escalated: bool


class KillSwitchStore(Protocol):
    """What the kill-switch app needs from its store (both backends provide it)."""

    location: str

    def freeze(
        self,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None = None,
        requested_by: str = "unknown",
        *,
        actor: str | None = None,
        hooks: Sequence[str] = (),
        detail: dict[str, Any] | None = None,
    ) -> tuple[FreezeOrder, bool]: ...

    def freeze_many(
        self,
        wallets: Sequence[tuple[str, str]],
        reason: str,
        requested_by: str,
        *,
        actor: str,
        hooks_for: Callable[[str, str, FreezeAction], Sequence[str]],
    ) -> list[tuple[FreezeOrder, bool]]: ...

    def status(self, chain: str, wallet: str) -> FreezeOrder | None: ...
    def orders(self) -> list[FreezeOrder]: ...
    def requests(self) -> list[FreezeRequestRecord]: ...
    def is_frozen(self, chain: str, wallet: str) -> bool: ...
    def frozen(self) -> list[FreezeOrder]: ...
    def latest_orders(self) -> list[FreezeOrder]: ...
    def known_wallets(self) -> list[tuple[str, str]]: ...

    def request_unfreeze(
        self, chain: str, wallet: str, reason: str, requested_by: str
    ) -> UnfreezeRequestRecord: ...

    def approve_unfreeze(
        self,
        request_id: str,
        approver: str,
        *,
        hooks_for: Callable[[str, str, FreezeAction], Sequence[str]],
    ) -> tuple[UnfreezeRequestRecord, FreezeOrder | None]: ...

    def unfreeze_request(self, request_id: str) -> UnfreezeRequestRecord | None: ...
    def unfreeze_requests(self) -> list[UnfreezeRequestRecord]: ...

    def authorize(
        self,
        *,
        chain: str,
        wallet: str,
        asset: str,
        amount: Decimal,
        recipient: str,
        actor: str,
        label: str | None,
        known: bool,
        allow_unknown: bool,
        budgets: tuple[VelocityBudget, ...],
    ) -> AuthorizeVerdict: ...

    def remember_nonce(self, key_id: str, nonce: str, expires_at: float) -> bool: ...
    def audit(
        self, action: str, actor: str, subject: str, detail: dict[str, Any]
    ) -> AuditEntry: ...
    def audit_entries(self, after: int = 0, limit: int | None = None) -> list[AuditEntry]: ...
    def audit_high_water(self) -> int: ...
    def audit_head(self) -> tuple[int, str]: ...

    def due_hooks(self, now: float, limit: int = 50) -> list[HookRecord]: ...
    def record_hook_attempt(
        self,
        hook_id: str,
        *,
        ok: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float,
        escalate: bool,
    ) -> HookRecord: ...
    def hooks(self) -> list[HookRecord]: ...
    def hook(self, hook_id: str) -> HookRecord | None: ...
    def next_hook_due(self) -> float | None: ...
    def close(self) -> None: ...


def _payload_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


class _SqlStore:
    """The store's logic over a DB-API connection; subclasses give schema, locking, dialect."""

    location: str
    clock: Callable[[], datetime]
    _lock: threading.Lock
    _db: Any
    _placeholder = "?"

    # -- dialect -------------------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        return self._db.execute(sql, tuple(params))

    @contextmanager
    def _read(self) -> Iterator[None]:
        with self._lock:
            yield

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC)

    # -- orders --------------------------------------------------------------------------------

    def _latest(self, key: str) -> FreezeOrder | None:
        row = self._x(
            "SELECT payload FROM orders WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
        ).fetchone()
        return decode(FREEZES, _payload_bytes(row[0]), FreezeOrder) if row else None

    def _apply(
        self,
        action: FreezeAction,
        *,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None,
        requested_by: str,
        actor: str,
        hooks: Sequence[str],
        detail: dict[str, Any] | None = None,
    ) -> tuple[FreezeOrder, bool]:
        """Inside a write transaction: apply an order, log the request, audit, enqueue hooks."""
        wallet = normalize_address(wallet)
        key = wallet_key(chain, wallet)
        now = self._now()
        latest = self._latest(key)
        if latest is None and action is FreezeAction.UNFREEZE:
            raise KillSwitchStateError(f"{key} was never frozen")
        if latest is not None and latest.action is action:
            order, created = latest, False
        else:
            (count,) = self._x("SELECT COUNT(*) FROM orders WHERE key = ?", (key,)).fetchone()
            # Deterministic: the same history gives the same ids in any replica.
            order = FreezeOrder(
                id=event_id("killswitch", key, action.value, count),
                time=now,
                chain=chain,
                wallet=wallet,
                action=action,
                reason=reason,
                requested_by=requested_by,
                alert_id=alert_id,
            )
            payload = order.to_json()
            self._x(
                "INSERT INTO orders (id, key, action, time, payload) VALUES (?, ?, ?, ?, ?)",
                (
                    order.id,
                    key,
                    action.value,
                    to_iso(order.time),
                    payload if self._placeholder == "?" else payload.decode(),
                ),
            )
            created = True
            for target in hooks:
                self._enqueue_hook(target, order, now.timestamp())
        self._x(
            "INSERT INTO requests (time, key, action, reason, alert_id, requested_by, created,"
            " order_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                to_iso(now),
                key,
                action.value,
                reason,
                alert_id,
                requested_by,
                int(created),
                order.id,
            ),
        )
        self._append_audit(
            action.value,
            actor,
            key,
            {
                "order": order.id,
                "created": created,
                "reason": reason,
                "alert_id": alert_id,
                "requested_by": requested_by,
                "hooks": list(hooks) if created else [],
                **(detail or {}),
            },
        )
        return order, created

    def freeze(
        self,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None = None,
        requested_by: str = "unknown",
        *,
        actor: str | None = None,
        hooks: Sequence[str] = (),
        detail: dict[str, Any] | None = None,
    ) -> tuple[FreezeOrder, bool]:
        """Freeze a wallet; return (the order in force, whether this call created it).

        A wallet that is already frozen keeps the order that froze it. ``hooks`` are the targets
        told of a new order (enqueued in the same transaction).
        """
        with self._write():
            return self._apply(
                FreezeAction.FREEZE,
                chain=chain,
                wallet=wallet,
                reason=reason,
                alert_id=alert_id,
                requested_by=requested_by,
                actor=actor or requested_by,
                hooks=hooks,
                detail=detail,
            )

    def freeze_many(
        self,
        wallets: Sequence[tuple[str, str]],
        reason: str,
        requested_by: str,
        *,
        actor: str,
        hooks_for: Callable[[str, str, FreezeAction], Sequence[str]],
    ) -> list[tuple[FreezeOrder, bool]]:
        """Freeze every wallet in one transaction (freeze-all): all of them or none."""
        with self._write():
            return [
                self._apply(
                    FreezeAction.FREEZE,
                    chain=chain,
                    wallet=wallet,
                    reason=reason,
                    alert_id=None,
                    requested_by=requested_by,
                    actor=actor,
                    hooks=hooks_for(chain, wallet, FreezeAction.FREEZE),
                    detail={"freeze_all": True},
                )
                for chain, wallet in wallets
            ]

    def unfreeze(
        self,
        chain: str,
        wallet: str,
        reason: str,
        requested_by: str,
        *,
        hooks: Sequence[str] = (),
    ) -> FreezeOrder:
        """Lift a freeze directly. Not served over HTTP, where it needs two approvers.

        Raises:
            KillSwitchStateError: The wallet was never frozen.
        """
        with self._write():
            order, _ = self._apply(
                FreezeAction.UNFREEZE,
                chain=chain,
                wallet=wallet,
                reason=reason,
                alert_id=None,
                requested_by=requested_by,
                actor=requested_by,
                hooks=hooks,
            )
        return order

    def status(self, chain: str, wallet: str) -> FreezeOrder | None:
        """The wallet's latest order (freeze or unfreeze), or None if it never had one."""
        with self._read():
            return self._latest(wallet_key(chain, normalize_address(wallet)))

    def is_frozen(self, chain: str, wallet: str) -> bool:
        """Whether the wallet's latest order is a freeze."""
        order = self.status(chain, wallet)
        return order is not None and order.action is FreezeAction.FREEZE

    def _latest_orders(self, action: FreezeAction | None) -> list[FreezeOrder]:
        where = "" if action is None else " WHERE o.action = ?"
        with self._read():
            rows = self._x(
                "SELECT o.payload FROM orders o"  # noqa: S608 - ``where`` is a constant
                " JOIN (SELECT key, MAX(seq) AS seq FROM orders GROUP BY key) l ON o.seq = l.seq"
                f"{where} ORDER BY o.seq",
                () if action is None else (action.value,),
            ).fetchall()
        return [decode(FREEZES, _payload_bytes(row[0]), FreezeOrder) for row in rows]

    def frozen(self) -> list[FreezeOrder]:
        """The orders in force for every frozen wallet, oldest first."""
        return self._latest_orders(FreezeAction.FREEZE)

    def latest_orders(self) -> list[FreezeOrder]:
        """Every wallet's latest order (what the compacted freezes topic should hold)."""
        return self._latest_orders(None)

    def known_wallets(self) -> list[tuple[str, str]]:
        """(chain, wallet) of every wallet that ever had an order."""
        return [(o.chain, o.wallet) for o in self.latest_orders()]

    def orders(self) -> list[FreezeOrder]:
        """Every order ever made, oldest first."""
        with self._read():
            rows = self._x("SELECT payload FROM orders ORDER BY seq").fetchall()
        return [decode(FREEZES, _payload_bytes(row[0]), FreezeOrder) for row in rows]

    def requests(self) -> list[FreezeRequestRecord]:
        """Every freeze or unfreeze request received, oldest first (also those that did nothing)."""
        with self._read():
            rows = self._x(
                "SELECT seq, time, key, action, reason, alert_id, requested_by, created, order_id"
                " FROM requests ORDER BY seq"
            ).fetchall()
        return [
            FreezeRequestRecord(
                seq=seq,
                time=datetime.fromisoformat(time),
                key=key,
                action=FreezeAction(action),
                reason=reason,
                alert_id=alert_id,
                requested_by=requested_by,
                created=bool(created),
                order_id=order_id,
            )
            for seq, time, key, action, reason, alert_id, requested_by, created, order_id in rows
        ]

    # -- unfreeze requests ---------------------------------------------------------------------

    def _unfreeze_record(self, request_id: str) -> UnfreezeRequestRecord | None:
        row = self._x(
            "SELECT id, time, chain, wallet, key, reason, requested_by, status, freeze_order_id,"
            " unfreeze_order_id FROM unfreeze_requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        approvals = self._x(
            "SELECT approver, time FROM approvals WHERE request_id = ? ORDER BY time, approver",
            (request_id,),
        ).fetchall()
        rid, time, chain, wallet, key, reason, requested_by, status, freeze_id, unfreeze_id = row
        return UnfreezeRequestRecord(
            id=rid,
            time=datetime.fromisoformat(time),
            chain=chain,
            wallet=wallet,
            key=key,
            reason=reason,
            requested_by=requested_by,
            status=status,
            freeze_order_id=freeze_id,
            unfreeze_order_id=unfreeze_id,
            approvals=tuple(Approval(a, datetime.fromisoformat(t)) for a, t in approvals),
        )

    def request_unfreeze(
        self, chain: str, wallet: str, reason: str, requested_by: str
    ) -> UnfreezeRequestRecord:
        """Open a request to lift a wallet's freeze (changes nothing until two approvals).

        Raises:
            UnfreezeRequestError: The wallet is not frozen (``status_code`` 409).
        """
        wallet = normalize_address(wallet)
        key = wallet_key(chain, wallet)
        now = self._now()
        with self._write():
            latest = self._latest(key)
            if latest is None or latest.action is not FreezeAction.FREEZE:
                raise UnfreezeRequestError(f"{key} is not frozen", 409)
            request_id = uuid.uuid4().hex
            self._x(
                "INSERT INTO unfreeze_requests (id, time, chain, wallet, key, reason, requested_by,"
                " status, freeze_order_id, unfreeze_order_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, NULL)",
                (request_id, to_iso(now), chain, wallet, key, reason, requested_by, latest.id),
            )
            self._append_audit(
                "unfreeze_requested",
                requested_by,
                key,
                {"request": request_id, "reason": reason, "freeze_order": latest.id},
            )
            record = self._unfreeze_record(request_id)
        assert record is not None
        return record

    def approve_unfreeze(
        self,
        request_id: str,
        approver: str,
        *,
        hooks_for: Callable[[str, str, FreezeAction], Sequence[str]],
    ) -> tuple[UnfreezeRequestRecord, FreezeOrder | None]:
        """Add an approval; unfreeze once two distinct approvers other than the requester agreed.

        A repeated approval by the same approver is accepted and changes nothing.

        Returns:
            The request as it now stands, and the unfreeze order if this approval made one.

        Raises:
            UnfreezeRequestError: Unknown request (404), the requester approving (403), or a
                request no longer pending (409).
        """
        now = self._now()
        # A refusal worth auditing is raised after the commit, so its audit entry is kept.
        refusal: UnfreezeRequestError | None = None
        order: FreezeOrder | None = None
        with self._write():
            record = self._unfreeze_record(request_id)
            if record is None:
                raise UnfreezeRequestError(f"no unfreeze request {request_id}", 404)
            if record.status != "pending":
                raise UnfreezeRequestError(f"request {request_id} is {record.status}", 409)
            latest = self._latest(record.key)
            if approver == record.requested_by:
                self._append_audit(
                    "unfreeze_approval_refused",
                    approver,
                    record.key,
                    {"request": request_id, "why": "the requester cannot approve"},
                )
                refusal = UnfreezeRequestError(
                    "the requester cannot approve their own request", 403
                )
            elif latest is None or latest.id != record.freeze_order_id:
                self._x(
                    "UPDATE unfreeze_requests SET status = 'superseded' WHERE id = ?",
                    (request_id,),
                )
                self._append_audit(
                    "unfreeze_superseded", approver, record.key, {"request": request_id}
                )
                refusal = UnfreezeRequestError(
                    f"request {request_id} is superseded: the freeze it lifts is not in force",
                    409,
                )
            else:
                order = self._approve(record, approver, now, hooks_for)
            updated = self._unfreeze_record(request_id)
        if refusal is not None:
            raise refusal
        assert updated is not None
        return updated, order

    def _approve(
        self,
        record: UnfreezeRequestRecord,
        approver: str,
        now: datetime,
        hooks_for: Callable[[str, str, FreezeAction], Sequence[str]],
    ) -> FreezeOrder | None:
        inserted = self._x(
            "INSERT INTO approvals (request_id, approver, time) VALUES (?, ?, ?)"
            " ON CONFLICT (request_id, approver) DO NOTHING",
            (record.id, approver, to_iso(now)),
        ).rowcount
        approvers = {a.approver for a in record.approvals} | {approver}
        self._append_audit(
            "unfreeze_approved",
            approver,
            record.key,
            {"request": record.id, "approvals": len(approvers), "new": bool(inserted)},
        )
        if len(approvers) < APPROVALS_NEEDED:
            return None
        order, _ = self._apply(
            FreezeAction.UNFREEZE,
            chain=record.chain,
            wallet=record.wallet,
            reason=record.reason,
            alert_id=None,
            requested_by=record.requested_by,
            actor=approver,
            hooks=hooks_for(record.chain, record.wallet, FreezeAction.UNFREEZE),
            detail={"request": record.id, "approvers": sorted(approvers)},
        )
        self._x(
            "UPDATE unfreeze_requests SET status = 'approved', unfreeze_order_id = ? WHERE id = ?",
            (order.id, record.id),
        )
        return order

    def unfreeze_request(self, request_id: str) -> UnfreezeRequestRecord | None:
        """One unfreeze request, or None."""
        with self._read():
            return self._unfreeze_record(request_id)

    def unfreeze_requests(self) -> list[UnfreezeRequestRecord]:
        """Every unfreeze request, oldest first."""
        with self._read():
            ids = [r[0] for r in self._x("SELECT id FROM unfreeze_requests ORDER BY time, id")]
            records = [self._unfreeze_record(i) for i in ids]
        return [r for r in records if r is not None]

    # -- pre-sign authorization ----------------------------------------------------------------

    # Spending is summed per budget in buckets of 1/60 of its window, so a check reads at most 61
    # rows however busy the wallet. The oldest bucket counts whole, even the part of it that is
    # older than the window: the budget is enforced over up to 61/60 of its window (stricter).

    @staticmethod
    def _bucket_scope(budget: VelocityBudget) -> tuple[str, int]:
        width = max(1, budget.window_s // 60)
        return f"{budget.scope}|{width}", width

    def _spent(self, budget: VelocityBudget, asset: str, now: float) -> Decimal:
        scope, width = self._bucket_scope(budget)
        rows = self._x(
            "SELECT total FROM spend_buckets WHERE scope = ? AND asset = ? AND bucket >= ?",
            (scope, asset, int((now - budget.window_s) // width)),
        ).fetchall()
        # Exact: wei-scale amounts have more digits than the default 28-digit context keeps.
        with localcontext(prec=200):
            return sum((Decimal(r[0]) for r in rows), Decimal(0))

    def _spend(self, budget: VelocityBudget, asset: str, amount: Decimal, now: float) -> None:
        scope, width = self._bucket_scope(budget)
        bucket = int(now // width)
        row = self._x(
            "SELECT total FROM spend_buckets WHERE scope = ? AND asset = ? AND bucket = ?",
            (scope, asset, bucket),
        ).fetchone()
        with localcontext(prec=200):
            total = str(amount + (Decimal(row[0]) if row else Decimal(0)))
        self._x(
            "INSERT INTO spend_buckets (scope, asset, bucket, total) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (scope, asset, bucket) DO UPDATE SET total = excluded.total",
            (scope, asset, bucket, total),
        )

    def authorize(
        self,
        *,
        chain: str,
        wallet: str,
        asset: str,
        amount: Decimal,
        recipient: str,
        actor: str,
        label: str | None,
        known: bool,
        allow_unknown: bool,
        budgets: tuple[VelocityBudget, ...],
    ) -> AuthorizeVerdict:
        """Decide a signer's request; record an allowed amount (it counts against the budgets),
        audit a denial. Check and record are one transaction, so two signers racing cannot both
        spend the last of a budget."""
        wallet = normalize_address(wallet)
        key = wallet_key(chain, wallet)
        asset = asset.upper()
        now = self._now().timestamp()
        with self._write():
            row = self._x(
                "SELECT action FROM orders WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
            ).fetchone()
            frozen = row is not None and row[0] == FreezeAction.FREEZE.value
            applicable = budgets_for(budgets, key, label, asset)
            uses = [BudgetUse(b, self._spent(b, asset, now)) for b in applicable]
            verdict = authorize_verdict(
                frozen=frozen,
                known=known,
                allow_unknown=allow_unknown,
                amount=amount,
                uses=uses,
                key=key,
            )
            if verdict.allowed:
                self._x(
                    "INSERT INTO spends (key, label, asset, amount, at, recipient, actor)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, label, asset, str(amount), now, recipient, actor),
                )
                for budget in applicable:
                    self._spend(budget, asset, amount, now)
            else:
                self._append_audit(
                    "authorize_denied",
                    actor,
                    key,
                    {
                        "asset": asset,
                        "amount": str(amount),
                        "to": recipient,
                        "reason": verdict.reason,
                    },
                )
        return verdict

    # -- nonces --------------------------------------------------------------------------------

    def remember_nonce(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Spend a nonce; False if it was spent before (a replay). Forgets expired ones."""
        now = self._now().timestamp()
        with self._write():
            inserted = self._x(
                "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id, nonce) DO NOTHING",
                (key_id, nonce, expires_at),
            ).rowcount
            self._nonce_writes = getattr(self, "_nonce_writes", 0) + 1
            # Pruning now and then keeps the table at about one window of traffic.
            if self._nonce_writes % 256 == 0:
                self._x("DELETE FROM nonces WHERE expires_at < ?", (now,))
        return bool(inserted)

    # -- audit ---------------------------------------------------------------------------------

    def _append_audit(
        self, action: str, actor: str, subject: str, detail: dict[str, Any]
    ) -> AuditEntry:
        row = self._x("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        entry = chain_entry(prev, seq + 1, self._now(), actor, action, subject, detail)
        self._x(
            "INSERT INTO audit (seq, time, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.seq,
                to_iso(entry.time),
                entry.actor,
                entry.action,
                entry.subject,
                json.dumps(entry.detail, sort_keys=True),
                entry.prev_hash,
                entry.hash,
            ),
        )
        self._x(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (entry.seq, entry.hash),
        )
        return entry

    def audit(self, action: str, actor: str, subject: str, detail: dict[str, Any]) -> AuditEntry:
        """Append one entry to the audit log (its own transaction)."""
        with self._write():
            return self._append_audit(action, actor, subject, detail)

    def audit_entries(self, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after``, in stored order (all of them by default)."""
        sql = (
            "SELECT seq, time, actor, action, subject, detail, prev_hash, hash FROM audit"
            " WHERE seq > ? ORDER BY seq"
        )
        params: tuple[Any, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (after, limit)
        with self._read():
            rows = self._x(sql, params).fetchall()
        return [
            AuditEntry(
                seq=seq,
                time=datetime.fromisoformat(time),
                actor=actor,
                action=action,
                subject=subject,
                detail=json.loads(detail),
                prev_hash=prev_hash,
                hash=digest,
            )
            for seq, time, actor, action, subject, detail, prev_hash, digest in rows
        ]

    def audit_head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry; (0, 64 zeros) for an empty log."""
        with self._read():
            row = self._x("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def audit_high_water(self) -> int:
        """The highest ``seq`` ever handed out (deleting the newest entries leaves it behind)."""
        return self.audit_head()[0]

    # -- hook outbox ---------------------------------------------------------------------------

    def _enqueue_hook(self, target: str, order: FreezeOrder, now: float) -> None:
        self._x(
            "INSERT INTO hooks (id, target, order_id, key, action, payload, status, attempts,"
            " created_at, next_attempt_at, last_status, last_error, delivered_at, escalated)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, NULL, NULL, NULL, 0)"
            " ON CONFLICT (id) DO NOTHING",
            (
                event_id("hook", target, order.id),
                target,
                order.id,
                order.key,
                order.action.value,
                order.model_dump_json(),
                now,
                now,
            ),
        )

    _HOOK_COLUMNS = (
        "id, target, order_id, key, action, payload, status, attempts, created_at,"
        " next_attempt_at, last_status, last_error, delivered_at, escalated"
    )

    @staticmethod
    def _hook_record(row: Sequence[Any]) -> HookRecord:
        return HookRecord(
            id=row[0],
            target=row[1],
            order_id=row[2],
            key=row[3],
            action=FreezeAction(row[4]),
            payload=json.loads(row[5]),
            status=row[6],
            attempts=int(row[7]),
            created_at=float(row[8]),
            next_attempt_at=float(row[9]),
            last_status=None if row[10] is None else int(row[10]),
            last_error=row[11],
            delivered_at=None if row[12] is None else float(row[12]),
            escalated=bool(row[13]),
        )

    def due_hooks(self, now: float, limit: int = 50) -> list[HookRecord]:
        """Undelivered hooks whose next attempt is due, the most overdue first."""
        with self._read():
            rows = self._x(
                f"SELECT {self._HOOK_COLUMNS} FROM hooks"  # noqa: S608 - constant columns
                " WHERE status != 'delivered' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [self._hook_record(r) for r in rows]

    def next_hook_due(self) -> float | None:
        """When the next undelivered hook is due (unix seconds), or None."""
        with self._read():
            row = self._x(
                "SELECT MIN(next_attempt_at) FROM hooks WHERE status != 'delivered'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def record_hook_attempt(
        self,
        hook_id: str,
        *,
        ok: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float,
        escalate: bool,
    ) -> HookRecord:
        """Record one delivery attempt and audit it (and the escalation, the first time)."""
        now = self._now().timestamp()
        with self._write():
            row = self._x(
                f"SELECT {self._HOOK_COLUMNS} FROM hooks WHERE id = ?",  # noqa: S608
                (hook_id,),
            ).fetchone()
            if row is None:
                raise KillSwitchStateError(f"no hook delivery {hook_id}")
            hook = self._hook_record(row)
            newly_escalated = escalate and not hook.escalated and not ok
            escalated = hook.escalated or newly_escalated
            if ok:
                status = HookStatus.DELIVERED
            else:
                status = HookStatus.ESCALATED if escalated else HookStatus.PENDING
            self._x(
                "UPDATE hooks SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " last_status = ?, last_error = ?, delivered_at = ?, escalated = ? WHERE id = ?",
                (
                    status,
                    next_attempt_at,
                    status_code,
                    error,
                    now if ok else None,
                    int(escalated),
                    hook_id,
                ),
            )
            detail = {
                "hook": hook_id,
                "target": hook.target,
                "order": hook.order_id,
                "attempt": hook.attempts + 1,
                "status_code": status_code,
                "error": error,
            }
            if ok:
                self._append_audit("hook_delivered", "killswitch", hook.key, detail)
            elif newly_escalated:
                self._append_audit("hook_escalated", "killswitch", hook.key, detail)
            else:
                self._append_audit("hook_failed", "killswitch", hook.key, detail)
            updated = self._x(
                f"SELECT {self._HOOK_COLUMNS} FROM hooks WHERE id = ?",  # noqa: S608
                (hook_id,),
            ).fetchone()
        return self._hook_record(updated)

    def hooks(self) -> list[HookRecord]:
        """Every hook delivery, oldest first."""
        with self._read():
            rows = self._x(
                f"SELECT {self._HOOK_COLUMNS} FROM hooks ORDER BY created_at, id"  # noqa: S608
            ).fetchall()
        return [self._hook_record(r) for r in rows]

    def hook(self, hook_id: str) -> HookRecord | None:
        """One hook delivery, or None."""
        with self._read():
            row = self._x(
                f"SELECT {self._HOOK_COLUMNS} FROM hooks WHERE id = ?",  # noqa: S608
                (hook_id,),
            ).fetchone()
        return None if row is None else self._hook_record(row)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


class FreezeStore(_SqlStore):
    """The SQLite backend: durable (``synchronous=FULL``) and safe to share between threads.

    Args:
        path: The SQLite file (its state survives a restart), or ``":memory:"``.
        clock: Gives the time of new orders and entries (aware UTC).
    """

    def __init__(self, path: str = ":memory:", clock: Callable[[], datetime] = utc_now) -> None:
        self.path = path
        self.location = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = open_sqlite(path)
        # A freeze is a safety action: it must be on disk before the answer goes out.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SQLITE_SCHEMA)
        for table in _APPEND_ONLY_TABLES:
            self._db.executescript(_SQLITE_APPEND_ONLY.format(table=table))

    @contextmanager
    def _write(self) -> Iterator[None]:
        with self._lock:
            # IMMEDIATE: another process on the same file cannot interleave check and insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


class PostgresStore(_SqlStore):
    """The PostgreSQL backend (psycopg 3). Writers in every process queue on one advisory lock,
    so the audit chain stays a chain however many kill-switch replicas share the database.

    Args:
        dsn: A libpq connection string or ``postgresql://`` URL.
        clock: Gives the time of new orders and entries (aware UTC).
    """

    _placeholder = "%s"

    def __init__(self, dsn: str, clock: Callable[[], datetime] = utc_now) -> None:
        import psycopg

        self.location = dsn
        self.clock = clock
        self._lock = threading.Lock()
        self._db = psycopg.connect(dsn, autocommit=True)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))
            self._db.execute(_PG_SCHEMA)
            for table in _APPEND_ONLY_TABLES:
                self._db.execute(_PG_APPEND_ONLY.format(table=table))

    @contextmanager
    def _write(self) -> Iterator[None]:
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))
            yield


def open_store(location: str, clock: Callable[[], datetime] = utc_now) -> KillSwitchStore:
    """A :class:`PostgresStore` for a ``postgresql://`` or ``postgres://`` DSN, else a SQLite
    :class:`FreezeStore` on the file ``location``.

    >>> type(open_store(":memory:")).__name__
    'FreezeStore'
    """
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresStore(location, clock)
    return FreezeStore(location, clock)
