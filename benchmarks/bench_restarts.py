"""What restarting the detectors costs, by how their state is rebuilt.

Usage: ``.venv/bin/python benchmarks/bench_restarts.py [--scenario NAME ...] [--every-h 24]
[--replay-h 48 168]``

Each scenario of ``drainwatch evaluate --quick`` (with opening balances, as live mode reads
the balance from the chain) is judged once without a restart, then with the engine restarted
every ``--every-h`` hours from day 8 on, its state rebuilt either from a snapshot
(``held_state``, pickled and taken back, as the detector stage does) or by replaying the last
``--replay-h`` hours of transfers (what a detector does without one). Each run is scored as
``drainwatch evaluate`` scores it, and compared alert for alert with the run without a restart.
"""

from __future__ import annotations

import argparse
import bisect
import pickle
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import DetectionEngine
from detectors.backtest import alert_record, watched_moves
from detectors.evaluate import _start, first_large, scenarios, score  # _start: the first day
from detectors.move import Move
from detectors.traffic import config_toml, generate_traffic, write_jsonl
from drainwatch.config import Config, loads

DAY = 86400.0
FIRST_RESTART_DAY = 8


def judged(
    config: Config, lines: list[tuple[float, list[Move]]], every_s: float, rebuild: str | float
) -> list[dict[str, Any]]:
    """The alert records of a run restarted every ``every_s`` from day 8 on (never with 0),
    the engine rebuilt by ``rebuild``: "snapshot", or the seconds of transfers replayed."""
    engine = DetectionEngine(config)
    keys = {w.key for w in config.wallets}
    times = [when for when, _ in lines]
    due = times[0] + FIRST_RESTART_DAY * DAY if every_s else float("inf")
    out: list[dict[str, Any]] = []
    for index, (when, moves) in enumerate(lines):
        if when >= due:
            if rebuild == "snapshot":
                restored = DetectionEngine(config)
                restored.restore(pickle.loads(pickle.dumps(engine.held_state(keys))))  # noqa: S301
                engine = restored
            else:
                engine = DetectionEngine(config)
                first = bisect.bisect_left(times, due - float(rebuild))
                engine.replay(m for _, ms in lines[first:index] for m in ms)
            due += every_s
        for move in moves:
            out += [alert_record(a) for a in engine.process(move, at_event_time=True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--scenario",
        action="append",
        help="default: normal-traffic, heavy-whales, long-tail, spaced-fresh, many-wallets",
    )
    parser.add_argument("--every-h", type=float, default=24.0)
    parser.add_argument("--replay-h", type=float, nargs="+", default=[48.0, 168.0])
    args = parser.parse_args()
    names = args.scenario or [
        "normal-traffic",
        "heavy-whales",
        "long-tail",
        "spaced-fresh",
        "many-wallets",
    ]
    chosen = [replace(s, opening_balance=True) for s in scenarios(quick=True) if s.name in names]
    print(
        f"restarted every {args.every_h:g} h from day {FIRST_RESTART_DAY}, with opening balances\n"
        "| scenario | state rebuilt | saved | passed | late | false freezes | warnings / "
        "wallet-day | alerts |\n|---|---|---:|---:|---:|---:|---:|---|"
    )
    for scenario in chosen:
        start = _start(scenario)
        traffic = generate_traffic(
            scenario.wallets,
            start,
            scenario.days,
            seed=scenario.seed,
            panic_days=scenario.panic_days,
        )
        config = loads(config_toml(scenario.wallets, opening_balance=True))
        large_at = first_large(scenario.wallets, traffic.transfers, traffic.malicious)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_jsonl(Path(tmp) / "transfers.jsonl", traffic.transfers)
            lines = watched_moves(config, path)
        modes: list[tuple[str, str | float]] = [("not restarted", "snapshot")]
        modes += [("snapshot", "snapshot")]
        modes += [(f"{h:g} h replayed", h * 3600) for h in args.replay_h]
        baseline: list[dict[str, Any]] | None = None
        for name, rebuild in modes:
            alerts = judged(config, lines, 0 if baseline is None else args.every_h * 3600, rebuild)
            baseline = alerts if baseline is None else baseline
            r = score(scenario, "drainwatch", start, traffic.malicious, alerts, 0.0, large_at)
            saved = f"{r.saved:.1%}" if r.saved is not None else "-"
            late = f"{r.late}/{r.large_drains}" if r.large_drains else "-"
            same = "the same" if alerts == baseline else "others"
            print(
                f"| {scenario.name} | {name} | {saved} | {r.passed if r.saved is not None else '-'}"
                f" | {late} | {r.false_freezes} ({r.false_freezes_per_wallet_month:.3f}) | "
                f"{r.warnings_per_wallet_day:.3f} | {same} |"
            )


if __name__ == "__main__":
    main()
