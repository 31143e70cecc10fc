"""Pending (mempool) transfers, reorg retractions and restarts against real anvil nodes.

"Truth" is what a fresh watcher reads from the final chain; the published stream, reduced to the
last status per transfer id, must equal it: no gap, no duplicate, nothing left unretracted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from drainwatch.events import TransferStatus, normalize_address
from ingest import Cursor, CursorStore, EvmPending, Watcher, follow
from tests.harness.services import AnvilFactory, AnvilService
from tests.ingest.contracts import TOKEN_INIT, transfer_calldata
from tests.ingest.evm_helpers import (
    CHAIN,
    ETH,
    Recorder,
    drain,
    observed,
    send,
    source_for,
    watcher_for,
    web3,
)

pytestmark = pytest.mark.services

# anvil's first default account (its well-known test mnemonic); used to pre-sign transactions.
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def chain_truth(anvil: AnvilService, *watched: str) -> set[tuple[Any, ...]]:
    rec = Recorder()
    drain(watcher_for(source_for(anvil.url, *watched), rec, CursorStore(":memory:")))
    return set(observed(rec.transfers))


def assert_stream_equals_truth(rec: Recorder, anvil: AnvilService, *watched: str) -> None:
    final = rec.latest()
    confirmed = [t for t in final.values() if t.status is TransferStatus.CONFIRMED]
    assert set(observed(confirmed)) == chain_truth(anvil, *watched)
    assert not [t for t in final.values() if t.status is TransferStatus.PENDING]


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- pending -------------------------------------------------------------------------------


def test_pending_native_and_token_transfers_are_confirmed_under_the_same_id(
    anvil_factory: AnvilFactory,
) -> None:
    node = anvil_factory("--no-mining")
    w3 = web3(node)
    everyone = list(w3.eth.accounts)
    hot, alice, deployer = everyone[0], everyone[1], everyone[9]
    token_tx = node.rpc("eth_sendTransaction", [{"from": deployer, "data": TOKEN_INIT}])
    node.rpc("evm_mine")
    token = normalize_address(node.wait_for_receipt(token_tx)["contractAddress"])
    node.rpc(
        "eth_sendTransaction",
        [{"from": deployer, "to": token, "data": transfer_calldata(hot, 1000)}],
    )
    node.rpc("evm_mine")
    source = source_for(node.url, hot)
    rec = Recorder()
    watcher = watcher_for(
        source, rec, CursorStore(":memory:"), pending=EvmPending(source, "txpool")
    )
    drain(watcher)
    before = len(rec.transfers)
    balance = w3.eth.get_balance(hot)
    native = node.rpc("eth_sendTransaction", [{"from": hot, "to": alice, "value": hex(3 * ETH)}])
    tok = node.rpc(
        "eth_sendTransaction", [{"from": hot, "to": token, "data": transfer_calldata(alice, 250)}]
    )
    watcher.poll_once()
    pending = rec.transfers[before:]
    assert {
        (t.tx_hash, t.status, t.block_number, t.position, t.asset, t.amount) for t in pending
    } == {
        (native, TransferStatus.PENDING, None, 0, "ETH", 3 * ETH),
        (tok, TransferStatus.PENDING, None, 1, "TKN", 250),
    }
    # Each carries the wallet's balance as if it were mined next (gas aside): a wallet's first
    # transfer seen pending is judged against its balance, not against nothing.
    assert {t.asset: t.balance_after for t in pending} == {
        "ETH": balance - 3 * ETH,
        "TKN": 1000 - 250,
    }
    watcher.poll_once()  # still pending: nothing new
    assert len(rec.transfers) == before + 2
    node.rpc("evm_mine")
    watcher.poll_once()
    mined = rec.transfers[before + 2 :]
    assert {t.id for t in mined} == {t.id for t in pending}
    assert {t.status for t in mined} == {TransferStatus.CONFIRMED}
    assert all(t.block_hash is not None for t in mined)
    node.rpc("evm_mine")
    watcher.poll_once()  # confirmed ones are never retracted as "dropped"
    assert len(rec.transfers) == before + 4
    assert_stream_equals_truth(rec, node, hot)


def test_a_dropped_pending_transaction_is_retracted(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory("--no-mining")
    hot, alice = node.rpc("eth_accounts")[:2]
    source = source_for(node.url, hot)
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source, rec, store, pending=EvmPending(source, "txpool"))
    tx = node.rpc("eth_sendTransaction", [{"from": hot, "to": alice, "value": hex(ETH)}])
    watcher.poll_once()
    (pending,) = rec.transfers
    assert pending.status is TransferStatus.PENDING
    node.rpc("anvil_dropTransaction", [tx])
    watcher.poll_once()  # gone from the pool; block 0 confirms nothing: it was dropped
    (_, dropped) = rec.transfers
    assert (dropped.id, dropped.status) == (pending.id, TransferStatus.RETRACTED)
    node.rpc("evm_mine")
    drain(watcher)
    assert len(rec.transfers) == 2
    assert store.load_pending(CHAIN) == []


def test_pending_state_survives_a_watcher_restart(
    anvil_factory: AnvilFactory, tmp_path: Path
) -> None:
    node = anvil_factory("--no-mining")
    hot, alice = node.rpc("eth_accounts")[:2]
    path = tmp_path / "cursor.sqlite3"
    rec = Recorder()
    source = source_for(node.url, hot)
    watcher_for(source, rec, CursorStore(path), pending=EvmPending(source, "txpool")).poll_once()
    tx = node.rpc("eth_sendTransaction", [{"from": hot, "to": alice, "value": hex(ETH)}])
    watcher_for(source, rec, CursorStore(path), pending=EvmPending(source, "txpool")).poll_once()
    node.rpc("anvil_dropTransaction", [tx])
    # a new process: it must still retract what the previous one published as pending
    source = source_for(node.url, hot)
    watcher_for(source, rec, CursorStore(path), pending=EvmPending(source, "txpool")).poll_once()
    assert [t.status for t in rec.transfers] == [TransferStatus.PENDING, TransferStatus.RETRACTED]


def test_websocket_subscription_delivers_pending_and_heads_without_waiting_for_a_poll(
    anvil_factory: AnvilFactory,
) -> None:
    node = anvil_factory("--no-mining")
    hot, alice = node.rpc("eth_accounts")[:2]
    source = source_for(node.url, hot)
    pending = EvmPending(source, "ws")
    rec = Recorder()
    watcher = watcher_for(source, rec, CursorStore(":memory:"), pending=pending)
    sub = follow([node.ws_url], watcher.wake, pending, CHAIN)
    stop = threading.Event()
    # A 60 s poll interval: only a WebSocket notification can make the watcher look in time.
    thread = threading.Thread(target=watcher.run, args=(stop, 60.0), daemon=True)
    try:
        assert sub.connected.wait(10)
        thread.start()
        time.sleep(0.3)  # let the first poll finish and the watcher go to sleep
        tx = node.rpc("eth_sendTransaction", [{"from": hot, "to": alice, "value": hex(ETH)}])
        wait_until(lambda: any(t.tx_hash == tx for t in rec.transfers))
        assert rec.transfers[-1].status is TransferStatus.PENDING
        node.rpc("evm_mine")  # newHeads wakes it again: confirmed
        wait_until(lambda: rec.transfers[-1].status is TransferStatus.CONFIRMED)
        assert rec.transfers[-1].id == rec.transfers[-2].id
    finally:
        stop.set()
        sub.stop()
        thread.join(10)


# -- reorgs --------------------------------------------------------------------------------


def test_anvil_reorg_retracts_replaced_transfers_and_publishes_the_new_ones(
    anvil: AnvilService,
) -> None:
    w3 = web3(anvil)
    hot, alice, bob = list(w3.eth.accounts)[:3]
    old = [send(w3, hot, alice, ETH + n) for n in range(4)]
    rec = Recorder()
    watcher = watcher_for(source_for(anvil.url, hot), rec, CursorStore(":memory:"))
    drain(watcher)
    replacement = [
        {"from": bob, "to": hot, "value": hex(77)},
        {"from": hot, "to": bob, "value": "0x9"},
    ]
    anvil.rpc("anvil_reorg", [2, [[replacement[0], 0], [replacement[1], 1]]])
    anvil.rpc("evm_mine")
    drain(watcher)
    assert watcher.reorgs == 1
    final = rec.latest()
    retracted = {t.tx_hash for t in final.values() if t.status is TransferStatus.RETRACTED}
    # anvil_reorg discards the replaced blocks' transactions: both are retracted, the rest stay
    assert retracted == {s.tx_hash for s in old[2:]}
    assert sorted(t.amount for t in final.values() if t.status == "confirmed")[:2] == [9, 77]
    assert_stream_equals_truth(rec, anvil, hot)


def test_a_transaction_re_included_after_a_reorg_keeps_its_id_with_the_new_block(
    anvil: AnvilService,
) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    nonce = w3.eth.get_transaction_count(hot)
    signed = Account.sign_transaction(
        {
            "to": alice,
            "value": 2 * ETH,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 1,
            "nonce": nonce,
            "chainId": anvil.chain_id,
            "type": 2,
        },
        KEY0,
    )
    snapshot = anvil.rpc("evm_snapshot")
    first = anvil.wait_for_receipt(
        anvil.rpc("eth_sendRawTransaction", [signed.raw_transaction.to_0x_hex()])
    )
    other = send(w3, hot, alice, 5)  # only on the old branch
    rec = Recorder()
    watcher = watcher_for(source_for(anvil.url, hot), rec, CursorStore(":memory:"))
    drain(watcher)
    anvil.rpc("evm_revert", [snapshot])
    anvil.rpc("evm_mine")  # the same transaction lands one block higher this time
    again = anvil.wait_for_receipt(
        anvil.rpc("eth_sendRawTransaction", [signed.raw_transaction.to_0x_hex()])
    )
    anvil.rpc("evm_mine")
    drain(watcher)
    assert again["transactionHash"] == first["transactionHash"]
    versions = [t for t in rec.transfers if t.tx_hash == first["transactionHash"]]
    assert len({t.id for t in versions}) == 1
    assert [t.block_hash for t in versions] == [first["blockHash"], again["blockHash"]]
    assert all(t.status is TransferStatus.CONFIRMED for t in versions)  # never retracted
    assert (
        rec.latest()[next(t.id for t in rec.transfers if t.tx_hash == other.tx_hash)].status
        == "retracted"
    )
    assert_stream_equals_truth(rec, anvil, hot)


def test_anvil_rollback_is_noticed_without_any_notification(anvil: AnvilService) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    send(w3, hot, alice, 1)
    gone = send(w3, hot, alice, 2)
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source_for(anvil.url, hot), rec, store)
    drain(watcher)
    anvil.rpc("anvil_rollback", [1])
    watcher.poll_once()  # sees its cursor block vanish and rewinds
    assert watcher.reorgs == 1
    assert store.get(CHAIN).number == gone.block_number - 1  # type: ignore[union-attr]
    anvil.rpc("anvil_dropAllTransactions")
    anvil.rpc("evm_mine")  # the new branch reaches the old height without the transfer
    drain(watcher)
    assert rec.latest()[rec.transfers[1].id].status is TransferStatus.RETRACTED
    assert_stream_equals_truth(rec, anvil, hot)


# -- restarts of the node and of the watcher -----------------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "sigkill"])
def test_node_restart_in_the_middle_of_a_run(anvil: AnvilService, kill: bool) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    for n in range(3):
        send(w3, hot, alice, n + 1)
    rec = Recorder()
    watcher = watcher_for(source_for(anvil.url, hot, attempts=3), rec, CursorStore(":memory:"))
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # anvil has dumped its state once (it dumps every second)
        for n in range(3):
            send(w3, hot, alice, 10 + n)
        # SIGKILL right away loses the blocks since the last dump: the node comes back behind the
        # watcher and mines other blocks at those heights (a rollback the watcher must retract)
        anvil.restart(kill=kill)
        for n in range(3):
            send(w3, hot, alice, 20 + n)
        head = w3.eth.block_number
        wait_until(lambda: (watcher.cursor_store.get(CHAIN) or Cursor(-1, "")).number >= head)
    finally:
        stop.set()
        thread.join(10)
    drain(watcher)
    assert_stream_equals_truth(rec, anvil, hot)


def test_watcher_killed_mid_stream_and_restarted_publishes_the_chain_exactly(
    anvil: AnvilService, tmp_path: Path
) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    for n in range(12):
        send(w3, hot, alice, n + 1)
    path = tmp_path / "cursor.sqlite3"
    rec = Recorder()
    crashing = Recorder(fail_times=1)

    def publish(transfers: Any) -> None:  # dies on the 5th batch, after it went out
        rec(transfers)
        if len(rec.batches) == 5:
            crashing(transfers)

    first = Watcher(
        source_for(anvil.url, hot),
        publish,
        CursorStore(path),
        CHAIN,
        confirmations=0,
        start_block=0,
        max_batch=3,
    )
    with pytest.raises(RuntimeError):
        drain(first)
    for n in range(3):
        send(w3, hot, alice, 100 + n)
    second = watcher_for(source_for(anvil.url, hot), rec, CursorStore(path), max_batch=3)
    drain(second)
    ids = [t.id for t in rec.transfers]
    assert len(ids) == len(set(ids)) + 1  # the one batch in flight at the crash, repeated
    assert_stream_equals_truth(rec, anvil, hot)
