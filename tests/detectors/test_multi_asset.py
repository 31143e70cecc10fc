"""A hot wallet that holds several assets (ETH and a token at one address), listed once per asset.

Every EVM exchange hot wallet pays out its tokens from the same address as its ETH, and the
Phemex and KuCoin drains took dozens of tokens. Each asset has its own balance, opening balance
and label; the address is one wallet to freeze.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors import DetectionEngine, run_backtest
from detectors.traffic import DrainSpec, HotWalletSpec, config_toml, generate_traffic, write_jsonl
from drainwatch.config import ChainConfig, Config, ConfigError, loads
from tests.detectors import factories
from tests.detectors.test_backtest import replay_garbage

START = datetime(2024, 3, 4, tzinfo=UTC)
DAYS = 10
DRAIN_AT_S = 9 * 86400 + 3 * 3600
ADDRESS = "0x" + "ab" * 20
ETH = HotWalletSpec(
    chain="ethereum",
    asset="ETH",
    address=ADDRESS,
    cold_address="0x" + "cd" * 20,
    label="eth-hot",
    balance=Decimal("20000"),
    decimals=18,
)
USDT = replace(
    ETH,
    asset="USDT",
    label="usdt-hot",
    balance=Decimal("30000000"),
    decimals=6,
    drains=(DrainSpec(DRAIN_AT_S, "burst", 0.2, 4, 60),),
)


def _alerts(config: Config, transfers: Path, out: Path, workers: int) -> list[dict[str, Any]]:
    run_backtest(config, transfers, None, out, workers=workers)
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    traffic = generate_traffic([ETH, USDT], START, days=DAYS, seed=7)
    directory = tmp_path_factory.mktemp("multi-asset")
    return write_jsonl(directory / "transfers.jsonl", traffic.transfers), traffic.malicious


def test_each_asset_is_judged_against_its_own_balance_and_named_in_its_alerts(
    replay: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    transfers, malicious = replay
    config = loads(config_toml([ETH, USDT]))
    assert [(w.address, w.asset) for w in config.wallets if w.role == "hot"] == [
        (ADDRESS, "ETH"),
        (ADDRESS, "USDT"),
    ]
    alerts = _alerts(config, transfers, tmp_path / "alerts.jsonl", workers=1)
    after_a_week = (START.timestamp() + 7 * 86400, START.timestamp() + DRAIN_AT_S)
    freezes = [a for a in alerts if a["freeze"] and a["wallet"] == ADDRESS]
    assert not [
        a
        for a in freezes
        if after_a_week[0] <= datetime.fromisoformat(a["ts"]).timestamp() < after_a_week[1]
    ], "no false freeze of either asset after the first week"
    # The drain's first transfer (20% of the USDT balance) freezes the wallet, as USDT.
    drain = [a for a in freezes if datetime.fromisoformat(a["ts"]).timestamp() >= after_a_week[1]]
    assert drain[0]["tx_hashes"][-1] == malicious[0]["tx_hash"]
    assert (drain[0]["wallet_label"], drain[0]["metrics"]["asset"]) == ("usdt-hot", "USDT")
    for alert in alerts:
        if alert["wallet"] == ADDRESS and alert["detector"] != "correlation":
            label = {"ETH": "eth-hot", "USDT": "usdt-hot"}[alert["metrics"]["asset"]]
            assert alert["wallet_label"] == label


def test_one_entry_for_both_assets_keeps_its_opening_balance_for_the_first_asset_only(
    replay: tuple[Path, list[dict[str, Any]]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One entry without `asset` has one opening balance: read as the USDT balance too, 20,000
    # "USDT" would make every customer's USDT withdrawal a drain. It stays the balance of the
    # first asset the wallet moved; the other's is estimated from the stream, with a warning.
    transfers, malicious = replay
    one_entry = config_toml([ETH]).replace('asset = "ETH"\n', "", 1)
    alerts = _alerts(loads(one_entry), transfers, tmp_path / "alerts.jsonl", workers=1)
    [warning] = [r.getMessage() for r in caplog.records if "opening_balance" in r.getMessage()]
    assert "wallet eth-hot moves USDT besides eth" in warning
    known = {(a["metrics"]["asset"], a["metrics"].get("balance_known")) for a in alerts}
    assert ("USDT", "1") not in known
    assert ("ETH", "1") in known or not any(a["metrics"]["asset"] == "ETH" for a in alerts)
    drain_at = START.timestamp() + DRAIN_AT_S
    freezes = [a for a in alerts if a["freeze"] and a["metrics"]["asset"] == "USDT"]
    first = next(a for a in freezes if datetime.fromisoformat(a["ts"]).timestamp() >= drain_at)
    assert first["tx_hashes"][-1] == malicious[0]["tx_hash"]


def test_split_over_workers_the_assets_of_one_wallet_stay_together(
    replay: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    transfers, _ = replay
    config = loads(config_toml([ETH, USDT]))
    one = _alerts(config, transfers, tmp_path / "one.jsonl", workers=1)
    two = _alerts(config, transfers, tmp_path / "two.jsonl", workers=2)
    assert one == two
    assert any(a["freeze"] for a in one)


@pytest.mark.parametrize(
    ("second", "line", "key", "reason"),
    [
        ('asset = "eth"\n', 10, "wallets[1].asset", "listed twice for asset 'eth'"),
        ("", 8, "wallets[1].address", "listed once per asset"),
        ('asset = "USDT"\nrole = "cold"\n', 11, "wallets[1].role", "one wallet has one role"),
    ],
)
def test_a_wallet_listed_twice_must_name_a_different_asset_each_time(
    second: str, line: int, key: str, reason: str
) -> None:
    text = (
        f'[[wallets]]\nchain = "ethereum"\naddress = "{ADDRESS}"\nasset = "ETH"\n\n'
        f'[[wallets]]\nchain = "ethereum"\naddress = "{ADDRESS.upper().replace("0X", "0x")}"\n'
        f"label = 'second'\n{second}"
    )
    with pytest.raises(ConfigError, match=reason) as info:
        loads(text, path="multi.toml")
    assert (info.value.line, info.value.key) == (line, key)


def _coindcx(
    test_minutes_before: float,
    test_asset: str = "USDT",
    *,
    chain: str = "solana",
    coin: str = "SOL",
    chains: dict[str, ChainConfig] | None = None,
) -> list[tuple[bool, str]]:
    """A wallet paying USDT, USDC and ``coin`` from one address on ``chain``: a 1-unit test in
    ``test_asset`` to a new address, then 2% of the USDC balance to it (too little for any other
    rule)."""
    hot = [
        factories.wallet("SOLHOT", chain=chain, asset=asset, balance="1000000", label=label)
        for asset, label in (
            ("USDT", "sol-hot-usdt"),
            ("USDC", "sol-hot-usdc"),
            (coin, f"sol-hot-{coin.lower()}"),
        )
    ]
    engine = DetectionEngine(factories.config(*hot).model_copy(update={"chains": chains or {}}))
    test = factories.transfer(
        "THIEF", 1, wallet="SOLHOT", chain=chain, asset=test_asset, minutes=0, tx="test"
    )
    drain = factories.transfer(
        "THIEF",
        20_000,
        wallet="SOLHOT",
        chain=chain,
        asset="USDC",
        minutes=test_minutes_before,
        tx="drain",
    )
    assert engine.process(test) == []
    return [(a.freeze, a.summary) for a in engine.process(drain)]


def test_a_tiny_test_in_one_asset_then_a_payment_in_another_to_it_freezes_as_test_then_drain() -> (
    None
):
    # CoinDCX, 2025: 1 USDT at 21:07 UTC, the USDC drain from 22:09.
    assert _coindcx(62) == [
        (
            True,
            "2% of sol-hot-usdc drained at once to 1 new address (after a 1 USDT test); "
            "980,000 USDC left, at this rate empty in 49 min",
        )
    ]
    # Same asset, the one-hour window: an hour and two minutes is a customer's later payment.
    assert _coindcx(62, test_asset="USDC") == []
    assert _coindcx(50, test_asset="USDC")[0][0] is True
    # Another asset's test counts for three hours.
    assert _coindcx(179)[0][0] is True
    assert _coindcx(181) == []


def test_a_little_of_the_chains_coin_before_a_token_is_money_for_fees_not_a_test() -> None:
    # A customer moving USDC to a new wallet of their own first takes some SOL for its fees.
    assert _coindcx(30, test_asset="SOL") == []
    # A chain the detector does not know: its coin is a test like any other asset ...
    assert _coindcx(30, test_asset="GLMR", chain="moonbeam", coin="GLMR")[0][0] is True
    # ... until the config names it the chain's native coin.
    moonbeam = ChainConfig(kind="evm", rpc=("http://127.0.0.1:9",), native_symbol="GLMR")
    glmr = _coindcx(
        30, test_asset="GLMR", chain="moonbeam", coin="GLMR", chains={"moonbeam": moonbeam}
    )
    assert glmr == []


def test_the_assets_of_a_wallet_restored_from_a_snapshot_still_see_each_others_tests() -> None:
    hot = [
        factories.wallet("SOLHOT", chain="solana", asset=asset, balance="1000000")
        for asset in ("USDT", "USDC")
    ]
    config = factories.config(*hot)
    saved = DetectionEngine(config)
    for asset in ("USDC", "USDT"):  # both states exist before the snapshot
        saved.process(
            factories.transfer("CUSTOMER", 5, wallet="SOLHOT", chain="solana", asset=asset)
        )
    saved.process(
        factories.transfer("THIEF", 1, wallet="SOLHOT", chain="solana", asset="USDT", minutes=1)
    )
    restored = DetectionEngine(config)
    restored.restore(pickle.loads(pickle.dumps(saved.held_state({hot[0].key}))))
    drain = factories.transfer(
        "THIEF", 20_000, wallet="SOLHOT", chain="solana", asset="USDC", minutes=63
    )
    assert [a.freeze for a in restored.process(drain)] == [True]


def test_a_replay_of_a_wallet_in_two_assets_leaves_no_cyclic_garbage(
    replay: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    # The states of one wallet's assets know each other (a test in one asset, the drain in
    # another): weakly, or they would be cycles the backtest, its collector paused, leaves.
    transfers, _ = replay
    config = tmp_path / "drainwatch.toml"
    config.write_text(config_toml([ETH, USDT]))
    freezes, garbage = replay_garbage(str(config), str(transfers), "", tmp_path / "alerts.jsonl")
    assert freezes > 0
    assert garbage == 0
