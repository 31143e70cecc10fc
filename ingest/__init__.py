"""Chain watchers: read confirmed blocks and the mempool, publish the watched wallets' transfers,
retract what a reorg or a dropped transaction took back, keep a durable cursor.

The pieces: :class:`Watcher` (chain-agnostic loop, reorg check and retractions, at-least-once
cursor), :class:`PendingTracker` (pending → confirmed / dropped), :class:`CursorStore` (SQLite),
and per kind of chain a :class:`ChainSource` plus optionally a :class:`PendingSource`
(:class:`EvmSource` and :class:`EvmPending` over a failover :class:`RpcClient`). The watcher
knows nothing of the bus; the caller passes ``publish``::

    rpc = RpcClient(chain_cfg.rpc, chain="ethereum")
    source = EvmSource(rpc, "ethereum", cfg.wallets_on("ethereum"))
    watcher = Watcher(source, publish, CursorStore("cursors.sqlite3"), "ethereum",
                      confirmations=chain_cfg.confirmations, pending=EvmPending(source))
    watcher.run(stop_event, chain_cfg.poll_interval_s)
"""

from __future__ import annotations

from ingest.base import (
    BatchSource,
    BlockData,
    ChainSource,
    HashSource,
    PendingSource,
    PendingTracker,
    Publish,
    Watcher,
    next_range,
    retracted,
)
from ingest.bitcoin import BitcoinSource, bitcoin_watcher
from ingest.btc_rpc import BitcoinRpc
from ingest.cursor import Cursor, CursorStore
from ingest.errors import EndpointsUnreachableError, ReorgTooDeepError, RpcError, WatcherError
from ingest.evm import EvmSource, TokenInfo, TraceMode
from ingest.live import evm_watcher
from ingest.pending import EvmPending, PendingMode, follow
from ingest.rpc import Rpc, RpcCallError, RpcClient, Subscriber, Web3Rpc
from ingest.utxo import UtxoStore

__all__ = [
    "BatchSource",
    "BitcoinRpc",
    "BitcoinSource",
    "BlockData",
    "ChainSource",
    "Cursor",
    "CursorStore",
    "EndpointsUnreachableError",
    "EvmPending",
    "EvmSource",
    "HashSource",
    "PendingMode",
    "PendingSource",
    "PendingTracker",
    "Publish",
    "ReorgTooDeepError",
    "Rpc",
    "RpcCallError",
    "RpcClient",
    "RpcError",
    "Subscriber",
    "TokenInfo",
    "TraceMode",
    "UtxoStore",
    "Watcher",
    "WatcherError",
    "Web3Rpc",
    "bitcoin_watcher",
    "evm_watcher",
    "follow",
    "next_range",
    "retracted",
]
