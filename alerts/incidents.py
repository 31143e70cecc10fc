"""Incidents: the alerts, transfers, actions and notes of one drain, grouped from the timeline.

An incident groups

* the alerts that carry the same ``incident_id`` (a correlating detector sets it), or, for alerts
  without one, the alerts of one wallet that follow each other within ``gap`` (6 h by default);
  a wallet's run of unlabelled alerts that overlaps an incident naming that wallet (as the
  wallet of one of its alerts, or among its ``incident_wallets``: a drain's first wallet is
  alerted on before the incident exists) joins it, and so does another labelled incident naming
  that wallet within ``gap`` (two detector replicas may name one incident twice);
* the actions taken about those alerts: notifications, freezes and their answers, hooks, approvals;
* the transfers of its wallets from ``lead`` before the first alert until ``tail`` after the last
  alert or action, plus every transfer an alert names as evidence, wherever it falls;
* the notes responders added to it (``drainwatch incidents note``).

Everything here is a pure function of timeline records except :func:`incidents_from`, which reads
them. Amounts stay integer base units; :func:`format_units` writes them exactly.

>>> from datetime import UTC, datetime, timedelta
>>> from alerts.timeline import Timeline
>>> from drainwatch.events import Alert, Severity, Transfer
>>> t0 = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> tl = Timeline(":memory:", clock=lambda: t0)
>>> out = Transfer.create(chain="nem", wallet="HOT", direction="out", counterparty="THIEF",
...     asset="XEM", amount=100_000_000, decimals=0, tx_hash="0xaa", position=0, time=t0,
...     balance_after=423_000_010)
>>> tl.record_transfer(out)
True
>>> tl.record_alert(Alert(id="a1", time=t0, detected_at=t0, chain="nem", wallet="HOT",
...     severity=Severity.CRITICAL, detector="velocity", freeze=True, summary="19% drained",
...     transfer_ids=(out.id,)))
True
>>> [incident] = incidents_from(tl)
>>> incident.id, incident.max_severity.value, incident.frozen
('20180126-0257-nem-e238ba', 'critical', False)
>>> [(t.asset, format_units(t.amount_out, t.decimals)) for t in incident.totals_out]
[('XEM', '100000000')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

from alerts.errors import AlertsError
from alerts.timeline import (
    ActionRecord,
    AlertRecord,
    NoteRecord,
    Timeline,
    TransferRecord,
)
from drainwatch.config import WalletConfig, entry_for
from drainwatch.events import (
    Direction,
    FreezeAction,
    Severity,
    TransferStatus,
    event_id,
    normalize_address,
    wallet_key,
)

__all__ = [
    "DEFAULT_POLICY",
    "AlertGroup",
    "AssetTotal",
    "FlowPoint",
    "FlowSeries",
    "Incident",
    "IncidentEntry",
    "IncidentNotFoundError",
    "IncidentPolicy",
    "Marker",
    "WalletRef",
    "action_category",
    "assemble",
    "balances_before",
    "chart_markers",
    "effective_transfers",
    "explorer_link",
    "find_incident",
    "flow_series",
    "format_units",
    "group_alerts",
    "incident_id_for",
    "incidents_from",
    "parse_units",
    "transfer_window",
]

IncidentEntry = TransferRecord | AlertRecord | ActionRecord | NoteRecord
"""One line of an incident's timeline."""

# Within one instant, causes before effects, and people's notes last.
_RANK: Final[dict[str, int]] = {"transfer": 0, "alert": 1, "action": 2, "note": 3}


class IncidentNotFoundError(AlertsError):
    """No incident has this id (or the prefix given matches several).

    >>> str(IncidentNotFoundError("2018", ("20180126-0257-nem-aa", "20180127-0100-nem-bb")))
    "no single incident matches '2018' (candidates: 20180126-0257-nem-aa, 20180127-0100-nem-bb)"
    """

    def __init__(self, ref: str, candidates: Sequence[str] = ()) -> None:
        hint = f" (candidates: {', '.join(candidates[:5])})" if candidates else ""
        verb = "no single incident matches" if candidates else "no incident matches"
        super().__init__(f"{verb} {ref!r}{hint}")
        self.ref = ref
        self.candidates = tuple(candidates)


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    """How alerts are grouped and how much surrounding traffic an incident shows."""

    gap: timedelta = timedelta(hours=6)
    """Unlabelled alerts of one wallet further apart than this start a new incident."""
    lead: timedelta = timedelta(hours=1)
    """Transfers from this long before the first alert are shown (the drain's first steps)."""
    tail: timedelta = timedelta(hours=1)
    """Transfers until this long after the last alert or action are shown (did it stop?)."""


