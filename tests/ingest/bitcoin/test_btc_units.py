"""Bitcoin pieces without a node: config validation, key derivation against bitcoinlib's own,
the UTXO store's undo data, and the accounting rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bitcoinlib.keys import HDKey

from drainwatch.config import ConfigError, loads
from drainwatch.events import Direction, TransferStatus
from ingest import ReorgTooDeepError, WatcherError
from ingest.bitcoin import (
    Movement,
    ParsedTx,
    TxIn,
    TxOut,
    WatchList,
    account,
    movement_transfer,
)
from ingest.utxo import Op, Utxo, UtxoStore
from ingest.xpub import (
    AddressError,
    KeyWallet,
    address_script,
    is_extended,
    parse_watch_spec,
    script_address,
)

SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
GENESIS_P2PKH = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"


def config(address: str, network: str = "bitcoin", kind: str = "bitcoin") -> str:
    rpc = '["http://127.0.0.1:8332"]'
    return (
        '[[wallets]]\nchain = "eth"\naddress = "0x00000000000000000000000000000000000000aa"\n\n'
        f'[[wallets]]\nchain = "btc"\naddress = "{address}"\n\n'
        f'[chains.btc]\nkind = "{kind}"\nrpc = {rpc}\nnetwork = "{network}"\n\n'
        f'[chains.eth]\nkind = "evm"\nrpc = {rpc}\n'
    )


def account_key(network: str, witness_type: str) -> Any:
    return HDKey.from_seed(SEED, network=network, witness_type=witness_type)


def test_config_rejects_a_bad_bitcoin_address_naming_the_key_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        loads(config(GENESIS_P2PKH.lower()), path="dw.toml")
    assert info.value.key == "wallets[1].address"
    assert info.value.line == 7
    assert str(info.value).startswith("dw.toml:7: wallets[1].address: ")


@pytest.mark.parametrize(
    ("address", "network", "ok"),
    [
        (GENESIS_P2PKH, "bitcoin", True),
        (GENESIS_P2PKH, "testnet", False),
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "bitcoin", True),
        ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "bitcoin", True),  # Bech32 upper case
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "bitcoin", False),  # checksum
        ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "testnet", True),
        ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "regtest", False),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest", True),
        ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest", True),
        ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "bitcoin", True),
        ("not-an-address", "bitcoin", False),
        ("wpkh(notakey/0/*)", "bitcoin", False),
    ],
)
def test_config_and_watcher_agree_on_addresses(address: str, network: str, ok: bool) -> None:
    try:
        loads(config(address, network))
        config_ok = True
    except ConfigError:
        config_ok = False
    try:
        if is_extended(address):
            parse_watch_spec(address, network)
        else:
            address_script(address, network)
        watcher_ok = True
    except AddressError:
        watcher_ok = False
    assert (config_ok, watcher_ok) == (ok, ok)


@pytest.mark.parametrize(
    ("witness_type", "network", "prefix"),
    [
        ("legacy", "bitcoin", "xpub"),
        ("p2sh-segwit", "bitcoin", "ypub"),
        ("segwit", "bitcoin", "zpub"),
        ("segwit", "testnet", "vpub"),
        ("legacy", "testnet", "tpub"),
    ],
)
def test_derived_addresses_equal_bitcoinlibs_own(
    witness_type: str, network: str, prefix: str
) -> None:
    master = account_key(network, witness_type)
    key = str(master.wif_public())
    assert key.startswith(prefix)
    wallet = KeyWallet(parse_watch_spec(key, network), gap_limit=4)
    for branch in (0, 1):
        for i in range(4):
            child = master.child_private(branch).child_private(i)
            ours = wallet.address_at(branch, i)
            assert ours == child.address()
            assert ours in wallet.addresses
    # The config accepts it too, and a descriptor of the same key.
    loads(config(key, network))
    loads(config(f"wpkh({key}/<0;1>/*)#0123abcd", network))
    with pytest.raises(ConfigError, match=r"wallets\[1\]\.address"):
        loads(config(key, "bitcoin" if network == "testnet" else "testnet"))


def test_regtest_legacy_addresses_use_the_test_prefixes() -> None:
    # bitcoinlib's "regtest" network writes mainnet Base58 (1...); Core and btcd write m/n/2.
    script = address_script(GENESIS_P2PKH, "bitcoin")
    assert script_address(script, "regtest") == "mpXwg4jMtRhuSpVq4xS3HFHmCmWp9NyGKt"


def test_utxo_store_undo_is_bounded_and_checked(tmp_path: Path) -> None:
    store = UtxoStore(tmp_path / "u.sqlite3", undo_depth=3)
    parent = "h0"
    for h in range(1, 7):
        ops = [Op.create((f"t{h}", 0), "a", "w", h)]
        if h > 1:
            ops.append(Op.spend((f"t{h - 1}", 0)))
        assert store.apply("c", h, f"h{h}", parent=parent, ops=ops) == {"w": h}
        parent = f"h{h}"
    with pytest.raises(WatcherError, match="does not extend"):
        store.apply("c", 8, "h8", parent="h7", ops=[])
    with pytest.raises(WatcherError, match="not in the watched set"):
        store.apply("c", 7, "h7", parent="h6", ops=[Op.spend(("t1", 0))])
    assert store.tip("c") == (6, "h6")  # the failed block left nothing behind
    with pytest.raises(ReorgTooDeepError):
        store.undo_to("c", 2)  # undo data kept for blocks 4..6 only
    store.undo_to("c", 3)
    reopened = UtxoStore(tmp_path / "u.sqlite3", undo_depth=3)
    assert reopened.tip("c") == (3, "h3")
    assert reopened.balances("c", ["w"]) == {"w": 3}
    assert reopened.origin("c") == 1


def test_accounting_nets_inputs_against_change_per_wallet() -> None:
    watch = WatchList({"hot": "hot", "cold": "cold"}, {})
    known = {("f", 0): ("hot", "hot", 700), ("f", 1): ("hot", "hot", 300)}
    tx = ParsedTx(
        "s",
        (TxIn(("f", 0), "hot"), TxIn(("f", 1), "hot"), TxIn(("x", 5), "stranger")),
        (TxOut(0, 400, "thief"), TxOut(1, 250, "cold"), TxOut(2, 100, "hot"), TxOut(3, 0, None)),
    )
    moves, ops = account([tx], watch, {k: Utxo(*v) for k, v in known.items()})
    got = {m.wallet: (m.sent, m.returned, m.others_out, m.others_in) for m in moves}
    assert got == {
        "hot": (1000, 100, ["thief", "cold"], ["stranger"]),
        "cold": (0, 250, ["thief", "hot"], ["hot", "stranger"]),
    }
    assert [o.kind for o in ops] == ["spend", "spend", "create", "create"]
    when = datetime(2024, 1, 1, tzinfo=UTC)
    out = [
        movement_transfer(m, chain="b", asset="BTC", time=when, status=TransferStatus.PENDING)
        for m in moves
    ]
    assert [(t.wallet, t.direction, t.amount, t.counterparty) for t in out if t] == [
        ("hot", Direction.OUT, 900, "thief"),
        ("cold", Direction.IN, 250, "hot"),
    ]
    consolidation = Movement("c", "hot", sent=1000, returned=990)
    t = movement_transfer(
        consolidation, chain="b", asset="BTC", time=when, status=TransferStatus.CONFIRMED
    )
    assert t is not None
    assert (t.direction, t.amount, t.counterparty) == (Direction.OUT, 10, "hot")
