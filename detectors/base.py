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
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Protocol, runtime_checkable

from drainwatch.config import WalletConfig
from drainwatch.events import (
    ApprovedWithdrawal,
    Direction,
    Severity,
    Transfer,
    normalize_address,
)

__all__ = [
    "DEFAULT_WINDOWS_S",
    "Detector",
    "Finding",
    "FirstSeen",
    "LedgerAware",
    "Outflow",
    "StateLearner",
    "WalletState",
    "Window",
    "format_units",
    "ratio_string",
    "to_units",
]

DEFAULT_WINDOWS_S: Final = (60, 300, 1200, 3600, 86400)

# Transfer.decimals is at most 255, so one table covers every rescale.
_POW10: Final = tuple(10**i for i in range(512))


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


@dataclass(frozen=True, slots=True)
class Finding:
    """What a detector concluded about one transfer.

    ``metrics`` are exact decimal strings (sums, shares, seconds, counts; flags as ``"1"``).
    """

    detector: str
    severity: Severity
    freeze: bool
    score: float
    summary: str
    metrics: dict[str, str] = field(default_factory=dict)
    transfer_ids: tuple[str, ...] = ()
    tx_hashes: tuple[str, ...] = ()


@dataclass(slots=True)
class Outflow:
    """One external outflow kept in the windows."""

    time: float
    units: int
    counterparty: str
    transfer_id: str
    tx_hash: str
    new: bool
    """Whether the destination counted as new when the outflow happened."""
    mid: bool = False
    """A new destination and at least ``midsize_share`` of the balance: not a typical customer."""


@dataclass(slots=True)
class FirstSeen:
    """The first outflow a wallet made to a destination."""

    time: float
    units: int
    transfer_id: str
    tx_hash: str


@dataclass(slots=True)
class _Applied:
    time: float
    units: int
    """Signed: negative for an outflow."""
    counterparty: str
    external: bool


