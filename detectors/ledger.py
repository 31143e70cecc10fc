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

A destination the detector has already flagged ``repeat_trust`` times (3) more than a day before,
such as the exchange's cold wallet when the config does not list it (its sweeps are not customer
withdrawals, so the ledger never approves them), is not flagged again for payments up to
``repeat_trust_factor`` (2x) the largest flagged one: each of those earlier payments froze the
wallet and paged someone, so only an address the operators let through, on more than one day,
is trusted, and never for much more than it had. Payments it approved do not count: a thief who
withdrew to his address as a customer is not trusted. The other detectors judge these payments
as usual.

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

from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

from detectors.approval import ApprovalView
from detectors.base import Finding, HeldWallets, WalletState, format_units, split_by_wallet
from detectors.move import TransferView
from drainwatch.events import (
    ApprovalUse,
    Direction,
    Severity,
    TransferStatus,
    event_id,
    normalize_address,
    wallet_key,
)

__all__ = ["LateExplanation", "LedgerReconciliation", "MatchedPayment"]

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
    id: str | None = None
    """The approval's event id (live: shared between detector replicas by it)."""


class MatchedPayment(NamedTuple):
    """A payment matched with an approval, by this detector or another replica."""

    transfer_id: str
    chain: str
    wallet: str
    """The paying wallet (its replica judges the payment)."""
    epoch: float
    value: Decimal
    tx_hash: str
    to: str
    asset: str

    @property
    def key(self) -> str:
        """The paying wallet's bus key."""
        return wallet_key(self.chain, self.wallet)


class LateExplanation(NamedTuple):
    """An approval that arrived after the payment it explains had been judged unexplained."""

    payment: MatchedPayment
    approval_id: str | None
    approval_amount: Decimal
    approval_epoch: float
    unexplained: int
    """The paying wallet's other payments flagged within the match window and still
    unexplained."""


class _Lookup(NamedTuple):
    """What the open approvals say of one outflow."""

    key: _Key
    at: int | None
    """Where in ``_open[key]`` the approval that explains it is; None if none does."""
    value: Decimal | None
    """The outflow's amount in the asset's units (None when no approval to it is open)."""


_NOT_YET: Final = (None, None)
_DAY_S: Final = 86400
_QUIET_S: Final = 1800
"""A ledger alert says how long no approval has come once it is this long (a feed that stopped
makes every payment unexplained)."""
_UNEXPLAINED_MAX: Final = 1000
"""Flagged payments kept per destination for an approval that comes late (a drain's many
transfers to one address need no more)."""
_FlagKey = tuple[str, str, str, str]
"""Chain and asset as matched, the paying wallet, the destination."""


def _payment(transfer: TransferView, value: Decimal) -> MatchedPayment:
    """``transfer`` as a payment of ``value`` (in the asset's units)."""
    return MatchedPayment(
        transfer.id,
        transfer.chain,
        transfer.wallet,
        transfer.epoch,
        value,
        transfer.tx_hash,
        transfer.counterparty,
        transfer.asset,
    )


