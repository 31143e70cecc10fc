"""What the ledger detector reads of an approved withdrawal: :class:`ApprovalView`, and
:class:`Approval`, its lean form.

Live mode hands the engine :class:`~drainwatch.events.ApprovedWithdrawal` events from the ledger
topic; a backtest with ``--ledger`` reads one approval for every customer withdrawal, so it builds
an :class:`Approval` per line instead: no validating model, no aware ``time`` and no event id,
which the detectors never read. Both satisfy :class:`ApprovalView`.

>>> from datetime import UTC, datetime
>>> from decimal import Decimal
>>> from drainwatch.events import ApprovedWithdrawal
>>> event = ApprovedWithdrawal(id="w1", time=datetime(2018, 1, 25, 15, 0, tzinfo=UTC),
...     chain="nem", asset="XEM", to="CUSTOMER", amount=Decimal("5"))
>>> lean = Approval(1516892400.0, "nem", "XEM", "CUSTOMER", Decimal("5"), None)
>>> [getattr(event, f) == getattr(lean, f) for f in Approval.__slots__]
[True, True, True, True, True, True]
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

__all__ = ["Approval", "ApprovalView"]


class ApprovalView(Protocol):
    """The fields of an approved withdrawal the detectors read."""

    @property
    def epoch(self) -> float: ...
    @property
    def chain(self) -> str: ...
    @property
    def asset(self) -> str: ...
    @property
    def to(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def tx_hash(self) -> str | None: ...


@dataclass(slots=True)
class Approval:
    """An approved withdrawal as the backtest reads it from a ledger line.

    ``epoch`` is the approval time in seconds since 1970 (UTC); ``amount`` is in the asset's
    units, exact.
    """

    epoch: float
    chain: str
    asset: str
    to: str
    amount: Decimal
    tx_hash: str | None