class Window:
    """External outflows of the last ``span_s`` seconds of event time, with running sums.

    ``new_by_dest`` sums the outflows to destinations that were new when paid, per destination.
    """

    __slots__ = (
        "items",
        "mid_count",
        "mid_total",
        "new_by_dest",
        "new_count_by_dest",
        "new_total",
        "span_s",
        "total",
    )

    def __init__(self, span_s: int) -> None:
        self.span_s = span_s
        self.items: deque[Outflow] = deque()
        self.total = 0
        self.new_total = 0
        self.mid_total = 0
        self.mid_count = 0
        self.new_by_dest: dict[str, int] = {}
        self.new_count_by_dest: dict[str, int] = {}

    def add(self, outflow: Outflow, watermark: float) -> None:
        """Add an outflow; one that is already older than the window is left out."""
        if outflow.time <= watermark - self.span_s:
            return
        items = self.items
        if items and outflow.time < items[-1].time:
            # Late arrival: keep the deque in time order so eviction stays a popleft loop.
            times = [o.time for o in items]
            items.insert(bisect.bisect_right(times, outflow.time), outflow)
        else:
            items.append(outflow)
        self.total += outflow.units
        if outflow.new:
            self.new_total += outflow.units
            dest = outflow.counterparty
            by_dest = self.new_by_dest
            by_dest[dest] = by_dest.get(dest, 0) + outflow.units
            counts = self.new_count_by_dest
            counts[dest] = counts.get(dest, 0) + 1
            if outflow.mid:
                self.mid_total += outflow.units
                self.mid_count += 1

    def _drop(self, outflow: Outflow) -> None:
        self.total -= outflow.units
        if outflow.new:
            self.new_total -= outflow.units
            dest = outflow.counterparty
            left = self.new_by_dest[dest] - outflow.units
            count = self.new_count_by_dest[dest] - 1
            if count:
                self.new_by_dest[dest] = left
                self.new_count_by_dest[dest] = count
            else:
                del self.new_by_dest[dest]
                del self.new_count_by_dest[dest]
            if outflow.mid:
                self.mid_total -= outflow.units
                self.mid_count -= 1

    def evict(self, now: float) -> None:
        """Drop outflows at or before ``now - span_s``."""
        horizon = now - self.span_s
        items = self.items
        while items and items[0].time <= horizon:
            self._drop(items.popleft())

    def remove(self, transfer_id: str) -> None:
        """Take out a retracted outflow, if it is here."""
        for outflow in self.items:
            if outflow.transfer_id == transfer_id:
                self.items.remove(outflow)
                self._drop(outflow)
                return

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

    def _rescale(self, factor: int) -> None:
        """Rescale the sums; the outflows themselves are shared and rescaled by the state."""
        self.total *= factor
        self.new_total *= factor
        self.mid_total *= factor
        self.new_by_dest = {k: v * factor for k, v in self.new_by_dest.items()}


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

    The balance is ``opening_balance`` + inflows - outflows, re-anchored whenever a transfer
    carries ``balance_after`` (read from the chain by a live watcher). Without an opening
    balance (or when the stream shows more leaving than the opening balance allows) the lowest
    balance that explains the stream is used, plus a cushion as large as the range the balance
    has moved over (a hot wallet is topped up long before it is empty), and shares are taken
    against the larger of that balance and the largest balance seen, so one low moment does not
    make ordinary withdrawals look huge.
    """

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
    ) -> None:
        self.wallet = wallet
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
        self._windows = {span: Window(span) for span in self.windows_s}
        self._window_list = tuple(self._windows.values())
        self._first_seen: dict[str, FirstSeen] = {}
        self._applied: OrderedDict[str, _Applied] = OrderedDict()
        self._retention_s = max(self.windows_s, default=0) + reorder_tolerance_s
        self.watermark = float("-inf")
        """The latest event time seen."""
        self.now = float("-inf")
        """Event time of the transfer being judged (set by :meth:`prepare`)."""
        self.applied_count = 0

    # -- reading (what detectors may call) ---------------------------------------------------

    @property
    def role(self) -> str:
        """``hot`` or ``cold``."""
        return self.wallet.role

    @property
    def label(self) -> str:
        """The wallet's label, or its key."""
        return self.wallet.name

    @property
    def balance_known(self) -> bool:
        """Whether an opening balance anchors the tracked balance."""
        return self._opening is not None

    def window(self, span_s: int) -> Window:
        """The window of ``span_s`` seconds (it must be one of ``windows_s``)."""
        return self._windows[span_s]

    def _floor(self) -> int:
        lowest = -self._min_running
        if self._opening is not None and self._opening >= lowest:
            return self._opening
        # No opening balance (or one the stream contradicts): the lowest balance that explains
        # the stream, plus a cushion as large as the range the balance has moved over, since an
        # exchange tops its hot wallet up long before it is empty.
        return max(lowest, 0) + self._max_running - self._min_running

    def balance_units(self) -> int:
        """The balance now (before the transfer being judged), in units."""
        return self._floor() + self._running

    def reference_units(self, window: Window) -> int:
        """The balance at the window's start: now plus what left in the window."""
        ref = self.balance_units() + window.total
        if self._opening is None:
            ref = max(ref, self._floor() + self._max_running)
        return ref

    def units_of(self, transfer: Transfer) -> int:
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

    def first_seen(self, address: str) -> FirstSeen | None:
        """The first outflow learned to ``address``, if any."""
        return self._first_seen.get(address)

    def is_new_destination(self, address: str, now: float) -> bool:
        """Not configured as known, and first paid less than ``new_destination_age_s`` ago."""
        if address in self.known:
            return False
        seen = self._first_seen.get(address)
        return seen is None or now - seen.time < self.new_destination_age_s

    def is_midsize(self, units: int) -> bool:
        """Whether an outflow of ``units`` now is at least ``midsize_share`` of the balance."""
        return units * self._mid[1] >= self.balance_units() * self._mid[0]

    def has_applied(self, transfer_id: str) -> bool:
        """Whether a transfer with this id is already counted."""
        return transfer_id in self._applied

    # -- updating (the engine's job) ---------------------------------------------------------

    def prepare(self, transfer: Transfer) -> None:
        """Get ready to judge ``transfer``: widen the scale, advance event time, evict.

        Passing time is not learning: this runs before ``score_one``.
        """
        if transfer.decimals > self.scale:
            self._rescale(transfer.decimals)
        if transfer.balance_after is not None and transfer.id not in self._applied:
            # The chain's balance after this block, plus what this transfer took, is the balance
            # it was judged against (several transfers in one block make it a little low, so
            # their shares a little high: the cautious side).
            after = transfer.balance_after * _POW10[self.scale - transfer.decimals]
            units = self.units_of(transfer)
            self._anchor(
                max(after + units if transfer.direction is Direction.OUT else after - units, 0)
            )
        now = transfer.time.timestamp()
        self.now = now
        if now > self.watermark:
            self.watermark = now
            for window in self._window_list:
                items = window.items
                if items and items[0].time <= now - window.span_s:
                    window.evict(now)
            applied = self._applied
            horizon = now - self._retention_s
            while applied and next(iter(applied.values())).time < horizon:
                applied.popitem(last=False)

    def apply(self, transfer: Transfer, learn: bool = True) -> bool:
        """Count a prepared transfer; ``learn=False`` keeps its destination unfamiliar.

        Returns False for a duplicate (same id), which changes nothing.
        """
        if transfer.id in self._applied:
            return False
        units = self.units_of(transfer)
        counterparty = transfer.counterparty
        out = transfer.direction is Direction.OUT
        external = out and units > 0 and counterparty not in self.internal
        signed = -units if out else units
        running = self._running + signed
        self._running = running
        if running < self._min_running:
            self._min_running = running
        elif running > self._max_running:
            self._max_running = running
        now = self.now
        if external:
            new = self.is_new_destination(counterparty, now)
            mid_num, mid_den = self._mid
            outflow = Outflow(
                now,
                units,
                counterparty,
                transfer.id,
                transfer.tx_hash,
                new,
                new and units * mid_den >= (self._floor() + running + units) * mid_num,
            )
            watermark = self.watermark
            for window in self._window_list:
                window.add(outflow, watermark)
            if learn and counterparty not in self._first_seen:
                self._first_seen[counterparty] = FirstSeen(
                    now, units, transfer.id, transfer.tx_hash
                )
        self._applied[transfer.id] = _Applied(now, signed, counterparty, external)
        self.applied_count += 1
        if transfer.balance_after is not None:
            # A balance read from the chain beats the one tracked from the stream.
            self._anchor(transfer.balance_after * _POW10[self.scale - transfer.decimals])
        return True

    def _anchor(self, balance: int) -> None:
        self._opening = balance
        self._running = self._min_running = self._max_running = 0

    def retract(self, transfer: Transfer) -> bool:
        """Undo a counted transfer (its block was reorganised away or it was dropped).

        The lowest and highest running balances are not undone: they only make the balance
        estimate more cautious. Returns False when the transfer was not counted.
        """
        record = self._applied.pop(transfer.id, None)
        if record is None:
            return False
        self._running -= record.units
        if record.external:
            for window in self._windows.values():
                window.remove(transfer.id)
        seen = self._first_seen.get(record.counterparty)
        if seen is not None and seen.transfer_id == transfer.id:
            del self._first_seen[record.counterparty]
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
        # Windows share Outflow objects: rescale each once, then every window's sums.
        shared = {id(o): o for window in self._windows.values() for o in window.items}
        for outflow in shared.values():
            outflow.units *= factor
        for window in self._windows.values():
            window._rescale(factor)
        for seen in self._first_seen.values():
            seen.units *= factor
        for record in self._applied.values():
            record.units *= factor


