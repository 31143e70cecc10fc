"""Learned per-wallet baselines: how much leaves this wallet to new addresses at this hour.

For each (wallet, asset) the detector learns, online with river, the value that normally leaves
per hour to destinations the wallet had not paid in the last day (customers, new whales: not the
market maker, not the exchange's own wallets), per hour of the day and overall, from completed
wallet-hours only: river is updated once per wallet-hour, never per transfer. The weekly cycle
is learned the same way, once per wallet-day: each day of the week's usual outflow (UTC days)
against the average day's scales the hour's usual, within ``weekday_bounds``, once every day of
the week has been seen (a quiet weekend is quieter than the average hour of the day says; a
Monday is busier). A transfer is judged by the value that left to new destinations in the last
``window_s`` against what this hour usually sees in that time:

* a **warning** when it is ``warn_ratio`` times the usual and at least ``warn_share`` of the
  balance;
* a **freeze** when it is ``freeze_ratio`` times the usual and at least ``freeze_share``;
* a **freeze**, too, when the last ``fast_window_s`` (5 min) saw ``fast_freeze_ratio`` (20) times
  what this hour usually sees in that time, at least ``fast_freeze_share`` (6%) of the balance,
  over at least ``fast_min_count`` (10) payments to new addresses: customer-sized transfers at
  many times the usual rate, caught in minutes (one whale's withdrawal is not a rate).

What this hour usually sees in a window is never less than a part (``peak_share``, 0.4, and
``fast_peak_share``, 0.2) of the busiest such window this hour usually has, learned the same way:
a wallet that pays out in batches (each hour's withdrawals sent at once) sees an hour's worth in
a minute every hour, and that is its usual; for one that pays as customers ask, the busiest
window is a few times the average one and the part is under it.

Both tiers speak only when the window, without its largest payment, stands out from the rest of
the last hour too (``sudden_ratio``, 3x): a surge lasts for hours, a drain starts from ordinary
traffic, and one customer's large payment in a panic does not make the panic sudden. And one
payment is not a rate: either tier freezes only when the window's payments other than the
largest reach its freeze share too, and warns only when they reach its warning share and ratio.
A single large payment is left to the velocity detector's size rules, which know how large this
wallet's customers and whales go (a whale's withdrawal made the 20-minute tier warn "28x what
this hour usually sees" until the twenty-third session).

Its freezes stand for their own wallet (``drives_incidents = False``): rate findings on several
wallets at once are what a market-wide panic looks like, so they do not open an incident or lower
the bar for other wallets (the engine's correlation acts on the exact rules' freezes).

A withdrawal surge on a panic day (three to six times the usual) stays below the freeze ratio; a
burst of transfers at ten or more times the usual rate does not. Until a wallet has ``min_hours``
of history the detector stays silent and the exact velocity rules (which need no history) are
the wallet's conservative defaults.

>>> from datetime import UTC, datetime, timedelta
>>> from drainwatch.config import WalletConfig
>>> from drainwatch.events import Direction, Transfer
>>> w = WalletConfig(chain="nem", address="HOT", label="nem-hot",
...                  opening_balance=Decimal("1000000"))
>>> state, base = WalletState(w, "XEM"), BaselineDetector(min_hours=24)
>>> t0 = datetime(2024, 1, 1, tzinfo=UTC)
>>> def send(seconds, amount, to):
...     t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty=to,
...         asset="XEM", amount=amount, decimals=0, tx_hash=f"{seconds}{to}", position=0,
...         time=t0 + timedelta(seconds=seconds))
...     state.prepare(t)
...     finding = base.score_one(t, state)
...     base.learn_with_state(t, state)
...     state.apply(t)
...     return finding
>>> quiet = [send(s, 500, f"C{s}") for s in range(0, 3 * 86400, 600)]  # 500 every 10 min
>>> any(quiet)
False
>>> burst = [send(3 * 86400 + s, 5000, f"T{s}") for s in range(0, 1200, 30)]
>>> first = next(f for f in burst if f is not None and f.freeze)
>>> first.detector, first.metrics["ratio"] >= "15"
('baseline', True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from statistics import median_high
from typing import Final, Protocol

from river import stats

from detectors.base import (
    Description,
    Finding,
    HeldWallets,
    WalletState,
    Window,
    busiest_total,
    format_units,
    ratio_string,
    split_by_wallet,
)
from detectors.move import TransferView
from drainwatch.events import Direction, Severity, TransferStatus

__all__ = ["BaselineDetector", "RunningMean"]


class RunningMean(Protocol):
    """The slice of river's (untyped) ``stats`` univariate statistics used here."""

    def update(self, x: float) -> object:
        """Learn one value."""
        ...

    def get(self) -> float:
        """The current estimate."""
        ...


