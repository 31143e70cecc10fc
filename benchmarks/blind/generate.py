"""Blind replay kit: exchange hot-wallet traffic with real-drain-shaped incidents laid over it.

Writes DIR/drainwatch.toml, DIR/transfers.jsonl, DIR/ledger.jsonl and DIR/truth.json (see
README.md next to this file). Written without reading how drainwatch detects anything.

    python benchmarks/blind/generate.py --out DIR [--seed N] [--days 28]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday, 00:00 UTC (09:00 JST)
DAY, HOUR, MIN = 86400, 3600, 60
HEX = "0123456789abcdef"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
XRP58 = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# asset, USD price at the start, amount quantum, daily volatility, withdrawal fee
ASSET_TABLE = """
ETH 3000 0.000001 0.035 0.0012 | BTC 60000 0.00000001 0.03 0.0002 | USDT 1 0.01 0 1
USDC 1 0.01 0 1 | TRX 0.12 0.000001 0.03 1 | SOL 150 0.0001 0.045 0.01 | XRP 0.6 0.000001 0.04 0.25
XEM 0.03 0.000001 0.05 1 | LTC 80 0.00000001 0.04 0.001 | BNB 600 0.00001 0.03 0.0005
"""
ASSETS = {
    row.split()[0]: tuple(Decimal(x) for x in row.split()[1:])
    for row in ASSET_TABLE.replace("\n", "|").split("|")
    if row.strip()
}

# hot address, chain, how deposits arrive (direct: memo chains; sweep: per-user deposit addresses
# swept one by one; consolidate: UTXO consolidation), days of outflow kept hot, market maker,
# seconds between withdrawal-processor runs, then asset:withdrawals a day:median USD:sigma
SPEC_TABLE = """
eth-hot-1  ethereum sweep       2.5 mm 60  ETH:420:350:1.6 USDT:520:500:1.5
eth-hot-2  ethereum sweep       3.0 mm 90  ETH:260:350:1.6 USDT:300:500:1.5 USDC:150:600:1.5
eth-hot-3  ethereum sweep       3.0 -  120 ETH:200:400:1.7
btc-hot-1  bitcoin  consolidate 2.5 mm 300 BTC:240:600:1.6
btc-hot-2  bitcoin  consolidate 3.0 mm 300 BTC:180:600:1.6
btc-hot-3  bitcoin  consolidate 3.0 -  240 BTC:150:700:1.7
tron-hot-1 tron     sweep       2.0 mm 30  USDT:900:300:1.4 TRX:120:80:1.3
sol-hot-1  solana   sweep       2.5 mm 20  SOL:350:250:1.5
sol-hot-2  solana   sweep       3.0 -  30  USDC:120:900:1.5 USDT:100:800:1.5
xrp-hot-1  xrp      direct      3.0 mm 15  XRP:260:300:1.5
nem-hot-1  nem      direct      5.0 -  60  XEM:45:150:1.4
ltc-hot-1  litecoin consolidate 5.0 -  300 LTC:90:200:1.4
bsc-hot-1  bsc      sweep       2.5 mm 30  BNB:300:200:1.5 USDT:400:400:1.5
"""

# id, day of the plan, UTC time of the first malicious transfer, seconds until the exchange halts
# the wallets (and moves what is left to cold), whether cold top-ups go on until then
INCIDENT_TABLE = """
kucoin-2020     15 18:49:18 5460   -
slow-bleed      14 07:13:09 0      topup
coincheck-2018  17 15:02:00 46200  -
bitpoint-2019   19 12:58:40 30000  -
upbit-2019      20 04:06:31 2400   -
coindcx-2025    22 21:07:12 15265  -
careful-thief   23 12:41:03 0      topup
phemex-2025     25 11:31:07 7200   -
zaif-2018       26 08:02:44 50400  topup
"""
MODELS = {
    "kucoin-2020": ("KuCoin, 2020-09-26", "ETH hot wallet emptied, one transfer per asset"),
    "slow-bleed": ("Mt. Gox hot wallet 2011-13 (WizSec)", "round 1-2.5% sums, ~3 a day, 10 days"),
    "coincheck-2018": ("Coincheck NEM, 2018-01-26", "test, drain in 19 min, tail of deposits"),
    "bitpoint-2019": ("Bitpoint XRP, 2019-07-11", "two big transfers, then a steady 8 h drain"),
    "upbit-2019": ("Upbit ETH, 2019-11-27", "one huge transfer"),
    "coindcx-2025": ("CoinDCX Solana, 2025-07-19", "1 USDT test, drain an hour later"),
    "careful-thief": ("Bitfinex 2016 / Mt. Gox", "1-2% to a fresh address every 2-9 min, 3.5 h"),
    "phemex-2025": ("Phemex, 2025-01-23", "hot wallets on 3 chains within minutes, biggest first"),
    "zaif-2018": ("Zaif BTC, 2018-09-14", "six large transfers over 2 h"),
}
COINCHECK = (  # offset from 15:02 UTC and XEM (coincheck-2018.json); the last 3 took what was left
    (0, 10), (120, 100_000_000), (195, 100_000_000), (270, 100_000_000), (345, 100_000_000),
    (420, 100_000_000), (480, 20_000_000), (1140, 3_000_000), (12780, 0), (16260, 0), (30240, 0),
)  # fmt: skip
Step = tuple[int, str, str, Decimal, str]  # offset s, wallet label, abs|base|frac, x, receiver


def rng_for(seed: int, *parts: str) -> random.Random:
    return random.Random(":".join((str(seed), *parts)))  # noqa: S311 - simulation, not crypto


def pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def new_address(rng: random.Random, chain: str) -> str:
    if chain in ("ethereum", "bsc"):
        return "0x" + pick(rng, HEX, 40)
    if chain in ("bitcoin", "litecoin"):
        return ("bc1q" if chain == "bitcoin" else "ltc1q") + pick(rng, BECH32, rng.choice((38, 58)))
    if chain == "tron":
        return "T" + pick(rng, B58, 33)
    if chain == "solana":
        return pick(rng, B58, rng.choice((43, 44)))
    if chain == "xrp":
        return "r" + pick(rng, XRP58, rng.randint(24, 33))
    return "N" + pick(rng, B32, 39)


def new_hash(rng: random.Random, chain: str) -> str:
    digest = f"{rng.getrandbits(256):064x}"
    if chain in ("ethereum", "bsc"):
        return "0x" + digest
    if chain == "solana":
        return pick(rng, B58, 88)
    return digest.upper() if chain == "xrp" else digest


def dec(x: float) -> Decimal:
    return Decimal(repr(x))


def round_sig(d: Decimal, digits: int) -> Decimal:
    if d <= 0:
        return Decimal(0)
    return d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 1), rounding=ROUND_DOWN)


def fmt(d: Decimal) -> str:
    s = format(d, "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def iso(t: float) -> str:
    return (START + timedelta(seconds=int(t))).strftime("%Y-%m-%dT%H:%M:%SZ")


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, rng.random(), math.exp(-lam)
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class Tx:
    t: int
    seq: int
    chain: str
    asset: str
    tx_hash: str
    frm: str
    to: str
    amount: Decimal
    usd: Decimal
    kind: str
    line: int = 0


@dataclass
class Incident:
    id: str
    t0: int
    halt: int  # absolute seconds
    treasury: bool
    steps: list[Step] = field(default_factory=list)
    record: list[tuple[Tx, str, Decimal]] = field(default_factory=list)


class World:
    """Market-wide state shared by every wallet: prices, activity, panic days, the output."""

    def __init__(
        self,
        seed: int,
        days: int,
        whale_withdrawals: float = 4,
        *,
        customer_tail: float = 0.01,
        sigma_scale: float = 1.0,
        mm_hours: tuple[float, float] = (6, 14),
    ) -> None:
        self.seed, self.days, self.end = seed, days, days * DAY
        self.whale_withdrawals, self.customer_tail = whale_withdrawals, customer_tail
        self.mm_hours, self.sigma_scale = mm_hours, sigma_scale
        rng = rng_for(seed, "world")
        self.panics = [
            (int(self.day(d) * DAY + h * HOUR), int(length * HOUR), peak)
            for d, h, length, peak in ((9, 13, 14, 5.0), (18, 1, 10, 4.0), (24, 14, 16, 6.0))
        ]
        x, self.daymult = 0.0, []
        for _ in range(days + 1):
            x = 0.6 * x + rng.gauss(0, 0.2)
            self.daymult.append(math.exp(x))
        self.prices: dict[str, list[Decimal]] = {}
        crash_days = {s // DAY + 1 for s, _, _ in self.panics}
        for asset, (p0, _, vol, _) in ASSETS.items():
            path, p = [], float(p0)
            for d in range(days + 1):
                path.append(dec(round(p, 6)))
                p *= math.exp(rng.gauss(0, float(vol)) - 0.1 * (vol > 0 and d + 1 in crash_days))
            self.prices[asset] = path
        self.txs: list[Tx] = []
        self.ledger: list[tuple[int, int, dict[str, str]]] = []
        self.seq = 0

    def day(self, d: float) -> float:
        """Place a day of the 28-day plan inside a run of another length."""
        return d if self.days == 28 else 7 + (d - 7) * (self.days - 7) / 21

    def panic(self, t: float) -> float:
        for start, length, peak in self.panics:
            if start <= t < start + length:
                x = (t - start) / length
                return 1 + (peak - 1) * min(1.0, x / 0.15) * (1 - x) ** 0.7
        return 1.0

    def factor(self, t: float, peak_hour: float = 13) -> float:
        diurnal = 1 + 0.55 * math.cos(2 * math.pi * ((t % DAY) / HOUR - peak_hour) / 24)
        weekend = 0.72 if (t // DAY) % 7 >= 5 else 1.0
        return diurnal * weekend * self.daymult[int(t // DAY)]

    def price(self, asset: str, t: float) -> Decimal:
        return self.prices[asset][int(t // DAY)]


class Sim:
    """One hot wallet entry (one address, one asset), run as a discrete-event simulation."""

    def __init__(self, world: World, label: str, row: list[str], asset: str, scale: float) -> None:
        self.world, self.label, self.rng = world, label, rng_for(world.seed, "wallet", label)
        self.chain, self.deposits, self.tick = row[1], row[2], int(row[5])
        self.mm_on, self.asset, self.address, self.cold = row[4] == "mm", asset, row[-2], row[-1]
        _, n_wd, median, sigma = asset_row(row, asset)
        self.n_wd, self.median = int(n_wd), float(median)
        self.sigma = float(sigma) * world.sigma_scale
        daily_usd = self.median * math.exp(self.sigma**2 / 2) * self.n_wd * 1.15
        self.target = round_sig(dec(float(row[3]) * daily_usd) / ASSETS[asset][0], 3)
        self.quantum, self.fee = ASSETS[asset][1], ASSETS[asset][3]
        self.opening = (self.target * dec(scale)).quantize(self.quantum)
        self.balance, self.n = self.opening, 0
        self.heap: list[tuple[int, int, str, Any]] = []
        self.queue: list[tuple[Decimal, str, str]] = []
        self.pending: list[tuple[Decimal, str]] = []
        self.topup_pending = self.halted = False
        self.pool: list[str] = []  # repeat customers
        self.whales = [new_address(self.rng, self.chain) for _ in range(3)]
        self.mm = new_address(self.rng, self.chain)
        self.windows: list[tuple[int, int, bool]] = []
        self.incidents: dict[str, Incident] = {}
        self.base: dict[str, Decimal] = {}

    def attach(self, inc: Incident) -> None:
        self.windows.append((inc.t0, inc.halt, inc.treasury))
        self.incidents[inc.id] = inc
        self.push(inc.halt, "halt")
        for step in (s for s in inc.steps if s[1] == self.label):
            self.push(inc.t0 + step[0], "mal", (inc.id, step))

    def push(self, t: float, kind: str, data: Any = None) -> None:
        self.n += 1
        heapq.heappush(self.heap, (int(t), self.n, kind, data))

    def customer_amount(self, t: float, median: float) -> Decimal:
        rng, price = self.rng, float(self.world.price(self.asset, t))
        usd = rng.lognormvariate(math.log(median), self.sigma)
        if rng.random() < self.world.customer_tail:
            usd *= 5 * rng.paretovariate(1.5)
        usd *= 1.3 if self.world.panic(t) > 1.5 else 1.0
        target_usd = float(self.target) * float(self.world.price(self.asset, 0))
        amount = dec(min(usd, 0.4 * target_usd) / price).quantize(self.quantum, ROUND_DOWN)
        if rng.random() < 0.45:  # people type round numbers; some get the fee taken off
            amount = round_sig(amount, rng.choice((1, 2)))
            if rng.random() < 0.3 and amount > 4 * self.fee:
                amount -= self.fee
        return max(amount, self.quantum * 100)

    def recipient(self) -> str:
        if self.pool and self.rng.random() < 0.28:
            return self.pool[int(len(self.pool) * self.rng.random() ** 2)]
        address = new_address(self.rng, self.chain)
        if self.rng.random() < 0.3:
            self.pool.append(address)
        return address

    def schedule(self) -> None:
        rng, world, tick = self.rng, self.world, self.tick
        for h in range(world.days * 24):
            mid = h * HOUR + 1800
            f_out = world.factor(mid) * world.panic(mid)
            for _ in range(poisson(rng, self.n_wd / 24 * f_out)):
                t = h * HOUR + rng.randrange(HOUR)
                t = (t // tick + 1) * tick + rng.randrange(min(20, tick // 2) + 1)
                self.push(t, "wd", (self.customer_amount(t, self.median), self.recipient(), "wd"))
            f_in = world.factor(mid, peak_hour=7) * (1 + (world.panic(mid) - 1) * 0.4)
            for _ in range(poisson(rng, self.n_wd * 0.8 / 24 * f_in)):
                t = h * HOUR + rng.randrange(HOUR)
                src = rng.choice(self.pool) if self.pool and rng.random() < 0.2 else ""
                src = src or new_address(rng, self.chain)
                self.push(t, "dep", (self.customer_amount(t, self.median * 1.25), src))
        every = {"sweep": (HOUR, 3 * HOUR), "consolidate": (2 * HOUR, 6 * HOUR)}
        if self.deposits in every:
            t = rng.uniform(0, HOUR)
            while t < world.end:
                self.push(t, "sweeprun")
                t += rng.uniform(*every[self.deposits])
        if self.mm_on:
            mm_lo, mm_hi = self.world.mm_hours
            self.repeat("mm_out", int(mm_lo * HOUR), int(mm_hi * HOUR))
            self.repeat("mm_in", 8 * HOUR, 16 * HOUR)
        for kind, per_month in (("whale_out", world.whale_withdrawals), ("whale_in", 3)):
            for _ in range(poisson(rng, per_month * world.days / 30)):
                self.push(rng.randrange(world.end), "big", kind)
        for t in range(0, world.end, 15 * MIN):
            self.push(t + rng.randrange(60), "check")

    def repeat(self, kind: str, lo: int, hi: int) -> None:
        t = self.rng.uniform(0, hi)
        while t < self.world.end:
            self.push(t, "big", kind)
            t += self.rng.uniform(lo, hi)

    def run(self) -> None:
        self.schedule()
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if t >= self.world.end:
                break
            if not self.halted:
                getattr(self, "on_" + kind)(t, data)

    def emit(self, t: int, frm: str, to: str, amount: Decimal, kind: str) -> Tx:
        world, chain = self.world, self.chain
        usd = (amount * world.price(self.asset, t)).quantize(Decimal("0.01"))
        tx = Tx(t, world.seq, chain, self.asset, new_hash(self.rng, chain), frm, to, amount,
                usd, kind)  # fmt: skip
        world.seq += 1
        world.txs.append(tx)
        self.balance += amount if to == self.address else -amount
        return tx

    def treasury_on(self, t: int) -> bool:
        return all(treasury or not (t0 <= t <= halt) for t0, halt, treasury in self.windows)

    def on_wd(self, t: int, data: tuple[Decimal, str, str]) -> None:
        if self.queue or data[0] > self.balance:
            self.queue.append(data)
            self.need_topup(t, urgent=True)
        else:
            self.send(t, data)

    def send(self, t: int, data: tuple[Decimal, str, str]) -> None:
        amount, to, _ = data
        self.emit(t, self.address, to, amount, data[2])
        row = {"chain": self.chain, "asset": self.asset, "to": to, "amount": fmt(amount)}
        self.world.ledger.append((t - self.rng.randint(5, 120), self.world.seq, row))

    def on_flush(self, t: int, _: object) -> None:
        if self.queue and self.queue[0][0] <= self.balance:
            self.send(t, self.queue.pop(0))
            if self.queue:
                self.push(t + self.rng.randint(2, 12), "flush")

    def on_dep(self, t: int, data: tuple[Decimal, str]) -> None:
        if self.deposits == "direct":
            self.on_inflow(t, data)
        else:
            self.pending.append(data)

    def on_sweeprun(self, t: int, _: object) -> None:
        deposits, self.pending = self.pending, []
        if self.deposits == "consolidate" and deposits:
            total = sum((a for a, _ in deposits), Decimal(0))
            deposits = [(total, new_address(self.rng, self.chain))]
        for i, data in enumerate(deposits):
            self.push(t + i * self.rng.randint(3, 12), "inflow", data)

    def on_inflow(self, t: int, data: tuple[Decimal, str]) -> None:
        self.emit(t, data[1], self.address, data[0], "deposit")
        if self.queue:
            self.push(t + self.rng.randint(5, 30), "flush")

    def on_big(self, t: int, kind: str) -> None:
        """Market-maker and whale moves, sized on the balance or on the treasury's target."""
        lo, hi = {"mm_out": (0.02, 0.08), "mm_in": (0.03, 0.09), "whale_out": (0.08, 0.35)}.get(
            kind, (0.1, 0.4)
        )
        base = self.balance if kind == "mm_out" else self.target
        amount = round_sig(base * dec(self.rng.uniform(lo, hi)), 3 if kind[:2] == "mm" else 2)
        if kind == "mm_out" and amount > 0:
            self.on_wd(t, (amount, self.mm, "mm"))
        elif kind == "mm_in":
            self.on_inflow(t, (amount, self.mm))
        elif kind == "whale_out":
            to = self.rng.choice(self.whales) if self.rng.random() < 0.5 else self.recipient()
            self.on_wd(t, (amount, to, "whale"))
        elif kind == "whale_in":
            self.on_dep(t, (amount, self.rng.choice(self.whales)))

    def need_topup(self, t: int, urgent: bool) -> None:
        if self.topup_pending or not self.treasury_on(t):
            return
        queued = sum((a for a, _, _ in self.queue), Decimal(0))
        want = self.target * dec(self.rng.uniform(1.0, 1.2)) - self.balance + queued
        business = (t // DAY) % 7 < 5 and (t % DAY) < 10 * HOUR  # 09:00-19:00 JST, weekdays
        lo, hi = (10, 30) if urgent else (20, 60) if business else (45, 150)
        self.topup_pending = True
        self.push(t + self.rng.randint(lo * MIN, hi * MIN), "topup", round_sig(want, 2))

    def on_topup(self, t: int, amount: Decimal) -> None:
        self.topup_pending = False
        if self.treasury_on(t) and amount > 0:
            self.emit(t, self.cold, self.address, amount, "topup")
            self.push(t + self.rng.randint(5, 30), "flush")

    def on_check(self, t: int, _: object) -> None:
        target, business = self.target, (t // DAY) % 7 < 5 and (t % DAY) < 10 * HOUR
        if self.balance < target * Decimal("0.5"):
            self.need_topup(t, urgent=self.balance < target * Decimal("0.15"))
        elif self.balance > target * Decimal("1.45") and business and self.treasury_on(t):
            keep = target * dec(self.rng.uniform(0.9, 1.1))
            self.emit(t, self.address, self.cold, round_sig(self.balance - keep, 2), "sweep")

    def on_mal(self, t: int, data: tuple[str, Step]) -> None:
        inc, (_, label, how, x, to) = self.incidents[data[0]], data[1]
        self.base.setdefault(inc.id, self.balance)
        amount = x if how == "abs" else (self.base[inc.id] if how == "base" else self.balance) * x
        amount = min(amount.quantize(self.quantum, rounding=ROUND_DOWN), self.balance)
        if amount > 0 and (how != "frac" or amount >= self.quantum * 1000):
            before, tx = self.balance, self.emit(t, self.address, to, amount, "malicious")
            inc.record.append((tx, label, before))

    def on_halt(self, t: int, _: object) -> None:
        if self.balance > 0:
            self.emit(t + 1, self.address, self.cold, self.balance, "evacuate")
        self.halted = True


def frac(rng: random.Random, lo: float, hi: float) -> Decimal:
    return Decimal(f"{rng.uniform(lo, hi):.4f}")


def plan_steps(iid: str, rng: random.Random, sink: Callable[[str], str], days: int) -> list[Step]:
    """The malicious transfers of each incident, as offsets from its first one."""
    if iid == "coincheck-2018":
        to, whole = sink("nem-hot-1"), Decimal(523_000_010)
        return [(off + rng.randint(0, 50) * (off % 60 == 0), "nem-hot-1",
                 "abs" if off == 0 else "base" if x else "frac",
                 Decimal(10) if off == 0 else Decimal(x) / whole if x else Decimal("0.99"), to)
                for off, x in COINCHECK]  # fmt: skip
    if iid == "kucoin-2020":
        to = sink("eth-hot-2")
        return [(off, "eth-hot-2-" + a, "frac", Decimal(f), to) for off, a, f in
                ((0, "usdt", "0.95"), (142, "eth", "0.9"), (560, "usdc", "0.97"),
                 (1870, "eth", "0.96"))]  # fmt: skip
    if iid == "upbit-2019":
        return [(0, "eth-hot-3", "frac", Decimal("0.92"), sink("eth-hot-3"))]
    if iid == "bitpoint-2019":
        sinks, offs = [sink("xrp-hot-1") for _ in range(3)], [0, 250]
        while offs[-1] < 8 * HOUR:
            offs.append(offs[-1] + rng.randint(10 * MIN, 30 * MIN))
        fr = [Decimal("0.3"), Decimal("0.25"), *(frac(rng, 0.04, 0.1) for _ in offs[2:])]
        pairs = enumerate(zip(offs, fr, strict=True))
        return [(o, "xrp-hot-1", "frac", f, sinks[i % 3]) for i, (o, f) in pairs]
    if iid == "coindcx-2025":
        to, c, t = sink("sol-hot-2"), "sol-hot-2-usdc", "sol-hot-2-usdt"
        share = [(3731, c, 2), (3795, c, 7), (3852, c, 10), (3911, c, 10), (3968, t, 5),
                 (4010, t, 5), (4071, t, 5)]  # fmt: skip
        return [(0, t, "abs", Decimal(1), to),
                *((o, lb, "base", Decimal(s * 97) / (2900 if lb == c else 1500), to)
                  for o, lb, s in share),
                (4330, c, "frac", Decimal("0.9"), to),
                (4465, t, "frac", Decimal("0.9"), to)]  # fmt: skip
    if iid == "careful-thief":
        offs = [0]
        while offs[-1] < 3.5 * HOUR:
            offs.append(offs[-1] + rng.randint(150, 540))
        return [(o, "btc-hot-3", "frac", frac(rng, 0.01, 0.02), sink("btc-hot-3")) for o in offs]
    if iid == "slow-bleed":
        offs = sorted([0, *(rng.randrange(10 * DAY * (days - 7) // 21) for _ in range(29))])
        return [(o, "btc-hot-2", "frac", frac(rng, 0.008, 0.025), sink("btc-hot-2")) for o in offs]
    if iid == "phemex-2025":
        steps, off = [], 0
        for label in ("eth-hot-1-usdt", "tron-hot-1-usdt", "eth-hot-1-eth", "sol-hot-1",
                      "tron-hot-1-trx"):  # fmt: skip
            to = sink(label)
            later = (rng.randint(30, 120), rng.randint(40 * MIN, 80 * MIN))
            steps += [(off, label, "frac", frac(rng, 0.75, 0.9), to),
                      (off + later[0], label, "frac", Decimal("0.97"), to),
                      (off + later[1], label, "frac", Decimal("0.99"), to)]  # fmt: skip
            off += rng.randint(40, 200)
        return steps
    offs = [0, *sorted(rng.randrange(300, 2 * HOUR) for _ in range(5))]  # zaif-2018
    sinks = [sink("btc-hot-1"), sink("btc-hot-1")]
    shares = ("0.08", "0.22", "0.25", "0.15", "0.12", "0.08")
    return [(o, "btc-hot-1", "base", Decimal(f), sinks[i // 3])
            for i, (o, f) in enumerate(zip(offs, shares, strict=True))]  # fmt: skip


def plan_incidents(world: World, sims: dict[str, Sim]) -> list[Incident]:
    rng = rng_for(world.seed, "incidents")
    chain = {k: w.chain for lb, w in sims.items() for k in (lb, "-".join(lb.split("-")[:3]))}
    out = []
    for row in INCIDENT_TABLE.strip().splitlines():
        iid, d, hms, halt, topup = row.split()
        hh, mm, ss = (int(x) for x in hms.split(":"))
        t0 = int(world.day(float(d))) * DAY + hh * HOUR + mm * MIN + ss
        steps = sorted(plan_steps(iid, rng, lambda lb: new_address(rng, chain[lb]), world.days))
        end = t0 + max(s[0] for s in steps) + 12 * HOUR if halt == "0" else t0 + int(halt)
        inc = Incident(iid, t0, min(end, world.end - 60), topup == "topup")
        inc.steps = [s for s in steps if t0 + s[0] < inc.halt]
        for label in dict.fromkeys(s[1] for s in inc.steps):
            sims[label].attach(inc)
        out.append(inc)
    return out


def asset_row(row: list[str], asset: str) -> list[str]:
    return next(x.split(":") for x in row[6:-2] if x.startswith(asset + ":"))


def build_wallets(world: World) -> dict[str, Sim]:
    rng, sims = rng_for(world.seed, "wallets"), {}
    for row in (line.split() for line in SPEC_TABLE.strip().splitlines()):
        row += [new_address(rng, row[1]), new_address(rng, row[1])]  # hot, cold
        for asset in (x.split(":")[0] for x in row[6:-2]):
            label = row[0] if len(row) == 9 else f"{row[0]}-{asset.lower()}"
            sims[label] = Sim(world, label, row, asset, rng.uniform(0.8, 1.2))
    return sims


def write(out: Path, world: World, sims: dict[str, Sim], incs: list[Incident]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    world.txs.sort(key=lambda tx: (tx.t, tx.seq))
    with (out / "transfers.jsonl").open("w") as f:
        for n, tx in enumerate(world.txs, 1):
            tx.line = n
            row = {"ts": iso(tx.t), "chain": tx.chain, "asset": tx.asset, "tx_hash": tx.tx_hash,
                   "from": tx.frm, "to": tx.to, "amount": fmt(tx.amount)}  # fmt: skip
            f.write(json.dumps(row)[:-1] + f', "usd_value": {tx.usd}}}\n')
    world.ledger.sort(key=lambda a: (a[0], a[1]))
    with (out / "ledger.jsonl").open("w") as f:
        for n, (t, _, row) in enumerate(world.ledger, 1):
            f.write(json.dumps({"ts": iso(t), **row, "withdrawal_id": f"wd-{n:07d}"}) + "\n")
    toml, listed = ["# generated by benchmarks/blind/generate.py"], []
    for w in sims.values():
        cold_label, cold_balance = w.label.replace("-hot-", "-cold-"), round_sig(w.target * 25, 3)
        pair = (("hot", w.label, w.address, w.opening), ("cold", cold_label, w.cold, cold_balance))
        for role, label, address, balance in pair:
            entry = {"chain": w.chain, "address": address, "asset": w.asset, "label": label,
                     "role": role, "opening_balance": fmt(balance)}  # fmt: skip
            listed.append(entry)
            toml += ["", "[[wallets]]", *(f'{k} = "{v}"' for k, v in entry.items())]
    (out / "drainwatch.toml").write_text("\n".join(toml) + "\n")
    truth = {
        "seed": world.seed, "days": world.days, "start": iso(0), "end": iso(world.end),
        "learning_days": 7, "wallets": listed,
        "panics": [{"start": iso(s), "end": iso(s + n), "peak": p} for s, n, p in world.panics],
        "incidents": [incident_truth(i, sims) for i in incs],
    }  # fmt: skip
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


def incident_truth(inc: Incident, sims: dict[str, Sim]) -> dict[str, Any]:
    drained: dict[tuple[str, str], list[str]] = {}
    for label in dict.fromkeys(label for _, label, _ in inc.record):
        drained.setdefault((sims[label].chain, sims[label].address), []).append(label)
    rows = sorted(inc.record, key=lambda r: r[0].line)
    return {
        "id": inc.id, "model": MODELS[inc.id][0], "shape": MODELS[inc.id][1],
        "start": iso(rows[0][0].t), "halt": iso(inc.halt),
        "wallets": [{"chain": c, "address": a, "labels": lb} for (c, a), lb in drained.items()],
        "pre_drain_balance": {label: fmt(before) for _, label, before in rows[::-1]},
        "transfers": [
            {"tx_hash": tx.tx_hash, "ts": iso(tx.t), "line": tx.line, "chain": tx.chain,
             "wallet": tx.frm, "label": label, "asset": tx.asset, "to": tx.to,
             "amount": fmt(tx.amount), "usd_value": str(tx.usd), "balance_before": fmt(before)}
            for tx, label, before in rows
        ],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument(
        "--whale-withdrawals",
        type=float,
        default=4,
        help="whale withdrawals a month per entry (default 4; 0: traffic as DESIGN.md names it)",
    )
    parser.add_argument(
        "--customer-tail",
        type=float,
        default=0.01,
        help="share of customer requests with the Pareto tail (default 0.01)",
    )
    parser.add_argument(
        "--sigma-scale",
        type=float,
        default=1.0,
        help="multiplies every entry's log-normal sigma of customer sizes (default 1)",
    )
    parser.add_argument(
        "--mm-hours",
        type=float,
        nargs=2,
        default=(6, 14),
        metavar=("LO", "HI"),
        help="hours between the market maker's withdrawals, drawn uniformly (default 6 14)",
    )
    args = parser.parse_args()
    if args.days < 12:
        parser.error("--days must be at least 12 (7 learning days, then the incidents)")
    world = World(
        args.seed,
        args.days,
        args.whale_withdrawals,
        customer_tail=args.customer_tail,
        sigma_scale=args.sigma_scale,
        mm_hours=tuple(args.mm_hours),
    )
    sims = build_wallets(world)
    incs = plan_incidents(world, sims)
    for sim in sims.values():
        sim.run()
    write(args.out, world, sims, incs)
    kinds: dict[str, int] = {}
    for tx in world.txs:
        kinds[tx.kind] = kinds.get(tx.kind, 0) + 1
    print(f"{len(world.txs)} transfers, {len(world.ledger)} approvals, {len(sims)} hot entries;"
          f" {dict(sorted(kinds.items()))}")  # fmt: skip
    for i in incs:
        print(f"  {i.id:15} {len(i.record):3} malicious transfers from {iso(i.t0)}")


if __name__ == "__main__":
    main()
