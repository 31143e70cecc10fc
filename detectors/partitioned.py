"""A backtest split over processes by wallet, merged into exactly the sequential result.

Wallet states are independent of each other except through incident correlation (and the
ledger, whose approvals any wallet may use up). So the wallets are dealt round-robin into groups,
one worker process per group reads the whole file, judges only its own wallets' transfers (and
checks its share of the lines that touch no watched wallet, so a malformed line is still
reported), and records every abnormal finding it passed to its correlator. The parent replays all
of those findings, in file order, through one correlator: when they never make an incident, no
wallet's alerts could have depended on another's and the merged alerts, ordered by line, are the
sequential run's alerts exactly. When they do, the merge is thrown away and the file is run again
in one process. With a ledger, or with an engine given by the caller, the backtest always runs in
one process.

Only the routing fields of a line are read for the other groups' lines, with msgspec, which makes
two workers on two cores about twice as fast as one process on normal traffic.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import msgspec
import orjson

from detectors.backtest import (
    AddressCache,
    ProgressBar,
    Replay,
    alert_record,
    collector_paused,
    line_error,
    read_lines,
)
from detectors.correlation import IncidentCorrelator
from detectors.engine import DetectionEngine
from detectors.errors import BacktestInputError
from drainwatch.config import Config
from drainwatch.events import normalize_address

__all__ = ["PartResult", "deal_wallets", "merge_parts", "run_part", "run_parts"]

_Key = tuple[str, str]
"""A wallet: (chain slug case-folded, address)."""
_Position = tuple[int, int, int]
"""Where an alert or a finding comes in the sequential run: line, move in the line, order."""


class _Route(msgspec.Struct):
    """The fields that say which wallets a line touches."""

    chain: str
    sender: str = msgspec.field(name="from")
    to: str


_decode_route = msgspec.json.Decoder(_Route).decode
_PROGRESS_EVERY = 8192
_SAMPLE_LINES = 50_000
_bytes_done: Synchronized[int] | None = None
"""Bytes read by worker 0, shared with the parent for the progress bar."""


class _RecordingCorrelator(IncidentCorrelator):
    """An incident correlator that also writes down every finding it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.position: tuple[int, int] = (0, 0)
        self.seen: list[tuple[_Position, str, float, int]] = []

    def observe(self, wallet_key: str, now: float, level: int) -> tuple[str | None, list[str]]:
        line, move = self.position
        self.seen.append(((line, move, len(self.seen)), wallet_key, now, level))
        return super().observe(wallet_key, now, level)


@dataclass
class PartResult:
    """What one worker produced."""

    alerts: list[tuple[_Position, bytes, bool]] = field(default_factory=list)
    """(position, alerts.jsonl line, freeze) per alert."""
    findings: list[tuple[_Position, str, float, int]] = field(default_factory=list)
    """(position, wallet key, event time, level) per finding shown to the correlator."""
    read: int = 0
    watched: int = 0
    """Lines touching any watched wallet (counted by worker 0 only)."""
    error: BacktestInputError | None = None


def deal_wallets(config: Config, path: Path, count: int) -> list[set[_Key]]:
    """Split the wallets into ``count`` groups with about as many transfers each.

    The first ``_SAMPLE_LINES`` lines are counted per wallet; the busiest wallet goes to the least
    loaded group first. Wallets not seen in the sample are dealt round-robin.
    """
    keys = [(w.chain.casefold(), w.address) for w in config.wallets]
    load = dict.fromkeys(keys, 0)
    for number, raw in read_lines(path):
        if number > _SAMPLE_LINES:
            break
        try:
            route = _decode_route(raw)
        except msgspec.DecodeError:
            continue
        chain = route.chain.casefold()
        for address in (route.sender, route.to):
            key = (chain, normalize_address(address))
            if key in load:
                load[key] += 1
    groups: list[set[_Key]] = [set() for _ in range(count)]
    totals = [0] * count
    for key in sorted(keys, key=lambda k: -load[k]):
        target = min(range(count), key=lambda i: (totals[i], len(groups[i])))
        groups[target].add(key)
        totals[target] += load[key]
    return groups


