"""The Bitcoin watcher against a real btcd: pending then confirmed, exact UTXO accounting, key
wallets with gap extension, crashes and restarts of the watcher and of the node, a reorg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drainwatch.events import Direction, Transfer, TransferStatus
from ingest import Watcher
from ingest.bitcoin import COINBASE
from tests.ingest.bitcoin.rig import CHAIN, FEE, Node, Recorder, addr, cursors, make_source, new_key

pytestmark = pytest.mark.services

BTC = 100_000_000


def watcher(source: Any, tmp_path: Path, publish: Recorder, start: int) -> Watcher:
    return Watcher(
        source,
        publish,
        cursors(tmp_path),
        CHAIN,
        confirmations=0,
        start_block=start,
        pending=source,
    )


def only(transfers: list[Transfer], **match: Any) -> Transfer:
    found = [t for t in transfers if all(getattr(t, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, transfers)
    return found[0]


def test_outflow_is_pending_first_then_confirmed_with_exact_satoshi(
    node: Node, tmp_path: Path
) -> None:
    hot, cold = new_key(), new_key()
    thief = addr(new_key())
    start = node.height() + 1
    source = make_source(node, tmp_path, [addr(hot), addr(cold)], balances_from=start)
    rec = Recorder()
    w = watcher(source, tmp_path, rec, start)

    # Two outputs to the hot wallet in one transaction, one in another: one inflow per tx.
    tx1, coins1 = node.fund([(addr(hot), 3 * BTC), (addr(hot), 2 * BTC)])
    tx2, coins2 = node.fund([(addr(hot), 150_000_000)])
    node.mine(1)
    w.poll_once()
    confirmed = [t for t in rec.transfers if t.status is TransferStatus.CONFIRMED]
    assert {(t.tx_hash, t.direction, t.amount) for t in confirmed} == {
        (tx1, Direction.IN, 5 * BTC),
        (tx2, Direction.IN, 150_000_000),
    }
    assert {t.balance_after for t in confirmed} == {650_000_000}
    assert all(t.counterparty == addr(node.miner) for t in confirmed)

    # Three inputs, two outside outputs (one of them to the cold wallet), change back.
    spend = [*coins1[:2], coins2[0]]
    spend = [type(c)(c.txid, c.vout, c.value, hot) for c in spend]
    txid, _ = node.send(spend, [(thief, 4 * BTC), (addr(cold), 50_000_000)], change=addr(hot))
    change = 650_000_000 - 4 * BTC - 50_000_000 - FEE
    rec.batches.clear()
    w.poll_once()
    pending = only(rec.transfers, tx_hash=txid, wallet=addr(hot))
    assert pending.status is TransferStatus.PENDING
    assert (pending.direction, pending.amount) == (Direction.OUT, 650_000_000 - change)
    assert pending.counterparty == thief
    assert pending.counterparties == (thief, addr(cold))
    assert pending.block_number is None
    assert pending.balance_after == change  # the confirmed balance, as if this were mined next
    cold_pending = only(rec.transfers, tx_hash=txid, wallet=addr(cold))
    assert (cold_pending.direction, cold_pending.amount) == (Direction.IN, 50_000_000)
    assert cold_pending.counterparty == addr(hot)
    assert cold_pending.balance_after == 50_000_000

    block_hash = node.mine(1)[0]
    rec.batches.clear()
    w.poll_once()
    out = only(rec.transfers, tx_hash=txid, wallet=addr(hot))
    assert out.status is TransferStatus.CONFIRMED
    assert out.id == pending.id
    assert (out.amount, out.block_hash, out.block_number) == (
        pending.amount,
        block_hash,
        node.height(),
    )
    assert out.balance_after == change
    assert only(rec.transfers, tx_hash=txid, wallet=addr(cold)).id == cold_pending.id
    assert (out.decimals, out.asset) == (8, "BTC")


def test_coinbase_inflow(node: Node, tmp_path: Path) -> None:
    start = node.height() + 1
    source = make_source(node, tmp_path, [addr(node.miner)], balances_from=None)
    rec = Recorder()
    w = watcher(source, tmp_path, rec, start)
    node.mine(2)
    w.poll_once()
    coinbases = [t for t in rec.transfers if t.counterparty == COINBASE]
    assert len(coinbases) == 2
    assert all(t.balance_after is None for t in rec.transfers)  # history before start unknown


def test_key_wallet_follows_addresses_past_the_gap_limit(node: Node, tmp_path: Path) -> None:
    master = new_key()  # bitcoinlib writes a regtest segwit key as zpub
    zpub = str(master.wif_public())
    receive, change = master.child_private(0), master.child_private(1)

    def key(branch: Any, i: int) -> Any:
        return branch.child_private(i)

    start = node.height() + 1
    source = make_source(node, tmp_path, [zpub], balances_from=start, gap_limit=3)
    rec = Recorder()
    w = watcher(source, tmp_path, rec, start)

    # Index 2 is inside the first window (0..2); paying it opens 3..5; index 5 then opens 6..8.
    tx_a, _ = node.fund([(addr(key(receive, 2)), 10_000_000)])
    node.mine(1)
    w.poll_once()
    tx_b, coins_b = node.fund([(addr(key(receive, 5)), 20_000_000)])
    node.mine(1)
    w.poll_once()
    tx_c, coins_c = node.fund([(addr(key(receive, 8)), 30_000_000)])
    # Index 20 is far beyond every window: not ours as far as the watcher can know.
    node.fund([(addr(key(receive, 20)), 1_000)])
    node.mine(1)
    w.poll_once()
    confirmed = [t for t in rec.transfers if t.status is TransferStatus.CONFIRMED]
    assert [(t.tx_hash, t.amount, t.wallet) for t in confirmed] == [
        (tx_a, 10_000_000, zpub),
        (tx_b, 20_000_000, zpub),
        (tx_c, 30_000_000, zpub),
    ]
    assert confirmed[-1].balance_after == 60_000_000

    # A restarted source remembers the used indices: index 8's coins are attributed on spend,
    # and change to the change chain stays inside the wallet.
    thief = addr(new_key())
    restarted = make_source(node, tmp_path, [zpub], balances_from=start, gap_limit=3)
    w2 = watcher(restarted, tmp_path, rec, start)
    coins = [
        type(coins_b[0])(coins_b[0].txid, coins_b[0].vout, 20_000_000, key(receive, 5)),
        type(coins_c[0])(coins_c[0].txid, coins_c[0].vout, 30_000_000, key(receive, 8)),
    ]
    txid, _ = node.send(coins, [(thief, 35_000_000)], change=addr(key(change, 0)))
    node.mine(1)
    rec.batches.clear()
    w2.poll_once()
    out = only(rec.transfers, tx_hash=txid, status=TransferStatus.CONFIRMED)
    assert (out.wallet, out.direction, out.amount) == (zpub, Direction.OUT, 35_000_000 + FEE)
    assert out.counterparty == thief
    assert out.balance_after == 60_000_000 - 35_000_000 - FEE


def test_descriptor_wallet(node: Node, tmp_path: Path) -> None:
    master = new_key()
    descriptor = f"wpkh({master.wif_public()}/<0;1>/*)"
    start = node.height() + 1
    source = make_source(node, tmp_path, [descriptor], balances_from=start)
    rec = Recorder()
    w = watcher(source, tmp_path, rec, start)
    txid, _ = node.fund(
        [
            (addr(master.child_private(0).child_private(4)), 7_000),
            (addr(master.child_private(1).child_private(0)), 5_000),
        ]
    )
    node.mine(1)
    w.poll_once()
    t = only(rec.transfers, tx_hash=txid)
    assert (t.wallet, t.direction, t.amount, t.balance_after) == (
        descriptor,
        Direction.IN,
        12_000,
        12_000,
    )


def test_crash_after_utxo_commit_or_after_publish_loses_nothing(node: Node, tmp_path: Path) -> None:
    hot = new_key()
    start = node.height() + 1
    rec = Recorder()
    _, coins = node.fund([(addr(hot), 80_000), (addr(hot), 90_000)])
    node.mine(1)
    w = watcher(make_source(node, tmp_path, [addr(hot)], balances_from=start), tmp_path, rec, start)
    w.poll_once()

    thief = addr(new_key())
    mine = [type(c)(c.txid, c.vout, c.value, hot) for c in coins[:2]]
    txid, _ = node.send(mine, [(thief, 150_000)], change=addr(hot))
    node.mine(1)
    # The block's UTXO changes are committed, then the bus fails before acknowledging.
    rec.fail_before = 1
    with pytest.raises(RuntimeError, match="before the bus"):
        watcher(
            make_source(node, tmp_path, [addr(hot)], balances_from=start), tmp_path, rec, start
        ).poll_once()
    # A restart reads the block again: its inputs are still attributed (the store undid and
    # re-applied the block) and published; then a crash between publish and cursor.
    rec.fail_after = 1
    with pytest.raises(RuntimeError, match="between publish"):
        watcher(
            make_source(node, tmp_path, [addr(hot)], balances_from=start), tmp_path, rec, start
        ).poll_once()
    watcher(
        make_source(node, tmp_path, [addr(hot)], balances_from=start), tmp_path, rec, start
    ).poll_once()
    outs = [t for t in rec.transfers if t.tx_hash == txid and t.status is TransferStatus.CONFIRMED]
    assert len(outs) == 2  # published twice (at-least-once) ...
    assert outs[0] == outs[1]  # ... identically, so readers de-duplicate by id
    assert outs[0].direction is Direction.OUT
    expected_change = 170_000 - 150_000 - FEE
    assert outs[0].amount == 170_000 - expected_change
    assert outs[0].balance_after == expected_change


CHILD = """
import os, sys, time
from pathlib import Path
from drainwatch.config import WalletConfig
from ingest import CursorStore, Watcher
from ingest.bitcoin import BitcoinSource
from ingest.btc_rpc import BitcoinRpc
from ingest.utxo import UtxoStore