@runtime_checkable
class Detector(Protocol):
    """A detector: judge with ``score_one`` (pure), then remember with ``learn_one``.

    The engine calls ``score_one`` with the wallet's state as it was before the transfer, then
    ``learn_one`` unless this detector's finding asked for a freeze (a detector does not learn
    from what it flagged).
    """

    name: str

    def score_one(self, transfer: Transfer, state: WalletState) -> Finding | None:
        """Judge ``transfer``; must not change the detector or ``state``."""
        ...

    def learn_one(self, transfer: Transfer) -> None:
        """Update what the detector remembers with a transfer it did not freeze on."""
        ...


@runtime_checkable
class LedgerAware(Protocol):
    """A detector that also reads the exchange's approved withdrawals (topic ``LEDGER``)."""

    def learn_approval(self, approval: ApprovedWithdrawal) -> None:
        """Remember an approved withdrawal."""
        ...


@runtime_checkable
class StateLearner(Protocol):
    """A detector that learns with the wallet's state at hand (is the destination new?).

    The engine calls ``learn_with_state`` instead of ``learn_one``, before the transfer is counted
    in the state, unless this detector froze on it.
    """

    name: str

    def learn_with_state(self, transfer: Transfer, state: WalletState) -> None:
        """Remember a transfer, judged against the state as it was before it."""
        ...
