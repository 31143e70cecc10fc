"""Grafana dashboards as code: wallets, alerts and freezes, pipeline health.

Each dashboard is a plain dict in Grafana's JSON model, built from a few panel helpers so that
every PromQL expression is written once. ``deploy/grafana/dashboards/*.json`` is this module's
output (``python -m drainwatch.ops.dashboards deploy/grafana/dashboards``), and a test checks
both that the files are current and that every expression returns data from a Prometheus scraping
a running pipeline.

>>> boards = build_dashboards()
>>> sorted(boards)
['drainwatch-alerts', 'drainwatch-pipeline', 'drainwatch-wallets']
>>> wallets = dashboard_expressions(boards["drainwatch-wallets"])
>>> any("drainwatch_wallet_balance" in e for e in wallets)
True
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARDS",
    "build_dashboards",
    "dashboard_expressions",
    "render_expression",
    "write_dashboards",
]

Json = dict[str, Any]

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
ANNOTATION_TAG = "drainwatch"
"""Every annotation ``drainwatch grafana push`` adds carries this tag; the dashboards show them."""

_WALLET = 'wallet_label=~"$wallet_label"'
_WIDTH = 24
_HEIGHT = 8


def _target(expr: str, legend: str, ref: str) -> Json:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _targets(queries: Sequence[tuple[str, str]]) -> list[Json]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def timeseries(
    title: str, queries: Sequence[tuple[str, str]], unit: str = "short", description: str = ""
) -> Json:
    """A time-series panel: ``queries`` are (PromQL, legend) pairs."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["last"]}},
        "targets": _targets(queries),
    }


