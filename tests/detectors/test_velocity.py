"""The velocity detector on hand-made sequences: what it must flag and what it must let pass."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest

from detectors import DetectionEngine
from detectors.base import Finding, WalletState
from detectors.velocity import VelocityDetector, _Cadence, _LargePayments
from drainwatch.config import DetectionConfig, WalletConfig
from drainwatch.events import Alert, Direction, Severity, Transfer
from tests.detectors import factories
from tests.detectors.factories import transfer, wallet

COLD = "COLD"
DAYS_3 = 3 * 86400


def make_state(w: WalletConfig | None = None) -> WalletState:
    return WalletState(w or wallet(balance="1000"), "XEM", internal=frozenset({"HOT", COLD}))


def judge(state: WalletState, detector: VelocityDetector, t: Transfer) -> Finding | None:
    """What the engine does for one transfer."""
    state.prepare(t)
    finding = detector.score_one(t, state)
    state.apply(t, learn=not (finding and finding.freeze))
    return finding


def test_many_small_customer_withdrawals_to_fresh_addresses_raise_nothing() -> None:
    state, detector = make_state(), VelocityDetector()
    # 0.3% each, one a minute, to 300 different addresses (6% every 20 minutes), while
    # deposits keep the balance where it was.
    findings = []
    for i in range(300):
        findings.append(judge(state, detector, transfer(f"C{i}", 3, minutes=i)))
        deposit = transfer(f"D{i}", 3, minutes=i + 0.5, direction=Direction.IN)
        findings.append(judge(state, detector, deposit))
    assert findings == [None] * 600
    assert state.balance_units() == 1000


@pytest.mark.parametrize(
    ("amount", "severity", "freeze"),
    [(60, Severity.CRITICAL, True), (30, Severity.WARNING, False), (20, None, False)],
)
def test_one_transfer_to_a_new_address(
    amount: int, severity: Severity | None, freeze: bool
) -> None:
    finding = judge(make_state(), VelocityDetector(), transfer("THIEF", amount))
    if severity is None:
        assert finding is None
    else:
        assert finding is not None
        assert (finding.severity, finding.freeze) == (severity, freeze)
        assert finding.metrics["rule_single"] == "1"


def test_known_counterparty_and_long_known_destination_are_not_new() -> None:
    state = make_state(wallet(balance="1000", known=("MARKETMAKER",)))
    detector = VelocityDetector()
    assert judge(state, detector, transfer("MARKETMAKER", 60)) is None
    assert judge(state, detector, transfer("FRIEND", 10, minutes=1)) is None
    # Paid first more than a day ago: no longer new, 6% to it is ordinary.
    assert judge(state, detector, transfer("FRIEND", 60, minutes=25 * 60)) is None


def test_internal_transfer_to_a_listed_wallet_is_never_a_drain() -> None:
    state = make_state()
    assert judge(state, VelocityDetector(), transfer(COLD, 900)) is None
    assert state.window(1200).total == 0
    assert state.balance_units() == 100


def test_cold_wallet_paying_an_unlisted_address_freezes() -> None:
    cold = wallet(COLD, role="cold", balance="100000", known=("CUSTODIAN",))
    state = WalletState(cold, "XEM", internal=frozenset({"HOT", COLD}))
    detector = VelocityDetector()
    assert judge(state, detector, transfer("HOT", 5000, wallet=COLD)) is None
    assert judge(state, detector, transfer("CUSTODIAN", 5000, wallet=COLD, minutes=1)) is None
    finding = judge(state, detector, transfer("ANYONE", 1, wallet=COLD, minutes=2))
    assert finding is not None
    assert (finding.severity, finding.freeze) == (Severity.CRITICAL, True)
    assert finding.metrics["rule_cold_outflow"] == "1"
    assert "cold wallet" in finding.summary


def test_test_then_drain_freezes_below_the_single_address_threshold() -> None:
    state, detector = make_state(), VelocityDetector()
    assert judge(state, detector, transfer("THIEF", 0, minutes=0)) is None  # zero is ignored
    assert judge(state, detector, transfer("THIEF", 1, minutes=1)) is None
    finding = judge(state, detector, transfer("THIEF", 30, minutes=30))
    assert finding is not None
    assert finding.freeze
    assert finding.metrics["rule_test_then_drain"] == "1"
    assert "after a 1 XEM test" in finding.summary


def test_test_then_drain_needs_the_drain_within_the_hour() -> None:
    state, detector = make_state(), VelocityDetector()
    judge(state, detector, transfer("THIEF", 1, minutes=0))
    finding = judge(state, detector, transfer("THIEF", 30, minutes=90))
    assert finding is not None
    assert (finding.severity, finding.freeze) == (Severity.WARNING, False)
    assert "rule_test_then_drain" not in finding.metrics


def test_burst_to_a_few_new_addresses_freezes_but_wide_fanout_does_not() -> None:
    state, detector = make_state(), VelocityDetector()
    results = [judge(state, detector, transfer(f"T{i}", 30, minutes=6 * i)) for i in range(3)]
    # 3% each to a new address, 6 minutes apart: each one warns; the third mid-size transfer
    # within 20 minutes (9%) freezes.
    assert [r.severity if r else None for r in results[:2]] == [Severity.WARNING] * 2
    assert results[2] is not None
    assert results[2].freeze
    assert results[2].metrics["rule_burst"] == "1"
    assert results[2].metrics["new_destinations_1200s"] == "3"

    wide, detector = make_state(), VelocityDetector()
    # 12% in 30 minutes, but 0.2% each to 60 addresses: customers, not a thief.
    assert [judge(wide, detector, transfer(f"C{i}", 2, minutes=i / 2)) for i in range(60)] == [
        None
    ] * 60


@pytest.mark.parametrize(("amounts", "frozen"), [((45, 8, 8), False), ((25, 20, 20), True)])
def test_one_large_payment_and_two_customers_are_no_burst(
    amounts: tuple[int, ...], frozen: bool
) -> None:
    # Three mid-size payments to new addresses, 6 minutes apart, 6.1% together: but without the
    # largest (4.5%, which the single-address rule judges) only 1.6% is left, under the burst's
    # warning share (3%): it warns. 2.5%, 2% and 2% are a burst (4% without the largest).
    state, detector = make_state(), VelocityDetector()
    results = [
        judge(state, detector, transfer(f"T{i}", a, minutes=6 * i)) for i, a in enumerate(amounts)
    ]
    last = results[-1]
    assert last is not None
    assert last.metrics["rule_burst"] == "1"
    assert last.freeze is frozen


@pytest.mark.parametrize(("customers", "frozen"), [(0, True), (40, False)])
def test_a_burst_inside_a_crowd_of_customers_warns(customers: int, frozen: bool) -> None:
    state, detector = make_state(), VelocityDetector()
    # A withdrawal surge: ``customers`` withdrawals of 0.1% each in ten minutes, each refilled.
    for i in range(customers):
        judge(state, detector, transfer(f"C{i}", 1, minutes=i / 4))
        judge(state, detector, transfer(f"D{i}", 1, minutes=i / 4, direction=Direction.IN))
    # Then eight payments of 0.8% to new addresses within four minutes: 6.4% in all. Out of
    # ordinary traffic that is a burst; as 8 of 48 withdrawals of a surge (under a fifth) it is
    # a crowd that happens to hold some large ones, and it warns.
    results = [judge(state, detector, transfer(f"T{i}", 8, minutes=10 + i / 2)) for i in range(8)]
    last = results[-1]
    assert last is not None
    assert last.metrics["rule_burst"] == "1"
    assert last.freeze is frozen
    assert not any(r is not None and r.freeze for r in results[:-1])


def mid_size_day(mid_every: int) -> tuple[WalletState, float]:
    """A day of 200 withdrawals to fresh addresses, 0.1% each, or every ``mid_every``-th 0.6%
    (mid-size: in a panic a low balance makes customers' usual sizes so), each refilled, then
    seven more customers in seven minutes; returns the minute after them."""
    state = make_state()
    detector = VelocityDetector()
    for i in range(200):
        amount = 6 if mid_every and i % mid_every == 0 else 1
        judge(state, detector, transfer(f"C{i}", amount, minutes=6 * i))
        judge(state, detector, transfer(f"D{i}", amount, minutes=6 * i + 1, direction=Direction.IN))
    for i in range(7):
        judge(state, detector, transfer(f"E{i}", 1, minutes=1200 + i))
    return state, 1207.0


@pytest.mark.parametrize(("mid_every", "frozen"), [(0, True), (5, False)])
def test_a_burst_no_rarer_than_the_days_mid_size_customers_warns(
    mid_every: int, frozen: bool
) -> None:
    # Then eight payments of 0.8% to new addresses in four minutes: 6.4%, eight of the window's
    # fifteen payments (above a fifth). Eight or more of fifteen come by chance once in 240
    # windows where a fifth of the day's payments were mid-size (the binomial tail), and never
    # where none were.
    state, minute = mid_size_day(mid_every)
    detector = VelocityDetector()
    results = [
        judge(state, detector, transfer(f"T{i}", 8, minutes=minute + i / 2)) for i in range(8)
    ]
    last = results[-1]
    assert last is not None
    assert last.metrics["rule_burst"] == "1"
    assert last.freeze is frozen
    assert not any(r is not None and r.freeze for r in results[:-1])


def test_a_burst_to_one_address_is_no_crowd_however_many_mid_size_customers() -> None:
    # The same eight payments after the same day, to one new address: customers do not pay
    # one new address mid-size twice in minutes. (The single-address and repeat rules, which
    # would freeze it first, and the slow-bleed rule are set aside here.)
    state, minute = mid_size_day(5)
    detector = VelocityDetector(
        single_freeze_share=Decimal("0.5"), repeat_min_count=99, bleed_min_count=99
    )
    results = [
        judge(state, detector, transfer("THIEF", 8, minutes=minute + i / 2)) for i in range(8)
    ]
    last = results[-1]
    assert last is not None
    assert last.metrics["rule_burst"] == "1"
    assert last.freeze


def test_a_second_large_payment_to_another_new_address_within_minutes_freezes() -> None:
    state, detector = make_state(), VelocityDetector()
    first = judge(state, detector, transfer("A", 12, minutes=0))  # 1.2%: a whale, perhaps
    assert first is None or not first.freeze
    second = judge(state, detector, transfer("B", 12, minutes=2))
    assert second is not None
    assert second.freeze
    assert second.metrics["rule_large_pair"] == "1"
    assert len(second.tx_hashes) == 2  # both payments are the evidence

    # Ten minutes apart, or under 1% each: whales and busy customers, not a fan-out.
    apart, detector = make_state(), VelocityDetector()
    assert judge(apart, detector, transfer("A", 12, minutes=0)) is None
    later = judge(apart, detector, transfer("B", 12, minutes=10))
    assert later is None or not later.freeze
    small, detector = make_state(), VelocityDetector()
    results = [judge(small, detector, transfer(f"S{i}", 8, minutes=i / 2)) for i in range(2)]
    assert not any(r and r.freeze for r in results)


def spaced_payments(
    detector: VelocityDetector, large: int, customers_per_slot: int, first: int | None = None
) -> list[Finding | None]:
    """A day of customers (0.1-0.3%, three every 8 minutes, each refilled), then 15 slots of
    8 minutes, each with ``customers_per_slot`` customers and one payment of ``large`` (the
    first: ``first``) to a fresh address; the findings of those 15 payments."""
    state = make_state(wallet(balance="1000000"))
    minute, serial = 0.0, 0

    def customers(count: int, start: float) -> None:
        nonlocal serial
        for i in range(count):
            amount = 1000 + 500 * (serial % 5)
            t = start + i * 8 / count
            judge_and_learn(state, detector, transfer(f"C{serial}", amount, minutes=t))
            deposit = transfer(f"D{serial}", amount, minutes=t + 0.5, direction=Direction.IN)
            judge_and_learn(state, detector, deposit)
            serial += 1

    for _ in range(180):
        customers(3, minute)
        minute += 8
    found = []
    for k in range(15):
        customers(customers_per_slot, minute)
        amount = first if k == 0 and first is not None else large
        found.append(
            judge_and_learn(state, detector, transfer(f"T{k}", amount, minutes=minute + 7))
        )
        minute += 8
    return found


def test_mid_size_payments_to_fresh_addresses_kept_up_for_an_hour_freeze() -> None:
    # 0.8% every 8 minutes: too slow for the burst rule (2% in 20 minutes), under 1% each.
    found = spaced_payments(VelocityDetector(), 8000, 3)
    first = next(k for k, f in enumerate(found) if f is not None and f.freeze)
    assert first == 7  # the eighth: 6.4% in the hour
    frozen = found[first]
    assert frozen is not None
    assert frozen.metrics["rule_sustained"] == "1"
    # Without the rule the same payments only warn, all 15 of them (12% of the wallet).
    off = spaced_payments(VelocityDetector(sustained_min_count=0), 8000, 3)
    assert not any(f is not None and f.freeze for f in off)


@pytest.mark.parametrize(("rest", "frozen_at"), [(6000, None), (7500, 7)])
def test_one_whale_among_mid_size_payments_is_not_a_sustained_rate(
    rest: int, frozen_at: int | None
) -> None:
    # A 3% whale, then seven more payments: the rest must reach 5% without it (0.6% x 7 = 4.2%
    # does not, though 7.2% with the whale would; 0.75% x 7 = 5.25% does).
    found = spaced_payments(VelocityDetector(), rest, 3, first=30000)
    sustained = [
        k for k, f in enumerate(found) if f is not None and f.metrics.get("rule_sustained")
    ]
    assert (sustained[0] if sustained else None) == frozen_at


def test_mid_size_payments_inside_a_crowd_of_customers_do_not_freeze_as_sustained() -> None:
    # The same payments among customers coming four times as fast (a panic): not sudden.
    found = spaced_payments(VelocityDetector(), 8000, 12)
    assert not any(f is not None and f.metrics.get("rule_sustained") for f in found)


def customer_slots(
    state: WalletState,
    detector: VelocityDetector,
    minute: float,
    slots: int,
    customers: int,
    drain: int = 0,
) -> tuple[list[Finding | None], float]:
    """``slots`` slots of 8 minutes, each with ``customers`` customers (0.1-0.3% of a 1,000,000
    wallet, each refilled) and, with ``drain``, one payment of ``drain`` to a fresh address at
    its seventh minute; the findings of those payments, and the minute after the slots."""
    found = []
    for _ in range(slots):
        for i in range(customers):
            amount = 1000 + 500 * (i % 5)
            t = minute + i * 7 / customers
            to = f"C{minute}-{i}"
            judge_and_learn(state, detector, transfer(to, amount, minutes=t))
            judge_and_learn(
                state, detector, transfer(f"D{to}", amount, minutes=t + 0.1, direction=Direction.IN)
            )
        if drain:
            found.append(
                judge_and_learn(state, detector, transfer(f"T{minute}", drain, minutes=minute + 7))
            )
        minute += 8
    return found, minute


def test_a_drains_own_payments_make_no_crowd() -> None:
    # A day of one customer every 16 minutes, then 0.8% to a fresh address every 8 minutes
    # among the same customers: with the drain's payments the hour holds twice the day's
    # hourly average, but its other payments do not (the sustained rule's crowd test).
    state, detector = make_state(wallet(balance="1000000")), VelocityDetector()
    minute = 0.0
    for _ in range(90):
        _, minute = customer_slots(state, detector, minute, 1, 1)
        minute += 8  # and a slot without: one every 16 minutes
    drained = []
    for _ in range(8):
        more, minute = customer_slots(state, detector, minute, 1, 1, drain=8000)
        drained += more
        more, minute = customer_slots(state, detector, minute, 1, 0, drain=8000)
        drained += more
    first = next(k for k, f in enumerate(drained) if f is not None and f.freeze)
    assert first == 7  # the eighth: 6.4% in the hour
    frozen = drained[first]
    assert frozen is not None
    assert frozen.metrics["rule_sustained"] == "1"


@pytest.mark.parametrize(("days_before", "frozen"), [(1, True), (4, False)])
def test_a_panic_that_began_hours_ago_is_a_crowd_against_the_usual_hour(
    days_before: int, frozen: bool
) -> None:
    # Customers three every 8 minutes (22.5 an hour), then a panic at 7 every 8 minutes (52.5
    # an hour) for eight hours: the day's hourly average has risen to about 34, so the ninth
    # hour's 52.5 are no crowd against it. Then customers' mid-size payments come too (0.8%,
    # one a slot; a panic runs balances down). After four days the same hour usually held 22.5:
    # a crowd, no sustained freeze. After one day there is no usual hour to ask.
    state, detector = make_state(wallet(balance="1000000")), VelocityDetector()
    _, minute = customer_slots(state, detector, 0.0, days_before * 180, 3)
    _, minute = customer_slots(state, detector, minute, 60, 7)
    found, _ = customer_slots(state, detector, minute, 10, 7, drain=8000)
    sustained = [f for f in found if f is not None and f.metrics.get("rule_sustained")]
    assert bool(sustained) is frozen


def test_total_outflow_to_known_addresses_freezes_at_thirty_percent() -> None:
    state = make_state(wallet(balance="1000", known=("MM1", "MM2", "MM3", "MM4")))
    detector = VelocityDetector()
    results = [judge(state, detector, transfer(f"MM{i + 1}", 80, minutes=i)) for i in range(4)]
    assert results[:2] == [None, None]  # 8%, 16% of 1000
    assert results[2] is not None
    assert results[2].severity is Severity.WARNING  # 24%
    assert results[3] is not None
    assert results[3].freeze
    assert results[3].metrics["rule_total"] == "1"


def test_coincheck_first_big_transfer_summary_and_metrics() -> None:
    state = make_state(wallet(balance="523000010", label="nem-hot"))
    detector = VelocityDetector()
    assert judge(state, detector, transfer("NC4C6P", 10, minutes=0)) is None
    finding = judge(state, detector, transfer("NC4C6P", 100_000_000, minutes=2))
    assert finding is not None
    assert finding.freeze
    assert finding.summary == (
        "19.1% of nem-hot drained in 2 min to 1 new address (after a 10 XEM test); "
        "423,000,000 XEM left, at this rate empty in 9 min"
    )
    assert finding.metrics["drained"] == "100000010"
    assert finding.metrics["balance_after"] == "423000000"
    assert finding.metrics["share"] == "0.191205"
    assert finding.metrics["projected_empty_s"] == "507"
    assert len(finding.transfer_ids) == 2  # the test and the drain
    for value in finding.metrics.values():
        assert Decimal(value).is_finite()


def test_what_is_left_is_said_only_when_an_opening_balance_anchors_it() -> None:
    # With an opening balance the summary says what is left (the on-call's first question);
    # without one the balance is an estimate, and the words leave it out.
    said = []
    for balance in ("523000010", None):
        state = make_state(wallet(balance=balance, label="nem-hot"))
        if balance is None:
            judge(state, VelocityDetector(), transfer("SRC", 523_000_010, direction=Direction.IN))
        finding = judge(state, VelocityDetector(), transfer("THIEF", 200_000_000, minutes=1))
        assert finding is not None
        assert finding.freeze
        said.append(finding.summary.split("; ")[1])
    assert said[0] == "323,000,010 XEM left, at this rate empty in 2 min"
    assert said[1].startswith("at this rate empty in")


def test_amounts_beyond_float_precision_stay_exact() -> None:
    state = WalletState(wallet(chain="ethereum", address="0xhot", balance=None), "ETH")
    detector = VelocityDetector()
    deposit = transfer(
        "0xsource",
        3 * 10**30 + 7,
        decimals=18,
        wallet="0xhot",
        direction=Direction.IN,
        chain="ethereum",
        asset="ETH",
    )
    assert judge(state, detector, deposit) is None
    out = transfer(
        "0xthief",
        10**30 + 1,
        decimals=18,
        wallet="0xhot",
        minutes=1,
        chain="ethereum",
        asset="ETH",
    )
    finding = judge(state, detector, out)
    assert finding is not None
    assert finding.metrics["amount"] == "1000000000000.000000000000000001"
    # No opening balance: the lowest balance that explains the stream (the deposit) plus a
    # cushion as large as the range seen (the deposit again), minus the outflow.
    assert finding.metrics["balance_after"] == "5000000000000.000000000000000013"


def test_scale_grows_without_losing_earlier_amounts() -> None:
    state, detector = make_state(), VelocityDetector()
    judge(state, detector, transfer("A", 15, decimals=0))
    judge(state, detector, transfer("B", 1_000001, decimals=6, minutes=1))
    assert state.to_decimal_string(state.balance_units()) == "983.999999"
    assert state.to_decimal_string(state.window(60).total) == "1.000001"


def test_without_opening_balance_a_first_large_outflow_is_judged_against_itself() -> None:
    # Nothing is known but what the stream shows: the wallet held at least what it sent.
    state, detector = make_state(wallet(balance=None)), VelocityDetector()
    finding = judge(state, detector, transfer("THIEF", 500))
    assert finding is not None
    assert finding.freeze
    assert finding.metrics["balance_known"] == "0"


def test_unknown_balance_uses_largest_balance_seen() -> None:
    state, detector = make_state(wallet(balance=None)), VelocityDetector()
    judge(state, detector, transfer("SRC", 10_000, direction=Direction.IN))
    judge(state, detector, transfer("C1", 9_000, minutes=30 * 60))  # known by then? no: new
    # The stream shows 1000 left, but the wallet moved over a range of 10000 and held at least
    # that at its highest, plus the cushion: 600 is 3% of 20000, only a warning.
    finding = judge(state, detector, transfer("C2", 600, minutes=32 * 60))
    assert finding is not None
    assert finding.severity is Severity.WARNING


def test_from_config_scales_the_other_rules() -> None:
    detector = VelocityDetector.from_config(
        DetectionConfig(freeze_share=Decimal("0.2"), warn_share=Decimal("0.1"))
    )
    assert (detector.single_freeze_share, detector.total_freeze_share) == (
        Decimal("0.10"),
        Decimal("0.6"),
    )
    assert judge(make_state(), detector, transfer("THIEF", 60)).severity is Severity.WARNING  # type: ignore[union-attr]


def test_balance_read_from_the_chain_replaces_the_tracked_balance() -> None:
    state, detector = make_state(wallet(balance=None)), VelocityDetector()
    deposit = transfer("SRC", 5, direction=Direction.IN).model_copy(
        update={"balance_after": 10_000}
    )
    judge(state, detector, deposit)
    assert state.balance_known
    assert state.balance_units() == 10_000
    # 3% of the chain's balance is a warning, not the freeze an unknown balance would give.
    finding = judge(state, detector, transfer("THIEF", 300, minutes=1))
    assert finding is not None
    assert finding.severity is Severity.WARNING


def test_a_surge_that_emptied_half_the_wallet_does_not_make_its_customers_a_large_pair() -> None:
    # 550 customers took 55% of the wallet in the last 18 minutes (a bank run on a lean hot
    # wallet). Two more, of 0.7% of what the wallet held an hour ago, are 1.5% of what is left:
    # a pair of large payments against the balance now, not against the hour's.
    def last_two(balance: str, crowd: int) -> list[Finding | None]:
        state, detector = make_state(wallet(balance=balance)), VelocityDetector()
        for i in range(crowd):
            judge(state, detector, transfer(f"C{i}", 100, minutes=40 + i * 18 / crowd))
        return [
            judge(state, detector, transfer(f"W{i}", 700, minutes=58.5 + i / 2)) for i in (0, 1)
        ]

    after_surge = last_two("100000", 550)
    assert not any(f is not None and f.metrics.get("rule_large_pair") for f in after_surge)
    # The same two payments from a wallet that held 45,000 all hour: a fan-out drain.
    steady = last_two("45000", 0)[1]
    assert steady is not None
    assert steady.freeze
    assert steady.metrics["rule_large_pair"] == "1"


def test_a_fan_out_after_a_surge_that_took_a_fifth_freezes_at_its_third_large_step() -> None:
    # 200 customers took 20% of the wallet in the last hour (a withdrawal surge). Then a drain:
    # payments of 1.1% of what is left to new addresses, 0.88% of what the hour began with.
    # Two such in a panic are a pair of long-tailed customers; the third is a drain.
    state, detector = make_state(wallet(balance="100000")), VelocityDetector()
    for i in range(200):
        judge(state, detector, transfer(f"C{i}", 100, minutes=i * 55 / 200))
    steps = [judge(state, detector, transfer(f"T{i}", 880, minutes=58 + i / 2)) for i in range(3)]
    assert not any(f is not None and f.freeze for f in steps[:2])
    third = steps[2]
    assert third is not None
    assert third.freeze
    assert third.metrics["rule_large_pair"] == "1"


def test_a_crowd_the_wallet_saw_this_week_informs_and_a_larger_one_warns() -> None:
    # A lean hot wallet whose customers take 40% of it in its busiest hour, every day (a
    # deposit tops it up after each). The first day warns; the next days say so as info; a
    # day when they take 65% (over 1.5x) warns again; a week later the 40% warns anew.
    state, detector = make_state(wallet(balance="100000")), VelocityDetector()

    def peak_hour(day: float, customers: int) -> set[Severity]:
        start = day * 1440
        seen = set()
        for i in range(customers):
            finding = judge(
                state, detector, transfer(f"C{day}-{i}", 100, minutes=start + i * 60 / customers)
            )
            if finding is not None:
                assert not finding.freeze
                assert finding.metrics["rule_total"] == "1"
                seen.add(finding.severity)
                familiar = "rule_familiar_crowd" in finding.metrics
                assert familiar is (finding.severity is Severity.INFO)
                assert familiar is ("no heavier than its busy hours" in finding.described().summary)
        deposit = transfer(f"D{day}", 100 * customers, minutes=start + 61, direction=Direction.IN)
        judge(state, detector, deposit)
        return seen

    assert peak_hour(0, 400) == {Severity.WARNING}
    assert peak_hour(1, 400) == {Severity.INFO}
    assert peak_hour(2, 400) == {Severity.INFO}
    assert Severity.WARNING in peak_hour(3, 650)
    assert peak_hour(12, 400) == {Severity.WARNING}
    # Without the memory every day warns.
    state, detector = make_state(wallet(balance="100000")), VelocityDetector(crowd_memory_s=0)
    assert peak_hour(0, 400) == {Severity.WARNING}
    assert peak_hour(1, 400) == {Severity.WARNING}


def test_a_burst_of_mid_size_customers_the_wallet_saw_this_week_informs() -> None:
    # Five customers each take 0.7% within ten minutes (3.5%: a burst that warns) on a busy
    # wallet, every day; a deposit puts it back. The second day says so as info; six of 0.9%
    # (5.4%, over 1.5x) warn again.
    state, detector = make_state(wallet(balance="100000")), VelocityDetector()

    def burst(day: int, count: int, amount: int) -> list[Finding]:
        found = []
        for i in range(count):
            t = transfer(f"M{day}-{i}", amount, minutes=day * 1440 + 2 * i)
            finding = judge(state, detector, t)
            if finding is not None:
                found.append(finding)
        judge(
            state,
            detector,
            transfer(f"D{day}", count * amount, minutes=day * 1440 + 30, direction=Direction.IN),
        )
        return found

    first = burst(0, 5, 700)
    assert [(f.severity, f.freeze) for f in first] == [(Severity.WARNING, False)] * 1
    assert first[0].metrics["rule_burst"] == "1"
    again = burst(1, 5, 700)
    assert [f.severity for f in again] == [Severity.INFO]
    assert again[0].metrics["rule_familiar_crowd"] == "1"
    larger = burst(2, 6, 900)
    assert Severity.WARNING in {f.severity for f in larger}
    assert not any(f.freeze for f in larger)


def judge_and_learn(state: WalletState, detector: VelocityDetector, t: Transfer) -> Finding | None:
    """What the engine does, learning included: learn (unless frozen) before counting."""
    state.prepare(t)
    finding = detector.score_one(t, state)
    frozen = bool(finding and finding.freeze)
    if not frozen:
        detector.learn_with_state(t, state)
    state.apply(t, learn=not frozen)
    return finding


def bar(state: WalletState, detector: VelocityDetector, minute: float) -> int:
    """The large-fresh bar for a payment ``minute`` minutes in (the history is long enough)."""
    t = transfer("NOBODY", minutes=minute)
    state.prepare(t)
    found = detector.fresh_bar(t, state)
    assert found is not None
    return found


def customer_history(
    state: WalletState, detector: VelocityDetector, large: int, large_every: int
) -> float:
    """Four days of withdrawals to fresh addresses (0.1-0.3%, every ``large_every``-th of
    ``large`` units), each refilled by a deposit; returns the minute after the last one."""
    minute = 0.0
    for i in range(400):
        amount = large if i % large_every == large_every - 1 else 1000 + 500 * (i % 5)
        finding = judge_and_learn(state, detector, transfer(f"C{i}", amount, minutes=minute))
        assert finding is None or not finding.freeze  # 3% to a new address warns
        deposit = transfer(f"D{i}", amount, minutes=minute + 1, direction=Direction.IN)
        judge_and_learn(state, detector, deposit)
        minute += 15
    return minute


def test_a_first_payment_above_the_learned_threshold_freezes() -> None:
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(fresh_min_history_s=DAYS_3)
    minute = customer_history(state, detector, 3000, 10**9)  # customers: at most 0.3%
    assert 10000 <= bar(state, detector, minute) <= 10100  # the floor: 1% of the balance
    below = judge_and_learn(state, detector, transfer("T0", 9500, minutes=minute))
    assert below is None  # 0.95%: under the floor
    first = judge_and_learn(state, detector, transfer("T1", 15000, minutes=minute + 30))
    assert first is not None
    assert first.freeze
    assert first.metrics["rule_large_fresh"] == "1"
    # Turned off, the same payment passes (one 1.5% payment to a new address is no other rule).
    state, off = make_state(wallet(balance="1000000")), VelocityDetector(large_fresh=False)
    minute = customer_history(state, off, 3000, 10**9)
    assert judge_and_learn(state, off, transfer("T1", 15000, minutes=minute)) is None


def test_customers_who_often_withdraw_three_percent_raise_the_threshold() -> None:
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(fresh_min_history_s=DAYS_3)
    minute = customer_history(state, detector, 30000, 50)  # one in 50 withdrawals: 3%
    assert bar(state, detector, minute) == 45000  # 1.5 x 3%
    for i in range(2):
        # Half an hour apart: a 3% customer withdrawal just came before, and three within
        # 20 minutes would be a burst.
        later = minute + 30 + 30 * i
        finding = judge_and_learn(state, detector, transfer(f"W{i}", 30000, minutes=later))
        assert finding is None or not finding.freeze


def whales_then_customers(
    whales: tuple[int, ...], single_min_history_s: int = DAYS_3
) -> tuple[WalletState, VelocityDetector, float]:
    """A day of whales (to fresh addresses, two hours apart), then two days of customers
    (0.1-0.3%), each payment refilled by a deposit; returns the minute after the last one."""
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(
        fresh_min_history_s=DAYS_3, single_min_history_s=single_min_history_s
    )
    for i, amount in enumerate(whales):
        # Learned even when frozen (the velocity detector learns facts from its freezes).
        whale = transfer(f"WHALE{i}", amount, minutes=120 * i)
        state.prepare(whale)
        detector.score_one(whale, state)
        detector.learn_with_state(whale, state)
        state.apply(whale)
        back = transfer(f"R{i}", amount, minutes=120 * i + 1, direction=Direction.IN)
        judge_and_learn(state, detector, back)
    minute = 1440.0
    for i in range(300):
        amount = 1000 + 500 * (i % 5)
        assert judge_and_learn(state, detector, transfer(f"C{i}", amount, minutes=minute)) is None
        back = transfer(f"D{i}", amount, minutes=minute + 1, direction=Direction.IN)
        judge_and_learn(state, detector, back)
        minute += 10
    return state, detector, minute


def test_whales_whose_sizes_spread_out_raise_the_threshold_further() -> None:
    # Six whales of 3% each: the largest payments are alike, the bar is 1.5x them. Six whales
    # from 0.5% to 3%, each well above the next: next month's largest may be far above this
    # month's, and the bar goes up to the most it goes (4x the largest).
    alike_state, alike, minute = whales_then_customers((30000,) * 6)
    spread_state, spread, _ = whales_then_customers((5000, 7000, 10000, 14000, 20000, 30000))
    assert bar(alike_state, alike, minute) == 45000
    assert bar(spread_state, spread, minute) == 120000
    # 5.5% at once to a fresh address: frozen on both (the single-address rule's 5% stands
    # where the whales have taken at most 3%)...
    for state, detector in ((alike_state, alike), (spread_state, spread)):
        finding = judge_and_learn(state, detector, transfer("T", 55000, minutes=minute))
        assert finding is not None
        assert finding.freeze
        assert finding.metrics["rule_single"] == "1"


@pytest.mark.parametrize(("single_min_history_s", "frozen"), [(DAYS_3, False), (7 * 86400, True)])
def test_the_single_address_rule_makes_way_for_whales_larger_than_it(
    single_min_history_s: int, frozen: bool
) -> None:
    # Whales have taken up to 6% to fresh addresses: 7% to one more warns (it is under 1.5x
    # the largest), once the wallet has the single-address rule's history (a week by default).
    state, detector, minute = whales_then_customers(
        (10000, 14000, 20000, 28000, 40000, 60000), single_min_history_s
    )
    finding = judge_and_learn(state, detector, transfer("T", 70000, minutes=minute))
    assert finding is not None
    assert finding.metrics["rule_single"] == "1"
    assert finding.freeze is frozen
    assert finding.severity is (Severity.CRITICAL if frozen else Severity.WARNING)
    # Above 1.5x the largest whale it freezes either way.
    state, detector, minute = whales_then_customers(
        (10000, 14000, 20000, 28000, 40000, 60000), single_min_history_s
    )
    above = judge_and_learn(state, detector, transfer("T", 95000, minutes=minute))
    assert above is not None
    assert above.freeze


@pytest.mark.parametrize(("first", "frozen"), [(20000, True), (5000, False)])
def test_two_large_payments_to_one_new_address_within_the_hour_are_no_whale(
    first: int, frozen: bool
) -> None:
    # Whales have taken up to 6% to fresh addresses, so 7% to one address warns when it comes
    # alone (above). 2% and then 5% to one new address half an hour apart is no whale's way
    # (Zaif's thief paid 8% and then 24% to one address): freeze. With 0.5% first, it is a
    # customer's small payment before a large one: the 5.5% warns, as alone.
    state, detector, minute = whales_then_customers((10000, 14000, 20000, 28000, 40000, 60000))
    before = judge_and_learn(state, detector, transfer("T", first, minutes=minute))
    assert before is None or not before.freeze
    second = judge_and_learn(state, detector, transfer("T", 50000, minutes=minute + 30))
    assert second is not None
    assert second.metrics["rule_single"] == "1"
    assert second.freeze is frozen


@pytest.mark.parametrize(("amount", "frozen"), [(320000, False), (510000, True)])
def test_one_whale_sized_payment_is_not_a_total_outflow(amount: int, frozen: bool) -> None:
    # Whales have taken up to 35% to fresh addresses. 32% more to a fresh address in one payment
    # is 32% of the balance in 20 minutes, but one payment: the size rules judge it (they know
    # the whales) and it is not frozen. Half the balance or more in one payment is frozen
    # anyway. 25% ten minutes later to another fresh address makes it several payments (57%,
    # 25% without the largest): the total rule freezes.
    whales = (100000, 150000, 200000, 250000, 300000, 350000)
    state, detector, minute = whales_then_customers(whales)
    first = judge_and_learn(state, detector, transfer("W", amount, minutes=minute))
    assert first is not None
    assert first.metrics["rule_total"] == "1"
    assert first.freeze is frozen
    if frozen:
        return
    second = judge_and_learn(state, detector, transfer("V", 250000, minutes=minute + 10))
    assert second is not None
    assert second.freeze
    assert second.metrics["rule_total"] == "1"


@pytest.mark.parametrize(("to", "frozen"), [("WHALE5", False), ("WHALE1", True)])
def test_a_whale_paying_its_own_address_again_is_not_a_total_outflow(to: str, frozen: bool) -> None:
    # Whales took 10-35% to their own addresses two days ago. 33% to WHALE5 again (it got 35%)
    # is one payment to a whale's own address: not a total outflow. To WHALE1, which got 15%,
    # it is more than twice what that address ever got: the total rule freezes. (Within a day
    # of its first payment an address is new: the size rules judge it, and they know whales.)
    whales = (100000, 150000, 200000, 250000, 300000, 350000)
    state, detector, minute = whales_then_customers(whales)
    finding = judge_and_learn(state, detector, transfer(to, 330000, minutes=minute))
    assert finding is not None
    assert finding.metrics["rule_total"] == "1"
    assert finding.freeze is frozen


def test_a_single_address_warning_no_larger_than_an_ordinary_payment_is_info() -> None:
    # Whales took up to 6% to fresh addresses on the first day. Two days later 5.5% to one more
    # is what this wallet does: info, not a page. 6.5% is larger than any: a warning; and
    # another 6.4% two hours later warns too (the only payment as large is hours old: a drain's
    # own first step does not make its next ones ordinary).
    state, detector, minute = whales_then_customers((10000, 14000, 20000, 28000, 40000, 60000))
    seen = judge_and_learn(state, detector, transfer("T", 55000, minutes=minute))
    assert seen is not None
    assert (seen.severity, seen.freeze) == (Severity.INFO, False)
    assert seen.metrics["rule_familiar_size"] == "1"
    assert "% of nem-hot drained at once to 1 new address (no larger than a payment" in seen.summary
    larger = judge_and_learn(state, detector, transfer("U", 65000, minutes=minute + 60))
    again = judge_and_learn(state, detector, transfer("V", 64000, minutes=minute + 180))
    assert [f.severity if f else None for f in (larger, again)] == [Severity.WARNING] * 2
    # A wallet younger than the single-address rule's history (a week here) warns at 4%.
    state, detector, minute = whales_then_customers((60000,), single_min_history_s=7 * 86400)
    young = judge_and_learn(state, detector, transfer("T", 40000, minutes=minute))
    assert young is not None
    assert young.severity is Severity.WARNING


def quarter_hours(
    state: WalletState, detector: VelocityDetector, days: int, large_at: int = 0
) -> float:
    """``days`` of customers every 15 minutes (0.1-0.3% to fresh addresses, each refilled by a
    deposit), every ``large_at``-th of them 1.2% (none when 0), none frozen; returns the
    minute after the last one."""
    minute = 0.0
    for i in range(days * 96):
        amount = 12000 if large_at and i % large_at == large_at - 1 else 1000 + 500 * (i % 5)
        finding = judge_and_learn(state, detector, transfer(f"C{i}", amount, minutes=minute))
        assert finding is None or not finding.freeze
        back = transfer(f"D{i}", amount, minutes=minute + 1, direction=Direction.IN)
        judge_and_learn(state, detector, back)
        minute += 15
    return minute


@pytest.mark.parametrize("chance", [0.05, 0.0])
def test_a_wallet_whose_customers_often_pay_over_one_percent_needs_a_third_large_payment(
    chance: float,
) -> None:
    # Eight days of customers every 15 minutes, every 6 hours one of them 1.2% to a new address:
    # four large payments a day, so two within five minutes come by chance about twice a month.
    # A pair is not enough on such a wallet; a third large payment within the five minutes is
    # (off, with large_pair_chance = 0, the pair freezes as on any wallet).
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(large_pair_chance=chance)
    minute = quarter_hours(state, detector, 8, large_at=24)
    assert judge_and_learn(state, detector, transfer("X1", 15000, minutes=minute)) is None
    second = judge_and_learn(state, detector, transfer("X2", 15000, minutes=minute + 3))
    if chance == 0:
        assert second is not None
        assert second.freeze
        return
    assert second is None or not second.freeze
    third = judge_and_learn(state, detector, transfer("X3", 15000, minutes=minute + 4))
    assert third is not None
    assert third.freeze
    assert third.metrics["rule_large_pair"] == "1"


def test_a_surge_of_large_payments_raises_the_threshold() -> None:
    # Whales from 2.5% to 3%: a bar about twice the largest.
    state, detector, minute = whales_then_customers((25000, 26000, 27000, 28000, 29000, 30000))
    calm = bar(state, detector, minute)
    assert 45000 < calm < 65000
    # Then twenty payments of 0.4% within the hour (a withdrawal surge of larger customers:
    # a hundred times the usual rate of payments that large): the largest of such an hour
    # lies higher, and so does the bar.
    for i in range(20):
        later = minute + 2 * i
        judge_and_learn(state, detector, transfer(f"S{i}", 4000, minutes=later))
        back = transfer(f"E{i}", 4000, minutes=later + 1, direction=Direction.IN)
        judge_and_learn(state, detector, back)
    surge = bar(state, detector, minute + 40)
    assert calm * 1.5 < surge <= 120000


def test_no_learned_threshold_before_enough_history() -> None:
    # Four days of history; the default wants fourteen before a wallet is judged by its size.
    state, detector = make_state(wallet(balance="1000000")), VelocityDetector()
    minute = customer_history(state, detector, 3000, 10**9)
    assert detector.fresh_bar(transfer("T1", minutes=minute), state) is None
    assert judge_and_learn(state, detector, transfer("T1", 15000, minutes=minute)) is None


@pytest.mark.parametrize(
    ("gap_minutes", "pair_s", "frozen"),
    [(8, 3600, True), (61, 3600, False), (8, 0, False)],
)
def test_a_young_wallet_freezes_at_a_second_large_payment_to_a_fresh_address(
    gap_minutes: float, pair_s: int, frozen: bool
) -> None:
    # Four days of history: past single_min_history_s (here three days), short of the fourteen
    # the large-fresh rule wants before one payment above the bar freezes.
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(single_min_history_s=DAYS_3, fresh_young_pair_s=pair_s)
    minute = customer_history(state, detector, 3000, 10**9)  # customers: at most 0.3%
    assert detector.fresh_bar(transfer("T0", minutes=minute), state) is None
    first = judge_and_learn(state, detector, transfer("T1", 15000, minutes=minute))
    assert first is None  # 1.5% alone: it may be the wallet's first whale
    second = judge_and_learn(state, detector, transfer("T2", 15000, minutes=minute + gap_minutes))
    assert (second is not None and second.freeze) is frozen
    if frozen:
        assert second is not None
        assert second.metrics["rule_large_fresh_pair"] == "1"


def test_a_regular_counterpartys_large_payments_do_not_raise_the_threshold() -> None:
    # A market maker takes 4% every day; a whale once took 2% to a fresh address.
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(fresh_min_history_s=DAYS_3)
    for day in range(4):
        judge_and_learn(state, detector, transfer("MARKETMAKER", 40000, minutes=day * 1440))
        judge_and_learn(
            state,
            detector,
            transfer(f"R{day}", 40000, minutes=day * 1440 + 1, direction=Direction.IN),
        )
        if day == 0:  # before the market maker is a regular, its 4% keeps the bar at 5%
            judge_and_learn(state, detector, transfer("WHALE", 20000, minutes=60))
    minute = 4 * 1440 + 120
    # 1.5 x the whale's 2%; the market maker's 4% (paid four times) is not a first-seen size.
    assert bar(state, detector, minute) == 30000


def test_a_large_payment_is_forgotten_after_the_history() -> None:
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(fresh_min_history_s=DAYS_3, fresh_history_days=7)
    judge_and_learn(state, detector, transfer("WHALE", 20000, minutes=0))
    judge_and_learn(state, detector, transfer("C1", 1000, minutes=4 * 1440))
    assert bar(state, detector, 4 * 1440) == 30000
    # Eight days on, the next payment's learning lets the whale's go: back to the 1% floor.
    judge_and_learn(state, detector, transfer("C2", 1000, minutes=8 * 1440))
    assert bar(state, detector, 8 * 1440) < 10000  # 1% of the balance left
    finding = judge_and_learn(state, detector, transfer("T1", 12000, minutes=8 * 1440 + 1))
    assert finding is not None
    assert finding.freeze
    assert finding.metrics["rule_large_fresh"] == "1"


def test_third_payment_to_the_same_new_address_within_the_hour_freezes() -> None:
    state, detector = make_state(), VelocityDetector()
    assert judge(state, detector, transfer("THIEF", 4, minutes=0)) is None
    assert judge(state, detector, transfer("THIEF", 4, minutes=20)) is None  # twice: ordinary
    finding = judge(state, detector, transfer("THIEF", 4, minutes=40))
    assert finding is not None
    assert finding.freeze
    assert finding.metrics["rule_repeat"] == "1"
    # Spread over more than an hour, or below 1% together: ordinary.
    state = make_state()
    assert judge(state, detector, transfer("A", 4, minutes=0)) is None
    assert judge(state, detector, transfer("A", 4, minutes=40)) is None
    assert judge(state, detector, transfer("A", 4, minutes=61)) is None
    assert judge(state, detector, transfer("B", 3, minutes=62)) is None
    assert judge(state, detector, transfer("B", 3, minutes=63)) is None
    assert judge(state, detector, transfer("B", 3, minutes=64)) is None


def test_the_learned_bar_matches_a_recount_at_every_step() -> None:
    """The running largest payment to a non-regular destination and the spread of the largest
    ones (both kept up to date as payments come and go), against working them out afresh."""
    rng = random.Random(5)
    state = make_state(wallet(balance="1000000000000"))
    detector = VelocityDetector(
        fresh_floor_share=Decimal("0.000001"),
        fresh_factor=Decimal(1),
        fresh_factor_max=Decimal(1000),
        fresh_return_days=8,
        fresh_min_history_s=0,
        fresh_history_days=3,
    )
    history_s, regular = 3 * 86400, detector.fresh_regular_count
    learned: list[tuple[float, int, str]] = []

    def expected(now: float) -> int | None:
        kept = [(u, d) for when, u, d in learned if when >= now - history_s]
        counts = Counter(d for _, d in kept)
        ordinary = sorted((u for u, d in kept if counts[d] < regular), reverse=True)
        if not ordinary:
            return None
        top = ordinary[: detector.fresh_tail_k + 1]
        spread = sum(math.log(u / top[-1]) for u in top[:-1]) / max(1, len(top) - 1)
        seen_s = max(min(now - learned[0][0], history_s), 86400)
        steps = math.log(detector.fresh_return_days * 86400 / seen_s)
        hour = sum(1 for when, _, _ in learned if when >= now - 3600)
        usual = len(kept) * 3600 / seen_s
        if hour > usual:
            steps += math.log(hour / usual)
        factor = max(1000, min(math.ceil(math.exp(steps * spread) * 1000), 1000 * 1000))
        return -(-ordinary[0] * factor // 1000)

    minute = 0.0
    for i in range(3000):
        minute += rng.expovariate(1 / 40)
        # Before the payment is learned (older ones may just have left the history), and after.
        if (want := expected(minute * 60)) is not None:
            assert bar(state, detector, minute) == want, i
        dest = rng.choice(["MM", "MM", f"W{rng.randrange(8)}", f"C{i}"])
        amount = rng.randrange(400_000, 10_000_000)  # all above a third of the floor
        t = transfer(dest, amount, minutes=minute, tx=f"tx{i}")
        state.prepare(t)
        detector.learn_with_state(t, state)
        state.apply(t)
        learned.append((minute * 60, amount, dest))
        if (want := expected(minute * 60)) is not None:
            assert bar(state, detector, minute) == want, i


def steady_outflow(
    state: WalletState,
    detector: VelocityDetector,
    start: float,
    minutes: float,
    every_s: float,
    amount: int = 25,
) -> list[Finding]:
    """Customer-sized payments (25, under 0.5% of the balance to the end) to distinct addresses."""
    findings = []
    minute, i = start, 0
    while minute < start + minutes:
        found = judge(state, detector, transfer(f"C{start}-{i}", amount, minutes=minute))
        findings += [found] if found else []
        minute, i = minute + every_s / 60, i + 1
    return findings


def test_total_outflow_that_has_gone_on_for_the_hour_warns_and_a_sudden_one_freezes() -> None:
    # An hour of a withdrawal surge: 40% of the balance in the hour, every 20 minutes alike.
    state, detector = make_state(wallet(balance="10000")), VelocityDetector()
    surge = steady_outflow(state, detector, 0, 61, 22)
    assert surge, "the hour's total is reached"
    assert {f.metrics.get("rule_total") for f in surge} == {"1"}
    assert not any(f.freeze for f in surge)
    # 30% in 20 minutes after a quiet 40: a drain.
    state = make_state(wallet(balance="10000"))
    assert steady_outflow(state, detector, 0, 40, 600) == []
    drain = steady_outflow(state, detector, 40, 20, 9)
    assert any(f.freeze and f.metrics.get("rule_total") == "1" for f in drain)


@pytest.mark.parametrize(("amount", "every_s", "freezes"), [(25, 5, False), (65, 13, True)])
def test_a_sudden_crowd_of_customer_sized_payments_warns_and_larger_ones_freeze(
    amount: int, every_s: float, freezes: bool
) -> None:
    # Forty ordinary minutes (a customer payment of 25 every two minutes), then 30% of the
    # balance in twenty minutes, starting at once. Of the customers' size, 240 of them: the first
    # minutes of a bank run, a crowd. 2.6 times their size: a drain.
    state, detector = make_state(wallet(balance="20000")), VelocityDetector()
    assert steady_outflow(state, detector, 0, 40, 120) == []
    burst = steady_outflow(state, detector, 40, 20, every_s, amount)
    totals = [f for f in burst if f.metrics.get("rule_total") == "1"]
    assert totals, "the total rule speaks either way"
    assert any(f.freeze for f in totals) is freezes
    assert not any(f.freeze for f in burst if f.metrics.get("rule_total") != "1")


def as_the_engine(state: WalletState, detector: VelocityDetector, t: Transfer) -> Finding | None:
    """What the engine does, the large-payment history included (facts are always learned)."""
    state.prepare(t)
    finding = detector.score_one(t, state)
    detector.learn_with_state(t, state)
    state.apply(t)
    return finding


def test_an_unlisted_cold_wallets_sweeps_are_trusted_once_regular_and_of_their_usual_size() -> None:
    # Deposits fill the wallet, and every day a third of it is swept to the exchange's vault,
    # which the config does not list.
    state, detector = make_state(), VelocityDetector()
    findings: list[Finding | None] = []
    day = 24 * 60
    for d in range(8):
        as_the_engine(
            state, detector, transfer("BANK", 500, minutes=d * day, direction=Direction.IN)
        )
        findings.append(
            as_the_engine(state, detector, transfer("VAULT", 500, minutes=d * day + 30))
        )
    assert all(f is not None for f in findings[:3])  # 33% in 20 minutes: the total rule
    # From the fifth day three sweeps lie more than a day back: the vault is trusted.
    assert findings[4:] == [None] * 4
    # Three times the usual sweep is not: the total rule judges it.
    as_the_engine(state, detector, transfer("BANK", 3000, minutes=8 * day, direction=Direction.IN))
    big = as_the_engine(state, detector, transfer("VAULT", 1500, minutes=8 * day + 30))
    assert big is not None
    assert big.freeze
    assert big.metrics["rule_total"] == "1"


def test_an_address_paid_small_sums_for_days_cannot_then_take_a_large_share_unseen() -> None:
    state, detector = make_state(), VelocityDetector()
    day = 24 * 60
    for d in range(6):
        assert as_the_engine(state, detector, transfer("PREPARED", 5, minutes=d * day)) is None
    drain = as_the_engine(state, detector, transfer("PREPARED", 350, minutes=6 * day))
    assert drain is not None
    assert drain.freeze
    assert drain.metrics["rule_total"] == "1"


def test_a_configured_counterparty_is_trusted_up_to_twice_what_it_was_paid_before() -> None:
    state = make_state(wallet(balance="1000", known=("MARKETMAKER",)))
    detector = VelocityDetector()
    day = 24 * 60

    def payout(d: int, amount: int) -> Finding | None:
        refill = transfer("BANK", amount, minutes=d * day, direction=Direction.IN)
        as_the_engine(state, detector, refill)
        return as_the_engine(state, detector, transfer("MARKETMAKER", amount, minutes=d * day + 1))

    first = payout(0, 250)  # 20% of 1250, nothing paid to it before: the total rule warns
    assert first is not None
    assert not first.freeze
    assert payout(2, 500) is None  # 33%, twice the last payout: trusted
    beyond = payout(4, 1100)  # more than twice anything it was paid: counted
    assert beyond is not None
    assert beyond.freeze


def test_the_payments_tracked_for_trust_match_a_recount_of_the_history() -> None:
    rng = random.Random(5)
    history = _LargePayments(0.0, 0, 3, frozenset({"KNOWN"}))
    destinations = ["KNOWN", "MM", "VAULT", *(f"C{i}" for i in range(40))]
    for step in range(3000):
        now = step * 60.0
        scale = 1 if step >= 1500 else 0  # the state's scale grows once
        history.add(now, rng.randint(1, 100), rng.choice(destinations), scale)
        if step % 7 == 0:
            history.forget(now - 5 * 3600)
        recount: dict[str, list[tuple[float, int]]] = {}
        for when, units, dest in history.items:
            recount.setdefault(dest, []).append((when, units))
        wanted = {d: p for d, p in recount.items() if len(p) >= history.needed(d)}
        assert {d: list(p) for d, p in history.tracked.items()} == wanted
    assert "KNOWN" in history.tracked


def test_an_address_paid_a_customer_sized_sum_days_ago_is_new_again_for_a_drain() -> None:
    # The thief withdrew 0.1% as a customer three days before, so the address is not fresh.
    state, detector = make_state(), VelocityDetector()
    day = 24 * 60
    assert as_the_engine(state, detector, transfer("WARMED", 1)) is None
    assert as_the_engine(state, detector, transfer("RETURNING", 2, minutes=10)) is None
    # A returning customer paid like before is still familiar...
    assert as_the_engine(state, detector, transfer("RETURNING", 15, minutes=3 * day)) is None
    assert not state.is_new_destination("RETURNING", state.now, 15)
    # ...a payment sixty times the most the address ever got is judged as to a new one.
    drain = as_the_engine(state, detector, transfer("WARMED", 60, minutes=3 * day + 1))
    assert drain is not None
    assert drain.freeze
    assert drain.metrics["rule_single"] == "1"
    # From then on it is a destination first seen now: the next step counts with the first.
    seen = state.first_seen("WARMED")
    assert seen is not None
    assert seen.time == state.now
    second = as_the_engine(state, detector, transfer("WARMED", 30, minutes=3 * day + 2))
    assert second is not None
    assert second.metrics["drained"] == "90"


@pytest.mark.parametrize(("factor", "new"), [(10, True), (0, False)])
def test_how_much_more_than_before_makes_a_familiar_address_new(factor: int, new: bool) -> None:
    state = WalletState(wallet(balance="1000"), "XEM", outgrown_factor=factor)
    day = 24 * 60
    # The most before this day: 4 in one payment, 6 in one day.
    for minutes, amount in ((0, 2), (1, 4), (3 * day, 3)):
        t = transfer("FRIEND", amount, minutes=minutes)
        state.prepare(t)
        state.apply(t)
    # Compacted into the familiar destinations (read as paid at the beginning of time), what it
    # was paid kept.
    familiar = state.first_seen("FRIEND")
    assert familiar is not None
    assert familiar.time == float("-inf")
    # The day's payments may reach ten times the most it had before in a day: 3 + 57 = 60.
    assert not state.is_new_destination("FRIEND", state.now, 57)
    assert state.is_new_destination("FRIEND", state.now, 58) is new
    assert (state.first_seen("FRIEND", 58) is None) is new
    # Rescaling keeps the comparison in the same units (57.1 at one decimal: beyond).
    finer = transfer("FRIEND", 571, minutes=3 * day + 1, decimals=1)
    state.prepare(finer)
    assert state.is_new_destination("FRIEND", state.now, state.units_of(finer)) is new
    assert not state.is_new_destination("FRIEND", state.now, state.units_of(finer) - 1)
    # A day later the count starts again, against the most it had before: still 6 in a day.
    later = transfer("FRIEND", 61, minutes=4 * day + 2)
    state.prepare(later)
    assert state.is_new_destination("FRIEND", state.now, state.units_of(later)) is new
    assert not state.is_new_destination("FRIEND", state.now, state.units_of(later) - 10)


def test_a_slow_bleed_to_a_warmed_address_is_judged_as_to_a_new_one() -> None:
    # 0.05% as a customer, then 0.4% every 20 minutes days later: none of the steps is twenty
    # times the warm-up, their day's sum soon is.
    state, detector = make_state(wallet(balance="10000")), VelocityDetector()
    day = 24 * 60
    assert as_the_engine(state, detector, transfer("WARMED", 5)) is None
    findings = [
        as_the_engine(state, detector, transfer("WARMED", 40, minutes=3 * day + 20 * i))
        for i in range(12)
    ]
    # The third step takes the day to 120, beyond 20 x 5: the address is first seen there, and
    # the third payment to it within the hour freezes (1.2% of the wallet, the repeat rule).
    assert findings[:4] == [None] * 4
    first = findings[4]
    assert first is not None
    assert first.freeze
    assert first.metrics["rule_repeat"] == "1"
    assert first.metrics["drained"] == "120"
    # Without the bound the whole bleed passes: the address stays familiar.
    state = WalletState(wallet(balance="10000"), "XEM", outgrown_factor=0)
    detector = VelocityDetector()
    as_the_engine(state, detector, transfer("WARMED", 5))
    assert not any(
        as_the_engine(state, detector, transfer("WARMED", 40, minutes=3 * day + 20 * i))
        for i in range(12)
    )


def payout_hours(state: WalletState, detector: VelocityDetector, *, batched: bool) -> float:
    """Two days of 20 customer withdrawals an hour (0.1-0.3%, each refilled), sent in one batch
    at the top of each hour or one every three minutes; returns the minute after."""
    for i in range(48 * 20):
        hour, k = divmod(i, 20)
        minute = hour * 60 + (k / 40 if batched else k * 3)
        amount = 1000 + 500 * (i % 5)
        assert judge_and_learn(state, detector, transfer(f"C{i}", amount, minutes=minute)) is None
        deposit = transfer(f"D{i}", amount, minutes=minute, direction=Direction.IN)
        judge_and_learn(state, detector, deposit)
    return 48 * 60.0


@pytest.mark.parametrize("batched", [True, False])
def test_two_whales_in_a_payout_batch_warn_but_a_pair_between_batches_freezes(
    batched: bool,
) -> None:
    state, detector = make_state(wallet(balance="1000000")), VelocityDetector()
    minute = payout_hours(state, detector, batched=batched)
    # The next hour's batch: 18 customers and two whales of 1.2% to fresh addresses.
    for k in range(18):
        judge_and_learn(state, detector, transfer(f"N{k}", 2000, minutes=minute + k / 40))
    whales = [
        judge_and_learn(state, detector, transfer(f"W{k}", 12_000, minutes=minute + 0.5 + k / 60))
        for k in range(2)
    ]
    pair = whales[1]
    assert pair is not None
    assert pair.metrics["rule_large_pair"] == "1"
    # A wallet that pays as customers ask has no batches: two such payments at once freeze.
    assert pair.freeze is not batched
    if batched:
        # Between batches, two large payments to new addresses are no batch: they freeze.
        for k in range(2):
            late = judge_and_learn(
                state, detector, transfer(f"T{k}", 12_000, minutes=minute + 30 + k)
            )
        assert late is not None
        assert late.freeze
        assert late.metrics["rule_large_pair"] == "1"


def panic_batch(
    state: WalletState, detector: VelocityDetector, minute: float, count: int, amount: int
) -> list[Finding]:
    """``count`` payments of ``amount`` to fresh addresses within the minute after ``minute``."""
    findings = []
    for k in range(count):
        t = transfer(f"P{k}", amount + k % 3, minutes=minute + k / (count + 1))
        found = judge_and_learn(state, detector, t)
        findings += [found] if found else []
    return findings


@pytest.mark.parametrize(
    ("batch_share", "amount", "frozen"),
    [
        (0.6, 2000, False),  # a batching wallet's panic batch: customers, a crowd
        (0.0, 2000, True),  # the same batch where batches are not learned: nothing to compare
        (0.6, 6000, True),  # a batch of three times the usual payment: a drain
    ],
)
def test_a_panic_batch_of_customer_sized_payments_is_a_crowd_on_a_batching_wallet(
    batch_share: float, amount: int, frozen: bool
) -> None:
    # Two days of hourly batches of 20 customers (0.1-0.3% each), then a batch that takes 30%
    # of the balance within a minute: the rest of the hour holds no payment to compare it with,
    # so the wallet's usual payment (the median of its hours' medians) says what a crowd is.
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(batch_share=batch_share)
    minute = payout_hours(state, detector, batched=True)
    findings = panic_batch(state, detector, minute, 300_000 // amount, amount)
    totals = [f for f in findings if f.metrics.get("rule_total") == "1"]
    assert totals, "30% within a minute: the total rule speaks"
    assert any(f.freeze for f in findings) is frozen


def test_a_wallets_usual_payment_is_kept_at_the_states_scale() -> None:
    cadence = _Cadence()
    for k in range(5):
        cadence.add(60.0 * k, 4 + k, 0)  # 4..8 units: median 6
    cadence.roll(3600.0, 300)
    assert cadence.usual_payment(0) == 6
    cadence.add(3600.0, 75, 1)  # a transfer with one more decimal: 7.5
    assert cadence.units == [75]
    assert cadence.usual_payment(1) == 60
    assert cadence.usual_payment(2) == 600
    for k in range(4):
        cadence.add(3660.0 + k, 70, 1)
    cadence.roll(7200.0, 300)
    assert list(cadence.medians) == [60, 70]
    assert cadence.usual_payment(1) == 70  # median_high of two


def test_a_wallets_usual_count_is_that_hour_on_the_last_days_empty_hours_too() -> None:
    # Five payments at 10:00 each day (twenty on day 3, a panic), nothing else.
    cadence, hour = _Cadence(), 3600.0

    def pay(day: int, count: int) -> None:
        for k in range(count):
            now = day * 86400 + 10 * hour + k
            if now >= cadence.hour_start + hour:
                cadence.roll(now, 300)
            cadence.add(now, 1, 0)

    for day in range(4):
        pay(day, 20 if day == 3 else 5)
    # Of 5, 5, 5 and 20 (day 3's hour, still open, as it stands): median_high 5.
    assert cadence.usual_count(4 * 86400 + 10 * hour) == 5
    assert cadence.usual_count(4 * 86400 + 11 * hour) == 0  # the empty hours are counted
    assert cadence.usual_count(4 * 86400 + 10 * hour + 59) == 5  # any minute of the hour
    assert cadence.usual_count(2 * 86400 + 10 * hour + 1800) is None  # two days behind it


def test_another_exchanges_shared_deposit_address_stays_familiar_on_a_panic_day() -> None:
    # Where deposits are told apart by a memo (XRP, XLM, NEM, ...), another exchange's customers
    # are all paid to its one deposit address: here a hundred payments of 0.01% a day. Its day
    # is bounded by twenty times its largest day before, not only by twenty times its largest
    # payment, so a panic day's five hundred do not make it a new address the bleed and repeat
    # rules would freeze on (by its largest payment it would be new after twenty each day).
    engine = DetectionEngine(factories.config(factories.wallet(balance="1000000")))
    said = []
    for day, count in enumerate((100, 100, 100, 500)):
        for i in range(count):
            minutes = day * 1440 + i * 1440 / count
            alerts = engine.process(factories.transfer("EXCHANGE", 100, minutes=minutes))
            said += [(day, a.severity.value, a.summary) for a in alerts if day > 0]
    assert [s for s in said if s[1] != "info"] == []


def _new_address_paid_like_customers(step: Callable[[random.Random], int]) -> list[Alert]:
    """A day and a half of ten customers an hour (300-700 of a 1,000,000 wallet, each to a new
    address), then eight hours in which one new address is also paid ten times an hour,
    ``step`` each; the alerts of those eight hours."""
    engine = DetectionEngine(factories.config(factories.wallet(balance="1000000")))
    rng = random.Random(1)
    said: list[Alert] = []
    for hour in range(44):
        for i in range(10):
            minutes = hour * 60 + i * 6
            engine.process(
                factories.transfer(f"C{hour}-{i}", rng.randint(300, 700), minutes=minutes)
            )
            if hour >= 36:
                paid = factories.transfer("SHARED", step(rng), minutes=minutes + 1)
                said += engine.process(paid)
    return said


def test_a_new_address_many_customers_are_paid_to_is_warned_of_not_frozen() -> None:
    # Another exchange's new shared deposit address (deposits told apart by memos): its payments
    # are customers' sizes, and together they pass the bleed rule's 2.5% of the wallet.
    shared = _new_address_paid_like_customers(lambda rng: rng.randint(300, 700))
    assert not any(a.freeze for a in shared)
    bleed = [a for a in shared if "rule_slow_bleed" in a.metrics]
    assert bleed
    assert bleed[-1].severity is Severity.WARNING
    assert "rule_shared_address" in bleed[-1].metrics
    assert "another exchange's shared deposit address" in bleed[-1].summary
    # A thief's steps five times a customer's to one address freeze as before.
    thief = _new_address_paid_like_customers(lambda rng: 5 * rng.randint(300, 700))
    assert any(a.freeze for a in thief)
    assert all("rule_shared_address" not in a.metrics for a in thief)


def fresh_bleed(*, chance: float, customers_every: float) -> list[Finding | None]:
    """Eight days of customers every 15 minutes (0.1-0.3% to fresh addresses, refilled by
    deposits), one of them a day 1.2%; then a day of the same customers every
    ``customers_every`` minutes with a thief's 1.5% to a fresh address every three hours.
    Returns the findings on the thief's payments."""
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(daily_chance=chance)
    minute, i = quarter_hours(state, detector, 8, large_at=96), 8 * 96
    thefts: list[Finding | None] = []
    start = minute
    while minute < start + 24 * 60:
        i += 1
        amount = 1000 + 500 * (i % 5)
        judge_and_learn(state, detector, transfer(f"C{i}", amount, minutes=minute))
        judge_and_learn(
            state, detector, transfer(f"D{i}", amount, minutes=minute + 1, direction=Direction.IN)
        )
        if (minute - start) % 180 < customers_every:
            thefts.append(
                judge_and_learn(
                    state, detector, transfer(f"T{len(thefts)}", 15000, minutes=minute + 2)
                )
            )
        minute += customers_every
    return thefts


def test_large_payments_to_fresh_addresses_all_day_on_a_quiet_day_freeze() -> None:
    # The wallet pays one fresh address 1% or more about once a day; eight of them in a day
    # come by chance far less than once in fifty months.
    thefts = fresh_bleed(chance=0.02, customers_every=15)
    frozen = [i for i, f in enumerate(thefts) if f is not None and f.freeze]
    assert frozen
    first = thefts[frozen[0]]
    assert first is not None
    assert first.metrics["rule_daily"] == "1"
    assert 4 <= frozen[0] <= 7  # not at the first steps: each alone is a customer's size
    assert "payments of 1% or more to new addresses within 24 h; it usually makes" in first.summary
    # Before it is rare enough to stop, it is rare enough to look at: a warning.
    warned = {
        i: f for i, f in enumerate(thefts) if f is not None and f.severity is Severity.WARNING
    }
    assert warned
    assert min(warned) < frozen[0]
    assert all(f.metrics["rule_daily"] == "1" for f in warned.values())
    # Off, nothing else freezes them.
    assert not any(f is not None and f.freeze for f in fresh_bleed(chance=0, customers_every=15))


def test_large_payments_to_fresh_addresses_on_a_busy_day_are_not_the_daily_rules() -> None:
    # Customers three times as many as usual (a withdrawal surge): their large payments come
    # by the dozen, and the day's count says nothing.
    thefts = fresh_bleed(chance=0.02, customers_every=5)
    assert not any(f is not None and "rule_daily" in f.metrics for f in thefts)


@pytest.mark.parametrize("min_count", [4, 5])
def test_a_quiet_wallet_needs_five_large_payments_to_fresh_addresses_in_a_day(
    min_count: int,
) -> None:
    # Eight days of customers only (0.1-0.3%): a large payment to a fresh address is rare here,
    # and four in a day would be rarer than the rule's chance; but a quiet wallet's whales come
    # together on a market's busy day, so the rule asks for five.
    state = make_state(wallet(balance="1000000"))
    detector = VelocityDetector(daily_min_count=min_count)
    minute = quarter_hours(state, detector, 8)
    large = [
        judge_and_learn(state, detector, transfer(f"W{k}", 15000, minutes=minute + 300 * k))
        for k in range(5)
    ]
    frozen = [k for k, f in enumerate(large) if f is not None and f.freeze]
    assert frozen == ([3, 4] if min_count == 4 else [4])
    last = large[4]
    assert last is not None
    assert last.metrics["rule_daily"] == "1"
