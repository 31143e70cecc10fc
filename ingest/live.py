"""Assemble a live EVM watcher from its ``[chains.*]`` table: failover RPC, source, mempool,
WebSocket wake-ups."""

from __future__ import annotations

from collections.abc import Sequence

from drainwatch.config import ChainConfig, WalletConfig
from ingest.base import Publish, Watcher
from ingest.cursor import CursorStore
from ingest.evm import EvmSource
from ingest.pending import EvmPending, follow
from ingest.rpc import RpcClient

__all__ = ["evm_watcher"]


def evm_watcher(
    name: str,
    chain: ChainConfig,
    wallets: Sequence[WalletConfig],
    publish: Publish,
    cursors: CursorStore,
) -> Watcher:
    """The watcher of EVM chain ``name``; with ``ws`` endpoints, a subscriber thread (a daemon)
    wakes it on every new head and pending transaction.

    >>> cfg = ChainConfig(kind="evm", rpc=("http://127.0.0.1:1",), pending="off")
    >>> w = evm_watcher("x", cfg, [], print, CursorStore(":memory:"))
    >>> w.pending is None, w.max_batch
    (True, 100)
    """
    rpc = RpcClient(chain.rpc, chain=name, timeout_s=chain.rpc_timeout_s)
    source = EvmSource(
        rpc, name, wallets, chain.native_symbol, chain.native_decimals, traces=chain.traces
    )
    pending = None if chain.pending == "off" else EvmPending(source, chain.pending)
    watcher = Watcher(
        source,
        publish,
        cursors,
        name,
        confirmations=chain.confirmations,
        start_block=chain.start_block,
        max_batch=chain.batch_blocks,
        pending=pending,
    )
    if chain.ws:
        follow(chain.ws, watcher.wake, pending, name)
    return watcher