DEFAULT_POLICY: Final = IncidentPolicy()


_LABELS = " / "
"""Between the labels of a wallet listed once per asset (``eth-hot-1 / usdt-hot-1``)."""


@dataclass(frozen=True, slots=True)
class WalletRef:
    """A wallet named by an incident's alerts."""

    chain: str
    address: str
    label: str | None = None

    @property
    def key(self) -> str:
        """``chain:address``, the bus key."""
        return wallet_key(self.chain, self.address)

    @property
    def name(self) -> str:
        """The label, or the key when there is none."""
        return self.label or self.key


@dataclass(frozen=True, slots=True)
class AssetTotal:
    """What left the incident's wallets in one asset (retracted transfers excluded)."""

    chain: str
    asset: str
    decimals: int
    amount_out: int
    """Base units."""
    transfers_out: int

    @property
    def text(self) -> str:
        """The amount, exactly, with the asset: ``'523000000 XEM'``."""
        return f"{format_units(self.amount_out, self.decimals)} {self.asset}"


@dataclass(frozen=True, slots=True)
class AlertGroup:
    """The alerts of one incident, before the rest of the timeline is attached."""

    id: str
    alerts: tuple[AlertRecord, ...]

    @property
    def first_at(self) -> datetime:
        """The first alert's event time."""
        return self.alerts[0].time

    @property
    def last_at(self) -> datetime:
        """The last alert's event time."""
        return self.alerts[-1].time

    @property
    def wallet_keys(self) -> frozenset[str]:
        """The ``chain:address`` of every wallet its alerts name."""
        return frozenset(r.alert.key for r in self.alerts)


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident: its alerts, the transfers around them, what was done, and the notes."""

    id: str
    wallets: tuple[WalletRef, ...]
    first_at: datetime
    """The first alert's event time."""
    last_at: datetime
    """The last alert or action."""
    max_severity: Severity
    frozen_wallets: tuple[str, ...]
    """Keys of the wallets whose latest order from the kill switch is a freeze."""
    frozen_at: datetime | None
    """When the kill switch first confirmed a freeze for this incident."""
    alerts: tuple[AlertRecord, ...]
    actions: tuple[ActionRecord, ...]
    transfers: tuple[TransferRecord, ...]
    notes: tuple[NoteRecord, ...]
    totals_out: tuple[AssetTotal, ...]
    usd_out: Decimal | None
    """Sum of the USD values of the outflows that carry one; None when none does."""
    window: tuple[datetime, datetime]
    """The time range the transfers were taken from (evidence may lie outside it)."""
    evidence_ids: frozenset[str] = field(default_factory=frozenset)
    """Ids of the transfers the alerts name as evidence."""

    @property
    def frozen(self) -> bool:
        """Whether at least one of its wallets is frozen now."""
        return bool(self.frozen_wallets)

    @property
    def time_to_freeze(self) -> timedelta | None:
        """From the first alert to the first confirmed freeze."""
        return None if self.frozen_at is None else self.frozen_at - self.first_at

    @property
    def entries(self) -> list[IncidentEntry]:
        """Everything in event-time order (causes before effects, notes last within an instant)."""
        merged: list[IncidentEntry] = [*self.transfers, *self.alerts, *self.actions, *self.notes]
        return sorted(merged, key=lambda e: (e.time, _RANK[e.kind], e.seq))

    @property
    def alert_numbers(self) -> dict[str, int]:
        """``alert id -> 1, 2, …`` in time order, for short labels (A1, A2)."""
        return {r.alert.id: n for n, r in enumerate(self.alerts, start=1)}

    @property
    def title(self) -> str:
        """The summary of the first of its most severe alerts (what a responder reads first)."""
        worst = next(r for r in self.alerts if r.alert.severity is self.max_severity)
        return worst.alert.summary

    @property
    def freeze_requested(self) -> bool:
        """Whether any of its alerts asked for a freeze (shadow detectors never do)."""
        return any(r.alert.freeze and not r.alert.shadow for r in self.alerts)


