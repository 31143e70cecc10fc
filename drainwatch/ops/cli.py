"""``drainwatch grafana``: export the dashboards as JSON, push them and the annotations to Grafana.

Mounted by the main CLI as ``app.add_typer(grafana_app, name="grafana")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from drainwatch.cli_errors import fail
from drainwatch.config import ConfigError, load
from drainwatch.ops.dashboards import build_dashboards, write_dashboards
from drainwatch.ops.grafana import (
    GrafanaPushError,
    annotate,
    annotations_from_timeline,
    ensure_folder,
    push_dashboards,
)

__all__ = ["grafana_app"]

grafana_app = typer.Typer(help="Grafana dashboards and annotations.", no_args_is_help=True)


def _credential(token_env: str, user_env: str, password_env: str) -> str | tuple[str, str]:
    token = os.environ.get(token_env)
    if token:
        return token
    user, password = os.environ.get(user_env), os.environ.get(password_env)
    if user and password:
        return (user, password)
    raise fail(f"set {token_env} (a service-account token) or {user_env} and {password_env}")


def _load_dashboards(directory: Path | None) -> list[dict[str, Any]]:
    if directory is None:
        return list(build_dashboards().values())
    files = sorted(directory.glob("*.json"))
    if not files:
        raise fail(f"no *.json dashboards in {directory}")
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


@grafana_app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="Directory for <uid>.json files.")] = Path(
        "deploy/grafana/dashboards"
    ),
) -> None:
    """Write the dashboards as Grafana JSON (what deploy/grafana/dashboards holds)."""
    for path in write_dashboards(out):
        typer.echo(path)


@grafana_app.command("push")
def push(  # noqa: PLR0917 - typer maps each option to a parameter
    url: Annotated[
        str, typer.Option(envvar="GRAFANA_URL", help="Grafana's base URL.")
    ] = "http://127.0.0.1:3000",
    token_env: Annotated[
        str, typer.Option(help="Environment variable holding a service-account token.")
    ] = "GRAFANA_TOKEN",  # noqa: S107 - the name of a variable, not a secret
    user_env: Annotated[str, typer.Option(help="Basic auth user, when no token.")] = (
        "GRAFANA_USER"
    ),
    password_env: Annotated[
        str, typer.Option(help="Basic auth password variable.")
    ] = "GRAFANA_PASSWORD",  # noqa: S107 - the name of a variable, not a secret
    folder_uid: Annotated[
        str | None, typer.Option(help="Folder for the dashboards (created if missing).")
    ] = "drainwatch",
    dashboards: Annotated[
        Path | None, typer.Option(help="Push these JSON files instead of the built-in ones.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Read the timeline path from here.")
    ] = None,
    timeline: Annotated[
        Path | None, typer.Option(help="Timeline SQLite file whose alerts and freezes to mark.")
    ] = None,
    annotations: Annotated[
        bool, typer.Option("--annotations/--no-annotations", help="Add alerts and freezes.")
    ] = True,
) -> None:
    """Upload the dashboards and add the timeline's alerts and freezes as annotations."""
    from grafana_client import GrafanaApi  # type: ignore[import-untyped]

    credential = _credential(token_env, user_env, password_env)
    client = GrafanaApi.from_url(url, credential=credential, timeout=10.0)
    if timeline is None and config is not None:
        try:
            timeline = Path(load(config).alerts.timeline_path)
        except ConfigError as exc:
            raise fail(str(exc)) from exc
    try:
        folder = ensure_folder(client, folder_uid) if folder_uid else None
        for reply in push_dashboards(client, _load_dashboards(dashboards), folder_uid=folder):
            typer.echo(f"dashboard {reply.get('uid')}: {reply.get('status')} {reply.get('url')}")
        if annotations and timeline is not None:
            if not timeline.exists():
                raise fail(f"no timeline at {timeline}")
            added = annotate(client, annotations_from_timeline(timeline))
            typer.echo(f"annotations added: {added}")
    except GrafanaPushError as exc:
        raise fail(str(exc)) from exc
