"""Factories for incident tests: a Coincheck-like drain written through the real Timeline.

The drain follows the 2018 pattern (a test transfer to a new address, then 100M XEM chunks) on a
NEM hot wallet, and the alerts stage records what it would: the transfers, the alerts, the
notifications, the freeze request and the kill switch's order, then responders' notes. A second,
unrelated wallet has a small warning-only incident two days later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alerts.timeline import ActionKind, Timeline
from drainwatch.events import (
    Alert,
    FreezeAction,
    FreezeOrder,
    Severity,
    Transfer,
    TransferStatus,
    event_id,
)

HOT = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
THIEF = "NC4C6PSUW5CLTDT5SXAGZJQJ2JZ6BFSP3YJ6J2CX"
ETH_WALLET = "0x00000000000000000000000000000000000e7401"
START = datetime(2018, 1, 25, 15, 2, tzinfo=UTC)
"""The first transfer of the drain (00:02 JST on 26 January 2018)."""
XEM = 10**6
EXPLORERS = {
    "nem": "https://explorer.nemtool.com/#/s_tx?hash={tx_hash}",
    "ethereum": "https://etherscan.io/tx/{tx_hash}",
}


def at(minutes: float) -> datetime:
    """``START`` plus some minutes."""
    return START + timedelta(minutes=minutes)


def transfer(
    tx: str,
    minutes: float,
    xem: int,
    *,
    direction: str = "out",
    counterparty: str = THIEF,
    balance_after: int | None = None,
    status: TransferStatus = TransferStatus.CONFIRMED,
    wallet: str = HOT,
    chain: str = "nem",
    asset: str = "XEM",
    decimals: int = 6,
    usd: str | None = None,
) -> Transfer:
    """A transfer of whole units of ``asset`` (XEM unless told)."""
    return Transfer.create(
        chain=chain,
        wallet=wallet,
        direction=direction,
        counterparty=counterparty,
        asset=asset,
        amount=xem * 10**decimals,
        decimals=decimals,
        tx_hash=tx,
        position=0,
        time=at(minutes),
        status=status,
        block_number=1_500_000 + int(minutes * 4) if chain == "nem" else None,
        balance_after=None if balance_after is None else balance_after * 10**decimals,
        usd_value=None if usd is None else usd,
    )


def alert(
    n: int,
    minutes: float,
    severity: Severity,
    summary: str,
    *,
    freeze: bool,
    evidence: tuple[Transfer, ...] = (),
    metrics: dict[str, str] | None = None,
    wallet: str = HOT,
    chain: str = "nem",
    label: str = "nem-hot",
    detector: str = "velocity",
    incident_id: str | None = None,
) -> Alert:
    """An alert as a detector would emit it, about the last evidence transfer."""
    return Alert(
        id=event_id("alert", n, chain, wallet),
        time=at(minutes),
        detected_at=at(minutes) + timedelta(seconds=1),
        chain=chain,
        wallet=wallet,
        wallet_label=label,
        severity=severity,
        detector=detector,
        freeze=freeze,
        summary=summary,
        metrics=metrics or {},
        transfer_ids=tuple(t.id for t in evidence),
        tx_hashes=tuple(t.tx_hash for t in evidence),
        incident_id=incident_id,
    )


def freeze_order(about: Alert, minutes: float) -> FreezeOrder:
    """The kill switch's order for a freeze asked by ``about``."""
    return FreezeOrder(
        id=event_id("order", about.chain, about.wallet),
        time=at(minutes),
        chain=about.chain,
        wallet=about.wallet,
        action=FreezeAction.FREEZE,
        reason=about.summary,
        requested_by="drainwatch-alerts",
        alert_id=about.id,
    )


@dataclass
class Drain:
    """What the factory wrote, for the tests to check against."""

    timeline: Timeline
    test_transfer: Transfer
    big: Transfer
    late: Transfer
    warning: Alert
    critical: Alert
    repeat: Alert
    order: FreezeOrder
    eth_alert: Alert