# --- amounts ------------------------------------------------------------------------------------


def format_units(units: int, decimals: int) -> str:
    """``units / 10**decimals`` exactly, without exponent or trailing zeros.

    >>> format_units(1_500_000_000_000_000_000, 18), format_units(-25, 1), format_units(7, 0)
    ('1.5', '-2.5', '7')
    """
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    digits = f"{frac:0{decimals}d}".rstrip("0") if decimals else ""
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def parse_units(text: str, decimals: int) -> int | None:
    """A decimal string in asset units as base units; None if not exact at that precision.

    >>> parse_units("423000010.5", 6), parse_units("1e3", 0), parse_units("0.0000001", 6)
    (423000010500000, 1000, None)
    """
    try:
        value = Decimal(text)
    except ArithmeticError:
        return None
    if not value.is_finite():
        return None
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    number = int("".join(map(str, digits)) or "0")
    shift = exponent + decimals
    scale: int = 10 ** abs(shift)
    if shift >= 0:
        units = number * scale
    else:
        units, rest = divmod(number, scale)
        if rest:
            return None
    return -units if sign else units


# --- grouping -----------------------------------------------------------------------------------

_SLUG = re.compile(r"[^a-z0-9]+")


def incident_id_for(chain: str, wallet: str, first: AlertRecord) -> str:
    """The id of a wallet's run of unlabelled alerts: first alert's minute, chain, short hash.

    Sortable, short enough to type, and the same every time the timeline is read.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Alert
    >>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
    >>> a = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="HOT",
    ...           severity=Severity.CRITICAL, detector="v", freeze=True, summary="s")
    >>> r = AlertRecord(seq=1, recorded_at=t, incident_id="nem:HOT", alert=a)
    >>> incident_id_for("nem", "HOT", r)
    '20180126-0257-nem-e238ba'
    """
    slug = _SLUG.sub("-", chain.lower()).strip("-") or "chain"
    digest = event_id(chain, normalize_address(wallet), first.alert.id)[:6]
    return f"{first.time.astimezone(UTC):%Y%m%d-%H%M}-{slug}-{digest}"


def group_alerts(alerts: Iterable[AlertRecord], gap: timedelta) -> list[AlertGroup]:
    """Group alerts into incidents (see the module docstring), in order of their first alert.

    >>> from datetime import UTC, datetime, timedelta
    >>> from drainwatch.events import Alert
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> def rec(n, hours, wallet="HOT", incident=None):
    ...     a = Alert(id=f"a{n}", time=t + timedelta(hours=hours), detected_at=t, chain="nem",
    ...               wallet=wallet, severity=Severity.WARNING, detector="v", freeze=False,
    ...               summary="s", incident_id=incident)
    ...     return AlertRecord(seq=n, recorded_at=t, incident_id=incident or a.key, alert=a)
    >>> groups = group_alerts([rec(1, 0), rec(2, 5), rec(3, 12), rec(4, 1, "COLD", "inc-9"),
    ...                        rec(5, 2, "COLD")], gap=timedelta(hours=6))
    >>> [[r.alert.id for r in g.alerts] for g in groups]
    [['a1', 'a2'], ['a4', 'a5'], ['a3']]
    """
    explicit: dict[str, list[AlertRecord]] = {}
    by_wallet: dict[tuple[str, str], list[AlertRecord]] = {}
    for record in sorted(alerts, key=lambda r: (r.time, r.seq)):
        if record.alert.incident_id:
            explicit.setdefault(record.alert.incident_id, []).append(record)
        else:
            wallet = normalize_address(record.alert.wallet)
            by_wallet.setdefault((record.alert.chain, wallet), []).append(record)

    explicit = _merge_sharing_wallets(explicit, gap)
    groups = {iid: list(records) for iid, records in explicit.items()}
    for (chain, wallet), records in by_wallet.items():
        runs: list[list[AlertRecord]] = [[records[0]]]
        for record in records[1:]:
            if record.time - runs[-1][-1].time > gap:
                runs.append([record])
            else:
                runs[-1].append(record)
        for run in runs:
            home = _overlapping_explicit(explicit, wallet_key(chain, wallet), run, gap)
            if home is not None:
                groups[home].extend(run)
            else:
                groups[incident_id_for(chain, wallet, run[0])] = run

    result = [
        AlertGroup(iid, tuple(sorted(records, key=lambda r: (r.time, r.seq))))
        for iid, records in groups.items()
    ]
    return sorted(result, key=lambda g: (g.first_at, g.id))


