"""The notification outbox (SQLite) and the worker that empties it: retried until acknowledged.

How a notification travels
--------------------------
1. :meth:`Outbox.enqueue` writes, in one transaction, the routing decision for an alert and the
   notifications it calls for. Notification ids are deterministic (alert, channel, action), so an
   alert that is handled twice queues nothing new. From here on the notification is durable: the
   stage may crash, the outbox file keeps it.
2. :class:`DeliveryWorker` sends the due notifications, one page at a time: a notification waits
   while an earlier one for the same (channel, incident) is pending, so PagerDuty sees the trigger
   before its acknowledge, and updates in order.
3. A channel that acknowledges (2xx; PagerDuty: 202 with ``"status": "success"``) marks the
   notification delivered. Anything else is a failed attempt: the next one is scheduled with
   exponential back-off (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``).
4. **Nothing is dropped.** After ``undeliverable_after`` failed attempts, or at once when the
   channel refused it (a 4xx), the notification is *reported*: logged as an error, written to the
   timeline (``notification_failed``), passed to ``on_undeliverable``, and listed by
   :meth:`Outbox.undeliverable`. It stays pending and keeps being retried at the longest
   interval, so it goes out when the receiver comes back or the config is fixed (payloads are
   rendered at send time, from the current channel config). :meth:`Outbox.retry_now` makes every
   pending notification due at once.
5. **Escalation.** Routing a critical alert arms an escalation per escalation channel, due
   ``escalate_after_s`` after it was queued. :meth:`Outbox.acknowledge` (or
   :meth:`Outbox.resolve`) of the incident disarms it and tells every channel holding a page
   (PagerDuty gets ``acknowledge`` / ``resolve`` events); an escalation still armed when due
   pages its channels with an ``escalate`` notification.

Retries are scheduled in the database rather than with tenacity: they must survive restarts and
must not hold the worker while one channel is down.

>>> from datetime import UTC, datetime
>>> from alerts.routing import Route, Router
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> outbox = Outbox(":memory:")
>>> router = Router([Route(Severity.INFO, (), ("log",))])
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     severity=Severity.WARNING, detector="velocity", freeze=False, summary="5% out in 60 s")
>>> outbox.enqueue(alert, router.plan(alert, outbox.history(alert)), now=t).detail
'to log'
>>> class Log:
...     name, kind = "log", "test"
...     def send(self, n): return f"printed {n.action.value}"
...     def close(self): pass
>>> worker = DeliveryWorker(outbox, {"log": Log()}, clock=lambda: t)
>>> worker.run_once().delivered
1
>>> [(e.status, e.receipt) for e in outbox.entries()]
[('delivered', 'printed trigger')]
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from alerts.channels import build_channels
from alerts.channels.base import Channel, ChannelError, Notification, NotificationAction
from alerts.routing import History, Plan, Sent, Verdict, fingerprint
from alerts.timeline import ActionKind, Timeline, incident_of, to_iso, utc_now
from drainwatch.config import AlertsConfig
from drainwatch.events import ALERTS, Alert, Severity, decode, normalize_address
from drainwatch.metrics import ALERT_DELIVERIES_TOTAL, DELIVERY_OUTCOMES
from drainwatch.sqlite import open_sqlite

__all__ = [
    "DeliveryReport",
    "DeliveryWorker",
    "Outbox",
    "OutboxEntry",
    "PageState",
    "RoutedRecord",
    "retry_delay_s",
]

log = logging.getLogger(__name__)

PENDING: Final = "pending"
DELIVERED: Final = "delivered"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL UNIQUE, incident_id TEXT NOT NULL, source TEXT NOT NULL,
    fingerprint TEXT NOT NULL, severity TEXT NOT NULL, freeze INTEGER NOT NULL,
    time TEXT NOT NULL, verdict TEXT NOT NULL, detail TEXT NOT NULL, routed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS routed_source ON routed (source, verdict, time);
CREATE INDEX IF NOT EXISTS routed_fingerprint ON routed (fingerprint, verdict, time);
CREATE INDEX IF NOT EXISTS routed_incident ON routed (incident_id, verdict);
CREATE TABLE IF NOT EXISTS pages (
    incident_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, opened_at TEXT NOT NULL,
    acknowledged_at TEXT, acknowledged_by TEXT, resolved_at TEXT, resolved_by TEXT
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, channel TEXT NOT NULL, action TEXT NOT NULL,
    incident_id TEXT NOT NULL, generation INTEGER NOT NULL, alert_id TEXT NOT NULL,
    alert BLOB NOT NULL, note TEXT NOT NULL, created_at TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL,
    last_attempt_at TEXT, last_error TEXT, undeliverable_since TEXT,
    delivered_at TEXT, receipt TEXT
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS notifications_page ON notifications (incident_id, channel, status);
CREATE TABLE IF NOT EXISTS escalations (
    incident_id TEXT NOT NULL, generation INTEGER NOT NULL, channel TEXT NOT NULL,
    alert_id TEXT NOT NULL, after_s REAL NOT NULL, due_at TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (incident_id, generation, channel)
);
CREATE INDEX IF NOT EXISTS escalations_due ON escalations (state, due_at);
CREATE TABLE IF NOT EXISTS page_wallets (
    page TEXT NOT NULL, wallet TEXT NOT NULL, last_time TEXT NOT NULL,
    PRIMARY KEY (page, wallet)
);
CREATE INDEX IF NOT EXISTS page_wallets_wallet ON page_wallets (wallet, last_time);
CREATE TABLE IF NOT EXISTS page_aliases (incident_id TEXT PRIMARY KEY, page TEXT NOT NULL);
"""


