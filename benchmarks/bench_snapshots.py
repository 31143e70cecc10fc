"""What a detector's state snapshots cost, and what a restart without one costs instead.

Usage: ``.venv/bin/python benchmarks/bench_snapshots.py [--wallets 4] [--days 30]``

``--wallets`` Ethereum hot wallets with the default habits (about 1,400 transfers a wallet-day)
are judged for ``--days``; then the state of all of them (one transfers partition's worth) is
saved as the detector stage saves it (``held_state``, pickled, written and fsynced), loaded and
taken back into a fresh engine. For comparison, the fallback a detector takes without a usable
snapshot: replaying the last 30 days (``[detection] rebuild_s``, or all there is) into a fresh
engine, without the Kafka read.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import DetectionEngine, SnapshotStore, fingerprint
from detectors.backtest import watched_moves
from detectors.traffic import config_toml, evm_hot_wallets, generate_traffic, write_jsonl
from drainwatch.config import loads

START = datetime(2030, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wallets", type=int, default=4)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()

    wallets = evm_hot_wallets(args.wallets)
    traffic = generate_traffic(wallets, START, days=args.days, seed=3)
    config = loads(config_toml(wallets))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = write_jsonl(directory / "transfers.jsonl", traffic.transfers)
        engine = DetectionEngine(config)
        moves = [(when, m) for when, found in watched_moves(config, path) for m in found]
        for _, move in moves:
            engine.process(move, at_event_time=True)

        store = SnapshotStore(directory / "snapshots")
        mark = fingerprint(config)
        keys = {w.key for w in config.wallets}
        began = time.perf_counter()
        size = store.save("transfers", 0, len(moves), None, mark, engine.held_state(keys))
        saved_s = time.perf_counter() - began
        began = time.perf_counter()
        snapshot = store.load("transfers", 0, mark)
        assert snapshot is not None
        DetectionEngine(config).restore(snapshot.state)
        restored_s = time.perf_counter() - began

        last = moves[-1][0]
        week = [m for when, m in moves if when >= last - 30 * 86400]
        began = time.perf_counter()
        DetectionEngine(config).replay(week)
        replay_s = time.perf_counter() - began

    print(
        f"{args.wallets} wallets, {args.days:g} days, {len(moves):,} transfers judged:\n"
        f"  snapshot: {size / 1e6:.1f} MB ({size / 1e6 / args.wallets:.2f} MB a wallet), "
        f"saved in {saved_s * 1000:.0f} ms, taken back in {restored_s * 1000:.0f} ms\n"
        f"  without it: 30 days ({len(week):,} transfers) replayed in {replay_s:.2f} s "
        f"({len(week) / replay_s:,.0f}/s), before the Kafka read"
    )


if __name__ == "__main__":
    main()