def run_part(config: Config, path: Path, index: int, groups: list[set[_Key]]) -> PartResult:
    """Worker ``index``: judge the wallets of ``groups[index]`` over the whole file."""
    count = len(groups)
    mine = groups[index]
    watched_keys = {(w.chain.casefold(), w.address) for w in config.wallets}
    correlator = _RecordingCorrelator()
    engine = DetectionEngine(config, correlator=correlator)
    replay = Replay(config, engine, only=mine)
    addresses = AddressCache()
    result = PartResult()
    done = _bytes_done if index == 0 else None
    for number, raw in read_lines(path):
        result.read += 1
        if done is not None and not result.read % _PROGRESS_EVERY:
            done.value += _PROGRESS_EVERY * len(raw)  # roughly: shown, not counted
        try:
            route = _decode_route(raw)
        except msgspec.DecodeError:
            judge = number % count == index  # malformed, probably: one worker reports it
            touches = False
        else:
            chain = route.chain.casefold()
            sender = (chain, addresses[route.sender])
            receiver = (chain, addresses[route.to])
            judge = sender in mine or receiver in mine
            touches = sender in watched_keys or receiver in watched_keys
            if not touches and number % count == index:
                judge = True  # checked for errors, judged by nobody
        if index == 0 and touches:
            result.watched += 1
        if not judge:
            continue
        try:
            _, moves = replay.parse(number, raw)
        except ValueError as exc:
            result.error = line_error(path, number, exc)
            break
        for move_index, move in enumerate(moves):
            correlator.position = (number, move_index)
            for seq, alert in enumerate(replay.judge(move)):
                result.alerts.append(
                    ((number, move_index, seq), orjson.dumps(alert_record(alert)), alert.freeze)
                )
    result.findings = correlator.seen
    return result


def _run_part_job(job: tuple[Config, Path, int, list[set[_Key]]]) -> PartResult:
    with collector_paused():
        return run_part(*job)


def merge_parts(parts: list[PartResult]) -> list[tuple[bytes, bool]] | None:
    """The merged alerts in sequential order, or None when correlation could have mattered.

    A worker that stopped at a malformed line covered every line before it; the merge keeps
    the alerts before the first malformed line of any worker (the caller raises its error).
    """
    stop = min((p.error.line_number for p in parts if p.error is not None), default=None)
    findings = sorted(f for p in parts for f in p.findings)
    replayed = IncidentCorrelator()
    for position, wallet_key, now, level in findings:
        if stop is not None and position[0] >= stop:
            break
        incident, _ = replayed.observe(wallet_key, now, level)
        if incident is not None:
            return None
    alerts = sorted(a for p in parts for a in p.alerts)
    return [
        (line, freeze) for position, line, freeze in alerts if stop is None or position[0] < stop
    ]


def run_parts(
    config: Config, path: Path, workers: int, *, progress: bool = False
) -> tuple[list[PartResult], list[tuple[bytes, bool]] | None]:
    """Run ``workers`` forked worker processes and merge what they found."""
    global _bytes_done  # noqa: PLW0603 - handed to the forked workers
    context = multiprocessing.get_context("fork")
    _bytes_done = context.Value("q", 0, lock=False)
    groups = deal_wallets(config, path, workers)
    jobs = [(config, path, index, groups) for index in range(workers)]
    bar = ProgressBar(path) if progress else None
    with context.Pool(workers) as pool:
        pending = pool.map_async(_run_part_job, jobs)
        while not pending.ready():
            pending.wait(0.25)
            if bar is not None:
                bar.show(_bytes_done.value)
        parts = pending.get()
    if bar is not None:
        bar.show(path.stat().st_size)
        bar.close()
    return parts, merge_parts(parts)
