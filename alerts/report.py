"""Incident exports: Markdown fit for a report to a regulator, and JSON for machines.

Both carry the same facts: a summary, the timeline in UTC with Japan Standard Time beside it (the
Japanese regulator reads JST), the transfers with block-explorer links, each alert with the numbers
that made it fire, the actions taken, the responders' notes, and an integrity statement: how many
records of each kind the export holds, their sequence numbers in the append-only timeline, and a
SHA-256 over them so that a later copy can be checked against this one.

:func:`describe` turns one timeline entry into a line of text; the CLI and the web page use it too.

>>> from datetime import UTC, datetime
>>> fmt_utc(datetime(2018, 1, 25, 15, 2, tzinfo=UTC)), fmt_jst(datetime(2018, 1, 25, 15, 2,
...     tzinfo=UTC))
('2018-01-25 15:02:00', '2018-01-26 00:02:00')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from alerts.incidents import (
    Incident,
    IncidentEntry,
    action_category,
    explorer_link,
    format_units,
)
from alerts.timeline import ActionRecord, AlertRecord, NoteRecord, TransferRecord
from drainwatch.events import Direction, FreezeAction, TransferStatus

__all__ = [
    "JST",
    "REPORT_FORMAT",
    "TimelineLine",
    "describe",
    "fmt_duration",
    "fmt_jst",
    "fmt_utc",
    "group_digits",
    "incident_summary",
    "integrity",
    "render_json",
    "render_markdown",
    "short",
    "to_json_dict",
]

JST: Final = timezone(timedelta(hours=9), "JST")
"""Japan Standard Time: UTC+9 all year (no daylight saving since 1951)."""

REPORT_FORMAT: Final = "drainwatch.incident.v1"


def fmt_utc(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_jst(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Japan Standard Time."""
    return moment.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(span: timedelta) -> str:
    """A short human duration.

    >>> fmt_duration(timedelta(seconds=190)), fmt_duration(timedelta(hours=26, minutes=5))
    ('3 min 10 s', '1 d 2 h 5 min')
    >>> fmt_duration(timedelta(seconds=4)), fmt_duration(timedelta(hours=2))
    ('4 s', '2 h')
    """
    total = int(span.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{days} d" if days else "",
        f"{hours} h" if hours else "",
        f"{minutes} min" if minutes else "",
        f"{seconds} s" if seconds and not days else "",
    ]
    return sign + (" ".join(p for p in parts if p) or "0 s")


def group_digits(amount: str) -> str:
    """Thousands separators in the whole part of an exact decimal string.

    >>> group_digits("523000000.123456"), group_digits("-1234"), group_digits("12")
    ('523,000,000.123456', '-1,234', '12')
    """
    sign = "-" if amount.startswith("-") else ""
    whole, dot, frac = amount.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}{dot}{frac}"


def short(text: str, keep: int = 6) -> str:
    """An address or hash shortened for a narrow column: head…tail.

    >>> short("NC4C6PSUW5CLTDT5SXAGZJQJ2JZ6BFSP3YJ6J2CX"), short("0x01")
    ('NC4C6P…YJ6J2CX', '0x01')
    """
    if len(text) <= 2 * keep + 3:
        return text
    return f"{text[:keep]}…{text[-(keep + 1) :]}"


@dataclass(frozen=True, slots=True)
class TimelineLine:
    """One entry of an incident's timeline as text."""

    time: datetime
    kind: str
    """``transfer``, ``alert``, ``action`` or ``note``."""
    category: str
    """For styling: ``out``, ``in``, ``retracted``, ``critical``/``warning``/``info``,
    ``notification``, ``freeze``, ``freeze_failed``, ``unfreeze``, ``hook``, ``approval``,
    ``note``, ``other``."""
    title: str
    detail: str
    link: str | None
    seq: int
    ref: str = ""
    """A short reference: ``A1`` for an alert and for the actions taken about it."""

    @property
    def label(self) -> str:
        """The title with the alert's reference and severity in front, for plain text."""
        if self.kind == "alert":
            return f"{self.ref} {self.category.upper()}: {self.title}"
        return self.title


_ACTION_CATEGORIES: Final = {
    "freeze_requested": "freeze_request",
    "freeze_failed": "freeze_failed",
    "freeze_skipped": "freeze_skipped",
    "notification_failed": "failed",
    "notification_escalated": "escalated",
    "page_acknowledged": "acknowledged",
    "page_resolved": "acknowledged",
}


def _amount(record: TransferRecord) -> str:
    t = record.transfer
    return f"{group_digits(format_units(t.amount, t.decimals))} {t.asset}"


