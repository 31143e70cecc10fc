"""Time the backtest on N generated transfers and print transfers per second.

Usage: ``.venv/bin/python benchmarks/bench_backtest.py [-n 200000] [--wallets 2] [--ledger]
[--workers N] [--incident]``

``--incident`` drains every wallet within minutes at 90% of the file (the Phemex pattern): the
split run hands over to one process for the round the incident forms in and the rest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

# The generator lives with the tests; run from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import run_backtest
from detectors.traffic import (
    DrainSpec,
    HotWalletSpec,
    config_toml,
    generate_traffic,
    write_jsonl,
)
from drainwatch.config import loads

START = datetime(2024, 1, 1, tzinfo=UTC)


def specs(count: int, drain_at_s: float | None = None) -> list[HotWalletSpec]:
    """``count`` hot wallets, alternating an 18-decimal EVM asset and a 6-decimal one."""
    out = []
    for i in range(count):
        evm = i % 2 == 0
        out.append(
            HotWalletSpec(
                chain="ethereum" if evm else "nem",
                asset="ETH" if evm else "XEM",
                address=f"0x{i:040x}" if evm else f"NHOT{i:036d}",
                cold_address=f"0x{i + 1000:040x}" if evm else f"NCOLD{i:035d}",
                label=f"hot-{i}",
                balance=Decimal("20000") if evm else Decimal("500000000"),
                decimals=18 if evm else 6,
                address_prefix="" if evm else "N",
                drains=()
                if drain_at_s is None
                else (DrainSpec(drain_at_s + 120 * i, "burst", 0.2, 4, 60),),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--transfers", type=int, default=200_000)
    parser.add_argument("--wallets", type=int, default=2)
    parser.add_argument("--ledger", action="store_true", help="also replay the ledger")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=None, help="backtest processes (default: one per core)"
    )
    parser.add_argument(
        "--incident", action="store_true", help="drain every wallet at 90%% of the file"
    )
    args = parser.parse_args()

    # About 1,400 lines per wallet-day with the default rates; generate a little more, then cut.
    days = max(1.0, 1.1 * args.transfers / (1400 * args.wallets))
    wallets = specs(args.wallets, 0.9 * days / 1.1 * 86400 if args.incident else None)
    traffic = generate_traffic(wallets, START, days=days, seed=1, panic_day=None)
    rows = traffic.transfers[: args.transfers]
    config = loads(config_toml(wallets))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        transfers = write_jsonl(directory / "transfers.jsonl", rows)
        ledger = write_jsonl(directory / "ledger.jsonl", traffic.ledger) if args.ledger else None
        best = 0.0
        for _ in range(args.repeat):
            started = time.perf_counter()
            summary = run_backtest(
                config, transfers, ledger, directory / "alerts.jsonl", workers=args.workers
            )
            elapsed = time.perf_counter() - started
            best = max(best, summary.transfers_read / elapsed)
        print(
            f"{summary.transfers_read} transfers, {len(wallets)} wallets, "
            f"ledger={'yes' if ledger else 'no'}, incident={'yes' if args.incident else 'no'}: "
            f"{summary.alerts} alerts, "
            f"best of {args.repeat}: {best:,.0f} transfers/s"
        )


if __name__ == "__main__":
    main()
