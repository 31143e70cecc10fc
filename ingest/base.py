"""The chain-agnostic watcher: which blocks are safe to read, the loop that reads them, reorg
retractions, and the pending (mempool) tracker.

A chain plugs in as a :class:`ChainSource` (``evm.py``, ``bitcoin.py``) and, for early sight of
unmined transactions, a :class:`PendingSource`. The watcher reads blocks that have enough
confirmations, hands each block's transfers to ``publish`` (which must return only once they are
durable on the bus), and only then moves the cursor. A crash therefore repeats a block and never
skips one; transfer ids are deterministic, so readers drop the repeats.

Transfer ids do not depend on where a transaction lands: ``position`` is defined by the chain
source from the transaction alone (EVM: native value 0, the *k*-th log of the transaction 1 + k,
the *k*-th call of its trace 10_000 + k), so the pending, confirmed, retracted and re-included
versions of one transfer share one id and differ only in ``status`` and block fields.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from drainwatch.errors import DrainwatchError
from drainwatch.events import Direction, Transfer, TransferStatus
from ingest import metrics
from ingest.cursor import CursorStore
from ingest.errors import ReorgTooDeepError

__all__ = [
    "BatchSource",
    "BlockData",
    "ChainSource",
    "HashSource",
    "PendingSource",
    "PendingTracker",
    "Publish",
    "Watcher",
    "as_if_mined",
    "next_range",
    "retracted",
]

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Transfer]], None]
"""Sends transfers and returns once they are acknowledged (e.g. producer send + flush)."""


@dataclass(frozen=True, slots=True)
class BlockData:
    """One block as the watcher needs it: identity, link to its parent, time, our transfers."""

    number: int
    hash: str
    parent_hash: str
    time: datetime
    """Block time, timezone-aware UTC."""
    transfers: tuple[Transfer, ...] = ()
    """Transfers of watched wallets in this block, in chain order."""


class ChainSource(Protocol):
    """A chain as the watcher reads it. Implementations retry transient failures themselves."""

    def head(self) -> int:
        """The number of the newest block the node knows."""
        ...

    def block(self, number: int) -> BlockData:
        """Block ``number`` of the node's current chain, with the watched wallets' transfers."""
        ...


@runtime_checkable
class BatchSource(Protocol):
    """Optional: a source that reads a run of blocks in a few round trips (fast backfill)."""

    def read_range(self, numbers: range) -> Sequence[BlockData]:
        """Blocks ``numbers`` of one consistent chain, oldest first (raise if it changed)."""
        ...


@runtime_checkable
class HashSource(Protocol):
    """Optional: a cheap "which block is at height n now" (lets the watcher see a rollback)."""

    def block_hash(self, number: int) -> str | None:
        """The hash of block ``number`` of the node's current chain, None above its head."""
        ...


class PendingSource(Protocol):
    """The mempool as the watcher sees it (optional; a chain without one is read blocks-only)."""

    def pending(self) -> Sequence[Transfer]:
        """Every transfer of a watched wallet now in the node's mempool, ``status=PENDING``.

        Ids must equal the ids the confirmed transfers will have (same position rule); a
        transaction whose confirmed transfers cannot be predicted is better left out.
        """
        ...


def retracted(transfer: Transfer) -> Transfer:
    """The retraction of a published transfer: same id and fields, ``status=RETRACTED``.

    >>> from datetime import UTC
    >>> t = Transfer.create(chain="c", wallet="w", direction="out", counterparty="x", asset="A",
    ...                     amount=1, decimals=0, tx_hash="0x1", position=0,
    ...                     time=datetime(2024, 1, 1, tzinfo=UTC))
    >>> r = retracted(t)
    >>> (r.id == t.id, r.status.value)
    (True, 'retracted')
    """
    return transfer.model_copy(update={"status": TransferStatus.RETRACTED})