def retry_delay_s(attempts: int, backoff_s: float, backoff_max_s: float) -> float:
    """The wait after ``attempts`` failed attempts: doubling from ``backoff_s``, capped.

    >>> [retry_delay_s(n, 5, 300) for n in (1, 2, 3, 7, 8, 50)]
    [5.0, 10.0, 20.0, 300, 300, 300]
    """
    # Past 2**30 the cap was reached long ago; stop before the float overflows.
    doublings = min(max(attempts - 1, 0), 30)
    return min(backoff_max_s, backoff_s * float(2**doublings))


def _iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def _source(alert: Alert) -> str:
    return f"{alert.chain}:{normalize_address(alert.wallet)}|{alert.detector}"


@dataclass(frozen=True, slots=True)
class RoutedRecord:
    """The routing decision recorded for an alert."""

    alert_id: str
    incident_id: str
    verdict: Verdict
    detail: str

    @property
    def notified(self) -> bool:
        """True when notifications were queued."""
        return self.verdict is Verdict.NOTIFY


@dataclass(frozen=True, slots=True)
class PageState:
    """An incident's page: its generation (a new one after a resolve), who acknowledged it."""

    incident_id: str
    generation: int
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A notification and its delivery state."""

    notification: Notification
    status: str
    """``pending`` or ``delivered``."""
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_error: str | None
    undeliverable_since: datetime | None
    """Set once it was reported undeliverable; it is still retried."""
    delivered_at: datetime | None
    receipt: str | None
    """What the channel answered when it acknowledged."""

    @property
    def undeliverable(self) -> bool:
        """Pending and reported undeliverable."""
        return self.status == PENDING and self.undeliverable_since is not None


@dataclass(frozen=True, slots=True)
class _Escalation:
    incident_id: str
    generation: int
    channel: str
    alert_id: str
    after_s: float


class Outbox:
    """The durable state of notifications: routing history, pages, deliveries, escalations.

    Safe to share between threads (one connection behind a lock); the file survives restarts.

    Args:
        path: The SQLite file, or ``":memory:"``.
        join_s: An incident's first alert joins an open page of one of its wallets (see
            :meth:`page_of`) that had an alert within this long (event time) before it.
    """

    def __init__(self, path: str = ":memory:", *, join_s: float = 3600.0) -> None:
        self.path = path
        self.join = timedelta(seconds=join_s)
        self._lock = threading.RLock()
        self._db = open_sqlite(path, create_dir=True)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # --- routing -------------------------------------------------------------------------------

    def routed(self, alert_id: str) -> RoutedRecord | None:
        """The routing decision recorded for an alert, if it was routed already."""
        rows = self._rows(
            "SELECT alert_id, incident_id, verdict, detail FROM routed WHERE alert_id = ?",
            (alert_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return RoutedRecord(
            row["alert_id"], row["incident_id"], Verdict(row["verdict"]), row["detail"]
        )

    def page(self, incident_id: str) -> PageState | None:
        """The state of an incident's page, once something was queued for it."""
        rows = self._rows("SELECT * FROM pages WHERE incident_id = ?", (incident_id,))
        if not rows:
            return None
        row = rows[0]
        return PageState(
            row["incident_id"],
            row["generation"],
            _iso(row["opened_at"]) or datetime.min.replace(tzinfo=UTC),
            _iso(row["acknowledged_at"]),
            row["acknowledged_by"],
            _iso(row["resolved_at"]),
            row["resolved_by"],
        )

    def page_of(self, alert: Alert) -> str:
        """The page an alert belongs to: its incident's (:func:`incident_of`), unless that is
        an incident paged for the first time whose wallets already hold an open page.

        A drain's first wallet is paged before the incident exists: its alerts name no incident
        until a second wallet joins. The incident's first alert names its wallets
        (``incident_wallets``); if one of them has an open page that had an alert within
        ``join_s`` before, the incident joins that page for good, and the on-call person gets
        one page for the drain, updated, not a second one (of several such pages, the one
        with the most severe alert, then the oldest). The same holds when two detector
        replicas name one incident twice. A page someone has acknowledged is not joined: a
        drain that spreads after a person took the first wallet pages again, rather than
        update a page PagerDuty no longer notifies anyone about.
        """
        with self._lock:
            return self._page_of(self._db, alert)[0]

    def _page_of(self, db: sqlite3.Connection, alert: Alert) -> tuple[str, bool]:
        """The page, and whether the incident joins it just now (to be remembered)."""
        incident = incident_of(alert)
        if alert.incident_id is None:
            return incident, False
        joined = self._joined(db, incident)
        if joined is not None:
            return joined, False
        if db.execute("SELECT 1 FROM pages WHERE incident_id = ?", (incident,)).fetchone():
            return incident, False
        wallets = orjson.dumps(sorted({alert.key, *alert.incident_wallets})).decode()
        row = db.execute(
            "SELECT p.incident_id FROM pages p JOIN page_wallets w ON w.page = p.incident_id"
            " WHERE p.resolved_at IS NULL AND p.acknowledged_at IS NULL AND w.last_time >= ?"
            " AND w.wallet IN (SELECT value FROM json_each(?))"
            # The most severe page first: a wallet that only warned (to Slack, say) before the
            # first freeze was paged must not draw the incident away from that page.
            " ORDER BY (SELECT MAX(CASE r.severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1"
            " ELSE 0 END) FROM routed r WHERE r.incident_id = p.incident_id AND r.verdict = ?)"
            " DESC, p.opened_at, p.incident_id LIMIT 1",
            (to_iso(alert.time - self.join), wallets, Verdict.NOTIFY.value),
        ).fetchone()
        if row is None:
            return incident, False
        return str(row["incident_id"]), True

    @staticmethod
    def _joined(db: sqlite3.Connection, incident_id: str) -> str | None:
        """The page an incident joined (:meth:`page_of`), if it joined one."""
        row = db.execute(
            "SELECT page FROM page_aliases WHERE incident_id = ?", (incident_id,)
        ).fetchone()
        return None if row is None else str(row["page"])

    def _open_pages(self, incident_id: str) -> tuple[frozenset[str], frozenset[str]]:
        """The channels holding the incident's open page, and those it was escalated to."""
        page = self.page(incident_id)
        if page is None or page.resolved_at is not None:
            return frozenset(), frozenset()
        rows = self._rows(
            "SELECT channel, action FROM notifications WHERE incident_id = ? AND generation = ?"
            " AND action IN ('trigger', 'update', 'escalate')",
            (incident_id, page.generation),
        )
        return (
            frozenset(row["channel"] for row in rows),
            frozenset(row["channel"] for row in rows if row["action"] == "escalate"),
        )

    def history(self, alert: Alert) -> History:
        """What bears on routing this alert: the same source's last notification, a duplicate,
        and the channels where its incident already has an open page."""
        last = self._rows(
            "SELECT alert_id, time, severity, freeze FROM routed WHERE source = ? AND verdict = ?"
            " AND time <= ? AND alert_id != ? ORDER BY time DESC, seq DESC LIMIT 1",
            (_source(alert), Verdict.NOTIFY.value, to_iso(alert.time), alert.id),
        )
        dup = self._rows(
            "SELECT alert_id, time FROM routed WHERE fingerprint = ? AND verdict = ?"
            " AND alert_id != ? ORDER BY time DESC, seq DESC LIMIT 1",
            (fingerprint(alert), Verdict.NOTIFY.value, alert.id),
        )
        open_pages, escalated_to = self._open_pages(self.page_of(alert))
        return History(
            last_same_source=(
                Sent(
                    last[0]["alert_id"],
                    _iso(last[0]["time"]) or alert.time,
                    Severity(last[0]["severity"]),
                    bool(last[0]["freeze"]),
                )
                if last
                else None
            ),
            duplicate_of=dup[0]["alert_id"] if dup else None,
            duplicate_time=_iso(dup[0]["time"]) if dup else None,
            open_pages=open_pages,
            escalated_to=escalated_to,
        )

    def enqueue(self, alert: Alert, plan: Plan, *, now: datetime) -> RoutedRecord:
        """Record the decision for an alert and queue its notifications, atomically.

        An alert already routed is left alone: the recorded decision is returned. Notifications
        go to the alert's page (:meth:`page_of`).
        """
        with self._transaction() as db:
            incident, joins = self._page_of(db, alert)
            cur = db.execute(
                "INSERT OR IGNORE INTO routed (alert_id, incident_id, source, fingerprint,"
                " severity, freeze, time, verdict, detail, routed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.id,
                    incident,
                    _source(alert),
                    fingerprint(alert),
                    alert.severity.value,
                    int(alert.freeze and not alert.shadow),
                    to_iso(alert.time),
                    plan.verdict.value,
                    plan.reason,
                    to_iso(now),
                ),
            )
            if cur.rowcount == 0:
                row = db.execute(
                    "SELECT verdict, detail FROM routed WHERE alert_id = ?", (alert.id,)
                ).fetchone()
                return RoutedRecord(alert.id, incident, Verdict(row["verdict"]), row["detail"])
            if joins:
                db.execute(
                    "INSERT OR IGNORE INTO page_aliases (incident_id, page) VALUES (?, ?)",
                    (alert.incident_id, incident),
                )
            if plan.notify:
                generation, acknowledged = self._open_page(db, incident, now)
                for wallet in {alert.key, *alert.incident_wallets}:
                    db.execute(
                        "INSERT INTO page_wallets (page, wallet, last_time) VALUES (?, ?, ?)"
                        " ON CONFLICT (page, wallet) DO UPDATE SET"
                        " last_time = MAX(last_time, excluded.last_time)",
                        (incident, wallet, to_iso(alert.time)),
                    )
                for channel, action in plan.deliveries:
                    notification = Notification(
                        f"{alert.id}/{channel}/{action.value}", channel, action, incident, alert
                    )
                    self._insert(db, notification, generation, now)
                if not acknowledged:
                    for channel, after_s in plan.escalations:
                        db.execute(
                            "INSERT OR IGNORE INTO escalations (incident_id, generation, channel,"
                            " alert_id, after_s, due_at, state) VALUES (?, ?, ?, ?, ?, ?, 'armed')",
                            (
                                incident,
                                generation,
                                channel,
                                alert.id,
                                after_s,
                                to_iso(now + timedelta(seconds=after_s)),
                            ),
                        )
        return RoutedRecord(alert.id, incident, plan.verdict, plan.reason)

    @staticmethod
    def _open_page(db: sqlite3.Connection, incident: str, now: datetime) -> tuple[int, bool]:
        """The page's generation for a new notification (a new one after a resolve); acked?"""
        row = db.execute(
            "SELECT generation, acknowledged_at, resolved_at FROM pages WHERE incident_id = ?",
            (incident,),
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO pages (incident_id, generation, opened_at) VALUES (?, 1, ?)",
                (incident, to_iso(now)),
            )
            return 1, False
        if row["resolved_at"] is not None:
            generation = int(row["generation"]) + 1
            db.execute(
                "UPDATE pages SET generation = ?, opened_at = ?, acknowledged_at = NULL,"
                " acknowledged_by = NULL, resolved_at = NULL, resolved_by = NULL"
                " WHERE incident_id = ?",
                (generation, to_iso(now), incident),
            )
            return generation, False
        return int(row["generation"]), row["acknowledged_at"] is not None

    @staticmethod
    def _insert(
        db: sqlite3.Connection, notification: Notification, generation: int, now: datetime
    ) -> None:
        """Queue one notification, due now; a repeat of its id is ignored."""
        db.execute(
            "INSERT OR IGNORE INTO notifications (id, channel, action, incident_id, generation,"
            " alert_id, alert, note, created_at, status, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                notification.id,
                notification.channel,
                notification.action.value,
                notification.incident_id,
                generation,
                notification.alert.id,
                notification.alert.to_json(),
                notification.note,
                to_iso(now),
                PENDING,
                to_iso(now),
            ),
        )

    # --- acknowledge, resolve, escalate --------------------------------------------------------

    def _close_page(
        self, incident_id: str, action: NotificationAction, by: str, now: datetime
    ) -> list[Notification]:
        column = "acknowledged" if action is NotificationAction.ACKNOWLEDGE else "resolved"
        with self._transaction() as db:
            # An incident that joined a wallet's page acts on that page.
            incident_id = self._joined(db, incident_id) or incident_id
            page = db.execute(
                "SELECT generation, acknowledged_at, resolved_at FROM pages WHERE incident_id = ?",
                (incident_id,),
            ).fetchone()
            if page is None or page["resolved_at"] is not None or page[f"{column}_at"] is not None:
                return []
            generation = int(page["generation"])
            db.execute(
                f"UPDATE pages SET {column}_at = ?, {column}_by = ? WHERE incident_id = ?",  # noqa: S608 - fixed column
                (to_iso(now), by, incident_id),
            )
            db.execute(
                "UPDATE escalations SET state = 'cancelled'"
                " WHERE incident_id = ? AND generation = ? AND state = 'armed'",
                (incident_id, generation),
            )
            rows = db.execute(
                "SELECT channel, alert FROM notifications WHERE seq IN (SELECT MAX(seq) FROM"
                " notifications WHERE incident_id = ? AND generation = ?"
                " AND action IN ('trigger', 'update', 'escalate') GROUP BY channel) ORDER BY seq",
                (incident_id, generation),
            ).fetchall()
            queued = []
            note = f"{column} by {by}"
            for row in rows:
                alert = decode(ALERTS, row["alert"], Alert)
                nid = f"{incident_id}/{generation}/{row['channel']}/{action.value}"
                notification = Notification(nid, row["channel"], action, incident_id, alert, note)
                self._insert(db, notification, generation, now)
                queued.append(notification)
        return queued

    def acknowledge(self, incident_id: str, *, by: str, now: datetime) -> list[Notification]:
        """Someone took the incident: disarm its escalations and tell each channel holding a page.

        Returns the notifications queued; empty when the page is unknown, or already
        acknowledged or resolved.
        """
        return self._close_page(incident_id, NotificationAction.ACKNOWLEDGE, by, now)

    def resolve(self, incident_id: str, *, by: str, now: datetime) -> list[Notification]:
        """The incident is over: disarm its escalations, resolve its pages.

        A later alert of the same incident opens a new page.
        """
        return self._close_page(incident_id, NotificationAction.RESOLVE, by, now)

    def escalate_due(self, now: datetime) -> list[Notification]:
        """Fire every armed escalation whose time has come; return the notifications queued."""
        queued: list[Notification] = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT e.incident_id, e.generation, e.channel, e.alert_id, e.after_s,"
                " n.alert FROM escalations e JOIN notifications n ON n.alert_id = e.alert_id"
                " WHERE e.state = 'armed' AND e.due_at <= ?"
                " GROUP BY e.incident_id, e.generation, e.channel ORDER BY e.due_at",
                (to_iso(now),),
            ).fetchall()
            for row in rows:
                esc = _Escalation(
                    row["incident_id"],
                    row["generation"],
                    row["channel"],
                    row["alert_id"],
                    float(row["after_s"]),
                )
                alert = decode(ALERTS, row["alert"], Alert)
                note = f"not acknowledged within {esc.after_s:g} s"
                nid = f"{esc.incident_id}/{esc.generation}/{esc.channel}/escalate"
                notification = Notification(
                    nid, esc.channel, NotificationAction.ESCALATE, esc.incident_id, alert, note
                )
                self._insert(db, notification, esc.generation, now)
                db.execute(
                    "UPDATE escalations SET state = 'fired'"
                    " WHERE incident_id = ? AND generation = ? AND channel = ?",
                    (esc.incident_id, esc.generation, esc.channel),
                )
                queued.append(notification)
        return queued

    # --- delivery ------------------------------------------------------------------------------

    def due(self, now: datetime, limit: int = 100) -> list[Notification]:
        """Pending notifications due now, oldest first, at most one per (channel, incident)."""
        rows = self._rows(
            "SELECT * FROM notifications n WHERE n.status = ? AND n.next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM notifications p WHERE p.status = ?"
            " AND p.channel = n.channel AND p.incident_id = n.incident_id AND p.seq < n.seq)"
            " ORDER BY n.seq LIMIT ?",
            (PENDING, to_iso(now), PENDING, limit),
        )
        return [self._entry(row).notification for row in rows]

    def mark_delivered(self, notification_id: str, *, now: datetime, receipt: str) -> None:
        """The channel acknowledged it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE notifications SET status = ?, delivered_at = ?, last_attempt_at = ?,"
                " attempts = attempts + 1, receipt = ? WHERE id = ?",
                (DELIVERED, to_iso(now), to_iso(now), receipt, notification_id),
            )

    def mark_failed(
        self,
        notification_id: str,
        *,
        now: datetime,
        error: str,
        retry_at: datetime,
        undeliverable: bool,
    ) -> bool:
        """Record a failed attempt and when to try again; True when it is newly undeliverable."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT undeliverable_since FROM notifications WHERE id = ?", (notification_id,)
            ).fetchone()
            newly = undeliverable and row is not None and row["undeliverable_since"] is None
            db.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_attempt_at = ?,"
                " last_error = ?, next_attempt_at = ?,"
                " undeliverable_since = COALESCE(undeliverable_since, ?) WHERE id = ?",
                (
                    to_iso(now),
                    error,
                    to_iso(retry_at),
                    to_iso(now) if undeliverable else None,
                    notification_id,
                ),
            )
        return newly

    def retry_now(self, now: datetime, *, channel: str | None = None) -> int:
        """Make every pending notification (of one channel) due now; return how many."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE notifications SET next_attempt_at = ? WHERE status = ?"
                " AND (? IS NULL OR channel = ?)",
                (to_iso(now), PENDING, channel, channel),
            )
            return cur.rowcount

    # --- reading -------------------------------------------------------------------------------

    @staticmethod
    def _entry(row: sqlite3.Row) -> OutboxEntry:
        return OutboxEntry(
            notification=Notification(
                row["id"],
                row["channel"],
                NotificationAction(row["action"]),
                row["incident_id"],
                decode(ALERTS, row["alert"], Alert),
                row["note"],
            ),
            status=row["status"],
            attempts=row["attempts"],
            created_at=_iso(row["created_at"]) or datetime.min.replace(tzinfo=UTC),
            next_attempt_at=_iso(row["next_attempt_at"]) or datetime.min.replace(tzinfo=UTC),
            last_attempt_at=_iso(row["last_attempt_at"]),
            last_error=row["last_error"],
            undeliverable_since=_iso(row["undeliverable_since"]),
            delivered_at=_iso(row["delivered_at"]),
            receipt=row["receipt"],
        )

    def entry(self, notification_id: str) -> OutboxEntry | None:
        """One notification by id."""
        rows = self._rows("SELECT * FROM notifications WHERE id = ?", (notification_id,))
        return self._entry(rows[0]) if rows else None

    def entries(
        self,
        *,
        status: str | None = None,
        incident_id: str | None = None,
        alert_id: str | None = None,
        channel: str | None = None,
    ) -> list[OutboxEntry]:
        """Notifications in queueing order, optionally filtered."""
        rows = self._rows(
            "SELECT * FROM notifications WHERE (? IS NULL OR status = ?)"
            " AND (? IS NULL OR incident_id = ?) AND (? IS NULL OR alert_id = ?)"
            " AND (? IS NULL OR channel = ?) ORDER BY seq",
            (status, status, incident_id, incident_id, alert_id, alert_id, channel, channel),
        )
        return [self._entry(row) for row in rows]

    def pending(self) -> list[OutboxEntry]:
        """Every notification not yet acknowledged by its channel."""
        return self.entries(status=PENDING)

    def undeliverable(self) -> list[OutboxEntry]:
        """Pending notifications reported undeliverable, with their last error."""
        return [e for e in self.pending() if e.undeliverable]

    def counts(self) -> dict[str, int]:
        """How many are ``pending``, ``undeliverable`` (of the pending) and ``delivered``."""
        rows = self._rows(
            "SELECT status, COUNT(*) AS n, COUNT(undeliverable_since) AS u FROM notifications"
            " GROUP BY status"
        )
        out = {PENDING: 0, "undeliverable": 0, DELIVERED: 0}
        for row in rows:
            out[row["status"]] = row["n"]
            if row["status"] == PENDING:
                out["undeliverable"] = row["u"]
        return out

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one :meth:`DeliveryWorker.run_once` did."""

    delivered: int = 0
    failed: int = 0
    escalated: int = 0
    newly_undeliverable: int = 0


