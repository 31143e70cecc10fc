"""The velocity detector: a hot wallet losing a large share of its balance fast, to new places.

Ordinary exchange traffic is many small customer withdrawals (well under 1% of the hot wallet each)
to many different addresses, sweeps to the exchange's own cold wallet (internal, ignored), and
regular payouts to familiar counterparties such as a market maker. A drain is a large share going
to one or a few addresses the wallet has never paid. The rules, all on event-time windows and the
balance at the window's start, with warning at the lower threshold and critical + freeze at the
higher one:

* **single destination**: one new address received ``single_*_share`` within
  ``concentration_window_s`` (default 2.5% / 5% in 1 h); once the wallet has
  ``single_min_history_s`` (7 days) of history, what it received must also reach
  ``fresh_factor`` (1.5x) times the largest ordinary payment the large-fresh rule has learned
  to freeze (a wallet whose whales have taken 6% warns up to 9%; one whose whales stop at 3%
  keeps the 5%), unless the address had two payments in the hour and all but the largest reach
  ``large_share`` (1%) of the balance (a whale's payment comes alone; Zaif's thief paid one
  address 8% and then 24%); a warning of it is info when the wallet paid as much to one
  ordinary address more than a day ago within ``fresh_history_days`` (``rule_familiar_size``: a
  wallet whose customers take 3% several times a week is not paged at every one of them);
* **burst of mid-size transfers**: at least ``burst_min_count`` transfers to new addresses, each at
  least ``midsize_share`` of the balance (larger than nearly every customer withdrawal), together
  ``burst_warn_share`` / ``burst_freeze_share`` within ``window_s`` (default 3% / 6% in 20 min);
  a freeze only when they are at least ``burst_crowd_share`` (a fifth) of the window's
  outflows and, without the largest of them, still reach ``burst_warn_share`` (one large
  payment and two customers' are no burst: the size rules judge that payment), a warning
  otherwise: a withdrawal surge is a crowd that holds a few large ones
  (a warning this wallet's customers gave this week is info, below). Nor does it freeze when
  that many mid-size payments among the window's come by chance more often than once in
  ``1 / burst_chance`` (1,000) windows, at the share of the day's earlier payments that are
  mid-size against today's balance (the binomial tail; from ``burst_min_history``, 50, payments
  in the day): in a panic a falling balance makes customers' usual sizes mid-size shares, and
  they come in proportion to the crowd, while a drain adds them to the usual payments (a
  new address paid mid-size twice in the window is no crowd's, and keeps the freeze);
* **sustained**: at least ``sustained_min_count`` (8) mid-size payments to new addresses within
  ``concentration_window_s`` (1 h), together ``sustained_freeze_share`` (5%) of the balance
  without the largest of them, freeze when they are sudden (payments of that size now make
  ``sustained_ratio``, 3x, the share of the hour's payments that they make of the rest of the
  day's) and not a crowd (the hour's other payments are at most ``sustained_crowd_ratio``, 2x,
  the day's hourly average of payments, and 2x what that hour of the day held on the last
  days, the median of up to a week, from the third: a drain's own payments make no crowd,
  and a panic that began hours ago has raised the day's average too): a drain of ~0.8% every
  8 minutes, too slow for the burst rule, under 1% each;
* **large pair**: a second payment of at least ``large_share`` (1%) of the balance at the
  hour's start to another new address within ``fast_window_s`` (5 min), or a third of at least
  1% of the balance at the fast window's start (never less than ``large_hour_floor``, 3/4, of
  the hour's): freeze (a whale's large withdrawal comes alone; a surge that took half the
  wallet makes customers' sizes large shares of what is left, not of what the hour began with,
  and in a panic two long-tailed customers can come within minutes; a drain in 1.2% steps
  inside a surge that took a fifth of the hour's balance is 0.95% steps of it). Inside one of
  the wallet's payout batches it warns: an exchange that sends each hour's withdrawals at once
  sends the hour's whales together. A wallet pays in batches when
  its busiest ``fast_window_s`` of an hour has held on average ``batch_share`` (60%) of the
  hour's payments, and a payment is in one when the last ``fast_window_s`` hold at least two
  customer-sized payments (under 1%) and a third of the last hour's; a drain between batches
  is large payments in an empty stretch. On a wallet whose own large payments (1% and more, to
  ordinary addresses, in the learned history, faster while the hour brings them faster) would
  bring a pair within ``fast_window_s`` together by chance more than ``large_pair_chance``
  (0.05) times a month, the rule asks for three, or four (Poisson, at most three more than
  ``large_pair_count``): customers who pay 1-3% several times a day make such pairs a few
  times a month; a wallet whose whales take a few a week keeps the pair;
* **slow bleed**: one new address paid at least ``bleed_min_count`` times within
  ``bleed_window_s``, together ``bleed_warn_share`` / ``bleed_freeze_share`` (default 4 times,
  1.5% / 2.5% in 24 h); it and the repeat rule warn instead of freezing when the address is paid
  as another exchange's shared deposit address is (deposits told apart by memos): at least
  ``shared_min_count`` (10) payments whose median is under ``shared_size_ratio`` (2x) the
  wallet's usual payment, together under ``shared_max_share`` (10%) (``rule_shared_address``);
* **daily**: payments of at least ``large_share`` (1%) of the balance at the hour's start to new
  addresses, one after another over ``bleed_window_s`` (24 h), as many as this wallet's own
  ordinary payments of that size (in the learned history before the day, one more than there
  were) bring into a day by chance less than ``daily_chance`` (0.02) times a month, and at
  least ``daily_min_count`` (5) of them (Poisson, as for the large pair): freeze; less than
  ``daily_warn_chance`` (0.5) times a month: warning. Once the wallet has
  ``single_min_history_s`` of history and two days of hourly counts, and only on a day that
  held at most ``daily_busy_ratio`` (1.3x) its usual day's payments, whose last six hours
  held at most ``daily_busy_hours_ratio`` (1.5x) their share of one. A drain in steps
  of a customer's size to fresh addresses, a few a day (Mt. Gox's hot wallet was bled for
  years), adds them to the usual number of payments; a withdrawal surge brings customers'
  large payments by the dozen, with many more small ones;
* **total outflow**: everything external that left within ``window_s`` reached
  ``total_*_share`` (default 20% / 30%), or ``total_long_freeze_share`` within
  ``concentration_window_s`` (default 40% in 1 h), new addresses or not, leaving out what went
  to trusted counterparties (destinations paid ``fresh_regular_count`` times, or once for
  ``known_counterparties``, more than a day ago, each payment up to ``regular_trust_factor``,
  2x, the largest of those: an unlisted cold wallet's sweeps, a market maker); it freezes only when
  sudden (the last ``window_s`` at least ``total_sudden_ratio``, 3x, an equal stretch of the rest
  of the hour), not one payment to a new address (without the largest such, ``total_warn_share``
  is still reached in the window or the hour, unless that payment took ``total_alone_share``,
  half, of the balance: one large payment to a new address is the size rules' to judge, and
  they know the wallet's whales), nor to a whale's own address (one paid at least half as much
  more than a day before: whales come back to it, a thief's address is fresh), and not a
  crowd, and warns otherwise: a withdrawal surge goes
  on for hours, and at its start it is a crowd (at least ``total_crowd_min_count``, 30, payments
  in the window whose median is under ``total_crowd_ratio``, 2x, the median of the rest of the
  hour's: many customers paying what customers pay; on a wallet that pays in batches, whose hour
  holds nothing before the batch, 2x its usual payment, the median of its last 24 wallet-hours'
  medians);
* **familiar crowds**: a warning of the total rule that is not a freeze because the outflow is
  like the hour's or a crowd's, or of the burst rule that does not freeze, is info when an hour
  12 hours to ``crowd_memory_s`` (7 days) before saw one of that rule at least
  ``1 / crowd_familiar_factor`` (2/3) as large (``rule_familiar_crowd``; the summary says "no
  heavier than its busy hours this week"): a lean hot wallet whose customers take a fifth of it
  at every day's peak warns on the first such day of the week and on a surge half again larger,
  not every day; freezes are never touched;
* **repeat**: the ``repeat_min_count``-th payment (default 3) to the same new address within
  ``concentration_window_s`` that brings it to ``repeat_freeze_share`` (default 1%): freeze;
* **large fresh**: per wallet, the largest amount it paid within ``fresh_history_days`` (28)
  to anyone but its regular counterparties (paid ``fresh_regular_count`` times or more in that
  history, such as a market maker) is learned in event time: customers' and whales'
  withdrawals. A payment to a first-seen address of at least ``fresh_floor_share`` of the
  balance (1%) and at least the level this wallet's ordinary payments reach about once in
  ``fresh_return_days`` (50 months) freezes (``large_fresh = False`` turns it off). That level
  is the learned largest times ``exp(steps x spread)``, between ``fresh_factor`` (1.5x) and
  ``fresh_factor_max`` (4x): ``spread`` is how far apart the ``fresh_tail_k`` (5) largest lie
  (Hill's estimate of the tail's scale in log units: about 0 for customers up to a cap, large
  for whales each several times the next), ``steps`` is ln(return period / history seen), plus
  ln(rate) while large payments come at ``rate`` times their usual rate (a withdrawal surge).
  On a wallet whose customers never take more than 0.7% of the balance that is a drain's first
  transfer above 1%; on a wallet whose whales take 3% to fresh addresses the bar is above what
  they take, and further above it the more their sizes spread. One payment is not enough in
  the first ``fresh_min_history_s`` (14 days) of a wallet's history, so that whales seen every
  week or two have shown themselves first; from ``single_min_history_s`` (7 days) on, two are:
  a payment to a first-seen address that follows one to another new address within
  ``fresh_young_pair_s`` (1 h), each at least the floor and ``fresh_factor`` times the largest
  ordinary payment before the hour, freezes (whales come alone; a drain in spaced ~1.5% steps
  on a wallet in its second week does not);
* **test then drain**: a tiny first transfer to a new address, then within ``test_window_s``
  (1 h) a transfer of ``test_drain_share`` to it: freeze. The test may come in another asset of
  the same wallet, then within ``peer_test_window_s`` (3 h): CoinDCX's thief sent 1 USDT at
  21:07 UTC and drained USDC and USDT from 22:09. (Customers pay an address a little and later
  much in one asset: within 6 h instead of 1, 7 more false freezes on the blind replay's seed 0.)
  A little of the chain's coin (``fee_coins``: ETH on Ethereum, TRX on Tron, ...) is not a test
  of a token: customers moving a token to a new wallet of their own take some coin for its fees
  first, and the ``token-gas`` variant's whales were frozen 3 times in 2.1 wallet-months for it.
  Whales who test a fresh address themselves before paying it are frozen (the ``whale-tests``
  variant: 2.1 false freezes a wallet-month): without a ledger they are a thief's test and first
  transfer;
* **cold wallet**: a cold wallet paying any address that is neither listed nor a configured
  counterparty: freeze.

>>> from datetime import UTC, datetime, timedelta
>>> from drainwatch.config import WalletConfig
>>> from drainwatch.events import Direction, Transfer
>>> hot = WalletConfig(chain="nem", address="HOT", label="nem-hot",
...                    opening_balance=Decimal("523000010"))
>>> state, detector = WalletState(hot, "XEM"), VelocityDetector()
>>> t0 = datetime(2018, 1, 25, 15, 2, tzinfo=UTC)
>>> def send(minute, amount, tx):
...     t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT,
...         counterparty="THIEF", asset="XEM", amount=amount, decimals=0, tx_hash=tx,
...         position=0, time=t0 + timedelta(minutes=minute))
...     state.prepare(t)
...     finding = detector.score_one(t, state)
...     state.apply(t, learn=not (finding and finding.freeze))
...     return finding
>>> send(0, 10, "test") is None
True
>>> f = send(2, 100_000_000, "big")
>>> f.severity.value, f.freeze
('critical', True)
>>> f.summary.split("; ")
['19.1% of nem-hot drained in 2 min to 1 new address (after a 10 XEM test)',
 '423,000,000 XEM left, at this rate empty in 9 min']
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from statistics import median_high
from types import MappingProxyType
from typing import Final

from detectors.base import (
    Description,
    Finding,
    FirstSeen,
    HeldWallets,
    Outflow,
    WalletState,
    Window,
    busiest_total,
    format_units,
    human_units,
    ratio_string,
    split_by_wallet,
)
from detectors.move import TransferView
from drainwatch.config import ChainConfig, DetectionConfig
from drainwatch.events import Direction, Severity, TransferStatus

__all__ = ["FEE_COINS", "VelocityDetector", "describe_duration"]

FEE_COINS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        **dict.fromkeys(
            ("ethereum", "arbitrum", "optimism", "base", "linea", "zksync", "scroll"),
            frozenset({"ETH"}),
        ),
        "bsc": frozenset({"BNB"}),
        "polygon": frozenset({"POL", "MATIC"}),
        "avalanche": frozenset({"AVAX"}),
        "tron": frozenset({"TRX"}),
        "solana": frozenset({"SOL"}),
    }
)
"""The coin fees are paid in on well-known chains, by chain name: a little of it before a token
to the same new address is a customer's money for fees, not a test (see test then drain). The
``native_symbol`` of each EVM chain in ``[chains]`` is added to these."""

_EVIDENCE_MAX: Final = 100
_CROWD_MIN_BEFORE: Final = 10
_OUT: Final = Direction.OUT
_RETRACTED: Final = TransferStatus.RETRACTED


@dataclass(slots=True)
class _LargePayments:
    """One wallet's large payments within the learned history, and the largest ordinary one.

    The largest payment to a non-regular destination is kept up to date as payments come and
    go; it is worked out again only when one that may have been it leaves, or when a
    destination becomes (or stops being) regular.
    """

    first_time: float
    """When the wallet's first outflow was learned (the history starts there)."""
    scale: int
    """The decimal scale of the units below (the wallet state's when they were learned)."""
    regular: int
    """A destination paid this many times within the history is a regular counterparty."""
    known: frozenset[str] = frozenset()
    """Configured counterparties: kept in the history, never ordinary payments."""
    items: deque[tuple[float, int, str]] = field(default_factory=deque)
    """(event time, units, destination), oldest first."""
    tracked: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    """(event time, units) of the payments to each regular destination (and to each configured
    counterparty paid at least once), oldest first: the candidates for trust."""
    paid: Counter[str] = field(default_factory=Counter)
    """How many of ``items`` went to each destination."""
    high: int = 0
    """The largest payment to a destination that is not a regular counterparty."""
    spread_cache: float | None = None
    """:meth:`spread` until the payments change."""

    def factor(self, scale: int) -> int:
        """What one of these units is in units of ``scale``: a wallet state's, never coarser
        than the history's (a state's scale only grows)."""
        factor: int = 10 ** (scale - self.scale)
        return factor

    def forget(self, horizon: float) -> None:
        """Let the payments before ``horizon`` go."""
        items, paid, regular, stale = self.items, self.paid, self.regular, False
        if items and items[0][0] < horizon:
            self.spread_cache = None
        tracked = self.tracked
        while items and items[0][0] < horizon:
            _, gone, was = items.popleft()
            count = paid[was]
            paid[was] = count - 1
            payments = tracked.get(was)
            if payments is not None:
                payments.popleft()
                if count - 1 < self.needed(was):
                    del tracked[was]
            stale = stale or count == regular or (count < regular and gone >= self.high)
        if stale:
            self._recount()

    def since(self, moment: float) -> int:
        """How many of the payments came at ``moment`` or later."""
        count = 0
        for when, _, _ in reversed(self.items):
            if when < moment:
                break
            count += 1
        return count

    def spread(self, k: int) -> float:
        """How far apart the largest ordinary payments lie: the mean of ``ln(x_i / x_k+1)``
        over the ``k`` largest (Hill's estimate of the tail's scale, in log units).

        Near 0 when the largest payments are alike (customers up to a cap); large when each is
        several times the next (a heavy tail, where next month's largest may be far above this
        month's). With fewer payments it uses what there is; with one or none, 0.
        """
        if self.spread_cache is None:
            top = heapq.nlargest(k + 1, self._ordinary())
            self.spread_cache = (
                sum(math.log(u / top[-1]) for u in top[:-1]) / (len(top) - 1)
                if len(top) > 1 and top[-1] > 0
                else 0.0
            )
        return self.spread_cache

    def add(self, time: float, units: int, dest: str, scale: int) -> None:
        """Remember a payment of ``units`` at ``scale`` (never below the scale kept)."""
        if scale > self.scale:
            factor: int = 10 ** (scale - self.scale)
            self.items = deque((t, u * factor, d) for t, u, d in self.items)
            self.tracked = {
                d: deque((t, u * factor) for t, u in payments)
                for d, payments in self.tracked.items()
            }
            self.high *= factor
            self.scale = scale
        self.items.append((time, units, dest))
        self.spread_cache = None
        count = self.paid[dest] + 1
        self.paid[dest] = count
        payments = self.tracked.get(dest)
        if payments is not None:
            payments.append((time, units))
        elif count >= self.needed(dest):
            self.tracked[dest] = deque((t, u) for t, u, d in self.items if d == dest)
        if dest in self.known:
            return
        if count < self.regular:
            self.high = max(self.high, units)
        elif count == self.regular:
            self._recount()  # its earlier payments no longer count

    def needed(self, dest: str) -> int:
        """Payments that make ``dest`` a candidate for trust: one to a configured counterparty."""
        return 1 if dest in self.known else self.regular

    def ordinary(self, before: float = math.inf) -> Iterator[tuple[float, int]]:
        """(event time, units) of the payments (made before ``before``) to destinations that
        are not regular counterparties."""
        paid, regular, known = self.paid, self.regular, self.known
        return (
            (t, u) for t, u, d in self.items if t < before and paid[d] < regular and d not in known
        )

    def _ordinary(self, before: float = math.inf) -> Iterator[int]:
        """The units of :meth:`ordinary`."""
        return (u for _, u in self.ordinary(before))

    def paid_before(self, dest: str, moment: float, at_least: int) -> bool:
        """Whether ``dest`` got a payment of at least ``at_least`` units before ``moment``."""
        return any(t < moment and u >= at_least and d == dest for t, u, d in self.items)

    def high_before(self, moment: float) -> int:
        """The largest ordinary payment (see :meth:`_ordinary`) made before ``moment``."""
        return max(self._ordinary(moment), default=0)

    def _recount(self) -> None:
        self.paid = +self.paid  # drops the destinations no longer in the history
        self.high = max(self._ordinary(), default=0)


