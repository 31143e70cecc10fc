"""Machine instructions per backtest line, counted by valgrind's callgrind: a number that repeats.

Usage: ``.venv/bin/python benchmarks/bench_instructions.py [-n 60000] [--workers 2] [--ledger]
[--repo PATH]``

Wall-clock throughput on a shared two-core VM swings by 15% or more within the hour, which hides
a change of a few percent; an instruction count does not move with the neighbours' load. The
lines are the traffic of ``bench_backtest.py`` (two hot wallets and their cold wallets), judged by
the default detectors, in one process unless ``--workers`` splits them. Then each process is
counted: the parent, and each worker, whose count includes what the parent did before starting
it (callgrind's counts carry over a fork), so the largest is the split run's critical path.
``--ledger`` adds the ledger's approvals. Start-up (interpreter, imports, config, forking) is
taken off by also counting a one-line file, so what is printed is the cost of a line of the file.
``--repo`` counts another checkout of drainwatch (an older commit, say) on the same lines, with
this one's virtual environment: run it once for each side of a change.

Needs ``valgrind`` (Debian's package). Python's hash seed is fixed and each side is run once
before it is counted, so that its bytecode is compiled and cached, not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backtest import START, specs

from detectors.traffic import config_toml, generate_traffic, write_jsonl

_COLLECTED = re.compile(rb"==(\d+)== Collected : (\d+)")

_RUN = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from drainwatch.config import load
from detectors.backtest import run_backtest
run_backtest(
    load(Path({config!r})), {transfers!r}, {ledger!r}, {alerts!r}, workers={workers}
)
"""


def instructions(  # noqa: PLR0917
    repo: Path, config: Path, transfers: Path, ledger: Path | None, alerts: Path, workers: int
) -> list[int]:
    """Instructions callgrind counts for one backtest of ``transfers``: one count per process,
    the parent's first, then the workers' in the order they were started."""
    code = _RUN.format(
        repo=str(repo),
        config=str(config),
        transfers=str(transfers),
        ledger=None if ledger is None else str(ledger),
        alerts=str(alerts),
        workers=workers,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"
    # Once outside valgrind, so that the bytecode is compiled and cached, not counted.
    subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], check=True, env=env, cwd=repo, capture_output=True
    )
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    done = subprocess.run(  # noqa: S603 - valgrind on our own interpreter and code
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--trace-children=yes",
            sys.executable,
            "-c",
            code,
        ],
        check=True,
        env=env,
        cwd=repo,
        capture_output=True,
    )
    found = sorted((int(pid), int(count)) for pid, count in _COLLECTED.findall(done.stderr))
    if len(found) != (1 if workers == 1 else 1 + workers):
        raise SystemExit("callgrind printed no instruction count:\n" + done.stderr.decode())
    return [count for _, count in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--transfers", type=int, default=60_000)
    parser.add_argument("--workers", type=int, default=1, help="backtest processes (default 1)")
    parser.add_argument("--ledger", action="store_true", help="also replay the ledger")
    parser.add_argument(
        "--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to count"
    )
    args = parser.parse_args()
    days = max(1.0, 1.1 * args.transfers / (1400 * 2))
    wallets = specs(2)
    traffic = generate_traffic(wallets, START, days=days, seed=1, panic_day=None)
    rows = traffic.transfers[: args.transfers]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = directory / "drainwatch.toml"
        config.write_text(config_toml(wallets))
        full = write_jsonl(directory / "transfers.jsonl", rows)
        one = write_jsonl(directory / "one.jsonl", rows[:1])
        # The approvals due by the last line; the one-line run gets an empty ledger, so that
        # reading approvals counts as the lines' cost, not as start-up.
        ledger, empty = (
            (
                write_jsonl(
                    directory / "ledger.jsonl",
                    [a for a in traffic.ledger if a["ts"] <= rows[-1]["ts"]],
                ),
                write_jsonl(directory / "empty.jsonl", []),
            )
            if args.ledger
            else (None, None)
        )
        alerts = directory / "alerts.jsonl"
        repo = args.repo.resolve()
        totals = instructions(repo, config, full, ledger, alerts, args.workers)
        start_ups = instructions(repo, config, one, empty, alerts, args.workers)
    names = (
        ["one process"]
        if args.workers == 1
        else ["parent"] + [f"worker {i}" for i in range(args.workers)]
    )
    print(f"{len(rows)} transfers, ledger={'yes' if ledger else 'no'}, {repo}:")
    for name, total, start_up in zip(names, totals, start_ups, strict=True):
        per_line = (total - start_up) / (len(rows) - 1)
        print(
            f"  {name}: {per_line:,.0f} instructions a line of the file "
            f"({total:,} in all, {start_up:,} of them start-up)"
        )


if __name__ == "__main__":
    main()
