"""The chain-agnostic watcher: safe ranges, at-least-once cursor, reorg rewind, the run loop.

The chain here is a small in-memory fake of our own ``ChainSource`` protocol; the real EVM node is
exercised in test_evm_watcher.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import ingest
from drainwatch.events import Direction, Transfer, TransferStatus
from ingest import (
    BlockData,
    ChainSource,
    CursorStore,
    ReorgTooDeepError,
    RpcError,
    Watcher,
    next_range,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
WALLET = "0x00000000000000000000000000000000000000aa"


def transfer(tx: str, block: int, block_hash: str, amount: int = 1) -> Transfer:
    return Transfer.create(
        chain="fake",
        wallet=WALLET,
        direction=Direction.OUT,
        counterparty="0xbb",
        asset="ETH",
        amount=amount,
        decimals=18,
        tx_hash=tx,
        position=0,
        time=T0 + timedelta(seconds=block),
        block_number=block,
        block_hash=block_hash,
    )


class FakeChain:
    """A linear chain whose tail can be replaced (a reorg); each block carries one transfer."""

    def __init__(self, length: int) -> None:
        self.blocks: list[BlockData] = []
        self.fork = 0
        self.calls: list[int] = []
        self.fail_next = 0
        for _ in range(length):
            self.mine()

    def mine(self, with_transfer: bool = True) -> BlockData:
        n = len(self.blocks)
        parent = self.blocks[-1].hash if self.blocks else "0xgenesis-parent"
        h = f"0x{self.fork}-{n}"
        txs = (transfer(f"0xtx{self.fork}-{n}", n, h),) if with_transfer else ()
        block = BlockData(n, h, parent, T0 + timedelta(seconds=n), txs)
        self.blocks.append(block)
        return block

    def reorg(self, depth: int, new_length: int | None = None) -> None:
        """Replace the last ``depth`` blocks by ``new_length`` (default: as many) new ones."""
        self.fork += 1
        del self.blocks[len(self.blocks) - depth :]
        for _ in range(depth if new_length is None else new_length):
            self.mine()

    def head(self) -> int:
        return len(self.blocks) - 1

    def block(self, number: int) -> BlockData:
        self.calls.append(number)
        if self.fail_next:
            self.fail_next -= 1
            raise RpcError("node down", chain="fake", block=number)
        return self.blocks[number]


class Recorder:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[Transfer]] = []
        self.fail_times = fail_times

    def __call__(self, transfers: Sequence[Transfer]) -> None:
        self.batches.append(list(transfers))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("crashed after publishing, before the cursor was stored")

    @property
    def transfers(self) -> list[Transfer]:
        return [t for batch in self.batches for t in batch]

    @property
    def tx_hashes(self) -> list[str]:
        return [t.tx_hash for t in self.transfers]


def make_watcher(
    chain: FakeChain,
    publish: Recorder,
    store: CursorStore | None = None,
    *,
    confirmations: int = 0,
    start_block: int | None = 0,
    max_batch: int = 100,
) -> Watcher:
    return Watcher(
        chain,
        publish,
        store or CursorStore(":memory:"),
        "fake",
        confirmations=confirmations,
        start_block=start_block,
        max_batch=max_batch,
    )


# -- next_range ----------------------------------------------------------------------------


@pytest.mark.parametrize("confirmations", [0, 1, 2, 12])
@pytest.mark.parametrize("head", [0, 1, 5, 30])
@pytest.mark.parametrize("cursor", [None, 0, 3, 29, 40])
def test_next_range_reads_only_confirmed_blocks_after_the_cursor(
    confirmations: int, head: int, cursor: int | None
) -> None:
    blocks = next_range(cursor, head, confirmations, start=0, max_batch=1000)
    for n in blocks:
        assert head - n >= confirmations
    first = 0 if cursor is None else cursor + 1
    # Contiguous from the cursor up to the newest safe block: nothing skipped.
    assert list(blocks) == list(range(first, head - confirmations + 1))


def test_next_range_is_capped_by_max_batch_and_resumes_where_it_stopped() -> None:
    seen: list[int] = []
    cursor: int | None = None
    while batch := next_range(cursor, head=9, confirmations=0, start=0, max_batch=4):
        assert len(batch) <= 4
        seen += batch
        cursor = batch[-1]
    assert seen == list(range(10))


def test_next_range_without_cursor_or_start_begins_at_the_newest_safe_block() -> None:
    assert list(next_range(None, head=100, confirmations=3, start=None, max_batch=10)) == [97]


def test_next_range_cursor_wins_over_start() -> None:
    assert list(next_range(5, head=8, confirmations=0, start=0, max_batch=10)) == [6, 7, 8]


@pytest.mark.parametrize(("confirmations", "max_batch"), [(-1, 10), (0, 0)])
def test_next_range_refuses_nonsense(confirmations: int, max_batch: int) -> None:
    with pytest.raises(ValueError, match="must"):
        next_range(None, 10, confirmations, None, max_batch)


# -- Watcher.poll_once ---------------------------------------------------------------------


def test_poll_publishes_every_block_once_in_order_and_stores_the_cursor() -> None:
    chain = FakeChain(5)
    store = CursorStore(":memory:")
    rec = Recorder()
    w = make_watcher(chain, rec, store)
    assert w.poll_once() == 5
    assert rec.tx_hashes == [f"0xtx0-{n}" for n in range(5)]
    assert [len(b) for b in rec.batches] == [1] * 5  # one publish (and flush) per block
    assert store.get("fake") == (4, chain.blocks[4].hash)
    assert w.poll_once() == 0
    chain.mine()
    assert w.poll_once() == 1
    assert rec.tx_hashes[-1] == "0xtx0-5"
    assert len(set(rec.tx_hashes)) == len(rec.tx_hashes) == 6


def test_empty_blocks_advance_the_cursor_without_calling_publish() -> None:
    chain = FakeChain(0)
    for _ in range(3):
        chain.mine(with_transfer=False)
    rec = Recorder()
    store = CursorStore(":memory:")
    assert make_watcher(chain, rec, store).poll_once() == 3
    assert rec.batches == []
    assert store.get("fake") == (2, chain.blocks[2].hash)


def test_confirmations_hold_back_the_newest_blocks() -> None:
    chain = FakeChain(3)
    rec = Recorder()
    w = make_watcher(chain, rec, confirmations=2)
    w.poll_once()
    assert rec.tx_hashes == ["0xtx0-0"]
    chain.mine()
    w.poll_once()
    assert rec.tx_hashes == ["0xtx0-0", "0xtx0-1"]


def test_max_batch_limits_one_poll() -> None:
    chain = FakeChain(7)
    rec = Recorder()
    w = make_watcher(chain, rec, max_batch=3)
    assert [w.poll_once() for _ in range(4)] == [3, 3, 1, 0]
    assert rec.tx_hashes == [f"0xtx0-{n}" for n in range(7)]


def test_a_crash_after_publish_repeats_the_block_with_the_same_ids() -> None:
    chain = FakeChain(3)
    store = CursorStore(":memory:")
    rec = Recorder(fail_times=1)
    w = make_watcher(chain, rec, store)
    with pytest.raises(RuntimeError, match="crashed"):
        w.poll_once()
    assert store.get("fake") is None  # the cursor never got past an unacknowledged block
    assert w.poll_once() == 3
    first, repeat, *_ = rec.batches
    assert [t.id for t in first] == [t.id for t in repeat]
    assert {t.id for t in rec.transfers} == {t.id for b in chain.blocks for t in b.transfers}


def test_a_source_failure_leaves_the_cursor_on_the_last_good_block() -> None:
    chain = FakeChain(4)
    store = CursorStore(":memory:")
    rec = Recorder()
    w = make_watcher(chain, rec, store, max_batch=2)
    w.poll_once()
    chain.fail_next = 1
    with pytest.raises(RpcError):
        w.poll_once()
    assert store.get("fake") == (1, chain.blocks[1].hash)
    w.poll_once()
    assert rec.tx_hashes == [f"0xtx0-{n}" for n in range(4)]


def test_a_new_watcher_on_the_same_store_resumes_without_gap_or_repeat(tmp_path: Path) -> None:
    path = f"{tmp_path}/cursor.sqlite3"
    chain = FakeChain(3)
    rec = Recorder()
    make_watcher(chain, rec, CursorStore(path)).poll_once()
    chain.mine()
    chain.mine()
    make_watcher(chain, rec, CursorStore(path), start_block=0).poll_once()
    assert rec.tx_hashes == [f"0xtx0-{n}" for n in range(5)]


# -- reorgs --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_a_reorg_rewinds_to_the_fork_point_and_reads_the_new_blocks(depth: int) -> None:
    chain = FakeChain(10)
    store = CursorStore(":memory:")
    rec = Recorder()
    w = make_watcher(chain, rec, store)
    w.poll_once()
    chain.reorg(depth, new_length=depth + 1)  # the new branch is one block longer
    w.poll_once()
    assert w.reorgs == 1
    new = [f"0xtx1-{n}" for n in range(10 - depth, 11)]
    after = rec.transfers[10:]
    assert [t.tx_hash for t in after if t.status is TransferStatus.CONFIRMED] == new
    # every transfer of the replaced blocks is retracted, once, with its original id
    replaced = rec.transfers[10 - depth : 10]
    retracted = [t for t in after if t.status is TransferStatus.RETRACTED]
    assert [(t.id, t.block_hash) for t in retracted] == [(t.id, t.block_hash) for t in replaced]
    assert store.get("fake") == (10, chain.blocks[10].hash)
    # The walk back used the stored hashes: blocks below the fork point were not re-read.
    assert min(chain.calls[10:]) >= 10 - depth


def test_a_rollback_is_seen_at_once_and_retractions_wait_for_the_old_height() -> None:
    chain = FakeChain(6)
    rec = Recorder()
    w = make_watcher(chain, rec)
    w.poll_once()
    chain.reorg(3, new_length=2)  # the chain got shorter: the cursor's block is gone
    assert w.poll_once() == 2  # noticed without a new block, the two new ones read
    assert w.reorgs == 1
    after = rec.transfers[6:]
    assert [t.tx_hash for t in after] == ["0xtx1-3", "0xtx1-4"]
    assert {t.status for t in after} == {TransferStatus.CONFIRMED}
    chain.mine()  # block 5 again: the replaced transfers could still have come back by now
    chain.mine()
    w.poll_once()
    after = rec.transfers[8:]
    assert [(t.tx_hash, t.status.value) for t in after] == [
        ("0xtx1-5", "confirmed"),
        ("0xtx0-3", "retracted"),
        ("0xtx0-4", "retracted"),
        ("0xtx0-5", "retracted"),
        ("0xtx1-6", "confirmed"),
    ]


def test_a_transfer_re_included_in_the_new_branch_is_republished_not_retracted() -> None:
    chain = FakeChain(5)
    rec = Recorder()
    store = CursorStore(":memory:")
    w = make_watcher(chain, rec, store)
    w.poll_once()
    kept = chain.blocks[3].transfers[0]
    chain.reorg(2)
    # the new block 3 carries the old block 3's transaction again (same id, new block hash)
    new3 = chain.blocks[3]
    moved = kept.model_copy(update={"block_hash": new3.hash})
    chain.blocks[3] = BlockData(3, new3.hash, new3.parent_hash, new3.time, (moved,))
    w.poll_once()
    after = rec.transfers[5:]
    assert [(t.tx_hash, t.status.value, t.block_hash) for t in after] == [
        ("0xtx0-3", "confirmed", new3.hash),
        ("0xtx1-4", "confirmed", chain.blocks[4].hash),
        ("0xtx0-4", "retracted", "0x0-4"),
    ]
    assert after[0].id == kept.id
    assert store.orphans("fake") == []


def test_orphans_survive_a_restart_and_are_retracted_by_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "cursor.sqlite3"
    chain = FakeChain(5)
    rec = Recorder()
    make_watcher(chain, rec, CursorStore(path)).poll_once()
    chain.reorg(2, new_length=1)
    make_watcher(chain, rec, CursorStore(path)).poll_once()  # rewinds; orphans wait for block 4
    assert len(CursorStore(path).orphans("fake")) == 2
    chain.mine()
    make_watcher(chain, rec, CursorStore(path)).poll_once()
    retracted = [t.tx_hash for t in rec.transfers if t.status is TransferStatus.RETRACTED]
    assert retracted == ["0xtx0-3", "0xtx0-4"]


class FakeMempool:
    def __init__(self) -> None:
        self.txs: list[Transfer] = []

    def pending(self) -> Sequence[Transfer]:
        return list(self.txs)


def test_pending_then_confirmed_or_dropped_through_the_watcher() -> None:
    chain = FakeChain(0)
    chain.mine(with_transfer=False)
    chain.mine(with_transfer=False)
    pool = FakeMempool()
    rec = Recorder()
    w = Watcher(
        chain, rec, CursorStore(":memory:"), "fake", confirmations=1, start_block=0, pending=pool
    )
    w.poll_once()
    block = chain.mine()  # block 2; its transfer was first seen in the mempool
    unmined = {"status": TransferStatus.PENDING, "block_number": None, "block_hash": None}
    pool.txs = [
        block.transfers[0].model_copy(update=unmined),
        transfer("0xdropped", 0, "-").model_copy(update=unmined),
    ]
    w.poll_once()
    assert [(t.tx_hash, t.status.value) for t in rec.transfers] == [
        ("0xtx0-2", "pending"),
        ("0xdropped", "pending"),
    ]
    pool.txs = []  # both left the mempool at head 2; block 2 is not confirmed yet
    w.poll_once()
    assert len(rec.transfers) == 2
    chain.mine(with_transfer=False)
    w.poll_once()  # block 2 confirmed: the mined one is confirmed, the other was dropped
    assert [(t.tx_hash, t.status.value) for t in rec.transfers[2:]] == [
        ("0xtx0-2", "confirmed"),
        ("0xdropped", "retracted"),
    ]
    assert rec.transfers[2].id == rec.transfers[0].id
    assert rec.transfers[3].id == rec.transfers[1].id


# -- Watcher.run ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_run_survives_source_failures_and_stops_when_asked() -> None:
    chain = FakeChain(6)
    chain.fail_next = 2
    stop = threading.Event()
    got: list[str] = []

    def publish(transfers: Sequence[Transfer]) -> None:
        got.extend(t.tx_hash for t in transfers)
        if len(got) == 6:
            stop.set()

    w = Watcher(chain, publish, CursorStore(":memory:"), "fake", confirmations=0, start_block=0)
    thread = threading.Thread(target=w.run, args=(stop, 0.01), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert got == [f"0xtx0-{n}" for n in range(6)]


@pytest.mark.timeout(60)
def test_run_ends_with_reorg_too_deep() -> None:
    chain = FakeChain(5)
    rec = Recorder()
    w = make_watcher(chain, rec, CursorStore(":memory:", history=1))
    w.poll_once()
    chain.reorg(3)
    chain.mine()
    with pytest.raises(ReorgTooDeepError):
        w.run(threading.Event(), 0.01)


def test_fake_chain_satisfies_the_protocol() -> None:
    source: ChainSource = FakeChain(1)
    assert source.block(source.head()).number == 0


def test_public_api_is_pinned() -> None:
    evm_and_common = {
        "BatchSource",
        "BlockData",
        "ChainSource",
        "Cursor",
        "CursorStore",
        "EndpointsUnreachableError",
        "EvmPending",
        "EvmSource",
        "HashSource",
        "PendingMode",
        "PendingSource",
        "PendingTracker",
        "Publish",
        "ReorgTooDeepError",
        "Rpc",
        "RpcCallError",
        "RpcClient",
        "RpcError",
        "Subscriber",
        "TokenInfo",
        "TraceMode",
        "Watcher",
        "WatcherError",
        "Web3Rpc",
        "evm_watcher",
        "follow",
        "next_range",
        "retracted",
    }
    bitcoin = {"BitcoinRpc", "BitcoinSource", "UtxoStore", "bitcoin_watcher"}
    assert set(ingest.__all__) == evm_and_common | bitcoin
    for name in ingest.__all__:
        assert hasattr(ingest, name)
