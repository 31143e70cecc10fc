"""The kill switch's freeze state in SQLite: an append-only log of orders and of requests.

A wallet's state is its latest order. Freezing is idempotent: a freeze of a frozen wallet creates
nothing and returns the order that froze it, so a retried or repeated request is harmless. Every
request is logged, whatever its outcome, for the audit trail (hash-chaining it is a later issue).

>>> from datetime import UTC, datetime
>>> store = FreezeStore(":memory:", clock=lambda: datetime(2018, 1, 26, 3, 0, tzinfo=UTC))
>>> first, created = store.freeze("nem", "NC3B", "drain", alert_id="a1", requested_by="alerts")
>>> created, store.is_frozen("nem", "NC3B")
(True, True)
>>> again, created = store.freeze("nem", "NC3B", "drain again", alert_id="a2", requested_by="ops")
>>> created, again == first, len(store.requests())
(False, True, 2)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

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

__all__ = ["FreezeRequestRecord", "FreezeStore"]

_SCHEMA = """
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
"""
_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the freeze log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'the freeze log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class FreezeRequestRecord:
    """One request the kill switch received, and what came of it."""

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


class FreezeStore:
    """Freeze state of every wallet, durable in SQLite and safe to share between threads.

    Args:
        path: The SQLite file (its state survives a restart), or ``":memory:"``.
        clock: Gives the time of new orders and requests (aware UTC).
    """

    def __init__(self, path: str = ":memory:", clock: Callable[[], datetime] = utc_now) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A freeze is a safety action: it must be on disk before the answer goes out.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        for table in ("orders", "requests"):
            self._db.executescript(_APPEND_ONLY.format(table=table))

    def _latest(self, key: str) -> FreezeOrder | None:
        row = self._db.execute(
            "SELECT payload FROM orders WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
        ).fetchone()
        return decode(FREEZES, row[0], FreezeOrder) if row else None

    def _apply(
        self,
        action: FreezeAction,
        *,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None,
        requested_by: str,
    ) -> tuple[FreezeOrder, bool]:
        wallet = normalize_address(wallet)
        key = wallet_key(chain, wallet)
        now = self.clock()
        with self._lock:
            # IMMEDIATE: another process on the same file cannot interleave check and insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                latest = self._latest(key)
                if latest is None and action is FreezeAction.UNFREEZE:
                    raise ValueError(f"{key} was never frozen")
                if latest is not None and latest.action is action:
                    order, created = latest, False
                else:
                    (count,) = self._db.execute(
                        "SELECT COUNT(*) FROM orders WHERE key = ?", (key,)
                    ).fetchone()
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
                    self._db.execute(
                        "INSERT INTO orders (id, key, action, time, payload)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (order.id, key, action.value, to_iso(order.time), order.to_json()),
                    )
                    created = True
                self._db.execute(
                    "INSERT INTO requests (time, key, action, reason, alert_id, requested_by,"
                    " created, order_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return order, created

    def freeze(
        self,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None = None,
        requested_by: str = "unknown",
    ) -> tuple[FreezeOrder, bool]:
        """Freeze a wallet; return (the order in force, whether this call created it).

        A wallet that is already frozen keeps the order that froze it.
        """
        return self._apply(
            FreezeAction.FREEZE,
            chain=chain,
            wallet=wallet,
            reason=reason,
            alert_id=alert_id,
            requested_by=requested_by,
        )

    def unfreeze(self, chain: str, wallet: str, reason: str, requested_by: str) -> FreezeOrder:
        """Lift a freeze. Not served over HTTP: it needs two approvers there (a later issue).

        Raises ``ValueError`` for a wallet that was never frozen.
        """
        order, _ = self._apply(
            FreezeAction.UNFREEZE,
            chain=chain,
            wallet=wallet,
            reason=reason,
            alert_id=None,
            requested_by=requested_by,
        )
        return order

    def status(self, chain: str, wallet: str) -> FreezeOrder | None:
        """The wallet's latest order (freeze or unfreeze), or None if it never had one."""
        with self._lock:
            return self._latest(wallet_key(chain, wallet))

    def is_frozen(self, chain: str, wallet: str) -> bool:
        """Whether the wallet's latest order is a freeze."""
        order = self.status(chain, wallet)
        return order is not None and order.action is FreezeAction.FREEZE

    def frozen(self) -> list[FreezeOrder]:
        """The orders in force for every frozen wallet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.payload FROM orders o"
                " JOIN (SELECT key, MAX(seq) AS seq FROM orders GROUP BY key) l ON o.seq = l.seq"
                " WHERE o.action = ? ORDER BY o.seq",
                (FreezeAction.FREEZE.value,),
            ).fetchall()
        return [decode(FREEZES, row[0], FreezeOrder) for row in rows]

    def orders(self) -> list[FreezeOrder]:
        """Every order ever made, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM orders ORDER BY seq").fetchall()
        return [decode(FREEZES, row[0], FreezeOrder) for row in rows]

    def requests(self) -> list[FreezeRequestRecord]:
        """Every request received, oldest first (including those that changed nothing)."""
        with self._lock:
            rows = self._db.execute(
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

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
