"""The EVM watcher against a real anvil node: exact transfers, confirmations, restarts, reorgs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.types import Wei

from drainwatch.config import WalletConfig
from drainwatch.events import Direction, Transfer, normalize_address
from ingest import (
    CursorStore,
    EndpointsUnreachableError,
    EvmSource,
    RpcError,
    Watcher,
    connect_evm,
)
from tests.harness.services import AnvilService

pytestmark = pytest.mark.services

CHAIN = "anvil"
ETH = 10**18
# Init code of a contract whose runtime code is PUSH1 0 PUSH1 0 REVERT: every call to it fails.
REVERTER_INIT = "0x6460006000fd6000526005601bf3"


@dataclass(frozen=True)
class Sent:
    """What we put on chain, as the watcher should report it."""

    tx_hash: str
    sender: str
    to: str
    amount: int
    block_number: int
    block_hash: str
    position: int


class Recorder:
    """A publish callable that remembers every call; can crash once after "publishing"."""

    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[Transfer]] = []
        self.fail_times = fail_times

    def __call__(self, transfers: Sequence[Transfer]) -> None:
        self.batches.append(list(transfers))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("crash between publish and cursor store")

    @property
    def transfers(self) -> list[Transfer]:
        return [t for batch in self.batches for t in batch]


def send(w3: Web3, sender: str, to: str | None, amount: int, **extra: Any) -> Sent:
    tx: dict[str, Any] = {"from": sender, "value": amount, **extra}
    if to is not None:
        tx["to"] = to
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(tx))  # type: ignore[arg-type]
    return Sent(
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        sender=normalize_address(sender),
        to=normalize_address(to or str(receipt["contractAddress"])),
        amount=amount,
        block_number=receipt["blockNumber"],
        block_hash=receipt["blockHash"].to_0x_hex(),
        position=receipt["transactionIndex"],
    )


def expected(sent: Sent, watched: set[str]) -> set[tuple[Any, ...]]:
    """The transfers the watcher must report for one transaction, as comparable tuples."""
    out: set[tuple[Any, ...]] = set()
    if sent.amount == 0:
        return out
    common = (sent.amount, sent.tx_hash, sent.position, sent.block_number, sent.block_hash)
    if sent.sender in watched:
        out.add((sent.sender, Direction.OUT, sent.to, *common))
    if sent.to in watched:
        out.add((sent.to, Direction.IN, sent.sender, *common))
    return out


def observed(transfers: Sequence[Transfer]) -> list[tuple[Any, ...]]:
    return [
        (
            t.wallet,
            t.direction,
            t.counterparty,
            t.amount,
            t.tx_hash,
            t.position,
            t.block_number,
            t.block_hash,
        )
        for t in transfers
    ]


@pytest.fixture
def w3(anvil: AnvilService) -> Web3:
    return connect_evm([anvil.url], timeout_s=10)


@pytest.fixture
def accounts(w3: Web3) -> list[str]:
    return list(w3.eth.accounts)


def source_for(w3: Web3, *addresses: str, **kwargs: Any) -> EvmSource:
    wallets = [WalletConfig(chain=CHAIN, address=a, label=f"w{i}") for i, a in enumerate(addresses)]
    return EvmSource(w3, CHAIN, wallets, "ETH", 18, **kwargs)


def watcher_for(
    source: EvmSource,
    publish: Recorder,
    store: CursorStore,
    confirmations: int = 0,
    max_batch: int = 100,
) -> Watcher:
    return Watcher(
        source,
        publish,
        store,
        CHAIN,
        confirmations=confirmations,
        start_block=0,
        max_batch=max_batch,
    )


@pytest.mark.parametrize("block_receipts", [None, False], ids=["block-receipts", "tx-receipts"])
def test_native_transfers_in_out_and_between_watched_wallets(
    w3: Web3, accounts: list[str], block_receipts: bool | None
) -> None:
    hot, cold, alice, bob, carol = accounts[:5]
    watched = {normalize_address(hot), normalize_address(cold)}
    sent = [
        send(w3, hot, alice, 1_500_000_000_000_000_001),  # out, an amount no float survives
        send(w3, bob, hot, 7),  # in, 7 wei
        send(w3, hot, cold, 3 * ETH),  # between two watched wallets: out and in
        send(w3, carol, bob, ETH),  # no watched wallet: nothing
        send(w3, hot, alice, 0),  # no value: nothing
    ]
    rec = Recorder()
    store = CursorStore(":memory:")
    source = source_for(w3, hot, cold, block_receipts=block_receipts)
    watcher = watcher_for(source, rec, store)
    assert watcher.poll_once() == w3.eth.block_number + 1
    truth = set().union(*(expected(s, watched) for s in sent))
    got = observed(rec.transfers)
    assert len(got) == len(set(got)) == 4
    assert set(got) == truth
    between = [t for t in rec.transfers if t.tx_hash == sent[2].tx_hash]
    assert {(t.wallet, t.direction) for t in between} == {
        (normalize_address(hot), Direction.OUT),
        (normalize_address(cold), Direction.IN),
    }
    assert len({t.id for t in between}) == 2
    t0 = rec.transfers[0]
    assert (t0.chain, t0.asset, t0.decimals, t0.key) == (
        CHAIN,
        "ETH",
        18,
        f"{CHAIN}:{normalize_address(hot)}",
    )
    block = w3.eth.get_block(sent[0].block_number)
    assert int(t0.time.timestamp()) == block["timestamp"]
    assert t0.time.utcoffset() is not None
    for t in rec.transfers:  # each wallet's balance as of the end of the transfer's block
        address = Web3.to_checksum_address(t.wallet)
        assert t.balance_after == w3.eth.get_balance(address, t.block_number)
    assert rec.transfers[-1].balance_after != rec.transfers[0].balance_after
    assert store.get(CHAIN) == (w3.eth.block_number, w3.eth.get_block("latest")["hash"].to_0x_hex())


def test_failed_transactions_are_skipped_and_contract_creation_is_reported(
    w3: Web3, accounts: list[str]
) -> None:
    hot, deployer = accounts[0], accounts[9]
    reverter = send(w3, deployer, None, 0, data=REVERTER_INIT).to
    # Explicit gas skips estimation, so the reverting call is mined (with status 0).
    failed = w3.eth.send_transaction(
        {
            "from": hot,
            "to": Web3.to_checksum_address(reverter),
            "value": Wei(5 * ETH),
            "gas": 100_000,
        }
    )
    assert w3.eth.wait_for_transaction_receipt(failed)["status"] == 0
    created = send(w3, hot, None, 42, data="0x")
    rec = Recorder()
    watcher_for(source_for(w3, hot), rec, CursorStore(":memory:")).poll_once()
    assert observed(rec.transfers) == sorted(expected(created, {normalize_address(hot)}))
    assert rec.transfers[0].counterparty == created.to != ""


def test_confirmations_hold_a_transfer_back_until_two_blocks_sit_on_it(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice = accounts[:2]
    rec = Recorder()
    watcher = watcher_for(source_for(w3, hot), rec, CursorStore(":memory:"), confirmations=2)
    sent = send(w3, hot, alice, ETH)
    watcher.poll_once()
    assert rec.transfers == []
    anvil.rpc("evm_mine")
    watcher.poll_once()
    assert rec.transfers == []
    anvil.rpc("evm_mine")
    watcher.poll_once()
    assert [t.tx_hash for t in rec.transfers] == [sent.tx_hash]
    anvil.rpc("evm_mine")
    watcher.poll_once()
    assert len(rec.transfers) == 1


def test_restart_on_the_same_cursor_file_has_no_gap_and_no_repeat(
    w3: Web3, accounts: list[str], tmp_path: Path
) -> None:
    hot, alice, bob = accounts[:3]
    watched = {normalize_address(hot)}
    path = tmp_path / "cursor.sqlite3"
    sent = [send(w3, hot, alice, n * ETH + n) for n in range(1, 4)]
    rec = Recorder()
    first = watcher_for(source_for(w3, hot), rec, CursorStore(path), max_batch=2)
    first.poll_once()  # reads only part of the chain
    sent += [send(w3, bob, hot, n) for n in range(1, 4)]
    second = watcher_for(source_for(w3, hot), rec, CursorStore(path), max_batch=2)
    while second.poll_once():
        pass
    got = observed(rec.transfers)
    assert len(got) == len(set(got))
    assert set(got) == set().union(*(expected(s, watched) for s in sent))


def test_a_crash_between_publish_and_cursor_store_loses_nothing(
    w3: Web3, accounts: list[str], tmp_path: Path
) -> None:
    hot, alice = accounts[:2]
    path = tmp_path / "cursor.sqlite3"
    sent = [send(w3, hot, alice, n) for n in (11, 12, 13)]
    rec = Recorder(fail_times=1)
    with pytest.raises(RuntimeError, match="crash"):
        watcher_for(source_for(w3, hot), rec, CursorStore(path)).poll_once()
    # A new process on the same cursor file: the crashed block is read again, same ids.
    watcher_for(source_for(w3, hot), rec, CursorStore(path)).poll_once()
    first_attempt, repeat = rec.batches[0], rec.batches[1]
    assert [t.id for t in first_attempt] == [t.id for t in repeat]
    by_id = {t.id: t for t in rec.transfers}
    assert len(rec.transfers) == len(sent) + 1  # exactly one repeat
    assert sorted(observed(list(by_id.values()))) == sorted(
        set().union(*(expected(s, {normalize_address(hot)}) for s in sent))
    )


def test_reorg_by_snapshot_and_revert_is_noticed_and_the_new_block_is_published(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice, bob = accounts[:3]
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source_for(w3, hot), rec, store)
    send(w3, hot, alice, ETH)
    snapshot = anvil.rpc("evm_snapshot")
    old = send(w3, hot, alice, 2 * ETH)
    watcher.poll_once()
    assert rec.transfers[-1].tx_hash == old.tx_hash
    assert anvil.rpc("evm_revert", [snapshot]) is True
    new = send(w3, hot, bob, 5 * ETH)  # a different block at the same height
    assert new.block_number == old.block_number
    assert new.block_hash != old.block_hash
    anvil.rpc("evm_mine")  # the new branch is now longer than what the watcher read
    watcher.poll_once()
    assert watcher.reorgs == 1
    latest = [t for t in rec.transfers if t.tx_hash == new.tx_hash]
    assert observed(latest) == sorted(expected(new, {normalize_address(hot)}))
    assert store.get(CHAIN) == (w3.eth.block_number, w3.eth.get_block("latest")["hash"].to_0x_hex())


def test_reorg_by_anvil_reorg_rewinds_two_blocks(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice, bob = accounts[:3]
    watched = {normalize_address(hot)}
    for n in range(4):
        send(w3, hot, alice, ETH + n)
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source_for(w3, hot), rec, store)
    watcher.poll_once()
    head = w3.eth.block_number
    replacement = [
        {"from": bob, "to": hot, "value": hex(77)},
        {"from": hot, "to": bob, "value": "0x9"},
    ]
    anvil.rpc("anvil_reorg", [2, [[replacement[0], 0], [replacement[1], 1]]])
    anvil.rpc("evm_mine")
    watcher.poll_once()
    assert watcher.reorgs == 1
    new = []
    for n in (head - 1, head):
        block = w3.eth.get_block(n, full_transactions=True)
        for tx in block["transactions"]:
            assert not isinstance(tx, bytes)
            new.append(
                Sent(
                    tx_hash=tx["hash"].to_0x_hex(),
                    sender=normalize_address(tx["from"]),
                    to=normalize_address(str(tx["to"])),
                    amount=tx["value"],
                    block_number=n,
                    block_hash=block["hash"].to_0x_hex(),
                    position=tx["transactionIndex"],
                )
            )
    assert [s.amount for s in new] == [77, 9]
    truth = set().union(*(expected(s, watched) for s in new))
    assert set(observed(rec.transfers[4:])) == truth
    assert len(rec.transfers) == 6


def test_a_dead_endpoint_is_skipped_for_the_next_one(anvil: AnvilService) -> None:
    w3 = connect_evm(["http://127.0.0.1:1", anvil.url], timeout_s=5)
    assert w3.provider.endpoint_uri == anvil.url  # type: ignore[attr-defined]
    assert w3.eth.chain_id == anvil.chain_id


def test_no_live_endpoint_names_every_failure() -> None:
    with pytest.raises(EndpointsUnreachableError) as info:
        connect_evm(["http://127.0.0.1:1", "http://127.0.0.1:2"], timeout_s=2)
    assert [url for url, _ in info.value.errors] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


def test_a_node_outage_raises_after_retries_and_the_watcher_resumes_after_it(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice = accounts[:2]
    first = send(w3, hot, alice, 1)
    rec = Recorder()
    store = CursorStore(":memory:")
    source = source_for(w3, hot, retry_attempts=2, retry_max_wait_s=0.1)
    watcher = watcher_for(source, rec, store)
    watcher.poll_once()
    cursor = store.get(CHAIN)
    anvil.stop()
    with pytest.raises(RpcError) as info:
        watcher.poll_once()
    assert info.value.chain == CHAIN
    assert store.get(CHAIN) == cursor
    anvil.start()  # same port and chain state
    second = send(w3, hot, alice, 2)
    watcher.poll_once()
    assert [t.tx_hash for t in rec.transfers] == [first.tx_hash, second.tx_hash]