def _ewmean(fading_factor: float) -> RunningMean:
    mean: RunningMean = stats.EWMean(fading_factor=fading_factor)
    return mean


@dataclass(slots=True)
class _Profile:
    """What one (wallet, asset) has learned, plus the wallet-hour being accumulated."""

    hour_start: float = float("-inf")
    hour_value: float = 0.0
    hours: int = 0
    by_hour: list[RunningMean] = field(default_factory=list)
    overall: RunningMean | None = None
    expected: float = 0.0
    """Usual new-destination outflow per hour for the current hour (cached at rollover)."""
    hour_sizes: list[float] = field(default_factory=list)
    """The sizes of this wallet-hour's payments to new destinations."""
    size: RunningMean | None = None
    """Mean of ln(median payment to a new destination) over the wallet-hours that had one."""
    size_hours: int = 0
    hour_times: list[float] = field(default_factory=list)
    """When this wallet-hour's payments to new destinations (``hour_sizes``) left."""
    peak_by_hour: list[list[RunningMean]] = field(default_factory=list)
    """Per tier, per hour of the day: the usual busiest window of that hour."""
    peak_overall: list[RunningMean] = field(default_factory=list)
    expected_peaks: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """The usual busiest window of each tier for the current hour (cached at rollover)."""
    day_start: float = float("-inf")
    day_value: float = 0.0
    """New-destination outflow of the UTC day being accumulated (its completed hours)."""
    by_weekday: list[RunningMean] = field(default_factory=list)
    """Per day of the week (Monday first): the usual day's new-destination outflow."""
    weekdays_seen: list[int] = field(default_factory=lambda: [0] * 7)
    """Days learned per day of the week."""
    day_whole: bool = False
    """Whether the day being accumulated began within the history (the first does not: a
    part of a day is not learned as the whole)."""


