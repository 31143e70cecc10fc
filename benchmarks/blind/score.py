"""Score backtest alerts against a blind-replay truth file, as DESIGN.md section 5 judges them.

    python benchmarks/blind/score.py DIR ALERTS.jsonl [FIXED_ALERTS.jsonl] [--fixed-rule]

DIR is what generate.py wrote. A second alerts file is scored the same way, side by side (the
fixed rule's alerts, say); --fixed-rule computes the design's fixed rule ("freeze when outflow
in 20 minutes exceeds 5% of the balance") from DIR itself, writes DIR/alerts-fixed-rule.jsonl
and scores it too.
"""

from __future__ import annotations

import argparse
import json
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

DAY, HOUR = 86400, 3600
WINDOW, SHARE = 1200, Decimal("0.05")  # the fixed rule: 20 minutes, 5% of the balance


def epoch(ts: str) -> float:
    when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {ts}")
    return when.timestamp()


def wallet_key(chain: str, address: str) -> tuple[str, str]:
    return chain.lower(), address.lower() if address.lower().startswith("0x") else address


def norm_hash(tx_hash: str) -> str:
    return tx_hash.lower() if tx_hash.lower().startswith("0x") else tx_hash


@dataclass
class Alert:
    ts: float
    key: tuple[str, str]
    severity: str
    detector: str
    freeze: bool
    summary: str
    line: int = 0  # the transfers.jsonl line that triggered it (see Replay.trigger)


@dataclass
class Replay:
    """The generated data set: truth, and where every transfer sits in transfers.jsonl."""

    dir: Path
    truth: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    lines: dict[str, tuple[int, float]] = field(default_factory=dict)

    def load(self) -> Replay:
        self.truth = json.loads((self.dir / "truth.json").read_text())
        with (self.dir / "transfers.jsonl").open() as f:
            for n, raw in enumerate(f, 1):
                row = json.loads(raw)
                t = epoch(row["ts"])
                self.times.append(t)
                if row.get("tx_hash"):
                    self.lines[norm_hash(row["tx_hash"])] = (n, t)
        return self

    def trigger(self, ts: float, hashes: list[str]) -> int:
        """The line of the transfer an alert fired on: its evidence at its own second if it has
        one there, else the last line at or before its time (ties count as passed)."""
        own = [
            n
            for n, t in (self.lines.get(norm_hash(h), (0, -1.0)) for h in hashes)
            if int(t) == int(ts)
        ]
        return max(own) if own else bisect_right(self.times, ts)

    def labels(self) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for w in self.truth["wallets"]:
            key = wallet_key(w["chain"], w["address"])
            name = w["label"].rsplit("-", 1)[0] if w["label"].count("-") > 2 else w["label"]
            out.setdefault(key, name)
        return out


def load_alerts(path: Path, replay: Replay) -> list[Alert]:
    seen, out = set(), []
    with path.open() as f:
        for raw in f:
            if not raw.strip():
                continue
            row = json.loads(raw)
            hashes = [str(h) for h in row.get("tx_hashes") or []]
            ident = row.get("id") or (
                row["ts"],
                row["chain"],
                row["wallet"],
                row["detector"],
                tuple(hashes),
                row.get("freeze"),
            )
            if ident in seen:
                continue
            seen.add(ident)
            t = epoch(row["ts"])
            out.append(
                Alert(
                    t,
                    wallet_key(row["chain"], row["wallet"]),
                    row["severity"],
                    row["detector"],
                    row.get("freeze") is True,
                    row.get("summary", ""),
                    replay.trigger(t, hashes),
                )
            )
    out.sort(key=lambda a: (a.line, a.ts))
    return out


