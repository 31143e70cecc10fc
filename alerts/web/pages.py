"""The incident pages as server-rendered HTML: no JavaScript, one local stylesheet.

Every value that comes from a chain, a detector, a config or a responder goes through
:func:`html.escape`; links to block explorers come only from http(s) templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from urllib.parse import quote

from alerts.incidents import (
    FlowSeries,
    Incident,
    chart_markers,
    format_units,
)
from alerts.report import (
    JST,
    TimelineLine,
    describe,
    fmt_duration,
    fmt_jst,
    fmt_utc,
    group_digits,
    short,
)
from alerts.web.chart import render_chart

__all__ = ["TAGS", "incident_page", "list_page", "not_found_page"]

TAGS: dict[str, str] = {
    "out": "TX OUT",
    "in": "TX IN",
    "retracted": "REORG",
    "critical": "CRITICAL",
    "warning": "WARNING",
    "info": "INFO",
    "notification": "NOTIFY",
    "freeze": "FROZEN",
    "freeze_request": "FREEZE",
    "freeze_skipped": "NO FREEZE",
    "freeze_failed": "FAILED",
    "unfreeze": "UNFREEZE",
    "failed": "FAILED",
    "escalated": "ESCALATED",
    "acknowledged": "ACK",
    "hook": "HOOK",
    "approval": "APPROVAL",
    "note": "NOTE",
    "other": "ACTION",
}

_SOURCES = {
    "chain": "balance read on chain",
    "alert": "balance from the detector's alert",
    "opening": "balance from the configured opening balance",
    "unknown": "balance unknown: no balance on chain, in the alerts or in the config",
}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _href(prefix: str, *parts: str) -> str:
    return prefix + "/incidents" + "".join("/" + quote(p, safe="") for p in parts)


def _page(
    title: str, body: str, prefix: str, now: datetime, *, refresh_s: int | None = None
) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{_e(title)} · drainwatch</title>"
        f'<link rel="stylesheet" href="{_e(prefix)}/incidents/static/incidents.css">'
        "</head><body>"
        '<header class="topbar">'
        f'<a class="brand" href="{_e(_href(prefix))}">'
        '<span class="brand-mark">◆</span> drainwatch</a>'
        f'<nav><a href="{_e(_href(prefix))}">Incidents</a></nav>'
        f'<div class="clock" title="When this page was rendered">'
        f"{_e(fmt_utc(now))} UTC · {_e(now.astimezone(JST).strftime('%H:%M'))} JST</div>"
        "</header>"
        f"<main>{body}</main></body></html>"
    )


def _outflow_text(incident: Incident) -> str:
    if not incident.totals_out:
        return "none"
    return "<br>".join(
        f"{_e(group_digits(format_units(t.amount_out, t.decimals)))} "
        f'<span class="unit">{_e(t.asset)}</span>'
        for t in incident.totals_out
    )


def _status_pill(incident: Incident) -> str:
    if incident.frozen:
        return '<span class="pill pill-frozen">Frozen</span>'
    if incident.freeze_requested:
        return '<span class="pill pill-unfrozen">Not frozen</span>'
    return '<span class="pill pill-open">Open</span>'


def _severity(value: str) -> str:
    return f'<span class="sev sev-{_e(value)}">{_e(value)}</span>'


def list_page(incidents: Sequence[Incident], prefix: str, now: datetime) -> str:
    """The incident list, newest first."""
    newest = sorted(incidents, key=lambda i: i.first_at, reverse=True)
    open_critical = sum(1 for i in newest if not i.frozen and i.max_severity.value == "critical")
    rows = []
    for i in newest:
        ttf = i.time_to_freeze
        rows.append(
            f'<tr class="incident-row {"is-frozen" if i.frozen else "is-open"} '
            f'sev-row-{_e(i.max_severity.value)}" data-incident="{_e(i.id)}">'
            f"<td>{_status_pill(i)}</td>"
            f"<td>{_severity(i.max_severity.value)}</td>"
            f'<td class="title-cell"><a href="{_e(_href(prefix, i.id))}">{_e(i.title)}</a>'
            f'<div class="sub"><code>{_e(i.id)}</code></div></td>'
            f"<td>{'<br>'.join(_e(w.name) for w in i.wallets)}</td>"
            f'<td class="time">{_e(fmt_utc(i.first_at))}'
            f'<div class="sub">{_e(fmt_jst(i.first_at))} JST</div></td>'
            f'<td class="num">{_e(fmt_duration(ttf)) if ttf is not None else "—"}</td>'
            f'<td class="num">{len(i.alerts)}</td>'
            f'<td class="num">{_outflow_text(i)}</td>'
            "</tr>"
        )
    if rows:
        table = (
            '<table class="incidents"><thead><tr><th>Status</th><th>Severity</th>'
            "<th>Incident</th><th>Wallets</th><th>First alert (UTC)</th>"
            '<th class="num">To freeze</th><th class="num">Alerts</th>'
            '<th class="num">Outflow shown</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    else:
        table = (
            '<div class="empty">No incidents. Alerts that reach the alerts service appear '
            "here, grouped into incidents.</div>"
        )
    summary = f"{len(newest)} incident{'s' * (len(newest) != 1)}"
    if open_critical:
        summary += f' · <span class="alarm">{open_critical} critical and not frozen</span>'
    body = (
        '<div class="page-head"><h1>Incidents</h1>'
        f'<p class="lede">{summary}. Refreshes every 30 s.</p></div>'
        f'<section class="panel flush">{table}</section>'
    )
    return _page("Incidents", body, prefix, now, refresh_s=30)


def _timeline(lines: Sequence[TimelineLine]) -> str:
    items: list[str] = []
    day = ""
    for line in lines:
        this_day = fmt_utc(line.time)[:10]
        if this_day != day:
            day = this_day
            items.append(
                f'<li class="tl-day">{_e(day)} UTC'
                f'<span class="sub"> · {_e(fmt_jst(line.time)[:10])} JST</span></li>'
            )
        link = (
            f'<a class="tl-link" href="{_e(line.link)}" target="_blank" '
            f'rel="noopener noreferrer">View on explorer ↗</a>'
            if line.link
            else ""
        )
        ref = f'<span class="ref">{_e(line.ref)}</span>' if line.ref else ""
        items.append(
            f'<li class="tl-item tl-{_e(line.kind)} cat-{_e(line.category)}" '
            f'data-kind="{_e(line.kind)}" data-category="{_e(line.category)}">'
            f'<div class="tl-time"><span class="utc">{_e(fmt_utc(line.time)[11:])}</span>'
            f'<span class="jst">{_e(fmt_jst(line.time)[11:])} JST</span></div>'
            f'<div class="tl-body"><div class="tl-title">'
            f'<span class="tag tag-{_e(line.category)}">{_e(TAGS.get(line.category, "EVENT"))}'
            f'</span>{ref}<span class="tl-text">{_e(line.title)}</span></div>'
            f'<div class="tl-detail">{_e(line.detail)}</div>{link}</div></li>'
        )
    return f'<ol class="timeline">{"".join(items)}</ol>'


def _chart_panel(incident: Incident, series: Sequence[FlowSeries]) -> str:
    markers = chart_markers(incident)
    names = {w.key: w.name for w in incident.wallets}
    blocks = []
    for s in series[:4]:
        label = f"{names.get(s.key, short(s.key))} · {s.asset}"
        last = s.points[-1]
        now_parts = [
            f'<span class="now-out">{_e(group_digits(format_units(last.outflow, s.decimals)))}'
            f" {_e(s.asset)} out</span>"
        ]
        if last.balance is not None:
            now_parts.append(
                f'<span class="now-balance">'
                f"{_e(group_digits(format_units(last.balance, s.decimals)))} {_e(s.asset)} left"
                "</span>"
            )
        blocks.append(
            f'<figure class="chart-block"><figcaption><span class="chart-title">{_e(label)}'
            f'</span><span class="chart-now">{"".join(now_parts)}</span>'
            f'<span class="sub chart-source">{_e(_SOURCES.get(s.balance_source, ""))}</span>'
            "</figcaption>"
            f"{render_chart(s, [m for m in markers if m.wallet == s.key], title=label)}</figure>"
        )
    if not blocks:
        blocks.append('<div class="empty">No outflow recorded for this incident.</div>')
    legend = (
        '<ul class="legend">'
        '<li><span class="swatch swatch-outflow"></span>Cumulative outflow</li>'
        '<li><span class="swatch swatch-balance"></span>Remaining balance</li>'
        '<li><span class="swatch swatch-alert"></span>Alert</li>'
        '<li><span class="swatch swatch-freeze"></span>Freeze confirmed</li>'
        "</ul>"
    )
    return (
        '<section class="panel chart-panel"><h2>Outflow and balance</h2>'
        f"{''.join(blocks)}{legend}</section>"
    )


def _alerts_panel(incident: Incident) -> str:
    numbers = incident.alert_numbers
    cards = []
    for record in incident.alerts:
        a = record.alert
        metrics = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in sorted(a.metrics.items())
        )
        flags = []
        if a.freeze:
            flags.append('<span class="flag flag-freeze">freeze requested</span>')
        if a.shadow:
            flags.append('<span class="flag">shadow</span>')
        cards.append(
            f'<details class="alert-card sev-border-{_e(a.severity.value)}" '
            f'data-alert="{_e(a.id)}"{" open" if a.severity.value == "critical" else ""}>'
            f'<summary><span class="ref">A{numbers[a.id]}</span>{_severity(a.severity.value)}'
            f'<span class="detector">{_e(a.detector)}</span>'
            f'<span class="time">{_e(fmt_utc(a.time)[11:])} UTC</span>{"".join(flags)}</summary>'
            f'<p class="alert-summary">{_e(a.summary)}</p>'
            + (f'<table class="metrics">{metrics}</table>' if metrics else "")
            + "</details>"
        )
    return f'<section class="panel"><h2>Alerts</h2>{"".join(cards)}</section>'


def _notes_panel(incident: Incident) -> str:
    notes = "".join(
        f'<li class="note"><div class="note-head"><strong>{_e(n.author)}</strong>'
        f'<span class="time">{_e(fmt_utc(n.time))} UTC · {_e(fmt_jst(n.time)[11:])} JST</span>'
        f"</div><p>{_e(n.text)}</p></li>"
        for n in incident.notes
    )
    body = f'<ul class="notes">{notes}</ul>' if notes else '<div class="empty">No notes yet.</div>'
    return (
        '<section class="panel"><h2>Notes</h2>'
        f'{body}<p class="hint">Add one: <code>drainwatch incidents note '
        f'{_e(incident.id)} "…"</code></p></section>'
    )


def incident_page(
    incident: Incident,
    series: Sequence[FlowSeries],
    explorer_urls: Mapping[str, str],
    prefix: str,
    now: datetime,
) -> str:
    """One incident: status, key numbers, the timeline beside the chart, alerts and notes."""
    lines = [describe(e, incident, explorer_urls) for e in incident.entries]
    frozen_names = [w.name for w in incident.wallets if w.key in incident.frozen_wallets]
    if incident.frozen_at is not None and incident.time_to_freeze is not None:
        status = (
            f'<div class="status-box is-frozen"><div class="status-label">Wallet frozen</div>'
            f'<div class="status-sub">{_e(", ".join(frozen_names))} · '
            f"{_e(fmt_duration(incident.time_to_freeze))} after the first alert</div></div>"
        )
    elif incident.freeze_requested:
        status = (
            '<div class="status-box is-unfrozen"><div class="status-label">Not frozen</div>'
            '<div class="status-sub">A freeze was requested; the kill switch has not confirmed '
            "one</div></div>"
        )
    else:
        status = (
            '<div class="status-box is-open"><div class="status-label">Open</div>'
            '<div class="status-sub">No alert asked for a freeze</div></div>'
        )
    wallets = " ".join(
        f'<span class="wallet">{_e(w.name)} <code title="{_e(w.key)}">'
        f"{_e(w.chain)}:{_e(short(w.address, 8))}</code></span>"
        for w in incident.wallets
    )
    usd = (
        f'<div class="stat"><div class="stat-label">Value out</div><div class="stat-value">'
        f"≈ ${_e(group_digits(str(incident.usd_out.quantize(1))))}</div></div>"
        if incident.usd_out is not None
        else ""
    )
    frozen_stat = (
        f"{_e(fmt_utc(incident.frozen_at)[11:])} UTC"
        f'<div class="sub">{_e(fmt_jst(incident.frozen_at))} JST</div>'
        if incident.frozen_at is not None
        else "—"
    )
    head = (
        '<section class="incident-head">'
        f'<div class="head-main"><div class="eyebrow"><a href="{_e(_href(prefix))}">Incidents</a>'
        f" / <code>{_e(incident.id)}</code> {_severity(incident.max_severity.value)}</div>"
        f'<h1>{_e(incident.title)}</h1><div class="wallets">{wallets}</div></div>'
        f"{status}</section>"
        '<section class="stats">'
        f'<div class="stat"><div class="stat-label">Outflow shown</div>'
        f'<div class="stat-value">{_outflow_text(incident)}</div></div>{usd}'
        f'<div class="stat"><div class="stat-label">First alert</div><div class="stat-value">'
        f"{_e(fmt_utc(incident.first_at)[11:])} UTC"
        f'<div class="sub">{_e(fmt_jst(incident.first_at))} JST</div></div></div>'
        f'<div class="stat"><div class="stat-label">Frozen at</div>'
        f'<div class="stat-value">{frozen_stat}</div></div>'
        f'<div class="stat"><div class="stat-label">Records</div><div class="stat-value small">'
        f"{_count(len(incident.alerts), 'alert')} · "
        f"{_count(len(incident.transfers), 'transfer')}<br>"
        f"{_count(len(incident.actions), 'action')} · {_count(len(incident.notes), 'note')}"
        "</div></div>"
        "</section>"
    )
    exports = (
        '<section class="panel"><h2>Export</h2><p class="exports">'
        f'<a class="button" href="{_e(_href(prefix, incident.id, "report.md"))}">'
        "Markdown report</a>"
        f'<a class="button" href="{_e(_href(prefix, incident.id, "report.json"))}">JSON</a>'
        "</p></section>"
    )
    body = (
        head
        + '<div class="layout">'
        + f'<section class="panel timeline-panel"><h2>Timeline</h2>{_timeline(lines)}</section>'
        + '<aside class="side">'
        + _chart_panel(incident, series)
        + _alerts_panel(incident)
        + _notes_panel(incident)
        + exports
        + "</aside></div>"
    )
    return _page(f"Incident {incident.id}", body, prefix, now)


def not_found_page(ref: str, message: str, prefix: str, now: datetime) -> str:
    """The page for an incident id that matches nothing."""
    body = (
        '<div class="page-head"><h1>Incident not found</h1>'
        f'<p class="lede">{_e(message)}</p>'
        f'<p><a class="button" href="{_e(_href(prefix))}">All incidents</a></p></div>'
    )
    return _page(f"Not found: {ref}", body, prefix, now)
