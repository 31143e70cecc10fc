"""The learned per-wallet baseline: silent on the usual, loud on ten times the usual."""

from __future__ import annotations

import pickle
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from detectors import BaselineDetector, WalletState
from detectors.base import Finding
from drainwatch.events import Direction, Transfer
from tests.detectors.factories import T0, wallet


def move(seconds: float, amount: int, to: str, direction: Direction = Direction.OUT) -> Transfer:
    return Transfer.create(
        chain="nem",
        wallet="HOT",
        direction=direction,
        counterparty=to,
        asset="XEM",
        amount=amount,
        decimals=0,
        tx_hash=f"{seconds}-{to}",
        position=0,
        time=T0 + timedelta(seconds=seconds),
    )


def run(
    detector: BaselineDetector, state: WalletState, seconds: float, amount: int, to: str
) -> Finding | None:
    t = move(seconds, amount, to)
    state.prepare(t)
    finding = detector.score_one(t, state)
    if not (finding and finding.freeze):
        detector.learn_with_state(t, state)
    state.apply(t)
    return finding


def learned(hours: int = 96, **settings: Any) -> tuple[BaselineDetector, WalletState]:
    detector = BaselineDetector(**settings)
    state = WalletState(wallet(balance="1000000"), "XEM")
    for i in range(hours * 6):  # 600 every 10 minutes to fresh customers: 0.36% an hour
        assert run(detector, state, i * 600, 600, f"C{i}") is None
    return detector, state


def test_silent_until_it_has_history() -> None:
    detector = BaselineDetector()
    state = WalletState(wallet(balance="1000000"), "XEM")
    assert [run(detector, state, i, 20_000, f"T{i}") for i in range(5)] == [None] * 5


def test_a_surge_of_four_times_the_usual_does_not_freeze() -> None:
    detector, state = learned()
    start = 96 * 3600
    findings = [run(detector, state, start + i * 150, 600, f"S{i}") for i in range(40)]
    assert not any(f and f.freeze for f in findings)


def test_ten_times_the_usual_in_mid_size_transfers_freezes() -> None:
    detector, state = learned()
    start = 96 * 3600
    findings = [run(detector, state, start + i * 30, 5_000, f"T{i}") for i in range(40)]
    first = next(i for i, f in enumerate(findings) if f is not None and f.freeze)
    assert first <= 20
    finding = findings[first]
    assert finding is not None
    assert float(finding.metrics["ratio"]) >= detector.freeze_ratio


def test_customer_sized_transfers_at_thirty_times_the_rate_freeze_within_minutes() -> None:
    detector, state = learned()
    start = 96 * 3600
    # 0.25% each (customer-sized) every 8 s: about 50 times the usual value per minute.
    findings = [run(detector, state, start + i * 8, 2_500, f"R{i}") for i in range(60)]
    first = next(i for i, f in enumerate(findings) if f is not None and f.freeze)
    finding = findings[first]
    assert finding is not None
    assert finding.metrics["window_s"] == str(detector.fast_window_s)
    # A handful is not a rate; 6% of the balance in five minutes (empty within the hour and a
    # half) is, and is frozen as soon as it is reached.
    assert detector.fast_min_count - 1 <= first <= 20
    assert float(finding.metrics["share"]) >= 0.06
    before = findings[first - 1]
    assert before is None or not before.freeze


def test_five_busy_minutes_inside_an_hour_long_surge_do_not_freeze() -> None:
    # The suddenness condition alone (customer-sized payments would also be a crowd).
    detector, state = learned(fast_freeze_share=Decimal("0.02"), crowd_size_ratio=0)
    start = 96 * 3600
    # An hour at 25 times the usual rate (a panic), then five minutes at 70 times: far above
    # this hour's usual and 2% of the balance, but under three times the hour before them. (The
    # 2% floor of earlier defaults: at the default 6% a surge that strong freezes at its start.)
    surge = [run(detector, state, start + i * 24, 600, f"S{i}") for i in range(150)]
    busy = [run(detector, state, start + 3600 + i * 8.5, 600, f"B{i}") for i in range(35)]
    assert not any(f and f.freeze for f in surge + busy)
    # Twenty minutes at 45 times the usual, still within three times the surge: not even a
    # warning (a panic would page every hour on every wallet).
    later = [run(detector, state, start + 4000 + i * 13, 600, f"L{i}") for i in range(92)]
    assert later == [None] * len(later)
    # The same five minutes out of ordinary traffic do freeze (the drain starts from calm).
    calm, state2 = learned(fast_freeze_share=Decimal("0.02"), crowd_size_ratio=0)
    sudden = [run(calm, state2, start + 3600 + i * 8.5, 600, f"B{i}") for i in range(35)]
    assert any(f and f.freeze for f in sudden)


