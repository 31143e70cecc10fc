"""Prometheus metrics of the chain watchers (labels: chain, endpoint, and a small fixed enum).

Wallet addresses are never labels: they are unbounded and identify customers.

>>> HEAD_BLOCK.labels(chain="doc").set(7)
>>> REGISTRY.get_sample_value("drainwatch_watcher_head_block", {"chain": "doc"})
7.0
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

__all__ = [
    "BLOCKS",
    "CURSOR_BLOCK",
    "HEAD_BLOCK",
    "POLL_FAILURES",
    "REGISTRY",
    "REORGS",
    "RPC_ERRORS",
    "TRANSFERS",
]

HEAD_BLOCK = Gauge("drainwatch_watcher_head_block", "Newest block number on the node", ["chain"])
CURSOR_BLOCK = Gauge(
    "drainwatch_watcher_cursor_block", "Last block read, published and stored", ["chain"]
)
BLOCKS = Counter("drainwatch_watcher_blocks_total", "Blocks read and committed", ["chain"])
TRANSFERS = Counter(
    "drainwatch_watcher_transfers_total",
    "Transfers published, by status (pending, confirmed, retracted)",
    ["chain", "status"],
)
REORGS = Counter("drainwatch_watcher_reorgs_total", "Reorganisations rewound over", ["chain"])
RPC_ERRORS = Counter(
    "drainwatch_watcher_rpc_errors_total",
    "Failed node calls, by endpoint and kind (timeout, connect, http_429, http_5xx, "
    "bad_json, rpc_error, ws)",
    ["chain", "endpoint", "kind"],
)
POLL_FAILURES = Counter(
    "drainwatch_watcher_poll_failures_total",
    "Polls that failed after the source's own retries (the cursor stayed put)",
    ["chain"],
)
