"""The chain-agnostic watcher: which blocks are safe to read, and the loop that reads them.

A chain plugs in as a :class:`ChainSource` (``evm.py``; ``bitcoin.py`` later). The watcher reads
blocks that have enough confirmations, hands each block's transfers to ``publish`` (which must
return only once they are durable on the bus), and only then moves the cursor. A crash therefore
repeats a block and never skips one; transfer ids are deterministic, so readers drop the repeats.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from drainwatch.errors import DrainwatchError
from drainwatch.events import Transfer
from ingest.cursor import CursorStore
from ingest.errors import ReorgTooDeepError

__all__ = ["BlockData", "ChainSource", "Publish", "Watcher", "next_range"]

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


class Watcher:
    """Reads a chain's confirmed blocks in order and publishes their transfers.

    The cursor moves only after ``publish`` returned for a block, so delivery is at-least-once.
    Before reading block *n* it checks that *n*'s parent hash is the hash it stored for *n - 1*;
    when it is not, the chain was reorganised: the watcher walks back through the stored hashes
    to the fork point, rewinds the cursor there and reads the new blocks.

    TODO(reorg retractions): transfers already published from the replaced blocks are *not*
    retracted yet (DESIGN.md §1 asks for retraction events); the rewind is only logged. A
    transaction re-included in the new chain keeps its transfer id, so readers that de-duplicate
    by id keep the first copy, with the old block hash. Set ``confirmations`` deeper than the
    reorgs you expect until retractions exist.

    Args:
        source: the chain.
        publish: called with each non-empty block's transfers; must return once they are durable.
        cursor_store: where the cursor and recent block hashes live.
        chain: the chain id (the cursor key).
        confirmations: blocks required on top of a block before it is read.
        start_block: where a watcher without a cursor starts (default: the newest safe block).
        max_batch: the most blocks one :meth:`poll_once` reads.

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
        self.reorgs = 0
        """How many reorganisations this watcher has rewound over (for metrics and tests)."""

    def poll_once(self) -> int:
        """Read every block that is safe now (up to ``max_batch``); return how many were read.

        Raises:
            ReorgTooDeepError: the fork point is older than the stored hash history.
            WatcherError: the source failed (after its own retries); nothing was skipped.
            Exception: whatever ``publish`` raises; the block will be read again.
        """
        head = self.source.head()
        read = 0
        rewound = False
        while True:
            cursor = self.cursor_store.get(self.chain)
            blocks = next_range(
                None if cursor is None else cursor.number,
                head,
                self.confirmations,
                self.start_block,
                self.max_batch,
            )
            for number in blocks:
                block = self.source.block(number)
                expected_parent = self.cursor_store.hash_at(self.chain, number - 1)
                if expected_parent is not None and block.parent_hash != expected_parent:
                    self._rewind(block)
                    break
                if block.transfers:
                    self.publish(block.transfers)
                self.cursor_store.set(self.chain, block.number, block.hash)
                read += 1
            else:
                return read
            if rewound:
                # A second reorg within one poll: the node is still settling; try next poll.
                return read
            rewound = True

    def _rewind(self, block: BlockData) -> None:
        """Walk back from ``block``'s parent to the fork point and move the cursor there."""
        number, new_hash = block.number - 1, block.parent_hash
        top = number
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
        self.reorgs += 1
        log.warning(
            "reorg on %s: blocks %d..%d were replaced (depth %d); rewinding to %d. Transfers "
            "already published from them are not retracted yet.",
            self.chain,
            number + 1,
            top,
            top - number,
            number,
        )
        self.cursor_store.set(self.chain, number, new_hash)

    def run(self, stop: threading.Event, poll_interval_s: float = 2.0) -> None:
        """Poll until ``stop`` is set; sleep only when caught up.

        Failures of the node or the bus are logged and retried at the next poll (the cursor did
        not move past them). :class:`ReorgTooDeepError` and programming errors end the loop.
        """
        while not stop.is_set():
            try:
                read = self.poll_once()
            except ReorgTooDeepError:
                raise
            except DrainwatchError:
                log.exception(
                    "watcher %s: poll failed; retrying in %.1f s", self.chain, poll_interval_s
                )
                read = 0
            if read == 0:
                stop.wait(poll_interval_s)