def describe_quiet(seconds: int) -> str:
    """A stretch of time, in hours and minutes.

    >>> describe_quiet(1800), describe_quiet(7500), describe_quiet(90000)
    ('30 min', '2 h 5 min', '25 h')
    """
    hours, minutes = divmod(seconds // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes and hours < 10 else f"{hours} h"


class LedgerReconciliation:
    """Freezes a hot wallet on an outflow that matches no approved withdrawal."""

    outflows_only: Final = True
    """Neither judges nor learns from inflows (the engine skips them)."""
    learns_from_freezes: Final = True
    """Keeps facts (the approvals used up, the outflows it flagged), so it learns from the
    outflows it froze on too."""

    def __init__(
        self,
        *,
        name: str = "ledger",
        match_window_s: int = 10800,
        amount_tolerance: Decimal = Decimal("0.02"),
        active: bool = False,
        late_s: int = 120,
        repeat_trust: int = 3,
        repeat_trust_factor: Decimal = Decimal(2),
        repeat_history_s: int = 28 * _DAY_S,
    ) -> None:
        self.name = name
        self.late_s = late_s
        self.repeat_trust = repeat_trust
        self.repeat_trust_factor = repeat_trust_factor
        self.repeat_history_s = repeat_history_s
        self._flagged: dict[_FlagKey, list[tuple[float, Decimal]]] = {}
        """(time, amount) of the outflows flagged per wallet and destination, for
        ``repeat_history_s``: what makes a destination trusted (see the module doc)."""
        self.counts_flags = True
        """False while transfers are replayed without their approvals (a live detector's state
        rebuild): what it flags then is not counted toward trusting a destination."""
        self.match_window_s = match_window_s
        self.amount_tolerance = amount_tolerance
        self.active = active
        self._open: dict[_Key, list[_Approval]] = {}
        self._expired_at = float("-inf")
        """The approval time of the last pruning: approvals are pruned once per window."""
        self._outflow_at = float("-inf")
        """The latest outflow time this detector has learned from."""
        self._assets: dict[tuple[str, str], tuple[str, str]] = {}
        """(chain, asset) as written -> as matched: both case-folded, the asset normalised."""
        self._looked: tuple[TransferView, _Lookup] | tuple[None, None] = _NOT_YET
        """The last outflow looked up and what was found: the engine asks up to three times per
        outflow (score, explain, learn), and the approvals change only in between."""
        self.learned = 0
        """Approvals learned so far."""
        self.latest_approval_at = float("-inf")
        """The time of the latest approval learned (what the feed last said)."""
        self.recording = False
        """For a backtest split between processes (:mod:`detectors.partitioned`): note in
        :attr:`used` and :attr:`compared` which approvals outflows were matched with."""
        self.used: list[int] = []
        """The approvals (by number, counted from the first learned) outflows matched."""
        self.compared: list[int] = []
        """The open approvals an outflow that matched none was compared with."""
        self.shares_uses = False
        """Live, with several detector replicas: every approval a payment used up is told to
        the others (:attr:`published`), and theirs are learned (:meth:`learn_use`), so that an
        approval explains one payment across the replicas (see :meth:`learn_use`)."""
        self.published: list[ApprovalUse] = []
        """The uses made here since they were last taken (with :attr:`shares_uses`)."""
        self._approvals: dict[str, tuple[_Key, _Approval]] = {}
        """With :attr:`shares_uses`: every approval of the last two windows by id, as learned."""
        self._ids_by_key: dict[_Key, list[str]] = {}
        self._uses: dict[str, dict[str, MatchedPayment]] = {}
        """Approval id -> the payments (by transfer id) any replica matched with it."""
        self._use_of: dict[str, str] = {}
        """Transfer id -> the approval it used (the latest said)."""
        self._unexplained: dict[_Key, list[MatchedPayment]] = {}
        """The payments flagged (not in a state rebuild) within the last window or two, by
        destination: an approval that reaches the detector after its payment was judged (a
        ledger feed running late) explains one of them (:attr:`explained_late`)."""
        self._unexplained_kept_at = float("-inf")
        """The outflow time the flagged payments were last pruned at (once a window: a ledger
        feed that stops must not let them grow without bound)."""
        self.explained_late: list[LateExplanation] = []
        """Flagged payments that approvals learned since the last call explained
        (:meth:`take_explained_late`)."""

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot carries the approvals, not the last transfer looked at, nor the notes.
        return {
            **self.__dict__,
            "_looked": _NOT_YET,
            "recording": False,
            "used": [],
            "compared": [],
            "published": [],
            "explained_late": [],
        }

    def adopt(self, other: LedgerReconciliation) -> None:
        """Join another engine's wallets, in a backtest split between processes.

        Every engine of a split run learned the same approvals in the same order, and each used
        up only what its own wallets' outflows matched. While no approval one engine used up was
        matched or compared by another (the split run checks that with :attr:`used` and
        :attr:`compared`), the approvals still open in every engine are those the one-process
        run has open. An engine that has learned no approval yet takes the other's over.
        """
        # Each engine flagged its own wallets' outflows only: the union.
        flagged = {**other._flagged, **self._flagged}
        unexplained = {key: list(payments) for key, payments in self._unexplained.items()}
        for key, payments in other._unexplained.items():
            unexplained.setdefault(key, []).extend(payments)
        took_over = self.learned == 0 and not self._open
        if took_over:
            self.__dict__.update(other.__getstate__())
        self._flagged = flagged
        self._unexplained = unexplained
        if took_over:
            return
        if other.learned != self.learned:
            raise ValueError("ledger reconciliation: engines learned different approvals")
        # An approval open in both: the one with less left (paid in part by one of them).
        theirs = {a.seq: a for approvals in other._open.values() for a in approvals}
        self._keep(
            lambda approvals: [
                min(a, theirs[a.seq], key=lambda b: b.left) for a in approvals if a.seq in theirs
            ]
        )
        self._assets.update(other._assets)
        self._looked = _NOT_YET

    def held_part(self, held: HeldWallets) -> dict[_FlagKey, list[tuple[float, Decimal]]]:
        """What this detector keeps per wallet, of the wallets ``held`` names: the outflows it
        flagged. The approvals are the whole exchange's; a restarted detector reads them again
        from the ledger topic."""
        return {k: list(v) for k, v in split_by_wallet(self._flagged, held, wallet_at=2)[0].items()}

    def restore_part(self, part: object, held: HeldWallets) -> None:
        """Take back what :meth:`held_part` kept of the wallets ``held`` names (it replaces
        what is known of them)."""
        if not isinstance(part, dict):
            raise TypeError(f"not a ledger detector's part: {type(part).__name__}")
        self._flagged = split_by_wallet(self._flagged, held, wallet_at=2)[1] | part

    def learn_approval(self, approval: ApprovalView) -> None:
        """Remember an approval until it explains a transfer or grows too old."""
        self.active = True
        self._looked = _NOT_YET
        when = approval.epoch
        self.latest_approval_at = max(self.latest_approval_at, when)
        if when > self._expired_at + self.match_window_s:
            # Two windows before the latest approval, or before the latest outflow judged if
            # that is earlier: a detector far behind on transfers (back from an outage) reads
            # the approvals up to now at once, and its backlog's payments must still find
            # theirs. Never more than a day of approvals, though.
            self._expire(max(min(when, self._outflow_at), when - _DAY_S + 2 * self.match_window_s))
            self._expired_at = when
        key = self._key(approval.chain, approval.asset, approval.to)
        aid: str | None = getattr(approval, "id", None)  # live events carry one
        learned = _Approval(
            when, approval.amount, approval.tx_hash, self.learned, approval.amount, aid
        )
        self.learned += 1
        if self.shares_uses and aid is not None:
            if aid in self._approvals:
                return  # read again (a restart reads the last two windows of the ledger)
            self._approvals[aid] = (key, learned)
            self._ids_by_key.setdefault(key, []).append(aid)
            self._open.setdefault(key, []).append(learned)
            if aid in self._uses:  # another replica's payment came before the approval
                self._settle(aid)
        else:
            self._open.setdefault(key, []).append(learned)
        if self._unexplained:
            self._explain_late(key, learned)

    def _explain_late(self, key: _Key, approval: _Approval) -> None:
        """Use ``approval``, just learned, for the flagged payments to its address it explains
        (as :meth:`_find` would have: the one naming its tx hash, else the nearest in amount
        within the tolerance, else the largest it pays in part), and note each in
        :attr:`explained_late`."""
        waiting = self._unexplained.get(key)
        tolerance = self.amount_tolerance
        while waiting:
            current = next((a for a in self._open.get(key, ()) if a.seq == approval.seq), None)
            if current is None:
                return  # used up (by another replica's payment, or by those explained here)
            left = current.left
            best: tuple[int, Decimal, float, int] | None = None
            for index, payment in enumerate(waiting):
                apart = abs(payment.epoch - approval.time)
                if approval.tx_hash is not None and approval.tx_hash == payment.tx_hash:
                    fit = (0, Decimal(0), apart, index)
                elif not (
                    payment.epoch - self.match_window_s
                    <= approval.time
                    <= payment.epoch + self.late_s
                ):
                    continue
                elif abs(payment.value - left) <= left * tolerance:
                    fit = (1, abs(payment.value - left), apart, index)
                elif payment.value < left:
                    fit = (2, left - payment.value, apart, index)
                else:
                    continue
                if best is None or fit < best:
                    best = fit
            if best is None:
                return
            payment = waiting.pop(best[3])
            if not waiting:
                del self._unexplained[key]
            self._pay(key, current, payment)
            self._unflag(key, payment)
            self.explained_late.append(
                LateExplanation(
                    payment,
                    approval.id,
                    approval.amount,
                    approval.time,
                    sum(
                        p.key == payment.key
                        for payments in self._unexplained.values()
                        for p in payments
                    ),
                )
            )

    def _pay(self, key: _Key, approval: _Approval, payment: MatchedPayment) -> None:
        """Use up (or, paid in part, reduce) the open ``approval`` to ``key`` by ``payment``."""
        self._looked = _NOT_YET
        if self.shares_uses and approval.id is not None:
            self._use(approval.id, payment, publish=True)
            return
        approvals = self._open[key]
        at = next(i for i, a in enumerate(approvals) if a.seq == approval.seq)
        left = approval.left - payment.value
        if approval.tx_hash != payment.tx_hash and left > approval.amount * self.amount_tolerance:
            approvals[at] = approval._replace(left=left)  # paid in part: the rest stays open
            return
        del approvals[at]
        if not approvals:
            del self._open[key]

    def _unflag(self, key: _Key, payment: MatchedPayment) -> None:
        """Take back the flag of a payment an approval explained after all: it does not count
        toward trusting its destination."""
        flag_key = self._flag_key(payment.wallet, key)
        flagged = self._flagged.get(flag_key)
        if flagged is None:
            return
        with suppress(ValueError):
            flagged.remove((payment.epoch, payment.value))
        if not flagged:
            del self._flagged[flag_key]

    def forget_flagged(self, transfer: TransferView) -> None:
        """A flagged payment retracted (its block reorganised away, or dropped from the pool):
        no approval explains it later, and it does not count toward trusting its destination."""
        if not self._unexplained:
            return
        key = self._key(transfer.chain, transfer.asset, transfer.counterparty)
        waiting = self._unexplained.get(key)
        if not waiting:
            return
        for payment in [p for p in waiting if p.transfer_id == transfer.id]:
            waiting.remove(payment)
            self._unflag(key, payment)
        if not waiting:
            del self._unexplained[key]

    def take_explained_late(self) -> list[LateExplanation]:
        """The flagged payments approvals explained since the last call."""
        explained, self.explained_late = self.explained_late, []
        return explained

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
        self._keep(lambda approvals: [a for a in approvals if a.time >= horizon])
        if self._unexplained:
            self._keep_unexplained(horizon)
        if self._approvals or self._uses:
            self._expire_shared(horizon)
        forgotten = now - self.repeat_history_s
        for key, flagged in list(self._flagged.items()):
            if max(when for when, _ in flagged) < forgotten:
                del self._flagged[key]

    def _keep_unexplained(self, horizon: float) -> None:
        """Forget the flagged payments made before ``horizon``."""
        self._unexplained = {
            key: kept
            for key, payments in self._unexplained.items()
            if (kept := [p for p in payments if p.epoch >= horizon])
        }

    def _keep(self, kept: Callable[[list[_Approval]], list[_Approval]]) -> None:
        """Replace each address's open approvals by ``kept`` of them (an empty list: none)."""
        for key in list(self._open):
            approvals = kept(self._open[key])
            if approvals:
                self._open[key] = approvals
            else:
                del self._open[key]

    def _look(self, transfer: TransferView) -> _Lookup:
        last, found = self._looked
        if last is transfer and found is not None:
            return found
        found = self._find(transfer)
        self._looked = (transfer, found)
        if self.recording:
            if found.at is not None:
                self.used.append(self._open[found.key][found.at].seq)
            else:
                self.compared.extend(a.seq for a in self._open.get(found.key, ()))
        return found

    def _find(self, transfer: TransferView) -> _Lookup:
        key = self._key(transfer.chain, transfer.asset, transfer.counterparty)
        candidates = self._open.get(key)
        if not candidates:
            return _Lookup(key, None, None)
        now = transfer.epoch
        value = Decimal(f"{transfer.amount}E-{transfer.decimals}")
        tolerance = self.amount_tolerance
        # The approval naming its tx hash; else the one whose amount left is nearest the
        # payment's, within the tolerance (on a tie the one made nearest it in time); else the
        # one with the least left that it pays in part. Nearest, not first: payments to one
        # address from several wallets (a market maker's payouts) are judged in time order per
        # wallet only (a detector catching up reads its partitions hours apart), and a payment
        # that took any approval within 2% could take another wallet's, which its own payment,
        # judged later, then misses.
        full: tuple[Decimal, float, int] | None = None
        part: tuple[Decimal, int] | None = None
        for index, approval in enumerate(candidates):
            if approval.tx_hash is not None and approval.tx_hash == transfer.tx_hash:
                return _Lookup(key, index, value)
            if now - self.match_window_s <= approval.time <= now + self.late_s:
                left = approval.left
                off = abs(value - left)
                if off <= left * tolerance:
                    fit = (off, abs(now - approval.time), index)
                    if full is None or fit < full:
                        full = fit
                elif value < left and (part is None or left < part[0]):
                    part = (left, index)
        if full is not None:
            return _Lookup(key, full[2], value)
        return _Lookup(key, None if part is None else part[1], value)

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
        return self._questioned(transfer, state) and (
            self._look(transfer).at is not None or self._matched(transfer)
        )

    def _matched(self, transfer: TransferView) -> bool:
        """Whether this payment is already matched with an approval (by the replica that held
        its wallet before, as its uses said)."""
        return bool(self._use_of) and transfer.id in self._use_of

    def score_one(self, transfer: TransferView, state: WalletState) -> Finding | None:
        """A critical freeze finding when an outflow matches no open approval."""
        if not self.active:  # no approval seen yet: nothing to reconcile (the usual backtest)
            return None
        if not self._questioned(transfer, state):
            return None
        found = self._look(transfer)
        if found.at is not None or self._trusted(transfer, found.key) or self._matched(transfer):
            return None
        units = state.units
        before = state.balance_units()
        heard = self.latest_approval_at > float("-inf")
        quiet_s = max(0, int(transfer.epoch - self.latest_approval_at)) if heard else None
        return Finding(
            detector=self.name,
            severity=Severity.CRITICAL,
            freeze=True,
            score=1.0,
            summary=(
                f"{state.label} sent {format_units(units, state.scale)} {transfer.asset} to "
                f"{transfer.counterparty}, which matches no approved withdrawal"
                + (f"; {left}" if (left := state.left_after(units)) else "")
                + (
                    f"; no approval at all for {describe_quiet(quiet_s)}: is the ledger feed down?"
                    if quiet_s is not None and quiet_s >= _QUIET_S
                    else ""
                )
            ),
            metrics={
                "amount": format_units(units, state.scale),
                "balance_before": format_units(before, state.scale),
                # Open approvals to this address (of other amounts or times, within two
                # windows): not all open approvals, which would depend on other wallets' payouts.
                "approvals_to_address": str(
                    sum(
                        a.time >= transfer.epoch - 2 * self.match_window_s
                        for a in self._open.get(found.key, ())
                    )
                ),
                **({"approvals_quiet_s": str(quiet_s)} if quiet_s is not None else {}),
                "rule_unapproved_outflow": "1",
            },
            transfer_ids=(transfer.id,),
            tx_hashes=(transfer.tx_hash,),
        )

    @staticmethod
    def _flag_key(wallet: str, key: _Key) -> _FlagKey:
        return key[0], key[1], wallet, key[2]

    def _trusted(self, transfer: TransferView, key: _Key) -> bool:
        """Whether an unexplained outflow goes to a destination flagged ``repeat_trust`` times
        more than a day ago, and is at most ``repeat_trust_factor`` times the largest of those."""
        if self.repeat_trust <= 0:
            return False
        flagged = self._flagged.get(self._flag_key(transfer.wallet, key))
        if flagged is None or len(flagged) < self.repeat_trust:
            return False
        cutoff = transfer.epoch - _DAY_S
        before = [amount for when, amount in flagged if when < cutoff]
        if len(before) < self.repeat_trust:
            return False
        value = Decimal(f"{transfer.amount}E-{transfer.decimals}")
        return value <= max(before) * self.repeat_trust_factor

    def learn_with_state(self, transfer: TransferView, state: WalletState) -> None:
        """Use up the approval that explains this outflow (:meth:`learn_one`), or remember it
        as flagged: an outflow this detector questions, explained by no approval and not
        trusted."""
        if not self.active or transfer.direction is not Direction.OUT:
            return
        self._outflow_at = max(self._outflow_at, transfer.epoch)
        if self._matched(transfer):
            return
        found = self._look(transfer)
        if found.at is not None:
            self.learn_one(transfer)
            return
        if (
            not self.counts_flags
            or not self._questioned(transfer, state)
            or self._trusted(transfer, found.key)
        ):
            return
        value = Decimal(f"{transfer.amount}E-{transfer.decimals}")
        if transfer.epoch > self._unexplained_kept_at + self.match_window_s:
            self._keep_unexplained(transfer.epoch - 2 * self.match_window_s)
            self._unexplained_kept_at = transfer.epoch
        waiting = self._unexplained.setdefault(found.key, [])
        waiting.append(_payment(transfer, value))
        if len(waiting) > _UNEXPLAINED_MAX:
            del waiting[0]
        if self.repeat_trust <= 0:
            return
        flagged = self._flagged.setdefault(self._flag_key(transfer.wallet, found.key), [])
        forgotten = transfer.epoch - self.repeat_history_s
        while flagged and flagged[0][0] < forgotten:
            del flagged[0]
        flagged.append((transfer.epoch, value))

    def learn_one(self, transfer: TransferView) -> None:
        """Use up the approval that explains this outflow, so it explains no other."""
        if not self.active or transfer.direction is not Direction.OUT or self._matched(transfer):
            return
        found = self._look(transfer)
        if found.at is not None and found.value is not None:
            self._pay(found.key, self._open[found.key][found.at], _payment(transfer, found.value))

    # -- sharing the uses between detector replicas -------------------------------------------

    def learn_use(self, event: ApprovalUse, *, mine: bool = False) -> list[MatchedPayment]:
        """Learn which approval a payment used up, as a replica said; return the payments the
        approval cannot explain now.

        A payment's uses are said in order by the one replica that judges its wallet, the latest
        standing. For a payment of this replica's wallets (``mine``) what it knows is newer than
        anything it reads back, so a use read back changes nothing (after a restart, when it
        knows nothing of them, its own earlier uses are learned).

        An approval explains payments up to its amount: when two replicas each matched a payment
        with it (each judging its own wallet before it heard of the other's), the payments are
        taken in time order and the ones beyond the amount are returned. The replica that judges
        such a payment moves it to another open approval that explains it (:meth:`rehome`: the
        same customer approved twice, paid from two wallets), or freezes its wallet.
        """
        use = MatchedPayment(
            event.transfer_id,
            event.chain,
            event.wallet,
            event.time.timestamp(),
            event.amount,
            event.tx_hash,
            event.to,
            event.asset,
        )
        known = self._use_of.get(use.transfer_id)
        if known == event.approval_id or (mine and known is not None):
            return []
        self._use(event.approval_id, use, publish=False)
        return self.unexplained(event.approval_id)

    def unexplained(self, approval_id: str) -> list[MatchedPayment]:
        """The payments matched with an approval beyond its amount (the latest first left
        out); none while the approval is not known here yet."""
        entry = self._approvals.get(approval_id)
        if entry is None:
            return []
        learned = entry[1]
        uses = sorted(
            self._uses.get(approval_id, {}).values(),
            key=lambda u: (u.tx_hash != learned.tx_hash, u.epoch, u.transfer_id),
        )
        limit = learned.amount * (1 + self.amount_tolerance)
        total = Decimal(0)
        over = []
        for use in uses:
            if total + use.value > limit and use.tx_hash != learned.tx_hash:
                over.append(use)
            else:
                total += use.value
        return over

    def rehome(self, use: MatchedPayment) -> bool:
        """Match a payment its approval cannot explain with another open approval to the same
        customer that does (the one it pays in full, else the one with the least left that it
        pays in part), and say so to the other replicas; False when none does."""
        current = self._use_of.get(use.transfer_id)
        entry = self._approvals.get(current) if current is not None else None
        if entry is None:
            return False
        best: tuple[bool, Decimal, str] | None = None
        tolerance = self.amount_tolerance
        for other in self._ids_by_key.get(entry[0], ()):
            candidate = self._approvals[other][1]
            if other == current or not (
                use.epoch - self.match_window_s <= candidate.time <= use.epoch + self.late_s
                or (candidate.tx_hash is not None and candidate.tx_hash == use.tx_hash)
            ):
                continue
            left = candidate.amount - self._used(other)
            if left <= candidate.amount * tolerance:
                continue
            full = abs(use.value - left) <= left * tolerance
            if (full or use.value < left) and (best is None or (not full, left) < best[:2]):
                best = (not full, left, other)
        if best is None:
            return False
        self._use(best[2], use, publish=True)
        return True

    def approval_amount(self, approval_id: str) -> Decimal | None:
        """The amount of an approval known here."""
        entry = self._approvals.get(approval_id)
        return entry[1].amount if entry is not None else None

    def users(self, approval_id: str) -> list[MatchedPayment]:
        """The payments matched with an approval, in time order."""
        return sorted(self._uses.get(approval_id, {}).values(), key=lambda u: u.epoch)

    def take_published(self) -> list[ApprovalUse]:
        """The uses made here since the last call, for the other replicas."""
        published, self.published = self.published, []
        return published

    def _used(self, approval_id: str) -> Decimal:
        return sum((u.value for u in self._uses.get(approval_id, {}).values()), Decimal(0))

    def _use(self, approval_id: str, use: MatchedPayment, *, publish: bool) -> None:
        """Record that ``use`` used up ``approval_id`` (moving it off another approval)."""
        previous = self._use_of.get(use.transfer_id)
        if previous is not None and previous != approval_id:
            self._uses.get(previous, {}).pop(use.transfer_id, None)
            self._settle(previous)
        self._uses.setdefault(approval_id, {})[use.transfer_id] = use
        self._use_of[use.transfer_id] = approval_id
        self._settle(approval_id)
        if publish:
            self.published.append(
                ApprovalUse(
                    id=event_id("approval-use", use.transfer_id, approval_id),
                    time=datetime.fromtimestamp(use.epoch, UTC),
                    chain=use.chain,
                    wallet=use.wallet,
                    transfer_id=use.transfer_id,
                    tx_hash=use.tx_hash,
                    approval_id=approval_id,
                    asset=use.asset,
                    to=use.to,
                    amount=use.value,
                )
            )

    def _settle(self, approval_id: str) -> None:
        """Make the open approvals say what is left of ``approval_id`` after its uses."""
        entry = self._approvals.get(approval_id)
        if entry is None:
            return
        key, learned = entry
        self._looked = _NOT_YET
        uses = self._uses.get(approval_id, {})
        left = learned.amount - self._used(approval_id)
        paid = learned.tx_hash is not None and any(
            u.tx_hash == learned.tx_hash for u in uses.values()
        )
        approvals = self._open.get(key, [])
        at = next((i for i, a in enumerate(approvals) if a.id == approval_id), None)
        if paid or left <= learned.amount * self.amount_tolerance:
            if at is not None:
                del approvals[at]
                if not approvals:
                    del self._open[key]
        elif at is not None:
            approvals[at] = approvals[at]._replace(left=left)
        else:  # open again (a payment moved off it): in the order approvals were learned
            approvals = self._open.setdefault(key, [])
            approvals.append(learned._replace(left=left))
            approvals.sort(key=lambda a: a.seq)

    def _expire_shared(self, horizon: float) -> None:
        """Forget the approvals older than ``horizon``, and their uses."""
        for approval_id in [a for a, (_, ap) in self._approvals.items() if ap.time < horizon]:
            key, _ = self._approvals.pop(approval_id)
            ids = self._ids_by_key[key]
            ids.remove(approval_id)
            if not ids:
                del self._ids_by_key[key]
        for approval_id in [
            a
            for a, uses in self._uses.items()
            if a not in self._approvals and all(u.epoch < horizon for u in uses.values())
        ]:
            for transfer_id in self._uses.pop(approval_id):
                if self._use_of.get(transfer_id) == approval_id:
                    del self._use_of[transfer_id]
