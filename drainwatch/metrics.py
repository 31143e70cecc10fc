"""Pipeline-level Prometheus metrics shared by the stage loop and the wiring, and their server.

Every metric is in base units (seconds) or, for wallet amounts, in whole units of the asset
named by the ``asset`` label (ETH, not wei: a graph wants ETH, and float64 could not hold wei
exactly anyway). Counters end in ``_total``. No metric carries a wallet address as a label:
wallets appear by their configured ``wallet_label`` only, so the label set stays as small as the
wallet list and an address never leaks into a monitoring system.

Each process serves ``/metrics`` and ``/healthz`` with :func:`serve_metrics`:

>>> server = serve_metrics("127.0.0.1", 0, health=lambda: {"detect": True})
>>> import urllib.request
>>> with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as reply:
...     reply.status, reply.read()
(200, b'{"status":"ok","checks":{"detect":true}}')
>>> b"drainwatch_pipeline_latency_seconds_bucket" in urllib.request.urlopen(
...     f"http://127.0.0.1:{server.port}/metrics").read()
True
>>> server.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any, Final, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from drainwatch.bus.base import TopicPartition
from drainwatch.config import WalletConfig, entry_or_first, wallets_by_key
from drainwatch.events import Alert, Direction, FreezeOrder, Transfer, wallet_key

__all__ = [
    "ALERTS_TOTAL",
    "ALERT_DELIVERIES_TOTAL",
    "CONSUMER_LAG_MESSAGES",
    "DELIVERY_OUTCOMES",
    "FREEZE_ORDERS_TOTAL",
    "LEDGER_LATEST_APPROVAL",
    "PIPELINE_LATENCY_SECONDS",
    "STAGE_HANDLE_SECONDS",
    "UNLABELLED",
    "WALLET_BALANCE",
    "WALLET_OUTFLOW_TOTAL",
    "WALLET_TRANSFERS_TOTAL",
    "HealthCheck",
    "MetricsServer",
    "SupportsLag",
    "WalletMetrics",
    "observe_outputs",
    "record_lag",
    "serve_metrics",
]

log = logging.getLogger(__name__)

UNLABELLED = "unlabelled"
"""The ``wallet_label`` of a watched wallet that has no label in the config."""

STAGE_HANDLE_SECONDS = Histogram(
    "drainwatch_stage_handle_seconds",
    "Time a consuming stage's handler spent on one event (every event with an output, one in "
    "eight of the others).",
    ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PIPELINE_LATENCY_SECONDS = Histogram(
    "drainwatch_pipeline_latency_seconds",
    "From the block time of the transfer that triggered an alert to a point in the pipeline: "
    "point=detected (the detector decided) or point=alert_stage (the alerts stage got it).",
    ["point"],
    buckets=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
SNAPSHOT_SECONDS = Histogram(
    "drainwatch_detector_snapshot_seconds",
    "Time a detector spent saving the state snapshot of one transfers partition (the stage "
    "waits meanwhile).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SNAPSHOT_FAILURES_TOTAL = Counter(
    "drainwatch_detector_snapshot_failures_total",
    "State snapshots a detector could not save (a full disk, say): it goes on judging, and the "
    "next holder of the partition replays more.",
)
REBUILDS_TOTAL = Counter(
    "drainwatch_detector_rebuilds_total",
    "Transfers partitions a detector took over, by how it rebuilt their state: source=snapshot "
    "(taken back, then the transfers after it replayed) or source=replay (the last rebuild_s "
    "of the topic replayed: no snapshot it could use).",
    ["source"],
)
ALERTS_TOTAL = Counter(
    "drainwatch_alerts_total",
    "Alerts the detectors published.",
    ["severity", "detector"],
)
ALERT_DELIVERIES_TOTAL = Counter(
    "drainwatch_alert_deliveries",
    "Notification attempts of the alerts stage by channel name and outcome: delivered, failed "
    "(retried), undeliverable (reported; still retried at the longest interval).",
    ["channel", "outcome"],
)
DELIVERY_OUTCOMES: Final = ("delivered", "failed", "undeliverable")

FREEZE_ORDERS_TOTAL = Counter(
    "drainwatch_freeze_orders_total",
    "Freeze orders the alerts stage published on the freezes topic.",
    ["action"],
)
LEDGER_LATEST_APPROVAL = Gauge(
    "drainwatch_ledger_latest_approval_timestamp_seconds",
    "Time of the latest approved withdrawal a detector has read from the ledger topic (no "
    "series before the first). With a ledger feed a payment no approval explains freezes its "
    "wallet, so a feed that stops freezes every hot wallet at its next payment.",
)
LEARN_UNTIL = Gauge(
    "drainwatch_detect_learn_until_timestamp_seconds",
    "[detection] learn_until of a detector (no series when unset): transfers before it are "
    "learned from and judged for nothing, so while it is ahead of the clock nothing is alerted "
    "or frozen.",
)
CONSUMER_LAG_MESSAGES = Gauge(
    "drainwatch_bus_consumer_lag_messages",
    "Messages on a partition that a stage's consumer has not read yet.",
    ["stage", "topic", "partition"],
)
WALLET_OUTFLOW_TOTAL = Counter(
    "drainwatch_wallet_outflow_total",
    "Outflow of a watched wallet published by the watchers, in whole units of `asset`.",
    ["chain", "wallet_label", "asset"],
)
WALLET_BALANCE = Gauge(
    "drainwatch_wallet_balance",
    "Balance of a watched wallet read from the chain at its latest transfer, in units of `asset`.",
    ["chain", "wallet_label", "asset"],
)
WALLET_TRANSFERS_TOTAL = Counter(
    "drainwatch_wallet_transfers_total",
    "Transfers of watched wallets published by the watchers.",
    ["chain", "wallet_label", "direction"],
)

# The point labels of PIPELINE_LATENCY_SECONDS.
DETECTED = "detected"
ALERT_STAGE = "alert_stage"

for _point in (DETECTED, ALERT_STAGE):
    PIPELINE_LATENCY_SECONDS.labels(point=_point)
for _action in ("freeze", "unfreeze"):
    FREEZE_ORDERS_TOTAL.labels(action=_action)


def _seconds_between(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def observe_outputs(events: Iterable[object]) -> None:
    """Count what a handler published: alerts by severity and detector, freeze orders.

    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t.replace(second=2), chain="nem", wallet="N1",
    ...           severity=Severity.CRITICAL, detector="doctest", freeze=True, summary="s")
    >>> before = ALERTS_TOTAL.labels(severity="critical", detector="doctest")._value.get()
    >>> observe_outputs([a])
    >>> ALERTS_TOTAL.labels(severity="critical", detector="doctest")._value.get() - before
    1.0
    """
    for event in events:
        if isinstance(event, Alert):
            ALERTS_TOTAL.labels(severity=event.severity.value, detector=event.detector).inc()
            PIPELINE_LATENCY_SECONDS.labels(point=DETECTED).observe(
                _seconds_between(event.time, event.detected_at)
            )
        elif isinstance(event, FreezeOrder):
            FREEZE_ORDERS_TOTAL.labels(action=event.action.value).inc()


def observe_input(event: object, now: datetime | None = None) -> None:
    """Record the pipeline latency of an alert as a consuming stage receives it."""
    if isinstance(event, Alert):
        now = now or datetime.now(UTC)
        PIPELINE_LATENCY_SECONDS.labels(point=ALERT_STAGE).observe(
            _seconds_between(event.time, now)
        )


@runtime_checkable
class SupportsLag(Protocol):
    """A consumer that can say how far behind it is (both buses' consumers can)."""

    def lag(self) -> dict[TopicPartition, int]:
        """Unread messages per assigned partition (partitions with no known end are left out)."""


def record_lag(stage: str, lag: Mapping[TopicPartition, int], prefix: str = "") -> None:
    """Set the lag gauge of each partition (topic names without the deployment prefix).

    >>> record_lag("doctest", {TopicPartition("p-drainwatch.transfers.v1", 2): 7}, prefix="p-")
    >>> CONSUMER_LAG_MESSAGES.labels(
    ...     stage="doctest", topic="drainwatch.transfers.v1", partition="2")._value.get()
    7.0
    """
    for tp, behind in lag.items():
        topic = tp.topic[len(prefix) :] if prefix and tp.topic.startswith(prefix) else tp.topic
        CONSUMER_LAG_MESSAGES.labels(stage=stage, topic=topic, partition=str(tp.partition)).set(
            max(0, behind)
        )


class WalletMetrics:
    """Per-wallet outflow, balance and transfer counts, labelled by the config's wallet labels.

    Args:
        wallets: The watched wallets; their labels (never their addresses) become metric labels.

    >>> from drainwatch.config import loads
    >>> cfg = loads('[[wallets]]\\nchain = "anvil"\\naddress = "0xAB"\\nlabel = "hot-1"\\n')
    >>> t = Transfer.create(chain="anvil", wallet="0xab", direction="out", counterparty="0xcd",
    ...     asset="ETH", amount=3 * 10**18, decimals=18, tx_hash="0x1", position=0,
    ...     time=datetime(2024, 1, 1, tzinfo=UTC), balance_after=7 * 10**18)
    >>> WalletMetrics(cfg.wallets).observe([t])
    >>> WALLET_BALANCE.labels(chain="anvil", wallet_label="hot-1", asset="ETH")._value.get()
    7.0
    >>> WALLET_OUTFLOW_TOTAL.labels(chain="anvil", wallet_label="hot-1", asset="ETH")._value.get()
    3.0
    """

    def __init__(self, wallets: Sequence[WalletConfig]) -> None:
        self.wallets = tuple(wallets)
        self._entries = wallets_by_key(self.wallets)
        for w in self.wallets:
            label = w.label or UNLABELLED
            for direction in Direction:
                WALLET_TRANSFERS_TOTAL.labels(
                    chain=w.chain, wallet_label=label, direction=direction.value
                )

    def label(self, chain: str, wallet: str, asset: str | None = None) -> str:
        """The metric label of a wallet (of its entry for ``asset`` when it is listed per
        asset)."""
        entry = entry_or_first(self._entries.get(wallet_key(chain, wallet), ()), asset)
        return (entry.label if entry is not None else None) or UNLABELLED

    def observe(self, transfers: Sequence[Transfer]) -> None:
        """Account for transfers the watchers just published."""
        for t in transfers:
            label = self.label(t.chain, t.wallet, t.asset)
            WALLET_TRANSFERS_TOTAL.labels(
                chain=t.chain, wallet_label=label, direction=t.direction.value
            ).inc()
            if t.direction is Direction.OUT:
                WALLET_OUTFLOW_TOTAL.labels(chain=t.chain, wallet_label=label, asset=t.asset).inc(
                    float(t.value)
                )
            if t.balance_after is not None:
                balance = float(t.balance_after) / 10**t.decimals
                WALLET_BALANCE.labels(chain=t.chain, wallet_label=label, asset=t.asset).set(balance)


HealthCheck = Callable[[], Mapping[str, bool]]
"""Named checks (e.g. one per stage thread); the process is healthy when all are true."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (JSON) on a daemon thread."""

    def __init__(self, host: str, port: int, health: HealthCheck | None = None) -> None:
        self.health = health
        metrics_app = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                checks = dict(self.health()) if self.health is not None else {}
                ok = all(checks.values())
                body = orjson.dumps({"status": "ok" if ok else "failing", "checks": checks})
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"metrics-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL (``/metrics`` and ``/healthz`` hang off it)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(host: str, port: int, health: HealthCheck | None = None) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` (0: any free port) in a daemon thread.

    ``/healthz`` answers 200 when every check of ``health`` is true and 503 otherwise; any other
    path gets the metrics of this process.
    """
    server = MetricsServer(host, port, health)
    log.info("metrics on %s/metrics", server.url)
    return server