def record_drain(timeline: Timeline) -> Drain:
    """Write the whole scenario through ``timeline`` (see the module docstring)."""
    balance = 523_000_010
    # Ordinary traffic before the drain: customer withdrawals and a deposit.
    for i, (minutes, xem, direction) in enumerate(
        [(-150, 1_200, "out"), (-95, 4_000, "in"), (-40, 800, "out"), (-12, 2_500, "out")]
    ):
        balance += xem if direction == "in" else -xem
        timeline.record_transfer(
            transfer(
                f"0x{i:02x}customer",
                minutes,
                xem,
                direction=direction,
                counterparty=f"NCUSTOMER{i}",
                balance_after=balance,
            )
        )
    test = transfer("0xa1test", 0, 10, balance_after=(balance := balance - 10), usd="8.70")
    timeline.record_transfer(test)
    warning = alert(
        1,
        0,
        Severity.WARNING,
        "10 XEM to a new address that matches no approved withdrawal",
        freeze=False,
        evidence=(test,),
        detector="ledger",
        metrics={"amount": "10", "balance_before": str(balance + 10), "balance_known": "1"},
    )
    timeline.record_alert(warning)
    timeline.record_action(
        ActionKind.NOTIFIED, warning, time=at(0.1), detail="console; pagerduty (on-call: kenji)"
    )

    big = transfer(
        "0xb2drain",
        2,
        100_000_000,
        balance_after=(balance := balance - 100_000_000),
        usd="87000000",
    )
    timeline.record_transfer(big)
    critical = alert(
        2,
        2,
        Severity.CRITICAL,
        "19% of hot wallet drained in 2 min to 1 new address; at this rate empty in 9 min",
        freeze=True,
        evidence=(test, big),
        metrics={
            "amount": "100000000",
            "balance_before": str(balance + 100_000_000),
            "balance_after": str(balance),
            "balance_known": "1",
            "share": "0.191205",
            "span_s": "120",
            "projected_empty_s": "540",
            "score": "0.98",
        },
    )
    timeline.record_alert(critical)
    timeline.record_action(ActionKind.NOTIFIED, critical, time=at(2.02), detail="console")
    timeline.record_action(
        ActionKind.FREEZE_REQUESTED, critical, time=at(2.05), detail="http://127.0.0.1:8700"
    )
    order = freeze_order(critical, 2.1)
    timeline.record_action(
        ActionKind.FREEZE_ACCEPTED, critical, time=at(2.1), detail=f"order {order.id}", order=order
    )
    # A transfer the signer had already broadcast: seen pending, then confirmed after the freeze.
    late_pending = transfer(
        "0xc3inflight", 3, 30_000_000, status=TransferStatus.PENDING, usd="26100000"
    )
    timeline.record_transfer(late_pending)
    late = late_pending.model_copy(
        update={
            "status": TransferStatus.CONFIRMED,
            "balance_after": (balance := balance - 30_000_000) * XEM,
        }
    )
    timeline.record_transfer(late)
    repeat = alert(
        3,
        3,
        Severity.CRITICAL,
        "25% of hot wallet drained in 3 min to 1 new address",
        freeze=True,
        evidence=(big, late),
        metrics={"amount": "30000000", "share": "0.248566", "balance_known": "1"},
    )
    timeline.record_alert(repeat)
    timeline.record_action(
        ActionKind.FREEZE_ACCEPTED,
        repeat,
        time=at(3.05),
        detail=f"order {order.id} (already frozen, by alert {critical.id})",
        order=order,
    )
    # A retracted transfer: its block was reorganised away; it must not count as outflow.
    ghost = transfer("0xd4ghost", 4, 5_000_000)
    timeline.record_transfer(ghost)
    timeline.record_transfer(ghost.model_copy(update={"status": TransferStatus.RETRACTED}))

    # A second wallet, two days later: one warning, never frozen, no balance known from chain.
    eth_out = transfer(
        "0x" + "e7" * 32,
        2 * 24 * 60,
        42,
        wallet=ETH_WALLET,
        chain="ethereum",
        asset="ETH",
        decimals=18,
        counterparty="0x000000000000000000000000000000000000beef",
    )
    timeline.record_transfer(eth_out)
    eth_alert = alert(
        4,
        2 * 24 * 60,
        Severity.WARNING,
        "6% of hot wallet sent in 20 min to 1 new address",
        freeze=False,
        evidence=(eth_out,),
        wallet=ETH_WALLET,
        chain="ethereum",
        label="eth-hot-1",
        metrics={"balance_before": "700", "balance_known": "1", "share": "0.06"},
    )
    timeline.record_alert(eth_alert)
    timeline.record_action(
        ActionKind.NOTIFIED, eth_alert, time=at(2 * 24 * 60 + 0.1), detail="console"
    )
    return Drain(timeline, test, big, late, warning, critical, repeat, order, eth_alert)
