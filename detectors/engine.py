"""The detection engine: per-wallet state plus detectors, turning transfers into alerts.

For each transfer of a watched wallet: drop duplicates, undo retractions, advance the wallet's
event time, let every detector score it (pure), count it in the wallet's state, let each detector
that did not freeze on it learn from it, and turn findings into :class:`~drainwatch.events.Alert`
events with deterministic ids. Two policies sit between findings and alerts:

* **shadow mode**: a detector named in ``[detection] shadow`` alerts with ``shadow=True`` and
  never requests a freeze;
* **de-escalation**: once a (wallet, detector) has requested a freeze, it does not request
  another within ``cooldown_s``; later critical findings still go out as evidence, at severity
  ``info`` (recorded, not paged again), without freeze, with ``freeze_suppressed`` in their
  metrics. A warning is not repeated while its episode lasts (findings of that detector on
  that wallet less than ``warning_episode_s``, twice ``cooldown_s``, apart: a wallet that pays
  out in hourly batches makes a finding per batch) unless its score grew by
  ``escalation_factor``, at least ``escalation_gap_s`` (5 min) after it was said, or
  ``warning_repeat_s`` (4 h) passed since it was said: a withdrawal surge is said once or twice
  a day per wallet, not every hour, and a surge that builds within a minute is said once, not
  at every step of its rise.

>>> from datetime import UTC, datetime
>>> from drainwatch.config import loads
>>> from drainwatch.events import Direction, Transfer
>>> config = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n'
...                'opening_balance = "1000"\\n')
>>> engine = DetectionEngine(config)
>>> t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty="X",
...     asset="XEM", amount=300, decimals=0, tx_hash="h", position=0,
...     time=datetime(2018, 1, 25, 15, 4, tzinfo=UTC))
>>> [(a.detector, a.severity.value, a.freeze) for a in engine.process(t)]
[('velocity', 'critical', True)]
>>> engine.process(t)  # the same transfer again: a duplicate
[]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from detectors.approval import ApprovalView
from detectors.base import (
    Detector,
    Finding,
    HeldWallets,
    LedgerAware,
    Snapshottable,
    StateLearner,
    WalletState,
    ratio_string,
)
from detectors.baseline import BaselineDetector
from detectors.correlation import IncidentCorrelator
from detectors.ledger import LateExplanation, LedgerReconciliation, MatchedPayment
from detectors.move import Move, TransferView
from detectors.velocity import VelocityDetector
from drainwatch.config import Config, WalletConfig, entry_for
from drainwatch.events import (
    ALERTS,
    LEDGER,
    LEDGER_USES,
    TRANSFERS,
    Alert,
    ApprovalUse,
    ApprovedWithdrawal,
    Direction,
    Severity,
    Transfer,
    TransferStatus,
    event_id,
    normalize_address,
    wallet_key,
)
from drainwatch.stage import Output

log = logging.getLogger(__name__)

__all__ = ["DetectionEngine", "HeldState", "default_detectors"]

_NOBODY: frozenset[str] = frozenset()
_ROUTES_MAX = 65536
"""Distinct (chain, address, asset) routes remembered; beyond it they are looked up each time."""

Clock = Callable[[], datetime]


def _everything(key: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Cause:
    """What set incident freezes off: a transfer judged here, or another replica's alert."""

    id: str
    time: datetime
    epoch: float
    transfer_ids: tuple[str, ...]
    tx_hashes: tuple[str, ...]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _approved(finding: Finding) -> Finding:
    """A freeze finding on an outflow the ledger explains: a warning that says why it is one.

    Described at once (the engine calls this before the transfer is counted): rare, and the
    words must say that the exchange approved it, for the person who reads the warning.
    """
    told = finding.described()
    return replace(
        told,
        freeze=False,
        severity=Severity.WARNING,
        summary=f"{told.summary}; matches an approved withdrawal, so not frozen",
        metrics={**told.metrics, "ledger_approved": "1"},
    )


def _fleet_withheld(alerts: list[Alert], crowding: int) -> list[Alert]:
    """The alerts that would have frozen the fleet, saying why they did not (its first freeze,
    or its first alert): a market-wide surge keeps the fleet freeze back, on call decides."""
    said = next((a for a in alerts if a.freeze), alerts[0])
    told = said.model_copy(
        update={
            "summary": f"{said.summary}; the fleet is not frozen: {crowding} other wallets' "
            "customers are crowding (a market-wide withdrawal surge); "
            "POST /v1/freeze-all freezes it",
            "metrics": {**said.metrics, "fleet_withheld": str(crowding)},
        }
    )
    return [told if a is said else a for a in alerts]


def default_detectors(config: Config, reconcile: bool = False) -> list[Detector]:
    """The detectors live mode and the backtest both run, with the config's thresholds."""
    return [
        VelocityDetector.from_config(config.detection, config.chains),
        BaselineDetector(),
        LedgerReconciliation(
            active=reconcile,
            match_window_s=config.detection.ledger_match_window_s,
            repeat_trust=config.detection.ledger_repeat_trust,
        ),
    ]


@dataclass(frozen=True, slots=True)
class HeldState:
    """What a detection engine knows of some wallets (:meth:`DetectionEngine.held_state`)."""

    keys: frozenset[str]
    """The bus keys of the wallets it is of."""
    states: dict[tuple[str, str, str], WalletState]
    emitted: dict[tuple[str, str], _Emitted]
    parts: list[object]
    """Each detector's share, in the engine's order of detectors."""


@dataclass(slots=True)
class _Emitted:
    """The last alert of one (wallet, detector), for de-escalation."""

    time: float
    severity: Severity
    score: float
    freeze_time: float | None
    seen: float
    """The latest finding, alerted on or not: a warning episode lasts while findings come."""
    held: float = 0.0
    """The highest score held back since ``time`` because it came within ``escalation_gap_s``."""


