"""The local, append-only record of what the alerts stage saw and did, per wallet, in SQLite.

Three append-only tables: the transfers the stage saw, the alerts (one row per alert id, so a
replayed alert is recognised), and the actions taken (notifications, freeze requests, kill-switch
answers and failures). A fourth table marks an alert *processed* once all its effects succeeded;
:class:`alerts.Alerter` de-duplicates on that mark, not on the alert row (see its docstring).
A fifth table holds the notes responders add to an incident (``drainwatch incidents note``).
Rows are never updated or deleted: triggers refuse it.

Every row has an event time (when it happened on chain or, for an action, on the stage's clock) and
a recorded-at time (the timeline's clock), both aware UTC stored as fixed-width ISO strings.

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> tl = Timeline(":memory:", clock=lambda: t)
>>> alert = Alert(
...     id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B", severity=Severity.CRITICAL,
...     detector="velocity", freeze=True, summary="31% drained in 4 min",
... )
>>> tl.record_alert(alert), tl.record_alert(alert)
(True, False)
>>> _ = tl.record_action(ActionKind.NOTIFIED, alert, time=t, detail="console")
>>> [type(e).__name__ for e in tl.wallet_timeline("nem", "NC3B")]
['AlertRecord', 'ActionRecord']
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from drainwatch.events import (
    ALERTS,
    FREEZES,
    TRANSFERS,
    Alert,
    FreezeOrder,
    Transfer,
    decode,
    normalize_address,
)
from drainwatch.sqlite import open_sqlite

__all__ = [
    "ActionKind",
    "ActionRecord",
    "AlertRecord",
    "NoteRecord",
    "Timeline",
    "TimelineEntry",
    "TransferRecord",
    "incident_of",
    "to_iso",
    "utc_now",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL, status TEXT NOT NULL, chain TEXT NOT NULL, wallet TEXT NOT NULL,
    time TEXT NOT NULL, recorded_at TEXT NOT NULL, payload BLOB NOT NULL,
    UNIQUE (id, status)
);
CREATE INDEX IF NOT EXISTS transfers_wallet ON transfers (chain, wallet, time);
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, chain TEXT NOT NULL, wallet TEXT NOT NULL, incident_id TEXT NOT NULL,
    severity TEXT NOT NULL, freeze INTEGER NOT NULL, shadow INTEGER NOT NULL,
    time TEXT NOT NULL, recorded_at TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_wallet ON alerts (chain, wallet, time);
CREATE TABLE IF NOT EXISTS actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, chain TEXT NOT NULL, wallet TEXT NOT NULL, alert_id TEXT,
    incident_id TEXT NOT NULL, time TEXT NOT NULL, recorded_at TEXT NOT NULL,
    detail TEXT NOT NULL, freeze_order BLOB
);
CREATE INDEX IF NOT EXISTS actions_wallet ON actions (chain, wallet, time);
CREATE INDEX IF NOT EXISTS actions_alert ON actions (alert_id, kind);
CREATE TABLE IF NOT EXISTS processed (alert_id TEXT PRIMARY KEY, processed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL,
    time TEXT NOT NULL, recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_incident ON notes (incident_id, time);
"""
_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;
"""


def utc_now() -> datetime:
    """The wall clock, aware UTC (the default clock of the stage)."""
    return datetime.now(UTC)


def to_iso(moment: datetime) -> str:
    """A fixed-width UTC ISO string, so that string order is time order in SQL.

    >>> from datetime import timedelta, timezone
    >>> to_iso(datetime(2018, 1, 26, 11, 57, tzinfo=timezone(timedelta(hours=9))))
    '2018-01-26T02:57:00.000000+00:00'
    >>> to_iso(datetime(2018, 1, 26))
    Traceback (most recent call last):
    ...
    ValueError: naive datetime 2018-01-26 00:00:00: times must be timezone-aware
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment}: times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def incident_of(alert: Alert) -> str:
    """The incident an alert belongs to (incidents proper are a later issue).

    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="ethereum", wallet="0xAB",
    ...           severity=Severity.INFO, detector="d", freeze=False, summary="s")
    >>> incident_of(a), incident_of(a.model_copy(update={"incident_id": "inc-7"}))
    ('ethereum:0xab', 'inc-7')
    """
    return alert.incident_id or alert.key