def describe(
    entry: IncidentEntry, incident: Incident, explorer_urls: Mapping[str, str]
) -> TimelineLine:
    """One timeline entry as a line of text (see :class:`TimelineLine`).

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, 3, tzinfo=UTC)
    >>> note = NoteRecord(seq=1, incident_id="i", author="kenji", text="custody called", time=t,
    ...                   recorded_at=t)
    >>> inc = Incident(id="i", wallets=(), first_at=t, last_at=t, max_severity=Severity.INFO,
    ...     frozen_wallets=(), frozen_at=None, alerts=(), actions=(), transfers=(), notes=(note,),
    ...     totals_out=(), usd_out=None, window=(t, t))
    >>> describe(note, inc, {}).title
    'Note by kenji'
    """
    numbers = incident.alert_numbers
    if isinstance(entry, TransferRecord):
        t = entry.transfer
        out = t.direction is Direction.OUT
        status = t.status
        evidence = [
            f"A{numbers[r.alert.id]}" for r in incident.alerts if t.id in r.alert.transfer_ids
        ]
        title = f"{'Outflow' if out else 'Inflow'} {_amount(entry)} {'to' if out else 'from'} "
        title += short(t.counterparty)
        if status is not TransferStatus.CONFIRMED:
            title += f" ({status.value})"
        detail_parts = [f"tx {t.tx_hash}"]
        if t.block_number is not None:
            detail_parts.append(f"block {t.block_number}")
        if t.usd_value is not None:
            detail_parts.append(f"≈ USD {group_digits(str(t.usd_value))}")
        if t.balance_after is not None:
            detail_parts.append(
                f"balance after {group_digits(format_units(t.balance_after, t.decimals))}"
            )
        if evidence:
            detail_parts.append("evidence of " + ", ".join(evidence))
        category = "retracted" if status is TransferStatus.RETRACTED else ("out" if out else "in")
        return TimelineLine(
            entry.time,
            "transfer",
            category,
            title,
            "; ".join(detail_parts),
            explorer_link(explorer_urls, t.chain, t.tx_hash),
            entry.seq,
        )
    if isinstance(entry, AlertRecord):
        a = entry.alert
        ref = f"A{numbers[a.id]}"
        flags = []
        if a.freeze:
            flags.append("freeze requested")
        if a.shadow:
            flags.append("shadow detector: never frozen on")
        wallet = a.wallet_label or short(a.wallet)
        detail = f"{a.detector} on {wallet}" + (f"; {', '.join(flags)}" if flags else "")
        return TimelineLine(
            entry.time,
            "alert",
            a.severity.value,
            a.summary,
            detail,
            None,
            entry.seq,
            ref,
        )
    if isinstance(entry, ActionRecord):
        ref = f"A{numbers[entry.alert_id]}" if entry.alert_id in numbers else ""
        kind = entry.action.value
        category = _ACTION_CATEGORIES.get(kind) or (
            "failed" if kind.endswith("_failed") else action_category(kind)
        )
        title = kind.replace("_", " ").capitalize()
        if entry.order is not None:
            state = "frozen" if entry.order.action is FreezeAction.FREEZE else "unfrozen"
            title += f": wallet {state}"
        return TimelineLine(
            entry.time, "action", category, title, entry.detail, None, entry.seq, ref
        )
    return TimelineLine(
        entry.time,
        "note",
        "note",
        f"Note by {entry.author}",
        entry.text,
        None,
        entry.seq,
    )


# --- JSON ---------------------------------------------------------------------------------------


def _transfer_json(record: TransferRecord, explorer_urls: Mapping[str, str]) -> dict[str, Any]:
    t = record.transfer
    return {
        "seq": record.seq,
        "id": t.id,
        "time": t.time.isoformat(),
        "time_jst": t.time.astimezone(JST).isoformat(),
        "chain": t.chain,
        "wallet": t.wallet,
        "direction": t.direction.value,
        "counterparty": t.counterparty,
        "counterparties": list(t.counterparties),
        "asset": t.asset,
        "amount": format_units(t.amount, t.decimals),
        "amount_base_units": str(t.amount),
        "decimals": t.decimals,
        "usd_value": None if t.usd_value is None else str(t.usd_value),
        "balance_after": None
        if t.balance_after is None
        else format_units(t.balance_after, t.decimals),
        "tx_hash": t.tx_hash,
        "position": t.position,
        "block_number": t.block_number,
        "block_hash": t.block_hash,
        "status": t.status.value,
        "explorer_url": explorer_link(explorer_urls, t.chain, t.tx_hash),
        "recorded_at": record.recorded_at.isoformat(),
    }