url, user, pw, wallet, state, start, target = sys.argv[1:]
state = Path(state)
out = open(state / "published.jsonl", "ab")

def publish(transfers):
    for t in transfers:
        out.write(t.to_json() + b"\\n")
    out.flush()
    os.fsync(out.fileno())
    time.sleep(0.05)  # a bus acknowledgement takes a moment: leaves room to be killed

chain = "btc-regtest"
source = BitcoinSource(
    BitcoinRpc([url], auth=(user, pw), chain=chain), chain,
    [WalletConfig(chain=chain, address=wallet)], UtxoStore(state / "utxo.sqlite3"),
    network="regtest", balances_from=int(start),
)
w = Watcher(source, publish, CursorStore(state / "cursors.sqlite3"), chain,
            confirmations=0, start_block=int(start), max_batch=1)
while (c := w.cursor_store.get(chain)) is None or c.number < int(target):
    w.poll_once()
"""


def test_watcher_process_killed_mid_stream_publishes_the_chain_exactly(
    node: Node, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from drainwatch.events import TRANSFERS, decode

    hot = new_key()
    outside = addr(new_key())
    start = node.height() + 1
    truth: dict[str, tuple[Direction, int]] = {}
    coins: list[Any] = []
    for i in range(12):
        txid, got = node.fund([(addr(hot), 10_000 * (i + 1))])
        truth[txid] = (Direction.IN, 10_000 * (i + 1))
        coins.append(type(got[0])(got[0].txid, got[0].vout, got[0].value, hot))
        if i % 3 == 2:
            coin = coins.pop(0)
            txid, _ = node.send([coin], [(outside, coin.value - FEE)])
            truth[txid] = (Direction.OUT, coin.value)
        node.mine(1)
    target = node.height()
    balance = sum(c.value for c in coins)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    published = tmp_path / "published.jsonl"
    args = [
        sys.executable,
        str(script),
        node.url,
        *node.svc.rpc_auth,
        addr(hot),
        str(tmp_path),
        str(start),
        str(target),
    ]

    def lines() -> int:
        return len(published.read_bytes().splitlines()) if published.exists() else 0

    for kill_at in (3, 9):
        child = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[3])
        deadline = time.monotonic() + 30
        while lines() < kill_at and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the watcher finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with cursors(tmp_path) as store:  # killed mid-stream, not after the end
            stopped = store.get(CHAIN)
        assert stopped is None or stopped.number < target
    final = subprocess.run(args, cwd=Path(__file__).resolve().parents[3], timeout=60, check=False)
    assert final.returncode == 0

    records = [decode(TRANSFERS, line, Transfer) for line in published.read_bytes().splitlines()]
    by_id: dict[str, Transfer] = {}
    for t in records:
        assert by_id.setdefault(t.id, t) == t  # a repeat is identical
    assert {t.tx_hash: (t.direction, t.amount) for t in by_id.values()} == truth
    assert len(by_id) == len(truth)
    last = max(by_id.values(), key=lambda t: t.block_number or 0)
    assert last.balance_after == balance


def test_node_restart_and_dead_node_keep_the_cursor(node: Node, tmp_path: Path) -> None:
    from ingest import RpcError

    hot = new_key()
    start = node.height() + 1
    rec = Recorder()
    source = make_source(node, tmp_path, [addr(hot)], balances_from=start)
    w = watcher(source, tmp_path, rec, start)
    tx1, _ = node.fund([(addr(hot), 11_111)])
    node.mine(1)
    w.poll_once()
    cursor = w.cursor_store.get(CHAIN)
    # A pending transaction when the node goes down: the harness restores its mempool too.
    tx2, _ = node.fund([(addr(hot), 22_222)])
    node.svc.stop()
    try:
        with pytest.raises(RpcError):
            w.poll_once()
        assert w.cursor_store.get(CHAIN) == cursor
    finally:
        node.svc.start()
    w.poll_once()
    node.mine(1)
    w.poll_once()
    latest = rec.latest()
    got = {t.tx_hash: (t.status, t.amount) for t in latest.values()}
    assert got == {
        tx1: (TransferStatus.CONFIRMED, 11_111),
        tx2: (TransferStatus.CONFIRMED, 22_222),
    }
    assert [t.status for t in rec.transfers if t.tx_hash == tx2] == [
        TransferStatus.PENDING,
        TransferStatus.CONFIRMED,
    ]


def test_reorg_retracts_then_reconfirms_without_double_counting(node: Node, tmp_path: Path) -> None:
    from tests.harness.services import BtcdService

    hot = new_key()
    thief = addr(new_key())
    start = node.height() + 1
    rec = Recorder()
    w = watcher(make_source(node, tmp_path, [addr(hot)], balances_from=start), tmp_path, rec, start)
    _, coins = node.fund([(addr(hot), 500_000)])
    node.mine(1)
    w.poll_once()
    fork = node.height()
    coin = type(coins[0])(coins[0].txid, 0, 500_000, hot)
    txid, _ = node.send([coin], [(thief, 300_000)], change=addr(hot))
    old_block = node.mine(1)[0]
    w.poll_once()
    first = only(rec.transfers, tx_hash=txid, status=TransferStatus.CONFIRMED)
    assert first.block_hash == old_block

    # A competing branch from a second node: same chain up to the fork, two empty blocks on top.
    with BtcdService(mining_address=addr(new_key()), preserve_chain=False) as other:
        for height in range(1, fork + 1):
            raw = node.svc.rpc("getblock", [node.svc.rpc("getblockhash", [height]), 0])
            assert other.rpc("submitblock", [raw]) is None
        branch = other.generate(2)
        for block_hash in branch:
            assert node.svc.rpc("submitblock", [other.rpc("getblock", [block_hash, 0])]) is None
    assert node.svc.rpc("getblockhash", [fork + 1]) == branch[0]  # the node reorganised

    mark = len(rec.transfers)
    w.poll_once()
    w.poll_once()
    assert w.reorgs == 1
    # btcd puts the transactions of disconnected blocks back into its mempool.
    assert txid in node.svc.rpc("getrawmempool")
    statuses = [t.status for t in rec.transfers[mark:] if t.id == first.id]
    assert statuses == [TransferStatus.RETRACTED, TransferStatus.PENDING]

    # Mined again on the new branch: confirmed again, same id, the new block, same amount.
    new_block = node.mine(1)[0]
    w.poll_once()
    final = rec.latest()[first.id]
    assert final.status is TransferStatus.CONFIRMED
    assert (final.block_hash, final.block_number) == (new_block, fork + 3)
    assert (final.amount, final.balance_after) == (first.amount, first.balance_after)
    assert final.amount == 500_000 - (500_000 - 300_000 - FEE)
    # The watched set was undone and redone, not applied twice: the stream adds up.
    confirmed = [t for t in rec.latest().values() if t.status is TransferStatus.CONFIRMED]
    assert sum(t.signed_amount for t in confirmed) == final.balance_after == 500_000 - first.amount


def test_config_wires_a_bitcoin_watcher_onto_the_bus(node: Node, tmp_path: Path) -> None:
    from drainwatch.app import build_bus, build_watchers
    from drainwatch.bus import EmbeddedBus
    from drainwatch.config import loads
    from drainwatch.events import TRANSFERS, decode
    from ingest import BitcoinSource

    hot = new_key()
    start = node.height() + 1
    txid, _ = node.fund([(addr(hot), 77_000)])
    node.mine(1)
    user, password = node.svc.rpc_auth
    port = node.url.rsplit(":", 1)[1]
    cfg = loads(
        f'state_dir = "{tmp_path}"\n'
        f'[[wallets]]\nchain = "btc"\naddress = "{addr(hot)}"\n'
        f'[chains.btc]\nkind = "bitcoin"\nnetwork = "regtest"\nconfirmations = 0\n'
        f"start_block = {start}\n"
        # Credentials in the URL, as a deployment would write them (from ${{ENV}} references).
        f'rpc = ["http://{user}:{password}@127.0.0.1:{port}"]\n'
    )
    bus = build_bus(cfg)
    assert isinstance(bus, EmbeddedBus)
    try:
        [(w, _)] = build_watchers(cfg, bus.producer())
        assert isinstance(w.source, BitcoinSource)
        w.poll_once()
        messages = [
            m for tp in bus.partitions(TRANSFERS) for m in bus.read_range(tp, 0, bus.end_offset(tp))
        ]
        [message] = messages
        t = decode(TRANSFERS, message.value, Transfer)
        assert (t.chain, t.wallet, t.tx_hash, t.amount, t.balance_after) == (
            "btc",
            addr(hot),
            txid,
            77_000,
            77_000,
        )
        assert message.key == f"btc:{addr(hot)}"
    finally:
        bus.close()
