"""A backtest split over processes by wallet, merged into exactly the sequential result.

Wallet states are independent of each other except through incident correlation and the
ledger, whose approvals any wallet may use up. So the wallets are dealt into groups by how busy
they are, and one worker process per group reads the file, judges only its own wallets' transfers
(and checks its share of the lines that touch no watched wallet, so a malformed line is still
reported), and records every abnormal finding it passed to its correlator.

The workers go through the file in rounds of lines, in step (25,000 lines at first, longer while
keeping the snapshots costs over 2% of a round). After each round the parent replays every
worker's findings of the round, in file order, through one correlator that has seen all the rounds
before: when they make no incident, no wallet's alerts could have depended on another's, and the
round's alerts, ordered by line, are the sequential run's alerts exactly. When they do make one (a
drain across wallets: the Phemex and KuCoin pattern), the parent takes the workers' engines as
they were at the start of that round (each worker keeps a pickle of its engine from the start of
its last rounds), joins them into one engine (:meth:`~detectors.engine.DetectionEngine.adopt`;
the correlator is the parent's, which has seen exactly what the sequential run's had), and the
backtest goes on in one process from the first line of that round. Only the rounds from the
incident on cost one-process time; the rounds cost about a tenth on a file without one.

With a ledger, every worker hands every approval to its own engine at the same lines as one
process does (the time of each line, its own or not, says which approvals are due), and each uses
up only what its own wallets' outflows match. That is the one-process result as long as no
approval one worker used up was matched, or compared with an outflow that matched nothing, by
another (a market maker paid from wallets of two workers is fine while each payout has its own
approval). The workers report both per round; when one approval was touched by two, the parent
hands over to one process from that round, as at an incident: the joined engine keeps the
approvals every worker still has open, which are the one-process run's.

With an engine given by the caller, the backtest always runs in one process. A line is read
once, with msgspec, to route it and, by its owner, to judge it.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
import pickle
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import msgspec
import orjson

from detectors.backtest import (
    LedgerFeed,
    ProgressBar,
    Replay,
    TransferLine,
    alert_record,
    collector_paused,
    decode_line,
    line_error,
    line_time,
    read_lines,
    spellings,
)
from detectors.correlation import IncidentCorrelator
from detectors.engine import DetectionEngine
from detectors.errors import BacktestInputError
from detectors.ledger import LedgerReconciliation
from drainwatch.config import Config
from drainwatch.events import HEX_PREFIXES, is_normal_address, normalize_address

__all__ = ["Outcome", "RoundResult", "deal_wallets", "run_parts"]

_Key = tuple[str, str]
"""A wallet: (chain slug case-folded, address)."""
_Position = tuple[int, int, int]
"""Where an alert or a finding comes in the sequential run: line, move in the line, order."""
_Finding = tuple[_Position, str, float, int, bool]
"""(position, wallet key, event time, level, a crowd's warning) of a finding shown to the
correlator."""

ROUND_LINES = 25_000
"""Lines in the first round; later rounds grow while the snapshots cost over 2% of a round."""
MAX_ROUND_LINES = 400_000
"""The most lines a round grows to: a bound on what a drain across wallets costs twice."""
_SNAPSHOT_SHARE = 0.02
_PIPELINE = 1
"""Rounds asked for before the parent checks the oldest one. Asking two ahead, so that a worker
never waits for the parent's check, measured no faster here and wasted more at an incident."""


class _Route(msgspec.Struct):
    """The fields that say which wallets a line touches."""

    chain: str
    sender: str = msgspec.field(name="from")
    to: str


_decode_route = msgspec.json.Decoder(_Route).decode
_PROGRESS_EVERY = 8192
_SAMPLE_LINES = 20_000
_bytes_done: Synchronized[int] | None = None
"""Bytes read by worker 0, shared with the parent for the progress bar."""


class _RecordingCorrelator(IncidentCorrelator):
    """An incident correlator that also writes down every finding it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.position: tuple[int, int] = (0, 0)
        self.seen: list[_Finding] = []

    def observe(
        self,
        wallet_key: str,
        now: float,
        level: int,
        incident_id: str | None = None,
        *,
        crowd: bool = False,
    ) -> tuple[str | None, list[str]]:
        line, move = self.position
        self.seen.append(((line, move, len(self.seen)), wallet_key, now, level, crowd))
        return super().observe(wallet_key, now, level, incident_id, crowd=crowd)


@dataclass
class RoundResult:
    """What one worker produced in one round."""

    alerts: list[tuple[_Position, bytes, bool]] = field(default_factory=list)
    """(position, alerts.jsonl line, freeze) per alert."""
    findings: list[_Finding] = field(default_factory=list)
    read: int = 0
    watched: int = 0
    """Lines touching any watched wallet (counted by worker 0 only)."""
    error: BacktestInputError | None = None
    error_line: int = 0
    """The transfers line this worker stopped at: ``error`` names it, or the ledger line whose
    approval was due before it."""
    approvals_used: list[int] = field(default_factory=list)
    """The approvals (by number) this worker's outflows matched."""
    approvals_compared: list[int] = field(default_factory=list)
    """The open approvals this worker's outflows that matched none were compared with."""
    done: bool = False
    """The file is read to its end (or to this worker's malformed line)."""
    elapsed_s: float = 0.0
    snapshot_s: float = 0.0
    """Of ``elapsed_s``, the time taken to keep the engine as it was at the round's start."""
    seen: set[str] = field(default_factory=set)
    """Keys of the wallets this worker has counted a transfer for (sent once it is done)."""
    elsewhere: dict[str, set[str]] = field(default_factory=dict)
    """Listed addresses under chains that list no wallet there, so far (``Replay.elsewhere``)."""


@dataclass
class Outcome:
    """A split run: the alerts it settled, and where one process must go on, if anywhere."""

    alerts: list[tuple[bytes, bool]]
    """(alerts.jsonl line, freeze), in sequential order, for the lines before ``resume_line``."""
    read: int
    watched: int
    error: BacktestInputError | None = None
    """The first malformed line (every alert before it is in ``alerts``)."""
    resume_line: int | None = None
    """The first line of the round where an incident formed, or where two workers compared
    outflows with the same approval; None when the split run finished."""
    engine: DetectionEngine | None = None
    """All wallets' state as of ``resume_line``, with the correlator of the sequential run."""
    approvals: int = 0
    """The approvals ``engine`` has learned (the ledger file's first ones)."""
    seen: set[str] = field(default_factory=set)
    """Keys of the wallets some transfer was counted for."""
    elsewhere: dict[str, set[str]] = field(default_factory=dict)
    """Listed addresses under chains that list no wallet there (see ``Replay.elsewhere``)."""


def deal_wallets(config: Config, path: Path, count: int) -> list[set[_Key]]:
    """Split the wallets into ``count`` groups with about as many transfers each.

    The first ``_SAMPLE_LINES`` lines are counted per wallet; the busiest wallet goes to the least
    loaded group first. Wallets not seen in the sample are dealt round-robin.
    """
    # A wallet listed once per asset is one wallet: its assets' states go to one worker.
    keys = list(dict.fromkeys((w.chain.casefold(), w.address) for w in config.wallets))
    load = dict.fromkeys(keys, 0)
    addresses = {address for _, address in keys}
    chains: dict[str, str] = {}
    for number, raw in read_lines(path):
        if number > _SAMPLE_LINES:
            break
        try:
            route = _decode_route(raw)
        except msgspec.DecodeError:
            continue
        for address in (route.sender, route.to):
            if address not in addresses:
                if is_normal_address(address):
                    continue  # a customer's, as written: no listed wallet
                address = normalize_address(address)  # noqa: PLW2901 - its normal spelling
            chain = chains.get(route.chain)
            if chain is None:
                chain = chains[route.chain] = route.chain.casefold()
            key = (chain, address)
            if key in load:
                load[key] += 1
    groups: list[set[_Key]] = [set() for _ in range(count)]
    totals = [0] * count
    for key in sorted(keys, key=lambda k: -load[k]):
        target = min(range(count), key=lambda i: (totals[i], len(groups[i])))
        groups[target].add(key)
        totals[target] += load[key]
    return groups


def _routes(config: Config, mine: set[_Key]) -> dict[str, dict[str, bool]]:
    """Watched address -> {chain slug case-folded: whether the wallet is in ``mine``}.

    Routing looks a line's addresses up as written; only an address that is not normal (see
    :func:`~drainwatch.events.is_normal_address`) is normalised first, so a line paying a
    customer's fresh address costs one failed lookup per address.
    """
    routes: dict[str, dict[str, bool]] = {}
    for wallet in config.wallets:
        key = (wallet.chain.casefold(), wallet.address)
        routes.setdefault(wallet.address, {})[key[0]] = key in mine
    return routes


class _Worker:
    """Worker ``index`` of ``len(groups)``: judges the wallets of ``groups[index]``."""

    def __init__(
        self,
        config: Config,
        path: Path,
        index: int,
        groups: list[set[_Key]],
        ledger: _Ledger | None = None,
    ) -> None:
        self.path = path
        self.index = index
        self.count = len(groups)
        self.mine = groups[index]
        self.routes = _routes(config, self.mine)
        """Watched address -> {chain slug case-folded: the wallet is this worker's}."""
        self.chains: dict[str, str] = {}
        self.correlator = _RecordingCorrelator()
        self.engine = DetectionEngine(
            config, correlator=self.correlator, reconcile=ledger is not None
        )
        self.replay = Replay(config, self.engine, only=self.mine)
        self.feed: LedgerFeed | None = None
        """Every approval, handed over before each line of the file as in one process."""
        self.ledger: LedgerReconciliation | None = None
        if ledger is not None:
            self.feed = LedgerFeed(ledger.path, self.engine, ledger.lookahead_s)
            self.ledger = _reconciliation(self.engine)
            self.ledger.recording = True
        self.spelled = spellings(config)
        self.lines: Iterator[tuple[int, bytes]] = read_lines(path)
        self.pending: tuple[int, bytes] | None = None
        self.snapshots: dict[int, bytes] = {}
        """The engine pickled at the start of each of the last few rounds, by first line."""
        self.next_line = 1
        self.stopped = False

    def run_round(self, until: int) -> RoundResult:
        """Judge the lines numbered below ``until``, having kept the engine as it was before."""
        started = time.perf_counter()
        snapshots = self.snapshots
        snapshots[self.next_line] = pickle.dumps(self.engine, protocol=pickle.HIGHEST_PROTOCOL)
        while len(snapshots) > _PIPELINE + 1:
            del snapshots[min(snapshots)]
        self.next_line = until
        result = RoundResult(
            snapshot_s=time.perf_counter() - started, elsewhere=self.replay.elsewhere
        )
        if self.stopped:
            result.done = True
            result.seen = self.engine.wallets_seen()
            return result
        if self._read_until(until, result):
            result.done = self.stopped = True
        result.findings = self.correlator.seen
        self.correlator.seen = []
        ledger = self.ledger
        if ledger is not None:
            result.approvals_used, result.approvals_compared = ledger.used, ledger.compared
            ledger.used, ledger.compared = [], []
        if result.done:
            result.seen = self.engine.wallets_seen()
        result.elapsed_s = time.perf_counter() - started
        return result

    def _read_until(self, until: int, result: RoundResult) -> bool:  # noqa: PLR0915 - hot loop
        """Route every line numbered below ``until`` and judge this worker's; True when the
        file ended or this worker stopped at a malformed line.

        Routing is inlined in this loop over every line of the file, its own or not: only a
        line this worker judges (about 1/workers of them) costs a call.
        """
        done = _bytes_done if self.index == 0 else None
        pending, self.pending = self.pending, None
        lines = self.lines if pending is None else itertools.chain((pending,), self.lines)
        routes, chains, feed = self.routes, self.chains, self.feed
        count, index = self.count, self.index
        read = watched = 0
        ended = True  # the file ended, or this worker's malformed line: nothing is pending
        for number, raw in lines:
            if number >= until:
                self.pending = (number, raw)
                ended = False
                break
            read += 1
            if done is not None and not number % _PROGRESS_EVERY:
                done.value += _PROGRESS_EVERY * len(raw)  # roughly: shown, not counted
            # A usual line is read whole, once: its routing fields say whose it is, and its
            # owner judges it without reading it again. Reading the routing fields alone costs
            # 0.37 us a line, the whole line 0.44 us; each worker judges about 1/workers of them.
            line: TransferLine | None
            route: TransferLine | _Route | None
            try:
                route = line = decode_line(raw)
            except msgspec.DecodeError:
                line = None
                try:
                    route = _decode_route(raw)
                except msgspec.DecodeError:
                    route = None
            if route is None:
                judge = number % count == index  # malformed, probably: one worker reports
                touches = False
            else:
                judge = touches = False
                for address in (route.sender, route.to):
                    found = routes.get(address)
                    if found is None and not (
                        # is_normal_address, inlined: this runs for both addresses of every
                        # line of the file, in every worker (calling it, or a shared lookup
                        # helper, cost 1,400 more instructions a line: about 2% of a worker)
                        address.isalnum()
                        and (address.islower() or not address.startswith(HEX_PREFIXES))
                    ):
                        found = routes.get(normalize_address(address))
                    if found is not None:
                        chain = chains.get(route.chain)
                        if chain is None:
                            chain = chains[route.chain] = route.chain.casefold()
                        mine = found.get(chain)
                        if mine is not None:
                            touches = True
                            judge = judge or mine
                if not touches and number % count == index:
                    judge = True  # checked for errors, judged by nobody
            if touches and index == 0:
                watched += 1
            if judge:
                if not self._judge(number, raw, line, result):
                    break
            elif feed is not None:  # the line's time hands over approvals, for every worker
                when = line_time(raw, line)
                if when is not None and not self._hand_over(feed, number, when, result):
                    break
        result.read, result.watched = read, watched
        return ended

    def _judge(
        self, number: int, raw: bytes, line: TransferLine | None, result: RoundResult
    ) -> bool:
        """Judge a line of this worker's (``line``: as :func:`decode_line` read it, or None);
        False at a malformed line."""
        try:
            if line is None:
                when, moves = self.replay.parse(number, raw)
            else:
                when, moves = self.replay.parse_decoded(number, raw, line)
        except ValueError as exc:
            result.error = line_error(self.path, number, exc)
            result.error_line = number
            return False
        feed = self.feed
        if feed is not None and not self._hand_over(feed, number, when, result):
            return False
        for move_index, move in enumerate(moves):
            self.correlator.position = (number, move_index)
            for seq, alert in enumerate(self.replay.judge(move)):
                result.alerts.append(
                    (
                        (number, move_index, seq),
                        orjson.dumps(alert_record(alert, self.spelled)),
                        alert.freeze,
                    )
                )
        return True

    def _hand_over(self, feed: LedgerFeed, number: int, when: float, result: RoundResult) -> bool:
        """Hand over the approvals due before line ``number`` (their alerts come before the
        line's); False at a malformed one."""
        try:
            raised = feed.hand_over(when)
        except BacktestInputError as exc:
            result.error = exc
            result.error_line = number
            return False
        for seq, alert in enumerate(raised):
            result.alerts.append(
                ((number, -1, seq), orjson.dumps(alert_record(alert, self.spelled)), alert.freeze)
            )
        return True


@dataclass(frozen=True)
class _Ledger:
    """The ledger file of a split run, and how far ahead of a line its approvals are read."""

    path: Path
    lookahead_s: float


def _reconciliation(engine: DetectionEngine) -> LedgerReconciliation:
    """The engine's ledger detector."""
    return next(d for d in engine.detectors if isinstance(d, LedgerReconciliation))


@dataclass
class _Approvals:
    """Which worker used up each approval, and which compared one with an outflow it did not
    explain, over the rounds so far."""

    users: dict[int, int] = field(default_factory=dict)
    comparers: dict[int, set[int]] = field(default_factory=dict)

    def shared(self, results: list[RoundResult]) -> bool:
        """Whether, with this round's ``results``, an approval one worker used up was matched
        or compared by another: then a worker may have found open what one process would not
        (a market maker paid from two wallets' workers is fine while each payout has its own
        approval)."""
        touched: list[int] = []
        for index, result in enumerate(results):
            for approval in result.approvals_used:
                if self.users.setdefault(approval, index) != index:
                    return True
            for approval in result.approvals_compared:
                self.comparers.setdefault(approval, set()).add(index)
                touched.append(approval)
            touched += result.approvals_used
        for approval in touched:
            user = self.users.get(approval)
            if user is not None and self.comparers.get(approval, {user}) - {user}:
                return True
        return False


def _serve(  # noqa: PLR0917
    conn: Connection,
    config: Config,
    path: Path,
    index: int,
    groups: list[set[_Key]],
    ledger: _Ledger | None,
) -> None:
    """A worker process: a round per line number received, the snapshot on "snapshot"."""
    with collector_paused():
        try:
            worker = _Worker(config, path, index, groups, ledger)
            while (command := conn.recv()) is not None:
                if isinstance(command, tuple):  # ("snapshot", first line of the round)
                    conn.send_bytes(worker.snapshots[command[1]])
                else:
                    conn.send(worker.run_round(command))
        except Exception as exc:  # handed to the parent, which raises it
            conn.send(exc)


def _incident_forms(correlator: IncidentCorrelator, findings: list[_Finding], stop: int) -> bool:
    """Show ``findings`` (sorted) to ``correlator`` up to line ``stop``; True if one forms."""
    for position, wallet_key, now, level, crowd in findings:
        if position[0] >= stop:
            break
        incident, _ = correlator.observe(wallet_key, now, level, crowd=crowd)
        if incident is not None:
            return True
    return False


def _joined(
    config: Config, snapshots: list[bytes], correlator: IncidentCorrelator
) -> DetectionEngine:
    """One engine with every worker's wallets, and the sequential run's correlator."""
    engine = DetectionEngine(config, correlator=correlator)
    for snapshot in snapshots:
        engine.adopt(pickle.loads(snapshot))  # noqa: S301 - our own worker's pickle
    return engine


@contextmanager
def _started(
    config: Config, path: Path, workers: int, ledger: _Ledger | None
) -> Iterator[list[Connection]]:
    """``workers`` forked worker processes, one pipe each; stopped on the way out."""
    global _bytes_done  # noqa: PLW0603 - handed to the forked workers
    context = multiprocessing.get_context("fork")
    _bytes_done = context.Value("q", 0, lock=False)
    groups = deal_wallets(config, path, workers)
    pipes = [context.Pipe() for _ in range(workers)]
    processes = [
        context.Process(
            target=_serve, args=(child, config, path, index, groups, ledger), daemon=True
        )
        for index, (_, child) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    conns = [parent for parent, _ in pipes]
    try:
        yield conns
    finally:
        for conn in conns:
            with suppress(OSError):  # a worker that failed has closed its end
                conn.send(None)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


class _Rounds:
    """The parent's side of the rounds: asked for ahead, collected in order."""

    def __init__(self, conns: list[Connection], bar: ProgressBar | None) -> None:
        self.conns = conns
        self.bar = bar
        self.ahead: deque[tuple[int, int]] = deque()
        """(first line, length) of the rounds asked for and not yet collected, oldest first."""
        self.next_line = 1

    def ask(self, length: int) -> None:
        """Ask every worker for the next round of ``length`` lines."""
        for conn in self.conns:
            conn.send(self.next_line + length)
        self.ahead.append((self.next_line, length))
        self.next_line += length

    def collect(self) -> tuple[int, int, list[RoundResult]]:
        """The oldest round asked for: its first line, its length and every worker's result."""
        start, length = self.ahead.popleft()
        results = []
        for conn in self.conns:
            while self.bar is not None and _bytes_done is not None and not conn.poll(0.25):
                self.bar.show(_bytes_done.value)
            result = conn.recv()
            if isinstance(result, Exception):
                raise result
            results.append(result)
        return start, length, results

    def drain(self) -> None:
        """Collect and drop the rounds still asked for, so no worker is left sending."""
        while self.ahead:
            self.collect()

    def snapshots(self, start: int) -> list[bytes]:
        """Every worker's engine as it was at line ``start`` (the rounds ahead are dropped)."""
        for conn in self.conns:
            conn.send(("snapshot", start))
        self.drain()
        return [conn.recv_bytes() for conn in self.conns]


def run_parts(
    config: Config,
    path: Path,
    workers: int,
    *,
    progress: bool = False,
    round_lines: int | None = None,
    ledger: Path | None = None,
    ledger_lookahead_s: float = 120.0,
) -> Outcome:
    """Run ``workers`` forked worker processes in rounds; see the module doc.

    ``round_lines`` fixes the rounds' length; by default the first has :data:`ROUND_LINES` lines
    and each next one twice as many while the snapshots took over 2% of the round. With a
    ``ledger`` file, every worker hands every approval to its engine, ``ledger_lookahead_s``
    ahead of each line as :func:`~detectors.backtest.run_backtest` does.
    """
    length = round_lines or ROUND_LINES
    bar = ProgressBar(path) if progress else None
    correlator = IncidentCorrelator(surge_wallets=config.detection.surge_wallets)
    outcome = Outcome(alerts=[], read=0, watched=0)
    approvals = _Approvals()
    feed = _Ledger(ledger, ledger_lookahead_s) if ledger is not None else None
    with _started(config, path, workers, feed) as conns:
        rounds = _Rounds(conns, bar)
        for _ in range(_PIPELINE):
            rounds.ask(length)
        while True:
            start, length, results = rounds.collect()
            # One process reads a line before the approvals due by its time: at one line, the
            # transfers file's error comes first.
            errors = [
                (r.error_line, r.error.path != str(path), r.error)
                for r in results
                if r.error is not None
            ]
            stop, _, error = min(errors, key=lambda e: e[:2]) if errors else (0, False, None)
            stop = stop or start + length
            for result in results:
                for address, chains in result.elsewhere.items():
                    outcome.elsewhere.setdefault(address, set()).update(chains)
            before = copy.deepcopy(correlator)
            if approvals.shared(results) or _incident_forms(
                correlator, sorted(f for r in results for f in r.findings), stop
            ):
                outcome.resume_line = start
                outcome.engine = _joined(config, rounds.snapshots(start), before)
                outcome.approvals = _reconciliation(outcome.engine).learned
                break
            alerts = sorted(a for r in results for a in r.alerts)
            outcome.alerts += [(line, freeze) for pos, line, freeze in alerts if pos[0] < stop]
            outcome.read += results[0].read
            outcome.watched += results[0].watched
            outcome.error = error
            if error is not None or all(r.done for r in results):
                for result in results:
                    outcome.seen |= result.seen
                break
            slowest = max(results, key=lambda r: r.elapsed_s)
            if round_lines is None and slowest.snapshot_s > _SNAPSHOT_SHARE * slowest.elapsed_s:
                length = min(2 * length, MAX_ROUND_LINES)
            rounds.ask(length)
        rounds.drain()
    if bar is not None:
        bar.show(path.stat().st_size)
        bar.close()
    return outcome