def surge_times(start: float) -> list[float]:
    """A panic that doubles its pace every twenty minutes up to a payment every 10 s (about
    60 times the usual value), then holds it for forty minutes: never three times the forty
    minutes before."""
    times: list[float] = []
    for segment, every in enumerate((300, 150, 75, 40, 20, 10, 10, 10)):
        times += [start + segment * 1200 + k * every for k in range(1200 // every)]
    return times


def test_one_large_payment_in_a_surge_does_not_make_it_sudden() -> None:
    # In the panic's last minutes one customer takes 20% at once. The twenty minutes around it
    # hold three times the hour's pace only with it; without it they are the surge's (a rate
    # jumps on many payments, not one: the size rules judge that one, knowing this wallet's
    # sizes).
    detector, state = learned(crowd_size_ratio=0)
    times = surge_times(96 * 3600)
    surge = [run(detector, state, t, 700, f"S{i}") for i, t in enumerate(times)]
    whale = run(detector, state, times[-1] + 5, 200_000, "WHALE")
    after = [run(detector, state, times[-1] + 10 + i * 10, 700, f"A{i}") for i in range(60)]
    assert not any(f and f.freeze for f in [*surge, whale, *after])
    # The same surge, and then that much more spread over ten minutes' payments, is a rate
    # that jumped.
    jump, state2 = learned(crowd_size_ratio=0)
    base = [run(jump, state2, t, 700, f"S{i}") for i, t in enumerate(times)]
    spread = [run(jump, state2, times[-1] + 5 + i * 10, 4_700, f"B{i}") for i in range(60)]
    assert not any(f and f.freeze for f in base)
    assert any(f and f.freeze for f in spread)


@pytest.mark.parametrize(("size", "freezes"), [(600, False), (700, False), (1_200, True)])
def test_a_crowd_of_customer_sized_payments_warns_and_larger_ones_freeze(
    size: int, freezes: bool
) -> None:
    detector, state = learned()
    start = 96 * 3600
    # A bank run that starts at once: one withdrawal every 6 s (100 times the usual rate), 12%
    # of the balance in twenty minutes. Of the customers' usual size (600), or a little above,
    # it is a crowd: warn. Twice their size, it is a burst: freeze.
    findings = [run(detector, state, start + i * 6, size, f"R{i}") for i in range(200)]
    assert any(f is not None and f.severity.rank >= 1 for f in findings)
    assert any(f is not None and f.freeze for f in findings) is freezes
    if not freezes:
        # Far enough above the usual rate and share to freeze, were it not a crowd.
        assert any(
            f is not None
            and f.metrics["window_s"] == str(detector.window_s)
            and float(f.metrics["ratio"]) >= detector.freeze_ratio
            and Decimal(f.metrics["share"]) >= detector.freeze_share
            for f in findings
        )


@pytest.mark.parametrize("share", [30_000, 110_000])
def test_one_large_payment_is_not_a_rate(share: int) -> None:
    detector, state = learned()
    # A whale: 3% or 11% at once to a new address, far above twenty minutes' usual value and
    # (11%) above the freeze share: the size rules, which know this wallet's sizes, judge it.
    # Not even a warning: without it the window holds the usual customers.
    assert run(detector, state, 96 * 3600, share, "WHALE") is None
    # 8% in twenty customer-sized payments within minutes is a rate: it is said.
    many = [run(detector, state, 97 * 3600 + i * 10, 4_000, f"R{i}") for i in range(20)]
    assert any(f is not None and f.severity.value in ("warning", "critical") for f in many)


def test_two_large_payments_are_a_rate() -> None:
    detector, state = learned()
    start = 96 * 3600
    first = run(detector, state, start, 80_000, "T1")
    assert first is None or not first.freeze  # 8%: one payment
    second = run(detector, state, start + 120, 80_000, "T2")
    assert second is not None
    assert second.freeze  # 16% in two payments, either of them 8%
    assert second.metrics["window_s"] == str(detector.window_s)


def test_score_one_is_pure_and_the_detector_pickles() -> None:
    detector, state = learned(80)
    before = pickle.dumps((detector, state))
    probe = Transfer.create(
        chain="nem",
        wallet="HOT",
        direction=Direction.OUT,
        counterparty="Z",
        asset="XEM",
        amount=90_000,
        decimals=0,
        tx_hash="probe",
        position=0,
        time=T0 + timedelta(hours=81),
    )
    state.prepare(probe)
    before = pickle.dumps((detector, state))
    detector.score_one(probe, state)
    assert pickle.dumps((detector, state)) == before


def refill(state: WalletState, seconds: float, amount: int, serial: int) -> None:
    t = move(seconds, amount, f"DEPOSIT{serial}", Direction.IN)
    state.prepare(t)
    state.apply(t)


@pytest.mark.parametrize("batched", [True, False])
def test_a_wallet_that_pays_out_in_hourly_batches_expects_its_busy_minute(batched: bool) -> None:
    detector = BaselineDetector()
    state = WalletState(wallet(balance="1000000"), "XEM")
    # Four days of six withdrawals of 0.6% an hour, each refilled: sent together at the top of
    # each hour (a payout batch), or one every ten minutes.
    for i in range(96 * 6):
        hour, k = divmod(i, 6)
        second = hour * 3600 + (k if batched else k * 600)
        assert run(detector, state, second, 6000, f"C{i}") is None
        refill(state, second, 6000, i)
    # A busy hour: three hours' withdrawals (10.8% of the balance) leave within a minute.
    start = 96 * 3600
    findings = [run(detector, state, start + k, 6000, f"B{k}") for k in range(18)]
    assert not any(f is not None and f.freeze for f in findings)
    # Nine times the usual twenty minutes; for a wallet that sends an hour's at once, its usual
    # busiest stretch is a whole hour's, and three of those at once is no news.
    assert any(findings) is not batched


def _weekly_wallet(
    bounds: tuple[float, float], until_s: float
) -> tuple[BaselineDetector, WalletState, float]:
    """A wallet whose customers take 600 every 10 minutes on weekdays and every 20 minutes at
    weekends (UTC), from a Monday until ``until_s`` after it; shares left out of the judging."""
    detector = BaselineDetector(
        warn_share=Decimal(0),
        freeze_share=Decimal(0),
        floor_share_per_h=0,
        weekday_bounds=bounds,
    )
    state = WalletState(wallet(balance="1000000000000"), "XEM")
    monday = (T0 + timedelta(days=-T0.weekday() % 7)).replace(hour=0)
    start = t = (monday - T0).total_seconds()
    number = 0
    while t < start + until_s:
        run(detector, state, t, 600, f"C{number}")
        weekend = (T0 + timedelta(seconds=t)).weekday() >= 5
        t += 1200 if weekend else 600
        number += 1
    return detector, state, t


@pytest.mark.parametrize(
    ("bounds", "day", "warns"),
    [
        ((0.5, 2.0), 2, False),  # Wednesday: 6x the usual weekday hour
        ((0.5, 2.0), 6, True),  # Sunday: 12x the usual Sunday hour
        ((1.0, 1.0), 6, False),  # no weekly cycle: the Sunday hour counted as an average one
    ],
)
def test_the_weekly_cycle_makes_a_quiet_weekend_quieter(
    bounds: tuple[float, float], day: int, warns: bool
) -> None:
    detector, state, t = _weekly_wallet(bounds, (21 + day) * 86400 + 13 * 3600)
    burst = [run(detector, state, t + k * 10, 600, f"B{k}") for k in range(12)]
    findings = [f for f in burst if f is not None]
    assert bool(findings) is warns
    assert not any(f.freeze for f in findings)
    if warns:
        assert float(findings[-1].metrics["ratio"]) >= detector.warn_ratio