def _weekday(epoch: float) -> int:
    """The UTC day of the week of ``epoch`` seconds, Monday 0 (1 January 1970 was a Thursday).

    >>> _weekday(0), _weekday(4 * 86400)
    (3, 0)
    """
    return (int(epoch // 86400) + 3) % 7


def _learn_hours(
    by_hour: list[RunningMean], overall: RunningMean, value: float, hour: int, hours: int
) -> None:
    """Learn ``value`` for the wallet-hour ``hour`` (hours since the epoch) and zero for the
    ``hours - 1`` empty ones after it, per hour of the day and overall."""
    for step in range(hours):
        x = value if step == 0 else 0.0
        by_hour[(hour + step) % 24].update(x)
        overall.update(x)


def _weekday_factor(
    by_weekday: Sequence[RunningMean], seen: Sequence[int], day: int, bounds: tuple[float, float]
) -> float:
    """How busy the day of the week ``day`` (0 is Monday) usually is against the average day,
    within ``bounds``; 1 until every day of the week has been seen once.

    >>> days = [_ewmean(0.3) for _ in range(7)]
    >>> for d, value in enumerate([100, 100, 100, 100, 100, 50, 50]):
    ...     _ = days[d].update(value)
    >>> round(_weekday_factor(days, [1] * 7, 6, (0.5, 2.0)), 3)
    0.583
    >>> _weekday_factor(days, [1] * 6 + [0], 6, (0.5, 2.0))  # Sunday not seen yet
    1.0
    """
    if min(seen) < 1:
        return 1.0
    average = sum(m.get() for m in by_weekday) / 7
    if average <= 0:
        return 1.0
    low, high = bounds
    return min(max(by_weekday[day].get() / average, low), high)


def _steadied(by_hour: list[RunningMean], overall: RunningMean, hour_of_day: int) -> float:
    """The hour of day's learned mean, steadied by the overall one: a quiet night hour learned
    from a few days is not trusted to be quieter than a third of the average hour."""
    return max(by_hour[hour_of_day].get(), overall.get() / 3)


class BaselineDetector:
    """Flags new-destination outflow far above what this wallet usually sees at this hour.

    Args:
        window_s: The window judged (it must be one the wallet state keeps).
        warn_ratio / freeze_ratio: Multiples of the usual outflow for a warning / a freeze.
        warn_share / freeze_share: The least share of the balance that makes either matter.
        min_hours: History needed before the detector speaks.
        fading_factor: river ``EWMean`` weight of the newest wallet-hour (per hour of day) .
        weekday_fading_factor: The same for the newest day of each day of the week.
        weekday_bounds: The least and most the weekly cycle scales an hour's usual outflow
            (``(1, 1)``: no weekly cycle).
        floor_share_per_h: The usual hourly outflow is taken as at least this share of the
            balance, so a wallet that rarely pays anyone is not flagged for a few withdrawals.
        fast_window_s / fast_freeze_ratio / fast_freeze_share / fast_min_count: The 5-minute
            tier (see the module doc).
        sudden_ratio / recent_window_s: Either tier speaks only when its window saw this many
            times the new-address outflow of an equal stretch of the rest of
            ``recent_window_s`` (0: always).
    """

    outflows_only: Final = True
    """Neither judges nor learns from inflows (the engine skips them)."""
    drives_incidents: Final = False
    """Its freezes stand for their own wallet: they neither open an incident nor lower the bar
    for other wallets. A market-wide withdrawal surge raises every wallet's rate at once, so rate
    findings on several wallets together are what a panic looks like; a drain across wallets
    shows in the exact rules (large shares to new addresses), which do drive incidents."""

    def __init__(
        self,
        *,
        name: str = "baseline",
        window_s: int = 1200,
        warn_ratio: float = 8.0,
        freeze_ratio: float = 15.0,
        warn_share: Decimal = Decimal("0.05"),
        freeze_share: Decimal = Decimal("0.08"),
        min_hours: int = 72,
        fading_factor: float = 0.15,
        weekday_fading_factor: float = 0.3,
        weekday_bounds: tuple[float, float] = (0.5, 2.0),
        floor_share_per_h: float = 0.002,
        fast_window_s: int = 300,
        fast_freeze_ratio: float = 20.0,
        fast_freeze_share: Decimal = Decimal("0.06"),
        fast_min_count: int = 10,
        sudden_ratio: float = 3.0,
        recent_window_s: int = 3600,
        crowd_size_ratio: int = 2,
        crowd_min_hours: int = 24,
        peak_share: float = 0.4,
        fast_peak_share: float = 0.2,
    ) -> None:
        self.name = name
        self.window_s = window_s
        self.warn_ratio = warn_ratio
        self.freeze_ratio = freeze_ratio
        self.warn_share = warn_share
        self.freeze_share = freeze_share
        self.min_hours = min_hours
        self.fading_factor = fading_factor
        self.weekday_fading_factor = weekday_fading_factor
        self.weekday_bounds = weekday_bounds
        self.floor_share_per_h = floor_share_per_h
        self._warn = warn_share.as_integer_ratio()
        self._freeze = freeze_share.as_integer_ratio()
        self.fast_window_s = fast_window_s
        self.fast_freeze_ratio = fast_freeze_ratio
        self.fast_freeze_share = fast_freeze_share
        self._fast_freeze = fast_freeze_share.as_integer_ratio()
        self.fast_min_count = fast_min_count
        self.sudden_ratio = sudden_ratio
        self.recent_window_s = recent_window_s
        self.crowd_size_ratio = crowd_size_ratio
        self.crowd_min_hours = crowd_min_hours
        self.peak_shares = (peak_share, fast_peak_share)
        self._peak_windows = (window_s, fast_window_s)
        self._profiles: dict[tuple[str, str, str], _Profile] = {}

    @property
    def windows_s(self) -> tuple[int, ...]:
        """The windows this detector needs the wallet state to keep."""
        return (self.window_s, self.fast_window_s, self.recent_window_s)

    def _profile(self, transfer: TransferView) -> _Profile:
        key = (transfer.chain, transfer.wallet, transfer.asset)
        profile = self._profiles.get(key)
        if profile is None:
            profile = _Profile(
                by_hour=[_ewmean(self.fading_factor) for _ in range(24)],
                overall=_ewmean(self.fading_factor / 24),
                size=_ewmean(self.fading_factor / 24),
                peak_by_hour=[[_ewmean(self.fading_factor) for _ in range(24)] for _ in range(2)],
                peak_overall=[_ewmean(self.fading_factor / 24) for _ in range(2)],
                by_weekday=[_ewmean(self.weekday_fading_factor) for _ in range(7)],
            )
            self._profiles[key] = profile
        return profile

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """Judge an outflow to a new destination against the learned hourly baseline."""
        finding = self.judge(transfer, state)
        return finding.described() if finding is not None else None

    def judge(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """:meth:`score_one` with the finding's words and numbers left to
        :meth:`~detectors.base.Finding.described` (the engine describes only what it alerts on).
        """
        if transfer.direction is not Direction.OUT or transfer.status is TransferStatus.RETRACTED:
            return None
        profile = self._profiles.get((transfer.chain, transfer.wallet, transfer.asset))
        if profile is None or profile.hours < self.min_hours:
            return None
        dest = transfer.counterparty
        units = state.units
        if state.is_internal(dest) or not state.is_new_destination(dest, state.now, units):
            return None
        finding = self._judge(
            state, transfer, profile, units, self.window_s, (self.warn_ratio, self.freeze_ratio),
            (self._warn, self._freeze),
        )  # fmt: skip
        if finding is not None and not self._is_sudden(state, self.window_s, units):
            # Twenty busy minutes in an hours-long surge: what a panic looks like, every hour of
            # it on every wallet; the dashboards show it, a page would be noise.
            finding = None
        elif finding is not None and finding.freeze:
            return finding
        # Minutes, not twenty: customer-sized transfers at many times the usual rate.
        fast = self._judge(
            state, transfer, profile, units, self.fast_window_s,
            (self.fast_freeze_ratio, self.fast_freeze_ratio),
            (self._fast_freeze, self._fast_freeze),
        )  # fmt: skip
        if fast is not None and (
            not self._is_sudden(state, self.fast_window_s, units)
            or 1 + sum(1 for o in state.window(self.fast_window_s).items if o.new)
            < self.fast_min_count
        ):
            # One large payment (a whale) is not a rate, nor is an hour-long surge that has
            # merely had a busy five minutes.
            fast = None
        return fast if fast is not None else finding

    def _is_sudden(self, state: WalletState, window_s: int, units: int) -> bool:
        """Whether the last ``window_s``, without their largest payment to a new address (this
        one, ``units``, among them), saw ``sudden_ratio`` times the new-address outflow of an
        equal stretch of the ``recent_window_s`` before them.

        A withdrawal surge builds up and lasts for hours: once it has run for a while, a busy
        stretch is like the stretches before it. A drain starts from ordinary traffic. A rate
        jumps on many payments: one customer's or whale's large payment in a panic made twenty
        minutes three times the forty before them (the blind replay), and it is the size
        rules' to judge.
        """
        if self.sudden_ratio <= 0 or window_s >= self.recent_window_s:
            return True
        window = state.window(window_s)
        before = state.window(self.recent_window_s).new_total - window.new_total
        stretches = (self.recent_window_s - window_s) / window_s
        largest = max((o.units for o in window.items if o.new), default=0)
        now = window.new_total + units - max(largest, units)
        return now >= self.sudden_ratio * before / stretches

    def _is_crowd(self, state: WalletState, profile: _Profile, window: Window, units: int) -> bool:
        """Whether the window's payments to new addresses are of the size this wallet usually
        pays new addresses: their median under ``crowd_size_ratio`` times the learned typical
        size (the geometric mean of the wallet-hours' medians).

        A withdrawal surge is more customers withdrawing what customers withdraw, on every
        wallet at once, at ten or twenty times the usual rate in a bank run; a drain moves more
        per transfer than the wallet's customers do. Before ``crowd_min_hours`` wallet-hours
        with such payments: not a crowd.
        """
        if (
            self.crowd_size_ratio <= 0
            or profile.size is None
            or profile.size_hours < self.crowd_min_hours
        ):
            return False
        median = median_high([*(o.units for o in window.items if o.new), units])
        typical = math.exp(profile.size.get())
        return median / 10.0**state.scale < self.crowd_size_ratio * typical  # features, not money

    def _judge(  # noqa: PLR0917 - one tier's inputs
        self,
        state: WalletState,
        transfer: TransferView,
        profile: _Profile,
        units: int,
        window_s: int,
        ratios: tuple[float, float],
        shares: tuple[tuple[int, int], tuple[int, int]],
    ) -> Finding | None:
        """One tier: ``window_s`` of new-destination outflow against this hour's usual."""
        window = state.window(window_s)
        new_total = window.new_total + units
        ref = state.reference_units(window)
        (wnum, wden), (fnum, fden) = shares
        if ref <= 0 or new_total * wden < ref * wnum:
            return None
        # Floats from here on, in the asset's units: features only, never money.
        unit = 10.0**state.scale
        ref_f = ref / unit
        usual = max(profile.expected, self.floor_share_per_h * ref_f) * window_s / 3600
        # A wallet that pays out in batches (every customer's withdrawal of the hour sent at
        # once) has a busy few minutes every hour: the usual window is at least a part of the
        # busiest one this hour usually has.
        tier = 0 if window_s == self.window_s else 1
        usual = max(usual, profile.expected_peaks[tier] * self.peak_shares[tier])
        ratio = new_total / unit / usual if usual > 0 else float("inf")
        warn_ratio, freeze_ratio = ratios
        if ratio < warn_ratio:
            return None
        # One payment is not a rate: without the largest, the rest must reach the share of a
        # freeze, and stand out as a warning would, for a warning. (A single large payment is
        # the size rules' to judge: they know how large this wallet's customers and whales go.)
        largest = max((o.units for o in window.items if o.new), default=0)
        rest = new_total - max(largest, units)
        freeze = ratio >= freeze_ratio and new_total * fden >= ref * fnum
        if freeze:
            freeze = rest * fden >= ref * fnum and not self._is_crowd(state, profile, window, units)
        if not freeze and (rest * wden < ref * wnum or rest / unit < warn_ratio * usual):
            return None
        scale, label, hours = state.scale, state.label, profile.hours

        def describe() -> Description:
            share = ratio_string(new_total * 100, ref, 1)
            left = state.left_after(units)
            return Description(
                summary=(
                    f"{share}% of {label} left to new addresses in {window_s // 60} min, "
                    f"{ratio:.0f}x what this hour usually sees{'; ' + left if left else ''}"
                ),
                metrics={
                    "new_out": format_units(new_total, scale),
                    "reference_balance": format_units(ref, scale),
                    "share": ratio_string(new_total, ref),
                    "usual_per_window": f"{usual:.6f}",
                    "ratio": f"{ratio:.2f}",
                    "history_hours": str(hours),
                    "window_s": str(window_s),
                },
                transfer_ids=(transfer.id,),
                tx_hashes=(transfer.tx_hash,),
            )

        return Finding(
            detector=self.name,
            severity=Severity.CRITICAL if freeze else Severity.WARNING,
            freeze=freeze,
            score=ratio / freeze_ratio,
            summary="",
            describe=describe,
            crowd=not freeze,  # a rate; its freezes stand for their own wallet (above)
        )

    def adopt(self, other: BaselineDetector) -> None:
        """Take over what ``other`` learned of its wallets (none of them ours)."""
        self._profiles.update(other._profiles)

    def held_part(self, held: HeldWallets) -> BaselineDetector:
        """A copy that knows only the profiles of the wallets ``held`` names: their share of a
        state snapshot (:meth:`restore_part` takes it back)."""
        part = copy.copy(self)
        part._profiles = split_by_wallet(self._profiles, held)[0]
        return part

    def restore_part(self, part: object, held: HeldWallets) -> None:
        """Take back what :meth:`held_part` kept of the wallets ``held`` names (it replaces
        what is known of them)."""
        if not isinstance(part, BaselineDetector):
            raise TypeError(f"not a baseline detector's part: {type(part).__name__}")
        self._profiles = split_by_wallet(self._profiles, held)[1] | part._profiles

    def learn_one(self, transfer: TransferView) -> None:
        """Count an outflow in its wallet-hour; a completed hour updates the river means."""
        if transfer.direction is not Direction.OUT:
            return
        profile = self._profile(transfer)
        now = transfer.epoch
        if now >= profile.hour_start + 3600:
            self._roll(profile, now)
        profile.hour_value += transfer.amount / 10**transfer.decimals

    def learn_with_state(self, transfer: TransferView, state: WalletState) -> None:
        """Learn one transfer with what the state knows (new destination or not).

        The engine calls this instead of :meth:`learn_one` when it has the state: only outflows
        to new, external destinations count towards the baseline.
        """
        if transfer.direction is not Direction.OUT or state.is_internal(transfer.counterparty):
            return
        profile = self._profile(transfer)
        now = state.now
        if now >= profile.hour_start + 3600:
            self._roll(profile, now)
        units = state.units
        if state.is_new_destination(transfer.counterparty, now, units):
            amount = transfer.amount / 10**transfer.decimals
            profile.hour_value += amount
            profile.hour_sizes.append(amount)
            profile.hour_times.append(now)

    def _roll(self, profile: _Profile, now: float) -> None:
        """Close the hours since the last one (empty hours count as zero) and cache the next."""
        overall = profile.overall
        assert overall is not None
        if profile.hour_start != float("-inf"):
            missed = min(int((now - profile.hour_start) // 3600), 24 * 7)
            hour = int(profile.hour_start // 3600)
            sizes, times = profile.hour_sizes, profile.hour_times
            _learn_hours(profile.by_hour, overall, profile.hour_value, hour, missed)
            # And the hour's busiest 20 and 5 minutes.
            for by_hour, everyday, span_s in zip(
                profile.peak_by_hour, profile.peak_overall, self._peak_windows, strict=True
            ):
                _learn_hours(by_hour, everyday, busiest_total(times, sizes, span_s), hour, missed)
            profile.hours += missed
            self._learn_days(profile, profile.hour_value, now)
            times.clear()
            if sizes:
                median = median_high(sizes)
                if median > 0 and profile.size is not None:
                    profile.size.update(math.log(median))
                    profile.size_hours += 1
                sizes.clear()
        profile.hour_start = now - now % 3600
        profile.hour_value = 0.0
        if profile.day_start == float("-inf"):
            profile.day_start = now - now % 86400
        this_hour = int(profile.hour_start // 3600) % 24
        week = _weekday_factor(
            profile.by_weekday, profile.weekdays_seen, _weekday(now), self.weekday_bounds
        )
        profile.expected = _steadied(profile.by_hour, overall, this_hour) * week
        profile.expected_peaks = [
            _steadied(by_hour, everyday, this_hour) * week
            for by_hour, everyday in zip(profile.peak_by_hour, profile.peak_overall, strict=True)
        ]

    @staticmethod
    def _learn_days(profile: _Profile, hour_value: float, now: float) -> None:
        """Add a completed hour to its day; a day that ended is learned for its day of the week,
        and the empty days after it (up to a week) as zero."""
        profile.day_value += hour_value
        today = now - now % 86400
        if today <= profile.day_start:
            return
        days = min(int((today - profile.day_start) // 86400), 7)
        for step in range(0 if profile.day_whole else 1, days):
            day = _weekday(profile.day_start + step * 86400)
            profile.by_weekday[day].update(profile.day_value if step == 0 else 0.0)
            profile.weekdays_seen[day] += 1
        profile.day_start = today
        profile.day_value = 0.0
        profile.day_whole = True
