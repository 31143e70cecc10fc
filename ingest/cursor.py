"""Where each chain watcher has read up to: a durable SQLite cursor plus recent block hashes.

The recent hashes let the watcher find the fork point of a reorganisation by walking back.

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
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

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

    def set(self, chain: str, number: int, block_hash: str) -> None:
        """Move the cursor of ``chain`` to ``number`` and commit before returning.

        Moving it backwards (a rewind after a reorg) also forgets the hashes above ``number``.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO cursor (chain, number, hash) VALUES (?, ?, ?) "
                    "ON CONFLICT (chain) DO UPDATE SET number = excluded.number, "
                    "hash = excluded.hash",
                    (chain, number, block_hash),
                )
                self._conn.execute(
                    "DELETE FROM block_hash WHERE chain = ? AND (number >= ? OR number <= ?)",
                    (chain, number, number - self.history),
                )
                self._conn.execute(
                    "INSERT INTO block_hash (chain, number, hash) VALUES (?, ?, ?)",
                    (chain, number, block_hash),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

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
