"""Synthetic exchange traffic in the backtest format, with drains laid over it.

Per hot wallet, over N days: customer withdrawals (log-normal sizes of about 0.01-0.5% of the
working balance, a daily and a weekly cycle, a fifth to returning customers, the rest to addresses
never paid before: new customers every day), whales (a few a week, 0.5-3% each, half of them to a
fresh address), customer deposits, treasury top-ups from the exchange's listed cold wallet when the
balance runs low and sweeps back to it when it runs high, a market maker that regularly withdraws
3-6% to its usual address, and panic days with a 3-6x withdrawal surge of somewhat larger sizes.
Withdrawals may be sent in payout batches (``payout_cycle_s``) instead of one by one.
Harder options: customer sizes capped higher (``customer_cap``), whale sizes log-normal up to
10% (``whale_tail``).
Every withdrawal has an approval in the ledger seconds to minutes before it. A :class:`DrainSpec`
lays a drain over one wallet's traffic: its transfers are taken from the simulated balance, so
treasury top-ups keep refilling a wallet that is being drained, as they would. Deterministic for a
given seed.

>>> from datetime import UTC, datetime
>>> spec = HotWalletSpec(chain="nem", asset="XEM", address="NHOT", cold_address="NCOLD",
...                      label="nem-hot", balance=Decimal("1000000"), decimals=6)
>>> a = generate_traffic([spec], datetime(2018, 1, 1, tzinfo=UTC), days=1, seed=3)
>>> b = generate_traffic([spec], datetime(2018, 1, 1, tzinfo=UTC), days=1, seed=3)
>>> a == b and len(a.transfers) > 1000 and a.transfers == sorted(a.transfers, key=lambda r: r["ts"])
True
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson

from detectors.base import format_units, to_units

__all__ = [
    "INCIDENT_PATH",
    "CoincheckScenario",
    "DrainSpec",
    "HotWalletSpec",
    "Row",
    "Traffic",
    "coincheck_incident",
    "coincheck_scenario",
    "config_toml",
    "evm_hot_wallets",
    "generate_traffic",
    "write_jsonl",
]

INCIDENT_PATH = Path(__file__).resolve().parents[2] / "shared" / "incidents" / "coincheck-2018.json"

Row = dict[str, Any]

DrainKind = Literal[
    "burst", "fresh_fanout", "slow_bleed", "single", "test_then_drain", "ordinary_sized"
]


@dataclass(frozen=True)
class DrainSpec:
    """A drain of one wallet, starting ``start_s`` seconds after the traffic starts.

    ``kind``: ``single`` (one transfer of ``share``), ``test_then_drain`` (a tiny test, then
    ``count`` transfers of ``share`` to the same address), ``burst`` (``count`` transfers of
    ``share`` to one address, ``every_s`` apart), ``fresh_fanout`` (each to a fresh address),
    ``slow_bleed`` (to one address, slowly), ``ordinary_sized`` (customer-sized transfers to fresh
    addresses at many times the usual rate). ``share`` is of the balance at that moment.

    ``warmed_days``: the thief withdrew a customer-sized sum (0.05% of the working balance) to its
    address this many days before, as a customer of the exchange, so that the address is not
    fresh when the drain starts (0: no such withdrawal).
    """

    start_s: float
    kind: DrainKind
    share: float
    count: int = 1
    every_s: float = 60.0
    thief: str | None = None
    warmed_days: float = 0.0


@dataclass(frozen=True)
class HotWalletSpec:
    """One hot wallet to simulate, with its cold wallet and its habits."""

    chain: str
    asset: str
    address: str
    cold_address: str
    label: str
    balance: Decimal
    """Working balance in asset units; also the opening balance."""
    decimals: int
    """Precision of generated amounts."""
    withdrawals_per_day: float = 800
    deposits_per_day: float = 600
    market_maker: str | None = None
    """Address of the market maker; None: derived from the wallet address."""
    market_maker_every_h: float = 36
    market_maker_share: tuple[float, float] = (0.03, 0.05)
    whales_per_week: float = 3.0
    customer_cap: float = 0.005
    """The largest customer withdrawal, a share of the working balance (sizes are log-normal)."""
    whale_tail: bool = False
    """Whale sizes log-normal around 1% (up to 10%) instead of uniform over 0.5-3%."""
    address_prefix: str = ""
    usd_price: Decimal | None = Decimal("1")
    stop_at: datetime | None = None
    """No traffic for this wallet from this time on (the wallet was drained)."""
    drains: tuple[DrainSpec, ...] = ()
    surge_multiplier: float = 4.0
    payout_cycle_s: float = 0.0
    """Withdrawals (customers', whales', the market maker's) are sent in batches at each
    multiple of this many seconds, within ``payout_spread_s``, as exchanges that pay out in
    cycles do (0: each as soon as it is asked for). Drains are not batched."""
    payout_spread_s: float = 60.0
    approve_when_asked: bool = False
    """The ledger approves each withdrawal when it is asked for, not just before it is sent: with
    ``payout_cycle_s``, up to a cycle before its payout."""
    withdrawal_fee_share: float = 0.0
    """A fixed withdrawal fee, as a share of the working balance, taken from each payment: the
    ledger approves the amount asked for, the transfer pays it less the fee."""
    gas_share: float = 0.0
    """The share of this asset's withdrawals to an address it never paid before (customers' and
    whales') that a withdrawal of ``gas_asset`` from the same address to the same receiver comes
    1-90 minutes before: a customer moving a token to a new wallet of their own first takes a
    little of the chain's coin ($5-100) to pay its fees. ``gas_asset`` must be another listed
    wallet entry of this address, simulated in the same run."""
    gas_asset: str = "ETH"
    shared_share: float = 0.0
    """The share of customers' and whales' withdrawals that go to other exchanges' shared deposit
    addresses (four, the first taking half of them), as on chains where a deposit is told apart
    by a memo or destination tag (XRP, XLM, EOS, TON, ...): a few addresses take many payments a
    day each, and a panic's share of them together."""
    whale_test_share: float = 0.0
    """The share of whales' payments to a fresh address that a test payment to it (0.001-0.01%
    of the working balance) comes 2-30 minutes before, as people moving a large sum check the
    address first."""
    shared_moved_s: float | None = None
    """From this many seconds after the traffic starts, the busiest shared deposit address is
    another, never paid before (its exchange moved its deposits to a new address)."""


@dataclass
class Traffic:
    """Generated lines, each list in time order, and which transfers were malicious."""

    transfers: list[Row] = field(default_factory=list)
    ledger: list[Row] = field(default_factory=list)
    malicious: list[Row] = field(default_factory=list)
    """The drain transfers (also in ``transfers``)."""


_SHARED_WEIGHTS = (0.5, 0.25, 0.15, 0.1)
"""How ``shared_share``'s payments spread over the shared deposit addresses."""


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _arrivals(
    rng: random.Random, per_day: float, days: float, rate: Callable[[float], float], *, peak: float
) -> list[float]:
    """Times (s) of a Poisson process with rate ``per_day * rate(t)``, by thinning (none at 0)."""
    top = per_day * peak / 86400
    out: list[float] = []
    if top <= 0:
        return out
    t = 0.0
    end = days * 86400
    while True:
        t += rng.expovariate(top)
        if t >= end:
            return out
        if rng.random() * peak < rate(t):
            out.append(t)


def _daily_cycle(t: float) -> float:
    """Busiest around 13:00 UTC, quietest around 01:00 UTC; weekends at 70%."""
    weekend = 0.7 if int(t // 86400) % 7 in (5, 6) else 1.0
    return weekend * (1.0 + 0.7 * math.sin(2 * math.pi * ((t / 3600) - 7) / 24))


def _share(rng: random.Random, median: float, low: float, high: float) -> float:
    return min(high, max(low, rng.lognormvariate(math.log(median), 0.9)))


def _hexhash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _address(rng: random.Random, spec: HotWalletSpec) -> str:
    if spec.address.startswith("0x"):
        return f"0x{rng.getrandbits(160):040x}"
    return f"{spec.address_prefix}{rng.getrandbits(160):040X}"


def evm_hot_wallets(count: int, *, cold_offset: int = 100_000) -> list[HotWalletSpec]:
    """``count`` Ethereum hot wallets of 20,000 ETH (18 decimals) with the default habits.

    Hot wallet ``i`` is ``0x…(i + 1)``, its cold wallet ``0x…(i + cold_offset)``.

    >>> [(w.label, w.address[-3:], w.cold_address[-3:]) for w in evm_hot_wallets(2, cold_offset=9)]
    [('hot-0', '001', '009'), ('hot-1', '002', '00a')]
    """
    return [
        HotWalletSpec(
            chain="ethereum",
            asset="ETH",
            address=f"0x{i + 1:040x}",
            cold_address=f"0x{i + cold_offset:040x}",
            label=f"hot-{i}",
            balance=Decimal("20000"),
            decimals=18,
        )
        for i in range(count)
    ]


def generate_traffic(
    wallets: Sequence[HotWalletSpec],
    start: datetime,
    days: float,
    seed: int = 0,
    *,
    panic_day: int | None = None,
    panic_days: Sequence[int] = (),
) -> Traffic:
    """Simulate ``days`` of ordinary traffic (and any drains) for each hot wallet from ``start``.

    Panic days (``panic_day`` and ``panic_days``) hit every wallet at once, as market panics do.
    """
    traffic = Traffic()
    panics = tuple(sorted({*panic_days, *(() if panic_day is None else (panic_day,))}))
    gas: list[tuple[float, HotWalletSpec, str]] = []
    for index, spec in enumerate(wallets):
        # A simulation, not cryptography: a seeded, reproducible generator is the point.
        rng = random.Random(f"{seed}:{index}")  # noqa: S311
        # Its own numbers for the habits that are off by default (gas_share, shared_share), so
        # that traffic without them is drawn as it always was.
        side = random.Random(f"{seed}:{index}:gas")  # noqa: S311
        _simulate(spec, start, days, rng, panics=panics, traffic=traffic, side=side, gas=gas)
    _pay_gas(wallets, start, random.Random(f"{seed}:gas"), gas, traffic)  # noqa: S311
    traffic.transfers.sort(key=lambda row: row["ts"])
    traffic.ledger.sort(key=lambda row: row["ts"])
    return traffic


def _simulate(  # noqa: PLR0915 - one event loop reads best as one function
    spec: HotWalletSpec,
    start: datetime,
    days: float,
    rng: random.Random,
    *,
    panics: tuple[int, ...],
    traffic: Traffic,
    side: random.Random,
    gas: list[tuple[float, HotWalletSpec, str]],
) -> None:
    scale = 10**spec.decimals
    target = int(spec.balance * scale)
    balance = target
    market_maker = spec.market_maker or f"{spec.address[:6]}MARKETMAKER"
    whales = [_address(rng, spec) for _ in range(4)]
    surge = spec.surge_multiplier

    def panic(t: float) -> bool:
        day, second = divmod(t, 86400)
        return int(day) in panics and 8 * 3600 <= second < 16 * 3600

    def withdraw_rate(t: float) -> float:
        return _daily_cycle(t) * (surge if panic(t) else 1.0)

    def deposit_rate(t: float) -> float:
        return _daily_cycle(t) * (0.5 if panic(t) else 1.0)

    events: list[tuple[float, str, int]] = []
    events += [
        (t, "withdraw", 0)
        for t in _arrivals(rng, spec.withdrawals_per_day, days, withdraw_rate, peak=1.7 * surge)
    ]
    events += [
        (t, "deposit", 0)
        for t in _arrivals(rng, spec.deposits_per_day, days, deposit_rate, peak=1.7)
    ]
    events += [
        (t, "whale", 0) for t in _arrivals(rng, spec.whales_per_week / 7, days, _one, peak=1.0)
    ]
    events += [(float(t), "treasury", 0) for t in range(900, int(days * 86400), 900)]
    t = rng.uniform(0.2, 0.4) * 86400
    while t < days * 86400:
        events.append((t, "market_maker", 0))
        t += spec.market_maker_every_h * 3600 * rng.uniform(0.75, 1.3)
    for number, drain in enumerate(spec.drains):
        steps = drain.count + (1 if drain.kind == "test_then_drain" else 0)
        for step in range(steps):
            jitter = rng.uniform(0.7, 1.3) if drain.kind != "single" else 1.0
            events.append((drain.start_s + step * drain.every_s * jitter, f"drain{number}", step))
        if drain.warmed_days > 0:
            events.append((drain.start_s - drain.warmed_days * 86400, f"warm{number}", 0))
    events.sort()

    customers: list[str] = []
    withdrawal_no = 0
    stop = (spec.stop_at - start).total_seconds() if spec.stop_at else math.inf
    cycle = spec.payout_cycle_s

    def emit(t: float, sender: str, receiver: str, units: int) -> Row:
        row: Row = {
            "ts": _iso(start + timedelta(seconds=int(t))),
            "chain": spec.chain,
            "asset": spec.asset,
            "tx_hash": _hexhash(rng),
            "from": sender,
            "to": receiver,
            "amount": format_units(units, spec.decimals),
        }
        if spec.usd_price is not None:
            row["usd_value"] = round(float(Decimal(units) / scale * spec.usd_price), 2)
        traffic.transfers.append(row)
        return row

    def approve(t: float, receiver: str, units: int) -> None:
        nonlocal withdrawal_no
        withdrawal_no += 1
        traffic.ledger.append(
            {
                "ts": _iso(start + timedelta(seconds=int(t - rng.uniform(5, 240)))),
                "chain": spec.chain,
                "asset": spec.asset,
                "to": receiver,
                "amount": format_units(units, spec.decimals),
                "withdrawal_id": f"{spec.label}-{withdrawal_no}",
            }
        )

    fee = int(target * spec.withdrawal_fee_share)
    paid: set[str] = set()  # receivers already paid, with gas_share

    def pay_out(t: float, receiver: str, units: int) -> int:
        """An approved withdrawal asked for at ``t``: sent at once, or in the next batch, less
        the fee; returns the units sent."""
        if spec.approve_when_asked:
            approve(t, receiver, units)
        if cycle > 0:
            t = (t // cycle + 1) * cycle + rng.uniform(0, spec.payout_spread_s)
        if not spec.approve_when_asked:
            approve(t, receiver, units)
        sent = max(units - fee, 1) if fee else units
        emit(t, spec.address, receiver, sent)
        if spec.gas_share > 0 and receiver not in paid:
            paid.add(receiver)
            if side.random() < spec.gas_share:
                gas.append((t, spec, receiver))
        return sent

    def shared(t: float) -> str:
        i = side.choices(range(len(_SHARED_WEIGHTS)), _SHARED_WEIGHTS)[0]
        moved = spec.shared_moved_s is not None and i == 0 and t >= spec.shared_moved_s
        return f"{spec.address[:8]}DEPOSIT{'MOVED' if moved else i}"

    def customer(t: float) -> str:
        if spec.shared_share > 0 and side.random() < spec.shared_share:
            return shared(t)
        if customers and rng.random() < 0.2:
            return rng.choice(customers)
        receiver = _address(rng, spec)
        customers.append(receiver)
        return receiver

    thieves = {
        number: drain.thief or _address(rng, spec) for number, drain in enumerate(spec.drains)
    }
    for t, kind, step in events:
        if t >= stop:
            break
        if kind.startswith("drain"):
            drain = spec.drains[int(kind[5:])]
            share = drain.share
            receiver = thieves[int(kind[5:])]
            if drain.kind == "test_then_drain" and step == 0:
                share = 0.00002
            elif drain.kind in ("fresh_fanout", "ordinary_sized"):
                receiver = _address(rng, spec)
            if drain.kind == "ordinary_sized":
                units = int(target * _share(rng, share, share / 4, share * 4))
            else:
                units = int(balance * share * rng.uniform(0.9, 1.1))
            units = min(units, balance)
            if units > 0:
                traffic.malicious.append(emit(t, spec.address, receiver, units))
                balance -= units
        elif kind.startswith("warm"):
            # The thief's own withdrawal as a customer: approved and ordinary, not malicious.
            receiver = thieves[int(kind[4:])]
            units = target // 2000
            balance -= pay_out(t, receiver, units)
        elif kind == "withdraw":
            boost = 1.3 if panic(t) else 1.0
            units = int(target * _share(rng, 0.0005 * boost, 0.0001, spec.customer_cap))
            if units > balance * 0.9 or units <= 0:
                continue  # the exchange queues it until the next top-up
            receiver = customer(t)
            balance -= pay_out(t, receiver, units)
        elif kind == "whale":
            share = _share(rng, 0.01, 0.005, 0.1) if spec.whale_tail else rng.uniform(0.005, 0.03)
            units = int(target * share)
            if units > balance * 0.9:
                continue
            fresh = rng.random() >= 0.5
            receiver = _address(rng, spec) if fresh else rng.choice(whales)
            if spec.shared_share > 0 and side.random() < spec.shared_share:
                receiver = shared(t)
            elif fresh and spec.whale_test_share > 0 and side.random() < spec.whale_test_share:
                test = int(target * side.uniform(0.00001, 0.0001))
                balance -= pay_out(t - side.uniform(120, 1800), receiver, test)
            balance -= pay_out(t, receiver, units)
        elif kind == "deposit":
            units = int(target * _share(rng, 0.0006, 0.0001, 0.006))
            emit(t, _address(rng, spec), spec.address, units)
            balance += units
        elif kind == "market_maker":
            units = int(target * rng.uniform(*spec.market_maker_share))
            if units > balance * 0.9:
                continue
            balance -= pay_out(t, market_maker, units)
        elif balance < target * 0.6:
            emit(t, spec.cold_address, spec.address, target - balance)
            balance = target
        elif balance > target * 1.4:
            emit(t, spec.address, spec.cold_address, balance - target)
            balance = target


def _one(t: float) -> float:
    return 1.0


def _pay_gas(
    wallets: Sequence[HotWalletSpec],
    start: datetime,
    rng: random.Random,
    requests: list[tuple[float, HotWalletSpec, str]],
    traffic: Traffic,
) -> None:
    """Each of ``requests`` (a withdrawal at ``t`` from a wallet entry to a new receiver): a
    withdrawal of the entry's ``gas_asset`` worth $5-100 to that receiver from the same address,
    1-90 minutes before, approved in the ledger as every withdrawal is. Too small to matter to the
    coin's simulated balance, which does not see it."""
    coins = {(w.chain, w.address, w.asset): w for w in wallets}
    for number, (t, spec, receiver) in enumerate(requests):
        coin = coins.get((spec.chain, spec.address, spec.gas_asset))
        if coin is None or coin.usd_price is None:
            raise ValueError(f"{spec.label}: no priced {spec.gas_asset} entry of its address")
        at = max(t - rng.uniform(60, 5400), 0)
        usd = Decimal(str(round(rng.uniform(5, 100), 2)))
        units = int(usd / coin.usd_price * 10**coin.decimals)
        amount = format_units(units, coin.decimals)
        moment = start + timedelta(seconds=int(at))
        traffic.transfers.append(
            {
                "ts": _iso(moment),
                "chain": coin.chain,
                "asset": coin.asset,
                "tx_hash": _hexhash(rng),
                "from": coin.address,
                "to": receiver,
                "amount": amount,
                "usd_value": float(usd),
            }
        )
        traffic.ledger.append(
            {
                "ts": _iso(moment - timedelta(seconds=int(rng.uniform(5, 240)))),
                "chain": coin.chain,
                "asset": coin.asset,
                "to": receiver,
                "amount": amount,
                "withdrawal_id": f"{coin.label}-gas-{number + 1}",
            }
        )


def write_jsonl(path: Path, rows: Iterable[Row]) -> Path:
    """Write one JSON object per line."""
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    return path


def config_toml(
    wallets: Sequence[HotWalletSpec], opening_balance: bool = True, *, cold_wallets: bool = True
) -> str:
    """A drainwatch.toml listing each hot wallet and its cold wallet (cold wallets once per
    asset; specs of one address with different assets list that wallet once per asset).

    ``cold_wallets=False`` leaves the cold wallets out: an exchange that listed only the wallets
    it watches, whose sweeps then go to an address the config does not name.
    """
    parts: list[str] = []
    colds: set[tuple[str, str, str]] = set()
    for spec in wallets:
        opening = f'opening_balance = "{spec.balance}"\n' if opening_balance else ""
        parts.append(
            f'[[wallets]]\nchain = "{spec.chain}"\naddress = "{spec.address}"\n'
            f'asset = "{spec.asset}"\nlabel = "{spec.label}"\nrole = "hot"\n{opening}'
        )
        if not cold_wallets or (spec.chain, spec.cold_address, spec.asset) in colds:
            continue
        colds.add((spec.chain, spec.cold_address, spec.asset))
        cold_opening = f'opening_balance = "{spec.balance * 20}"\n' if opening_balance else ""
        parts.append(
            f'[[wallets]]\nchain = "{spec.chain}"\naddress = "{spec.cold_address}"\n'
            f'asset = "{spec.asset}"\nlabel = "{spec.label}-cold"\nrole = "cold"\n{cold_opening}'
        )
    return "\n".join(parts)


def coincheck_incident(path: Path = INCIDENT_PATH) -> dict[str, Any]:
    """The public Coincheck example; a clear error when the shared file is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"the Coincheck incident file is missing: {path} "
            "(it lives in ../shared/incidents/ next to the repository)"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["incident"]
    return data


@dataclass(frozen=True)
class CoincheckScenario:
    """Files and landmarks of the Coincheck drain over two weeks of traffic."""

    config_path: Path
    transfers_path: Path
    ledger_path: Path
    hot_wallet: str
    history_start: datetime
    incident_start: datetime
    first_big_transfer: datetime
    drain_rows: list[Row]


def coincheck_rows(incident: dict[str, Any]) -> list[Row]:
    """The incident's transfers as backtest lines (no tx hash was published: none is invented)."""
    drain = sorted(incident["transfers"], key=lambda row: row["ts_utc"])
    return [
        {
            "ts": r["ts_utc"],
            "chain": "nem",
            "asset": r["asset"],
            "tx_hash": r["tx_hash"],
            "from": r["from"],
            "to": r["to"],
            "amount": format_units(*to_units(Decimal(str(r["amount"])))),
        }
        for r in drain
    ]


def coincheck_scenario(directory: Path, days: int = 14, seed: int = 2018) -> CoincheckScenario:
    """Write the Coincheck transfers after ``days`` of traffic on its hot wallet (and an ETH one).

    The incident rows have no tx hash (none was published), so the backtest derives pseudo-hashes.
    """
    incident = coincheck_incident()
    drain_rows = coincheck_rows(incident)
    hot = incident["source_wallets"][0]["address"]
    incident_start = datetime.fromisoformat(drain_rows[0]["ts"])
    first_big = min(
        datetime.fromisoformat(r["ts"]) for r in drain_rows if Decimal(r["amount"]) >= 10**8
    )
    history_start = incident_start - timedelta(days=days)
    balance = Decimal(str(incident["pre_drain_balance"]["lower_bound"]))
    nem = HotWalletSpec(
        chain="nem",
        asset="XEM",
        address=hot,
        cold_address="NCOLDCOINCHECKEXAMPLEXXXXXXXXXXXXXXXXXXX",
        label="nem-hot",
        balance=balance,
        decimals=6,
        address_prefix="N",
        stop_at=incident_start,
    )
    eth = HotWalletSpec(
        chain="ethereum",
        asset="ETH",
        address="0x" + "e7" * 20,
        cold_address="0x" + "c0" * 20,
        label="eth-hot",
        balance=Decimal("20000"),
        decimals=18,
        usd_price=Decimal("1050.25"),
    )
    traffic = generate_traffic([nem, eth], history_start, days=days + 1, seed=seed, panic_day=10)
    rows = sorted(traffic.transfers + drain_rows, key=lambda row: row["ts"])
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "drainwatch.toml"
    config_path.write_text(config_toml([nem, eth]), encoding="utf-8")
    return CoincheckScenario(
        config_path=config_path,
        transfers_path=write_jsonl(directory / "transfers.jsonl", rows),
        ledger_path=write_jsonl(directory / "ledger.jsonl", traffic.ledger),
        hot_wallet=hot,
        history_start=history_start,
        incident_start=incident_start,
        first_big_transfer=first_big,
        drain_rows=drain_rows,
    )
