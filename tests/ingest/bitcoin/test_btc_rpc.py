"""Misbehaving Bitcoin nodes: dead endpoints, refusals, truncated and garbled replies, JSON-RPC
errors. Retried with back-off, counted in metrics, logged; the cursor never passes unread data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drainwatch.events import Direction, TransferStatus
from ingest import RpcError, Watcher, metrics
from ingest.bitcoin import parse_block
from ingest.btc_rpc import BitcoinRpc, BtcRpcError
from ingest.xpub import address_script
from tests.harness.services import free_port
from tests.ingest.bitcoin.rig import (
    CHAIN,
    NETWORK,
    FlakyProxy,
    Node,
    Recorder,
    addr,
    cursors,
    make_source,
    new_key,
)

pytestmark = pytest.mark.services


def errors(endpoint: str, kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "drainwatch_watcher_rpc_errors_total", {"chain": CHAIN, "endpoint": endpoint, "kind": kind}
    )
    return value or 0.0


def rpc_via(url: str, node: Node, attempts: int = 4) -> BitcoinRpc:
    return BitcoinRpc(
        [url], auth=node.svc.rpc_auth, chain=CHAIN, retry_attempts=attempts, retry_max_wait_s=0.05
    )


def test_dead_endpoint_fails_over_to_the_live_one(node: Node) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    before = errors(dead, "connect")
    rpc = BitcoinRpc(
        [dead, node.url],
        auth=node.svc.rpc_auth,
        chain=CHAIN,
        retry_attempts=3,
        retry_max_wait_s=0.01,
    )
    assert rpc.call("getblockcount") == node.height()
    assert rpc.current_url == node.url  # sticks to the endpoint that answered
    assert errors(dead, "connect") == before + 1
    assert rpc.call("getblockcount") == node.height()
    assert errors(dead, "connect") == before + 1


def test_json_rpc_error_is_raised_at_once_and_wrong_password_too(
    node: Node, flaky: FlakyProxy
) -> None:
    rpc = rpc_via(flaky.url, node)
    with pytest.raises(BtcRpcError) as info:
        rpc.call("getblockhash", 10**7)
    assert info.value.code is not None
    assert flaky.requests == ["getblockhash"]  # not retried: the node meant it
    bad = BitcoinRpc([node.url], auth=("drainwatch", "wrong"), chain=CHAIN, retry_attempts=4)
    with pytest.raises(BtcRpcError, match="authentication"):
        bad.call("getblockcount")


def test_truncated_blocks_are_retried_and_counted(
    node: Node, flaky: FlakyProxy, tmp_path: Path
) -> None:
    hot = new_key()
    start = node.height() + 1
    txid, _ = node.fund([(addr(hot), 123_456)])
    node.mine(1)
    source = make_source(node, tmp_path, [addr(hot)], rpc=rpc_via(flaky.url, node))
    rec = Recorder()
    w = Watcher(source, rec, cursors(tmp_path), CHAIN, confirmations=0, start_block=start)
    before = errors(flaky.url, "bad_json")
    flaky.mode, flaky.only, flaky.times = "truncate", "getblock", 2
    assert w.poll_once() == 1
    assert errors(flaky.url, "bad_json") == before + 2
    assert flaky.requests.count("getblock") == 3
    [t] = rec.transfers
    assert (t.tx_hash, t.direction, t.amount) == (txid, Direction.IN, 123_456)


@pytest.mark.parametrize("mode", ["refuse", "garble", "truncate"])
def test_a_node_that_keeps_failing_never_moves_the_cursor(
    node: Node, flaky: FlakyProxy, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    hot = new_key()
    start = node.height() + 1
    source = make_source(
        node, tmp_path, [addr(hot)], rpc=rpc_via(flaky.url, node, attempts=3), balances_from=start
    )
    rec = Recorder()
    w = Watcher(
        source, rec, cursors(tmp_path), CHAIN, confirmations=0, start_block=start, pending=source
    )
    tx1, _ = node.fund([(addr(hot), 1_000)])
    node.mine(1)
    w.poll_once()
    cursor = w.cursor_store.get(CHAIN)
    tx2, _ = node.fund([(addr(hot), 2_000)])
    node.mine(1)
    tx3, _ = node.fund([(addr(hot), 3_000)])
    node.mine(1)

    flaky.mode, flaky.only = mode, "getblock"
    caplog.set_level(logging.WARNING, logger="ingest.btc_rpc")
    for _ in range(2):
        with pytest.raises(RpcError):
            w.poll_once()
        assert w.cursor_store.get(CHAIN) == cursor
    assert any("getblock" in r.getMessage() for r in caplog.records)

    flaky.mode = "proxy"  # the node heals: everything arrives, once, in order
    w.poll_once()
    confirmed = [t for t in rec.transfers if t.status is TransferStatus.CONFIRMED]
    assert [(t.tx_hash, t.amount) for t in confirmed] == [(tx1, 1_000), (tx2, 2_000), (tx3, 3_000)]
    assert [t.balance_after for t in confirmed] == [1_000, 3_000, 6_000]


def test_dead_endpoint_then_live_one_loses_nothing(node: Node, tmp_path: Path) -> None:
    hot = new_key()
    start = node.height() + 1
    txid, _ = node.fund([(addr(hot), 4_242)])
    node.mine(1)
    port = free_port()
    source = make_source(
        node, tmp_path, [addr(hot)], rpc=rpc_via(f"http://127.0.0.1:{port}", node, attempts=2)
    )
    rec = Recorder()
    w = Watcher(source, rec, cursors(tmp_path), CHAIN, confirmations=0, start_block=start)
    with pytest.raises(RpcError):
        w.poll_once()
    assert w.cursor_store.get(CHAIN) is None
    # The same watcher state, now pointed at a live endpoint.
    live = make_source(node, tmp_path, [addr(hot)])
    w2 = Watcher(live, rec, cursors(tmp_path), CHAIN, confirmations=0, start_block=start)
    w2.poll_once()
    [t] = rec.transfers
    assert (t.tx_hash, t.amount, t.block_number) == (txid, 4_242, start)


def test_parse_block_refuses_truncated_tampered_or_wrong_blocks(node: Node) -> None:
    hot = new_key()
    node.fund([(addr(hot), 5_000), (addr(new_key()), 6_000)])
    block_hash = node.mine(1)[0]
    raw = bytes.fromhex(node.svc.rpc("getblock", [block_hash, 0]))
    parsed = parse_block(raw, block_hash, NETWORK)
    assert len(parsed.txs) == 2
    assert parsed.txs[1].outputs[0].address == addr(hot)
    with pytest.raises(ValueError, match="truncated"):
        parse_block(raw[:-7], block_hash, NETWORK)
    with pytest.raises(ValueError, match="after the last transaction"):
        parse_block(raw + b"\0", block_hash, NETWORK)
    script = address_script(addr(hot), NETWORK)
    tampered = raw.replace(script, script[:-1] + bytes([script[-1] ^ 1]))
    assert tampered != raw
    with pytest.raises(ValueError, match="merkle"):
        parse_block(tampered, block_hash, NETWORK)
    with pytest.raises(ValueError, match="block hash"):
        parse_block(raw, node.svc.rpc("getblockhash", [1]), NETWORK)
