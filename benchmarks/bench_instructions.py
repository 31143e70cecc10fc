"""Machine instructions per backtest line, counted by valgrind's callgrind: a number that repeats.

Usage: ``.venv/bin/python benchmarks/bench_instructions.py [-n 60000] [--repo PATH]``

Wall-clock throughput on a shared two-core VM swings by 15% or more within the hour, which hides
a change of a few percent; an instruction count does not move with the neighbours' load. The
lines are the traffic of ``bench_backtest.py`` (two hot wallets and their cold wallets), judged in
one process by the default detectors. Start-up (interpreter, imports, config) is taken off by
also counting a one-line file, so what is printed is the cost of a line. ``--repo`` counts
another checkout of drainwatch (an older commit, say) on the same lines, with this one's virtual
environment: run it once for each side of a change.

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

_COLLECTED = re.compile(rb"Collected : (\d+)")

_RUN = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from drainwatch.config import load
from detectors.backtest import run_backtest
run_backtest(load(Path({config!r})), {transfers!r}, None, {alerts!r}, workers=1)
"""


def instructions(repo: Path, config: Path, transfers: Path, alerts: Path) -> int:
    """Instructions callgrind counts for one single-process backtest of ``transfers``."""
    code = _RUN.format(
        repo=str(repo), config=str(config), transfers=str(transfers), alerts=str(alerts)
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
            sys.executable,
            "-c",
            code,
        ],
        check=True,
        env=env,
        cwd=repo,
        capture_output=True,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit("callgrind printed no instruction count:\n" + done.stderr.decode())
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--transfers", type=int, default=60_000)
    parser.add_argument(
        "--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to count"
    )
    args = parser.parse_args()
    days = max(1.0, 1.1 * args.transfers / (1400 * 2))
    wallets = specs(2)
    rows = generate_traffic(wallets, START, days=days, seed=1, panic_day=None).transfers
    rows = rows[: args.transfers]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = directory / "drainwatch.toml"
        config.write_text(config_toml(wallets))
        full = write_jsonl(directory / "transfers.jsonl", rows)
        one = write_jsonl(directory / "one.jsonl", rows[:1])
        alerts = directory / "alerts.jsonl"
        repo = args.repo.resolve()
        total = instructions(repo, config, full, alerts)
        start_up = instructions(repo, config, one, alerts)
    per_line = (total - start_up) / (len(rows) - 1)
    print(
        f"{len(rows)} transfers, one process, {repo}: {per_line:,.0f} instructions a line "
        f"({total:,} in all, {start_up:,} of them start-up)"
    )


if __name__ == "__main__":
    main()
