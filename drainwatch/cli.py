"""The ``drainwatch`` command: demo, backtest, run, kill switch, schemas, config checks and the
detectors' state snapshots."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from alerts.cli import incidents_app
from drainwatch.cli_errors import fail
from drainwatch.config import (
    ConfigError,
    learning_notice,
    load,
    require_live_chains,
    unwatched_wallets,
)
from drainwatch.errors import DrainwatchError
from drainwatch.ops.cli import grafana_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="Watch exchange wallets on-chain and stop a drain while it is happening.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
killswitch_app = typer.Typer(help="The kill-switch service.", no_args_is_help=True)
app.add_typer(killswitch_app, name="killswitch")
app.add_typer(incidents_app, name="incidents")
app.add_typer(grafana_app, name="grafana")
audit_app = typer.Typer(help="The kill switch's audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

err = Console(stderr=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The TOML config file.", show_default=True)
]
ProgressOption = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Default: on a terminal.")
]


class Stage(StrEnum):
    """Which stage ``drainwatch run`` starts."""

    ALL = "all"
    INGEST = "ingest"
    DETECT = "detect"
    ALERT = "alert"


class BusKind(StrEnum):
    """Which bus connects the stages."""

    EMBEDDED = "embedded"
    KAFKA = "kafka"


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python's DEBUG is its wire protocol: too much even for --verbose
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.WARNING)


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to keep the timeline (default: a new temp dir).")
    ] = None,
) -> None:
    """Run the whole pipeline on an in-process chain and drain a hot wallet the Coincheck way."""
    from drainwatch.demo import run_demo

    result = run_demo(workdir=workdir, console=Console())
    if not result.frozen:
        raise fail("the demo drain was not frozen", 1)


@app.command()
def backtest(  # noqa: PLR0917 - typer passes options by position
    transfers: Annotated[Path, typer.Option(help="transfers.jsonl, one transfer per line.")],
    alerts_out: Annotated[Path, typer.Option("--alerts-out", help="Where to write alerts.jsonl.")],
    config: ConfigOption = Path("drainwatch.toml"),
    ledger: Annotated[
        Path | None, typer.Option(help="ledger.jsonl: the exchange's approved withdrawals.")
    ] = None,
    progress: ProgressOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes splitting the wallets (default: one per core); the alerts are the "
            "same as with 1.",
        ),
    ] = None,
) -> None:
    """Replay transfers in event time through the live detectors and write the alerts."""
    from detectors import DetectorError, run_backtest

    try:
        cfg = load(config)
        show = sys.stderr.isatty() if progress is None else progress
        summary = run_backtest(cfg, transfers, ledger, alerts_out, progress=show, workers=workers)
    except (ConfigError, DetectorError) as exc:
        raise fail(str(exc)) from exc
    err.print(
        f"{summary.transfers_read} transfers ({summary.watched_transfers} touching watched "
        f"wallets), {summary.alerts} alerts, {summary.transfers_per_s:,.0f} transfers/s "
        f"-> {alerts_out}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def evaluate(  # noqa: PLR0917 - typer passes options by position
    scenario: Annotated[
        list[str] | None,
        typer.Option(help="Run only these (repeatable; a variant's name too, without --variants)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A shorter normal-traffic scenario.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = 2,
    keep: Annotated[
        Path | None, typer.Option(help="Keep the generated files in this directory.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    with_variants: Annotated[
        bool,
        typer.Option(
            "--variants",
            help="Also run fleets no default was tuned on (false freezes and warnings only).",
        ),
    ] = False,
    drain_day: Annotated[
        float | None,
        typer.Option(
            help="The day most drains start (default 17.5, from 7 to 18.5): a wallet's rules "
            "differ by its age.",
        ),
    ] = None,
    opening_balances: Annotated[
        bool,
        typer.Option(
            "--opening-balances",
            help="Give every wallet its opening balance (most drain-free fleets run without, the "
            "harder case for an estimated balance; a known one is harder in a surge).",
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(
            help="Draw every fleet's traffic and drains anew (0 is the traffic the defaults were "
            "tuned on; any other number is a hold-out).",
        ),
    ] = 0,
    progress: ProgressOption = None,
) -> None:
    """Lay drains over generated traffic; score drainwatch against the fixed 5%/20-min rule."""
    from detectors import DetectorError
    from detectors import evaluate as ev
    from detectors.backtest import check_files

    try:
        chosen = ev.choose(
            scenario or (),
            quick=quick,
            with_variants=with_variants,
            drain_day=ev.DRAIN_DAY if drain_day is None else drain_day,
            opening_balances=opening_balances,
            seed=seed,
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    try:
        check_files(write=[json_out])  # before the minutes of running, not after
    except DetectorError as exc:
        raise fail(str(exc)) from exc
    if sys.stderr.isatty() if progress is None else progress:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("runs", total=2 * len(chosen))
            results = ev.run_all(
                chosen, workers=workers, directory=keep, done=lambda _: bar.advance(task)
            )
    else:
        results = ev.run_all(chosen, workers=workers, directory=keep)
    print(ev.table(results))
    if json_out is not None:
        json_out.write_bytes(ev.results_json(results))


@app.command()
def run(
    stage: Annotated[Stage, typer.Argument(help="Which stage to run.")] = Stage.ALL,
    config: ConfigOption = Path("drainwatch.toml"),
    bus: Annotated[BusKind | None, typer.Option(help="Override the config's bus.kind.")] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            help="Static consumer-group membership id of this process (overrides "
            "bus.instance_id; a StatefulSet passes its pod's name)."
        ),
    ] = None,
) -> None:
    """Run the live pipeline (all stages in one process, or one stage per process on Kafka)."""
    from drainwatch.app import run_pipeline

    try:
        cfg = load(config)
        if instance_id is not None:
            # Kubernetes leaves "$(POD_NAME)" as written when the variable is not defined:
            # every pod would then be one static member, fencing the others out.
            if not instance_id.strip() or "$(" in instance_id or "${" in instance_id:
                raise fail(
                    f"--instance-id {instance_id!r}: give this process's own name "
                    "(an unexpanded variable or a blank would be every replica's)"
                )
            cfg = cfg.model_copy(
                update={"bus": cfg.bus.model_copy(update={"instance_id": instance_id})}
            )
        if stage in (Stage.ALL, Stage.INGEST):
            require_live_chains(cfg, config)
        run_pipeline(cfg, stage=stage.value, bus_kind=bus.value if bus else None)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


@killswitch_app.command("serve")
def killswitch_serve(
    config: ConfigOption = Path("drainwatch.toml"),
    bus: Annotated[
        BusKind | None, typer.Option(help="Publish orders on this bus (default: the config's).")
    ] = None,
) -> None:
    """Serve the kill-switch HTTP API from the config's killswitch table."""
    from drainwatch.app import serve_killswitch

    try:
        serve_killswitch(load(config), config, bus_kind=bus.value if bus else None)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