def _within(a: Sequence[AlertRecord], b: Sequence[AlertRecord], gap: timedelta) -> bool:
    """Whether two time-ordered runs of alerts come within ``gap`` of each other."""
    return a[0].time - gap <= b[-1].time and b[0].time <= a[-1].time + gap


def _merge_sharing_wallets(
    explicit: Mapping[str, list[AlertRecord]], gap: timedelta
) -> dict[str, list[AlertRecord]]:
    """Labelled incidents naming a common wallet within ``gap`` of each other are one, under the
    earliest one's id: two detector replicas that opened one incident at the same moment may
    have named it twice (a wallet's unlabelled alerts within ``gap`` are one incident too)."""
    merged: dict[str, list[AlertRecord]] = {}
    wallets: dict[str, set[str]] = {}
    for iid, records in sorted(explicit.items(), key=lambda item: (item[1][0].time, item[0])):
        keys = {k for r in records for k in _named(r)}
        home = next(
            (h for h, rs in merged.items() if keys & wallets[h] and _within(rs, records, gap)),
            None,
        )
        if home is None:
            merged[iid] = list(records)
            wallets[iid] = keys
        else:
            merged[home] = sorted([*merged[home], *records], key=lambda r: (r.time, r.seq))
            wallets[home] |= keys
    return merged


def _overlapping_explicit(
    explicit: Mapping[str, Sequence[AlertRecord]],
    key: str,
    run: Sequence[AlertRecord],
    gap: timedelta,
) -> str | None:
    """The labelled incident naming this wallet whose alerts come within ``gap`` of the run."""
    for iid, records in sorted(explicit.items(), key=lambda item: item[1][0].time):
        if any(key in _named(r) for r in records) and _within(run, records, gap):
            return iid
    return None


def _named(record: AlertRecord) -> tuple[str, ...]:
    """The wallets a labelled alert names: its own, and its incident's when it was made (the
    first drained wallet's alerts came before the incident and name none)."""
    return (record.alert.key, *record.alert.incident_wallets)


def _actions_of(group: AlertGroup, actions: Iterable[ActionRecord]) -> list[ActionRecord]:
    ids = {r.alert.id for r in group.alerts}
    return [
        a
        for a in actions
        if (a.alert_id in ids) or (a.alert_id is None and a.incident_id == group.id)
    ]


def transfer_window(
    group: AlertGroup, actions: Iterable[ActionRecord], policy: IncidentPolicy
) -> tuple[datetime, datetime]:
    """The time range whose transfers an incident shows: ``lead`` before, ``tail`` after.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Alert
    >>> t = datetime(2018, 1, 26, 3, tzinfo=UTC)
    >>> a = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="HOT",
    ...           severity=Severity.CRITICAL, detector="v", freeze=True, summary="s")
    >>> g = AlertGroup("i", (AlertRecord(seq=1, recorded_at=t, incident_id="i", alert=a),))
    >>> [f"{x:%H:%M}" for x in transfer_window(g, [], IncidentPolicy())]
    ['02:00', '04:00']
    """
    last = max([group.last_at, *(a.time for a in _actions_of(group, actions))])
    return group.first_at - policy.lead, last + policy.tail