def score(replay: Replay, alerts: list[Alert]) -> dict[str, Any]:
    truth = replay.truth
    start, end = epoch(truth["start"]), epoch(truth["end"])
    learned = start + truth["learning_days"] * DAY
    listed = replay.labels()
    hot = {wallet_key(w["chain"], w["address"]) for w in truth["wallets"] if w["role"] == "hot"}
    attacked: dict[tuple[str, str], tuple[int, float]] = {}  # key: first malicious line, time
    incidents = []
    for inc in truth["incidents"]:
        first = min(t["line"] for t in inc["transfers"])
        first_ts = min(epoch(t["ts"]) for t in inc["transfers"])
        wallets = []
        for w in inc["wallets"]:
            key = wallet_key(w["chain"], w["address"])
            attacked[key] = (first, first_ts)
            mine = [t for t in inc["transfers"] if wallet_key(t["chain"], t["wallet"]) == key]
            freeze = next(
                (a for a in alerts if a.freeze and a.key == key and a.line >= first), None
            )
            cut = freeze.line if freeze else len(replay.times) + 1
            big = next(
                (t for t in mine if Decimal(t["amount"]) > Decimal(t["balance_before"]) / 100), None
            )
            total = sum(Decimal(t["usd_value"]) for t in mine)
            saved = sum(Decimal(t["usd_value"]) for t in mine if t["line"] > cut)
            wallets.append(
                {
                    "key": key,
                    "label": listed[key],
                    "freeze": freeze,
                    "total": total,
                    "saved": saved,
                    "passed": sum(t["line"] <= cut for t in mine),
                    "n": len(mine),
                    "late": freeze is None or (big is not None and freeze.line > big["line"]),
                    "delay": None if freeze is None else freeze.ts - first_ts,
                }
            )
        total = sum((w["total"] for w in wallets), Decimal(0))
        saved = sum((w["saved"] for w in wallets), Decimal(0))
        incidents.append(
            {
                "id": inc["id"],
                "wallets": wallets,
                "total": total,
                "saved": saved,
                "share": saved / total if total else Decimal(0),
                "first": first,
                "passed": sum(w["passed"] for w in wallets),
                "n": len(inc["transfers"]),
                "late": any(w["late"] for w in wallets),
                "frozen": all(w["freeze"] for w in wallets),
                "window": (first_ts, epoch(inc["halt"])),
            }
        )
    normal_days = {
        key: max(0.0, min(end, attacked.get(key, (0, end))[1]) - learned) / DAY for key in hot
    }

    def normal(a: Alert) -> bool:
        return a.ts >= learned and (a.key not in attacked or a.line < attacked[a.key][0])

    false = [a for a in alerts if a.freeze and normal(a)]
    noisy = [a for a in alerts if a.severity in ("warning", "critical") and normal(a)]
    episodes, last = 0, {}
    for a in sorted(false, key=lambda a: a.ts):
        episodes += a.key not in last or a.ts - last[a.key] > HOUR
        last[a.key] = a.ts
    months, days = sum(normal_days.values()) / 30, sum(normal_days.values())
    return {
        "incidents": incidents,
        "false": false,
        "episodes": episodes,
        "noisy": noisy,
        "months": months,
        "days": days,
        "labels": listed,
        "alerts": alerts,
        "per_month": len(false) / months if months else 0.0,
        "episodes_per_month": episodes / months if months else 0.0,
        "noise": len(noisy) / days if days else 0.0,
    }


