"""Chain watchers: read confirmed blocks, publish the watched wallets' transfers, keep a cursor.

The pieces: :class:`Watcher` (chain-agnostic loop, reorg check, at-least-once cursor),
:class:`CursorStore` (SQLite), and one :class:`ChainSource` per kind of chain
(:class:`EvmSource` so far). The watcher knows nothing of the bus; the caller passes ``publish``::

    w3 = connect_evm(chain_cfg.rpc)
    source = EvmSource(w3, "ethereum", cfg.wallets_on("ethereum"))
    watcher = Watcher(source, publish, CursorStore("cursors.sqlite3"), "ethereum",
                      confirmations=chain_cfg.confirmations)
    watcher.run(stop_event, chain_cfg.poll_interval_s)
"""

from __future__ import annotations

from ingest.base import BlockData, ChainSource, Publish, Watcher, next_range
from ingest.cursor import Cursor, CursorStore
from ingest.errors import EndpointsUnreachableError, ReorgTooDeepError, RpcError, WatcherError
from ingest.evm import EvmSource, connect_evm

__all__ = [
    "BlockData",
    "ChainSource",
    "Cursor",
    "CursorStore",
    "EndpointsUnreachableError",
    "EvmSource",
    "Publish",
    "ReorgTooDeepError",
    "RpcError",
    "Watcher",
    "WatcherError",
    "connect_evm",
    "next_range",
]
