"""Ledger reconciliation: a hot-wallet outflow that no approved withdrawal explains.

With the exchange's ledger feed this is the strongest signal there is, so it freezes at the first
unexplained transfer, even a tiny test. An outflow is explained by an approval on the same chain
and asset, to the same address, made at most ``match_window_s`` before it or ``late_s`` after it
(clocks and queues reorder; in a backtest the approvals up to ``late_s`` ahead are read before
each transfer), or by an approval naming its tx hash. The amount may be the approved amount give
or take ``amount_tolerance``, or less: a withdrawal fee taken from the payment, or a withdrawal
paid in parts. Paying the customer's address less than was approved moves nothing to anyone
else, so it is safe to accept; paying more is not. An approval explains one transfer, or several
that together pay it; internal transfers and configured counterparties are never questioned.

The detector is inactive until it has seen an approval (or is built ``active=True``): without a
ledger feed every outflow would look unexplained.

>>> from datetime import UTC, datetime
>>> from drainwatch.config import WalletConfig
>>> from drainwatch.events import ApprovedWithdrawal, Direction, Transfer
>>> t0 = datetime(2018, 1, 25, 15, 0, tzinfo=UTC)
>>> rec = LedgerReconciliation()
>>> rec.learn_approval(ApprovedWithdrawal(id="w1", time=t0, chain="nem", asset="XEM",
...                                       to="CUSTOMER", amount=Decimal("5")))
>>> state = WalletState(WalletConfig(chain="nem", address="HOT", label="nem-hot"), "XEM")
>>> def out(to, amount, tx):
...     t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty=to,
...         asset="XEM", amount=amount, decimals=0, tx_hash=tx, position=0,
...         time=t0.replace(minute=2))
...     state.prepare(t)
...     return t
>>> rec.score_one(out("CUSTOMER", 5, "a"), state) is None
True
>>> rec.score_one(out("THIEF", 10, "b"), state).summary
'nem-hot sent 10 XEM to THIEF, which matches no approved withdrawal'
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, NamedTuple

from detectors.approval import ApprovalView
from detectors.base import Finding, WalletState, format_units
from detectors.move import TransferView
from drainwatch.events import Direction, Severity, TransferStatus, normalize_address

__all__ = ["LedgerReconciliation"]

_Key = tuple[str, str, str]
"""What an approval and a transfer must share: chain and asset case-folded, destination."""


class _Approval(NamedTuple):
    time: float
    amount: Decimal
    tx_hash: str | None
    seq: int
    """Which approval this is, counted from the first one learned."""
    left: Decimal
    """What is still to be paid of ``amount`` (less after a payment in parts)."""


class LedgerReconciliation:
    """Freezes a hot wallet on an outflow that matches no approved withdrawal."""

    outflows_only: Final = True
    """Neither judges nor learns from inflows (the engine skips them)."""

    def __init__(
        self,
        *,
        name: str = "ledger",
        match_window_s: int = 10800,
        amount_tolerance: Decimal = Decimal("0.02"),
        active: bool = False,
        late_s: int = 120,
    ) -> None:
        self.name = name
        self.late_s = late_s
        self.match_window_s = match_window_s
        self.amount_tolerance = amount_tolerance
        self.active = active
        self._open: dict[_Key, list[_Approval]] = {}
        self._expired_at = float("-inf")
        """The approval time of the last pruning: approvals are pruned once per window."""
        self._assets: dict[tuple[str, str], tuple[str, str]] = {}
        """(chain, asset) as written -> as matched: both case-folded, the asset normalised."""
        self._matched: tuple[TransferView | None, tuple[_Key, int] | None] = (None, None)
        """The last transfer matched and its match: the engine asks up to three times per
        outflow (score, explain, learn), and the approvals change only in between."""
        self.learned = 0
        """Approvals learned so far."""
        self.used: list[int] | None = None
        """When a list, for a backtest split between processes (:mod:`detectors.partitioned`):
        the approvals (by number, counted from the first learned) outflows matched."""
        self.compared: list[int] | None = None
        """Likewise: the open approvals an outflow that matched none was compared with."""

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot carries the approvals, not the last transfer looked at.
        return {**self.__dict__, "_matched": (None, None), "used": None, "compared": None}

    def adopt(self, other: LedgerReconciliation) -> None:
        """Join another engine's wallets, in a backtest split between processes.

        Every engine of a split run learned the same approvals in the same order, and each used
        up only what its own wallets' outflows matched. While no approval one engine used up was
        matched or compared by another (the split run checks that with :attr:`used` and
        :attr:`compared`), the approvals still open in every engine are those the one-process
        run has open. An engine that has learned no approval yet takes the other's over.
        """
        if self.learned == 0 and not self._open:
            self.__dict__.update(other.__getstate__())
            return
        if other.learned != self.learned:
            raise ValueError("ledger reconciliation: engines learned different approvals")
        # An approval open in both: the one with less left (paid in part by one of them).
        theirs = {a.seq: a for approvals in other._open.values() for a in approvals}
        for key in list(self._open):
            kept = [
                min(a, theirs[a.seq], key=lambda b: b.left)
                for a in self._open[key]
                if a.seq in theirs
            ]
            if kept:
                self._open[key] = kept
            else:
                del self._open[key]
        self._assets.update(other._assets)
        self._matched = (None, None)

    def learn_approval(self, approval: ApprovalView) -> None:
        """Remember an approval until it explains a transfer or grows too old."""
        self.active = True
        self._matched = (None, None)
        when = approval.epoch
        if when > self._expired_at + self.match_window_s:
            self._expire(when)
            self._expired_at = when
        key = self._key(approval.chain, approval.asset, approval.to)
        self._open.setdefault(key, []).append(
            _Approval(when, approval.amount, approval.tx_hash, self.learned, approval.amount)
        )
        self.learned += 1

    def _key(self, chain: str, asset: str, to: str) -> _Key:
        try:
            folded_chain, folded_asset = self._assets[chain, asset]
        except KeyError:
            folded_chain, folded_asset = self._assets.setdefault(
                (chain, asset), (chain.casefold(), normalize_address(asset).casefold())
            )
        return folded_chain, folded_asset, normalize_address(to)

    def _expire(self, now: float) -> None:
        horizon = now - 2 * self.match_window_s
        for key in list(self._open):
            kept = [a for a in self._open[key] if a.time >= horizon]
            if kept:
                self._open[key] = kept
            else:
                del self._open[key]

    def _match(self, transfer: TransferView) -> tuple[_Key, int] | None:
        last, match = self._matched
        if last is transfer:
            return match
        match = self._find(transfer)
        self._matched = (transfer, match)
        if self.used is not None and self.compared is not None:
            if match is not None:
                key, index = match
                self.used.append(self._open[key][index].seq)
            else:
                key = self._key(transfer.chain, transfer.asset, transfer.counterparty)
                self.compared.extend(a.seq for a in self._open.get(key, ()))
        return match

    def _find(self, transfer: TransferView) -> tuple[_Key, int] | None:
        key = self._key(transfer.chain, transfer.asset, transfer.counterparty)
        candidates = self._open.get(key)
        if not candidates:
            return None
        now = transfer.epoch
        value = Decimal(f"{transfer.amount}E-{transfer.decimals}")
        tolerance = self.amount_tolerance
        # Else the approval with the least left that this payment pays in part (less than left).
        part: tuple[Decimal, int] | None = None
        for index, approval in enumerate(candidates):
            if approval.tx_hash is not None and approval.tx_hash == transfer.tx_hash:
                return key, index
            if now - self.match_window_s <= approval.time <= now + self.late_s:
                left = approval.left
                if abs(value - left) <= left * tolerance:
                    return key, index
                if value < left and (part is None or left < part[0]):
                    part = (left, index)
        return None if part is None else (key, part[1])

    def _questioned(self, transfer: TransferView, state: WalletState) -> bool:
        return (
            self.active
            and transfer.direction is Direction.OUT
            and transfer.status is not TransferStatus.RETRACTED
            and state.role == "hot"
            and transfer.amount > 0
            and not state.is_internal(transfer.counterparty)
            and not state.is_known(transfer.counterparty)
        )

    def explains(self, transfer: TransferView, state: WalletState) -> bool:
        """Whether an open approved withdrawal explains this outflow (pure)."""
        return self._questioned(transfer, state) and self._match(transfer) is not None

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """A critical freeze finding when an outflow matches no open approval."""
        if not self.active:  # no approval seen yet: nothing to reconcile (the usual backtest)
            return None
        if not self._questioned(transfer, state) or self._match(transfer) is not None:
            return None
        units = state.units
        before = state.balance_units()
        key = self._key(transfer.chain, transfer.asset, transfer.counterparty)
        return Finding(
            detector=self.name,
            severity=Severity.CRITICAL,
            freeze=True,
            score=1.0,
            summary=(
                f"{state.label} sent {format_units(units, state.scale)} {transfer.asset} to "
                f"{transfer.counterparty}, which matches no approved withdrawal"
            ),
            metrics={
                "amount": format_units(units, state.scale),
                "balance_before": format_units(before, state.scale),
                # Open approvals to this address (of other amounts or times): not all open
                # approvals, which would depend on other wallets' payouts.
                "approvals_to_address": str(len(self._open.get(key, ()))),
                "rule_unapproved_outflow": "1",
            },
            transfer_ids=(transfer.id,),
            tx_hashes=(transfer.tx_hash,),
        )

    def learn_one(self, transfer: TransferView) -> None:
        """Use up the approval that explains this outflow, so it explains no other."""
        if not self.active or transfer.direction is not Direction.OUT:
            return
        match = self._match(transfer)
        if match is not None:
            self._matched = (None, None)
            key, index = match
            approvals = self._open[key]
            approval = approvals[index]
            left = approval.left - Decimal(f"{transfer.amount}E-{transfer.decimals}")
            if (
                approval.tx_hash != transfer.tx_hash
                and left > approval.amount * self.amount_tolerance
            ):
                approvals[index] = approval._replace(left=left)  # paid in part: the rest is open
                return
            del approvals[index]
            if not approvals:
                del self._open[key]