def fmt_delay(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    sign, s = ("-" if seconds < 0 else "+"), abs(int(seconds))
    return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def report(name: str, result: dict[str, Any], details: int) -> None:
    labels = result["labels"]
    incs = result["incidents"]
    print(
        f"\n== {name}: {len(result['alerts'])} alerts,"
        f" {sum(a.freeze for a in result['alerts'])} with freeze"
    )
    print(f"{'incident':16} {'saved':>7} {'passed':>8}  late  {'freeze after':>12}  detector")
    for inc in incs:
        for i, w in enumerate(inc["wallets"]):
            head = (
                (
                    f"{inc['id']:16} {float(inc['share']):7.1%} {inc['passed']:>3}/{inc['n']:<4}"
                    f"  {'LATE' if inc['late'] else 'ok':4}"
                )
                if i == 0
                else " " * 40
            )
            share = float(w["saved"] / w["total"]) if w["total"] else 0.0
            detector = w["freeze"].detector if w["freeze"] else "-"
            print(
                f"{head}  {fmt_delay(w['delay']):>12}  {detector}  [{w['label']}: {share:.1%}"
                f" saved, {w['passed']}/{w['n']} passed]"
            )
    total = sum((i["total"] for i in incs), Decimal(0))
    weighted = float(sum((i["saved"] for i in incs), Decimal(0)) / total) if total else 0.0
    mean = sum(float(i["share"]) for i in incs) / len(incs) if incs else 0.0
    print(
        f"overall: funds saved {mean:.1%} (mean of {len(incs)} incidents), {weighted:.1%}"
        f" (USD-weighted); transfers passed {sum(i['passed'] for i in incs)}/"
        f"{sum(i['n'] for i in incs)}; late {sum(i['late'] for i in incs)}/{len(incs)};"
        f" never frozen {sum(not i['frozen'] for i in incs)}/{len(incs)}"
    )
    print(
        f"false freezes: {len(result['false'])} alerts in {result['episodes']} episodes over"
        f" {result['months']:.2f} hot-wallet-months of normal traffic = "
        f"{result['per_month']:.2f} alerts, {result['episodes_per_month']:.2f} episodes"
        " per wallet-month"
    )
    print(
        f"noise: {len(result['noisy'])} warning/critical alerts over {result['days']:.1f}"
        f" hot-wallet-days = {result['noise']:.3f} per wallet per day"
    )
    if details <= 0:
        return
    for a in result["false"][:details]:
        print(
            f"  false freeze {datetime.fromtimestamp(a.ts, UTC).isoformat()[:19]}Z"
            f" {labels.get(a.key, a.key[1])} {a.detector}: {a.summary}"
        )
    for inc in incs:
        if inc["late"] or not inc["frozen"]:
            lo, hi = inc["window"]
            keys = {w["key"] for w in inc["wallets"]}
            shown = [a for a in result["alerts"] if a.key in keys and lo - HOUR <= a.ts <= hi]
            print(
                f"  {inc['id']} ({'late' if inc['frozen'] else 'not frozen'}):"
                f" {len(shown)} alerts from 1 h before it to the halt"
            )
            for a in shown[:details]:
                print(
                    f"    {fmt_delay(a.ts - lo)} {labels.get(a.key, a.key[1])} {a.severity}"
                    f" freeze={a.freeze} {a.detector}: {a.summary}"
                )


def fixed_rule(replay: Replay) -> list[dict[str, Any]]:
    """The design's baseline: freeze when a hot wallet's outflow to addresses outside the listed
    wallets over the last 20 minutes exceeds 5% of its balance before that outflow."""
    hot = {
        (wallet_key(w["chain"], w["address"]), w["asset"]): w
        for w in replay.truth["wallets"]
        if w["role"] == "hot"
    }
    listed = {wallet_key(w["chain"], w["address"]) for w in replay.truth["wallets"]}
    balance = {k: Decimal(w["opening_balance"]) for k, w in hot.items()}
    recent: dict[Any, deque[tuple[float, Decimal]]] = {k: deque() for k in hot}
    alerts = []
    with (replay.dir / "transfers.jsonl").open() as f:
        for raw in f:
            row = json.loads(raw)
            amount, t = Decimal(row["amount"]), epoch(row["ts"])
            src, dst = wallet_key(row["chain"], row["from"]), wallet_key(row["chain"], row["to"])
            if (dst, row["asset"]) in balance:
                balance[dst, row["asset"]] += amount
            k = (src, row["asset"])
            if k not in balance:
                continue
            balance[k] -= amount
            if dst in listed:
                continue
            window = recent[k]
            window.append((t, amount))
            while window[0][0] <= t - WINDOW:
                window.popleft()
            out = sum((a for _, a in window), Decimal(0))
            if out > SHARE * (balance[k] + out):
                share = out / (balance[k] + out)
                alerts.append(
                    {
                        "ts": row["ts"],
                        "chain": row["chain"],
                        "wallet": row["from"],
                        "severity": "critical",
                        "detector": "fixed-rule",
                        "freeze": True,
                        "tx_hashes": [row.get("tx_hash", "")],
                        "summary": f"{share:.1%} of {hot[k]['label']} out in 20 min",
                    }
                )
    return alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("alerts", type=Path)
    parser.add_argument("fixed", type=Path, nargs="?", help="a second alerts file to score")
    parser.add_argument("--fixed-rule", action="store_true", help="compute and score the rule")
    parser.add_argument("--details", type=int, default=25, help="alert lines shown per list")
    args = parser.parse_args()
    replay = Replay(args.dir).load()
    runs = [(str(args.alerts), args.alerts)]
    if args.fixed:
        runs.append((f"{args.fixed} (second file)", args.fixed))
    if args.fixed_rule:
        path = args.dir / "alerts-fixed-rule.jsonl"
        path.write_text("".join(json.dumps(a) + "\n" for a in fixed_rule(replay)))
        runs.append(("fixed rule (5% of balance out in 20 min)", path))
    truth = replay.truth
    print(
        f"{args.dir}: seed {truth['seed']}, {truth['days']} days from {truth['start']},"
        f" {sum(w['role'] == 'hot' for w in truth['wallets'])} hot wallet entries,"
        f" {len(truth['incidents'])} incidents, {len(replay.times)} transfers"
    )
    for name, path in runs:
        report(name, score(replay, load_alerts(path, replay)), args.details)


if __name__ == "__main__":
    main()