def effective_transfers(records: Iterable[TransferRecord]) -> list[TransferRecord]:
    """The latest record of each transfer id (pending → confirmed → retracted), retractions
    dropped, in event-time order.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Transfer
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> x = Transfer.create(chain="c", wallet="W", direction="out", counterparty="X", asset="A",
    ...     amount=5, decimals=0, tx_hash="0x1", position=0, time=t, status="pending")
    >>> recs = [TransferRecord(1, t, x),
    ...         TransferRecord(2, t, x.model_copy(update={"status": TransferStatus.CONFIRMED}))]
    >>> [r.transfer.status.value for r in effective_transfers(recs)]
    ['confirmed']
    >>> gone = TransferRecord(3, t, x.model_copy(update={"status": TransferStatus.RETRACTED}))
    >>> effective_transfers([*recs, gone])
    []
    """
    latest: dict[str, TransferRecord] = {}
    for record in sorted(records, key=lambda r: r.seq):
        latest[record.transfer.id] = record
    kept = [r for r in latest.values() if r.transfer.status is not TransferStatus.RETRACTED]
    return sorted(kept, key=lambda r: (r.time, r.seq))


def _frozen_state(actions: Sequence[ActionRecord]) -> tuple[tuple[str, ...], datetime | None]:
    """Wallets whose latest kill-switch order is a freeze, and the first freeze's time."""
    state: dict[str, bool] = {}
    first: datetime | None = None
    for action in sorted(actions, key=lambda a: (a.time, a.seq)):
        if action.order is None:
            continue
        frozen = action.order.action is FreezeAction.FREEZE
        state[action.order.key] = frozen
        if frozen and first is None:
            first = action.time
    return tuple(sorted(k for k, v in state.items() if v)), first


def _totals(transfers: Iterable[TransferRecord]) -> tuple[tuple[AssetTotal, ...], Decimal | None]:
    sums: dict[tuple[str, str, int], list[int]] = {}
    usd: Decimal | None = None
    for record in effective_transfers(transfers):
        t = record.transfer
        if t.direction is not Direction.OUT:
            continue
        acc = sums.setdefault((t.chain, t.asset, t.decimals), [0, 0])
        acc[0] += t.amount
        acc[1] += 1
        if t.usd_value is not None:
            usd = (usd or Decimal(0)) + t.usd_value
    totals = tuple(
        AssetTotal(chain, asset, decimals, amount, count)
        for (chain, asset, decimals), (amount, count) in sorted(sums.items())
    )
    return totals, usd


def assemble(
    group: AlertGroup,
    transfers: Iterable[TransferRecord],
    actions: Iterable[ActionRecord],
    notes: Iterable[NoteRecord],
    policy: IncidentPolicy = DEFAULT_POLICY,
) -> Incident:
    """Build one incident from its alerts and candidate transfers, actions and notes.

    Candidates that do not belong (other wallets, outside the window, other incidents) are left
    out, so callers may pass more than needed.
    """
    acts = sorted(_actions_of(group, actions), key=lambda a: (a.time, a.seq))
    start, end = transfer_window(group, acts, policy)
    keys = group.wallet_keys
    evidence = frozenset(tid for r in group.alerts for tid in r.alert.transfer_ids)
    evidence_hashes = {(r.alert.chain, h) for r in group.alerts for h in r.alert.tx_hashes}
    picked: dict[int, TransferRecord] = {}
    for record in transfers:
        t = record.transfer
        if t.key not in keys:
            continue
        if start <= t.time <= end or t.id in evidence or (t.chain, t.tx_hash) in evidence_hashes:
            picked[record.seq] = record
    chosen = sorted(picked.values(), key=lambda r: (r.time, r.seq))

    wallets: dict[str, WalletRef] = {}
    for r in group.alerts:
        known = wallets.get(r.alert.key)
        label = r.alert.wallet_label
        if known is None or (known.label is None and label):
            wallets[r.alert.key] = WalletRef(
                r.alert.chain, normalize_address(r.alert.wallet), label
            )
        elif label and known.label and label not in known.label.split(_LABELS):
            # A wallet listed once per asset: its alerts carry each asset's label.
            wallets[r.alert.key] = replace(known, label=f"{known.label}{_LABELS}{label}")
    frozen_wallets, frozen_at = _frozen_state(acts)
    totals, usd = _totals(chosen)
    return Incident(
        id=group.id,
        wallets=tuple(wallets.values()),
        first_at=group.first_at,
        last_at=max([group.last_at, *(a.time for a in acts)]),
        max_severity=max((r.alert.severity for r in group.alerts), key=lambda s: s.rank),
        frozen_wallets=frozen_wallets,
        frozen_at=frozen_at,
        alerts=group.alerts,
        actions=tuple(acts),
        transfers=tuple(chosen),
        notes=tuple(
            sorted((n for n in notes if n.incident_id == group.id), key=lambda n: (n.time, n.seq))
        ),
        totals_out=totals,
        usd_out=usd,
        window=(start, end),
        evidence_ids=evidence,
    )


