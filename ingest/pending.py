"""The EVM mempool as a :class:`ingest.base.PendingSource`: which watched-wallet transfers are
waiting to be mined right now.

Two ways to see it: ``txpool`` polls ``txpool_content`` (geth, anvil, Erigon, Reth, Nethermind
when its TxPool module is enabled) and is exact, since it lists the whole executable pool each
time; ``ws`` collects hashes from a ``newPendingTransactions`` subscription and re-checks the
ones that touch a watched wallet until they leave the pool. ``auto`` uses the txpool when the
node answers it and the subscription otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from drainwatch.events import Transfer
from ingest.evm import EvmSource
from ingest.rpc import RpcCallError, Subscriber

__all__ = ["EvmPending", "PendingMode", "follow"]

log = logging.getLogger(__name__)

PendingMode = Literal["auto", "ws", "txpool", "off"]


class EvmPending:
    """Pending transfers of the watched wallets (implements :class:`ingest.base.PendingSource`).

    Args:
        source: the EVM source (its node connection, wallets and token cache are shared).
        mode: ``txpool``, ``ws`` (needs :meth:`on_hash` fed by a subscription), ``auto`` or
            ``off``.
        clock: the time stamped on a transfer first seen pending.
    """

    def __init__(
        self,
        source: EvmSource,
        mode: PendingMode = "auto",
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source = source
        self.mode: PendingMode = mode
        self.clock = clock
        self._new: list[str] = []
        self._lock = threading.Lock()
        self._tracked: dict[str, list[Transfer]] = {}
        """The transfers of each transaction in the pool, built when it was first seen (with the
        wallet's balance then), so each snapshot repeats them exactly."""
        self._ignored: dict[str, None] = {}
        self._seen_at: dict[str, datetime] = {}

    def on_hash(self, tx_hash: str) -> None:
        """A hash from ``newPendingTransactions`` (called from the subscriber thread)."""
        with self._lock:
            self._new.append(str(tx_hash).lower())

    def pending(self) -> Sequence[Transfer]:
        """The watched wallets' transfers in the mempool now (``status=PENDING``)."""
        if self.mode in ("auto", "txpool"):
            try:
                return self._from_txpool()
            except RpcCallError as exc:
                if self.mode == "txpool" or not exc.unsupported:
                    raise
                log.warning(
                    "%s: no txpool_content (%s); using the pending-tx subscription",
                    self.source.chain,
                    exc,
                )
                self.mode = "ws"
        if self.mode == "ws":
            return self._from_hashes()
        return []

    def _stamp(self, tx_hash: str) -> datetime:
        # The first sighting's time, so a repeated snapshot builds the identical transfer.
        return self._seen_at.setdefault(tx_hash, self.clock())

    def _from_txpool(self) -> list[Transfer]:
        content = self.source.rpc.call("txpool_content")
        out: list[Transfer] = []
        live: set[str] = set()
        # "queued" transactions have a nonce gap and cannot be mined yet: not pending.
        for by_nonce in (content.get("pending") or {}).values():
            for tx in by_nonce.values():
                tx_hash = str(tx["hash"]).lower()
                live.add(tx_hash)
                if tx_hash in self._ignored:
                    continue
                found = self._tracked.get(tx_hash)
                if found is None:
                    found = self.source.pending_transfers(tx, self._stamp(tx_hash))
                if found:
                    self._tracked[tx_hash] = found
                    out += found
                else:
                    self._ignored[tx_hash] = None
        self._forget(live)
        return out

    def _from_hashes(self) -> list[Transfer]:
        with self._lock:
            new, self._new = self._new, []
        fresh = [h for h in dict.fromkeys(new) if h not in self._tracked and h not in self._ignored]
        check = [*self._tracked, *fresh]
        if not check:
            return []
        results = self.source.rpc.batch([("eth_getTransactionByHash", [h]) for h in check])
        out: list[Transfer] = []
        live: set[str] = set()
        for tx_hash, tx in zip(check, results, strict=True):
            if isinstance(tx, RpcCallError) or tx is None or tx.get("blockNumber") is not None:
                self._tracked.pop(tx_hash, None)  # dropped or mined: the tracker decides which
                continue
            live.add(tx_hash)
            if tx_hash not in self._tracked:
                found = self.source.pending_transfers(tx, self._stamp(tx_hash))
                if not found:
                    self._ignored[tx_hash] = None
                    continue
                self._tracked[tx_hash] = found
            out += self._tracked[tx_hash]
        self._forget(live | set(self._tracked))
        return out

    def _forget(self, live: set[str]) -> None:
        for table in (self._ignored, self._seen_at, self._tracked):
            for tx_hash in [h for h in table if h not in live]:
                del table[tx_hash]


def follow(
    ws_urls: Sequence[str], wake: Callable[[], None], pending: EvmPending | None, chain: str
) -> Subscriber:
    """Start a WebSocket subscriber that wakes the watcher on every new head (and pending
    transaction), feeding pending hashes to ``pending``; HTTP polling stays the fallback."""

    def on_event(kind: str, payload: Any) -> None:
        if kind == "pending" and pending is not None and isinstance(payload, str):
            pending.on_hash(payload)
        wake()

    want = pending is not None and pending.mode != "off"
    return Subscriber(ws_urls, on_event, chain=chain, pending=want).start()
