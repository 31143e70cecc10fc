"""Where each chain watcher has read up to: a durable SQLite cursor, recent block hashes, and
what was published from those blocks.

The recent hashes let the watcher find the fork point of a reorganisation by walking back; the
transfers published from the same blocks are what it retracts when they are replaced. Orphans
(published transfers of replaced blocks, waiting to be re-included or retracted) and outstanding
pending transfers live here too, so a restart picks up exactly where the last run was.

>>> store = CursorStore(":memory:", history=3)
>>> store.get("ethereum") is None
True
>>> for n in range(10, 15):
...     store.set("ethereum", n, f"0x{n:02x}")
>>> store.get("ethereum")
Cursor(number=14, hash='0x0e')
>>> store.hash_at("ethereum", 12), store.hash_at("ethereum", 11)
('0x0c', None)
>>> store.set("ethereum", 12, "0x0c")   # a rewind forgets the hashes above it
>>> store.hash_at("ethereum", 13) is None
True
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from drainwatch.events import TRANSFERS, Transfer, decode

__all__ = ["DEFAULT_HISTORY", "Cursor", "CursorStore"]

DEFAULT_HISTORY = 128
"""Block hashes kept per chain; a reorg deeper than this cannot be walked back automatically."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    chain TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS block_hash (
    chain TEXT NOT NULL,
    number INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (chain, number)
);
CREATE TABLE IF NOT EXISTS published (
    chain TEXT NOT NULL,
    number INTEGER NOT NULL,
    id TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (chain, number, id)
);
CREATE TABLE IF NOT EXISTS orphan (
    chain TEXT NOT NULL,
    id TEXT NOT NULL,
    until INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (chain, id)
);
CREATE TABLE IF NOT EXISTS pending (
    chain TEXT NOT NULL,
    id TEXT NOT NULL,
    gone_at INTEGER,
    payload BLOB NOT NULL,
    PRIMARY KEY (chain, id)
);
"""


class Cursor(NamedTuple):
    """The last block a watcher fully handled (published and acknowledged)."""

    number: int
    hash: str


class CursorStore:
    """Durable per-chain cursors in one SQLite file (``":memory:"`` for tests).

    Args:
        path: the SQLite file; created when missing.
        history: how many recent block hashes to keep per chain.
    """

    def __init__(self, path: str | Path, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.path = str(path)
        self.history = history
        # The watcher may run in another thread than the one that built the store.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)

    def get(self, chain: str) -> Cursor | None:
        """The cursor of ``chain``, or None when it has never read a block."""
        with self._lock:
            row = self._conn.execute(
                "SELECT number, hash FROM cursor WHERE chain = ?", (chain,)
            ).fetchone()
        return None if row is None else Cursor(int(row[0]), str(row[1]))

    def hash_at(self, chain: str, number: int) -> str | None:
        """The stored hash of block ``number`` of ``chain``, if it is still in the history."""
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM block_hash WHERE chain = ? AND number = ?", (chain, number)
            ).fetchone()
        return None if row is None else str(row[0])

    def set(
        self,
        chain: str,
        number: int,
        block_hash: str,
        *,
        transfers: Sequence[Transfer] = (),
        settled_orphans: Iterable[str] = (),
    ) -> None:
        """Move the cursor of ``chain`` to ``number`` and commit before returning.

        ``transfers`` are what was published from the block (kept as long as its hash, for
        retractions); ``settled_orphans`` are orphan ids re-included or retracted with it.
        Moving the cursor backwards also forgets the hashes and transfers above ``number``.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._set(chain, number, block_hash, transfers)
                self._conn.executemany(
                    "DELETE FROM orphan WHERE chain = ? AND id = ?",
                    [(chain, i) for i in settled_orphans],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _set(self, chain: str, number: int, block_hash: str, transfers: Sequence[Transfer]) -> None:
        self._conn.execute(
            "INSERT INTO cursor (chain, number, hash) VALUES (?, ?, ?) "
            "ON CONFLICT (chain) DO UPDATE SET number = excluded.number, hash = excluded.hash",
            (chain, number, block_hash),
        )
        for table in ("block_hash", "published"):
            self._conn.execute(
                f"DELETE FROM {table} WHERE chain = ? AND (number >= ? OR number <= ?)",  # noqa: S608
                (chain, number, number - self.history),
            )
        self._conn.execute(
            "INSERT INTO block_hash (chain, number, hash) VALUES (?, ?, ?)",
            (chain, number, block_hash),
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO published (chain, number, id, payload) VALUES (?, ?, ?, ?)",
            [(chain, number, t.id, t.to_json()) for t in transfers],
        )

    def rewind(
        self, chain: str, number: int, block_hash: str, *, orphans: Sequence[Transfer], until: int
    ) -> None:
        """Move the cursor back to the fork point ``number`` and keep ``orphans`` (published
        from the replaced blocks) until the new branch reaches block ``until``; atomically."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                kept = self._conn.execute(
                    "SELECT id, payload FROM published WHERE chain = ? AND number = ?",
                    (chain, number),
                ).fetchall()
                self._set(chain, number, block_hash, [])
                self._conn.executemany(
                    "INSERT OR REPLACE INTO published (chain, number, id, payload) "
                    "VALUES (?, ?, ?, ?)",
                    [(chain, number, i, p) for i, p in kept],
                )
                self._conn.executemany(
                    "INSERT INTO orphan (chain, id, until, payload) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (chain, id) DO UPDATE SET until = MAX(until, excluded.until), "
                    "payload = excluded.payload",
                    [(chain, t.id, until, t.to_json()) for t in orphans],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def published(self, chain: str, first: int, last: int) -> list[Transfer]:
        """The transfers published from blocks ``first..last`` (inclusive) still in history."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT payload FROM published WHERE chain = ? AND number BETWEEN ? AND ? "
                "ORDER BY number, rowid",
                (chain, first, last),
            ).fetchall()
        return [decode(TRANSFERS, bytes(r[0]), Transfer) for r in rows]

    def orphans(self, chain: str) -> list[tuple[Transfer, int]]:
        """Published transfers of replaced blocks, each with the block the new branch must reach
        before it is retracted."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT payload, until FROM orphan WHERE chain = ? ORDER BY rowid", (chain,)
            ).fetchall()
        return [(decode(TRANSFERS, bytes(p), Transfer), int(u)) for p, u in rows]

    def save_pending(self, chain: str, entries: Iterable[tuple[Transfer, int | None]]) -> None:
        """Replace the outstanding pending transfers of ``chain`` (see ``PendingTracker``)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM pending WHERE chain = ?", (chain,))
                self._conn.executemany(
                    "INSERT INTO pending (chain, id, gone_at, payload) VALUES (?, ?, ?, ?)",
                    [(chain, t.id, gone, t.to_json()) for t, gone in entries],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def load_pending(self, chain: str) -> list[tuple[Transfer, int | None]]:
        """The outstanding pending transfers saved by :meth:`save_pending`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT payload, gone_at FROM pending WHERE chain = ? ORDER BY rowid", (chain,)
            ).fetchall()
        return [
            (decode(TRANSFERS, bytes(p), Transfer), None if g is None else int(g)) for p, g in rows
        ]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CursorStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