def as_if_mined(transfer: Transfer, balance: int | None) -> Transfer:
    """A pending ``transfer`` carrying the wallet's balance after it, were it mined next on top
    of the mined ``balance`` (None: unknown, left out): a wallet's first transfer seen pending
    is then judged against its balance, not against nothing.

    >>> from datetime import UTC
    >>> t = Transfer.create(chain="c", wallet="w", direction="out", counterparty="x", asset="A",
    ...                     amount=30, decimals=0, tx_hash="0x1", position=0,
    ...                     time=datetime(2024, 1, 1, tzinfo=UTC), status="pending")
    >>> as_if_mined(t, 100).balance_after, as_if_mined(t, 10).balance_after
    (70, 0)
    """
    if balance is None:
        return transfer
    moved = transfer.amount if transfer.direction is Direction.IN else -transfer.amount
    return transfer.model_copy(update={"balance_after": max(balance + moved, 0)})


class PendingTracker:
    """Pure bookkeeping that turns mempool snapshots and confirmed blocks into pending events.

    * A transfer seen in a snapshot for the first time is published as pending (once).
    * One that leaves the mempool was mined or dropped. It was mined, if at all, in a block no
      higher than the head read right *after* the snapshot; so once the watcher has confirmed
      every block up to that head without seeing the transfer's id, it was dropped (or mined in
      a form that moved no value, e.g. a reverted call): it is retracted.
    * Confirmed ids are remembered for a while, so a snapshot that still lists a mined
      transaction does not publish it as pending again.

    The state (:attr:`outstanding`) is small and is saved in the cursor store by the watcher, so
    a restart still confirms or retracts what was published as pending before it.

    >>> from datetime import UTC
    >>> def t(tx, status=TransferStatus.PENDING):
    ...     return Transfer.create(chain="c", wallet="w", direction="out", counterparty="x",
    ...                            asset="A", amount=1, decimals=0, tx_hash=tx, position=0,
    ...                            time=datetime(2024, 1, 1, tzinfo=UTC), status=status)
    >>> tr = PendingTracker()
    >>> [x.tx_hash for x in tr.observe([t("0xa"), t("0xb")], head=10)]
    ['0xa', '0xb']
    >>> tr.observe([t("0xa"), t("0xb")], head=10)   # nothing new
    []
    >>> tr.observe([], head=11)                      # both left the mempool at head 11
    []
    >>> tr.confirmed([t("0xa", TransferStatus.CONFIRMED)], block=11)
    >>> tr.settle(cursor=10)                         # block 11 not read yet: wait
    []
    >>> [(x.tx_hash, x.status.value) for x in tr.settle(cursor=11)]
    [('0xb', 'retracted')]
    >>> tr.observe([t("0xa")], head=11)              # a mined one still listed: not again
    []
    """

    def __init__(self, remember_blocks: int = 256) -> None:
        self.remember_blocks = remember_blocks
        self._live: dict[str, Transfer] = {}
        self._gone: dict[str, tuple[Transfer, int]] = {}
        self._confirmed: dict[str, int] = {}

    @property
    def outstanding(self) -> list[tuple[Transfer, int | None]]:
        """Published pending transfers not yet confirmed or retracted, with the head at which
        each left the mempool (None: still there)."""
        live: list[tuple[Transfer, int | None]] = [(t, None) for t in self._live.values()]
        return live + [(t, h) for t, h in self._gone.values()]

    def restore(self, entries: Iterable[tuple[Transfer, int | None]]) -> None:
        """Load :attr:`outstanding` saved by an earlier run."""
        for transfer, gone in entries:
            if gone is None:
                self._live[transfer.id] = transfer
            else:
                self._gone[transfer.id] = (transfer, gone)

    def observe(self, snapshot: Sequence[Transfer], head: int) -> list[Transfer]:
        """Take a mempool snapshot (read *before* ``head``); return the newly pending transfers."""
        now = {t.id: t for t in snapshot}
        new: list[Transfer] = []
        for tid, transfer in now.items():
            if tid in self._live or tid in self._confirmed:
                continue
            if tid in self._gone:  # back in the mempool: it was published already
                self._live[tid] = self._gone.pop(tid)[0]
                continue
            self._live[tid] = transfer
            new.append(transfer)
        for tid in [tid for tid in self._live if tid not in now]:
            self._gone[tid] = (self._live.pop(tid), head)
        return new

    def confirmed(self, transfers: Iterable[Transfer], block: int) -> None:
        """Transfers the watcher published from confirmed block ``block``."""
        for t in transfers:
            if t.status is TransferStatus.CONFIRMED:
                self._live.pop(t.id, None)
                self._gone.pop(t.id, None)
                self._confirmed[t.id] = block

    def unconfirmed(self, transfers: Iterable[Transfer]) -> None:
        """Transfers retracted by a reorg: they may be pending again."""
        for t in transfers:
            self._confirmed.pop(t.id, None)

    def settle(self, cursor: int) -> list[Transfer]:
        """Retractions of pending transfers that left the mempool and are in no block up to
        ``cursor`` (the last confirmed block read)."""
        dropped = [t for t, head in self._gone.values() if head <= cursor]
        for t in dropped:
            del self._gone[t.id]
        floor = cursor - self.remember_blocks
        for tid in [tid for tid, n in self._confirmed.items() if n < floor]:
            del self._confirmed[tid]
        return [retracted(t) for t in dropped]


