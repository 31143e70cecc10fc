"""Benchmark the EVM watcher against a real anvil node.

1. Backfill: a chain of a few thousand blocks carrying a few thousand watched-wallet transfers
   (native and ERC-20), read from block 0 with batched requests; blocks/s and transfers/s, with
   tracing off and on (``debug_traceBlockByNumber`` for every block).
2. Mempool to bus: the time from sending a transaction to the node (``--no-mining``: it stays
   in the mempool) until its pending transfer is durable on the embedded bus; p50 and p99, with
   the WebSocket subscription waking the watcher (``txpool`` and ``ws`` pending modes).

Usage: ``.venv/bin/python benchmarks/bench_ingest.py [--transfers 3000] [--empty-blocks 3000]
[--samples 200]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drainwatch.bus import EmbeddedBus
from drainwatch.config import WalletConfig
from drainwatch.events import TRANSFERS, Transfer, TransferStatus
from drainwatch.stage import default_topics
from ingest import CursorStore, EvmPending, EvmSource, RpcClient, TraceMode, Watcher, follow
from tests.harness.services import AnvilService, json_rpc
from tests.ingest.contracts import TOKEN_INIT, transfer_calldata

CHAIN = "bench"


def batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    import httpx

    replies = httpx.post(url, json=body, timeout=60).json()
    errors = [r["error"] for r in replies if "error" in r]
    if errors:
        print("send errors:", len(errors), errors[0])
    return [r.get("result") for r in sorted(replies, key=lambda r: r["id"])]


def build_chain(node: AnvilService, transfers: int, empty_blocks: int, per_block: int) -> int:
    """Mine ``transfers`` watched transfers (half native, half token) in blocks of ``per_block``,
    with empty blocks in between; return how many watched transfers the chain holds."""
    accounts = node.rpc("eth_accounts")
    hot, deployer, others = accounts[0], accounts[9], accounts[1:9]
    tx = node.rpc("eth_sendTransaction", [{"from": deployer, "data": TOKEN_INIT}])
    node.rpc("evm_mine")
    token = node.wait_for_receipt(tx)["contractAddress"]
    node.rpc(
        "eth_sendTransaction",
        [{"from": deployer, "to": token, "data": transfer_calldata(hot, 10**27)}],
    )
    node.rpc("evm_mine")
    rounds = max(1, transfers // per_block)
    gap = empty_blocks // rounds
    sent = 0
    nonce = int(node.rpc("eth_getTransactionCount", [hot, "latest"]), 16)
    for r in range(rounds):
        calls = []
        for i in range(per_block):
            to = others[(r + i) % len(others)]
            # explicit nonces: anvil handles a batch concurrently and would race on them
            tx = {"from": hot, "nonce": hex(nonce), "gas": hex(60_000)}
            nonce += 1
            if i % 2:
                calls.append(("eth_sendTransaction", [{**tx, "to": to, "value": hex(i + 1)}]))
            else:
                data = transfer_calldata(to, i + 1)
                calls.append(("eth_sendTransaction", [{**tx, "to": token, "data": data}]))
        batch(node.url, calls)
        node.rpc("evm_mine")
        if gap:
            node.rpc("anvil_mine", [hex(gap)])
        sent += per_block
    return sent + 1  # the token funding transfer


def backfill(
    node: AnvilService, hot: str, traces: TraceMode, max_batch: int
) -> tuple[float, int, int]:
    source = EvmSource(
        RpcClient([node.url], chain=CHAIN, timeout_s=60),
        CHAIN,
        [WalletConfig(chain=CHAIN, address=hot)],
        traces=traces,
    )
    count = 0

    def publish(transfers: Sequence[Transfer]) -> None:
        nonlocal count
        count += len(transfers)

    watcher = Watcher(
        source,
        publish,
        CursorStore(":memory:"),
        CHAIN,
        confirmations=0,
        start_block=0,
        max_batch=max_batch,
    )
    begin = time.perf_counter()
    blocks = 0
    while read := watcher.poll_once():
        blocks += read
    return time.perf_counter() - begin, blocks, count


def latency(mode: str, samples: int, workdir: Path) -> list[float]:
    node = AnvilService("--no-mining").start()
    try:
        hot, alice = node.rpc("eth_accounts")[:2]
        bus = EmbeddedBus(str(workdir / f"bus-{mode}.sqlite3"), default_partitions=1)
        bus.ensure_topics(default_topics(partitions=1))
        producer = bus.producer()
        on_bus: dict[str, float] = {}

        def publish(transfers: Sequence[Transfer]) -> None:
            for t in transfers:
                producer.send(TRANSFERS, t.key, t.to_json(), int(t.time.timestamp() * 1000))
            producer.flush()
            now = time.perf_counter()
            for t in transfers:
                if t.status is TransferStatus.PENDING:
                    on_bus.setdefault(t.tx_hash, now)

        source = EvmSource(
            RpcClient([node.url], chain=CHAIN),
            CHAIN,
            [WalletConfig(chain=CHAIN, address=hot)],
            traces="off",
        )
        pending = EvmPending(source, mode)  # type: ignore[arg-type]
        watcher = Watcher(
            source, publish, CursorStore(":memory:"), CHAIN, confirmations=0, pending=pending
        )
        sub = follow([node.ws_url], watcher.wake, pending, CHAIN)
        sub.connected.wait(10)
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop, 5.0), daemon=True)
        thread.start()
        time.sleep(0.5)
        sent_at: dict[str, float] = {}
        for n in range(samples):
            begin = time.perf_counter()
            tx = json_rpc(
                node.url, "eth_sendTransaction", [{"from": hot, "to": alice, "value": hex(n + 1)}]
            )
            sent_at[tx] = begin
            deadline = time.monotonic() + 10
            while tx not in on_bus and time.monotonic() < deadline:
                time.sleep(0.0005)
            if n % 50 == 49:
                node.rpc("evm_mine")  # keep the pool small, as a real one is for one wallet
        stop.set()
        sub.stop()
        thread.join(10)
        bus.close()
        return [on_bus[tx] - t0 for tx, t0 in sent_at.items() if tx in on_bus]
    finally:
        node.cleanup()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=3000)
    parser.add_argument("--empty-blocks", type=int, default=3000)
    parser.add_argument("--per-block", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = AnvilService("--no-mining", state_interval=None).start()
        try:
            t0 = time.perf_counter()
            expected = build_chain(node, args.transfers, args.empty_blocks, args.per_block)
            head = node.block_number()
            print(
                f"chain: {head + 1} blocks, {expected} watched transfers "
                f"(built in {time.perf_counter() - t0:.1f} s)"
            )
            hot = node.rpc("eth_accounts")[0]
            for traces in ("off", "debug"):
                seconds, blocks, count = backfill(node, hot, traces, args.max_batch)
                assert count == expected, (count, expected)
                print(
                    f"backfill traces={traces:5}: {blocks} blocks, {count} transfers in "
                    f"{seconds:.2f} s = {blocks / seconds:,.0f} blocks/s, "
                    f"{count / seconds:,.0f} transfers/s"
                )
        finally:
            node.cleanup()
        for mode in ("txpool", "ws"):
            got = latency(mode, args.samples, Path(tmp))
            print(
                f"mempool -> bus ({mode} + WebSocket wake-up), {len(got)}/{args.samples} seen: "
                f"p50 {statistics.median(got) * 1000:.1f} ms, p99 {pct(got, 0.99) * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()