@audit_app.command("verify")
def audit_verify(
    store: Annotated[str, typer.Argument(help="The kill switch's store: SQLite file or DSN.")],
    expected_head: Annotated[
        str | None, typer.Option(help="The head hash kept elsewhere (GET /v1/audit/head).")
    ] = None,
) -> None:
    """Verify the kill switch's hash-chained audit log; exit 1 if any entry was altered."""
    from alerts.killswitch import audit_verify as verify

    code = verify(store, expected_head=expected_head)
    if code:
        raise typer.Exit(code)


@app.command()
def schemas(
    out: Annotated[Path | None, typer.Option(help="Directory (default: the package's).")] = None,
) -> None:
    """Write the JSON Schemas of the bus events."""
    from drainwatch.schema import SCHEMA_DIR, write_schemas

    for path in write_schemas(out or SCHEMA_DIR):
        typer.echo(path)


@app.command("check-config")
def check_config(config: ConfigOption = Path("drainwatch.toml")) -> None:
    """Validate a config file and say what it watches."""
    try:
        cfg = load(config)
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"{config}: ok, {len(cfg.wallets)} wallets on {len(cfg.chains)} live chains")
    notice = learning_notice(cfg.detection, datetime.now(UTC))
    if notice is not None:
        typer.echo(notice)
    unwatched = unwatched_wallets(cfg)
    if unwatched:
        chains = sorted({w.chain for _, w in unwatched})
        typer.echo(
            f"not watched live (no [chains.*] table for {', '.join(chains)}; fine for a "
            f"backtest): {', '.join(w.name for _, w in unwatched)}"
        )


@app.command()
def snapshots(config: ConfigOption = Path("drainwatch.toml")) -> None:
    """List the detectors' state snapshots in the config's state_dir: each partition's offset,
    age and size, and whether a detector running this code and config would take it back."""
    from datetime import UTC, datetime

    from detectors import SnapshotStore, fingerprint

    try:
        cfg = load(config)
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    store = SnapshotStore(Path(cfg.state_dir) / "snapshots")
    files = store.files(fingerprint(cfg))
    if not files:
        typer.echo(f"no snapshots in {store.directory}")
        return
    now = datetime.now(UTC)
    for f in files:
        age = f"{(now - f.taken_at).total_seconds() / 60:,.0f} min ago" if f.taken_at else "?"
        typer.echo(
            f"{f.topic}/{f.partition}: offset {f.offset:,}, taken {age}, "
            f"{f.size / 1e6:.1f} MB, {f.verdict}"
        )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DrainwatchError as exc:
        sys.exit(fail(str(exc)).exit_code)