def next_range(
    cursor: int | None, head: int, confirmations: int, start: int | None, max_batch: int
) -> range:
    """The blocks that are safe to read now, oldest first, at most ``max_batch`` of them.

    A block is safe once ``confirmations`` blocks sit on top of it (0: the head itself is safe).
    Reading resumes after ``cursor``; without a cursor it starts at ``start``, or at the newest
    safe block when there is no start either (a new watcher does not replay history).

    Args:
        cursor: the last block already handled, or None.
        head: the newest block number on the node.
        confirmations: blocks required on top of a block before it is read.
        start: the first block to read when there is no cursor.
        max_batch: the most blocks to return.

    >>> next_range(cursor=100, head=110, confirmations=2, start=None, max_batch=50)
    range(101, 109)
    >>> next_range(cursor=100, head=110, confirmations=0, start=None, max_batch=3)
    range(101, 104)
    >>> next_range(cursor=108, head=110, confirmations=2, start=None, max_batch=50)
    range(109, 109)
    >>> next_range(cursor=None, head=110, confirmations=12, start=None, max_batch=50)
    range(98, 99)
    >>> next_range(cursor=None, head=5, confirmations=0, start=0, max_batch=50)
    range(0, 6)
    >>> next_range(cursor=None, head=1, confirmations=12, start=None, max_batch=50)
    range(0, 0)
    >>> next_range(cursor=120, head=110, confirmations=0, start=None, max_batch=50)  # node behind
    range(121, 121)
    """
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    if confirmations < 0:
        raise ValueError("confirmations must not be negative")
    safe = head - confirmations
    if cursor is not None:
        first = cursor + 1
    elif start is not None:
        first = start
    else:
        first = max(safe, 0)
    last = min(safe, first + max_batch - 1)
    return range(first, max(last + 1, first))


class _Rewound(Exception):  # noqa: N818 - internal control flow, never escapes poll_once
    pass