def _alert_json(record: AlertRecord, number: int) -> dict[str, Any]:
    a = record.alert
    return {
        "seq": record.seq,
        "ref": f"A{number}",
        "id": a.id,
        "time": a.time.isoformat(),
        "time_jst": a.time.astimezone(JST).isoformat(),
        "detected_at": a.detected_at.isoformat(),
        "chain": a.chain,
        "wallet": a.wallet,
        "wallet_label": a.wallet_label,
        "severity": a.severity.value,
        "detector": a.detector,
        "freeze": a.freeze,
        "shadow": a.shadow,
        "summary": a.summary,
        "metrics": dict(a.metrics),
        "transfer_ids": list(a.transfer_ids),
        "tx_hashes": list(a.tx_hashes),
        "incident_id": a.incident_id,
        "recorded_at": record.recorded_at.isoformat(),
    }


def _action_json(record: ActionRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "kind": record.action.value,
        "time": record.time.isoformat(),
        "time_jst": record.time.astimezone(JST).isoformat(),
        "chain": record.chain,
        "wallet": record.wallet,
        "alert_id": record.alert_id,
        "detail": record.detail,
        "order": None if record.order is None else record.order.model_dump(mode="json"),
        "recorded_at": record.recorded_at.isoformat(),
    }


def _note_json(record: NoteRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "time": record.time.isoformat(),
        "time_jst": record.time.astimezone(JST).isoformat(),
        "author": record.author,
        "text": record.text,
        "recorded_at": record.recorded_at.isoformat(),
    }


def _records_json(incident: Incident, explorer_urls: Mapping[str, str]) -> dict[str, Any]:
    numbers = incident.alert_numbers
    return {
        "transfers": [_transfer_json(r, explorer_urls) for r in incident.transfers],
        "alerts": [_alert_json(r, numbers[r.alert.id]) for r in incident.alerts],
        "actions": [_action_json(r) for r in incident.actions],
        "notes": [_note_json(r) for r in incident.notes],
    }


def integrity(incident: Incident) -> dict[str, Any]:
    """Counts, timeline sequence numbers and a SHA-256 of the incident's records.

    The digest covers the records as stored (not the explorer links, which depend on config), in
    canonical JSON, so two exports of the same records always carry the same digest.
    """
    records = _records_json(incident, {})
    for transfer in records["transfers"]:
        del transfer["explorer_url"]
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {
        "counts": {kind: len(items) for kind, items in records.items()},
        "seqs": {kind: [item["seq"] for item in items] for kind, items in records.items()},
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "source": "append-only timeline (SQLite; updates and deletes refused by triggers)",
    }


def incident_summary(incident: Incident) -> dict[str, Any]:
    """The headline facts of an incident, JSON-ready."""
    ttf = incident.time_to_freeze
    return {
        "id": incident.id,
        "title": incident.title,
        "status": "frozen" if incident.frozen else "not frozen",
        "max_severity": incident.max_severity.value,
        "wallets": [
            {
                "chain": w.chain,
                "address": w.address,
                "label": w.label,
                "frozen": w.key in incident.frozen_wallets,
            }
            for w in incident.wallets
        ],
        "first_alert_at": incident.first_at.isoformat(),
        "first_alert_at_jst": incident.first_at.astimezone(JST).isoformat(),
        "last_activity_at": incident.last_at.isoformat(),
        "frozen_at": None if incident.frozen_at is None else incident.frozen_at.isoformat(),
        "time_to_freeze_s": None if ttf is None else ttf.total_seconds(),
        "totals_out": [
            {
                "chain": t.chain,
                "asset": t.asset,
                "amount": format_units(t.amount_out, t.decimals),
                "transfers": t.transfers_out,
            }
            for t in incident.totals_out
        ],
        "usd_out": None if incident.usd_out is None else str(incident.usd_out),
        "window": [incident.window[0].isoformat(), incident.window[1].isoformat()],
        "counts": {
            "alerts": len(incident.alerts),
            "transfers": len(incident.transfers),
            "actions": len(incident.actions),
            "notes": len(incident.notes),
        },
    }


