"""What every detector shares: the Detector protocol, its Finding, and per-wallet state.

A detector speaks river's vocabulary: ``score_one(transfer, state)`` judges a transfer against the
wallet's state *before* that transfer and never changes anything; ``learn_one(transfer)`` updates
what the detector itself remembers. A higher score is more anomalous.

:class:`WalletState` holds the facts about one (wallet, asset): its balance as tracked from the
stream, sliding windows of outflows in event time, and the destinations it has paid before. The
engine updates it for every transfer (facts always count: the funds did leave), except that a
destination paid by a transfer some detector froze on is never learned as "seen".

Amounts inside the state are integers at a per-state scale (``units``), so sums are exact for any
size; :func:`format_units` turns them back into decimal strings.

>>> from datetime import UTC, datetime
>>> from drainwatch.config import WalletConfig
>>> from drainwatch.events import Direction, Transfer
>>> w = WalletConfig(chain="nem", address="HOT", label="nem-hot", opening_balance=Decimal("100"))
>>> s = WalletState(w, "XEM")
>>> t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty="X",
...     asset="XEM", amount=25, decimals=1, tx_hash="h1", position=0,
...     time=datetime(2018, 1, 25, 15, 4, tzinfo=UTC))
>>> s.prepare(t); s.apply(t)
True
>>> format_units(s.balance_units(), s.scale), s.is_new_destination("X", s.now)
('97.5', True)
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Final, Protocol, TypeVar, runtime_checkable

from detectors.approval import ApprovalView
from detectors.move import TransferView
from drainwatch.config import WalletConfig
from drainwatch.events import Direction, Severity, TransferStatus, normalize_address

__all__ = [
    "DEFAULT_WINDOWS_S",
    "Description",
    "Detector",
    "Finding",
    "FirstSeen",
    "LedgerAware",
    "Outflow",
    "Paid",
    "StateLearner",
    "WalletState",
    "Window",
    "busiest_total",
    "format_units",
    "human_units",
    "outgrows",
    "paid_first",
    "paid_more",
    "ratio_string",
    "to_units",
]

DEFAULT_WINDOWS_S: Final = (60, 300, 1200, 3600, 86400)

# Transfer.decimals is at most 255, so one table covers every rescale.
_POW10: Final = tuple(10**i for i in range(512))
_PENDING: Final = TransferStatus.PENDING


def to_units(value: Decimal) -> tuple[int, int]:
    """Split an exact non-negative Decimal into (integer units, decimals), without rounding.

    >>> to_units(Decimal("10.50")), to_units(Decimal("1E+3")), to_units(Decimal("7"))
    ((1050, 2), (1000, 0), (7, 0))
    """
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {value}")
    units = int("".join(map(str, digits)) or "0")
    if sign:
        units = -units
    if exponent >= 0:
        return units * _POW10[exponent], 0
    return units, -exponent


def format_units(units: int, scale: int) -> str:
    """Exact decimal string of ``units / 10**scale``, with no exponent and no trailing zeros.

    >>> format_units(1_000_000_000_000_000_000_000_000_000_001, 18)
    '1000000000000.000000000000000001'
    >>> format_units(-1500, 3), format_units(42, 0), format_units(5, 6)
    ('-1.5', '42', '0.000005')
    """
    sign = "-" if units < 0 else ""
    units = abs(units)
    if scale == 0:
        return f"{sign}{units}"
    whole, frac = divmod(units, _POW10[scale])
    digits = f"{frac:0{scale}d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def human_units(units: int, scale: int) -> str:
    """``units / 10**scale`` for a person to read at a glance, rounded down (never more than
    there is): whole units with thousands separators from 1,000 up, two decimals from 1, three
    significant digits below. Alerts keep the exact figure in their metrics.

    >>> human_units(422_999_910, 0), human_units(18_568_918_588, 8), human_units(10**18 // 3, 18)
    ('422,999,910', '185.68', '0.333')
    >>> human_units(10_857_641_429_708_819_745_024, 18), human_units(0, 6), human_units(5, 6)
    ('10,857', '0', '0.000005')
    """
    whole, frac = divmod(abs(units), _POW10[scale])
    if whole >= 1000:
        return f"{whole:,}"
    if whole >= 1 or frac == 0:
        cents = frac * 100 // _POW10[scale]
        return f"{whole}.{cents:02d}" if cents else str(whole)
    digits = len(str(frac))  # frac < 10**scale: its leading zeros are scale - digits
    keep = max(digits - 3, 0)
    return format_units(frac // _POW10[keep] * _POW10[keep], scale)


def ratio_string(numerator: int, denominator: int, places: int = 6) -> str:
    """``numerator / denominator`` rounded half-up to ``places`` decimals, as a string.

    A zero denominator (nothing known to compare with) reads as a share of 1.

    >>> ratio_string(100_000_010, 523_000_010), ratio_string(5, 0)
    ('0.191205', '1')
    """
    if denominator <= 0:
        return "1"
    scaled = (2 * numerator * _POW10[places] + denominator) // (2 * denominator)
    return format_units(scaled, places)


def busiest_total(times: list[float], values: list[float], span_s: float) -> float:
    """The most that ``values`` (at ``times``, in order) add up to within any ``span_s``
    seconds: the busiest stretch of a wallet-hour, by value or (values of 1) by count.

    >>> busiest_total([0, 10, 400], [1.0, 2.0, 2.5], 300)
    3.0
    """
    most = total = 0.0
    first = 0
    for last, moment in enumerate(times):
        total += values[last]
        while moment - times[first] >= span_s:
            total -= values[first]
            first += 1
        most = max(most, total)
    return most


@dataclass(frozen=True, slots=True)
class Description:
    """The words and numbers of a :class:`Finding`, for a finding described on demand."""

    summary: str
    metrics: dict[str, str]
    transfer_ids: tuple[str, ...]
    tx_hashes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """What a detector concluded about one transfer.

    ``metrics`` are exact decimal strings (sums, shares, seconds, counts; flags as ``"1"``).

    A detector may leave the words and numbers to ``describe``, called by :meth:`described`
    only if an alert is made of the finding (in a withdrawal surge most findings repeat a
    warning already given and are dropped). It must be called before the transfer is counted
    in the wallet state, which the engine guarantees.

    >>> lazy = Finding("velocity", Severity.WARNING, False, 0.5, "",
    ...                describe=lambda: Description("2% of hot drained", {"share": "0.02"}, (), ()))
    >>> lazy.described().summary, lazy.described().describe is None
    ('2% of hot drained', True)
    """

    detector: str
    severity: Severity
    freeze: bool
    score: float
    summary: str
    metrics: dict[str, str] = field(default_factory=dict)
    transfer_ids: tuple[str, ...] = ()
    tx_hashes: tuple[str, ...] = ()
    describe: Callable[[], Description] | None = field(default=None, compare=False, repr=False)
    crowd: bool = False
    """On the evidence of many payments (mid-size ones to several new addresses, or a rate), as a
    withdrawal surge's customers make them. A freeze so freezes its wallet and joins it to an
    incident, but lowers the bar for no other wallet; a warning so joins the incident, but is
    not made a freeze, nor its wallet frozen, when the bar drops (see
    :class:`~detectors.correlation.IncidentCorrelator`)."""

    def described(self) -> Finding:
        """This finding with its description filled in (itself when it has one)."""
        if self.describe is None:
            return self
        text = self.describe()
        return replace(
            self,
            summary=text.summary,
            metrics=text.metrics,
            transfer_ids=text.transfer_ids,
            tx_hashes=text.tx_hashes,
            describe=None,
        )


_Applied = tuple[int, str, bool]
"""What counting a transfer did: signed units (negative out), counterparty, external."""


class Outflow:
    """One external outflow kept in the windows."""

    __slots__ = ("counterparty", "mid", "new", "source", "time", "units")

    def __init__(  # noqa: PLR0917 - the fields, positional for the hot path
        self,
        time: float,
        units: int,
        counterparty: str,
        source: TransferView,
        new: bool,
        mid: bool = False,
    ) -> None:
        self.time = time
        self.units = units
        self.counterparty = counterparty
        self.source = source
        self.new = new
        """Whether the destination counted as new when the outflow happened."""
        self.mid = mid
        """A new destination and at least ``midsize_share`` of the balance: not a customer's."""

    @property
    def transfer_id(self) -> str:
        """The id of the transfer this outflow is."""
        return self.source.id

    @property
    def tx_hash(self) -> str:
        """The transaction it was in."""
        return self.source.tx_hash


Paid = tuple[float, int, int, float, int, int]
"""What a wallet paid one destination: (last payment's time, largest payment before the current
day, largest payment of the current day, when the current day began, sum of the current day,
largest sum of a day before the current one). A "day" runs from the first payment after the
previous one ended."""

_DAY_S: Final = 86400.0


_Kept = Paid | tuple[float, int]
"""A familiar destination's :data:`Paid` as kept: most were paid once, ``(time, units)``."""


def _kept(paid: Paid) -> _Kept:
    last, before, peak, since, total, _ = paid
    return (since, total) if before == 0 and last == since and peak == total else paid


def _paid(kept: _Kept) -> Paid:
    if len(kept) == 2:
        since, units = kept
        return (since, 0, units, since, units, 0)
    return kept


def paid_first(now: float, units: int) -> Paid:
    """The record of a destination paid ``units`` for the first time at ``now``."""
    return (now, 0, units, now, units, 0)


def paid_more(paid: Paid, now: float, units: int) -> Paid:
    """``paid`` after one more payment of ``units`` at ``now``.

    >>> paid_more(paid_more(paid_first(0.0, 5), 60.0, 7), 90000.0, 3)
    (90000.0, 7, 3, 90000.0, 3, 12)
    """
    last, before, peak, since, total, before_day = paid
    if now - since >= _DAY_S:
        return (max(last, now), max(before, peak), units, now, units, max(before_day, total))
    return (max(last, now), before, max(peak, units), since, total + units, before_day)


def outgrows(paid: Paid, now: float, units: int, factor: int) -> bool:
    """Whether paying ``units`` at ``now`` takes the destination's day beyond ``factor`` times
    the largest payment it had before that day, and beyond ``factor`` times its largest day
    before (a familiar address vouches for payments like those it had, not for many times as
    much, at once or spread over the day; an address many customers are paid to, another
    exchange's shared deposit address, has days of many payments).

    >>> warmed = paid_first(0.0, 5)  # a customer-sized withdrawal...
    >>> outgrows(warmed, 3 * 86400.0, 100, 20), outgrows(warmed, 3 * 86400.0, 101, 20)
    (False, True)
    >>> bleed = paid_more(warmed, 3 * 86400.0, 40)  # ...then 40 at a time, days later
    >>> outgrows(bleed, 3 * 86400.0 + 1200, 40, 20), outgrows(bleed, 3 * 86400.0 + 2400, 61, 20)
    (False, True)
    >>> hub = paid_first(0.0, 5)
    >>> for minute in range(1, 100):  # a hundred payments of 5 in a day...
    ...     hub = paid_more(hub, minute * 60.0, 5)
    >>> outgrows(hub, 2 * 86400.0, 10_000, 20), outgrows(hub, 2 * 86400.0, 10_001, 20)
    (False, True)
    """
    _, before, peak, since, total, before_day = paid
    if now - since >= _DAY_S:
        before, before_day, total = max(before, peak), max(before_day, total), 0
    day = total + units
    return factor > 0 and day > factor * before and day > factor * before_day


class FirstSeen:
    """The first outflow a wallet made to a destination, and what it paid it since."""

    __slots__ = ("key", "paid", "time", "units")

    def __init__(self, time: float, units: int, key: Hashable) -> None:
        self.time = time
        self.units = units
        self.key = key
        """The dedup key of that first transfer (a retraction of it forgets the destination)."""
        self.paid = paid_first(time, units)


_FAMILIAR: Final = FirstSeen(float("-inf"), 0, None)
"""What :meth:`WalletState.first_seen` returns for a destination first paid long ago."""


class _OutflowLog:
    """External outflows in event-time order with running sums: every window is a view of it.

    ``cum_*[i]`` sums the first ``i`` items, so a window's total is two lookups and a bisect;
    ``by_dest`` lists, per destination, the outflows that were to a new destination.
    """

    __slots__ = ("by_dest", "cum_mid", "cum_mid_n", "cum_new", "cum_total", "items", "times")

    def __init__(self) -> None:
        self.items: list[Outflow] = []
        self.times: list[float] = []
        self.cum_total = [0]
        self.cum_new = [0]
        self.cum_mid = [0]
        self.cum_mid_n = [0]
        self.by_dest: dict[str, list[Outflow]] = {}

    def add(self, outflow: Outflow) -> None:
        times = self.times
        if times and outflow.time < times[-1]:
            # A late arrival: insert it in time order and redo the sums after it.
            index = bisect.bisect_right(times, outflow.time)
            times.insert(index, outflow.time)
            self.items.insert(index, outflow)
            self._resum(index)
        else:
            times.append(outflow.time)
            self.items.append(outflow)
            units = outflow.units
            self.cum_total.append(self.cum_total[-1] + units)
            if outflow.new:
                self.cum_new.append(self.cum_new[-1] + units)
                if outflow.mid:
                    self.cum_mid.append(self.cum_mid[-1] + units)
                    self.cum_mid_n.append(self.cum_mid_n[-1] + 1)
                else:
                    self.cum_mid.append(self.cum_mid[-1])
                    self.cum_mid_n.append(self.cum_mid_n[-1])
            else:
                self.cum_new.append(self.cum_new[-1])
                self.cum_mid.append(self.cum_mid[-1])
                self.cum_mid_n.append(self.cum_mid_n[-1])
        if outflow.new:
            listed = self.by_dest.get(outflow.counterparty)
            if listed is None:
                self.by_dest[outflow.counterparty] = [outflow]
            else:
                listed.append(outflow)
                if len(listed) > 1 and outflow.time < listed[-2].time:
                    listed.sort(key=lambda o: o.time)

    def _resum(self, start: int) -> None:
        """Recompute the running sums from item ``start`` on."""
        items = self.items
        for cum in (self.cum_total, self.cum_new, self.cum_mid, self.cum_mid_n):
            del cum[start + 1 :]
        total, new, mid, mid_n = (
            self.cum_total[start],
            self.cum_new[start],
            self.cum_mid[start],
            self.cum_mid_n[start],
        )
        for outflow in items[start:]:
            total += outflow.units
            if outflow.new:
                new += outflow.units
                if outflow.mid:
                    mid += outflow.units
                    mid_n += 1
            self.cum_total.append(total)
            self.cum_new.append(new)
            self.cum_mid.append(mid)
            self.cum_mid_n.append(mid_n)

    def remove(self, source: TransferView) -> None:
        """Take out a retracted outflow, if it is here."""
        for index in range(len(self.items) - 1, -1, -1):
            outflow = self.items[index]
            if outflow.source is source or outflow.source.dedup_key == source.dedup_key:
                del self.items[index]
                del self.times[index]
                self._resum(index)
                listed = self.by_dest.get(outflow.counterparty)
                if listed is not None and outflow in listed:
                    listed.remove(outflow)
                    if not listed:
                        del self.by_dest[outflow.counterparty]
                return

    def trim(self, horizon: float) -> None:
        """Forget outflows at or before ``horizon`` (older than every window)."""
        count = bisect.bisect_right(self.times, horizon)
        if not count:
            return
        by_dest = self.by_dest
        for outflow in self.items[:count]:
            if outflow.new:
                listed = by_dest.get(outflow.counterparty)
                if listed is not None:
                    if listed[0] is outflow:
                        del listed[0]
                    elif outflow in listed:
                        listed.remove(outflow)
                    if not listed:
                        del by_dest[outflow.counterparty]
        del self.items[:count]
        del self.times[:count]
        for cum in (self.cum_total, self.cum_new, self.cum_mid, self.cum_mid_n):
            del cum[:count]

    def rescale(self, factor: int) -> None:
        for outflow in self.items:
            outflow.units *= factor
        for cum in (self.cum_total, self.cum_new, self.cum_mid):
            cum[:] = [value * factor for value in cum]


class Window:
    """External outflows of the last ``span_s`` seconds of event time, with their sums.

    A view of the wallet's outflow log as of the latest event time (the state's watermark):
    an outflow at or before ``watermark - span_s`` is out. Get one from
    :meth:`WalletState.window`, which brings it up to date.
    """

    __slots__ = (
        "_log",
        "_start",
        "changes",
        "horizon",
        "mid_count",
        "mid_total",
        "new_total",
        "span_s",
        "total",
        "watermark",
    )

    def __init__(self, log: _OutflowLog, span_s: int) -> None:
        self._log = log
        self.span_s = span_s
        self._start = 0
        self.horizon = float("-inf")
        self.watermark = float("nan")
        self.changes = -1
        """The event time and the owner's count of log changes the view was last synced at (a
        cache: a pickle carries neither, and a view unpickled is synced at its first read)."""
        self.total = 0
        """Everything external that left in the window."""
        self.new_total = 0
        """What left to destinations that were new when paid."""
        self.mid_total = 0
        self.mid_count = 0
        """Mid-size outflows to new destinations: their sum and count."""

    def __getstate__(self) -> tuple[_OutflowLog, int]:
        # The sums are a cache of the log: a pickle (a snapshot) carries only the log.
        return self._log, self.span_s

    def __setstate__(self, state: tuple[_OutflowLog, int]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    def sync(self, watermark: float) -> None:
        """Recompute the view for the latest event time ``watermark``."""
        log = self._log
        self.watermark = watermark
        self.horizon = horizon = watermark - self.span_s
        start = self._start = bisect.bisect_right(log.times, horizon)
        self.total = log.cum_total[-1] - log.cum_total[start]
        self.new_total = log.cum_new[-1] - log.cum_new[start]
        self.mid_total = log.cum_mid[-1] - log.cum_mid[start]
        self.mid_count = log.cum_mid_n[-1] - log.cum_mid_n[start]

    @property
    def items(self) -> list[Outflow]:
        """The outflows in the window, oldest first."""
        return self._log.items[self._start :]

    @property
    def count(self) -> int:
        """How many external outflows the window holds."""
        return len(self._log.times) - self._start

    def count_after(self, time: float) -> int:
        """How many outflows of the window came after ``time`` (by bisection: no walk)."""
        times = self._log.times
        return len(times) - bisect.bisect_right(times, max(time, self.horizon))

    def new_to(self, counterparty: str) -> int:
        """What left in the window to ``counterparty`` while it was a new destination."""
        listed = self._log.by_dest.get(counterparty)
        if listed is None:
            return 0
        horizon = self.horizon
        return sum(o.units for o in listed if o.time > horizon)

    def new_count_to(self, counterparty: str) -> int:
        """How many outflows of the window went to ``counterparty`` while it was new."""
        listed = self._log.by_dest.get(counterparty)
        if listed is None:
            return 0
        horizon = self.horizon
        return sum(1 for o in listed if o.time > horizon)

    def new_destinations(self) -> set[str]:
        """The destinations paid in the window while they were new."""
        return {o.counterparty for o in self.items if o.new}

    def first_time(self, counterparty: str | None = None, new_only: bool = False) -> float | None:
        """Time of the oldest outflow (to ``counterparty``, or to a new destination) here."""
        for outflow in self.items:
            if (counterparty is None or outflow.counterparty == counterparty) and (
                outflow.new or not new_only
            ):
                return outflow.time
        return None

    def evidence(self, counterparty: str | None = None, new_only: bool = False) -> list[Outflow]:
        """The outflows here (to ``counterparty``, or to new destinations), oldest first."""
        return [
            o
            for o in self.items
            if (counterparty is None or o.counterparty == counterparty) and (o.new or not new_only)
        ]


class WalletState:
    """Facts about one watched (wallet, asset), kept in event time.

    Args:
        wallet: The wallet's config entry (role, label, opening balance, known counterparties).
        asset: The asset this state tracks.
        windows_s: Sliding windows of outflows kept at once.
        internal: Addresses that are the exchange's own (every listed wallet on the chain);
            transfers to them are internal and never part of a drain.
        new_destination_age_s: A destination stays "new" for this long after it was first paid,
            so a test transfer does not make the thief's address familiar.
        reorder_tolerance_s: How late a transfer may arrive; ids are remembered for the longest
            window plus this, to drop duplicates and undo retractions.
        midsize_share: An outflow to a new destination of at least this share of the balance is
            "mid-size": larger than nearly every customer withdrawal.
        outgrown_factor: A destination first paid long ago is familiar only for payments like
            those it had: a payment that takes its day's total beyond this many times the largest
            payment it had before that day, and this many times its largest day before (another
            exchange's shared deposit address has days of many payments), makes it new again
            (first seen now), so a
            customer-sized payment days before a drain does not make the thief's address
            familiar, whether the drain comes at once or bleeds. 0 turns this off. (10 also made
            a whale's reused address new for a payment 17 times its last, and added 12% to the
            warnings.)

    The balance is ``opening_balance`` + inflows - outflows, re-anchored whenever a transfer
    carries ``balance_after`` (read from the chain by a live watcher). Without an opening
    balance (or when the stream shows more leaving than the opening balance allows) the lowest
    balance that explains the stream is used, plus a cushion as large as the range the balance
    has moved over (a hot wallet is topped up long before it is empty), and shares are taken
    against the larger of that balance and the largest balance seen, so one low moment does not
    make ordinary withdrawals look huge.

    Outflows live in one time-ordered log with running sums; each window is a view of it that
    :meth:`window` brings up to date, so counting a transfer costs the same however many windows
    there are.
    """

    _peer_refs: tuple[weakref.ReferenceType[WalletState], ...] = ()

    @property
    def peers(self) -> list[WalletState]:
        """The states of this wallet's other assets, as the engine links them
        (:meth:`link_peers`): a thief may test with one asset and drain another (CoinDCX, 2025:
        1 USDT, then USDC an hour later)."""
        return [peer for ref in self._peer_refs if (peer := ref()) is not None]

    def link_peers(self, states: Iterable[WalletState]) -> None:
        """Know ``states`` (this wallet's, in other assets) as :attr:`peers`.

        Weakly: states that held each other would be cycles, which the backtest, its cycle
        collector paused, must not leave; and a snapshot does not carry them (the engine links
        the states it restores again).
        """
        self._peer_refs = tuple(weakref.ref(s) for s in states if s is not self)

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.pop("_peer_refs", None)
        return state

    def __init__(
        self,
        wallet: WalletConfig,
        asset: str,
        *,
        windows_s: Iterable[int] = DEFAULT_WINDOWS_S,
        internal: frozenset[str] = frozenset(),
        new_destination_age_s: int = 86400,
        reorder_tolerance_s: int = 300,
        midsize_share: Decimal = Decimal("0.005"),
        remember_s: int = 90 * 86400,
        outgrown_factor: int = 20,
    ) -> None:
        self.wallet = wallet
        self.role = wallet.role
        """``hot`` or ``cold``."""
        self.label = wallet.name
        """The wallet's label, or its key."""
        self.midsize_share = midsize_share
        self._mid = midsize_share.as_integer_ratio()
        self.asset = asset
        self.windows_s = tuple(sorted(set(windows_s)))
        self.internal = internal | {wallet.address}
        self.new_destination_age_s = new_destination_age_s
        self.reorder_tolerance_s = reorder_tolerance_s
        self.known = frozenset(normalize_address(a) for a in wallet.known_counterparties)
        self.scale = 0
        self._opening: int | None = None
        if wallet.opening_balance is not None:
            self._opening, self.scale = to_units(wallet.opening_balance)
        self._running = 0
        self._min_running = 0
        self._max_running = 0
        self._floor_units = self._compute_floor()
        self._log = _OutflowLog()
        self._windows = {span: Window(self._log, span) for span in self.windows_s}
        self._changes = 0
        """Counts changes to the log, so a window is recomputed only when something moved."""
        self._longest = max(self.windows_s, default=0)
        self._trim_at = float("-inf")
        self._first_seen: dict[str, FirstSeen] = {}
        """Destinations first paid recently (while they may still count as new)."""
        self._familiar: dict[str, _Kept] = {}
        """Destinations first paid long ago, and what they were paid (when last, how much)."""
        self.outgrown_factor = outgrown_factor
        self.remember_s = remember_s
        self._compact_at = float("-inf")
        self._forget_at = float("-inf")
        # Transfers counted, in two generations: the older one is dropped whole once the newer
        # one spans the retention (so each is remembered for one to two retentions).
        self._applied: dict[Hashable, _Applied] = {}
        self._applied_before: dict[Hashable, _Applied] = {}
        self._retention_s = self._longest + reorder_tolerance_s
        self._rotate_at = float("-inf")
        self.watermark = float("-inf")
        """The latest event time seen."""
        self.now = float("-inf")
        """Event time of the transfer being judged (set by :meth:`prepare`)."""
        self.units = 0
        """Amount of the transfer being judged at this state's scale (set by :meth:`prepare`):
        :meth:`units_of` it, worked out once for the detectors that all need it."""
        self.applied_count = 0

    # -- reading (what detectors may call) ---------------------------------------------------

    @property
    def balance_known(self) -> bool:
        """Whether an opening balance anchors the tracked balance."""
        return self._opening is not None

    def left_after(self, units: int) -> str:
        """What the wallet holds once ``units`` left, for an alert's words ("12.5 ETH left"):
        empty when no opening balance anchors the balance (an estimate is not a figure to act
        on). Call before the transfer is counted."""
        if self._opening is None:
            return ""
        return f"{human_units(max(self.balance_units() - units, 0), self.scale)} {self.asset} left"

    def window(self, span_s: int) -> Window:
        """The window of ``span_s`` seconds (it must be one of ``windows_s``), up to date."""
        window = self._windows[span_s]
        changes = self._changes
        if window.changes != changes or window.watermark != self.watermark:
            window.sync(self.watermark)
            window.changes = changes
        return window

    def _floor(self) -> int:
        return self._floor_units

    def _compute_floor(self) -> int:
        lowest = -self._min_running
        if self._opening is not None and self._opening >= lowest:
            return self._opening
        # No opening balance (or one the stream contradicts): the lowest balance that explains
        # the stream, plus a cushion as large as the range the balance has moved over, since an
        # exchange tops its hot wallet up long before it is empty.
        return max(lowest, 0) + self._max_running - self._min_running

    def balance_units(self) -> int:
        """The balance now (before the transfer being judged), in units."""
        return self._floor_units + self._running

    def reference_units(self, window: Window) -> int:
        """The balance at the window's start: now plus what left in the window."""
        ref = self._floor_units + self._running + window.total
        if self._opening is None:
            ref = max(ref, self._floor_units + self._max_running)
        return ref

    def units_of(self, transfer: TransferView) -> int:
        """The transfer's amount at this state's scale (call :meth:`prepare` first)."""
        units: int = transfer.amount * _POW10[self.scale - transfer.decimals]
        return units

    def to_decimal_string(self, units: int) -> str:
        """Units of this state as an exact decimal string."""
        return format_units(units, self.scale)

    def is_internal(self, address: str) -> bool:
        """Whether ``address`` is one of the exchange's listed wallets (or this one)."""
        return address in self.internal

    def is_known(self, address: str) -> bool:
        """Whether the config lists ``address`` as a counterparty this wallet normally pays."""
        return address in self.known

    def first_seen(self, address: str, units: int | None = None) -> FirstSeen | None:
        """The first outflow learned to ``address``, if any, for a payment of ``units`` now.

        A destination first paid more than ``new_destination_age_s`` ago reads as paid at the
        beginning of time (only that it is familiar is kept), and one not paid for
        ``remember_s`` is forgotten: it counts as new again. So does one paid long ago when
        ``units`` takes its day beyond ``outgrown_factor`` times the largest payment it had
        before that day and its largest day (see :func:`outgrows`).
        """
        seen = self._first_seen.get(address)
        if seen is None:
            familiar = self._familiar.get(address)
            if familiar is None or self._outgrows(_paid(familiar), units):
                return None
            return _FAMILIAR
        if self.now - seen.time >= self.new_destination_age_s and self._outgrows(seen.paid, units):
            return None
        return seen

    def peer_first_seen(
        self, address: str, skip: Collection[str] = ()
    ) -> tuple[WalletState, FirstSeen] | None:
        """The earliest first payment to ``address`` that another asset's state of this wallet
        still remembers as recent (within its ``new_destination_age_s``), and that state; the
        assets in ``skip`` are not looked at.

        >>> from datetime import UTC, datetime
        >>> from drainwatch.config import WalletConfig
        >>> from drainwatch.events import Direction, Transfer
        >>> w = WalletConfig(chain="solana", address="HOT", label="sol-hot")
        >>> usdt, usdc = WalletState(w, "USDT"), WalletState(w, "USDC")
        >>> usdt.link_peers([usdc]); usdc.link_peers([usdt])
        >>> t = Transfer.create(chain="solana", wallet="HOT", direction=Direction.OUT,
        ...     counterparty="X", asset="USDT", amount=1, decimals=0, tx_hash="h1", position=0,
        ...     time=datetime(2025, 7, 18, 21, 7, tzinfo=UTC))
        >>> usdt.prepare(t); usdt.apply(t)
        True
        >>> peer, seen = usdc.peer_first_seen("X")
        >>> peer.asset, seen.units, usdt.peer_first_seen("X"), usdc.peer_first_seen("Y")
        ('USDT', 1, None, None)
        >>> usdc.peer_first_seen("X", skip={"USDT"}) is None
        True
        """
        found: tuple[WalletState, FirstSeen] | None = None
        for peer in self.peers:
            if peer.asset in skip:
                continue
            seen = peer._first_seen.get(address)
            if seen is not None and (found is None or seen.time < found[1].time):
                found = (peer, seen)
        return found

    def _outgrows(self, paid: Paid, units: int | None) -> bool:
        return units is not None and outgrows(paid, self.now, units, self.outgrown_factor)

    def is_new_destination(self, address: str, now: float, units: int | None = None) -> bool:
        """Not configured as known, and first paid less than ``new_destination_age_s`` ago (or,
        for a payment of ``units``, only ever paid much less: see :meth:`first_seen`)."""
        if address in self.known:
            return False
        # first_seen's decision, inlined: this runs two or three times for every outflow.
        seen = self._first_seen.get(address)
        if seen is None:
            familiar = self._familiar.get(address)
            return familiar is None or self._outgrows(_paid(familiar), units)
        return now - seen.time < self.new_destination_age_s or self._outgrows(seen.paid, units)

    def new_outflows_to(self, address: str) -> list[Outflow] | None:
        """The outflows still in the longest window that paid ``address`` while it was new."""
        return self._log.by_dest.get(address)

    def is_midsize(self, units: int) -> bool:
        """Whether an outflow of ``units`` now is at least ``midsize_share`` of the balance."""
        return units * self._mid[1] >= self.balance_units() * self._mid[0]

    def has_applied(self, dedup_key: Hashable) -> bool:
        """Whether a transfer with this :attr:`~detectors.move.TransferView.dedup_key` counts."""
        return dedup_key in self._applied or dedup_key in self._applied_before

    # -- updating (the engine's job) ---------------------------------------------------------

    def prepare(self, transfer: TransferView) -> None:
        """Get ready to judge ``transfer``: widen the scale, take its :attr:`units`, advance event
        time, forget the old.

        Passing time is not learning: this runs before ``score_one``.
        """
        if transfer.decimals > self.scale:
            self._rescale(transfer.decimals)
        self.units = units = transfer.amount * _POW10[self.scale - transfer.decimals]
        balance_after = transfer.balance_after
        if (
            balance_after is not None
            and (self._opening is None or transfer.status is not _PENDING)
            and not self.has_applied(transfer.dedup_key)
        ):
            # A pending transfer's balance (the latest mined one, moved by it) only while no
            # balance is known: every transfer pending at once reads the same latest balance,
            # and re-anchoring to it would undo the ones counted before.
            # The chain's balance after this block, plus what this transfer took, is the balance
            # it was judged against (several transfers in one block make it a little low, so
            # their shares a little high: the cautious side).
            after = balance_after * _POW10[self.scale - transfer.decimals]
            self._anchor(
                max(after + units if transfer.direction is Direction.OUT else after - units, 0)
            )
        now = transfer.epoch
        self.now = now
        if now > self.watermark:
            self.watermark = now
            if now >= self._trim_at:
                # Now and then (a hundredth of the longest window, at least a minute, of event
                # time): forget outflows older than every window.
                self._trim_at = now + max(60, self._longest // 100)
                self._log.trim(now - self._longest)
                self._changes += 1
            if now >= self._compact_at:
                self._compact_at = now + self.new_destination_age_s / 4
                self._compact_destinations(now)
            if now >= self._rotate_at:
                self._rotate_at = now + self._retention_s
                self._applied_before = self._applied
                self._applied = {}

    def _compact_destinations(self, now: float) -> None:
        """Keep only "familiar" for destinations first paid long ago; forget the long unpaid."""
        old = now - self.new_destination_age_s - self.reorder_tolerance_s
        first_seen, familiar = self._first_seen, self._familiar
        for address in [a for a, seen in first_seen.items() if seen.time < old]:
            paid = first_seen.pop(address).paid
            earlier = familiar.get(address)
            if earlier is not None:  # a destination new again keeps the most it had before
                _, before_then, peak_then, _, total_then, day_then = _paid(earlier)
                last, before, peak, since, total, before_day = paid
                before = max(before, before_then, peak_then)
                paid = (last, before, peak, since, total, max(before_day, day_then, total_then))
            familiar[address] = _kept(paid)
        if now >= self._forget_at:
            # A sixth of the memory span at a time (the scan is over every familiar address): a
            # destination is forgotten between 90 and 105 days after it was last paid.
            self._forget_at = now + self.remember_s / 6
            forget = now - self.remember_s
            for address in [a for a, paid in familiar.items() if paid[0] < forget]:
                del familiar[address]

    def apply(self, transfer: TransferView, learn: bool = True) -> bool:
        """Count a prepared transfer; ``learn=False`` keeps its destination unfamiliar.

        Returns False for a duplicate (same dedup key), which changes nothing.
        """
        key = transfer.dedup_key
        if key in self._applied or key in self._applied_before:
            return False
        units = transfer.amount * _POW10[self.scale - transfer.decimals]
        counterparty = transfer.counterparty
        out = transfer.direction is Direction.OUT
        external = out and units > 0 and counterparty not in self.internal
        signed = -units if out else units
        running = self._running + signed
        self._running = running
        if running < self._min_running:
            self._min_running = running
            self._floor_units = self._compute_floor()
        elif running > self._max_running:
            self._max_running = running
            self._floor_units = self._compute_floor()
        now = self.now
        if external:
            seen = self._first_seen.get(counterparty)
            kept = self._familiar.get(counterparty) if seen is None else None
            known = _paid(kept) if kept is not None else None
            new = counterparty not in self.known and (
                now - seen.time < self.new_destination_age_s if seen is not None else known is None
            )
            if not new and counterparty not in self.known:
                paid = seen.paid if seen is not None else known
                if paid is not None and outgrows(paid, now, units, self.outgrown_factor):
                    # Far more than it was ever paid: first seen now, like a fresh address.
                    new = True
                    if seen is not None:
                        self._familiar[counterparty] = _kept(seen.paid)
                    seen = known = None
            mid_num, mid_den = self._mid
            self._log.add(
                Outflow(
                    now,
                    units,
                    counterparty,
                    transfer,
                    new,
                    new and units * mid_den >= (self._floor() + running + units) * mid_num,
                )
            )
            self._changes += 1
            if seen is not None:
                seen.paid = paid_more(seen.paid, now, units)
            elif known is not None:
                self._familiar[counterparty] = paid_more(known, now, units)
            elif learn:
                self._first_seen[counterparty] = FirstSeen(now, units, key)
        self._applied[key] = (signed, counterparty, external)
        self.applied_count += 1
        balance_after = transfer.balance_after
        if balance_after is not None and transfer.status is not _PENDING:
            # A balance read from the chain beats the one tracked from the stream (a pending
            # transfer's anchored the balance in prepare, if at all: see there).
            self._anchor(balance_after * _POW10[self.scale - transfer.decimals])
        return True

    def _anchor(self, balance: int) -> None:
        self._opening = balance
        self._running = self._min_running = self._max_running = 0
        self._floor_units = self._compute_floor()

    def retract(self, transfer: TransferView) -> bool:
        """Undo a counted transfer (its block was reorganised away or it was dropped).

        The lowest and highest running balances are not undone: they only make the balance
        estimate more cautious. Returns False when the transfer was not counted.
        """
        key = transfer.dedup_key
        record = self._applied.pop(key, None) or self._applied_before.pop(key, None)
        if record is None:
            return False
        units, counterparty, external = record
        self._running -= units
        if external:
            self._log.remove(transfer)
            self._changes += 1
        seen = self._first_seen.get(counterparty)
        if seen is not None and seen.key == key:
            del self._first_seen[counterparty]
        self.applied_count -= 1
        return True

    def _rescale(self, scale: int) -> None:
        factor = _POW10[scale - self.scale]
        self.scale = scale
        if self._opening is not None:
            self._opening *= factor
        self._running *= factor
        self._min_running *= factor
        self._max_running *= factor
        self._floor_units = self._compute_floor()
        self._log.rescale(factor)
        self._changes += 1
        for seen in self._first_seen.values():
            seen.units *= factor
            seen.paid = _scaled(seen.paid, factor)
        self._familiar = {a: _kept(_scaled(_paid(k), factor)) for a, k in self._familiar.items()}
        for applied in (self._applied, self._applied_before):
            for key, (units, counterparty, external) in applied.items():
                applied[key] = (units * factor, counterparty, external)


def _scaled(paid: Paid, factor: int) -> Paid:
    last, before, peak, since, total, before_day = paid
    return (last, before * factor, peak * factor, since, total * factor, before_day * factor)


@runtime_checkable
class Detector(Protocol):
    """A detector: judge with ``score_one`` (pure), then remember with ``learn_one``.

    The engine calls ``score_one`` with the wallet's state as it was before the transfer, then
    ``learn_one`` unless this detector's finding asked for a freeze (a detector does not learn
    from what it flagged).
    """

    name: str

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """Judge ``transfer``; must not change the detector or ``state``."""
        ...

    def learn_one(self, transfer: TransferView) -> None:
        """Update what the detector remembers with a transfer it did not freeze on."""
        ...


@runtime_checkable
class LedgerAware(Protocol):
    """A detector that also reads the exchange's approved withdrawals (topic ``LEDGER``)."""

    def learn_approval(self, approval: ApprovalView) -> None:
        """Remember an approved withdrawal."""
        ...


@runtime_checkable
class StateLearner(Protocol):
    """A detector that learns with the wallet's state at hand (is the destination new?).

    The engine calls ``learn_with_state`` instead of ``learn_one``, before the transfer is counted
    in the state, unless this detector froze on it (and it does not set a true
    ``learns_from_freezes``: a detector that keeps facts, such as the sizes paid, learns them all).
    """

    name: str

    def learn_with_state(self, transfer: TransferView, state: WalletState) -> None:
        """Remember a transfer, judged against the state as it was before it."""
        ...


HeldWallets = Callable[[str, str], bool]
"""Whether a (chain, wallet address) is one of the wallets a state snapshot is taken of (the
chain compared case-blind, the address as :func:`~drainwatch.events.normalize_address` writes
it)."""


_Key = TypeVar("_Key", bound=tuple[str, ...])
_Value = TypeVar("_Value")


def split_by_wallet(
    table: dict[_Key, _Value], held: HeldWallets, *, wallet_at: int = 1
) -> tuple[dict[_Key, _Value], dict[_Key, _Value]]:
    """A table keyed by (chain, ..., wallet, ...) split into the entries of the wallets ``held``
    names and the others; the wallet is at ``wallet_at`` in the key, the chain first.

    >>> split_by_wallet({("nem", "A", "XEM"): 1, ("nem", "B", "XEM"): 2}, lambda c, w: w == "A")
    ({('nem', 'A', 'XEM'): 1}, {('nem', 'B', 'XEM'): 2})
    """
    mine: dict[_Key, _Value] = {}
    others: dict[_Key, _Value] = {}
    for key, value in table.items():
        (mine if held(key[0], key[wallet_at]) else others)[key] = value
    return mine, others


@runtime_checkable
class Snapshottable(Protocol):
    """A detector whose per-wallet memory can be saved with its wallets and taken back.

    A detector replica saves what it knows of the wallets of each transfers partition it holds,
    with the offset it reached there; the replica that holds the partition next takes it back
    and replays only what came after (see :mod:`detectors.snapshots`).
    """

    def held_part(self, held: HeldWallets) -> object:
        """What the detector knows of the wallets ``held`` names (picklable, a copy)."""
        ...

    def restore_part(self, part: object, held: HeldWallets) -> None:
        """Take back a :meth:`held_part` of the wallets ``held`` names, replacing what is known
        of them."""
        ...