def stat(
    title: str, queries: Sequence[tuple[str, str]], unit: str = "short", description: str = ""
) -> Json:
    """A single-number panel (the last value of each series)."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": _targets(queries),
    }


def _layout(panels: Sequence[Json], columns: int = 2) -> list[Json]:
    """Place panels left to right, ``columns`` per row, and number them."""
    width = _WIDTH // columns
    out = []
    for i, panel in enumerate(panels):
        row, col = divmod(i, columns)
        out.append(
            {
                **panel,
                "id": i + 1,
                "gridPos": {"h": _HEIGHT, "w": width, "x": col * width, "y": row * _HEIGHT},
            }
        )
    return out


def _variables(wallet_filter: bool) -> Json:
    variables: list[Json] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }
    ]
    if wallet_filter:
        variables.append(
            {
                "name": "wallet_label",
                "label": "Wallet",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {
                    "query": "label_values(drainwatch_wallet_transfers_total, wallet_label)",
                    "refId": "wallet_label",
                },
                "definition": "label_values(drainwatch_wallet_transfers_total, wallet_label)",
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "refresh": 2,
                "sort": 1,
                "hide": 0,
            }
        )
    return {"list": variables}


def _annotations() -> Json:
    return {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            },
            {
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "iconColor": "red",
                "name": "drainwatch alerts and freezes",
                "target": {
                    "type": "tags",
                    "tags": [ANNOTATION_TAG],
                    "matchAny": True,
                    "limit": 500,
                },
            },
        ]
    }


def dashboard(uid: str, title: str, panels: Sequence[Json], *, wallet_filter: bool = False) -> Json:
    """A whole dashboard (no ``id``: Grafana assigns one; the ``uid`` identifies it)."""
    return {
        "uid": uid,
        "title": title,
        "tags": ["drainwatch"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _variables(wallet_filter),
        "annotations": _annotations(),
        "panels": _layout(panels),
    }


def wallets_dashboard() -> Json:
    """Outflow velocity and balance per wallet label."""
    by = "chain, wallet_label, asset"
    return dashboard(
        "drainwatch-wallets",
        "drainwatch / wallets",
        [
            timeseries(
                "Outflow velocity per wallet (asset units per minute)",
                [
                    (
                        f"sum by ({by}) (rate(drainwatch_wallet_outflow_total{{{_WALLET}}}"
                        "[$__rate_interval])) * 60",
                        "{{wallet_label}} {{asset}}",
                    )
                ],
                description="What left each watched wallet, from the transfers the watchers "
                "published; a drain shows as a spike.",
            ),
            timeseries(
                "Balance per wallet (asset units)",
                [(f"drainwatch_wallet_balance{{{_WALLET}}}", "{{wallet_label}} {{asset}}")],
                description="Read from the chain at each wallet's latest transfer.",
            ),
            timeseries(
                "Outflow over 20 minutes as a share of the balance",
                [
                    (
                        f"sum by ({by}) (increase(drainwatch_wallet_outflow_total{{{_WALLET}}}"
                        f"[20m])) / on ({by}) (drainwatch_wallet_balance{{{_WALLET}}} > 0)",
                        "{{wallet_label}} {{asset}}",
                    )
                ],
                unit="percentunit",
                description="The fixed-rule view of velocity: a drain pushes it towards 1.",
            ),
            timeseries(
                "Transfers per minute by direction",
                [
                    (
                        "sum by (wallet_label, direction) "
                        f"(rate(drainwatch_wallet_transfers_total{{{_WALLET}}}"
                        "[$__rate_interval])) * 60",
                        "{{wallet_label}} {{direction}}",
                    )
                ],
            ),
        ],
        wallet_filter=True,
    )


def alerts_dashboard() -> Json:
    """Alerts, freeze orders and the kill switch; annotations mark each alert and freeze."""
    return dashboard(
        "drainwatch-alerts",
        "drainwatch / alerts and freezes",
        [
            stat(
                "Alerts in range by severity",
                [
                    (
                        "sum by (severity) (increase(drainwatch_alerts_total[$__range]))",
                        "{{severity}}",
                    )
                ],
            ),
            stat(
                "Freeze orders in range",
                [
                    (
                        "sum by (action) (increase(drainwatch_freeze_orders_total[$__range]))",
                        "{{action}}",
                    )
                ],
            ),
            timeseries(
                "Alerts per minute by detector and severity",
                [
                    (
                        "sum by (detector, severity) "
                        "(rate(drainwatch_alerts_total[$__rate_interval])) * 60",
                        "{{detector}} {{severity}}",
                    )
                ],
            ),
            timeseries(
                "Freeze orders (cumulative)",
                [("sum by (action) (drainwatch_freeze_orders_total)", "{{action}}")],
            ),
            stat(
                "Notifications in range by channel and outcome",
                [
                    (
                        "sum by (channel, outcome) "
                        "(increase(drainwatch_alert_deliveries_total[$__range]))",
                        "{{channel}} {{outcome}}",
                    )
                ],
                description="Pages and messages sent to Slack, PagerDuty, webhooks and email: "
                "delivered, failed (retried), undeliverable (reported, still retried).",
            ),
            timeseries(
                "Failed notifications per minute by channel",
                [
                    (
                        "sum by (channel) (rate(drainwatch_alert_deliveries_total"
                        '{outcome="failed"}[$__rate_interval])) * 60',
                        "{{channel}}",
                    )
                ],
            ),
            *killswitch_panels(),
        ],
    )


def killswitch_panels() -> list[Json]:
    """The kill switch's group of the alerts dashboard: orders, ``/v1/authorize``, hooks."""
    authorize = [
        (
            f"histogram_quantile({q}, sum by (le) "
            "(rate(drainwatch_killswitch_authorize_seconds_bucket[$__rate_interval])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]
    return [
        stat(
            "Kill switch: orders created in range",
            [
                (
                    "sum by (action) (increase(drainwatch_killswitch_orders_total[$__range]))",
                    "{{action}}",
                )
            ],
            description="Freeze and unfreeze orders the kill switch itself created (manual, "
            "automatic, freeze-all, approved unfreezes); repeats of a freeze in force are not "
            "counted.",
        ),
        stat(
            "Kill switch: authorize denials in range",
            [
                (
                    "sum(increase(drainwatch_killswitch_authorize_total"
                    '{allowed="false"}[$__range]))',
                    "denied",
                ),
                (
                    "sum(increase(drainwatch_killswitch_authorize_total"
                    '{allowed="true"}[$__range]))',
                    "allowed",
                ),
            ],
            description="POST /v1/authorize answers: a signer asked to send from a frozen "
            "wallet, an unknown one, or over a velocity budget.",
        ),
        timeseries(
            "Kill switch: authorize latency",
            authorize,
            unit="s",
            description="Time POST /v1/authorize took to decide; signers wait for it.",
        ),
        timeseries(
            "Kill switch: hook delivery latency p99 by target",
            [
                (
                    "histogram_quantile(0.99, sum by (le, target) "
                    "(rate(drainwatch_hook_delivery_seconds_bucket[$__rate_interval])))",
                    "{{target}}",
                )
            ],
            unit="s",
            description="From an order's hook delivery being enqueued to the wallet "
            "infrastructure acknowledging it, retries included.",
        ),
        stat(
            "Kill switch: hook escalations in range by target",
            [
                (
                    "sum by (target) (increase(drainwatch_hook_escalations_total[$__range]))",
                    "{{target}}",
                )
            ],
            description="Deliveries that kept failing and were escalated (they are still "
            "retried): see GET /v1/hooks.",
        ),
    ]


def pipeline_dashboard() -> Json:
    """Latency from block time to alert, throughput, per-event cost, lag, failures."""
    quantiles = [
        (
            f"histogram_quantile({q}, sum by (le, point) "
            "(rate(drainwatch_pipeline_latency_seconds_bucket[$__rate_interval])))",
            f"p{round(q * 100)} {{{{point}}}}",
        )
        for q in (0.5, 0.99)
    ]
    handle = [
        (
            f"histogram_quantile({q}, sum by (le, stage) "
            "(rate(drainwatch_stage_handle_seconds_bucket[$__rate_interval])))",
            f"p{round(q * 100)} {{{{stage}}}}",
        )
        for q in (0.5, 0.99)
    ]
    return dashboard(
        "drainwatch-pipeline",
        "drainwatch / pipeline health",
        [
            timeseries(
                "Pipeline latency: block time to detection and to the alerts stage",
                quantiles,
                unit="s",
                description="From the block time of the transfer that triggered an alert.",
            ),
            timeseries(
                "Events per second by stage",
                [
                    (
                        "sum by (stage) (rate(drainwatch_stage_messages_total[$__rate_interval]))",
                        "{{stage}}",
                    ),
                    (
                        "sum by (stage, topic) "
                        "(rate(drainwatch_stage_followed_messages_total[$__rate_interval]))",
                        "{{stage}} reads {{topic}} whole",
                    ),
                ],
                unit="ops",
                description="Each detector replica also reads the whole ledger and every "
                "replica's alerts (incident correlation): a replica whose alerts rate stays at "
                "0 while the others' moves is not correlating.",
            ),
            timeseries("Handler time per event", handle, unit="s"),
            timeseries(
                "Consumer lag by stage and topic (messages)",
                [
                    (
                        "sum by (stage, topic) (drainwatch_bus_consumer_lag_messages)",
                        "{{stage}} {{topic}}",
                    )
                ],
            ),
            timeseries(
                "Stage failures and dead-lettered messages",
                [
                    (
                        "sum by (stage) (increase(drainwatch_stage_failures_total[$__range]))",
                        "failures {{stage}}",
                    ),
                    (
                        "sum by (topic) (increase(drainwatch_deadletter_messages_total[$__range]))",
                        "dead-lettered {{topic}}",
                    ),
                ],
            ),
            timeseries(
                "Detector state: partitions taken over, snapshots saved",
                [
                    (
                        "sum by (source) (increase(drainwatch_detector_rebuilds_total[$__range]))",
                        "taken over from a {{source}}",
                    ),
                    (
                        "sum(increase(drainwatch_detector_snapshot_seconds_count[$__range]))",
                        "snapshots saved",
                    ),
                    (
                        "sum(drainwatch_detector_snapshot_seconds_sum)"
                        " / sum(drainwatch_detector_snapshot_seconds_count)",
                        "mean save time (s)",
                    ),
                ],
                description="A detector replica that takes a transfers partition over takes "
                "its state back from the partition's snapshot and replays what came after, or "
                "without a usable one replays the last rebuild_s (30 days): expect replays once "
                "per partition after a deploy of new detector code, snapshots otherwise "
                "(docs/operations.md, State snapshots).",
            ),
            timeseries(
                "Watcher lag behind the node (blocks)",
                [
                    (
                        "max by (chain) (drainwatch_watcher_head_block)"
                        " - max by (chain) (drainwatch_watcher_cursor_block)",
                        "{{chain}}",
                    )
                ],
                description="Newest block on the node minus the last block read; the chain's "
                "confirmations are part of it.",
            ),
            timeseries(
                "Blocks and transfers read per second",
                [
                    (
                        "sum by (chain) (rate(drainwatch_watcher_blocks_total[$__rate_interval]))",
                        "blocks {{chain}}",
                    ),
                    (
                        "sum by (chain, status) "
                        "(rate(drainwatch_watcher_transfers_total[$__rate_interval]))",
                        "transfers {{chain}} {{status}}",
                    ),
                ],
                unit="ops",
            ),
            timeseries(
                "Reorgs, RPC errors and failed polls in range",
                [
                    (_zero_when_absent(f"drainwatch_watcher_{name}_total"), f"{name} {{{{chain}}}}")
                    for name in ("reorgs", "rpc_errors", "poll_failures")
                ],
                description="Counted per chain; zero while none happened.",
            ),
            stat(
                "Processes up",
                [('sum by (job) (up{job=~"drainwatch.*"})', "{{job}}")],
                description="Scrape targets answering /metrics.",
            ),
        ],
    )


def _zero_when_absent(counter: str) -> str:
    """Increase of a counter per chain over the range, 0 for watched chains that never had one.

    >>> print(_zero_when_absent("x_total"))
    (sum by (chain) (increase(x_total[$__range])))
        or (sum by (chain) (drainwatch_watcher_head_block) * 0)
    """
    return (
        f"(sum by (chain) (increase({counter}[$__range])))"
        " or (sum by (chain) (drainwatch_watcher_head_block) * 0)"
    )


DASHBOARDS = ("drainwatch-wallets", "drainwatch-alerts", "drainwatch-pipeline")
"""The uids of the dashboards, in the order they are pushed."""


def build_dashboards() -> dict[str, Json]:
    """Every dashboard, by uid."""
    boards = [wallets_dashboard(), alerts_dashboard(), pipeline_dashboard()]
    return {b["uid"]: b for b in boards}


def dashboard_expressions(board: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels (template variables left in).

    >>> dashboard_expressions({"panels": [{"targets": [{"expr": "up"}, {"expr": "up"}]}]})
    ['up']
    """
    seen: list[str] = []
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr and expr not in seen:
                seen.append(expr)
    return seen


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows nest their panels


_VARIABLE = re.compile(r"\$(__\w+|\w+)|\$\{(\w+)\}")


def render_expression(expr: str, variables: Mapping[str, str]) -> str:
    """Substitute Grafana template variables (``$name``, ``${name}``) as Grafana would.

    Raises:
        KeyError: A variable that ``variables`` does not define.

    >>> render_expression('rate(x{w=~"$wallet_label"}[$__rate_interval])',
    ...                   {"wallet_label": ".*", "__rate_interval": "1m"})
    'rate(x{w=~".*"}[1m])'
    """

    def sub(match: re.Match[str]) -> str:
        return variables[match.group(1) or match.group(2)]

    return _VARIABLE.sub(sub, expr)


def dump(board: Mapping[str, Any]) -> str:
    """The checked-in form of a dashboard: sorted keys, two-space indent, final newline."""
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def write_dashboards(directory: Path) -> list[Path]:
    """Write every dashboard as ``<uid>.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, board in build_dashboards().items():
        path = directory / f"{uid}.json"
        path.write_text(dump(board), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover - the regeneration command
    for written in write_dashboards(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(written)