class DetectionEngine:
    """Per-wallet state and detectors for every wallet in ``config``.

    Args:
        config: The shared config (wallets, ``[detection]`` thresholds and shadow list).
        detectors: Detector instances shared by every wallet (default: :func:`default_detectors`).
        clock: Wall clock for ``Alert.detected_at`` when ``process`` is not given one.
        cooldown_s: No second freeze for the same wallet and detector within this time.
        escalation_factor: A repeated non-critical alert needs this much more score.
        escalation_gap_s: ... and comes at least this long after the last one said (a rise
            within minutes is one alert; a higher severity or a freeze is never held back).
        warning_repeat_s: A warning whose episode goes on is said again after this long
            (at least ``cooldown_s``).
        warning_episode_s: Findings of one (wallet, detector) less than this apart are one
            episode (default: twice ``cooldown_s``).
        reconcile: Start ledger reconciliation at once (a backtest with a ledger file); by
            default it starts with the first approved withdrawal seen.
        new_destination_age_s: How long a destination stays "new" after its first payment.
        correlator: Cross-wallet incident correlation (default: an :class:`IncidentCorrelator`;
            ``None`` turns it off).
        owns: Whether this engine judges the wallet with this bus key (default: every wallet).
            With several detector replicas, each judges the wallets of the transfers partitions
            it holds, and correlates the others' findings from their alerts
            (:meth:`process_alert`); it freezes on an incident only the wallets it owns.
    """

    def __init__(
        self,
        config: Config,
        *,
        detectors: Sequence[Detector] | None = None,
        clock: Clock = _wall_clock,
        cooldown_s: int = 3600,
        escalation_factor: float = 1.5,
        escalation_gap_s: int = 300,
        warning_repeat_s: int = 4 * 3600,
        warning_episode_s: int | None = None,
        reconcile: bool = False,
        new_destination_age_s: int = 86400,
        correlator: IncidentCorrelator | bool | None = True,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.owns: Callable[[str], bool] = owns or _everything
        self.detectors = (
            list(detectors) if detectors is not None else default_detectors(config, reconcile)
        )
        self.clock = clock
        self.cooldown_s = cooldown_s
        self.escalation_factor = escalation_factor
        self.escalation_gap_s = escalation_gap_s
        self.warning_repeat_s = max(warning_repeat_s, cooldown_s)
        self.warning_episode_s = 2 * cooldown_s if warning_episode_s is None else warning_episode_s
        self.new_destination_age_s = new_destination_age_s
        if correlator is True:
            correlator = IncidentCorrelator(surge_wallets=config.detection.surge_wallets)
        self.correlator: IncidentCorrelator | None = correlator or None
        self._shadow = frozenset(config.detection.shadow)
        self._fleet_policy = config.detection.fleet_freeze
        until = config.detection.learn_until
        self._learn_until = until.timestamp() if until is not None else -math.inf
        self._learning = False
        """Judging a transfer from before ``learn_until``: the correlator hears of its findings,
        nothing else does."""
        windows = set(config.detection.window_s)
        for detector in self.detectors:
            windows.update(getattr(detector, "windows_s", ()))
        self._windows_s = tuple(sorted(windows))
        self._wallets: dict[tuple[str, str], list[WalletConfig]] = {}
        """The entries of each wallet: one, or one per asset (see ``Config``)."""
        self._by_key: dict[str, WalletConfig] = {}
        internal: dict[str, set[str]] = {}
        for wallet in config.wallets:
            chain = wallet.chain.casefold()
            self._wallets.setdefault((chain, wallet.address), []).append(wallet)
            self._by_key.setdefault(wallet.key, wallet)
            internal.setdefault(chain, set()).add(wallet.address)
        self._internal = {chain: frozenset(addresses) for chain, addresses in internal.items()}
        self._states: dict[tuple[str, str, str], WalletState] = {}
        self._peers: dict[tuple[str, str], list[WalletState]] = {}
        """(chain, address) -> the states of that wallet's assets (:attr:`WalletState.peers`)."""
        self._emitted: dict[tuple[str, str], _Emitted] = {}
        self._ledgers = [d for d in self.detectors if isinstance(d, LedgerReconciliation)]
        self._velocity = next((d for d in self.detectors if isinstance(d, VelocityDetector)), None)
        self._watch = self.correlator.watch_share.as_integer_ratio() if self.correlator else (1, 1)
        # The hot path's view of the detectors: bound methods, looked up once. A detector that
        # learns with the state is not also given learn_one; one that says it learns nothing
        # (``learns = False``) is left out. One that remembers facts rather than what is normal
        # (``learns_from_freezes``) is named None here: it learns from what it froze on too.
        # A detector with ``judge`` (score_one without the words) is described only when an alert
        # is made of its finding.
        self._scorers = [getattr(d, "judge", d.score_one) for d in self.detectors]
        self._with_state = [
            (None if getattr(d, "learns_from_freezes", False) else d.name, d.learn_with_state)
            for d in self.detectors
            if isinstance(d, StateLearner) and getattr(d, "learns", True)
        ]
        self._plain = [
            (d.name, d.learn_one) for d in self.detectors if not isinstance(d, StateLearner)
        ]
        self._routes: dict[tuple[str, str, str], WalletState | None] = {}
        self._uncovered: set[tuple[str, str]] = set()
        """(wallet key, asset) a watched wallet moves that its entries do not cover (said once)."""
        self._approval_readers = [
            d.learn_approval for d in self.detectors if isinstance(d, LedgerAware)
        ]
        self._outflows_only = all(getattr(d, "outflows_only", False) for d in self.detectors)
        # Detectors whose freezes stand for their own wallet only: they do not open an incident
        # or lower the bar for the others (see BaselineDetector.drives_incidents). So do the
        # lowered bar's own freezes: one of them (a 1% payment while two wallets are frozen)
        # does not make a third frozen wallet, which freezes the fleet.
        self._local = frozenset(
            {"correlation"}
            | {d.name for d in self.detectors if not getattr(d, "drives_incidents", True)}
        )

    def wallet(self, chain: str, address: str) -> WalletConfig | None:
        """The watched wallet at ``address`` on ``chain`` (chain slugs compare case-blind); of a
        wallet listed once per asset, its first entry."""
        entries = self._wallets.get((chain.casefold(), normalize_address(address)))
        return entries[0] if entries else None

    def wallets_seen(self) -> set[str]:
        """The keys of the wallets some transfer has been counted for (in any asset)."""
        return {wallet_key(chain, address) for chain, address, _ in self._states}

    def state(self, wallet: WalletConfig, asset: str) -> WalletState:
        """The state of one (wallet, asset), created on first use."""
        key = (wallet.chain, wallet.address, asset.casefold())
        state = self._states.get(key)
        if state is None:
            if wallet.asset is None and wallet.opening_balance is not None:
                wallet = self._opening_for_first_asset(wallet, asset)
            state = WalletState(
                wallet,
                asset,
                windows_s=self._windows_s,
                internal=self._internal[wallet.chain.casefold()],
                new_destination_age_s=self.new_destination_age_s,
            )
            self._states[key] = state
            group = self._peers.setdefault(key[:2], [])
            group.append(state)
            for peer in group:
                peer.link_peers(group)
        return state

    def _link_peers(self) -> None:
        """Link the states of each wallet's assets as :attr:`WalletState.peers` (after a
        restore, an adoption or an unpickling: a snapshot does not carry the links)."""
        groups: dict[tuple[str, str], list[WalletState]] = {}
        for (chain, address, _), state in self._states.items():
            groups.setdefault((chain, address), []).append(state)
        for group in groups.values():
            for state in group:
                state.link_peers(group)
        self._peers = groups

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._link_peers()

    def _not_covered(self, entries: list[WalletConfig], asset: str) -> None:
        """Say once that a watched wallet moves an asset none of its entries covers: a config
        that names a token by symbol while the transfers name its contract (or the reverse)
        would otherwise leave that wallet unjudged without a word."""
        key = (entries[0].key, asset.casefold())
        if key in self._uncovered:
            return
        self._uncovered.add(key)
        log.warning(
            "wallet %s moves %s, which its config covers only as %s: those transfers are not "
            "judged (list the wallet for %s too, or leave out `asset` to judge every asset)",
            entries[0].name,
            asset,
            ", ".join(repr(e.asset) for e in entries),
            asset,
        )

    def _opening_for_first_asset(self, wallet: WalletConfig, asset: str) -> WalletConfig:
        """``wallet`` (an entry naming no asset, with an opening balance) for a state of
        ``asset``: its opening balance is the balance of the first asset it moves; another
        asset's is learned from the stream like a wallet without one (a number in the wrong units
        would make that asset's drains look tiny, or its customers look like a drain)."""
        others = sorted(k[2] for k in self._states if k[:2] == (wallet.chain, wallet.address))
        if not others:
            return wallet
        log.warning(
            "wallet %s moves %s besides %s but has one opening_balance: it stays the balance of "
            "the first asset the wallet moved, and the %s balance is estimated from the "
            "transfers; list the wallet once per asset, each with its `asset` and opening_balance",
            wallet.name,
            asset,
            ", ".join(others),
            asset,
        )
        return wallet.model_copy(update={"opening_balance": None})

    def adopt(self, other: DetectionEngine) -> None:
        """Take over the wallets ``other`` judged (same config and detectors, no wallet in common).

        The backtest split over processes joins its workers' engines this way when it must go on
        in one process: states, cooldowns, what each detector learned per wallet, and the
        correlator's memory of freezes. Raises TypeError for a detector that cannot do this.
        """
        self._states.update(other._states)
        self._emitted.update(other._emitted)
        self._routes.clear()
        for mine, theirs in zip(self.detectors, other.detectors, strict=True):
            adopt = getattr(mine, "adopt", None)
            if adopt is None or type(mine) is not type(theirs):
                raise TypeError(f"detector {mine.name!r} cannot take over another engine's wallets")
            adopt(theirs)
        if self.correlator is not None and other.correlator is not None:
            self.correlator.adopt_frozen(other.correlator)
        self._link_peers()

    def held_state(self, keys: Collection[str]) -> HeldState:
        """What this engine knows of the wallets with these bus keys, for a state snapshot.

        The wallets' states (windows, balances, destinations, the transfers already counted),
        the alerts said of them (cooldowns, episodes) and what each detector learned of them: all
        of it depends only on their transfers, which one transfers partition holds. What the
        whole exchange shares (the ledger's approvals, the incidents) is read again from the
        ledger and alerts topics by a restarted detector, and is not in it. The result shares the
        engine's objects: pickle it before the engine goes on.

        Raises:
            TypeError: a detector that cannot give its share (see ``Snapshottable``).
        """
        keys = frozenset(keys)
        held = self._held(keys)
        parts: list[object] = []
        for detector in self.detectors:
            if not isinstance(detector, Snapshottable):
                raise TypeError(f"detector {detector.name!r} cannot save its wallets' state")
            parts.append(detector.held_part(held))
        return HeldState(
            keys=keys,
            states={k: v for k, v in self._states.items() if wallet_key(k[0], k[1]) in keys},
            emitted={k: v for k, v in self._emitted.items() if k[0] in keys},
            parts=parts,
        )

    def restore(self, held: HeldState) -> None:
        """Take back a :meth:`held_state` (of the same config and detectors): it replaces what
        this engine knew of those wallets. Then replay what came after it (:meth:`replay`)."""
        if len(held.parts) != len(self.detectors):
            raise ValueError(
                f"a state of {len(held.parts)} detectors cannot be restored into "
                f"{len(self.detectors)}"
            )
        restorers = [d for d in self.detectors if isinstance(d, Snapshottable)]
        if len(restorers) != len(self.detectors):
            raise TypeError("a detector of this engine cannot restore its wallets' state")
        keys = held.keys
        self._states = {
            k: v for k, v in self._states.items() if wallet_key(k[0], k[1]) not in keys
        } | held.states
        self._link_peers()
        self._emitted = {k: v for k, v in self._emitted.items() if k[0] not in keys} | held.emitted
        self._routes.clear()
        wallets = self._held(keys)
        for detector, part in zip(restorers, held.parts, strict=True):
            detector.restore_part(part, wallets)

    def _held(self, keys: frozenset[str]) -> HeldWallets:
        """Whether a (chain, address) is a wallet with one of these bus keys."""
        pairs = {(w.chain.casefold(), w.address) for w in self.config.wallets if w.key in keys}

        def held(chain: str, address: str) -> bool:
            return (chain.casefold(), normalize_address(address)) in pairs

        return held

    def replay(self, transfers: Iterable[TransferView]) -> int:
        """Rebuild state from past transfers (after a restart) without emitting any alert.

        Detectors learn, windows fill and cooldowns are remembered exactly as if the transfers had
        been processed live. Returns how many transfers were counted.
        """
        counted = 0
        with self._flags_not_counted():
            for transfer in transfers:
                self.process(transfer, emit=False)
                counted += 1
        return counted

    @contextmanager
    def _flags_not_counted(self) -> Iterator[None]:
        """Payments the ledger flags meanwhile do not count toward trusting their destination:
        the approvals of replayed hours are not replayed with them, and a history from before
        go-live may have none in the ledger, so it would flag every payment. The ledger counts
        as it did before on the way out (a rebuild may judge history before go-live)."""
        ledgers = self._ledgers
        counted = [ledger.counts_flags for ledger in ledgers]
        for ledger in ledgers:
            ledger.counts_flags = False
        try:
            yield
        finally:
            for ledger, counts in zip(ledgers, counted, strict=True):
                ledger.counts_flags = counts

    def _learn_only(self, transfer: TransferView) -> list[Alert]:
        """Count a transfer from before ``[detection] learn_until`` as a state rebuild does,
        except that nothing is remembered as said: no alert went out before go-live, so none
        holds back a live one (a cooldown would let a thief's first live transfers pass). So in
        a rebuild after a restart too."""
        self._learning = True
        try:
            with self._flags_not_counted():
                self.process(transfer, emit=False)
        finally:
            self._learning = False
        return []

    def _route(self, chain: str, address: str, asset: str) -> WalletState | None:
        """The state a transfer of ``asset`` at ``address`` on ``chain`` counts in, if watched."""
        route_key = (chain, address, asset)
        try:
            return self._routes[route_key]
        except KeyError:
            pass
        entries = self._wallets.get((chain.casefold(), address))
        wallet = entry_for(entries, asset) if entries is not None else None
        state = self.state(wallet, asset) if wallet is not None else None
        if entries is not None and wallet is None:
            self._not_covered(entries, asset)
        if len(self._routes) < _ROUTES_MAX:
            self._routes[route_key] = state
        return state

    def process(
        self,
        transfer: TransferView,
        detected_at: datetime | None = None,
        *,
        emit: bool = True,
        at_event_time: bool = False,
    ) -> list[Alert]:
        """Judge one transfer of a watched wallet and count it; return the alerts it raises.

        With ``emit=False`` (a state rebuild) everything is judged and remembered as usual but no
        alert is returned. ``detected_at`` defaults to the wall clock, or with ``at_event_time``
        (a backtest) to the transfer's own time.
        """
        try:  # the route as looked up before (None too), without a call on the hot path
            state = self._routes[transfer.chain, transfer.wallet, transfer.asset]
        except KeyError:
            state = self._route(transfer.chain, transfer.wallet, transfer.asset)
        if state is None:
            return []
        if transfer.status is TransferStatus.RETRACTED:
            if state.retract(transfer):
                for ledger in self._ledgers:
                    ledger.forget_flagged(transfer)
            return []
        if state.has_applied(transfer.dedup_key):
            return []
        if transfer.epoch < self._learn_until and not self._learning:
            return self._learn_only(transfer)
        state.prepare(transfer)
        if self._outflows_only and transfer.direction is Direction.IN:
            # No detector reads inflows: they only move the balance.
            state.apply(transfer)
            return []
        findings: list[Finding] = []
        for score_one in self._scorers:
            finding = score_one(transfer, state)
            if finding is not None:
                findings.append(finding)
        correlator = self.correlator
        if correlator is not None and correlator.lowered_for(state.wallet.key, state.now):
            watched = self._watch_finding(transfer, state, findings)
            if watched is not None:
                findings.append(watched)
        approved = bool(findings) and self._explained(transfer, state)
        if approved:
            # The exchange approved this withdrawal: the ledger vouches for it, so the other
            # detectors may warn but not freeze (an approved market-maker payout, a whale).
            findings = [_approved(f) if f.freeze else f for f in findings]
        # A detector does not learn from what it froze on (unless it only keeps facts).
        frozen_by = {f.detector for f in findings if f.freeze} if findings else _NOBODY
        for name, learn_with_state in self._with_state:
            if name not in frozen_by:
                learn_with_state(transfer, state)
        alerts: list[Alert] = []
        if findings:
            # Before the transfer is counted: a finding is described against the state it was
            # judged in.
            if detected_at is None and at_event_time:
                detected_at = transfer.time
            alerts = self._alerts(
                state.wallet, transfer, state, findings, detected_at, emit=emit, approved=approved
            )
        # Facts always count, the destination included: a false freeze must not make a market
        # maker's usual address look new for ever.
        state.apply(transfer)
        for name, learn_one in self._plain:
            if name not in frozen_by:
                learn_one(transfer)
        return alerts

    def _explained(self, transfer: TransferView, state: WalletState) -> bool:
        return any(ledger.explains(transfer, state) for ledger in self._ledgers)

    def _watch_finding(
        self, transfer: TransferView, state: WalletState, findings: list[Finding]
    ) -> Finding | None:
        """While an incident is open: an outflow of ``watch_share`` to a new address freezes
        (more on a wallet whose customers pay that much often: see
        :meth:`~detectors.velocity.VelocityDetector.watch_bar`)."""
        if any(f.freeze for f in findings) or transfer.direction is not Direction.OUT:
            return None
        dest = transfer.counterparty
        units = state.units
        if state.is_internal(dest) or not state.is_new_destination(dest, state.now, units):
            return None
        ref = state.balance_units()
        numerator, denominator = self._watch
        floor = -(-ref * numerator // denominator)
        if units <= 0 or units < floor:
            return None
        velocity, correlator = self._velocity, self.correlator
        if velocity is not None and correlator is not None:
            # A wallet whose customers pay this much every half hour pays one now too.
            bar = velocity.watch_bar(
                transfer, state, floor, correlator.window_s, correlator.watch_chance
            )
            if units < bar:
                return None
        return Finding(
            detector="correlation",
            severity=Severity.CRITICAL,
            freeze=True,
            score=1.0,
            summary=(
                f"{ratio_string(units * 100, ref, 1)}% of {state.label} sent to a new address "
                f"while {self._others(state.wallet.key, state.now)} losing value"
            ),
            metrics={"share": ratio_string(units, ref), "rule_incident_watch": "1"},
            transfer_ids=(transfer.id,),
            tx_hashes=(transfer.tx_hash,),
        )

    def _alerts(
        self,
        wallet: WalletConfig,
        transfer: TransferView,
        state: WalletState,
        findings: list[Finding],
        detected_at: datetime | None,
        *,
        emit: bool,
        approved: bool = False,
    ) -> list[Alert]:
        """The alerts of one transfer's findings, with what the incident makes of them.

        An outflow the ledger ``approved`` is no loss the incident counts: its warnings neither
        join the wallet to the incident (to be frozen with it) nor become freezes there.
        """
        now = state.now
        incident_id: str | None = None
        others: list[str] = []
        correlator = self.correlator
        if not approved and any(f.freeze for f in findings):
            # A freeze is alerted, so described, in any case: how much of the wallet it saw go
            # tells the incident whether the wallet was emptied.
            findings = [f.described() if f.freeze else f for f in findings]
        levels = (
            [0]
            if approved
            else [
                self._level(f.detector, f.freeze, f.severity, f.crowd, f.metrics.get("share"))
                for f in findings
            ]
        )
        level = max(levels)
        # Warnings on a crowd's evidence only: a member, but no freeze when the bar drops.
        crowd = level == 1 and all(
            f.crowd for f, lv in zip(findings, levels, strict=True) if lv == 1
        )
        if correlator is not None and level >= 1:
            incident_id, others = correlator.observe(wallet.key, now, level, crowd=crowd)
            if (
                incident_id is not None
                and level == 1
                and not crowd
                and correlator.lowered_for(wallet.key, now)
            ):
                top = max(findings, key=lambda f: (f.severity.rank, f.score))
                told = top.described()
                upgraded = replace(
                    told,
                    freeze=True,
                    severity=Severity.CRITICAL,
                    metrics={**told.metrics, "rule_correlated": "1"},
                    summary=told.summary + "; other wallets are losing value too",
                )
                findings = [upgraded if f is top else f for f in findings]
        if self._learning:
            return []
        alerts = [
            alert
            for finding in findings
            if (
                alert := self._alert(
                    wallet, transfer, finding, detected_at, incident_id, approved=approved
                )
            )
            is not None
        ]
        if correlator is not None:
            if any(a.freeze for a in alerts):
                # Any freeze, a local one too: no second freeze request for this wallet.
                correlator.mark_frozen(wallet.key, now)
            if not emit:
                # A state rebuild decides nothing for other wallets: what it would, it could not
                # send, and remembering it as done would swallow it. take_over() decides once
                # the rebuild is over.
                return []
            # Several wallets emptied within minutes: freeze the whole hot fleet now rather
            # than wait for each wallet's own first large transfer.
            fleet = self._fleet(correlator, now, but=wallet.key)
            if not fleet and alerts and self._fleet_allowed():
                crowding = correlator.fleet_withheld(now)
                if crowding:
                    alerts = _fleet_withheld(alerts, crowding)
            alerts += self._incident_freezes(
                sorted({*others, *fleet}) if fleet else others,
                _Cause(
                    transfer.id,
                    transfer.time,
                    transfer.epoch,
                    (transfer.id,),
                    (transfer.tx_hash,),
                ),
                now=now,
                incident_id=incident_id,
                detected_at=detected_at,
            )
        return alerts if emit else []

    def _others(self, key: str, now: float, shown: int = 4) -> str:
        """The incident's other wallets, for words: "eth-hot-1, btc-hot-2 and 3 more are".

        >>> from drainwatch.config import loads
        >>> engine = DetectionEngine(loads("".join(
        ...     f'[[wallets]]\\nchain = "nem"\\naddress = "H{i}"\\nlabel = "hot-{i}"\\n'
        ...     for i in range(7))))
        >>> for i in range(7):
        ...     _ = engine.correlator.observe(f"nem:H{i}", 60.0 * i, 2)
        >>> engine._others("nem:H0", 400.0)
        'hot-1, hot-2, hot-3, hot-4 and 2 more are'
        >>> engine._others("nem:H0", 400.0, shown=9), engine._others("nem:H0", 9e9)
        ('hot-1, hot-2, hot-3, hot-4, hot-5 and hot-6 are', 'other wallets are')
        """
        correlator = self.correlator
        keys = [k for k in correlator.members(now) if k != key] if correlator else []
        names = [self._by_key[k].name if k in self._by_key else k for k in keys]
        if not names:
            return "other wallets are"
        if len(names) == 1:
            return f"{names[0]} is"
        if len(names) > shown:
            return f"{', '.join(names[:shown])} and {len(names) - shown} more are"
        return f"{', '.join(names[:-1])} and {names[-1]} are"

    def _members(self, incident_id: str | None, now: float) -> tuple[str, ...]:
        """The wallets of the incident an alert names, for ``Alert.incident_wallets``."""
        if incident_id is None or self.correlator is None:
            return ()
        return tuple(self.correlator.members(now))

    def _level(
        self,
        detector: str,
        froze: bool,
        severity: Severity,
        crowd: bool = False,
        share: str | None = None,
    ) -> int:
        """What a finding counts as in the correlator (see :class:`IncidentCorrelator`): 4 the
        freeze of a wallet that lost at least its ``heavy_share`` (the finding's ``share``), 3
        a freeze, 2 a crowd's freeze (:attr:`Finding.crowd`), 1 a warning or the freeze of a
        detector whose freezes stand for its own wallet only, 0 nothing."""
        if froze:
            if detector in self._local:
                return 1
            if crowd:
                return 2
            correlator = self.correlator
            if correlator and share is not None and Decimal(share) >= correlator.heavy_share:
                return 4
            return 3
        return 3 if severity is Severity.CRITICAL else severity.rank

    def _incident_freezes(
        self,
        keys: Iterable[str],
        cause: _Cause,
        *,
        now: float,
        incident_id: str | None,
        detected_at: datetime | None,
    ) -> list[Alert]:
        """Freeze, with the incident, the wallets of ``keys`` this engine owns."""
        correlator = self.correlator
        assert correlator is not None
        alerts = []
        epoch = cause.epoch
        for key in keys:
            other = self._by_key.get(key)
            if other is None or not self.owns(key):
                continue  # another replica's: it freezes it when it reads the same alerts
            correlator.mark_frozen(key, now)
            self._emitted[(key, "correlation")] = _Emitted(
                epoch, Severity.CRITICAL, 1.0, epoch, epoch
            )
            alerts.append(self._incident_freeze(other, cause, incident_id, detected_at))
        return alerts

    def _fleet(
        self, correlator: IncidentCorrelator, now: float, but: str | None = None
    ) -> set[str]:
        """Every hot wallet not frozen yet (but ``but``), once the fleet freeze is due."""
        if not self._fleet_allowed() or not correlator.fleet_freeze_due(now):
            return set()
        return {
            w.key
            for w in self.config.wallets
            if w.role == "hot" and w.key != but and not correlator.is_frozen(w.key, now)
        }

    def _fleet_allowed(self) -> bool:
        """Whether an incident may freeze the hot fleet now (``[detection] fleet_freeze``)."""
        policy = self._fleet_policy
        return policy == "always" or (
            policy == "without-ledger" and not any(ledger.active for ledger in self._ledgers)
        )

    def take_over(self) -> list[Alert]:
        """Freeze what an open incident owes the wallets this engine owns, after a rebuild.

        Run when the engine has taken over wallets (a restart, a rebalance) and replayed their
        transfers. A replica that dies in an incident leaves its wallets to nobody until the
        group gives them to another: what the incident called for meanwhile (the fleet freeze,
        a warned wallet frozen) was decided by replicas that did not hold them. And a rebuild
        decides nothing for other wallets while it replays (:meth:`replay`). Both are made up
        for here, at the latest event time the engine has seen, under the ids any replica would
        have used (:meth:`_incident_freeze`); what was already asked is dropped downstream.
        """
        correlator = self.correlator
        if correlator is None or not self._states:
            return []
        now = max(state.now for state in self._states.values())
        if now < self._learn_until:
            return []  # the incident is history from before go-live: it called for nothing
        hot = (
            {w.key for w in self.config.wallets if w.role == "hot"} if self._fleet_allowed() else ()
        )
        keys = sorted({w.key for w in self.config.wallets if self.owns(w.key)})
        incident_id, owed = correlator.owed(keys, hot, now)
        if incident_id is None or not owed:
            return []
        cause = _Cause(incident_id, datetime.fromtimestamp(now, UTC), now, (), ())
        return self._incident_freezes(
            owed, cause, now=now, incident_id=incident_id, detected_at=None
        )

    def process_alert(self, alert: Alert) -> list[Alert]:
        """Correlate another detector replica's alert: freeze what the incident now calls for.

        Every replica reads the whole alerts topic. An alert about a wallet this engine owns was
        correlated when it was made (here, or in the state rebuild); its freeze is remembered
        all the same (a restarted replica reads its own earlier alerts this way). Another
        replica's finding counts toward the incident as if it were made here, and what the
        incident then calls for (a warned wallet frozen, the hot fleet frozen) is done for the
        wallets this engine owns, each replica freezing its own.

        A restarted replica reads the last hours of alerts again and may come to the same
        decisions again: they carry the ids they had (:meth:`_incident_freeze`), so the alerts
        stage drops them, and a decision the crash cut off is made now rather than lost.
        """
        correlator = self.correlator
        if correlator is None:
            return []
        key = alert.key
        now = alert.time.timestamp()
        metrics = alert.metrics
        if alert.freeze:
            correlator.mark_frozen(key, now)
        if self.owns(key) or "rule_incident_member" in metrics:
            return []
        froze = alert.freeze or "would_freeze" in metrics or "freeze_suppressed" in metrics
        if "incident_level" in metrics:
            # Counted otherwise than it reads where it was made: a ledger-approved outflow, a
            # crowd's freeze (see _alerts and _alert).
            level = int(metrics["incident_level"])
        elif "rule_correlated" in metrics:
            level = 1  # a warning the incident made a freeze
        else:
            level = self._level(alert.detector, froze, alert.severity, share=metrics.get("share"))
        if level < 1:
            return []
        incident_id, others = correlator.observe(
            key, now, level, alert.incident_id, crowd="incident_crowd" in metrics
        )
        keys = sorted({*others, *self._fleet(correlator, now, but=key)})
        cause = _Cause(alert.id, alert.time, now, alert.transfer_ids, alert.tx_hashes)
        return self._incident_freezes(
            keys, cause, now=now, incident_id=incident_id, detected_at=None
        )

    def _incident_freeze(
        self,
        wallet: WalletConfig,
        cause: _Cause,
        incident_id: str | None,
        detected_at: datetime | None,
    ) -> Alert:
        """Freeze a wallet that had only warned, now that it is part of an incident.

        One such alert per wallet and incident, whatever set it off: a restarted replica that
        reads the alerts topic again, in another order, asks again under the same id, and the
        alerts stage drops the repeat.
        """
        return Alert(
            id=event_id("correlation", wallet.key, incident_id or cause.id),
            time=cause.time,
            detected_at=detected_at or self.clock(),
            chain=wallet.chain,
            wallet=wallet.address,
            wallet_label=wallet.label,
            severity=Severity.CRITICAL,
            detector="correlation",
            freeze="correlation" not in self._shadow,
            summary=(
                f"freezing {wallet.name} with the incident: "
                f"{self._others(wallet.key, cause.epoch)} losing value"
            ),
            metrics={"rule_incident_member": "1"},
            transfer_ids=cause.transfer_ids,
            tx_hashes=cause.tx_hashes,
            incident_id=incident_id,
            incident_wallets=self._members(incident_id, cause.epoch),
            shadow="correlation" in self._shadow,
        )

    def process_approval(self, approval: ApprovalView) -> list[Alert]:
        """Hand an approved withdrawal to the detectors that read the ledger (and, sharing uses,
        freeze a payment of this engine's that another replica's use of it, told before the
        approval came, leaves unexplained).

        An approval that explains a payment the ledger detector already judged unexplained (a
        ledger feed running behind the chain) is used up by it, and an info alert says so: the
        freeze stands, but the person who holds it learns that the exchange approved that
        payment after all, and how many of the wallet's payments are still unexplained.
        """
        for learn_approval in self._approval_readers:
            learn_approval(approval)
        alerts = [
            self._explained_late(ledger, late)
            for ledger in self._ledgers
            if ledger.explained_late
            for late in ledger.take_explained_late()
            if self.owns(late.payment.key) and late.payment.key in self._by_key
        ]
        approval_id: str | None = getattr(approval, "id", None)
        if approval_id is None:
            return alerts
        return alerts + [
            alert
            for ledger in self._ledgers
            if ledger.shares_uses
            for alert in self._unexplained(ledger, approval_id, ledger.unexplained(approval_id))
        ]

    def _explained_late(self, ledger: LedgerReconciliation, late: LateExplanation) -> Alert:
        """The info alert for a flagged payment an approval explained when it came."""
        payment = late.payment
        wallet = self._by_key[payment.key]
        now = self.clock()
        name = late.approval_id or "an approval"
        still = (
            f"{late.unexplained} other payment{'s' if late.unexplained != 1 else ''} of "
            f"{wallet.name} still unexplained"
            if late.unexplained
            else f"no other payment of {wallet.name} is unexplained"
        )
        return Alert(
            id=event_id(ledger.name, "explained-late", payment.transfer_id),
            time=datetime.fromtimestamp(payment.epoch, UTC),
            detected_at=now,
            chain=wallet.chain,
            wallet=wallet.address,
            wallet_label=wallet.label,
            severity=Severity.INFO,
            detector=f"{ledger.name}_explained",
            freeze=False,
            summary=(
                f"approved withdrawal {name} ({late.approval_amount} {payment.asset} to "
                f"{payment.to}, approved at "
                f"{datetime.fromtimestamp(late.approval_epoch, UTC):%H:%M:%S}) came after "
                f"{wallet.name}'s payment of {payment.value} {payment.asset} at "
                f"{datetime.fromtimestamp(payment.epoch, UTC):%H:%M:%S} was judged "
                f"unapproved: that payment is explained; {still}"
            ),
            metrics={
                "amount": str(payment.value),
                "approval_id": late.approval_id or "",
                "approval_amount": str(late.approval_amount),
                "unexplained_payments": str(late.unexplained),
                "rule_explained_late": "1",
            },
            transfer_ids=(payment.transfer_id,),
            tx_hashes=(payment.tx_hash,),
            shadow=ledger.name in self._shadow,
        )

    @property
    def latest_approval_at(self) -> float | None:
        """The time of the latest approval the ledger detectors learned (None before the
        first)."""
        at = max((ledger.latest_approval_at for ledger in self._ledgers), default=-math.inf)
        return at if at > -math.inf else None

    def share_approval_uses(self) -> None:
        """Live, with detector replicas: tell the others which approval each payment of this
        engine's wallets used up, and learn theirs (:meth:`process_use`), so that an approval
        explains one payment across the replicas. :meth:`handle` publishes the uses."""
        for ledger in self._ledgers:
            ledger.shares_uses = True

    def process_use(self, use: ApprovalUse) -> list[Alert]:
        """Learn which approval a payment used up (this engine's own, or another replica's).

        When two replicas each matched a payment with one approval (each before it heard of the
        other's), the later payment is beyond what the approval explains: its replica moves it
        to another open approval to the same customer if one explains it, and freezes its wallet
        otherwise (a customer paid twice for one withdrawal, from two wallets).
        """
        return [
            alert
            for ledger in self._ledgers
            if ledger.shares_uses
            for alert in self._unexplained(
                ledger, use.approval_id, ledger.learn_use(use, mine=self.owns(use.key))
            )
        ]

    def _unexplained(
        self, ledger: LedgerReconciliation, approval_id: str, payments: Sequence[MatchedPayment]
    ) -> list[Alert]:
        """Freeze alerts for this engine's ``payments`` that ``approval_id`` cannot explain and
        no other open approval does."""
        alerts = []
        for payment in payments:
            if not self.owns(payment.key) or ledger.rehome(payment):
                continue
            wallet = self._by_key.get(payment.key)
            if wallet is None:
                continue
            others = [u for u in ledger.users(approval_id) if u.transfer_id != payment.transfer_id]
            paid = "; ".join(
                f"{self._name_of(u.key)} at {datetime.fromtimestamp(u.epoch, UTC):%H:%M:%S}"
                for u in others
            )
            amount = ledger.approval_amount(approval_id)
            shadow = ledger.name in self._shadow
            alerts.append(
                Alert(
                    id=event_id(ledger.name, "approval-reused", payment.transfer_id),
                    time=datetime.fromtimestamp(payment.epoch, UTC),
                    detected_at=self.clock(),
                    chain=wallet.chain,
                    wallet=wallet.address,
                    wallet_label=wallet.label,
                    severity=Severity.CRITICAL,
                    detector=ledger.name,
                    freeze=not shadow,
                    summary=(
                        f"{wallet.name} sent {payment.value} {payment.asset} to {payment.to}, "
                        f"but approved withdrawal {approval_id} ({amount} {payment.asset}) was "
                        f"already paid ({paid}): an approval explains one payment"
                    ),
                    metrics={
                        "amount": str(payment.value),
                        "approval_id": approval_id,
                        "approval_amount": str(amount),
                        "rule_approval_reused": "1",
                    },
                    transfer_ids=(payment.transfer_id,),
                    tx_hashes=(payment.tx_hash,),
                    shadow=shadow,
                )
            )
        return alerts

    def _name_of(self, key: str) -> str:
        wallet = self._by_key.get(key)
        return wallet.name if wallet is not None else key

    def handle(self, topic: str, event: object) -> list[Output]:
        """A :data:`drainwatch.stage.Handler`: transfers, approvals and alerts in, alerts out.

        Transfers come as :class:`~drainwatch.events.Transfer` events or as the lean
        :class:`~detectors.move.Move` records :func:`detectors.wire.read_transfer` makes. Alerts
        (every replica's, read from the alerts topic) go to :meth:`process_alert`, approvals'
        uses (every replica's) to :meth:`process_use`; the uses made here are published.
        """
        if topic == TRANSFERS and isinstance(event, Transfer | Move):
            alerts = self.process(event)
        elif topic == LEDGER and isinstance(event, ApprovedWithdrawal):
            alerts = self.process_approval(event)
        elif topic == ALERTS and isinstance(event, Alert):
            alerts = self.process_alert(event)
        elif topic == LEDGER_USES and isinstance(event, ApprovalUse):
            alerts = self.process_use(event)
        else:
            return []
        outputs = [Output(ALERTS, alert) for alert in alerts]
        for ledger in self._ledgers:
            if ledger.published:
                outputs += [Output(LEDGER_USES, use) for use in ledger.take_published()]
        return outputs

    def _alert(
        self,
        wallet: WalletConfig,
        transfer: TransferView,
        finding: Finding,
        detected_at: datetime | None,
        incident_id: str | None = None,
        *,
        approved: bool = False,
    ) -> Alert | None:
        now = transfer.epoch
        key = (wallet.key, finding.detector)
        last = self._emitted.get(key)
        # An approved outflow's findings count for nothing in the incident (see _alerts), a
        # crowd's freeze for less than a freeze, a crowd's warning for less than a warning:
        # another replica, which counts an alert by what it reads as, is told so.
        extra = (
            {"incident_level": "0"}
            if approved
            else {"incident_level": "2"}
            if finding.crowd and finding.freeze
            else {"incident_crowd": "1"}
            if finding.crowd
            else {}
        )
        freeze = finding.freeze
        severity = finding.severity
        if last is not None:
            if freeze and last.freeze_time is not None and now - last.freeze_time < self.cooldown_s:
                freeze = False
                # Recorded as evidence, but not paged again: the freeze already went out.
                severity = Severity.INFO
                extra["freeze_suppressed"] = "1"
                extra["cooldown_remaining_s"] = str(int(self.cooldown_s - (now - last.freeze_time)))
            elif (
                not freeze
                and now - last.seen < self.warning_episode_s
                and now - last.time < self.warning_repeat_s
                and finding.severity.rank <= last.severity.rank
            ):
                # The same episode (findings less than ``warning_episode_s`` apart).
                if finding.score < max(last.score, last.held) * self.escalation_factor:
                    last.seen = now  # no worse than what was said, or held back since
                    return None
                if now - last.time < self.escalation_gap_s:
                    # Worse, but within minutes of the last one said: held back. After the gap
                    # a warning says something worse than the worst held back, not a step of
                    # the same rise again.
                    last.seen = now
                    last.held = finding.score
                    return None
        finding = finding.described()
        # The numbers are in this asset's units (a wallet may hold several).
        metrics = {"asset": transfer.asset, **finding.metrics, **extra}
        freeze_time = now if freeze else (last.freeze_time if last is not None else None)
        self._emitted[key] = _Emitted(now, finding.severity, finding.score, freeze_time, now)
        shadow = finding.detector in self._shadow
        if shadow and freeze:
            metrics["would_freeze"] = "1"
            freeze = False
        return Alert(
            id=event_id(finding.detector, wallet.key, transfer.id),
            time=transfer.time,
            detected_at=detected_at or self.clock(),
            chain=wallet.chain,
            wallet=wallet.address,
            wallet_label=wallet.label,
            severity=severity,
            detector=finding.detector,
            freeze=freeze,
            summary=finding.summary,
            metrics=metrics,
            transfer_ids=finding.transfer_ids,
            tx_hashes=finding.tx_hashes,
            incident_id=incident_id,
            incident_wallets=self._members(incident_id, now),
            shadow=shadow,
        )
