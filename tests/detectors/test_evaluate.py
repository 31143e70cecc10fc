"""The evaluation's scoring (DESIGN.md section 5) and the fixed-rule baseline."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from detectors import DetectionEngine
from detectors.evaluate import (
    DRAIN_DAY,
    DRAIN_DAYS,
    FixedRule,
    Scenario,
    choose,
    first_large,
    run_all,
    scenarios,
    score,
    variants,
)
from detectors.traffic import DrainSpec, HotWalletSpec, generate_traffic
from drainwatch.cli import app
from tests.detectors.factories import config, transfer

START = datetime(2024, 3, 4, tzinfo=UTC)
HOT = HotWalletSpec(
    chain="nem",
    asset="XEM",
    address="HOT",
    cold_address="COLD",
    label="nem-hot",
    balance=Decimal(1000),
    decimals=0,
)
SCENARIO = Scenario("tiny", "a test", (HOT,), days=15.0)


def ts(days: float) -> str:
    return (START + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def row(days: float, amount: str) -> dict[str, Any]:
    return {"ts": ts(days), "from": "HOT", "to": "THIEF", "asset": "XEM", "amount": amount}


def alert(days: float, *, freeze: bool, severity: str = "critical") -> dict[str, Any]:
    return {"ts": ts(days), "wallet": "HOT", "freeze": freeze, "severity": severity}


def test_funds_saved_count_from_the_first_freeze_after_the_drain_started() -> None:
    drain = [row(12, "100"), row(12.001, "300"), row(12.002, "600")]
    alerts = [
        alert(2, freeze=True),  # the learning week: neither false nor the drain's freeze
        alert(9, freeze=True),  # normal traffic: a false freeze
        alert(10, freeze=False, severity="warning"),
        alert(12.001, freeze=True),  # the second malicious transfer itself has left
    ]
    result = score(SCENARIO, "x", START, drain, alerts, 1.0)
    assert result.saved == pytest.approx(0.6)
    assert result.passed == 2
    assert (result.false_freezes, result.warnings) == (1, 2)
    # From day 7 until an hour before the drain on day 12.
    assert result.wallet_days == pytest.approx(5.0 - 1 / 24)


def test_a_drain_never_frozen_saves_nothing() -> None:
    result = score(SCENARIO, "x", START, [row(12, "5")], [], 1.0)
    assert (result.saved, result.passed, result.false_freezes) == (0.0, 1, 0)


def test_fixed_rule_freezes_at_five_percent_in_twenty_minutes() -> None:
    engine = DetectionEngine(config(), detectors=[FixedRule()], correlator=None)
    assert engine.process(transfer("A", 30, minutes=0)) == []
    alerts = engine.process(transfer("B", 25, minutes=10))
    assert [(a.detector, a.freeze) for a in alerts] == [("fixed_rule", True)]
    assert engine.process(transfer("C", 45, minutes=60)) == []  # 4.8% of 945, alone


def evaluate(*args: str) -> tuple[int, str]:
    """``drainwatch evaluate`` with ``args``: its exit code and what it printed (stderr too)."""
    result = CliRunner().invoke(app, ["evaluate", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--scenario", "no-such-scenario"],
            "unknown scenario no-such-scenario; known: coincheck-2018, ",
        ),
        (["--json", "/no/such/dir/results.json"], "cannot write: No such file or directory"),
        (["--workers", "0"], "'--workers': Input should be greater than or equal to 1"),
        (["--workers", "two"], "'--workers': Input should be a valid integer"),
        (["--drain-day", "6.5"], "drain_day must be between 7.0 and 18.5"),
        (["--drain-day", "19"], "drain_day must be between 7.0 and 18.5"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    args: list[str], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("detectors.evaluate.run_all", pytest.fail)
    code, output = evaluate("--scenario", "spaced-fresh", *args)
    assert code == 2
    assert reason in output


def test_the_evaluation_runs_and_writes_its_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "detectors.evaluate.variants", lambda: [replace(SCENARIO, name="quiet", days=8.0)]
    )
    out = tmp_path / "results.json"
    code, output = evaluate("--scenario", "quiet", "--workers", "1", "--json", str(out))
    assert code == 0, output
    assert "| quiet | drainwatch |" in output
    assert "| quiet | fixed |" in output
    written = orjson.loads(out.read_bytes())
    assert [(r["scenario"], r["detectors"]) for r in written] == [
        ("quiet", "drainwatch"),
        ("quiet", "fixed"),
    ]


def test_the_help_gives_the_drain_days_the_code_uses() -> None:
    code, output = evaluate("--help")
    assert code == 0
    text = " ".join(output.replace("│", " ").split())
    assert f"(default {DRAIN_DAY}, from {DRAIN_DAYS[0]:g} to {DRAIN_DAYS[1]:g})" in text


@pytest.mark.parametrize("workers", [1, 2])
def test_each_run_is_reported_as_it_ends_and_the_results_keep_their_order(workers: int) -> None:
    chosen = [replace(SCENARIO, name=name, days=8.0) for name in ("first", "second")]
    ended: list[tuple[str, str]] = []
    results = run_all(
        chosen, workers=workers, done=lambda r: ended.append((r.scenario, r.detectors))
    )
    order = [(r.scenario, r.detectors) for r in results]
    assert order == [(n, d) for n in ("first", "second") for d in ("drainwatch", "fixed")]
    assert sorted(ended) == sorted(order)


def test_the_progress_bar_changes_nothing_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "detectors.evaluate.variants", lambda: [replace(SCENARIO, name="quiet", days=8.0)]
    )
    plain = evaluate("--scenario", "quiet", "--workers", "1", "--no-progress")
    shown = evaluate("--scenario", "quiet", "--workers", "1", "--progress")
    assert plain[0] == shown[0] == 0

    def rows(output: str) -> list[str]:  # less the events/s column, which is wall time
        return [line.rsplit("|", 2)[0] for line in output.splitlines() if line.startswith("|")]

    assert len(rows(plain[1])) == 6  # header, rule, two runs, two "all" rows
    assert rows(shown[1]) == rows(plain[1])


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown scenario a, b; known: coincheck-2018, ") as err:
        choose(["spaced-fresh", "a", "b"])
    assert "quiet" in str(err.value)  # the variants are named too


def test_variants_are_drain_free_fleets_apart_from_the_scenarios() -> None:
    names = {s.name for s in scenarios()}
    shaped = variants()
    assert len({v.name for v in shaped}) == len(shaped)
    assert not names & {v.name for v in shaped}
    assert all(not w.drains for v in shaped for w in v.wallets)
    # Each differs from the default fleet in what its name says.
    default = scenarios(quick=True)[1].wallets[0]
    by_name = {v.name: v.wallets[0] for v in shaped}
    assert by_name["quiet"].withdrawals_per_day == 60 < default.withdrawals_per_day
    assert by_name["mm-weekly"].market_maker_every_h == 168
    assert by_name["thin-wallet"].customer_cap == 0.02 > default.customer_cap


def test_variants_run_when_asked_or_named() -> None:
    plain = [s.name for s in choose(quick=True)]
    assert "quiet" not in plain
    assert [s.name for s in choose(quick=True, with_variants=True)] == plain + [
        v.name for v in variants()
    ]
    assert [s.name for s in choose(["quiet", "spaced-fresh", "quiet"])] == [
        "quiet",
        "spaced-fresh",
    ]


def test_opening_balances_are_given_to_every_fleet_when_asked() -> None:
    without, given = (
        [s.opening_balance for s in choose(quick=True, opening_balances=asked)]
        for asked in (False, True)
    )
    assert not all(without)  # the drain-free fleets run without by default
    assert all(given)
    assert len(given) == len(without)


def test_a_seed_draws_every_fleet_anew_and_keeps_its_shape() -> None:
    tuned, one, two = (choose(quick=True, with_variants=True, seed=seed) for seed in (0, 1, 2))
    assert [replace(s, seed=0) for s in one] == [replace(s, seed=0) for s in tuned]
    seeds = [{s.seed for s in run} for run in (tuned, one, two)]
    assert not seeds[0] & seeds[1]
    assert not seeds[1] & seeds[2]
    assert not seeds[0] & seeds[2]
    # The traffic itself differs, drains included.
    drained = next(s for s in tuned if s.name == "fresh-fanout")
    again = next(s for s in one if s.name == "fresh-fanout")
    first, second = (
        generate_traffic(s.wallets, START, 15.0, seed=s.seed, panic_days=s.panic_days)
        for s in (drained, again)
    )
    assert first.transfers[:50] != second.transfers[:50]
    assert [r["amount"] for r in first.malicious] != [r["amount"] for r in second.malicious]
    assert len(first.malicious) == len(second.malicious)


def test_the_drain_day_moves_the_drains_but_not_the_surge_or_coincheck() -> None:
    late, early = (
        {s.name: s for s in scenarios(quick=True, drain_day=day)} for day in (17.5, 10.5)
    )
    moved = {
        name
        for name, scenario in late.items()
        if [d.start_s for w in scenario.wallets for d in w.drains]
        != [d.start_s for w in early[name].wallets for d in w.drains]
    }
    assert {"spaced-fresh", "warmed-thief", "many-wallets"} <= moved
    assert not moved & {"surge-drain", "second-week", "coincheck-2018", "normal-traffic"}
    assert early["spaced-fresh"].wallets[2].drains[0].start_s == 10.5 * 86400 + 3 * 3600


def test_late_counts_a_freeze_after_the_first_transfer_above_one_percent() -> None:
    # 1000 units: the 5 left, then 10 (1% of 995: more than 1%) leaves at day 12.001.
    drain = [row(12, "5"), row(12.001, "10"), row(12.002, "300")]
    large_at = first_large([HOT], drain, drain)
    assert list(large_at) == ["HOT"]
    on_time = score(SCENARIO, "x", START, drain, [alert(12.001, freeze=True)], 1.0, large_at)
    late = score(SCENARIO, "x", START, drain, [alert(12.002, freeze=True)], 1.0, large_at)
    assert (on_time.late, on_time.large_drains) == (0, 1)
    assert (late.late, late.large_drains) == (1, 1)
    # Inflows count: a 1000-unit deposit first makes the 10 under 1%, so the 300 is the first.
    deposit = {"ts": ts(11), "from": "BANK", "to": "HOT", "asset": "XEM", "amount": "1000"}
    at = datetime.fromisoformat(ts(12.002)).timestamp()
    assert first_large([HOT], [deposit, *drain], drain) == {"HOT": at}


def test_a_wallet_holding_two_assets_is_scored_per_asset_and_frozen_as_one() -> None:
    # HOT holds 1000 XEM and 10 TOK. 5 XEM is 0.5% of its XEM; 1 TOK is 10% of its TOK.
    token = replace(HOT, asset="TOK", label="tok-hot", balance=Decimal(10))
    tok = {**row(12.001, "1"), "asset": "TOK"}
    drain = [row(12, "5"), tok, row(12.002, "500"), {**row(12.003, "9"), "asset": "TOK"}]
    large_at = first_large([HOT, token], drain, drain)
    assert large_at == {"HOT": datetime.fromisoformat(ts(12.001)).timestamp()}
    scenario = replace(SCENARIO, wallets=(HOT, token))
    result = score(scenario, "x", START, drain, [alert(12.002, freeze=True)], 1.0, large_at)
    # One freeze stops both assets: XEM saved 0 of 505 (the 500 left at the freeze's second),
    # TOK 9 of 10; the mean is over the two (wallet, asset) drains.
    assert result.drained_wallets == 2
    assert result.saved == pytest.approx((0 + 0.9) / 2)
    assert (result.passed, result.late, result.large_drains) == (3, 1, 1)


@pytest.mark.parametrize(
    ("options", "low", "high"),
    [
        ({}, None, Decimal("0.03")),  # customers up to 0.5%, whales 0.5-3%
        ({"customer_cap": 0.05, "whales_per_week": 0}, Decimal("0.005"), Decimal("0.05")),
        ({"whale_tail": True}, Decimal("0.03"), Decimal("0.1")),
    ],
)
def test_the_harder_traffic_pays_larger_sizes(
    options: dict[str, Any], low: Decimal | None, high: Decimal
) -> None:
    """``customer_cap`` and ``whale_tail`` widen the sizes paid to non-regular addresses."""
    spec = replace(HOT, balance=Decimal(10**9), **options)
    rows = generate_traffic([spec], START, days=28, seed=41).transfers
    regular = (f"{spec.address[:6]}MARKETMAKER", spec.cold_address)
    paid = [Decimal(r["amount"]) for r in rows if r["from"] == "HOT" and r["to"] not in regular]
    largest = max(paid) / spec.balance
    assert low is None or largest > low
    assert largest <= high


def test_a_warmed_thief_was_paid_as_a_customer_days_before_its_drain() -> None:
    drain = DrainSpec(10 * 86400, "burst", 0.05, 3, 90, thief="THIEF", warmed_days=3)
    spec = replace(HOT, balance=Decimal(10**6), drains=(drain,))
    traffic = generate_traffic([spec], START, days=14, seed=3)
    to_thief = [r for r in traffic.transfers if r["to"] == "THIEF"]
    assert [r["ts"] for r in to_thief[:1]] == [ts(7)]
    assert Decimal(to_thief[0]["amount"]) == 500  # 0.05% of the working balance
    assert to_thief[0] not in traffic.malicious
    assert to_thief[1:] == traffic.malicious
    assert len(traffic.malicious) == 3
    assert [a["to"] for a in traffic.ledger].count("THIEF") == 1  # approved, as a customer's


def test_payout_batches_send_each_hours_withdrawals_at_once_but_not_the_drain() -> None:
    drain = DrainSpec(3 * 86400 + 1234, "burst", 0.05, 3, 90, thief="THIEF")
    spec = replace(HOT, balance=Decimal(10**6), drains=(drain,))
    batched = replace(spec, payout_cycle_s=3600, payout_spread_s=60)
    traffic = generate_traffic([batched], START, days=4, seed=5)
    external = ("COLD", "HOT")

    def seconds(r: dict[str, Any]) -> float:
        return (datetime.fromisoformat(r["ts"]) - START).total_seconds()

    paid = [r for r in traffic.transfers if r["from"] == "HOT" and r["to"] not in external]
    ordinary = [r for r in paid if r not in traffic.malicious]
    assert len(ordinary) > 1000
    assert all(seconds(r) % 3600 <= 60 for r in ordinary)
    assert traffic.transfers == sorted(traffic.transfers, key=lambda r: r["ts"])
    # The drain is the thief's, not the exchange's: at its own times.
    assert seconds(traffic.malicious[0]) == 3 * 86400 + 1234
    # Each approval still comes seconds to minutes before its transfer.
    approvals = sorted(seconds(a) for a in traffic.ledger)
    assert all(a % 3600 >= 3600 - 240 or a % 3600 <= 60 for a in approvals)


def test_withdrawals_approved_when_asked_wait_for_their_batch() -> None:
    spec = replace(HOT, balance=Decimal(10**6), payout_cycle_s=3600, approve_when_asked=True)
    traffic = generate_traffic([spec], START, days=2, seed=5)

    def seconds(r: dict[str, Any]) -> float:
        return (datetime.fromisoformat(r["ts"]) - START).total_seconds()

    approvals = [seconds(a) for a in traffic.ledger]
    assert traffic.ledger == sorted(traffic.ledger, key=lambda a: a["ts"])
    # Approved at any time of the hour (as asked), paid at the next full hour.
    assert len({int(a % 3600) // 600 for a in approvals}) == 6
    paid: dict[tuple[str, str], list[float]] = {}
    for r in traffic.transfers:
        if r["from"] == "HOT":
            paid.setdefault((r["to"], r["amount"]), []).append(seconds(r))
    waits = [
        min(t - seconds(a) for t in paid[a["to"], a["amount"]] if t > seconds(a))
        for a in traffic.ledger
    ]
    assert all(0 < wait <= 3600 + 60 + 240 for wait in waits)
    assert max(waits) > 3000


def test_a_withdrawal_fee_is_taken_from_the_payment_not_the_approval() -> None:
    spec = replace(HOT, balance=Decimal(10**6), withdrawal_fee_share=0.00001)  # 10 units
    traffic = generate_traffic([spec], START, days=1, seed=5)
    approved = {(a["to"], Decimal(a["amount"])) for a in traffic.ledger}
    paid = [r for r in traffic.transfers if r["from"] == "HOT" and r["to"] not in ("COLD",)]
    assert len(paid) > 100
    assert all((r["to"], Decimal(r["amount"]) + 10) in approved for r in paid)


def test_customers_taking_a_token_to_a_new_address_may_first_take_coin_for_its_fees() -> None:
    eth = replace(HOT, chain="ethereum", asset="ETH", address="0xhot", cold_address="0xcold")
    eth = replace(
        eth, label="eth-hot", balance=Decimal(20000), decimals=18, usd_price=Decimal(3000)
    )
    usdt = replace(eth, asset="USDT", label="usdt-hot", balance=Decimal(10**7), decimals=6)
    usdt = replace(usdt, usd_price=Decimal(1), gas_share=0.5)
    plain = generate_traffic([eth, replace(usdt, gas_share=0.0)], START, days=2, seed=5)
    traffic = generate_traffic([eth, usdt], START, days=2, seed=5)
    before = {r["tx_hash"] for r in plain.transfers}
    # Everything else is drawn as without it.
    assert before <= {r["tx_hash"] for r in traffic.transfers}
    gas = [r for r in traffic.transfers if r["tx_hash"] not in before]
    assert all(r["asset"] == "ETH" and r["from"] == "0xhot" for r in gas)
    assert all(5 <= r["usd_value"] <= 100 for r in gas)
    first_usdt: dict[str, datetime] = {}
    for r in traffic.transfers:
        if r["asset"] == "USDT" and r["from"] == "0xhot":
            first_usdt.setdefault(r["to"], datetime.fromisoformat(r["ts"]))
    waits = [(first_usdt[r["to"]] - datetime.fromisoformat(r["ts"])).total_seconds() for r in gas]
    assert all(59 <= wait <= 5400 for wait in waits)
    # About half the new receivers; each with its approval.
    assert 0.4 < len(gas) / len(first_usdt) < 0.6
    approved = {(a["to"], a["amount"]) for a in traffic.ledger if a["asset"] == "ETH"}
    assert all((r["to"], r["amount"]) in approved for r in gas)


def test_other_exchanges_shared_deposit_addresses_take_their_share_of_withdrawals() -> None:
    spec = replace(HOT, balance=Decimal(10**6), shared_share=0.3)
    traffic = generate_traffic([spec], START, days=2, seed=5)
    paid = Counter(r["to"] for r in traffic.transfers if r["from"] == "HOT" and r["to"] != "COLD")
    shared = {to: n for to, n in paid.items() if "DEPOSIT" in to}
    assert len(shared) == 4
    assert 0.25 < sum(shared.values()) / sum(paid.values()) < 0.35
    assert 0.4 < max(shared.values()) / sum(shared.values()) < 0.6  # the first takes half
    # Without it, no address is paid more than a handful of times.
    plain = generate_traffic([replace(spec, shared_share=0.0)], START, days=2, seed=5)
    assert max(Counter(r["to"] for r in plain.transfers if r["from"] == "HOT").values()) < 10
    assert min(shared.values()) > 40


def test_the_busiest_shared_deposit_address_can_move_to_a_new_one() -> None:
    spec = replace(HOT, balance=Decimal(10**6), shared_share=0.3, shared_moved_s=86400)
    traffic = generate_traffic([spec], START, days=2, seed=5)
    moved_at = (START + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = [r["ts"] for r in traffic.transfers if r["to"] == "HOTDEPOSIT0"]
    new = [r["ts"] for r in traffic.transfers if r["to"] == "HOTDEPOSITMOVED"]
    assert len(old) > 50
    assert len(new) > 50
    assert max(old) < moved_at <= min(new)


def test_whales_may_test_a_fresh_address_before_paying_it() -> None:
    spec = replace(HOT, balance=Decimal(10**8), whales_per_week=70.0, whale_test_share=1.0)
    traffic = generate_traffic([spec], START, days=3, seed=5)
    paid: dict[str, list[tuple[datetime, int]]] = {}
    for r in traffic.transfers:
        if r["from"] == "HOT" and r["to"] != "COLD":
            paid.setdefault(r["to"], []).append((datetime.fromisoformat(r["ts"]), int(r["amount"])))
    whales = [p for p in paid.values() if any(units >= 5 * 10**5 for _, units in p)]
    tested = [p for p in whales if len(p) == 2 and p[0][1] <= 10**4]
    assert len(tested) >= 5  # about half the whales' payments go to fresh addresses
    for (test_at, _), (paid_at, _) in tested:
        assert 120 <= (paid_at - test_at).total_seconds() <= 1800