def to_json_dict(
    incident: Incident, explorer_urls: Mapping[str, str], generated_at: datetime
) -> dict[str, Any]:
    """The whole export as a JSON-ready dict (see :func:`render_json`)."""
    lines = [describe(e, incident, explorer_urls) for e in incident.entries]
    return {
        "format": REPORT_FORMAT,
        "generated_at": generated_at.astimezone(UTC).isoformat(),
        "incident": incident_summary(incident),
        "timeline": [
            {
                "time": line.time.isoformat(),
                "time_jst": line.time.astimezone(JST).isoformat(),
                "kind": line.kind,
                "category": line.category,
                "ref": line.ref or None,
                "seq": line.seq,
                "title": line.label,
                "detail": line.detail,
                "link": line.link,
            }
            for line in lines
        ],
        **_records_json(incident, explorer_urls),
        "integrity": integrity(incident),
    }


def render_json(
    incident: Incident, explorer_urls: Mapping[str, str], generated_at: datetime
) -> str:
    """The export as indented JSON text; amounts are exact decimal strings."""
    return json.dumps(
        to_json_dict(incident, explorer_urls, generated_at), indent=2, ensure_ascii=False
    )


# --- Markdown -----------------------------------------------------------------------------------

_MD_SPECIAL: Final = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>|#"})


def _md(text: str) -> str:
    """Plain text made safe for a Markdown table cell."""
    return (
        " ".join(text.translate(_MD_SPECIAL).split())
        if "\n" not in text
        else "<br>".join(
            " ".join(line.translate(_MD_SPECIAL).split()) for line in text.splitlines()
        )
    )


def _code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def _link(text: str, url: str | None) -> str:
    if url is None:
        return _code(text)
    return f"[{_code(text)}](<{url.replace('>', '%3E')}>)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _when(moment: datetime) -> str:
    return f"{fmt_utc(moment)} UTC ({fmt_jst(moment)} JST)"