class DeliveryWorker:
    """Sends the outbox's due notifications and fires due escalations.

    Call :meth:`run_once` from a loop of your own (a test passes ``now``), or :meth:`start` a
    background thread that calls it every ``poll_s``.

    Args:
        outbox: The outbox to empty.
        channels: The configured channels by name.
        timeline: Where deliveries, failures and escalations are recorded; None records nothing.
        clock: The current time (aware UTC).
        retry_backoff_s: The first wait after a failed attempt; it doubles each time.
        retry_backoff_max_s: The longest wait between attempts.
        undeliverable_after: Failed attempts before a notification is reported undeliverable.
        on_undeliverable: Called once for each notification reported undeliverable.
        poll_s: How often the background thread looks for due work.
        batch: The most notifications taken per pass.
    """

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        timeline: Timeline | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        retry_backoff_s: float = 5.0,
        retry_backoff_max_s: float = 300.0,
        undeliverable_after: int = 5,
        on_undeliverable: Callable[[OutboxEntry], None] | None = None,
        poll_s: float = 1.0,
        batch: int = 100,
    ) -> None:
        if undeliverable_after < 1:
            raise ValueError("undeliverable_after must be at least 1")
        self.outbox = outbox
        self.channels = dict(channels)
        self.timeline = timeline
        self.clock = clock
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.undeliverable_after = undeliverable_after
        self.on_undeliverable = on_undeliverable
        self.poll_s = poll_s
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for name in self.channels:  # series at 0 from the start, not "no data"
            for outcome in DELIVERY_OUTCOMES:
                ALERT_DELIVERIES_TOTAL.labels(channel=name, outcome=outcome)

    @classmethod
    def from_config(
        cls,
        config: AlertsConfig,
        outbox: Outbox,
        timeline: Timeline | None = None,
        *,
        tx_urls: Mapping[str, str] | None = None,
    ) -> DeliveryWorker:
        """The worker for ``[alerts]``: its channels and retry settings."""
        return cls(
            outbox,
            build_channels(config.channels, tx_urls=tx_urls),
            timeline,
            retry_backoff_s=config.retry_backoff_s,
            retry_backoff_max_s=config.retry_backoff_max_s,
            undeliverable_after=config.undeliverable_after,
        )

    def _record(
        self, kind: ActionKind, notification: Notification, now: datetime, detail: str
    ) -> None:
        if self.timeline is not None:
            self.timeline.record_action(kind, notification.alert, time=now, detail=detail)

    def _send(self, notification: Notification) -> str:
        channel = self.channels.get(notification.channel)
        if channel is None:
            # Kept, not dropped: a config that brings the channel back delivers it.
            raise ChannelError(notification.channel, "no such channel is configured")
        return channel.send(notification)

    def _deliver(self, notification: Notification, now: datetime) -> tuple[bool, bool]:
        """One attempt; (delivered, newly undeliverable)."""
        what = f"{notification.channel} {notification.action.value}"
        try:
            receipt = self._send(notification)
        except Exception as exc:  # any failure is a failed attempt; never lost
            permanent = isinstance(exc, ChannelError) and exc.permanent
            error = str(exc) if isinstance(exc, ChannelError) else f"{type(exc).__name__}: {exc}"
            entry = self.outbox.entry(notification.id)
            attempts = (entry.attempts if entry is not None else 0) + 1
            undeliverable = permanent or attempts >= self.undeliverable_after
            # A refusal will not mend itself soon: retry it at the longest interval.
            delay = (
                self.retry_backoff_max_s
                if permanent
                else retry_delay_s(attempts, self.retry_backoff_s, self.retry_backoff_max_s)
            )
            newly = self.outbox.mark_failed(
                notification.id,
                now=now,
                error=error,
                retry_at=now + timedelta(seconds=delay),
                undeliverable=undeliverable,
            )
            ALERT_DELIVERIES_TOTAL.labels(channel=notification.channel, outcome="failed").inc()
            if newly:
                ALERT_DELIVERIES_TOTAL.labels(
                    channel=notification.channel, outcome="undeliverable"
                ).inc()
            log.warning(
                "notification %s (%s) failed, attempt %d: %s",
                notification.id,
                what,
                attempts,
                error,
            )
            if newly:
                log.error(
                    "notification %s (%s) is undeliverable after %d attempts: %s; kept, retried"
                    " every %g s",
                    notification.id,
                    what,
                    attempts,
                    error,
                    self.retry_backoff_max_s,
                )
                self._record(
                    ActionKind.NOTIFICATION_FAILED,
                    notification,
                    now,
                    f"{what}: undeliverable after {attempts} attempts: {error}",
                )
                reported = self.outbox.entry(notification.id)
                if self.on_undeliverable is not None and reported is not None:
                    self.on_undeliverable(reported)
            return False, newly
        self.outbox.mark_delivered(notification.id, now=now, receipt=receipt)
        ALERT_DELIVERIES_TOTAL.labels(channel=notification.channel, outcome="delivered").inc()
        self._record(ActionKind.NOTIFICATION_DELIVERED, notification, now, f"{what}: {receipt}")
        return True, False

    def run_once(self, now: datetime | None = None) -> DeliveryReport:
        """Fire due escalations, then send what is due until a pass delivers nothing."""
        now = now or self.clock()
        escalated = self.outbox.escalate_due(now)
        for notification in escalated:
            self._record(
                ActionKind.NOTIFICATION_ESCALATED,
                notification,
                now,
                f"to {notification.channel}: {notification.note}",
            )
        delivered = failed = newly = 0
        while True:
            progress = 0
            for notification in self.outbox.due(now, self.batch):
                ok, new = self._deliver(notification, now)
                progress += ok
                failed += not ok
                newly += new
            delivered += progress
            # A delivery can unblock the next notification of the same page (trigger, then ack).
            if progress == 0:
                break
        return DeliveryReport(delivered, failed, len(escalated), newly)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.run_once()
            except Exception:  # a broken database must not kill paging silently; try again
                log.exception("delivery pass failed")
                report = DeliveryReport()
            if report.delivered == 0:
                self._stop.wait(self.poll_s)

    def start(self) -> None:
        """Run :meth:`run_once` in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="drainwatch-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background thread (what is pending stays in the outbox)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the channels."""
        self.stop()
        for channel in self.channels.values():
            channel.close()