class Watcher:
    """Reads a chain's confirmed blocks in order, publishes their transfers, retracts orphans.

    The cursor moves only after ``publish`` returned for a block, so delivery is at-least-once.
    Before reading block *n* it checks that *n*'s parent hash is the hash it stored for *n - 1*,
    and when there is nothing new to read it checks that the cursor's block is still on the
    node's chain (a rollback, as ``anvil_rollback`` does, sends no notification). When either
    check fails the chain was reorganised: the watcher walks back through the stored hashes to
    the fork point, rewinds the cursor there, and keeps every transfer it had published from the
    replaced blocks as an *orphan*. Reading the new branch, an orphan whose id shows up again is
    republished as confirmed with its new block; the orphans still missing once the new branch
    reaches the height of the old tip are published with ``status=RETRACTED``.

    With a ``pending`` source, each poll also publishes newly pending transfers first and
    retracts pending ones that were dropped (see :class:`PendingTracker`).

    Args:
        source: the chain.
        publish: called with each non-empty batch of transfers; must return once durable.
        cursor_store: where the cursor, recent block hashes, published transfers, orphans and
            outstanding pending transfers live.
        chain: the chain id (the cursor key and the metrics label).
        confirmations: blocks required on top of a block before it is read.
        start_block: where a watcher without a cursor starts (default: the newest safe block).
        max_batch: the most blocks one :meth:`poll_once` reads (one batched fetch).
        pending: the mempool, or None.

    >>> from datetime import UTC
    >>> class Chain:  # two empty blocks
    ...     def head(self) -> int: return 1
    ...     def block(self, n: int) -> BlockData:
    ...         return BlockData(n, f"h{n}", f"h{n - 1}", datetime(2024, 1, 1, tzinfo=UTC))
    >>> w = Watcher(Chain(), print, CursorStore(":memory:"), "demo", confirmations=0, start_block=0)
    >>> w.poll_once(), w.poll_once()
    (2, 0)
    """

    def __init__(
        self,
        source: ChainSource,
        publish: Publish,
        cursor_store: CursorStore,
        chain: str,
        *,
        confirmations: int = 12,
        start_block: int | None = None,
        max_batch: int = 100,
        pending: PendingSource | None = None,
    ) -> None:
        if confirmations < 0:
            raise ValueError("confirmations must not be negative")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.source = source
        self.publish = publish
        self.cursor_store = cursor_store
        self.chain = chain
        self.confirmations = confirmations
        self.start_block = start_block
        self.max_batch = max_batch
        self.pending = pending
        self.reorgs = 0
        """How many reorganisations this watcher has rewound over (for metrics and tests)."""
        self._tracker = PendingTracker()
        self._tracker.restore(cursor_store.load_pending(chain))
        self._wake = threading.Event()

    def wake(self) -> None:
        """Make :meth:`run` poll now (called by a new-head or new-transaction subscription)."""
        self._wake.set()

    def poll_once(self) -> int:
        """Publish new pending transfers, then read every block that is safe now (up to
        ``max_batch``); return how many blocks were read.

        Raises:
            ReorgTooDeepError: the fork point is older than the stored hash history.
            WatcherError: the source failed (after its own retries); nothing was skipped.
            Exception: whatever ``publish`` raises; the block will be read again.
        """
        snapshot = self.pending.pending() if self.pending is not None else None
        head = self.source.head()
        metrics.HEAD_BLOCK.labels(chain=self.chain).set(head)
        if snapshot is not None:
            before = self._tracker.outstanding
            self._emit(self._tracker.observe(snapshot, head))
            if self._tracker.outstanding != before:  # an fsync per change, not per poll
                self._save_pending()
        read = 0
        for attempt in range(2):
            try:
                read += self._read(head)
                break
            except _Rewound:
                if attempt:  # a second reorg within one poll: the node is settling
                    break
        cursor = self.cursor_store.get(self.chain)
        if cursor is not None:
            metrics.CURSOR_BLOCK.labels(chain=self.chain).set(cursor.number)
            if self.pending is not None or self._tracker.outstanding:
                dropped = self._tracker.settle(cursor.number)
                self._emit(dropped)
                if dropped:
                    self._save_pending()
        return read

    def _read(self, head: int) -> int:
        cursor = self.cursor_store.get(self.chain)
        numbers = next_range(
            None if cursor is None else cursor.number,
            head,
            self.confirmations,
            self.start_block,
            self.max_batch,
        )
        if not numbers:
            if cursor is not None and head >= 0:
                self._check_tip(cursor.number, cursor.hash)
            return 0
        if isinstance(self.source, BatchSource):
            blocks: Sequence[BlockData] = self.source.read_range(numbers)
        else:
            blocks = [self.source.block(n) for n in numbers]
        read = 0
        for block in blocks:
            expected_parent = self.cursor_store.hash_at(self.chain, block.number - 1)
            if expected_parent is not None and block.parent_hash != expected_parent:
                self._rewind(block.number - 1, block.parent_hash)
                raise _Rewound
            self._commit(block)
            read += 1
        return read

    def _commit(self, block: BlockData) -> None:
        """Publish one block's transfers (and orphans it settles), then move the cursor."""
        orphans = self.cursor_store.orphans(self.chain)
        seen = {t.id for t in block.transfers}
        back = [t.id for t, _ in orphans if t.id in seen]
        gone = [t for t, until in orphans if until <= block.number and t.id not in seen]
        out = list(block.transfers) + [retracted(t) for t in gone]
        if out:
            self.publish(out)
        self.cursor_store.set(
            self.chain,
            block.number,
            block.hash,
            transfers=block.transfers,
            settled_orphans=[*back, *(t.id for t in gone)],
        )
        before = len(self._tracker.outstanding)
        self._tracker.confirmed(block.transfers, block.number)
        self._tracker.unconfirmed(gone)
        if len(self._tracker.outstanding) != before:
            self._save_pending()
        self._count(out)
        metrics.BLOCKS.labels(chain=self.chain).inc()

    def _check_tip(self, number: int, stored: str) -> None:
        """Nothing new to read: make sure the cursor's block was not rolled back."""
        if isinstance(self.source, HashSource):
            current = self.source.block_hash(number)
        else:
            current = self.source.block(number).hash if self.source.head() >= number else None
        if current == stored:
            return
        # The cursor's block is gone (or replaced). Find the fork point below it.
        below = self.source.block(number).parent_hash if current is not None else None
        if below is None:
            # Rolled back below the cursor: compare from the node's head downwards.
            head = self.source.head()
            self._rewind(head, self.source.block(head).hash, tip=number)
        else:
            self._rewind(number - 1, below, tip=number)
        raise _Rewound

    def _rewind(self, number: int, new_hash: str, tip: int | None = None) -> None:
        """Walk back from block ``number`` (whose hash on the new chain is ``new_hash``) to the
        fork point; move the cursor there and keep what was published above it as orphans."""
        cursor = self.cursor_store.get(self.chain)
        top = cursor.number if cursor is not None else number if tip is None else tip
        while True:
            stored = self.cursor_store.hash_at(self.chain, number)
            if stored is None:
                raise ReorgTooDeepError(
                    f"block {top} was replaced and no stored hash matches the new chain down to "
                    f"block {number + 1}; reset the cursor or keep a longer history",
                    chain=self.chain,
                    block=top,
                )
            if stored == new_hash:
                break
            if number == 0:
                raise ReorgTooDeepError(
                    "the genesis block differs: is this the same chain?", chain=self.chain, block=0
                )
            number -= 1
            new_hash = self.source.block(number + 1).parent_hash
        orphans = self.cursor_store.published(self.chain, number + 1, top)
        self.cursor_store.rewind(self.chain, number, new_hash, orphans=orphans, until=top)
        self.reorgs += 1
        metrics.REORGS.labels(chain=self.chain).inc()
        log.warning(
            "reorg on %s: blocks %d..%d were replaced (depth %d); rewinding to %d; %d published "
            "transfers wait to be re-included or retracted",
            self.chain,
            number + 1,
            top,
            top - number,
            number,
            len(orphans),
        )

    def _emit(self, transfers: Sequence[Transfer]) -> None:
        if transfers:
            self.publish(transfers)
            self._count(transfers)

    def _count(self, transfers: Iterable[Transfer]) -> None:
        for t in transfers:
            metrics.TRANSFERS.labels(chain=self.chain, status=t.status.value).inc()

    def _save_pending(self) -> None:
        self.cursor_store.save_pending(self.chain, self._tracker.outstanding)

    def run(self, stop: threading.Event, poll_interval_s: float = 2.0) -> None:
        """Poll until ``stop`` is set; sleep only when caught up, and wake early on :meth:`wake`.

        Failures of the node or the bus are logged, counted and retried at the next poll (the
        cursor did not move past them). :class:`ReorgTooDeepError` and programming errors end
        the loop, loudly.
        """
        while not stop.is_set():
            self._wake.clear()
            try:
                read = self.poll_once()
            except ReorgTooDeepError:
                log.critical("watcher %s stopped: reorg deeper than its history", self.chain)
                raise
            except DrainwatchError:
                log.exception(
                    "watcher %s: poll failed; retrying in %.1f s", self.chain, poll_interval_s
                )
                metrics.POLL_FAILURES.labels(chain=self.chain).inc()
                read = 0
            except Exception:
                log.critical("watcher %s crashed", self.chain, exc_info=True)
                raise
            if read == 0:
                self._sleep(stop, poll_interval_s)

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, 0.1)):
                return