def _md_summary(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    frozen_names = [w.name for w in incident.wallets if w.key in incident.frozen_wallets]
    status = f"FROZEN ({', '.join(frozen_names)})" if frozen_names else "NOT FROZEN"
    out = [
        "## Summary",
        "",
        "| Item | Value |",
        "| --- | --- |",
        f"| Incident | {_code(incident.id)} |",
        f"| What happened | {_md(incident.title)} |",
        f"| Status | **{_md(status)}** |",
        f"| Highest severity | {incident.max_severity.value} |",
        "| Wallets | "
        + "<br>".join(f"{_md(w.name)} ({_code(w.key)})" for w in incident.wallets)
        + " |",
        f"| First alert | {_when(incident.first_at)} |",
    ]
    if incident.frozen_at is not None and incident.time_to_freeze is not None:
        out.append(
            f"| Frozen | {_when(incident.frozen_at)}, "
            f"{fmt_duration(incident.time_to_freeze)} after the first alert |"
        )
    else:
        out.append("| Frozen | no freeze confirmed by the kill switch |")
    out.append(f"| Last activity | {_when(incident.last_at)} |")
    totals = (
        "<br>".join(
            f"{group_digits(format_units(t.amount_out, t.decimals))} {_md(t.asset)} "
            f"({_md(t.chain)}) in {t.transfers_out} transfer{'s' * (t.transfers_out != 1)}"
            for t in incident.totals_out
        )
        or "none"
    )
    out.append(f"| Outflow shown | {totals} |")
    if incident.usd_out is not None:
        out.append(f"| Outflow value | ≈ USD {group_digits(str(incident.usd_out))} |")
    out.append(
        f"| Window of transfers | {fmt_utc(incident.window[0])} to "
        f"{fmt_utc(incident.window[1])} UTC, plus evidence named by alerts |"
    )
    return out


def _md_timeline(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    out = [
        "## Timeline",
        "",
        "| # | Time (UTC) | Time (JST) | Event | Details |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, entry in enumerate(incident.entries, start=1):
        line = describe(entry, incident, explorer_urls)
        details = _md(line.detail)
        if line.link is not None:
            details += f" ([explorer](<{line.link.replace('>', '%3E')}>))"
        out.append(
            f"| {n} | {fmt_utc(line.time)} | {fmt_jst(line.time)} | {_md(line.label)} | {details} |"
        )
    return out


def _md_transfers(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    out = [
        "## Transfers",
        "",
        "| Time (UTC) | Time (JST) | Wallet | Direction | Amount | Counterparty | Status |"
        " Transaction |",
        "| --- | --- | --- | --- | ---: | --- | --- | --- |",
    ]
    for record in incident.transfers:
        t = record.transfer
        flag = " (evidence)" if t.id in incident.evidence_ids else ""
        out.append(
            f"| {fmt_utc(t.time)} | {fmt_jst(t.time)} | {_code(t.key)} | {t.direction.value} | "
            f"{_md(_amount(record))} | {_code(t.counterparty)} | {t.status.value}{flag} | "
            f"{_link(t.tx_hash, explorer_link(explorer_urls, t.chain, t.tx_hash))} |"
        )
    if not incident.transfers:
        out.append("| — | — | — | — | — | — | — | no transfers recorded |")
    return out


def _md_alerts(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    numbers = incident.alert_numbers
    out = ["## Alerts"]
    for alert_record in incident.alerts:
        a = alert_record.alert
        label = _md(a.wallet_label) + " " if a.wallet_label else ""
        out += [
            "",
            f"### A{numbers[a.id]}: {a.severity.value} from {_md(a.detector)}",
            "",
            f"- Time: {_when(a.time)}; detected {fmt_utc(a.detected_at)} UTC",
            f"- Wallet: {label}{_code(a.key)}",
            f"- Summary: {_md(a.summary)}",
            f"- Freeze requested: {'yes' if a.freeze else 'no'}"
            + ("; shadow detector (never frozen on)" if a.shadow else ""),
            f"- Alert id: {_code(a.id)}",
        ]
        if a.tx_hashes:
            links = ", ".join(
                _link(h, explorer_link(explorer_urls, a.chain, h)) for h in a.tx_hashes
            )
            out.append(f"- Evidence: {links}")
        if a.metrics:
            out += ["", "| Metric | Value |", "| --- | ---: |"]
            out += [f"| {_md(k)} | {_md(v)} |" for k, v in sorted(a.metrics.items())]
    return out


def _md_actions(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    numbers = incident.alert_numbers
    out = [
        "## Actions",
        "",
        "| Time (UTC) | Time (JST) | Action | Alert | Details |",
        "| --- | --- | --- | --- | --- |",
    ]
    for action in incident.actions:
        ref = f"A{numbers[action.alert_id]}" if action.alert_id in numbers else "—"
        detail = action.detail
        if action.order is not None and action.order.id not in detail:
            detail += f" (order {action.order.id}: {action.order.action.value})"
        out.append(
            f"| {fmt_utc(action.time)} | {fmt_jst(action.time)} | "
            f"{_md(action.action.value.replace('_', ' '))} | {ref} | {_md(detail)} |"
        )
    if not incident.actions:
        out.append("| — | — | no actions recorded | — | — |")
    return out


def _md_notes(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    out = [
        "## Notes",
        "",
        "| Time (UTC) | Time (JST) | Author | Note |",
        "| --- | --- | --- | --- |",
    ]
    for note in incident.notes:
        out.append(
            f"| {fmt_utc(note.time)} | {fmt_jst(note.time)} | {_md(note.author)} | "
            f"{_md(note.text)} |"
        )
    if not incident.notes:
        out.append("| — | — | — | no notes |")
    return out


def _md_integrity(incident: Incident, explorer_urls: Mapping[str, str]) -> list[str]:
    check = integrity(incident)
    counts = check["counts"]
    seqs = "; ".join(
        f"{kind} {', '.join(map(str, numbers)) or 'none'}"
        for kind, numbers in check["seqs"].items()
    )
    return [
        "## Integrity",
        "",
        f"Timeline integrity: this report holds {_count(counts['transfers'], 'transfer record')}, "
        f"{_count(counts['alerts'], 'alert')}, {_count(counts['actions'], 'action')} and "
        f"{_count(counts['notes'], 'note')}, "
        f"taken from drainwatch's {check['source']}. SHA-256 of these records (canonical JSON, "
        f"as in the JSON export): `{check['sha256']}`.",
        "",
        f"Timeline sequence numbers: {seqs}.",
    ]


_SECTIONS: Final = (
    _md_summary,
    _md_timeline,
    _md_transfers,
    _md_alerts,
    _md_actions,
    _md_notes,
    _md_integrity,
)


def render_markdown(
    incident: Incident, explorer_urls: Mapping[str, str], generated_at: datetime
) -> str:
    """A report of one incident in Markdown, fit to hand to a regulator.

    Times are UTC with JST beside them; amounts are exact; transactions link to the chain's
    block explorer when the config names one.
    """
    out: list[str] = [
        f"# Incident report: {incident.id}",
        "",
        f"Generated {fmt_utc(generated_at)} UTC ({fmt_jst(generated_at)} JST) by drainwatch from "
        "its append-only timeline. Times are given in UTC and in Japan Standard Time "
        "(JST, UTC+9). Amounts are exact, in each asset's own units.",
    ]
    for section in _SECTIONS:
        out += ["", *section(incident, explorer_urls)]
    out.append("")
    return "\n".join(out)