def find_incident(incidents: Sequence[Incident], ref: str) -> Incident:
    """The incident with this id (or one an alert of it carries), or the only one whose id
    starts with ``ref``.

    Raises:
        IncidentNotFoundError: None matches, or several do.
    """
    ref = ref.strip()
    for incident in incidents:
        if incident.id == ref:
            return incident
    for incident in incidents:
        if any(r.alert.incident_id == ref for r in incident.alerts):
            return incident
    matches = [i for i in incidents if ref and i.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise IncidentNotFoundError(ref, [i.id for i in matches])


# --- presentation helpers (pure) ----------------------------------------------------------------


def action_category(kind: str) -> str:
    """A coarse category for an action kind, so kinds added later still display sensibly.

    >>> [action_category(k) for k in ("notified", "freeze_accepted", "unfreeze_approved",
    ...                               "hook_failed", "notification_acknowledged", "other")]
    ['notification', 'freeze', 'approval', 'hook', 'notification', 'other']
    """
    if "approv" in kind:
        return "approval"
    if "hook" in kind:
        return "hook"
    if "unfreeze" in kind:
        return "unfreeze"
    if "freeze" in kind:
        return "freeze"
    if "notif" in kind or "ack" in kind or "escalat" in kind or "page" in kind:
        return "notification"
    return "other"


def explorer_link(explorer_urls: Mapping[str, str], chain: str, tx_hash: str) -> str | None:
    """The block-explorer URL of a transaction, from a chain's ``{tx_hash}`` template.

    Only http(s) templates are used: the link ends up in web pages and reports.

    >>> urls = {"ethereum": "https://etherscan.io/tx/{tx_hash}"}
    >>> explorer_link(urls, "ethereum", "0xab"), explorer_link(urls, "nem", "0xab")
    ('https://etherscan.io/tx/0xab', None)
    >>> explorer_link({"x": "javascript:alert({tx_hash})"}, "x", "1") is None
    True
    """
    template = explorer_urls.get(chain)
    if not template or "{tx_hash}" not in template:
        return None
    if not template.lower().startswith(("https://", "http://")):
        return None
    return template.replace("{tx_hash}", tx_hash)


@dataclass(frozen=True, slots=True)
class Marker:
    """A moment to mark on the chart."""

    time: datetime
    kind: str
    """``alert``, ``freeze``, ``freeze_failed`` or ``unfreeze``."""
    label: str
    wallet: str = ""
    """The ``chain:address`` it is about."""


def chart_markers(incident: Incident) -> list[Marker]:
    """The alert and freeze moments of an incident, in time order.

    Several alerts about an already frozen wallet get the same order back: it is marked once.
    """
    numbers = incident.alert_numbers
    markers = [
        Marker(r.time, "alert", f"A{numbers[r.alert.id]} {r.alert.severity.value}", r.alert.key)
        for r in incident.alerts
    ]
    seen_orders: set[str] = set()
    for action in incident.actions:
        if action.order is not None:
            if action.order.id in seen_orders:
                continue
            seen_orders.add(action.order.id)
            if action.order.action is FreezeAction.FREEZE:
                markers.append(Marker(action.time, "freeze", "frozen", action.order.key))
            else:
                markers.append(Marker(action.time, "unfreeze", "unfrozen", action.order.key))
        elif action.action.value == "freeze_failed":
            key = wallet_key(action.chain, action.wallet)
            markers.append(Marker(action.time, "freeze_failed", "freeze failed", key))
    return sorted(markers, key=lambda m: m.time)


@dataclass(frozen=True, slots=True)
class FlowPoint:
    """The state of one wallet and asset just after the transfers of one instant."""

    time: datetime
    outflow: int
    """Cumulative outflow since the start of the window, base units."""
    balance: int | None
    """Remaining balance, base units; None when it cannot be known."""


@dataclass(frozen=True, slots=True)
class FlowSeries:
    """Cumulative outflow and remaining balance of one wallet in one asset over time."""

    chain: str
    wallet: str
    asset: str
    decimals: int
    points: tuple[FlowPoint, ...]
    balance_source: str
    """Where the balance came from: ``chain`` (balance_after), ``alert`` (its metrics),
    ``opening`` (configured opening balance plus earlier transfers) or ``unknown``."""

    @property
    def key(self) -> str:
        """``chain:wallet``."""
        return wallet_key(self.chain, self.wallet)


def _opening_from_chain(
    steps: Sequence[tuple[datetime, int, int | None]],
) -> int | None:
    """The balance before the first step, from the first step whose balance is read on chain."""
    net = 0
    for _, delta, after in steps:
        net += delta
        if after is not None:
            return after - net
    return None


def _opening_from_alerts(
    alerts: Iterable[AlertRecord],
    transfers: Sequence[TransferRecord],
    decimals: int,
) -> int | None:
    """The balance before the first transfer, from the first alert that knew the balance."""
    for record in alerts:
        metrics = record.alert.metrics
        if metrics.get("balance_known", "1") == "0" or "balance_before" not in metrics:
            continue
        before = parse_units(metrics["balance_before"], decimals)
        if before is None:
            continue
        trigger = record.alert.transfer_ids[-1] if record.alert.transfer_ids else None
        net = 0
        for t in transfers:
            if t.transfer.id == trigger or (trigger is None and t.time >= record.time):
                return before - net
            net += t.transfer.signed_amount
        if trigger is None:
            return before - net
    return None


def flow_series(
    incident: Incident, balances_before: Mapping[tuple[str, str], int] | None = None
) -> list[FlowSeries]:
    """Outflow and balance over time for each wallet and asset that sent something.

    The balance is taken, in order of preference, from the transfers' ``balance_after`` (read on
    chain), from the first alert of that asset whose metrics carry ``balance_before`` (an alert
    that does not name its asset only for a wallet that moved a single asset), or from
    ``balances_before``
    (``(wallet key, asset) -> base units`` just before the incident's first transfer, see
    :func:`balances_before`). Transfers of one instant are one step: ``balance_after`` is the
    balance after the whole block.

    >>> from datetime import UTC, datetime, timedelta
    >>> from drainwatch.events import Transfer
    >>> t = datetime(2018, 1, 26, 3, tzinfo=UTC)
    >>> def tr(seq, minute, amount, after=None):
    ...     x = Transfer.create(chain="nem", wallet="HOT", direction="out", counterparty="X",
    ...         asset="XEM", amount=amount, decimals=0, tx_hash=f"0x{seq}", position=0,
    ...         time=t + timedelta(minutes=minute), balance_after=after)
    ...     return TransferRecord(seq, t, x)
    >>> inc = Incident(id="i", wallets=(), first_at=t, last_at=t, max_severity=Severity.INFO,
    ...     frozen_wallets=(), frozen_at=None, alerts=(), actions=(), notes=(), totals_out=(),
    ...     usd_out=None, window=(t, t), transfers=(tr(1, 0, 10), tr(2, 1, 90, after=900)))
    >>> [s] = flow_series(inc)
    >>> s.balance_source, [(p.outflow, p.balance) for p in s.points]
    ('chain', [(0, 1000), (10, 990), (100, 900)])
    """
    by_series: dict[tuple[str, str], list[TransferRecord]] = {}
    for record in effective_transfers(incident.transfers):
        by_series.setdefault((record.transfer.key, record.transfer.asset), []).append(record)
    assets_of: dict[str, set[str]] = {}
    for wkey, asset in by_series:
        assets_of.setdefault(wkey, set()).add(asset)

    result: list[FlowSeries] = []
    for (wkey, asset), records in sorted(by_series.items()):
        if not any(r.transfer.direction is Direction.OUT for r in records):
            continue
        first = records[0].transfer
        # One step per instant: (time, net change, balance read on chain after it, outflow).
        steps: list[tuple[datetime, int, int | None, int]] = []
        for r in records:
            t = r.transfer
            out = t.amount if t.direction is Direction.OUT else 0
            if steps and steps[-1][0] == t.time:
                when, delta, after, step_out = steps[-1]
                if t.balance_after is not None:
                    after = t.balance_after
                steps[-1] = (when, delta + t.signed_amount, after, step_out + out)
            else:
                steps.append((t.time, t.signed_amount, t.balance_after, out))

        source = "chain"
        opening = _opening_from_chain([(w, d, a) for w, d, a, _ in steps])
        if opening is None:
            # Alerts name their asset (``metrics.asset``); an older one without it is trusted
            # only for a wallet that moved a single asset.
            single = len(assets_of[wkey]) == 1
            wallet_alerts = [
                a
                for a in incident.alerts
                if a.alert.key == wkey
                and (
                    a.alert.metrics["asset"].casefold() == asset.casefold()
                    if "asset" in a.alert.metrics
                    else single
                )
            ]
            if wallet_alerts:
                source = "alert"
                opening = _opening_from_alerts(wallet_alerts, records, first.decimals)
        if opening is None and balances_before and (wkey, asset) in balances_before:
            source, opening = "opening", balances_before[(wkey, asset)]
        if opening is None:
            source = "unknown"

        balance = opening
        outflow = 0
        points = [FlowPoint(steps[0][0], 0, balance)]
        for when, delta, after, step_out in steps:
            outflow += step_out
            if balance is not None:
                balance = after if after is not None else balance + delta
            points.append(FlowPoint(when, outflow, balance))
        result.append(
            FlowSeries(
                chain=first.chain,
                wallet=first.wallet,
                asset=asset,
                decimals=first.decimals,
                points=tuple(points),
                balance_source=source,
            )
        )
    return result


# --- reading the timeline -------------------------------------------------------------------------


def balances_before(
    timeline: Timeline,
    incident: Incident,
    wallets: Mapping[str, Sequence[WalletConfig]],
) -> dict[tuple[str, str], int]:
    """Configured opening balances (of the ``[[wallets]]`` entries by wallet key,
    :func:`~drainwatch.config.wallets_by_key`: the entry for each asset, in asset units; the
    start of the recorded history) carried forward over every transfer recorded before the
    incident's first transfer.

    Only needed when neither the chain nor the alerts told the balance; reads the wallet's whole
    earlier history, so callers ask for it only then.
    """
    result: dict[tuple[str, str], int] = {}
    if not incident.transfers:
        return result
    first = incident.transfers[0].time
    for wallet in incident.wallets:
        entries = wallets.get(wallet.key, ())
        if all(e.opening_balance is None for e in entries):
            continue
        earlier = timeline.transfers_between(
            wallet.chain, wallet.address, datetime(1970, 1, 1, tzinfo=UTC), first
        )
        mine = [r for r in incident.transfers if r.transfer.key == wallet.key]
        assets = {(r.transfer.asset, r.transfer.decimals) for r in mine}
        for asset, decimals in assets:
            entry = entry_for(entries, asset)
            if entry is None or entry.opening_balance is None:
                continue
            opening = parse_units(str(entry.opening_balance), decimals)
            if opening is None:
                continue
            shown = {r.seq for r in mine}
            net = sum(
                r.transfer.signed_amount
                for r in effective_transfers(earlier)
                if r.transfer.asset == asset and r.seq not in shown
            )
            result[(wallet.key, asset)] = opening + net
    return result


def incidents_from(timeline: Timeline, policy: IncidentPolicy = DEFAULT_POLICY) -> list[Incident]:
    """Every incident in the timeline, in order of its first alert."""
    groups = group_alerts(timeline.alerts(), policy.gap)
    if not groups:
        return []
    actions = timeline.actions()
    notes = timeline.notes()
    incidents: list[Incident] = []
    for group in groups:
        start, end = transfer_window(group, _actions_of(group, actions), policy)
        wallets = {(r.alert.chain, normalize_address(r.alert.wallet)) for r in group.alerts}
        transfers: list[TransferRecord] = []
        for chain, wallet in sorted(wallets):
            transfers.extend(timeline.transfers_between(chain, wallet, start, end))
        evidence = {tid for r in group.alerts for tid in r.alert.transfer_ids}
        missing = evidence - {r.transfer.id for r in transfers}
        if missing:
            transfers.extend(timeline.transfers_with_ids(sorted(missing)))
        incidents.append(assemble(group, transfers, actions, notes, policy))
    return incidents