class ActionKind(StrEnum):
    """What the alerts stage did about an alert."""

    NOTIFIED = "notified"
    """A person was told (``detail`` names the channel)."""
    FREEZE_REQUESTED = "freeze_requested"
    """A freeze request is about to go to the kill switch."""
    FREEZE_ACCEPTED = "freeze_accepted"
    """The kill switch answered with its order (new, or the existing one for a frozen wallet)."""
    FREEZE_FAILED = "freeze_failed"
    """The request did not get through after every retry; it is retried on restart."""
    FREEZE_SKIPPED = "freeze_skipped"
    HOOK_DELIVERED = "hook_delivered"
    """The kill switch's hook (webhook, custody freeze API) acknowledged an order."""
    HOOK_FAILED = "hook_failed"
    """A hook delivery attempt failed; the kill switch retries it."""
    HOOK_ESCALATED = "hook_escalated"
    """A hook stayed unacknowledged past the escalation limit."""
    """The alert asked for a freeze that was not sent (shadow mode, or no kill switch)."""
    NOTIFICATION_QUEUED = "notification_queued"
    """Notifications were put in the outbox (``detail`` names the channels and actions)."""
    NOTIFICATION_SUPPRESSED = "notification_suppressed"
    """No notification: no route, a duplicate, or the cooldown (``detail`` says which)."""
    NOTIFICATION_DELIVERED = "notification_delivered"
    """A channel acknowledged a notification."""
    NOTIFICATION_FAILED = "notification_failed"
    """A notification is undeliverable so far; it stays in the outbox and is still retried."""
    NOTIFICATION_ESCALATED = "notification_escalated"
    """A critical page was not acknowledged in time; the escalation channels were paged."""
    PAGE_ACKNOWLEDGED = "page_acknowledged"
    """Someone acknowledged the incident's page (``detail`` says who)."""
    PAGE_RESOLVED = "page_resolved"
    """Someone resolved the incident's page (``detail`` says who)."""


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A transfer as the timeline saw it (one record per transfer id and status)."""

    kind: ClassVar[str] = "transfer"
    seq: int
    recorded_at: datetime
    transfer: Transfer

    @property
    def time(self) -> datetime:
        """Event time: the transfer's block (or mempool) time."""
        return self.transfer.time


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as first received."""

    kind: ClassVar[str] = "alert"
    seq: int
    recorded_at: datetime
    incident_id: str
    alert: Alert

    @property
    def time(self) -> datetime:
        """Event time: the time of the transfer that triggered the alert."""
        return self.alert.time


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One thing the stage did: a notification, a freeze request, its answer or its failure."""

    kind: ClassVar[str] = "action"
    seq: int
    action: ActionKind
    time: datetime
    recorded_at: datetime
    chain: str
    wallet: str
    alert_id: str | None
    incident_id: str
    detail: str
    order: FreezeOrder | None = None
    """The kill switch's order, on ``freeze_accepted``."""


@dataclass(frozen=True, slots=True)
class NoteRecord:
    """A note a responder added to an incident (append-only: a correction is another note)."""

    kind: ClassVar[str] = "note"
    seq: int
    incident_id: str
    author: str
    text: str
    time: datetime
    recorded_at: datetime


TimelineEntry = TransferRecord | AlertRecord | ActionRecord

# Within one instant, causes before effects.
_RANK: dict[str, int] = {"transfer": 0, "alert": 1, "action": 2}


def _order_key(entry: TimelineEntry) -> tuple[datetime, int, int]:
    return (entry.time, _RANK[entry.kind], entry.seq)


