"""Synthetic exchange traffic in the backtest format, and the Coincheck drain laid over it.

Per hot wallet, over N days: customer withdrawals to mostly fresh addresses (log-normal sizes of
about 0.01-0.5% of the wallet's working balance) on a daily cycle, customer deposits in, treasury
top-ups from the exchange's listed cold wallet when the balance runs low and sweeps back to it when
it runs high, a market maker that regularly withdraws 3-5% to the same address, and optionally a
panic day with a withdrawal surge. Every withdrawal has an approval in the ledger seconds to
minutes before it. Deterministic for a given seed.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from detectors.base import format_units, to_units

__all__ = [
    "INCIDENT_PATH",
    "CoincheckScenario",
    "HotWalletSpec",
    "Traffic",
    "coincheck_incident",
    "coincheck_scenario",
    "config_toml",
    "generate_traffic",
    "write_jsonl",
]

INCIDENT_PATH = Path(__file__).parents[2].parent / "shared" / "incidents" / "coincheck-2018.json"

Row = dict[str, Any]


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
    address_prefix: str = ""
    usd_price: Decimal | None = Decimal("1")
    stop_at: datetime | None = None
    """No traffic for this wallet from this time on (the wallet was drained)."""


@dataclass
class Traffic:
    """Generated lines, each list in time order."""

    transfers: list[Row] = field(default_factory=list)
    ledger: list[Row] = field(default_factory=list)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _arrivals(
    rng: random.Random, per_day: float, days: float, rate: Any, peak: float
) -> list[float]:
    """Times (s) of a Poisson process with rate ``per_day * rate(t)``, by thinning."""
    top = per_day * peak / 86400
    out: list[float] = []
    t = 0.0
    end = days * 86400
    while True:
        t += rng.expovariate(top)
        if t >= end:
            return out
        if rng.random() * peak < rate(t):
            out.append(t)


def _daily_cycle(t: float) -> float:
    """Busiest around 13:00 UTC, quietest around 01:00 UTC."""
    return 1.0 + 0.7 * math.sin(2 * math.pi * ((t / 3600) - 7) / 24)


def _share(rng: random.Random, median: float, low: float, high: float) -> float:
    return min(high, max(low, rng.lognormvariate(math.log(median), 0.9)))


def _hexhash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _address(rng: random.Random, spec: HotWalletSpec) -> str:
    if spec.address.startswith("0x"):
        return f"0x{rng.getrandbits(160):040x}"
    return f"{spec.address_prefix}{rng.getrandbits(160):040X}"


def generate_traffic(
    wallets: Sequence[HotWalletSpec],
    start: datetime,
    days: float,
    seed: int = 0,
    panic_day: int | None = None,
) -> Traffic:
    """Simulate ``days`` of ordinary traffic for each hot wallet from ``start``."""
    traffic = Traffic()
    for index, spec in enumerate(wallets):
        _simulate(spec, start, days, random.Random(f"{seed}:{index}"), panic_day, traffic)
    traffic.transfers.sort(key=lambda row: row["ts"])
    traffic.ledger.sort(key=lambda row: row["ts"])
    return traffic


def _simulate(
    spec: HotWalletSpec,
    start: datetime,
    days: float,
    rng: random.Random,
    panic_day: int | None,
    traffic: Traffic,
) -> None:
    scale = 10**spec.decimals
    target = int(spec.balance * scale)
    balance = target
    market_maker = spec.market_maker or f"{spec.address[:6]}MARKETMAKER"

    def panic(t: float) -> bool:
        return panic_day is not None and panic_day * 86400 + 8 * 3600 <= t < (
            panic_day * 86400 + 16 * 3600
        )

    def withdraw_rate(t: float) -> float:
        return _daily_cycle(t) * (4.0 if panic(t) else 1.0)

    def deposit_rate(t: float) -> float:
        return _daily_cycle(t) * (0.5 if panic(t) else 1.0)

    events: list[tuple[float, str]] = []
    events += [
        (t, "withdraw")
        for t in _arrivals(rng, spec.withdrawals_per_day, days, withdraw_rate, 1.7 * 4)
    ]
    events += [
        (t, "deposit") for t in _arrivals(rng, spec.deposits_per_day, days, deposit_rate, 1.7)
    ]
    events += [(float(t), "treasury") for t in range(900, int(days * 86400), 900)]
    t = rng.uniform(0.2, 0.4) * 86400
    while t < days * 86400:
        events.append((t, "market_maker"))
        t += spec.market_maker_every_h * 3600 * rng.uniform(0.75, 1.3)
    events.sort()

    customers: list[str] = []
    withdrawal_no = 0
    stop = (spec.stop_at - start).total_seconds() if spec.stop_at else math.inf

    def emit(t: float, sender: str, receiver: str, units: int) -> str:
        tx_hash = _hexhash(rng)
        row: Row = {
            "ts": _iso(start + timedelta(seconds=int(t))),
            "chain": spec.chain,
            "asset": spec.asset,
            "tx_hash": tx_hash,
            "from": sender,
            "to": receiver,
            "amount": format_units(units, spec.decimals),
        }
        if spec.usd_price is not None:
            row["usd_value"] = round(float(Decimal(units) / scale * spec.usd_price), 2)
        traffic.transfers.append(row)
        return tx_hash

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

    for t, kind in events:
        if t >= stop:
            break
        if kind == "withdraw":
            boost = 1.3 if panic(t) else 1.0
            units = int(target * _share(rng, 0.0005 * boost, 0.0001, 0.005))
            if units > balance * 0.9 or units <= 0:
                continue  # the exchange queues it until the next top-up
            if customers and rng.random() < 0.2:
                receiver = rng.choice(customers)
            else:
                receiver = _address(rng, spec)
                customers.append(receiver)
            approve(t, receiver, units)
            emit(t, spec.address, receiver, units)
            balance -= units
        elif kind == "deposit":
            units = int(target * _share(rng, 0.0006, 0.0001, 0.006))
            emit(t, _address(rng, spec), spec.address, units)
            balance += units
        elif kind == "market_maker":
            units = int(target * rng.uniform(0.03, 0.05))
            if units > balance * 0.9:
                continue
            approve(t, market_maker, units)
            emit(t, spec.address, market_maker, units)
            balance -= units
        elif balance < target * 0.6:
            emit(t, spec.cold_address, spec.address, target - balance)
            balance = target
        elif balance > target * 1.4:
            emit(t, spec.address, spec.cold_address, balance - target)
            balance = target


def write_jsonl(path: Path, rows: Iterable[Row]) -> Path:
    """Write one JSON object per line."""
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    return path


def config_toml(wallets: Sequence[HotWalletSpec]) -> str:
    """A drainwatch.toml listing each hot wallet (with its opening balance) and its cold wallet."""
    parts: list[str] = []
    for spec in wallets:
        parts.append(
            f'[[wallets]]\nchain = "{spec.chain}"\naddress = "{spec.address}"\n'
            f'asset = "{spec.asset}"\nlabel = "{spec.label}"\nrole = "hot"\n'
            f'opening_balance = "{spec.balance}"\n'
        )
        parts.append(
            f'[[wallets]]\nchain = "{spec.chain}"\naddress = "{spec.cold_address}"\n'
            f'asset = "{spec.asset}"\nlabel = "{spec.label}-cold"\nrole = "cold"\n'
            f'opening_balance = "{spec.balance * 20}"\n'
        )
    return "\n".join(parts)


def coincheck_incident() -> dict[str, Any]:
    """The public Coincheck example; a clear error when the shared file is missing."""
    if not INCIDENT_PATH.is_file():
        raise FileNotFoundError(
            f"the Coincheck incident file is missing: {INCIDENT_PATH} "
            "(it lives in ../shared/incidents/ next to the repository)"
        )
    data: dict[str, Any] = json.loads(INCIDENT_PATH.read_text(encoding="utf-8"))["incident"]
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


def coincheck_scenario(directory: Path, days: int = 14, seed: int = 2018) -> CoincheckScenario:
    """Write the Coincheck transfers after ``days`` of traffic on its hot wallet (and an ETH one).

    The incident rows have no tx hash (none was published), so the backtest derives pseudo-hashes.
    """
    incident = coincheck_incident()
    drain = sorted(incident["transfers"], key=lambda row: row["ts_utc"])
    hot = incident["source_wallets"][0]["address"]
    incident_start = datetime.fromisoformat(drain[0]["ts_utc"])
    first_big = min(
        datetime.fromisoformat(r["ts_utc"]) for r in drain if Decimal(str(r["amount"])) >= 10**8
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
    drain_rows: list[Row] = [
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
