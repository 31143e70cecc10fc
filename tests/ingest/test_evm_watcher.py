"""The EVM watcher against a real anvil node: native, ERC-20 and internal transfers, exact
amounts, confirmations, restarts and outages."""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import Web3
from web3.types import Wei

from drainwatch.config import WalletConfig
from drainwatch.events import Direction, TransferStatus, normalize_address
from ingest import CursorStore, EvmSource, RpcError
from tests.harness.services import AnvilService
from tests.ingest.evm_helpers import (
    CHAIN,
    ETH,
    Recorder,
    deploy_forwarder,
    deploy_token,
    drain,
    forward,
    observed,
    rpc_for,
    send,
    send_token,
    source_for,
    truth,
    watcher_for,
    web3,
)

pytestmark = pytest.mark.services

# Init code of a contract whose runtime code is PUSH1 0 PUSH1 0 REVERT: every call to it fails.
REVERTER_INIT = "0x6460006000fd6000526005601bf3"


@pytest.fixture
def w3(anvil: AnvilService) -> Web3:
    return web3(anvil)


@pytest.fixture
def accounts(w3: Web3) -> list[str]:
    return list(w3.eth.accounts)


def test_native_transfers_in_out_and_between_watched_wallets(
    w3: Web3, accounts: list[str], anvil: AnvilService
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
    watcher = watcher_for(source_for(anvil.url, hot, cold), rec, store)
    assert watcher.poll_once() == w3.eth.block_number + 1
    got = observed(rec.transfers)
    assert len(got) == len(set(got)) == 4
    assert set(got) == truth(sent, watched)
    between = [t for t in rec.transfers if t.tx_hash == sent[2].tx_hash]
    assert {(t.wallet, t.direction) for t in between} == {
        (normalize_address(hot), Direction.OUT),
        (normalize_address(cold), Direction.IN),
    }
    assert len({t.id for t in between}) == 2
    t0 = rec.transfers[0]
    assert (t0.chain, t0.asset, t0.decimals, t0.status) == (CHAIN, "ETH", 18, "confirmed")
    assert int(t0.time.timestamp()) == w3.eth.get_block(sent[0].block_number)["timestamp"]
    for t in rec.transfers:  # each wallet's balance as of the end of the transfer's block
        address = Web3.to_checksum_address(t.wallet)
        assert t.balance_after == w3.eth.get_balance(address, t.block_number)
    assert store.get(CHAIN) == (w3.eth.block_number, w3.eth.get_block("latest")["hash"].to_0x_hex())


def test_erc20_transfers_of_any_token_in_and_out_with_symbol_decimals_and_balance(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice, bob, deployer = accounts[0], accounts[1], accounts[2], accounts[9]
    token = deploy_token(w3, deployer)
    other = deploy_token(w3, deployer)  # a second contract: no per-token list is configured
    watched = {normalize_address(hot)}
    sent = [
        send_token(w3, token, deployer, hot, 10**24 + 3),  # in
        send_token(w3, token, hot, alice, 10**18 + 1),  # out
        send_token(w3, other, deployer, hot, 42),  # in, another token
        send_token(w3, token, deployer, bob, 5),  # not ours
    ]
    rec = Recorder()
    source = source_for(anvil.url, hot)
    drain(watcher_for(source, rec, CursorStore(":memory:")))
    assert set(observed(rec.transfers)) == truth(sent, watched)
    assert len(rec.transfers) == 3
    assert {t.decimals for t in rec.transfers} == {6}
    assert {t.position for t in rec.transfers} == {1}
    by_tx = {t.tx_hash: t for t in rec.transfers}
    assert by_tx[sent[0].tx_hash].balance_after == 10**24 + 3
    assert by_tx[sent[1].tx_hash].balance_after == 10**24 + 3 - (10**18 + 1)
    assert by_tx[sent[2].tx_hash].balance_after == 42
    assert source.token_info(token).symbol == "TKN"


def test_a_wallet_listed_once_per_asset_reports_each_listed_asset_and_no_other(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    multi, eth_only, alice, deployer = accounts[0], accounts[1], accounts[2], accounts[9]
    token = deploy_token(w3, deployer)
    sent = [
        send_token(w3, token, deployer, multi, 500),  # TKN in: listed for TKN
        send_token(w3, token, deployer, eth_only, 700),  # TKN in: that wallet is ETH only
        send(w3, multi, alice, ETH),  # ETH out: listed for ETH
        send(w3, eth_only, alice, 2 * ETH),  # ETH out
    ]
    configs = [
        WalletConfig(chain=CHAIN, address=multi, asset="ETH", label="multi-eth"),
        WalletConfig(chain=CHAIN, address=multi, asset="tkn", label="multi-tkn"),
        WalletConfig(chain=CHAIN, address=eth_only, asset="ETH", label="eth-only"),
    ]
    rec = Recorder()
    drain(watcher_for(EvmSource(rpc_for(anvil.url), CHAIN, configs), rec, CursorStore(":memory:")))
    got = {(t.tx_hash, t.wallet, t.asset) for t in rec.transfers}
    assert got == {
        (sent[0].tx_hash, normalize_address(multi), "TKN"),
        (sent[2].tx_hash, normalize_address(multi), "ETH"),
        (sent[3].tx_hash, normalize_address(eth_only), "ETH"),
    }


@pytest.mark.parametrize("mode", ["debug", "trace", "auto"])
def test_internal_transfer_of_a_smart_wallet_is_seen_through_traces(
    w3: Web3, accounts: list[str], anvil: AnvilService, mode: str
) -> None:
    owner, payee = accounts[1], accounts[2]
    wallet = deploy_forwarder(w3, accounts[0])
    deposit = send(w3, accounts[0], Web3.to_checksum_address(wallet), 5 * ETH)
    paid = forward(w3, wallet, owner, payee, 2 * ETH + 1)
    rec = Recorder()
    source = source_for(anvil.url, wallet, traces=mode)
    drain(watcher_for(source, rec, CursorStore(":memory:")))
    assert set(observed(rec.transfers)) == truth([deposit, paid], {wallet})
    out = next(t for t in rec.transfers if t.direction is Direction.OUT)
    assert (out.position, out.balance_after) == (10_001, 3 * ETH - 1)
    assert source.trace_mode == ("debug" if mode == "auto" else mode)


def test_both_trace_flavours_give_the_same_ids_and_off_sees_no_internal_transfer(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    wallet = deploy_forwarder(w3, accounts[0])
    send(w3, accounts[0], Web3.to_checksum_address(wallet), ETH)
    forward(w3, wallet, accounts[1], accounts[2], 10)
    ids = {}
    for mode in ("debug", "trace", "off"):
        rec = Recorder()
        drain(watcher_for(source_for(anvil.url, wallet, traces=mode), rec, CursorStore(":memory:")))
        ids[mode] = sorted(t.id for t in rec.transfers)
    assert ids["debug"] == ids["trace"]
    assert len(ids["debug"]) == 2
    assert len(ids["off"]) == 1  # only the deposit


def test_failed_transactions_are_skipped_and_contract_creation_is_reported(
    w3: Web3, accounts: list[str], anvil: AnvilService
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
    watcher_for(source_for(anvil.url, hot), rec, CursorStore(":memory:")).poll_once()
    assert observed(rec.transfers) == sorted(truth([created], {normalize_address(hot)}))
    assert rec.transfers[0].counterparty == created.to != ""


def test_confirmations_hold_a_transfer_back_until_two_blocks_sit_on_it(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice = accounts[:2]
    rec = Recorder()
    watcher = watcher_for(source_for(anvil.url, hot), rec, CursorStore(":memory:"), confirmations=2)
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
    w3: Web3, accounts: list[str], anvil: AnvilService, tmp_path: Path
) -> None:
    hot, alice, bob = accounts[:3]
    path = tmp_path / "cursor.sqlite3"
    sent = [send(w3, hot, alice, n * ETH + n) for n in range(1, 4)]
    rec = Recorder()
    watcher_for(source_for(anvil.url, hot), rec, CursorStore(path), max_batch=2).poll_once()
    sent += [send(w3, bob, hot, n) for n in range(1, 4)]
    drain(watcher_for(source_for(anvil.url, hot), rec, CursorStore(path), max_batch=2))
    got = observed(rec.transfers)
    assert len(got) == len(set(got))
    assert set(got) == truth(sent, {normalize_address(hot)})


def test_a_crash_between_publish_and_cursor_store_loses_nothing(
    w3: Web3, accounts: list[str], anvil: AnvilService, tmp_path: Path
) -> None:
    hot, alice = accounts[:2]
    path = tmp_path / "cursor.sqlite3"
    sent = [send(w3, hot, alice, n) for n in (11, 12, 13)]
    rec = Recorder(fail_times=1)
    with pytest.raises(RuntimeError, match="crash"):
        watcher_for(source_for(anvil.url, hot), rec, CursorStore(path)).poll_once()
    # A new process on the same cursor file: the crashed block is read again, same ids.
    watcher_for(source_for(anvil.url, hot), rec, CursorStore(path)).poll_once()
    first_attempt, repeat = rec.batches[0], rec.batches[1]
    assert [t.id for t in first_attempt] == [t.id for t in repeat]
    assert len(rec.transfers) == len(sent) + 1  # exactly one repeat
    assert set(observed(list(rec.latest().values()))) == truth(sent, {normalize_address(hot)})


def test_a_node_outage_raises_after_retries_and_the_watcher_resumes_after_it(
    w3: Web3, accounts: list[str], anvil: AnvilService
) -> None:
    hot, alice = accounts[:2]
    first = send(w3, hot, alice, 1)
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source_for(anvil.url, hot, attempts=2), rec, store)
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
    assert {t.status for t in rec.transfers} == {TransferStatus.CONFIRMED}
