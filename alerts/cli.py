"""``drainwatch incidents``: list, show and export incidents, and add responders' notes.

A typer sub-app; ``drainwatch/cli.py`` mounts it with
``app.add_typer(incidents_app, name="incidents")``. Every command reads the timeline named by
``--timeline``, or by ``[alerts].timeline_path`` of ``--config`` (``drainwatch.toml``); the config,
when there is one, also gives the block-explorer links (``[chains.*].explorer_tx_url``) and the
wallets' opening balances.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from alerts.incidents import (
    Incident,
    IncidentNotFoundError,
    IncidentPolicy,
    find_incident,
    format_units,
    incidents_from,
)
from alerts.report import (
    describe,
    fmt_duration,
    fmt_jst,
    fmt_utc,
    group_digits,
    incident_summary,
    render_json,
    render_markdown,
)
from alerts.timeline import Timeline, utc_now
from drainwatch.cli_errors import fail
from drainwatch.config import Config, ConfigError, WalletConfig, load
from drainwatch.events import Severity

__all__ = ["ExportFormat", "IncidentsContext", "incidents_app", "open_context"]

DEFAULT_CONFIG = Path("drainwatch.toml")

incidents_app = typer.Typer(
    help="Incidents from the alerts timeline: list, show, export (Markdown, JSON), add notes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

TimelineOption = Annotated[
    Path | None,
    typer.Option(
        "--timeline",
        help="The timeline SQLite file (default: alerts.timeline_path of --config).",
        dir_okay=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The TOML config (default: drainwatch.toml, when it exists).",
        dir_okay=False,
    ),
]
GapOption = Annotated[
    float,
    typer.Option(
        "--gap-h",
        min=0.0,
        help="Alerts of one wallet further apart than this many hours start a new incident.",
    ),
]
IncidentArgument = Annotated[str, typer.Argument(help="An incident id, or a unique prefix of one.")]


class ExportFormat(StrEnum):
    """What ``drainwatch incidents export`` writes."""

    MARKDOWN = "markdown"
    JSON = "json"


@dataclass
class IncidentsContext:
    """What every command needs: the open timeline and what the config says about display."""

    timeline: Timeline
    explorer_urls: dict[str, str] = field(default_factory=dict)
    wallets: tuple[WalletConfig, ...] = ()
    """The ``[[wallets]]`` entries (labels, opening balances)."""
    policy: IncidentPolicy = field(default_factory=IncidentPolicy)

    def incidents(self) -> list[Incident]:
        """Every incident, oldest first."""
        return incidents_from(self.timeline, self.policy)


def _read_config(config: Path | None) -> Config | None:
    path = config or DEFAULT_CONFIG
    if config is None and not path.exists():
        return None
    try:
        return load(path)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


@contextmanager
def open_context(
    timeline: Path | None, config: Path | None, gap_h: float = 6.0
) -> Iterator[IncidentsContext]:
    """Open the timeline named by the options (never creating one) and read the config.

    Raises:
        typer.Exit: No timeline to read, or a bad config (exit code 2).
    """
    cfg = _read_config(config)
    if timeline is None:
        if cfg is None:
            raise fail(
                f"no timeline: pass --timeline, or --config with [alerts].timeline_path "
                f"({DEFAULT_CONFIG} not found)"
            )
        timeline = Path(cfg.alerts.timeline_path)
    if not timeline.is_file():
        # Opening would create an empty database: a typo must not look like "no incidents".
        raise fail(f"timeline {timeline} does not exist")
    explorer_urls = (
        {name: c.explorer_tx_url for name, c in cfg.chains.items() if c.explorer_tx_url}
        if cfg is not None
        else {}
    )
    wallets = cfg.wallets if cfg is not None else ()
    tl = Timeline(str(timeline))
    try:
        yield IncidentsContext(
            tl, explorer_urls, wallets, IncidentPolicy(gap=timedelta(hours=gap_h))
        )
    finally:
        tl.close()


def _pick(ctx: IncidentsContext, ref: str) -> Incident:
    try:
        return find_incident(ctx.incidents(), ref)
    except IncidentNotFoundError as exc:
        raise fail(str(exc), 1) from exc


_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _outflow(incident: Incident) -> str:
    return ", ".join(
        f"{group_digits(format_units(t.amount_out, t.decimals))} {t.asset}"
        for t in incident.totals_out
    )


@incidents_app.command("list")
def list_incidents(
    timeline: TimelineOption = None,
    config: ConfigOption = None,
    gap_h: GapOption = 6.0,
    severity: Annotated[
        Severity, typer.Option(help="Only incidents whose highest severity is at least this.")
    ] = Severity.INFO,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """List incidents, newest first."""
    with open_context(timeline, config, gap_h) as ctx:
        found = [i for i in ctx.incidents() if i.max_severity.rank >= severity.rank]
    found.reverse()
    if as_json:
        typer.echo(json.dumps([incident_summary(i) for i in found], indent=2, ensure_ascii=False))
        return
    console = Console()
    if not found:
        console.print("No incidents.")
        return
    # The summary only fits a wide terminal; `show` has it anyway.
    wide = console.width >= 150
    table = Table(
        title=f"{len(found)} incident{'s' * (len(found) != 1)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    table.add_column("Incident", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Wallets", overflow="fold")
    table.add_column("First alert UTC", no_wrap=True)
    table.add_column("Outflow", justify="right", no_wrap=True)
    if wide:
        table.add_column("Summary", overflow="ellipsis", no_wrap=True, max_width=60)
    for i in found:
        status = Text("FROZEN ", "bold green") if i.frozen else Text("open ", "bold red")
        status.append(i.max_severity.value, _SEVERITY_STYLE[i.max_severity.value])
        row: list[str | Text] = [
            i.id,
            status,
            ", ".join(w.name for w in i.wallets),
            fmt_utc(i.first_at)[:16],
            _outflow(i),
        ]
        table.add_row(*row, *([i.title] if wide else []))
    console.print(table)


@incidents_app.command()
def show(
    incident_id: IncidentArgument,
    timeline: TimelineOption = None,
    config: ConfigOption = None,
    gap_h: GapOption = 6.0,
) -> None:
    """Show one incident: its summary and its whole timeline (UTC and JST)."""
    with open_context(timeline, config, gap_h) as ctx:
        incident = _pick(ctx, incident_id)
        lines = [describe(e, incident, ctx.explorer_urls) for e in incident.entries]
    console = Console()
    console.print(f"[bold]Incident {incident.id}[/]  {incident.title}", highlight=False)
    if incident.frozen_at is not None and incident.time_to_freeze is not None:
        console.print(
            f"[bold green]FROZEN[/] at {fmt_utc(incident.frozen_at)} UTC, "
            f"{fmt_duration(incident.time_to_freeze)} after the first alert",
            highlight=False,
        )
    else:
        console.print("[bold red]NOT FROZEN[/]", highlight=False)
    console.print(
        f"Wallets: {', '.join(f'{w.name} ({w.key})' for w in incident.wallets)}\n"
        f"Highest severity: {incident.max_severity.value}   Outflow shown: {_outflow(incident)}",
        highlight=False,
    )
    table = Table(show_lines=False)
    table.add_column("Time (UTC)", no_wrap=True)
    table.add_column("Time (JST)", no_wrap=True, style="dim")
    table.add_column("Event")
    table.add_column("Details", style="dim")
    styles = {
        "critical": "bold red",
        "warning": "yellow",
        "freeze": "bold green",
        "freeze_failed": "bold red",
        "failed": "bold red",
        "escalated": "yellow",
        "note": "magenta",
        "retracted": "strike dim",
    }
    for line in lines:
        table.add_row(
            fmt_utc(line.time),
            fmt_jst(line.time),
            Text(line.label, styles.get(line.category, "")),
            line.detail,
        )
    console.print(table)


@incidents_app.command()
def export(
    incident_id: IncidentArgument,
    *,
    timeline: TimelineOption = None,
    config: ConfigOption = None,
    gap_h: GapOption = 6.0,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="Markdown (for a report) or JSON.")
    ] = ExportFormat.MARKDOWN,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Export one incident as Markdown (fit for a regulator's report) or JSON."""
    with open_context(timeline, config, gap_h) as ctx:
        incident = _pick(ctx, incident_id)
        render = render_markdown if fmt is ExportFormat.MARKDOWN else render_json
        text = render(incident, ctx.explorer_urls, utc_now())
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        Console(stderr=True).print(f"wrote {output}", highlight=False)


@incidents_app.command()
def note(
    incident_id: IncidentArgument,
    text: Annotated[str, typer.Argument(help="The note (quote it).")],
    *,
    timeline: TimelineOption = None,
    config: ConfigOption = None,
    gap_h: GapOption = 6.0,
    author: Annotated[
        str | None, typer.Option(help="Who writes it (default: the login name).")
    ] = None,
) -> None:
    """Add a note to an incident's timeline (append-only: a correction is another note)."""
    who = author or os.environ.get("DRAINWATCH_AUTHOR") or getpass.getuser()
    if not text.strip():
        raise fail("the note is empty")
    with open_context(timeline, config, gap_h) as ctx:
        incident = _pick(ctx, incident_id)
        record = ctx.timeline.add_note(incident.id, text, author=who)
    Console().print(
        f"note #{record.seq} added to {incident.id} by {record.author} at "
        f"{fmt_utc(record.time)} UTC",
        highlight=False,
    )
