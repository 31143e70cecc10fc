"""Memory per watched wallet: the detection engine's state after days of generated traffic.

Usage: ``.venv/bin/python benchmarks/bench_memory.py [--wallets 40] [--days 3]``

Each wallet gets ``--days`` of ordinary traffic (about 1,400 transfers a day: customer withdrawals
and deposits, sweeps, a market maker, whales). The engine's retained memory is measured with
tracemalloc after every day, so the growth per day (destinations remembered as known) shows
apart from the steady windows.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import DetectionEngine
from detectors.move import Move
from detectors.traffic import config_toml, evm_hot_wallets, generate_traffic
from drainwatch.config import loads
from drainwatch.events import Direction

START = datetime(2024, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wallets", type=int, default=40)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    wallets = evm_hot_wallets(args.wallets)
    config = loads(config_toml(wallets))
    watched = {w.address for w in config.wallets}
    traffic = generate_traffic(wallets, START, days=args.days, seed=3)
    tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    engine = DetectionEngine(config)
    day_end = START + timedelta(days=1)
    count = 0
    for row in traffic.transfers:
        ts = datetime.fromisoformat(row["ts"])
        while ts >= day_end:
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            print(
                f"after {(day_end - START).days} day(s), {count:,} transfers: "
                f"{used / args.wallets / 1024:,.0f} KiB per wallet"
            )
            day_end += timedelta(days=1)
        whole, _, frac = row["amount"].partition(".")
        for wallet, direction, other in (
            (row["from"], Direction.OUT, row["to"]),
            (row["to"], Direction.IN, row["from"]),
        ):
            if wallet in watched:
                engine.process(
                    Move(
                        "ethereum",
                        wallet,
                        direction,
                        other,
                        "ETH",
                        int(whole + frac),
                        len(frac),
                        row["tx_hash"],
                        ts.timestamp(),
                    )
                )
                count += 1
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    print(
        f"after {args.days} day(s), {count:,} transfers: "
        f"{used / args.wallets / 1024:,.0f} KiB per wallet ({args.wallets} wallets)"
    )


if __name__ == "__main__":
    main()
