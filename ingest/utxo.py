"""The watched UTXO set: unspent outputs of watched wallets, durable in SQLite, undoable per block.

A Bitcoin input names the output it spends, not its owner or value; keeping the watched wallets'
own unspent outputs lets the watcher attribute inputs without a node-side transaction index.

Blocks are applied in one SQLite transaction each, together with their undo data (outputs created,
outputs spent with their owner and value) and the extended-key wallets' highest used address
index. The store keeps its own tip (height and hash of the last applied block), which makes
applying idempotent and safe against reorgs without sharing a transaction with the cursor:

* the UTXO store commits block *n* before the watcher publishes it and moves its cursor, so the
  store is never behind the cursor;
* asked for a block at or below its tip (a crash between commit and cursor, a re-read after a
  reorg), the store undoes back to that block's parent first and applies it again: the same
  inputs meet the same outputs and yield the same transfers;
* a block whose parent is not the store's tip is not applied (the watcher is about to find the
  fork point and rewind; undo data covers the last ``undo_depth`` blocks).

>>> store = UtxoStore(":memory:")
>>> store.apply("btc", 1, "h1", parent="h0", ops=[Op.create(("aa", 0), "addr", "w", 500)])
{'w': 500}
>>> store.apply("btc", 2, "h2", parent="h1", ops=[Op.spend(("aa", 0))])
{'w': 0}
>>> store.undo_to("btc", 1)
>>> store.lookup("btc", [("aa", 0)])
{('aa', 0): Utxo(address='addr', wallet='w', value=500)}
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

from ingest.errors import ReorgTooDeepError, WatcherError

__all__ = ["DEFAULT_UNDO_DEPTH", "Op", "Outpoint", "Utxo", "UtxoStore"]

DEFAULT_UNDO_DEPTH = 288
"""Blocks whose undo data is kept (two days of Bitcoin blocks; far deeper than real reorgs)."""

Outpoint = tuple[str, int]
"""(txid, output index)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS utxo (
    chain TEXT NOT NULL,
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    address TEXT NOT NULL,
    wallet TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (chain, txid, vout)
);
CREATE INDEX IF NOT EXISTS utxo_wallet ON utxo (chain, wallet);
CREATE TABLE IF NOT EXISTS utxo_block (
    chain TEXT NOT NULL,
    height INTEGER NOT NULL,
    hash TEXT NOT NULL,
    parent TEXT NOT NULL,
    PRIMARY KEY (chain, height)
);
CREATE TABLE IF NOT EXISTS utxo_undo (
    chain TEXT NOT NULL,
    height INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    address TEXT NOT NULL,
    wallet TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (chain, height, seq)
);
CREATE TABLE IF NOT EXISTS utxo_meta (
    chain TEXT PRIMARY KEY,
    origin INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_usage (
    chain TEXT NOT NULL,
    wallet TEXT NOT NULL,
    branch INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (chain, wallet, branch)
);
"""


class Utxo(NamedTuple):
    """A watched unspent output: which address and wallet own it, and its value in satoshi."""

    address: str
    wallet: str
    value: int


@dataclass(frozen=True, slots=True)
class Op:
    """One change to the watched set, in block order: an output created or spent."""

    kind: Literal["create", "spend"]
    outpoint: Outpoint
    utxo: Utxo | None = None
    """The created output (``create`` only)."""

    @classmethod
    def create(cls, outpoint: Outpoint, address: str, wallet: str, value: int) -> Op:
        """A watched output created."""
        return cls("create", outpoint, Utxo(address, wallet, value))

    @classmethod
    def spend(cls, outpoint: Outpoint) -> Op:
        """A watched output spent."""
        return cls("spend", outpoint)


class UtxoStore:
    """Watched unspent outputs per chain, with per-block undo data, in one SQLite file.

    Args:
        path: the SQLite file (``":memory:"`` for tests).
        undo_depth: blocks whose undo data is kept.
    """

    def __init__(self, path: str | Path, undo_depth: int = DEFAULT_UNDO_DEPTH) -> None:
        if undo_depth < 1:
            raise ValueError("undo_depth must be at least 1")
        self.path = str(path)
        self.undo_depth = undo_depth
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)

    def tip(self, chain: str) -> tuple[int, str] | None:
        """Height and hash of the last block applied, or None before the first."""
        with self._lock:
            row = self._conn.execute(
                "SELECT height, hash FROM utxo_block WHERE chain = ? ORDER BY height DESC LIMIT 1",
                (chain,),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def hash_at(self, chain: str, height: int) -> str | None:
        """Hash of applied block ``height`` while its undo data is kept."""
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM utxo_block WHERE chain = ? AND height = ?", (chain, height)
            ).fetchone()
        return None if row is None else str(row[0])

    def origin(self, chain: str) -> int | None:
        """The first block ever applied (the set knows nothing received before it)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT origin FROM utxo_meta WHERE chain = ?", (chain,)
            ).fetchone()
        return None if row is None else int(row[0])

    def lookup(self, chain: str, outpoints: Iterable[Outpoint]) -> dict[Outpoint, Utxo]:
        """The watched unspent outputs among ``outpoints``."""
        found: dict[Outpoint, Utxo] = {}
        wanted = list(dict.fromkeys(outpoints))
        with self._lock:
            for i in range(0, len(wanted), 400):  # stay under SQLite's variable limit
                chunk = wanted[i : i + 400]
                where = " OR ".join("(txid = ? AND vout = ?)" for _ in chunk)
                args: list[object] = [chain]
                for txid, vout in chunk:
                    args += [txid, vout]
                rows = self._conn.execute(
                    f"SELECT txid, vout, address, wallet, value FROM utxo "  # noqa: S608
                    f"WHERE chain = ? AND ({where})",
                    args,
                ).fetchall()
                for txid, vout, address, wallet, value in rows:
                    found[(str(txid), int(vout))] = Utxo(str(address), str(wallet), int(value))
        return found

    def balances(self, chain: str, wallets: Iterable[str]) -> dict[str, int]:
        """Sum of each wallet's watched unspent outputs, in satoshi."""
        with self._lock:
            return {w: self._balance(chain, w) for w in wallets}

    def _balance(self, chain: str, wallet: str) -> int:
        row = self._conn.execute(
            "SELECT COALESCE(SUM(value), 0) FROM utxo WHERE chain = ? AND wallet = ?",
            (chain, wallet),
        ).fetchone()
        return int(row[0])

    def key_usage(self, chain: str) -> dict[str, dict[int, int]]:
        """Highest used index per extended-key wallet and branch position."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT wallet, branch, used FROM key_usage WHERE chain = ?", (chain,)
            ).fetchall()
        usage: dict[str, dict[int, int]] = {}
        for wallet, branch, used in rows:
            usage.setdefault(str(wallet), {})[int(branch)] = int(used)
        return usage

    def apply(
        self,
        chain: str,
        height: int,
        block_hash: str,
        *,
        parent: str,
        ops: Sequence[Op],
        key_usage: Mapping[str, Mapping[int, int]] | None = None,
    ) -> dict[str, int]:
        """Apply one block's changes atomically; return the touched wallets' balances after it.

        The block must extend the tip (or be the first block). Key usage only ever grows (a
        reorg does not shrink it: watching a few more addresses is harmless).

        Raises:
            WatcherError: the block does not extend the tip, or a spent output is unknown.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                balances = self._apply(
                    chain, height, block_hash, parent=parent, ops=ops, key_usage=key_usage or {}
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return balances

    def _apply(
        self,
        chain: str,
        height: int,
        block_hash: str,
        *,
        parent: str,
        ops: Sequence[Op],
        key_usage: Mapping[str, Mapping[int, int]],
    ) -> dict[str, int]:
        c = self._conn
        row = c.execute(
            "SELECT height, hash FROM utxo_block WHERE chain = ? ORDER BY height DESC LIMIT 1",
            (chain,),
        ).fetchone()
        if row is not None and (int(row[0]) != height - 1 or str(row[1]) != parent):
            raise WatcherError(
                f"block {height} (parent {parent}) does not extend the UTXO tip {row[0]} "
                f"({row[1]})",
                chain=chain,
                block=height,
            )
        if row is None:
            c.execute(
                "INSERT OR IGNORE INTO utxo_meta (chain, origin) VALUES (?, ?)", (chain, height)
            )
        touched: dict[str, None] = {}
        for seq, op in enumerate(ops):
            txid, vout = op.outpoint
            if op.kind == "create":
                assert op.utxo is not None
                utxo = op.utxo
                c.execute(
                    "INSERT OR REPLACE INTO utxo (chain, txid, vout, address, wallet, value) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (chain, txid, vout, utxo.address, utxo.wallet, utxo.value),
                )
            else:
                found = c.execute(
                    "SELECT address, wallet, value FROM utxo WHERE chain = ? AND txid = ? "
                    "AND vout = ?",
                    (chain, txid, vout),
                ).fetchone()
                if found is None:
                    raise WatcherError(
                        f"spent output {txid}:{vout} is not in the watched set",
                        chain=chain,
                        block=height,
                    )
                utxo = Utxo(str(found[0]), str(found[1]), int(found[2]))
                c.execute(
                    "DELETE FROM utxo WHERE chain = ? AND txid = ? AND vout = ?",
                    (chain, txid, vout),
                )
            touched[utxo.wallet] = None
            c.execute(
                "INSERT INTO utxo_undo (chain, height, seq, kind, txid, vout, address, wallet, "
                "value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (chain, height, seq, op.kind, txid, vout, utxo.address, utxo.wallet, utxo.value),
            )
        for wallet, branches in key_usage.items():
            for branch, used in branches.items():
                c.execute(
                    "INSERT INTO key_usage (chain, wallet, branch, used) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (chain, wallet, branch) DO UPDATE SET "
                    "used = MAX(used, excluded.used)",
                    (chain, wallet, branch, used),
                )
        c.execute(
            "INSERT INTO utxo_block (chain, height, hash, parent) VALUES (?, ?, ?, ?)",
            (chain, height, block_hash, parent),
        )
        # Undo data for the last ``undo_depth`` blocks; the block below them stays as the base
        # (its hash is the tip once all of them are undone).
        floor = height - self.undo_depth
        c.execute("DELETE FROM utxo_block WHERE chain = ? AND height < ?", (chain, floor))
        c.execute("DELETE FROM utxo_undo WHERE chain = ? AND height <= ?", (chain, floor))
        return {w: self._balance(chain, w) for w in touched}

    def undo_to(self, chain: str, height: int) -> None:
        """Undo every applied block above ``height`` (one transaction).

        Raises:
            ReorgTooDeepError: the undo data of a block above ``height`` is no longer kept.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._undo_to(chain, height)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _undo_to(self, chain: str, height: int) -> None:
        c = self._conn
        rows = c.execute(
            "SELECT height FROM utxo_block WHERE chain = ? AND height > ? ORDER BY height DESC",
            (chain, height),
        ).fetchall()
        if not rows:
            return
        oldest = int(
            c.execute("SELECT MIN(height) FROM utxo_block WHERE chain = ?", (chain,)).fetchone()[0]
        )
        origin = c.execute("SELECT origin FROM utxo_meta WHERE chain = ?", (chain,)).fetchone()
        # Before any pruning the oldest block is the origin, with its undo data: undoing below it
        # empties the set. After pruning the oldest block is a base without undo data.
        pruned = origin is None or int(origin[0]) != oldest
        if height < oldest and pruned:
            raise ReorgTooDeepError(
                f"cannot undo the UTXO set to block {height}: undo data starts at {oldest + 1}",
                chain=chain,
                block=height,
            )
        for (undo_height,) in rows:
            ops = c.execute(
                "SELECT kind, txid, vout, address, wallet, value FROM utxo_undo "
                "WHERE chain = ? AND height = ? ORDER BY seq DESC",
                (chain, undo_height),
            ).fetchall()
            for kind, txid, vout, address, wallet, value in ops:
                if kind == "create":
                    c.execute(
                        "DELETE FROM utxo WHERE chain = ? AND txid = ? AND vout = ?",
                        (chain, txid, vout),
                    )
                else:
                    c.execute(
                        "INSERT OR REPLACE INTO utxo (chain, txid, vout, address, wallet, value) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (chain, txid, vout, address, wallet, value),
                    )
            c.execute("DELETE FROM utxo_undo WHERE chain = ? AND height = ?", (chain, undo_height))
            c.execute("DELETE FROM utxo_block WHERE chain = ? AND height = ?", (chain, undo_height))
        if origin is not None and height < int(origin[0]):
            # Undone to before the first block: the next block applied is the new origin.
            c.execute("DELETE FROM utxo_meta WHERE chain = ?", (chain,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> UtxoStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