@dataclass(slots=True)
class _Cadence:
    """How one wallet's payments spread over its hours: as customers ask, or in batches.

    An exchange that pays out in cycles sends each hour's (or cycle's) withdrawals at once: a
    few minutes hold nearly all of the hour's payments, whales among them. Payments sent as
    customers ask spread over the hour.
    """

    hour_start: float = -math.inf
    times: list[float] = field(default_factory=list)
    """When this wallet-hour's external payments left."""
    units: list[int] = field(default_factory=list)
    """How much each of them paid, at ``scale``."""
    scale: int = 0
    """The decimal scale of ``units`` and ``medians`` (the wallet state's when learned)."""
    hours: int = 0
    """Wallet-hours learned (with at least ``_BATCH_MIN_COUNT`` payments)."""
    batching: float = 0.0
    """Exponentially weighted mean, over the learned hours, of the share of an hour's payments
    that its busiest fast window held: about 0.2 for payments sent as they are asked for, near 1
    for a wallet that sends each hour's at once."""
    medians: deque[int] = field(default_factory=lambda: deque(maxlen=_USUAL_HOURS))
    """The median payment of each of the last learned wallet-hours, at ``scale``."""
    counts: deque[int] = field(default_factory=lambda: deque(maxlen=_COUNT_HOURS))
    """How many payments each of the last wallet-hours before ``hour_start`` held, the empty
    ones too, the latest last."""

    def add(self, time: float, units: int, scale: int) -> None:
        """Count a payment of ``units`` at ``scale`` in the current wallet-hour."""
        if scale > self.scale:
            factor: int = 10 ** (scale - self.scale)
            self.units = [u * factor for u in self.units]
            self.medians = deque((m * factor for m in self.medians), maxlen=_USUAL_HOURS)
            self.scale = scale
        self.times.append(time)
        self.units.append(units if scale == self.scale else units * 10 ** (self.scale - scale))

    def roll(self, now: float, span_s: float) -> None:
        """Learn the wallet-hour that ended (if it had enough payments) and start ``now``'s."""
        times = self.times
        if self.hour_start > -math.inf:
            self.counts.append(len(times))
            empty = int((now - now % 3600 - self.hour_start) // 3600) - 1
            self.counts.extend(itertools.repeat(0, min(empty, _COUNT_HOURS)))
        if len(times) >= _BATCH_MIN_COUNT:
            share = busiest_total(times, [1.0] * len(times), span_s) / len(times)
            weight = 1.0 if self.hours == 0 else _BATCH_FADING
            self.batching += weight * (share - self.batching)
            self.hours += 1
            self.medians.append(median_high(self.units))
        self.hour_start = now - now % 3600
        times.clear()
        self.units.clear()

    def batches(self, share: float) -> bool:
        """Whether the wallet pays in batches: over ``_BATCH_MIN_HOURS`` learned hours or more,
        its busiest fast window of an hour held on average ``share`` of the hour's payments."""
        return share > 0 and self.hours >= _BATCH_MIN_HOURS and self.batching >= share

    def usual_count(self, now: float) -> int | None:
        """How many payments the hour of the day of ``now`` usually holds: the median of that
        hour on each of the last days (up to a week), or ``None`` before ``_COUNT_MIN_DAYS``
        of them. A day's panic is one of seven."""
        hour = now - now % 3600
        counts, seen = self.counts, []
        for back in range(1, _COUNT_HOURS // 24 + 1):
            then = hour - back * 86400
            if then == self.hour_start:
                seen.append(len(self.times))
            elif then > self.hour_start:
                seen.append(0)
            else:
                at = int((self.hour_start - then) // 3600)
                if at > len(counts):
                    break
                seen.append(counts[-at])
        return median_high(seen) if len(seen) >= _COUNT_MIN_DAYS else None

    def usual_day(self, before: float) -> float | None:
        """How many payments a day the learned wallet-hours that ended by ``before`` held on
        average (empty ones too), or ``None`` with fewer than ``_DAILY_MIN_HOURS`` of them."""
        # counts[-i] is the hour that began i hours before hour_start.
        recent = int((self.hour_start - before) // 3600) + 1
        older = list(self.counts)[: len(self.counts) - max(recent, 0)]
        if len(older) < _DAILY_MIN_HOURS:
            return None
        return sum(older) * 24 / len(older)

    def usual_payment(self, scale: int) -> int:
        """The median of the learned hours' median payments, at ``scale``: what the wallet's
        customers usually take."""
        return median_high(self.medians) * 10 ** (scale - self.scale) if self.medians else 0


_BATCH_MIN_COUNT: Final = 5
"""Payments a wallet-hour needs to say anything about how they were sent."""
_BATCH_MIN_SMALL: Final = 2
"""Payments under ``large_share`` (customers) a fast window needs to be a payout batch."""
_BATCH_FADING: Final = 0.05
_BATCH_MIN_HOURS: Final = 24
_COUNT_HOURS: Final = 7 * 24
"""Wallet-hours whose payments are counted (a week)."""
_COUNT_MIN_DAYS: Final = 3
"""Days an hour of the day needs behind it to have a usual count."""
_USUAL_HOURS: Final = 24
"""Wallet-hours whose median payments make a batching wallet's usual payment."""


_MIDSIZE_RULES = frozenset({"burst", "large_fresh", "large_pair", "large_fresh_pair", "sustained"})
"""Rules about payments above a customer's size to new addresses: described by those payments."""
_HOUR_RULES = frozenset({"large_fresh", "large_fresh_pair", "sustained"})
"""Of those, the rules that look back an hour (the others look at 20 or 5 minutes)."""
_CROWD_RULES = frozenset({"burst", "large_pair", "sustained"})
"""Rules on mid-size payments to several new addresses: a freeze or a warning on them alone is a
crowd's (:attr:`~detectors.base.Finding.crowd`)."""


_SEVERITY_OF_LEVEL: Final = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)
"""A finding's severity by the level of its highest rule (0 info, 1 warning, 2 freeze)."""
_DAILY_HOURS_S: Final = 6 * 3600
"""The last hours of the day the daily rule asks to be no busier than usual."""
_DAILY_MIN_HOURS: Final = 48
"""Wallet-hours before the day the daily rule needs, to know the wallet's usual day."""
_CROWD_QUIET_S = 12 * 3600
"""Heavy outflow within the last 12 hours is the same episode: it does not make itself familiar."""
_CROWD_HOUR_S = 3600
"""One remembered score per hour of heavy outflow."""


def _fraction(share: Decimal) -> tuple[int, int]:
    numerator, denominator = share.as_integer_ratio()
    return numerator, denominator


def _binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p).

    >>> round(_binomial_tail(10, 3, 0.05), 4)
    0.0115
    >>> _binomial_tail(5, 0, 0.5), _binomial_tail(5, 6, 0.5)
    (1.0, 0.0)
    >>> _binomial_tail(5000, 1000, 0.2) > 0.4  # a panic's thousands of payments
    True
    """
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    # The terms from k up, each from the one before: pmf(i + 1) = pmf(i) (n - i) / (i + 1) p / q;
    # the first in logarithms, so that thousands of payments neither overflow nor underflow.
    q = 1.0 - p
    log_first = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log(q)
    )
    term, total, ratio = math.exp(log_first), 0.0, p / q
    for i in range(k, n + 1):
        total += term
        if term <= total * 1e-17:
            break
        term *= (n - i) / (i + 1) * ratio
    return min(1.0, total)


def _poisson_tail(lam: float, k: int) -> float:
    """P(N >= k) for N ~ Poisson(lam), as one minus the terms below ``k`` (summed from 0 up).

    >>> round(_poisson_tail(1.0, 2), 4)
    0.2642
    >>> _poisson_tail(3.0, 0)  # at least none: certain
    1.0
    """
    term = math.exp(-lam)
    below = 0.0
    for i in range(k):
        below += term
        term *= lam / (i + 1)
    return max(0.0, 1.0 - below)


def _midsize_now(outflows: Iterable[Outflow], state: WalletState) -> int:
    """How many of ``outflows`` went to a destination new then and are mid-size against the
    balance now (a low balance makes customers' usual sizes mid-size shares)."""
    is_midsize = state.is_midsize
    return sum(1 for o in outflows if o.new and is_midsize(o.units))


def _reaches(amount: int, reference: int, fraction: tuple[int, int]) -> bool:
    """Exact ``amount / reference >= fraction``; an unknown (zero) reference counts as reached."""
    if reference <= 0:
        return amount > 0
    return amount * fraction[1] >= reference * fraction[0]


def _ratio(amount: int, reference: int, share: float) -> float:
    if reference <= 0:
        return float("inf") if amount > 0 else 0.0
    return amount / reference / share


def _percent(amount: int, reference: int) -> str:
    """Share in percent with one decimal; an unknown (zero) reference reads as 100."""
    return ratio_string(amount * 100, reference, 1) if reference > 0 else "100"


def _window_metrics(state: WalletState, dest: str, units: int, *, new: bool) -> dict[str, str]:
    """Every window's outflow, new-destination outflow, shares and new destinations."""
    scale = state.scale
    metrics = {}
    for span_s in state.windows_s:
        win = state.window(span_s)
        out = win.total + units
        new_out = win.new_total + (units if new else 0)
        win_ref = state.reference_units(win)
        dests = win.new_destinations()
        n_new = len(dests) + (new and dest not in dests)
        metrics[f"out_{span_s}s"] = format_units(out, scale)
        metrics[f"new_out_{span_s}s"] = format_units(new_out, scale)
        metrics[f"share_out_{span_s}s"] = ratio_string(out, win_ref)
        metrics[f"share_new_{span_s}s"] = ratio_string(new_out, win_ref)
        metrics[f"new_destinations_{span_s}s"] = str(n_new)
    return metrics


def describe_duration(seconds: float, round_up: bool = False) -> str:
    """A short human duration.

    >>> describe_duration(120), describe_duration(507.6, round_up=True), describe_duration(42)
    ('2 min', '9 min', '42 s')
    >>> describe_duration(5 * 3600), describe_duration(3 * 86400)
    ('5.0 h', '3.0 d')
    """
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 2 * 3600:
        minutes = -(-seconds // 60) if round_up else round(seconds / 60)
        return f"{int(minutes)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class VelocityDetector:
    """Flags a wallet losing a large share of its balance quickly, above all to new addresses.

    Constructor arguments are the configuration; :meth:`from_config` derives them from the
    ``[detection]`` table. Shares are of the balance at the start of the window.
    """

    outflows_only: Final = True
    """Neither judges nor learns from inflows (the engine skips them)."""
    learns_from_freezes: Final = True
    """What it learns is a fact (the largest payments and their destinations), so it learns it
    from a transfer it froze on too: a false freeze of a whale's withdrawal must not keep that
    size extraordinary, and freeze the whale's next one (as the state keeps the destination)."""

    def __init__(  # noqa: PLR0915 - one assignment per setting
        self,
        *,
        name: str = "velocity",
        window_s: int = 1200,
        concentration_window_s: int = 3600,
        freeze_share: Decimal = Decimal("0.10"),
        warn_share: Decimal = Decimal("0.05"),
        single_freeze_share: Decimal = Decimal("0.05"),
        single_warn_share: Decimal = Decimal("0.025"),
        total_freeze_share: Decimal = Decimal("0.30"),
        total_warn_share: Decimal = Decimal("0.20"),
        fanout_min_share: Decimal = Decimal("0.01"),
        test_window_s: int = 3600,
        peer_test_window_s: int = 3 * 3600,
        test_max_share: Decimal = Decimal("0.001"),
        test_drain_share: Decimal = Decimal("0.015"),
        fee_coins: Mapping[str, Collection[str]] = FEE_COINS,
        min_rate_span_s: int = 60,
        burst_min_count: int = 3,
        burst_warn_share: Decimal = Decimal("0.03"),
        burst_freeze_share: Decimal = Decimal("0.06"),
        burst_crowd_share: Decimal = Decimal("0.2"),
        burst_chance: float = 1e-3,
        burst_min_history: int = 50,
        sustained_min_count: int = 8,
        sustained_freeze_share: Decimal = Decimal("0.05"),
        sustained_ratio: int = 3,
        sustained_crowd_ratio: int = 2,
        fast_window_s: int = 300,
        large_share: Decimal = Decimal("0.01"),
        large_pair_count: int = 2,
        large_pair_chance: float = 0.05,
        large_hour_floor: Decimal = Decimal("0.75"),
        bleed_window_s: int = 86400,
        bleed_min_count: int = 4,
        daily_chance: float = 0.02,
        daily_warn_chance: float = 0.5,
        daily_min_count: int = 5,
        daily_busy_ratio: float = 1.3,
        daily_busy_hours_ratio: float = 1.5,
        bleed_warn_share: Decimal = Decimal("0.015"),
        bleed_freeze_share: Decimal = Decimal("0.025"),
        total_long_freeze_share: Decimal = Decimal("0.40"),
        total_sudden_ratio: int = 3,
        total_crowd_ratio: int = 2,
        total_crowd_min_count: int = 30,
        total_alone_share: Decimal = Decimal("0.5"),
        repeat_freeze_share: Decimal = Decimal("0.01"),
        repeat_min_count: int = 3,
        shared_min_count: int = 10,
        shared_size_ratio: int = 2,
        shared_max_share: Decimal = Decimal("0.10"),
        fresh_floor_share: Decimal = Decimal("0.01"),
        fresh_factor: Decimal = Decimal("1.5"),
        fresh_history_days: int = 28,
        fresh_regular_count: int = 3,
        fresh_min_history_s: int = 14 * 86400,
        fresh_tail_k: int = 5,
        single_min_history_s: int = 7 * 86400,
        fresh_return_days: int = 50 * 30,
        fresh_factor_max: Decimal = Decimal(4),
        fresh_young_pair_s: int = 3600,
        large_fresh: bool = True,
        regular_trust_factor: Decimal = Decimal(2),
        batch_share: float = 0.6,
        crowd_memory_s: int = 7 * 86400,
        crowd_familiar_factor: Decimal = Decimal("1.5"),
    ) -> None:
        self.name = name
        self.batch_share = batch_share
        self.window_s = window_s
        self.concentration_window_s = concentration_window_s
        self.freeze_share = freeze_share
        self.warn_share = warn_share
        self.single_freeze_share = single_freeze_share
        self.single_warn_share = single_warn_share
        self.total_freeze_share = total_freeze_share
        self.total_warn_share = total_warn_share
        self.fanout_min_share = fanout_min_share
        self.test_window_s = test_window_s
        self.peer_test_window_s = peer_test_window_s
        self.test_max_share = test_max_share
        self.test_drain_share = test_drain_share
        self.fee_coins = {chain: frozenset(coins) for chain, coins in fee_coins.items()}
        self.min_rate_span_s = min_rate_span_s
        self.burst_min_count = burst_min_count
        self.burst_warn_share = burst_warn_share
        self.burst_freeze_share = burst_freeze_share
        self.fast_window_s = fast_window_s
        self.large_share = large_share
        self._large = _fraction(large_share)
        self.large_hour_floor = large_hour_floor
        self._large_hour_floor = _fraction(large_hour_floor)
        self.large_pair_count = large_pair_count
        self.large_pair_chance = large_pair_chance
        self.daily_chance = daily_chance
        self.daily_warn_chance = daily_warn_chance
        self.daily_min_count = daily_min_count
        self.daily_busy_ratio = daily_busy_ratio
        self.daily_busy_hours_ratio = daily_busy_hours_ratio
        self.bleed_window_s = bleed_window_s
        self.bleed_min_count = bleed_min_count
        self.bleed_warn_share = bleed_warn_share
        self.bleed_freeze_share = bleed_freeze_share
        self.total_long_freeze_share = total_long_freeze_share
        self.total_sudden_ratio = total_sudden_ratio
        self.total_crowd_ratio = total_crowd_ratio
        self.total_crowd_min_count = total_crowd_min_count
        self.total_alone_share = total_alone_share
        self._total_alone = _fraction(total_alone_share)
        self._burst_warn = _fraction(burst_warn_share)
        self._burst_freeze = _fraction(burst_freeze_share)
        self.burst_crowd_share = burst_crowd_share
        self._burst_crowd = _fraction(burst_crowd_share)
        self.burst_chance = burst_chance
        self.burst_min_history = burst_min_history
        self.sustained_min_count = sustained_min_count
        self.sustained_freeze_share = sustained_freeze_share
        self._sustained = _fraction(sustained_freeze_share)
        self.sustained_ratio = sustained_ratio
        self.sustained_crowd_ratio = sustained_crowd_ratio
        self._bleed_warn = _fraction(bleed_warn_share)
        self._bleed_freeze = _fraction(bleed_freeze_share)
        self._total_long = _fraction(total_long_freeze_share)
        self.repeat_freeze_share = repeat_freeze_share
        self.repeat_min_count = repeat_min_count
        self.shared_min_count = shared_min_count
        self.shared_size_ratio = shared_size_ratio
        self.shared_max_share = shared_max_share
        self._shared_max = _fraction(shared_max_share)
        self.fresh_floor_share = fresh_floor_share
        self.fresh_factor = fresh_factor
        self.fresh_history_days = fresh_history_days
        self.fresh_regular_count = fresh_regular_count
        self.fresh_min_history_s = fresh_min_history_s
        self.fresh_tail_k = fresh_tail_k
        self.single_min_history_s = single_min_history_s
        self.fresh_return_days = fresh_return_days
        self.fresh_factor_max = fresh_factor_max
        self._factor_max_milli = math.ceil(fresh_factor_max * 1000)
        self.fresh_young_pair_s = fresh_young_pair_s
        self.large_fresh = large_fresh
        self.regular_trust_factor = regular_trust_factor
        self._regular_trust = _fraction(regular_trust_factor)
        self._fresh_factor = _fraction(fresh_factor)
        self._fresh_floor = _fraction(fresh_floor_share)
        # Payments of a third of the floor and more are remembered: the balance moves, and a
        # payment small against today's balance may be large against a lower one.
        self._record = _fraction(fresh_floor_share / 3)
        self._history_s = fresh_history_days * 86400
        self._repeat = _fraction(repeat_freeze_share)
        self._fresh: dict[tuple[str, str, str], _LargePayments] = {}
        self._cadence: dict[tuple[str, str, str], _Cadence] = {}
        self.crowd_memory_s = crowd_memory_s
        self.crowd_familiar_factor = crowd_familiar_factor
        self._crowd_familiar = float(crowd_familiar_factor)
        # Per wallet, asset and rule: (first time, largest score) of each hour in which the
        # total or the burst rule warned of what customers do, for ``crowd_memory_s``.
        self._crowds: dict[tuple[str, str, str, str], deque[list[float]]] = {}
        # Exact integer fractions for the decisions; floats only for the score.
        self._freeze = _fraction(freeze_share)
        self._warn = _fraction(warn_share)
        self._single_freeze = _fraction(single_freeze_share)
        self._single_warn = _fraction(single_warn_share)
        self._total_freeze = _fraction(total_freeze_share)
        self._total_warn = _fraction(total_warn_share)
        self._fanout = _fraction(fanout_min_share)
        self._test_max = _fraction(test_max_share)
        self._test_drain = _fraction(test_drain_share)

    @classmethod
    def from_config(
        cls, detection: DetectionConfig, chains: Mapping[str, ChainConfig] | None = None
    ) -> VelocityDetector:
        """The detector with the ``[detection]`` thresholds; the other rules scale with them.
        The ``native_symbol`` of each EVM chain in ``chains`` is a fee coin of that chain.

        >>> VelocityDetector.from_config(DetectionConfig()).single_freeze_share
        Decimal('0.050')
        >>> VelocityDetector.from_config(DetectionConfig(large_fresh=False)).learns
        False
        >>> chain = ChainConfig(kind="evm", rpc=("http://node",), native_symbol="GLMR")
        >>> VelocityDetector.from_config(DetectionConfig(), {"moonbeam": chain}).fee_coins[
        ...     "moonbeam"]
        frozenset({'GLMR'})
        """
        half, triple = Decimal("0.5"), Decimal(3)
        fee_coins = {chain: set(coins) for chain, coins in FEE_COINS.items()}
        for name, chain in (chains or {}).items():
            if chain.kind == "evm":
                fee_coins.setdefault(name, set()).add(chain.native_symbol)
        return cls(
            fee_coins=fee_coins,
            freeze_share=detection.freeze_share,
            warn_share=detection.warn_share,
            single_freeze_share=detection.freeze_share * half,
            single_warn_share=detection.warn_share * half,
            total_freeze_share=detection.freeze_share * triple,
            total_warn_share=detection.warn_share * 4,
            large_fresh=detection.large_fresh,
        )

    @property
    def windows_s(self) -> tuple[int, ...]:
        """The windows this detector needs the wallet state to keep."""
        return (
            self.window_s,
            self.concentration_window_s,
            self.bleed_window_s,
            self.fast_window_s,
        )

    @property
    def learns(self) -> bool:
        """Whether :meth:`learn_with_state` remembers anything (only the large-fresh rule does)."""
        return self.large_fresh

    def adopt(self, other: VelocityDetector) -> None:
        """Take over what ``other`` learned of its wallets (none of them ours)."""
        self._fresh.update(other._fresh)
        self._cadence.update(other._cadence)
        self._crowds.update(other._crowds)

    def held_part(self, held: HeldWallets) -> VelocityDetector:
        """A copy that knows only what was learned of the wallets ``held`` names: their share
        of a state snapshot (:meth:`restore_part` takes it back)."""
        part = copy.copy(self)
        part._fresh = split_by_wallet(self._fresh, held)[0]
        part._cadence = split_by_wallet(self._cadence, held)[0]
        part._crowds = split_by_wallet(self._crowds, held)[0]
        return part

    def restore_part(self, part: object, held: HeldWallets) -> None:
        """Take back what :meth:`held_part` kept of the wallets ``held`` names (it replaces
        what is known of them)."""
        if not isinstance(part, VelocityDetector):
            raise TypeError(f"not a velocity detector's part: {type(part).__name__}")
        self._fresh = split_by_wallet(self._fresh, held)[1] | part._fresh
        self._cadence = split_by_wallet(self._cadence, held)[1] | part._cadence
        self._crowds = split_by_wallet(self._crowds, held)[1] | part._crowds

    def learn_one(self, transfer: TransferView) -> None:
        """Without the state nothing is learned: the engine calls :meth:`learn_with_state`."""

    def learn_with_state(self, transfer: TransferView, state: WalletState) -> None:
        """Remember a large payment: how much it was, and to whom.

        Called before the transfer is counted, also for a transfer this detector froze on (see
        ``learns_from_freezes``). Payments of at least a third of ``fresh_floor_share`` of the
        balance to anyone but the exchange's own and configured counterparties are kept for
        ``fresh_history_days``; the largest of them that went to a destination paid fewer than
        ``fresh_regular_count`` times in that history (customers, whales; not the market maker)
        is what this wallet pays one address in ordinary life. Amounts, not shares: customers
        and whales size their withdrawals by their own needs, not by the hot wallet's balance of
        the day.
        """
        if not self.large_fresh or transfer.direction is not _OUT or transfer.status is _RETRACTED:
            return
        dest = transfer.counterparty
        if dest in state.internal:
            return
        key = (transfer.chain, transfer.wallet, transfer.asset)
        now = state.now
        units = state.units
        if self.batch_share > 0:
            cadence = self._cadence.get(key)
            if cadence is None:
                cadence = self._cadence[key] = _Cadence()
            if now >= cadence.hour_start + 3600:
                cadence.roll(now, self.fast_window_s)
            cadence.add(now, units, state.scale)
        history = self._fresh.get(key)
        if history is None:
            history = self._fresh[key] = _LargePayments(
                now, state.scale, self.fresh_regular_count, state.known
            )
        if _reaches(units, state.balance_units(), self._record):
            history.forget(now - self._history_s)
            history.add(now, units, dest, state.scale)

    def fresh_bar(self, transfer: TransferView, state: WalletState) -> int | None:
        """The smallest payment to a first-seen address that freezes, in the state's units.

        ``fresh_floor_share`` of the balance at the hour's start, or the level this wallet's
        ordinary payments (to anyone but its regular counterparties) reach about once in
        ``fresh_return_days``, whichever is more (see the module doc). ``None`` until the wallet
        has ``fresh_min_history_s`` of history: one that has not shown its whales yet is not
        judged by its sizes.
        """
        reference = state.reference_units(state.window(self.concentration_window_s))
        return self._bar(transfer, state, reference)

    def _bar(self, transfer: TransferView, state: WalletState, reference: int) -> int | None:
        """:meth:`fresh_bar` against the balance ``reference`` (the hour's start)."""
        learned = self._learned_bar(transfer, state)
        return self._floored(reference, learned) if learned is not None else None

    def _floored(self, reference: int, learned: int) -> int:
        """``learned``, but never under ``fresh_floor_share`` of the balance ``reference``."""
        num, den = self._fresh_floor
        return max(-(-reference * num // den), learned)

    def _learned_bar(
        self,
        transfer: TransferView,
        state: WalletState,
        min_history_s: float | None = None,
        *,
        tail: bool = True,
        before: float | None = None,
    ) -> int | None:
        """The learned largest ordinary payment (of those made before ``before``, if given)
        times the return-level factor (between ``fresh_factor`` and ``fresh_factor_max``; with
        ``tail=False`` just ``fresh_factor``), or ``None`` while the wallet is younger than
        ``min_history_s`` (default ``fresh_min_history_s``)."""
        history = self._history_for(
            transfer, self.fresh_min_history_s if min_history_s is None else min_history_s
        )
        if history is None:
            return None
        now = transfer.epoch
        num, den = self._fresh_factor
        if tail and self.fresh_return_days > 0:
            # The largest of ``seen`` days of payments comes about once in that time; one that
            # comes once in ``fresh_return_days`` lies ln(fresh_return_days / seen) tail scales
            # above it (exponential tails in log units: customers' log-normal sizes, whales).
            seen_s = self._seen_s(history, now)
            steps = math.log(self.fresh_return_days * 86400 / seen_s)
            # In a withdrawal surge large payments come faster than usual, and the largest of
            # the hour lies higher: ln(rate ratio) tail scales higher.
            hour = history.since(now - 3600)
            usual = len(history.items) * 3600 / seen_s
            if hour > usual > 0:
                steps += math.log(hour / usual)
            wanted = math.exp(steps * history.spread(self.fresh_tail_k))
            if wanted * den > num:
                num, den = min(math.ceil(wanted * 1000), self._factor_max_milli), 1000
        high = history.high if before is None else history.high_before(before)
        learned: int = -(-high * num // den) * history.factor(state.scale)
        return learned

    def _paid_as_much(self, transfer: TransferView, state: WalletState, units: int) -> bool:
        """Whether this wallet paid at least ``units`` in one payment to an ordinary (not
        regular) destination within the learned history but more than a day ago, once it has
        ``single_min_history_s`` of it: the single-address rule then says such a payment as
        info, not a warning. A wallet whose customers take 3% of it several times a week warns
        at every one of them otherwise. Freezes are never touched (the large-fresh bar judges
        those), and a drain's own first steps, hours old, do not make its next ones ordinary.
        """
        if not self.large_fresh:
            return False
        history = self._history_for(transfer, self.single_min_history_s)
        if history is None:
            return False
        factor = history.factor(state.scale)
        if history.high * factor < units:  # the cached largest: most payments stop here
            return False
        return history.high_before(transfer.epoch - 86400) * factor >= units

    def _history_for(self, transfer: TransferView, min_history_s: float) -> _LargePayments | None:
        """The large-payment history of ``transfer``'s wallet and asset, without what is older
        than ``fresh_history_days``, once it is ``min_history_s`` old; ``None`` before."""
        history = self._fresh.get((transfer.chain, transfer.wallet, transfer.asset))
        now = transfer.epoch
        if history is None or now - history.first_time < min_history_s:
            return None
        history.forget(now - self._history_s)
        return history

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """Judge an outflow against the wallet's windows; ``None`` when it looks ordinary."""
        finding = self.judge(transfer, state)
        return finding.described() if finding is not None else None

    def judge(  # noqa: PLR0915 - the hot path, kept in one frame on purpose
        self, transfer: TransferView, state: WalletState
    ) -> Finding | None:
        """:meth:`score_one` with the finding's words and numbers left to
        :meth:`~detectors.base.Finding.described` (the engine describes only what it alerts on).
        """
        if transfer.direction is not _OUT or transfer.status is _RETRACTED:
            return None
        dest = transfer.counterparty
        if dest in state.internal:
            return None
        units = state.units
        if units <= 0:
            return None
        if state.role == "cold" and dest not in state.known:
            return self._cold_outflow(transfer, state, units)

        now = state.now
        window = state.window(self.window_s)
        conc = state.window(self.concentration_window_s)
        ref_w = state.reference_units(window)
        ref_c = state.reference_units(conc)

        # (level, score, rule) per rule that fired; level 1 = warning, 2 = freeze.
        fired: list[tuple[int, float, str]] = []
        seen = state.first_seen(dest, units)
        new = dest not in state.known and (
            seen is None or now - seen.time < state.new_destination_age_s
        )
        total = window.total + units
        total_c = conc.total + units
        if _reaches(total, ref_w, self._total_warn) or _reaches(total_c, ref_c, self._total_long):
            # What went to the wallet's trusted counterparties (the treasury's sweeps, the market
            # maker's payouts) is not part of a drain: the rule counts the rest.
            trusted_w, trusted_c = self._trusted(transfer, state, window, conc, units)
            totals = (total - trusted_w, total_c - trusted_c)
            self._total(transfer, state, window, conc, units, new, totals, (ref_w, ref_c), fired)

        if new:
            # A new destination. What it received while new, in the hour and in the day:
            paid = state.new_outflows_to(dest)
            shared: bool | None = None  # paid as a shared deposit address is (asked once)
            to_dest, count, largest = units, 1, units
            to_dest_day, count_day = units, 1
            if paid:
                conc_horizon = conc.horizon
                bleed_horizon = state.watermark - self.bleed_window_s
                for outflow in paid:
                    if outflow.time > conc_horizon:
                        to_dest += outflow.units
                        count += 1
                        largest = max(largest, outflow.units)
                    if outflow.time > bleed_horizon:
                        to_dest_day += outflow.units
                        count_day += 1
            if _reaches(to_dest, ref_c, self._single_warn):
                level = 2 if _reaches(to_dest, ref_c, self._single_freeze) else 1
                if level == 2 and self.large_fresh:
                    # Not above what this wallet's own customers and whales may pay one address.
                    learned = self._learned_bar(
                        transfer, state, self.single_min_history_s, tail=False
                    )
                    if (
                        learned is not None
                        and to_dest < learned
                        and not _reaches(to_dest - largest, ref_c, self._large)
                    ):
                        # (A whale's payment comes alone: a second large one to the same new
                        # address within the hour is not what whales do.)
                        level = 1
                if level == 1 and self._paid_as_much(transfer, state, to_dest):
                    level = 0
                    fired.append((0, 0.0, "familiar_size"))
                score = _ratio(to_dest, ref_c, float(self.single_freeze_share))
                fired.append((level, score, "single"))
            if count >= self.repeat_min_count and _reaches(to_dest, ref_c, self._repeat):
                # The third payment to the same new address within the hour: drains repeat; a
                # customer (or a whale) paying one fresh address twice in an hour is seen,
                # thrice that much is not.
                score = max(1.0, _ratio(to_dest, ref_c, float(self.repeat_freeze_share)))
                shared = self._shared(transfer, state, paid, units, (count_day, to_dest_day), fired)
                fired.append((1 if shared else 2, score, "repeat"))
            if self.large_fresh and seen is None and _reaches(units, ref_c, self._fresh_floor):
                self._large_fresh(transfer, state, conc, units, fired)
            if self.daily_chance > 0 and _reaches(units, ref_c, self._large):
                self._daily(transfer, state, ref_c, fired)

            if state.is_midsize(units):
                mid_total = window.mid_total + units
                if window.mid_count + 1 >= self.burst_min_count and _reaches(
                    mid_total, ref_w, self._burst_warn
                ):
                    level = 2 if _reaches(mid_total, ref_w, self._burst_freeze) else 1
                    if level == 2 and not _reaches(
                        window.mid_count + 1, window.count + 1, self._burst_crowd
                    ):
                        # A crowd of customers that happens to hold a few large ones (a
                        # withdrawal surge) is not a burst: the mid-size ones must stand out.
                        level = 1
                    # One large payment among customers' is asked first: it reads only the
                    # window, the chance reads the day.
                    if level == 2 and self._one_large(window, units, mid_total, ref_w):
                        level = 1
                    if level == 2 and not self._burst_unlikely(state, window, dest):
                        level = 1
                    score = _ratio(mid_total, ref_w, float(self.burst_freeze_share))
                    if level == 1 and self._familiar(transfer, now, score, "burst", fired):
                        level = 0
                    fired.append((level, score, "burst"))
                self._large_pair(transfer, state, units, ref_c, fired)
                self._sustained_burst(transfer, state, conc, ref_c, fired)

            if count_day >= self.bleed_min_count:
                ref_b = state.reference_units(state.window(self.bleed_window_s))
                if _reaches(to_dest_day, ref_b, self._bleed_warn):
                    level = 2 if _reaches(to_dest_day, ref_b, self._bleed_freeze) else 1
                    if level == 2 and shared is None:
                        day = (count_day, to_dest_day)
                        shared = self._shared(transfer, state, paid, units, day, fired)
                    if shared:
                        level = 1
                    score = _ratio(to_dest_day, ref_b, float(self.bleed_freeze_share))
                    fired.append((level, score, "slow_bleed"))

            if _reaches(units, ref_c, self._test_drain) and self._tested(state, dest, seen, ref_c):
                score = max(1.0, _ratio(units, ref_c, float(self.test_drain_share)))
                fired.append((2, score, "test_then_drain"))

        if not fired:
            return None
        return self._finding(transfer, state, units, fired)

    def _shared(  # noqa: PLR0917 - what judge() already worked out
        self,
        transfer: TransferView,
        state: WalletState,
        paid: list[Outflow] | None,
        units: int,
        day: tuple[int, int],
        fired: list[tuple[int, float, str]],
    ) -> bool:
        """Whether a new address the repeat or bleed rule would freeze on is paid as another
        exchange's shared deposit address is, one it was not paid before (where a deposit is
        told apart by a memo or tag): at least ``shared_min_count`` payments within
        ``bleed_window_s`` whose median is under ``shared_size_ratio`` times the wallet's usual
        payment (many customers paying what customers pay), together under ``shared_max_share``
        of the balance. Then the rule warns (``rule_shared_address``): a thief who bleeds the
        wallet in customer-sized steps takes a hundred of them for 5%.

        ``day`` is what :meth:`judge` counted of them: the payments within ``bleed_window_s``
        (this one too) and their sum. Asked once per transfer, when one of the two would freeze.
        """
        count, total = day
        if self.shared_min_count <= 0 or count < self.shared_min_count:
            return False
        cadence = self._cadence.get((transfer.chain, transfer.wallet, transfer.asset))
        usual = cadence.usual_payment(state.scale) if cadence is not None else 0
        if usual <= 0:
            return False
        horizon = state.watermark - self.bleed_window_s
        sizes = [o.units for o in paid or () if o.time > horizon]
        sizes.append(units)
        if median_high(sizes) >= self.shared_size_ratio * usual:
            return False
        ref = state.reference_units(state.window(self.bleed_window_s))
        if _reaches(total, ref, self._shared_max):
            return False
        fired.append((0, 0.0, "shared_address"))
        return True

    def _tested(
        self, state: WalletState, dest: str, seen: FirstSeen | None, ref: int
    ) -> str | None:
        """The tiny test ``dest`` had within ``test_window_s`` in this asset, or within
        ``peer_test_window_s`` in another of the wallet's
        (:attr:`~detectors.base.WalletState.peers`) but the chain's fee coins
        (:attr:`fee_coins`), if any ("1 USDT").

        Tiny is at most ``test_max_share`` of the balance of the asset it came in (``ref``, the
        reference balance, for this one).
        """
        num, den = self._test_max
        if seen is not None:
            if seen.time >= state.now - self.test_window_s and seen.units * den <= ref * num:
                return f"{human_units(seen.units, state.scale)} {state.asset}"
        else:
            found = state.peer_first_seen(dest, self.fee_coins.get(state.wallet.chain, ()))
            if found is not None:
                peer, test = found
                horizon = state.now - self.peer_test_window_s
                if test.time >= horizon and test.units * den <= peer.balance_units() * num:
                    return f"{human_units(test.units, peer.scale)} {peer.asset}"
        return None

    def _total(  # noqa: PLR0917 - what judge() already worked out
        self,
        transfer: TransferView,
        state: WalletState,
        window: Window,
        conc: Window,
        units: int,
        new: bool,
        totals: tuple[int, int],
        refs: tuple[int, int],
        fired: list[tuple[int, float, str]],
    ) -> None:
        """The total-outflow rule on ``totals`` (of the last ``window_s`` and of the hour, this
        payment included, trusted counterparties left out) against the balances ``refs`` at
        their starts; ``new`` is whether this payment's destination is new."""
        (total, total_c), (ref_w, ref_c) = totals, refs
        reaches_w = _reaches(total, ref_w, self._total_warn)
        reaches_c = _reaches(total_c, ref_c, self._total_long)
        if not (reaches_w or reaches_c):
            return
        # A withdrawal surge lasts for hours; a drain starts from ordinary traffic. Heavy outflow
        # like the rest of the hour's only warns (the whale, fan-out and rate rules still judge
        # each payment).
        top = 2 if self._sudden(total, total_c - total) else 1
        if top == 2 and self._crowd(window, conc, units, self._batching(transfer), state.scale):
            top = 1
        if top == 2 and self._one_payment(
            self._largest_single(transfer, state, window, conc, new), totals, refs
        ):
            # A single large payment to a new address is the size rules' to judge: they know
            # this wallet's whales, and this rule does not. One to a whale's own address, paid
            # as much before, is a whale's.
            top = 1
        score_w = _ratio(total, ref_w, float(self.total_freeze_share)) if reaches_w else 0.0
        score_c = _ratio(total_c, ref_c, float(self.total_long_freeze_share)) if reaches_c else 0.0
        if top == 1 and self._familiar(transfer, state.now, max(score_w, score_c), "total", fired):
            top = 0
        if reaches_w:
            level = min(top, 2 if _reaches(total, ref_w, self._total_freeze) else 1)
            fired.append((level, score_w, "total"))
        if reaches_c:
            fired.append((top, score_c, "total"))

    def _returning(
        self, history: _LargePayments | None, scale: int, dest: str, time: float, units: int
    ) -> bool:
        """Whether ``dest`` got at least half of ``units`` (at ``scale``) from the wallet more
        than a day before ``time``, within ``fresh_history_days``: a whale paying its own
        address again (blind replay: 4.4 then 7.7 BTC, 190 then 210 BNB, days apart). A
        thief's address is fresh, and a drain's own first payment, minutes or hours old, does
        not count."""
        if history is None:
            return False
        return history.paid_before(dest, time - 86400, -(-units // (2 * history.factor(scale))))

    def _largest_single(
        self, transfer: TransferView, state: WalletState, window: Window, conc: Window, new: bool
    ) -> tuple[int, int]:
        """The largest payment in ``window`` and in ``conc`` (this one among them, ``new``
        whether its destination is new) that is one payment for the size rules to judge: to a
        new destination, or to a whale's own address (:meth:`_returning`); 0 when none is."""
        history = self._fresh.get((transfer.chain, transfer.wallet, transfer.asset))
        scale, units = state.scale, state.units

        def single(dest: str, time: float, amount: int, is_new: bool) -> bool:
            return is_new or self._returning(history, scale, dest, time, amount)

        largest_c = units if single(transfer.counterparty, state.now, units, new) else 0
        largest_w, horizon = largest_c, window.horizon
        for outflow in conc.items:
            amount, recent = outflow.units, outflow.time > horizon
            if amount <= largest_c and (amount <= largest_w or not recent):
                continue  # no larger than what was found, whatever it is
            if single(outflow.counterparty, outflow.time, amount, outflow.new):
                largest_c = max(largest_c, amount)
                if recent:
                    largest_w = max(largest_w, amount)
        return largest_w, largest_c

    def _one_payment(
        self, largest: tuple[int, int], totals: tuple[int, int], refs: tuple[int, int]
    ) -> bool:
        """Whether the total rule's outflow is one payment to a new address (or a whale's own)
        and little else: without the ``largest`` such payment of each window
        (:meth:`_largest_single`) neither reaches ``total_warn_share`` (as for the learned
        baseline, one payment is not a rate), and that payment took less than
        ``total_alone_share`` of the balance. A large payment to a familiar destination (a
        vault's sweep three times its usual) stays this rule's: no other judges it."""
        (largest_w, largest_c), (total, total_c), (ref_w, ref_c) = largest, totals, refs
        if _reaches(largest_w, ref_w, self._total_alone) or _reaches(
            largest_c, ref_c, self._total_alone
        ):
            return False  # half the wallet in one payment: freeze before the treasury refills it
        return not (
            _reaches(total - largest_w, ref_w, self._total_warn)
            or _reaches(total_c - largest_c, ref_c, self._total_warn)
        )

    def _familiar(
        self,
        transfer: TransferView,
        now: float,
        score: float,
        rule: str,
        fired: list[tuple[int, float, str]],
    ) -> bool:
        """Whether what ``rule`` would warn of is something this wallet's customers do.

        Asked for heavy outflow like the hour's or a crowd's (the total rule) and for a burst
        of mid-size payments that does not freeze. Remembers ``score`` for the hour, and
        answers whether an hour at least 12 hours and at most ``crowd_memory_s`` ago saw one
        at least ``1 / crowd_familiar_factor`` as large. A lean hot wallet whose customers take
        a fifth of it at every day's peak warns on the first such day of the week and on a
        surge half again larger, not every day. A familiar one is marked in ``fired``
        (``rule_familiar_crowd``); the rule then says it as info.
        """
        if self.crowd_memory_s <= 0:
            return False
        key = (transfer.chain, transfer.wallet, transfer.asset, rule)
        hours = self._crowds.get(key)
        if hours is None:
            hours = self._crowds[key] = deque()
        while hours and hours[0][0] < now - self.crowd_memory_s:
            hours.popleft()
        familiar = False
        bar = score / self._crowd_familiar
        until = now - _CROWD_QUIET_S
        for when, seen in hours:
            if when > until:
                break
            if seen >= bar:
                familiar = True
                break
        if hours and now - hours[-1][0] < _CROWD_HOUR_S:
            hours[-1][1] = max(hours[-1][1], score)
        else:
            hours.append([now, score])
        if familiar:
            fired.append((0, 0.0, "familiar_crowd"))
        return familiar

    def _trusted(
        self,
        transfer: TransferView,
        state: WalletState,
        window: Window,
        conc: Window,
        units: int,
    ) -> tuple[int, int]:
        """Of ``window`` and ``conc`` (this payment included), the units paid to trusted
        counterparties, each payment up to ``regular_trust_factor`` times the largest one the
        large-payment history holds to that destination from more than a day ago: configured
        ``known_counterparties`` with one such payment, and regular destinations with
        ``fresh_regular_count`` (so never the address a drain is paying: it is new, or was paid
        only in the last day).

        An exchange's cold wallet that is not listed receives sweeps of a third of the balance
        every day or two, a market maker its payouts; an attacker who paid an address small sums
        for days still cannot drain large ones to it unseen, nor to a configured counterparty
        more than twice what it was paid before.

        Only asked when the total rule is about to fire; reads only the candidates' payments.
        """
        history = self._fresh.get((transfer.chain, transfer.wallet, transfer.asset))
        if history is None or not history.tracked or self.regular_trust_factor <= 0:
            return 0, 0
        dest = transfer.counterparty
        cutoff = state.now - 86400
        horizon_w, horizon_c = window.horizon, conc.horizon
        factor = history.factor(state.scale)
        num, den = self._regular_trust
        in_window = in_conc = 0
        for to, payments in history.tracked.items():
            if payments[-1][0] <= horizon_c and to != dest:
                continue  # nothing paid to it in the hour
            before = [u for when, u in payments if when < cutoff]
            if len(before) < history.needed(to):
                continue
            cap = max(before) * factor * num
            for when, paid_units in reversed(payments):
                if when <= horizon_c:
                    break
                if paid_units * factor * den <= cap:
                    in_conc += paid_units * factor
                    in_window += paid_units * factor if when > horizon_w else 0
            if to == dest and units * den <= cap:
                in_window += units
                in_conc += units
        return in_window, in_conc

    def _sudden(self, recent: int, before: int) -> bool:
        """Whether ``recent`` (the last ``window_s``) is ``total_sudden_ratio`` times an equal
        stretch of ``before`` (the rest of ``concentration_window_s``)."""
        stretches = self.concentration_window_s - self.window_s
        return recent * stretches >= self.total_sudden_ratio * before * self.window_s

    def _crowd(
        self, window: Window, conc: Window, units: int, cadence: _Cadence | None, scale: int
    ) -> bool:
        """Whether the last ``window_s`` is a crowd: at least ``total_crowd_min_count`` payments
        whose median is under ``total_crowd_ratio`` times the median of the rest of
        ``concentration_window_s`` (at least 10 payments there; fewer: not a crowd).

        On a wallet that pays in batches (``cadence``, see :meth:`_batching`) the rest of the
        hour is empty or the tail of the last batch: there the median is compared with the
        wallet's usual payment, the median of its last hours' medians (``scale``: the state's).
        A panic's batch is hundreds of customers paying what customers pay; a drain inside it
        is still judged payment by payment by the single-address, large-fresh and burst rules.

        Only asked when the total rule is about to freeze (a sort of the hour's payments).
        """
        count = window.count + 1
        if self.total_crowd_ratio <= 0 or count < self.total_crowd_min_count:
            return False
        hour = conc.items
        cut = len(hour) - window.count
        if cadence is not None:
            earlier = cadence.usual_payment(scale)
        elif cut >= _CROWD_MIN_BEFORE:
            earlier = median_high(o.units for o in hour[:cut])
        else:
            return False
        recent = median_high([*(o.units for o in hour[cut:]), units])
        return recent < self.total_crowd_ratio * earlier

    def _batching(self, transfer: TransferView) -> _Cadence | None:
        """The cadence of ``transfer``'s wallet if it pays in batches (see
        :meth:`_Cadence.batches` with ``batch_share``), else ``None``."""
        cadence = self._cadence.get((transfer.chain, transfer.wallet, transfer.asset))
        return cadence if cadence is not None and cadence.batches(self.batch_share) else None

    def _large_pair(
        self,
        transfer: TransferView,
        state: WalletState,
        units: int,
        ref_c: int,
        fired: list[tuple[int, float, str]],
    ) -> None:
        """Large payments to different new addresses minutes apart (a fan-out drain).

        A whale's large withdrawal to a fresh address comes alone; ``large_pair_count`` of at
        least ``large_share`` each within ``fast_window_s`` do not (one more when large only
        against what a surge left; see the module doc). Unless they leave in one of
        the wallet's payout batches (see :meth:`_in_payout_batch`), where a whale's comes with
        the hour's others: then they warn.
        """
        if self.large_pair_count <= 0:
            return
        fast = state.window(self.fast_window_s)
        # Two payments are large against the balance at the hour's start (``ref_c``): a
        # withdrawal surge that took half the wallet in twenty minutes makes its customers'
        # usual sizes large shares of what is left, and in a panic two of them come within
        # minutes. Three are large against what is left at the fast window's start, but never
        # against less than ``large_hour_floor`` of ``ref_c``: a drain in steps of 1.2% inside
        # a surge that took a fifth of the hour's balance is 0.95% of it.
        ref_f = state.reference_units(fast)
        num, den = self._large_hour_floor
        ref_s = max(ref_f, ref_c * num // den)
        large = self._large
        if not _reaches(units, ref_s, large):
            return
        new = [o.units for o in fast.items if o.new]
        count = self.large_pair_count
        large_c = _reaches(units, ref_c, large)
        n_c = 1 + sum(1 for u in new if _reaches(u, ref_c, large)) if large_c else 0
        n_s = 1 + sum(1 for u in new if _reaches(u, ref_s, large))
        if n_c >= count or n_s > count:
            # A wallet whose customers often pay this much sees such pairs by chance: ask for
            # as many as its own rate of large payments makes rare.
            count = self._large_count_needed(transfer, state, ref_c)
        if n_c >= count or n_s > count:
            level = 1 if self._in_payout_batch(transfer, fast, ref_f, state) else 2
            score = max(1.0, _ratio(units, ref_c, float(self.large_share)))
            fired.append((level, score, "large_pair"))

    def _large_count_needed(self, transfer: TransferView, state: WalletState, ref_c: int) -> int:
        """How many large payments to new addresses within ``fast_window_s`` the large-pair
        rule asks for on this wallet: ``large_pair_count``, or more while this wallet's own
        rate of large payments would bring that many together by chance more often than
        ``large_pair_chance`` times a month.

        The rate is that of the wallet's payments of at least ``large_share`` of ``ref_c`` to
        ordinary destinations in the learned history (customers and whales; not a market
        maker), before the fast window (not the payments being judged), and higher while the
        rest of the last hour brought them faster than usual (a withdrawal surge). Chance
        coincidences are Poisson: with ``lam`` such payments expected in a fast window and
        ``month`` in a month, ``k`` together come about ``month * P(N >= k - 1)`` times a month.
        On a wallet whose customers stay under 1% and whose whales take a few a week that is
        a pair; one whose customers pay 1-3% several times a day needs three, four in a panic.
        """
        count = self.large_pair_count
        if self.large_pair_chance <= 0:
            return count
        history = self._history_for(transfer, self.single_min_history_s)
        if history is None:
            return count
        num, den = self._large
        # The history's units in the state's scale.
        factor = history.factor(state.scale) * den
        sizes, seen_s, surge = self._ordinary_rate(
            history, transfer.epoch, self.fast_window_s, ref_c * num, factor
        )
        if not sizes:
            return count
        rate = len(sizes) / seen_s
        lam = rate * self.fast_window_s * surge
        month = rate * 30 * 86400
        # P(N >= k - 1) for N ~ Poisson(lam), k = count, count + 1, ... (at most 3 more).
        for _ in range(3):
            if month * _poisson_tail(lam, count - 1) <= self.large_pair_chance:
                break
            count += 1
        return count

    def watch_bar(
        self, transfer: TransferView, state: WalletState, floor: int, span_s: float, chance: float
    ) -> int:
        """The smallest outflow to a new address that freezes this wallet while an incident has
        lowered the bar (see :class:`~detectors.correlation.IncidentCorrelator`): ``floor``
        units, or more while this wallet's own payments of that size would bring one within
        ``span_s`` by chance more often than ``chance``.

        A wallet whose customers pay 1% of it several times a day pays one during any half hour
        of a panic, and two wallets frozen by chance then freeze it, and the fleet after it.
        The rate is that of the wallet's ordinary payments (not a market maker) in the learned
        history before the span (not the incident's own), faster while the last hour brought
        them faster than usual (a withdrawal surge); the bar is then above all but the
        ``chance * seen / (span_s * surge)`` largest of them. On a wallet whose whales take 1%
        a few times a week it stays at ``floor``.

        >>> from datetime import UTC, datetime, timedelta
        >>> from drainwatch.config import WalletConfig
        >>> from drainwatch.events import Direction, Transfer
        >>> wallet = WalletConfig(chain="eth", address="HOT", label="eth-hot",
        ...                       opening_balance=Decimal("2000"))
        >>> state, detector = WalletState(wallet, "ETH"), VelocityDetector()
        >>> t0 = datetime(2025, 3, 1, tzinfo=UTC)
        >>> def pay(hours, amount, to):
        ...     t = Transfer.create(chain="eth", wallet="HOT", direction=Direction.OUT,
        ...         counterparty=to, asset="ETH", amount=Decimal(amount), decimals=0,
        ...         tx_hash=f"{to}-{hours}", position=0, time=t0 + timedelta(hours=hours))
        ...     state.prepare(t)
        ...     detector.learn_with_state(t, state)
        ...     state.apply(t)
        ...     return t
        >>> for day in range(14):  # a whale of 12 ETH every other day
        ...     _ = pay(24 * day, 12 if day % 2 else 3, f"customer-{day}")
        >>> t = pay(24 * 14, 1, "someone")
        >>> detector.watch_bar(t, state, 10, 1800.0, 0.05)  # stays at the floor
        10
        >>> for hour in range(24 * 14, 24 * 21, 2):  # now 12 ETH every two hours
        ...     _ = pay(hour, 12, f"customer-{hour}")
        >>> t = pay(24 * 21, 1, "someone")
        >>> detector.watch_bar(t, state, 10, 1800.0, 0.05)  # above what customers pay
        13
        """
        if chance <= 0:
            return floor
        history = self._history_for(transfer, self.single_min_history_s)
        if history is None:
            return floor
        factor = history.factor(state.scale)
        sizes, seen_s, surge = self._ordinary_rate(history, transfer.epoch, span_s, floor, factor)
        if not sizes:
            return floor
        allowed = int(chance * seen_s / (span_s * surge))
        if len(sizes) <= allowed:
            return floor
        return heapq.nlargest(allowed + 1, sizes)[-1] * factor + 1

    def _ordinary_rate(
        self, history: _LargePayments, now: float, window_s: float, bar: int, factor: int
    ) -> tuple[list[int], float, float]:
        """The ordinary payments of ``history`` (see :meth:`_LargePayments.ordinary`) of at
        least ``bar`` (``units * factor >= bar``) made before the last ``window_s`` (not the
        payments being judged), how much history they were made in (see :meth:`_seen_s`), and
        how many times faster than their rate in it the rest of the last hour brought them (at
        least 1, the usual taken as at least one payment: one large payment in an hour is no
        surge on a wallet that makes a few a day).
        """
        hour_start = now - 3600
        sizes: list[int] = []
        in_hour = 0
        for when, units in history.ordinary(now - window_s):
            if units * factor >= bar:
                sizes.append(units)
                in_hour += when >= hour_start
        seen_s = self._seen_s(history, now)
        usual = max(len(sizes) / seen_s * (3600 - window_s), 1.0)
        return sizes, seen_s, max(1.0, in_hour / usual)

    def _seen_s(self, history: _LargePayments, now: float) -> float:
        """How much of the learned history ``history`` covers at ``now`` (at least a day)."""
        return max(min(now - history.first_time, self._history_s), 86400.0)

    def _in_payout_batch(
        self, transfer: TransferView, fast: Window, ref: int, state: WalletState
    ) -> bool:
        """Whether ``transfer`` leaves in one of its wallet's payout batches (``fast``: the
        fast window, ``ref``: the balance at its start).

        The wallet must have paid in batches (over its last ``_BATCH_MIN_HOURS`` hours or more,
        the busiest fast window of an hour held on average at least ``batch_share`` of the
        hour's payments), and the last fast window must look like one of them: at least
        ``_BATCH_MIN_SMALL`` payments under ``large_share`` of the balance (the batch's
        customers), and with this payment a third of the last hour's payments. A drain between
        batches is large payments in an empty stretch; on a wallet that pays as customers ask,
        nothing is a batch.
        """
        if self._batching(transfer) is None:
            return False
        large = self._large
        small = sum(1 for o in fast.items if not _reaches(o.units, ref, large))
        in_hour = state.window(self.concentration_window_s).count + 1
        return small >= _BATCH_MIN_SMALL and 3 * (fast.count + 1) >= in_hour

    def _one_large(self, window: Window, units: int, mid_total: int, ref_w: int) -> bool:
        """Whether the burst is one large payment and customers: without the largest of its
        mid-size payments (``units``, the one judged, among them) the rest is under
        ``burst_warn_share``. That payment is the size rules' to judge, as for the total rule
        (a whale's 3.9% and two customers' 1% made a 6% burst on the blind replay)."""
        largest = max(units, max((o.units for o in window.items if o.mid), default=0))
        return not _reaches(mid_total - largest, ref_w, self._burst_warn)

    def _burst_unlikely(self, state: WalletState, window: Window, dest: str) -> bool:
        """Whether the window's mid-size payments to new addresses, with the one being judged,
        are more than this wallet's customers make among that many payments but once in
        ``1 / burst_chance`` windows.

        The chance is the binomial tail at the share of the payments of the day before the window
        that were mid-size against today's balance (a low balance in a panic makes customers'
        usual sizes mid-size shares, of the day's payments as of the window's); with a Laplace
        prior, and only once the day held ``burst_min_history`` payments (a young wallet keeps
        the rule as it is). A panic's customers bring mid-size ones in proportion to their
        number; a drain brings them among the usual number of payments.
        """
        if self.burst_chance <= 0:
            return True
        # Customers do not pay one new address twice in a window, mid-size: a thief may.
        paid = {dest}
        for outflow in window.items:
            if outflow.mid:
                if outflow.counterparty in paid:
                    return True
                paid.add(outflow.counterparty)
        day = state.window(self.bleed_window_s)
        before = day.count - window.count  # the window is the last of the day's outflows
        if before < self.burst_min_history:
            return True
        share = (_midsize_now(day.items[:before], state) + 1) / (before + 2)
        return _binomial_tail(window.count + 1, window.mid_count + 1, share) < self.burst_chance

    def _sustained_burst(
        self,
        transfer: TransferView,
        state: WalletState,
        conc: Window,
        ref_c: int,
        fired: list[tuple[int, float, str]],
    ) -> None:
        """Mid-size payments to new addresses kept up for an hour (a drain too slow for the
        burst rule; see the module doc). Customers whose sizes run into mid-size (a long tail, a
        low balance at a busy hour, a panic) make that share of the payments all day, or come
        as a crowd; a drain makes it suddenly, among the usual number of payments.
        """
        count = conc.mid_count + 1
        if self.sustained_min_count <= 0 or count < self.sustained_min_count:
            return
        units = state.units
        total = conc.mid_total + units
        if not _reaches(total, ref_c, self._sustained):
            return
        day = state.window(self.bleed_window_s)
        hour_count, day_count = conc.count + 1, day.count + 1
        # Not a crowd: the hour's other payments are at most sustained_crowd_ratio times the
        # day's hourly average of payments (a panic's customers come many times as fast as
        # usual, and larger; a drain's own payments are no crowd).
        others = hour_count - count
        if others * self.bleed_window_s > self.sustained_crowd_ratio * day_count * 3600:
            return
        # And at most that ratio times what this hour of the day usually holds (learned with
        # the payout cadence; without it, the day's average alone): a panic that began hours
        # ago has raised the day's average too.
        cadence = self._cadence.get((transfer.chain, transfer.wallet, transfer.asset))
        usual = None if cadence is None else cadence.usual_count(state.now)
        if usual is not None and others > self.sustained_crowd_ratio * usual:
            return
        # Sudden: payments of a mid-size now make sustained_ratio times the share of the hour's
        # payments that they make of the day's. Sized against today's balance for both: at a
        # busy hour the balance runs low, and customers' usual sizes become mid-size shares.
        is_midsize = state.is_midsize
        day_mid = 1 + _midsize_now(day.items, state)
        # One pass over the hour: its payments of a mid-size now, and the largest of those
        # counted in ``total`` (mid-size when paid).
        hour_mid, largest = 1, units
        for o in conc.items:
            if o.new:
                hour_mid += is_midsize(o.units)
                if o.mid and o.units > largest:
                    largest = o.units
        # Against the rest of the day: a drain's own payments do not make its hour usual.
        rest_count, rest_mid = day_count - hour_count, day_mid - hour_mid + 1
        if hour_mid * rest_count < self.sustained_ratio * rest_mid * hour_count:
            return
        # One payment is not a rate: without the largest (a whale among customers), the rest
        # must reach the share too.
        if not _reaches(total - largest, ref_c, self._sustained):
            return
        fired.append((2, _ratio(total, ref_c, float(self.sustained_freeze_share)), "sustained"))

    def _daily(
        self,
        transfer: TransferView,
        state: WalletState,
        ref_c: int,
        fired: list[tuple[int, float, str]],
    ) -> None:
        """Large payments to new addresses one after another over a day, more of them than
        this wallet's own rate makes rare, on a day no busier than usual: a drain spread thin
        over fresh addresses, each step a customer's size (see the module doc)."""
        counted = self._daily_count(transfer, state, ref_c)
        if counted is None:
            return
        count, per_day = counted
        if count < self.daily_min_count:
            return
        # The day's others besides this one, with as many chances a month as such payments come.
        monthly = per_day * 30 * _poisson_tail(per_day, count - 1)
        score = count / max(per_day, 1.0)
        if monthly <= self.daily_chance:
            fired.append((2, score, "daily"))
        elif monthly <= self.daily_warn_chance:
            # Rare enough to look at: a bleed's first days, before they are rare enough to stop.
            fired.append((1, score, "daily"))

    def _daily_count(
        self, transfer: TransferView, state: WalletState, ref_c: int
    ) -> tuple[int, float] | None:
        """How many payments of at least ``large_share`` of ``ref_c`` went to new addresses
        in the last ``bleed_window_s`` with this one, and how many a day the wallet's ordinary
        payments of that size came before it in the learned history (one more than there were,
        against a quiet wallet's none); ``None`` while the wallet has less than
        ``single_min_history_s`` of history or two days of hourly counts, and when the day
        held more than ``daily_busy_ratio`` times its usual day's payments, or its last six
        hours ``daily_busy_hours_ratio`` times their share of it: a withdrawal surge brings
        customers' large payments by the dozen, and at its start the day is not busy yet.
        """
        key = (transfer.chain, transfer.wallet, transfer.asset)
        cadence = self._cadence.get(key)
        history = self._history_for(transfer, self.single_min_history_s)
        if cadence is None or history is None:
            return None
        now, day_s = state.now, self.bleed_window_s
        per_day = cadence.usual_day(now - day_s)
        if per_day is None:
            return None
        usual = per_day * day_s / 86400  # payments in a usual day's window
        day = state.window(day_s)
        latest = day.count_after(now - _DAILY_HOURS_S)  # payments in the last _DAILY_HOURS_S
        if (
            day.count > self.daily_busy_ratio * usual
            or latest * day_s > self.daily_busy_hours_ratio * usual * _DAILY_HOURS_S
        ):
            return None
        count = 1 + len(self._daily_large(day, ref_c))
        num, den = self._large
        bar = ref_c * num
        factor = history.factor(state.scale) * den
        before = sum(1 for _, units in history.ordinary(now - day_s) if units * factor >= bar)
        seen_s = max(self._seen_s(history, now) - day_s, float(day_s))
        return count, (before + 1) * 86400 / seen_s

    def _daily_large(self, day: Window, ref_c: int) -> list[Outflow]:
        """The day's payments to new addresses of at least ``large_share`` of ``ref_c``: what
        the daily rule counts (the one judged aside)."""
        num, den = self._large
        bar = ref_c * num
        return [o for o in day.evidence(new_only=True) if o.units * den >= bar]

    def _daily_evidence(self, state: WalletState, conc: Window) -> tuple[list[Outflow], int]:
        """The day's payments the daily rule counted (the one judged aside), and the balance
        at the day's start."""
        day = state.window(self.bleed_window_s)
        return self._daily_large(day, state.reference_units(conc)), state.reference_units(day)

    def _daily_words(self, transfer: TransferView, state: WalletState, conc: Window) -> str:
        """What the daily rule counted, against the wallet's usual, for the summary."""
        counted = self._daily_count(transfer, state, state.reference_units(conc))
        if counted is None:
            return ""
        return (
            f" ({counted[0]} payments of {self.large_share:%} or more to new addresses within "
            f"{self.bleed_window_s // 3600} h; it usually makes {counted[1]:.1f} a day)"
        )

    def _large_fresh(
        self,
        transfer: TransferView,
        state: WalletState,
        conc: Window,
        units: int,
        fired: list[tuple[int, float, str]],
    ) -> None:
        """A payment to a first-seen address larger than this wallet's ordinary ones: freeze."""
        ref_c = state.reference_units(conc)
        bar = self._bar(transfer, state, ref_c)
        if bar is not None:
            if units >= bar > 0:
                fired.append((2, units / bar, "large_fresh"))
            return
        if self.fresh_young_pair_s <= 0:
            return
        # A young wallet (between single_min_history_s and fresh_min_history_s) may not have
        # shown its whales yet, so one payment above the bar is not enough; a second one within
        # fresh_young_pair_s, the first to another new address, is (whales come alone). The bar
        # is fresh_factor times the largest ordinary payment before that time.
        horizon = transfer.epoch - self.fresh_young_pair_s
        learned = self._learned_bar(
            transfer, state, self.single_min_history_s, tail=False, before=horizon
        )
        if learned is None:
            return
        bar = self._floored(ref_c, learned)
        if units < bar or bar <= 0:
            return
        if any(o.new and o.units >= bar and o.time > horizon for o in conc.items):
            fired.append((2, units / bar, "large_fresh_pair"))

    def _finding(
        self,
        transfer: TransferView,
        state: WalletState,
        units: int,
        fired: list[tuple[int, float, str]],
    ) -> Finding:
        level = max(f[0] for f in fired)
        score = max(f[1] for f in fired)
        return Finding(
            detector=self.name,
            severity=_SEVERITY_OF_LEVEL[level],
            freeze=level == 2,
            score=score,
            summary="",
            describe=lambda: self._describe(transfer, state, units, fired),
            crowd=level > 0 and all(f[2] in _CROWD_RULES for f in fired if f[0] == level),
        )

    def _focus(
        self, state: WalletState, rules: set[str], dest: str, window: Window, conc: Window
    ) -> tuple[list[Outflow], int, int, str]:
        """What a finding's summary talks about: the outflows (the one judged aside), the
        balance they are a share of, how many addresses they went to and what those are. One
        address when a single-address rule fired."""
        single_rules = {"single", "test_then_drain", "repeat"}
        focus: list[Outflow]
        if "slow_bleed" in rules and not rules & single_rules:
            bleed = state.window(self.bleed_window_s)
            return (
                bleed.evidence(dest, new_only=True),
                state.reference_units(bleed),
                1,
                "new address",
            )
        if "daily" in rules and not rules & single_rules:
            focus, ref = self._daily_evidence(state, conc)
            return focus, ref, len({o.counterparty for o in focus} | {dest}), "new address"
        if rules & single_rules:
            return conc.evidence(dest, new_only=True), state.reference_units(conc), 1, "new address"
        if rules & _MIDSIZE_RULES:
            span_w = (
                window
                if "burst" in rules
                else conc
                if rules & _HOUR_RULES
                else state.window(self.fast_window_s)
            )
            focus = [o for o in span_w.evidence(new_only=True) if o.mid]
            n_dest = len({o.counterparty for o in focus} | {dest})
            return focus, state.reference_units(span_w), n_dest, "new address"
        focus = window.evidence()
        n_dest = len({o.counterparty for o in focus} | {dest})
        return focus, state.reference_units(window), n_dest, "address"

    def _describe(
        self,
        transfer: TransferView,
        state: WalletState,
        units: int,
        fired: list[tuple[int, float, str]],
    ) -> Description:
        """The summary, metrics and evidence of a finding (against the state it was judged in)."""
        score = max(f[1] for f in fired)
        rules = {f[2] for f in fired}
        dest = transfer.counterparty
        now = state.now
        new = state.is_new_destination(dest, now, units)
        window = state.window(self.window_s)
        conc = state.window(self.concentration_window_s)

        focus, ref, n_dest, what = self._focus(state, rules, dest, window, conc)
        drained = sum(o.units for o in focus) + units
        first = focus[0].time if focus else now
        span = max(0.0, now - first)
        rate_span = max(span, float(self.min_rate_span_s))
        before = state.balance_units()
        after = max(before - units, 0)
        empty_s = int(after * rate_span // drained) if drained else 0

        summary = (
            f"{_percent(drained, ref)}% of {state.label} drained "
            f"{f'in {describe_duration(span)}' if span >= 1 else 'at once'} "
            f"to {n_dest} {what}{'es' if n_dest != 1 else ''}"
        )
        if "test_then_drain" in rules:
            ref_c = state.reference_units(state.window(self.concentration_window_s))
            test = self._tested(state, dest, state.first_seen(dest, units), ref_c)
            summary += f" (after a {test} test)" if test else ""
        if "shared_address" in rules and max(f[0] for f in fired) < 2:
            summary += (
                " (many customer-sized payments, as to another exchange's shared deposit address)"
            )
        if "daily" in rules:
            summary += self._daily_words(transfer, state, conc)
        if "familiar_crowd" in rules and max(f[0] for f in fired) == 0:
            summary += " (no heavier than its busy hours this week)"
        elif "familiar_size" in rules and max(f[0] for f in fired) == 0:
            summary += (
                f" (no larger than a payment it made to an ordinary address within "
                f"{self.fresh_history_days} days)"
            )
        left = state.left_after(units)
        summary += (
            f"; {left + ', ' if left else ''}at this rate empty in "
            f"{describe_duration(empty_s, round_up=True)}"
            if after
            else "; the wallet is empty"
        )

        scale = state.scale
        metrics = {
            "amount": format_units(units, scale),
            "balance_before": format_units(before, scale),
            "balance_after": format_units(after, scale),
            "balance_known": "1" if state.balance_known else "0",
            "reference_balance": format_units(ref, scale),
            "drained": format_units(drained, scale),
            "share": ratio_string(drained, ref),
            "span_s": str(int(span)),
            "rate_per_s": ratio_string(drained, int(rate_span) * 10**scale, max(6, scale)),
            "projected_empty_s": str(empty_s),
            "score": ratio_string(int(min(score, 1e12) * 10**6), 10**6),
        }
        for rule in sorted(rules):
            metrics[f"rule_{rule}"] = "1"
        metrics.update(_window_metrics(state, dest, units, new=new))

        evidence = focus[-(_EVIDENCE_MAX - 1) :]
        return Description(
            summary=summary,
            metrics=metrics,
            transfer_ids=(*(o.transfer_id for o in evidence), transfer.id),
            tx_hashes=tuple(dict.fromkeys((*(o.tx_hash for o in evidence), transfer.tx_hash))),
        )

    def _cold_outflow(self, transfer: TransferView, state: WalletState, units: int) -> Finding:
        before = state.balance_units()
        scale = state.scale
        share = ratio_string(units, before)
        return Finding(
            detector=self.name,
            severity=Severity.CRITICAL,
            freeze=True,
            score=max(1.0, _ratio(units, before, float(self.single_freeze_share))),
            summary=(
                f"cold wallet {state.label} sent {format_units(units, scale)} {state.asset} "
                f"({_percent(units, before)}% of it) to unlisted address "
                f"{transfer.counterparty}"
            ),
            metrics={
                "amount": format_units(units, scale),
                "balance_before": format_units(before, scale),
                "balance_known": "1" if state.balance_known else "0",
                "share": share,
                "rule_cold_outflow": "1",
            },
            transfer_ids=(transfer.id,),
            tx_hashes=(transfer.tx_hash,),
        )