class Timeline:
    """An append-only SQLite timeline; ``":memory:"`` for a throwaway one.

    Safe to share between threads (one connection behind a lock).

    Args:
        path: The SQLite file, or ``":memory:"``.
        clock: Gives the recorded-at time (aware UTC).
    """

    def __init__(self, path: str = ":memory:", clock: Callable[[], datetime] = utc_now) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = open_sqlite(path, create_dir=True)
        self._db.executescript(_SCHEMA)
        for table in ("transfers", "alerts", "actions", "notes"):
            self._db.executescript(_APPEND_ONLY.format(table=table))

    def _insert(self, sql: str, params: Sequence[object]) -> tuple[bool, int]:
        """Run one ``INSERT OR IGNORE``; return (inserted, rowid)."""
        with self._lock:
            cur = self._db.execute(sql, params)
            return cur.rowcount == 1, int(cur.lastrowid or 0)

    def _select(self, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    # --- writing -------------------------------------------------------------------------------

    def record_transfer(self, transfer: Transfer) -> bool:
        """Append a transfer; False when this id was already recorded with this status.

        A reorg retraction has the same id as the transfer it undoes, so the key is (id, status):
        the timeline shows both the confirmation and the retraction.
        """
        inserted, _ = self._insert(
            "INSERT OR IGNORE INTO transfers"
            " (id, status, chain, wallet, time, recorded_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                transfer.id,
                transfer.status.value,
                transfer.chain,
                normalize_address(transfer.wallet),
                to_iso(transfer.time),
                to_iso(self.clock()),
                transfer.to_json(),
            ),
        )
        return inserted

    def record_alert(self, alert: Alert) -> bool:
        """Append an alert; False when an alert with this id is already in the timeline."""
        inserted, _ = self._insert(
            "INSERT OR IGNORE INTO alerts (id, chain, wallet, incident_id, severity, freeze,"
            " shadow, time, recorded_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.id,
                alert.chain,
                normalize_address(alert.wallet),
                incident_of(alert),
                alert.severity.value,
                int(alert.freeze),
                int(alert.shadow),
                to_iso(alert.time),
                to_iso(self.clock()),
                alert.to_json(),
            ),
        )
        return inserted

    def record_hook_result(
        self,
        kind: ActionKind,
        *,
        chain: str,
        wallet: str,
        alert_id: str | None,
        time: datetime,
        detail: str,
    ) -> None:
        """Append a kill-switch hook result; it joins the incident of the alert behind the order."""
        wallet = normalize_address(wallet)
        rows = self._select("SELECT incident_id FROM alerts WHERE id = ?", (alert_id,))
        incident = rows[0]["incident_id"] if rows else f"{chain}:{wallet}"
        self._insert(
            "INSERT INTO actions (kind, chain, wallet, alert_id, incident_id, time, recorded_at,"
            " detail, freeze_order) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind.value,
                chain,
                wallet,
                alert_id,
                incident,
                to_iso(time),
                to_iso(self.clock()),
                detail,
                None,
            ),
        )

    def record_action(
        self,
        action: ActionKind,
        alert: Alert,
        *,
        time: datetime,
        detail: str = "",
        order: FreezeOrder | None = None,
    ) -> ActionRecord:
        """Append one action taken about ``alert``; return it as recorded."""
        recorded_at = self.clock()
        wallet = normalize_address(alert.wallet)
        _, seq = self._insert(
            "INSERT INTO actions (kind, chain, wallet, alert_id, incident_id, time, recorded_at,"
            " detail, freeze_order) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                action.value,
                alert.chain,
                wallet,
                alert.id,
                incident_of(alert),
                to_iso(time),
                to_iso(recorded_at),
                detail,
                order.to_json() if order is not None else None,
            ),
        )
        return ActionRecord(
            seq=seq,
            action=action,
            time=time.astimezone(UTC),
            recorded_at=recorded_at.astimezone(UTC),
            chain=alert.chain,
            wallet=wallet,
            alert_id=alert.id,
            incident_id=incident_of(alert),
            detail=detail,
            order=order,
        )

    def mark_processed(self, alert_id: str) -> None:
        """Mark an alert as fully handled: every effect it asked for has succeeded."""
        self._insert(
            "INSERT OR IGNORE INTO processed (alert_id, processed_at) VALUES (?, ?)",
            (alert_id, to_iso(self.clock())),
        )

    # --- reading -------------------------------------------------------------------------------

    def is_processed(self, alert_id: str) -> bool:
        """Whether :meth:`mark_processed` was called for this alert id."""
        rows = self._select("SELECT 1 FROM processed WHERE alert_id = ?", (alert_id,))
        return bool(rows)

    def has_action(self, alert_id: str, action: ActionKind) -> bool:
        """Whether an action of this kind was recorded for this alert."""
        rows = self._select(
            "SELECT 1 FROM actions WHERE alert_id = ? AND kind = ? LIMIT 1",
            (alert_id, action.value),
        )
        return bool(rows)

    def accepted_order(self, alert_id: str) -> FreezeOrder | None:
        """The kill switch's order recorded for this alert, if its freeze was accepted."""
        rows = self._select(
            "SELECT freeze_order FROM actions WHERE alert_id = ? AND kind = ?"
            " ORDER BY seq DESC LIMIT 1",
            (alert_id, ActionKind.FREEZE_ACCEPTED.value),
        )
        if not rows or rows[0]["freeze_order"] is None:
            return None
        return decode(FREEZES, rows[0]["freeze_order"], FreezeOrder)

    @staticmethod
    def _where(
        chain: str | None, wallet: str | None, alert_id: str | None = None
    ) -> tuple[str, list[object]]:
        """A WHERE clause over fixed column names; the values go in as parameters."""
        clauses: list[str] = []
        params: list[object] = []
        if alert_id is not None:
            clauses.append("alert_id = ?")
            params.append(alert_id)
        if chain is not None:
            clauses.append("chain = ?")
            params.append(chain)
        if wallet is not None:
            clauses.append("wallet = ?")
            params.append(normalize_address(wallet))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def transfers(
        self, wallet: str | None = None, *, chain: str | None = None
    ) -> list[TransferRecord]:
        """Recorded transfers, optionally for one wallet (and chain), in event-time order."""
        where, params = self._where(chain, wallet)
        rows = self._select(
            f"SELECT seq, recorded_at, payload FROM transfers{where} ORDER BY time, seq",  # noqa: S608 - fixed clauses
            params,
        )
        return [
            TransferRecord(
                seq=row["seq"],
                recorded_at=_from_iso(row["recorded_at"]),
                transfer=decode(TRANSFERS, row["payload"], Transfer),
            )
            for row in rows
        ]

    def alerts(self, wallet: str | None = None, *, chain: str | None = None) -> list[AlertRecord]:
        """Recorded alerts, optionally for one wallet (and chain), in event-time order."""
        where, params = self._where(chain, wallet)
        rows = self._select(
            f"SELECT seq, recorded_at, incident_id, payload FROM alerts{where}"  # noqa: S608 - fixed clauses
            " ORDER BY time, seq",
            params,
        )
        return [
            AlertRecord(
                seq=row["seq"],
                recorded_at=_from_iso(row["recorded_at"]),
                incident_id=row["incident_id"],
                alert=decode(ALERTS, row["payload"], Alert),
            )
            for row in rows
        ]

    def actions(
        self,
        wallet: str | None = None,
        *,
        chain: str | None = None,
        alert_id: str | None = None,
    ) -> list[ActionRecord]:
        """Recorded actions, optionally for one wallet (and chain) or one alert, in time order."""
        where, params = self._where(chain, wallet, alert_id)
        columns = "seq, kind, chain, wallet, alert_id, incident_id, time, recorded_at, detail"
        rows = self._select(
            f"SELECT {columns}, freeze_order FROM actions{where} ORDER BY time, seq",  # noqa: S608 - fixed clauses
            params,
        )
        return [
            ActionRecord(
                seq=row["seq"],
                action=ActionKind(row["kind"]),
                time=_from_iso(row["time"]),
                recorded_at=_from_iso(row["recorded_at"]),
                chain=row["chain"],
                wallet=row["wallet"],
                alert_id=row["alert_id"],
                incident_id=row["incident_id"],
                detail=row["detail"],
                order=(
                    decode(FREEZES, row["freeze_order"], FreezeOrder)
                    if row["freeze_order"] is not None
                    else None
                ),
            )
            for row in rows
        ]

    def wallet_timeline(self, chain: str, wallet: str) -> list[TimelineEntry]:
        """Everything recorded for one wallet, in event-time order (causes before effects)."""
        entries: list[TimelineEntry] = [
            *self.transfers(wallet, chain=chain),
            *self.alerts(wallet, chain=chain),
            *self.actions(wallet, chain=chain),
        ]
        return sorted(entries, key=_order_key)

    def add_note(
        self, incident_id: str, text: str, *, author: str, time: datetime | None = None
    ) -> NoteRecord:
        """Append a responder's note to an incident; ``time`` defaults to the timeline's clock.

        >>> from datetime import UTC, datetime
        >>> tl = Timeline(":memory:", clock=lambda: datetime(2018, 1, 26, 3, tzinfo=UTC))
        >>> note = tl.add_note("inc-1", "called the custody provider", author="kenji")
        >>> [(n.author, n.text) for n in tl.notes("inc-1")], tl.notes("inc-2")
        ([('kenji', 'called the custody provider')], [])
        """
        if not text.strip():
            raise ValueError("a note needs some text")
        if not author.strip():
            raise ValueError("a note needs an author")
        recorded_at = self.clock()
        moment = time if time is not None else recorded_at
        _, seq = self._insert(
            "INSERT INTO notes (incident_id, author, text, time, recorded_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (incident_id, author.strip(), text, to_iso(moment), to_iso(recorded_at)),
        )
        return NoteRecord(
            seq=seq,
            incident_id=incident_id,
            author=author.strip(),
            text=text,
            time=moment.astimezone(UTC),
            recorded_at=recorded_at.astimezone(UTC),
        )

    def notes(self, incident_id: str | None = None) -> list[NoteRecord]:
        """Responders' notes, optionally of one incident, in time order."""
        where = " WHERE incident_id = ?" if incident_id is not None else ""
        rows = self._select(
            "SELECT seq, incident_id, author, text, time, recorded_at FROM notes"  # noqa: S608 - fixed clause
            f"{where} ORDER BY time, seq",
            (incident_id,) if incident_id is not None else (),
        )
        return [
            NoteRecord(
                seq=row["seq"],
                incident_id=row["incident_id"],
                author=row["author"],
                text=row["text"],
                time=_from_iso(row["time"]),
                recorded_at=_from_iso(row["recorded_at"]),
            )
            for row in rows
        ]

    def transfers_between(
        self, chain: str, wallet: str, start: datetime, end: datetime
    ) -> list[TransferRecord]:
        """One wallet's transfers with ``start <= time <= end``, in event-time order."""
        rows = self._select(
            "SELECT seq, recorded_at, payload FROM transfers"
            " WHERE chain = ? AND wallet = ? AND time >= ? AND time <= ? ORDER BY time, seq",
            (chain, normalize_address(wallet), to_iso(start), to_iso(end)),
        )
        return [
            TransferRecord(
                seq=row["seq"],
                recorded_at=_from_iso(row["recorded_at"]),
                transfer=decode(TRANSFERS, row["payload"], Transfer),
            )
            for row in rows
        ]

    def transfers_with_ids(self, ids: Sequence[str]) -> list[TransferRecord]:
        """Every record (each status) of the transfers with these ids, in event-time order."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            rows.extend(
                self._select(
                    f"SELECT seq, time, recorded_at, payload FROM transfers WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                    chunk,
                )
            )
        rows.sort(key=lambda row: (row["time"], row["seq"]))
        return [
            TransferRecord(
                seq=row["seq"],
                recorded_at=_from_iso(row["recorded_at"]),
                transfer=decode(TRANSFERS, row["payload"], Transfer),
            )
            for row in rows
        ]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
