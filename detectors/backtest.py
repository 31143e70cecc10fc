"""The backtest: replay ``transfers.jsonl`` (and a ledger) through the live detectors.

It runs in event time; the file formats are the contract of DESIGN.md section 4. Each line
becomes one :class:`~detectors.move.Move` (the lean form of a
:class:`~drainwatch.events.Transfer`) per watched wallet it touches (an outflow when ``from`` is
the wallet, an inflow when ``to`` is); lines touching no watched wallet are counted and skipped.
Ledger lines are merged in by time (a ledger file not in time order is read sorted:
:func:`time_ordered_ledger`) and reach the engine as approved withdrawals. Alerts go out one
JSON object per line. A malformed line stops the run with :class:`BacktestInputError` naming the
file and line.

Amounts stay exact: decimal strings are split into integer units and decimals by string
arithmetic, and a line with a JSON number as amount is re-read with ``parse_float=Decimal`` (orjson
would turn it into a float).

>>> import tempfile, orjson
>>> from pathlib import Path
>>> from drainwatch.config import loads
>>> tmp = Path(tempfile.mkdtemp())
>>> config = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n'
...                'opening_balance = "1000"\\n')
>>> lines = [{"ts": "2018-01-25T15:02:00Z", "chain": "nem", "asset": "XEM", "tx_hash": "a",
...           "from": "HOT", "to": "THIEF", "amount": "400"},
...          {"ts": "2018-01-25T15:03:00Z", "chain": "nem", "asset": "XEM", "tx_hash": "b",
...           "from": "ELSEWHERE", "to": "OTHER", "amount": 1}]
>>> _ = (tmp / "t.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\\n" for x in lines))
>>> summary = run_backtest(config, tmp / "t.jsonl", None, tmp / "alerts.jsonl")
>>> summary.transfers_read, summary.watched_transfers, summary.freezes
(2, 1, 1)
>>> alert = orjson.loads((tmp / "alerts.jsonl").read_bytes().splitlines()[0])
>>> alert["ts"], alert["freeze"], alert["tx_hashes"]
('2018-01-25T15:02:00Z', True, ['a'])
>>> alert["summary"]
'40% of nem-hot drained at once to 1 new address; 600 XEM left, at this rate empty in 2 min'
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

from detectors.approval import Approval
from detectors.base import to_units
from detectors.engine import DetectionEngine
from detectors.errors import BacktestFileError, BacktestInputError
from detectors.move import Move
from drainwatch.config import Config, WalletConfig, wallets_by_key
from drainwatch.events import (
    HEX_PREFIXES,
    Alert,
    Direction,
    event_id,
    normalize_address,
    wallet_key,
)

log = logging.getLogger(__name__)

__all__ = [
    "BacktestSummary",
    "LedgerFeed",
    "ProgressBar",
    "Replay",
    "TransferLine",
    "alert_record",
    "decode_line",
    "line_time",
    "parse_amount",
    "parse_ts",
    "run_backtest",
    "spellings",
    "tally_approvals",
    "unpayable_approvals",
    "unseen_wallets",
    "watched_moves",
]

_PROGRESS_EVERY: Final = 8192
_ZERO: Final = timedelta(0)
_OUT: Final = Direction.OUT
_IN: Final = Direction.IN


@dataclass(frozen=True, slots=True)
class BacktestSummary:
    """What a backtest read and produced."""

    transfers_read: int
    """Lines of transfers.jsonl (blank lines excluded)."""
    watched_transfers: int
    """Lines that touched at least one watched wallet."""
    ledger_entries: int
    alerts: int
    freezes: int
    elapsed_s: float
    unseen_wallets: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Listed wallets no transfer touched: (name, chains the file spells with their address)."""
    unpayable_approvals: tuple[tuple[str, str], ...] = ()
    """(chain, asset) of ledger approvals that no listed wallet pays (see
    :func:`unpayable_approvals`)."""

    @property
    def transfers_per_s(self) -> float:
        """Lines read per second of wall time."""
        return self.transfers_read / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TransferLine(msgspec.Struct):
    """A transfers.jsonl line as msgspec reads it when every field has its usual type."""

    ts: str
    chain: str
    asset: str
    sender: str = msgspec.field(name="from")
    to: str
    amount: str | int
    tx_hash: str | None = None
    usd_value: float | None = None


decode_line = msgspec.json.Decoder(TransferLine).decode
"""Read a line into a :class:`TransferLine`; ``msgspec.DecodeError`` for an unusual one."""


class _LineError(ValueError):
    """A reason a line is malformed; the reader adds path and line number."""


def parse_amount(value: object) -> tuple[int, int]:
    """An exact non-negative amount as (integer units, decimals).

    >>> parse_amount("10.50"), parse_amount(7), parse_amount(Decimal("0.1"))
    ((1050, 2), (7, 0), (1, 1))
    >>> parse_amount("1000000000000.000000000000000001"), parse_amount("1E+30")
    ((1000000000000000000000000000001, 18), (1000000000000000000000000000000, 0))
    >>> parse_amount("-1")
    Traceback (most recent call last):
    ...
    detectors.backtest._LineError: amount is negative: '-1'
    """
    if isinstance(value, str):
        whole, _, frac = value.partition(".")
        digits = whole + frac
        if whole and digits.isascii() and digits.isdigit():
            return int(digits), len(frac)
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise _LineError(f"amount is not a decimal number: {value!r}") from None
    elif isinstance(value, bool) or value is None:
        raise _LineError(f"amount is not a number: {value!r}")
    elif isinstance(value, int):
        if value < 0:
            raise _LineError(f"amount is negative: {value!r}")
        return value, 0
    elif isinstance(value, Decimal):
        number = value
    else:
        raise _LineError(f"amount is not a number: {value!r}")
    if not number.is_finite():
        raise _LineError(f"amount is not finite: {value!r}")
    if number.is_signed() and number != 0:
        raise _LineError(f"amount is negative: {value!r}")
    units, decimals = to_units(number)  # not abs(): it rounds to the context's 28 digits
    if decimals > 255:
        raise _LineError(f"amount has more than 255 decimals: {value!r}")
    return units, decimals


def parse_ts(value: object) -> datetime:
    """An ISO 8601 time with a UTC offset, as aware UTC; naive times are refused.

    Another offset names the same instant (an exchange in Tokyo may export ``+09:00``), and a
    lower-case ``z`` is RFC 3339's ``Z``.

    >>> parse_ts("2018-01-25T15:02:00Z")
    datetime.datetime(2018, 1, 25, 15, 2, tzinfo=datetime.timezone.utc)
    >>> parse_ts("2018-01-26T00:02:00+09:00") == parse_ts("2018-01-25t15:02:00z")
    True
    >>> parse_ts("2018-01-25T15:02:00")
    Traceback (most recent call last):
    ...
    detectors.backtest._LineError: ts has no UTC offset: '2018-01-25T15:02:00'
    """
    if not isinstance(value, str):
        raise _LineError(f"ts is not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.upper() if value[-1:] == "z" else value)
    except ValueError:
        raise _LineError(f"ts is not an ISO 8601 time: {value!r}") from None
    offset = parsed.utcoffset()
    if offset is None:
        raise _LineError(f"ts has no UTC offset: {value!r}")
    if offset != _ZERO:
        return parsed.astimezone(UTC)
    return parsed if parsed.tzinfo is UTC else parsed.replace(tzinfo=UTC)


def _reject_constant(name: str) -> object:
    raise _LineError(f"{name} is not a number")


def _load(raw: bytes) -> dict[str, Any]:
    data: object
    try:
        data = orjson.loads(raw)
        exact = not (isinstance(data, dict) and isinstance(data.get("amount"), float))
    except orjson.JSONDecodeError:
        exact = False  # also integers beyond 64 bits, which the stdlib reads exactly
    if not exact:
        try:
            data = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
        except ValueError as exc:
            raise _LineError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _LineError("not a JSON object")
    return data


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise _LineError(f"missing field {name!r}")
    if not isinstance(value, str) or not value.strip():
        raise _LineError(f"field {name!r} is not a non-empty string")
    return value


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _LineError(f"field {name!r} is not a string")
    return value or None


def _usd(value: object) -> Decimal | None:
    if value is None:
        return None
    if type(value) is float and math.isfinite(value):
        return Decimal(repr(value))
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _LineError(f"usd_value is not a number: {value!r}") from None
    if not number.is_finite():
        raise _LineError(f"usd_value is not finite: {value!r}")
    return number


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for a replay; it finds nothing there and costs a tenth.

    The replay makes no reference cycles (refcounting frees everything it drops: a test checks
    that a backtest leaves no cyclic garbage), but the collector would still walk the wallet
    states' millions of objects again and again as they grow. What exists before the replay is
    frozen out of later collections too.
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.isspace():
                yield number, raw


class _ApprovalLine(msgspec.Struct):
    """A ledger.jsonl line as msgspec reads it when every field has its usual type."""

    ts: str
    chain: str
    asset: str
    to: str
    amount: str | int
    tx_hash: str | None = None


_decode_approval = msgspec.json.Decoder(_ApprovalLine).decode


class _ApprovalTime(msgspec.Struct):
    """Only the time of a ledger.jsonl line (to check the file's order)."""

    ts: datetime


_decode_approval_time = msgspec.json.Decoder(_ApprovalTime).decode


def _approval_epoch(raw: bytes) -> float:
    """A ledger line's time; the whole line is read (and checked) only when msgspec cannot read
    its ``ts`` as an RFC 3339 time with an offset."""
    try:
        when = _decode_approval_time(raw).ts
    except msgspec.DecodeError:
        return _read_approval(raw).epoch
    if when.tzinfo is None:
        return _read_approval(raw).epoch  # refused there: no UTC offset
    return when.timestamp()


@contextmanager
def time_ordered_ledger(path: Path | None) -> Iterator[Path | None]:
    """The ledger file itself when its lines are in time order, else a copy sorted by time.

    The backtest hands approvals over as the transfers' time passes, reading the ledger in
    order: an approval read early (its line before earlier ones) would hold back every later
    line, and the payments they approve would freeze their wallets. The contract does not say
    the ledger is in time order (an export sorted by withdrawal id, or one chain after another,
    is not), so a file that is not is sorted, stably, into a temporary copy that lives as long
    as the context; a warning names the first line out of order. Every line of such a file is
    checked first, so errors still name the file's own lines.

    Raises:
        BacktestInputError: a line whose time cannot be read (or, for a file out of order, any
            malformed line).
    """
    if path is None:
        yield None
        return
    previous = -math.inf
    disorder: tuple[int, float] | None = None
    for number, raw in read_lines(path):
        try:
            when = _approval_epoch(raw)
        except _LineError as exc:
            raise BacktestInputError(str(path), number, str(exc)) from None
        if when < previous:
            disorder = (number, previous - when)
            break
        previous = when
    if disorder is None:
        yield path
        return
    number, behind = disorder
    log.warning(
        "%s is not in time order (line %d is %.0f s before the line above it): its approvals "
        "are read in time order",
        path,
        number,
        behind,
    )
    lines: list[tuple[float, int, bytes]] = []
    for number, raw in read_lines(path):
        try:
            approval = _read_approval(raw)
        except _LineError as exc:
            raise BacktestInputError(str(path), number, str(exc)) from None
        lines.append((approval.epoch, number, raw if raw.endswith(b"\n") else raw + b"\n"))
    lines.sort(key=lambda line: line[:2])
    with tempfile.TemporaryDirectory(prefix="drainwatch-ledger-") as directory:
        ordered = Path(directory) / path.name
        with ordered.open("wb") as out:
            out.writelines(raw for _, _, raw in lines)
        del lines
        yield ordered


def _approvals(path: Path) -> Iterator[Approval]:
    """The ledger file's approvals in file order; a malformed line raises BacktestInputError."""
    for number, raw in read_lines(path):
        try:
            approval = _read_approval(raw)
        except _LineError as exc:
            raise BacktestInputError(str(path), number, str(exc)) from None
        yield approval


class LedgerFeed:
    """The ledger file's approvals, handed to an engine as the transfers' time goes by.

    Approvals precede their transfers, give or take a little clock skew: before each transfers
    line, every approval up to ``lookahead_s`` after the line's time is handed over (in file
    order: the file is in time order, or a sorted copy of it, :func:`time_ordered_ledger`).
    ``skip`` leaves out the first approvals (handed over already by a split run).

    Raises:
        BacktestInputError: from :meth:`hand_over` or :meth:`finish`, at a malformed ledger line.
    """

    def __init__(
        self, path: Path | None, engine: DetectionEngine, lookahead_s: float, skip: int = 0
    ) -> None:
        self.engine = engine
        self.lookahead_s = lookahead_s
        self.path = path
        self._approvals = _approvals(path) if path is not None else iter(())
        self.named: set[tuple[str, str]] = set()
        """(chain, asset) of every approval read so far."""
        for _ in range(skip):
            skipped = next(self._approvals)
            self.named.add((skipped.chain, skipped.asset))
        self.handed = skip
        """Approvals handed over so far."""
        self._pending = next(self._approvals, None)
        self._pending_at = self._pending.epoch if self._pending is not None else 0.0

    def hand_over(self, when: float) -> Sequence[Alert]:
        """Hand over the approvals due before a transfers line of time ``when``; the alerts
        they raise (an approval that explains a payment already flagged: one naming its tx
        hash, made after it)."""
        pending = self._pending
        if pending is None:
            return ()
        horizon = when + self.lookahead_s
        if self._pending_at > horizon:
            return ()
        process_approval = self.engine.process_approval
        approvals = self._approvals
        pending_at = self._pending_at
        named = self.named
        raised: list[Alert] = []
        while pending is not None and pending_at <= horizon:
            alerts = process_approval(pending)
            if alerts:
                raised += alerts
            named.add((pending.chain, pending.asset))
            self.handed += 1
            pending = next(approvals, None)
            pending_at = pending.epoch if pending is not None else 0.0
        self._pending, self._pending_at = pending, pending_at
        return raised

    def finish(self) -> int:
        """Read the rest, so that a malformed tail is still reported; the approvals in all."""
        if self._pending is None:
            return self.handed
        rest = itertools.chain((self._pending,), self._approvals)
        return self.handed + tally_approvals(rest, self.named)


def tally_approvals(approvals: Iterable[Approval], named: set[tuple[str, str]]) -> int:
    """Count ``approvals`` (reading them all: a malformed line raises), adding each one's
    (chain, asset) to ``named``."""
    count = 0
    for approval in approvals:
        named.add((approval.chain, approval.asset))
        count += 1
    return count


def _epoch(ts: object) -> float:
    """:func:`parse_ts` as seconds since 1970, the usual "Z" time read without its checks."""
    if isinstance(ts, str) and ts[-1:] == "Z":
        with suppress(ValueError):
            return datetime.fromisoformat(ts).timestamp()  # "Z": UTC, like parse_ts
    return parse_ts(ts).timestamp()


def line_time(raw: bytes, line: TransferLine | None) -> float | None:
    """A transfers line's time as :meth:`Replay.parse` reads it (``line``: the line read by
    :func:`decode_line`, if it could be); None if it has no time the contract accepts."""
    try:
        return _epoch(line.ts if line is not None else _load(raw).get("ts"))
    except _LineError:
        return None


def _read_approval(raw: bytes) -> Approval:
    """One ledger.jsonl line: msgspec reads the usual ones, like :meth:`Replay.parse`; anything
    unusual goes through :func:`_read_approval_checked`."""
    try:
        line = _decode_approval(raw)
    except msgspec.DecodeError:
        return _read_approval_checked(raw)
    chain, asset, to = line.chain, line.asset, line.to
    try:
        when = _epoch(line.ts)
        units, decimals = parse_amount(line.amount)
    except _LineError:  # the checking reader names the first thing wrong, in its order
        return _read_approval_checked(raw)
    if not (
        chain and not chain.isspace() and asset and not asset.isspace() and to and not to.isspace()
    ):
        return _read_approval_checked(raw)
    return _approval(when, chain, asset, to, units, decimals, line.tx_hash or None)


def _read_approval_checked(raw: bytes) -> Approval:
    """:func:`_read_approval` for any line: every field checked, a :class:`_LineError` when
    wrong."""
    data = _load(raw)
    when = _epoch(data.get("ts"))
    chain, asset, to = _text(data, "chain"), _text(data, "asset"), _text(data, "to")
    if "amount" not in data:
        raise _LineError("missing field 'amount'")
    units, decimals = parse_amount(data["amount"])
    tx_hash = _optional_text(data, "tx_hash")
    return _approval(when, chain, asset, to, units, decimals, tx_hash)


def _approval(  # noqa: PLR0917 - the fields of one line
    when: float, chain: str, asset: str, to: str, units: int, decimals: int, tx_hash: str | None
) -> Approval:
    return Approval(
        when, chain, asset, normalize_address(to), Decimal(f"{units}E-{decimals}"), tx_hash
    )


def spellings(config: Config) -> dict[str, str]:
    """Wallet key -> the address as the config writes it (the first entry's, if listed twice).

    Alert lines name wallets this way, like their chains: a checksummed EVM address in the
    config is matched in any case, and the alert names it exactly as the config does.
    """
    return {
        key: entries[0].spelled_address for key, entries in wallets_by_key(config.wallets).items()
    }


def alert_record(alert: Alert, spelled: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The alerts.jsonl object of one alert (the contract's fields first).

    ``spelled`` (see :func:`spellings`) gives the wallet's address as the config writes it.
    """
    wallet = alert.wallet
    if spelled is not None:
        wallet = spelled.get(wallet_key(alert.chain, wallet), wallet)
    return {
        "ts": alert.time.isoformat().replace("+00:00", "Z"),
        "chain": alert.chain,
        "wallet": wallet,
        "severity": alert.severity.value,
        "detector": alert.detector,
        "freeze": alert.freeze,
        "tx_hashes": list(alert.tx_hashes),
        "summary": alert.summary,
        "id": alert.id,
        "wallet_label": alert.wallet_label,
        "shadow": alert.shadow,
        "incident_id": alert.incident_id,
        "transfer_ids": list(alert.transfer_ids),
        "metrics": alert.metrics,
    }


class Replay:
    """Lines in, moves out, moves judged: one run's reader and engine.

    Args:
        config: The wallets.
        engine: The detection engine the moves go to.
        only: Judge only these wallets' transfers (``(chain slug case-folded, address)`` keys);
            by default every configured wallet's.
    """

    def __init__(
        self,
        config: Config,
        engine: DetectionEngine,
        *,
        only: set[tuple[str, str]] | None = None,
    ) -> None:
        self.engine = engine
        self._wallets: dict[tuple[str, str], WalletConfig] = {
            key: w
            for w in config.wallets
            if (key := (w.chain.casefold(), w.address)) in (only if only is not None else {key})
        }
        self._chains: dict[str, str] = {}
        self._listed = frozenset(w.address for w in config.wallets)
        self.elsewhere: dict[str, set[str]] = {}
        """Listed addresses seen on a line whose chain lists no wallet there: those chains."""

    def parse(self, number: int, raw: bytes) -> tuple[float, list[Move]]:
        """One transfers.jsonl line: its time (epoch seconds) and the watched wallets' moves.

        msgspec reads well-formed lines straight into typed fields; anything unusual (a JSON
        number as amount, padded addresses, an odd time) goes through :meth:`_parse_checked`,
        which accepts everything the contract allows and names what is wrong otherwise.
        """
        try:
            line = decode_line(raw)
        except msgspec.DecodeError:
            return self._parse_checked(number, raw)
        return self.parse_decoded(number, raw, line)

    def parse_decoded(
        self, number: int, raw: bytes, line: TransferLine
    ) -> tuple[float, list[Move]]:
        """:meth:`parse` for a line already read by :func:`decode_line` (a split run's worker
        reads each line once to route it)."""
        # The time and the amount are read inline (the usual cases of _epoch and parse_amount):
        # this runs for every watched line, and the calls would cost more than the reading.
        ts = line.ts
        if ts[-1:] != "Z":
            return self._parse_checked(number, raw)
        try:
            when = datetime.fromisoformat(ts).timestamp()  # "Z": UTC, like parse_ts
        except ValueError:
            return self._parse_checked(number, raw)
        amount = line.amount
        if isinstance(amount, str):
            whole, _, frac = amount.partition(".")
            digits = whole + frac
            if not (whole and digits.isascii() and digits.isdigit()):
                return self._parse_checked(number, raw)
            units, decimals = int(digits), len(frac)
        elif amount >= 0:
            units, decimals = amount, 0
        else:
            return self._parse_checked(number, raw)
        chain, asset, sender, receiver = line.chain, line.asset, line.sender, line.to
        if not (
            sender.isalnum()
            and receiver.isalnum()
            and chain
            and not chain.isspace()
            and asset
            and not asset.isspace()
        ):
            return self._parse_checked(number, raw)
        # Letters and digits (checked above): only a hex address with capitals needs normalising
        # (normalize_address, inlined for the common case: most addresses are seen once).
        if sender.startswith(HEX_PREFIXES) and not sender.islower():
            sender = normalize_address(sender)
        if receiver.startswith(HEX_PREFIXES) and not receiver.islower():
            receiver = normalize_address(receiver)
        return when, self._moves(
            number,
            raw,
            when,
            chain,
            asset,
            sender,
            receiver,
            units,
            decimals,
            line.tx_hash,
        )

    def _parse_checked(self, number: int, raw: bytes) -> tuple[float, list[Move]]:
        """:meth:`parse` for any line: every field checked, a :class:`_LineError` when wrong."""
        data = _load(raw)
        when = parse_ts(data.get("ts")).timestamp()
        chain = data.get("chain")
        if type(chain) is not str or not chain:
            chain = _text(data, "chain")
        asset = data.get("asset")
        if type(asset) is not str or not asset:
            asset = _text(data, "asset")
        # Letters and digits only: nothing to strip; an EVM address is lower-cased.
        sender = normalize_address(_text(data, "from"))
        receiver = normalize_address(_text(data, "to"))
        if "amount" not in data:
            raise _LineError("missing field 'amount'")
        units, decimals = parse_amount(data["amount"])
        usd = data.get("usd_value")
        if usd is not None and (type(usd) is not float or not math.isfinite(usd)):
            _usd(usd)  # raises unless it is a number
        tx_hash = data.get("tx_hash")
        if tx_hash is not None and type(tx_hash) is not str:
            tx_hash = _optional_text(data, "tx_hash")
        return when, self._moves(
            number, raw, when, chain, asset, sender, receiver, units, decimals, tx_hash
        )

    def _moves(  # noqa: PLR0917 - the fields of one line, positional for the hot path
        self,
        number: int,
        raw: bytes,
        when: float,
        chain: str,
        asset: str,
        sender: str,
        receiver: str,
        units: int,
        decimals: int,
        tx_hash: str | None,
    ) -> list[Move]:
        """The moves of the watched wallets a checked line touches (none, one or two)."""
        chain_key = self._chains.get(chain)
        if chain_key is None:
            chain_key = self._chains[chain] = chain.casefold()
        wallets = self._wallets
        out_wallet = wallets.get((chain_key, sender))
        in_wallet = wallets.get((chain_key, receiver))
        if out_wallet is None and in_wallet is None:
            listed = self._listed
            if sender in listed or receiver in listed:
                # A listed address under a chain the config does not pair it with (a chain
                # named "eth" in the config and "ethereum" in the file): said at the end.
                for address in (sender, receiver):
                    if address in listed:
                        self.elsewhere.setdefault(address, set()).add(chain)
            return []
        if not tx_hash:
            tx_hash = "pseudo:" + event_id("line", number, raw.strip().decode("utf-8", "replace"))
        moves = []
        if out_wallet is not None:
            moves.append(
                Move(
                    out_wallet.chain, sender, _OUT, receiver, asset, units, decimals, tx_hash, when
                )
            )
        if in_wallet is not None:
            moves.append(
                Move(in_wallet.chain, receiver, _IN, sender, asset, units, decimals, tx_hash, when)
            )
        return moves

    def judge(self, move: Move) -> list[Alert]:
        """The alerts one move raises, detected at its own (event) time."""
        return self.engine.process(move, at_event_time=True)


def line_error(path: Path, number: int, exc: ValueError) -> BacktestInputError:
    """The error naming file and line for a reason :meth:`Replay.parse` raised."""
    return BacktestInputError(str(path), number, str(exc))


def watched_moves(config: Config, path: Path) -> list[tuple[float, list[Move]]]:
    """The lines of a transfers file that move a watched wallet: each one's time and moves, as
    a backtest reads them, for a caller that judges them its own way (restarting the engine,
    saving its state).

    Raises:
        BacktestInputError: a line breaks the contract (the error names file and line).
    """
    replay = Replay(config, DetectionEngine(config))
    out: list[tuple[float, list[Move]]] = []
    for number, raw in read_lines(path):
        try:
            when, moves = replay.parse(number, raw)
        except _LineError as exc:
            raise line_error(path, number, exc) from None
        if moves:
            out.append((when, moves))
    return out


def run_backtest(
    config: Config,
    transfers_path: str | Path,
    ledger_path: str | Path | None,
    alerts_out: str | Path,
    progress: bool = False,
    *,
    engine: DetectionEngine | None = None,
    ledger_lookahead_s: float = 120.0,
    workers: int | None = None,
) -> BacktestSummary:
    """Replay a transfers file (and optionally a ledger) and write the alerts; see the module doc.

    ``workers`` processes split the wallets between them (default: one per CPU core) when the
    result is certain to be the same as one process's (see :mod:`detectors.partitioned`), with a
    ledger too; with a given ``engine`` the run is always one process.

    Raises:
        BacktestInputError: a line breaks the contract (the error names file and line).
        BacktestFileError: an input cannot be read or the alerts file cannot be written (checked
            before anything is judged).
    """
    started = time.perf_counter()
    transfers_path = Path(transfers_path)
    check_files([transfers_path, ledger_path], [alerts_out])
    count = min(workers or os.cpu_count() or 1, len({w.key for w in config.wallets}))
    with time_ordered_ledger(None if ledger_path is None else Path(ledger_path)) as ledger:
        if engine is None and count > 1:
            from detectors.partitioned import run_parts

            split = run_parts(
                config,
                transfers_path,
                count,
                progress=progress,
                ledger=ledger,
                ledger_lookahead_s=ledger_lookahead_s,
            )
            if split.resume_line is None:
                with Path(alerts_out).open("wb") as out:
                    out.writelines(line + b"\n" for line, _ in split.alerts)
                if split.error is not None:
                    raise split.error
                # Read the whole ledger, like one process, so that a malformed tail is reported.
                named: set[tuple[str, str]] = set()
                ledger_entries = tally_approvals(_approvals(ledger) if ledger else (), named)
                return BacktestSummary(
                    transfers_read=split.read,
                    watched_transfers=split.watched,
                    ledger_entries=ledger_entries,
                    alerts=len(split.alerts),
                    freezes=sum(freeze for _, freeze in split.alerts),
                    elapsed_s=time.perf_counter() - started,
                    unseen_wallets=unseen_wallets(config, split.seen, split.elsewhere),
                    unpayable_approvals=unpayable_approvals(config, named),
                )
            # Wallets alerted together from this round on: correlation may matter, so the rest of
            # the file is judged in one process, from the joined state of the round's start.
            assert split.engine is not None
            engine = split.engine
            settled = _Settled(
                split.resume_line,
                split.alerts,
                split.read,
                split.watched,
                split.elsewhere,
                split.approvals,
            )
        else:
            settled = None
        return _run_sequential(
            config,
            transfers_path,
            ledger,
            Path(alerts_out),
            progress,
            engine or DetectionEngine(config, reconcile=ledger_path is not None),
            ledger_lookahead_s,
            started,
            settled=settled,
        )


def check_files(
    read: Iterable[str | Path | None] = (), write: Iterable[str | Path | None] = ()
) -> None:
    """Raise :class:`BacktestFileError` unless each of ``read`` can be read and each of
    ``write`` written (``None`` entries are skipped: an optional file not given).

    A file to write is opened for appending, so an existing one is left as it is until the run
    writes it.

    >>> check_files(["/no/t.jsonl", None], ["alerts.jsonl"])
    Traceback (most recent call last):
    ...
    detectors.errors.BacktestFileError: /no/t.jsonl: cannot read: No such file or directory
    """
    for paths, mode, action in ((read, "rb", "cannot read"), (write, "ab", "cannot write")):
        for path in paths:
            if path is None:
                continue
            try:
                with Path(path).open(mode):
                    pass
            except OSError as exc:
                raise BacktestFileError(str(path), action, exc.strerror or str(exc)) from exc


@dataclass(frozen=True)
class _Settled:
    """What a split run settled before handing over: lines before ``line`` and their alerts."""

    line: int
    alerts: list[tuple[bytes, bool]]
    read: int
    watched: int
    elsewhere: dict[str, set[str]]
    approvals: int = 0
    """Approvals the joined engine has learned (the ledger file's first ones)."""


def unseen_wallets(
    config: Config, seen: set[str], elsewhere: dict[str, set[str]]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The listed wallets (by name) whose key is not in ``seen``, each with the chains the file
    named its address with (:attr:`Replay.elsewhere`); each is logged as a warning.

    A wallet no transfer touched is judged by nothing: a cold wallet may rest for a month, but a
    chain or an address spelled one way in the config and another in the file looks the same.
    """
    out: list[tuple[str, tuple[str, ...]]] = []
    for key, entries in wallets_by_key(config.wallets).items():
        if key in seen:
            continue
        wallet = entries[0]
        names = " / ".join(dict.fromkeys(e.name for e in entries))
        chains = tuple(sorted(elsewhere.get(wallet.address, ())))
        hint = (
            f"; its address is in the file with chain {', '.join(map(repr, chains))}, not "
            f"{wallet.chain!r}: check the config's chain"
            if chains
            else ""
        )
        log.warning("wallet %s (%s) is in no transfer of the file%s", names, key, hint)
        out.append((names, chains))
    return tuple(out)


def unpayable_approvals(config: Config, named: set[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The (chain, asset) pairs of ``named`` (the ledger's approvals) that no listed wallet pays,
    each logged as a warning.

    Such an approval explains no payment, and when the ledger spells a chain or an asset
    otherwise than the config and the transfers ("eth" for "ethereum"), every payment of that
    wallet goes unexplained: each would freeze it.
    """
    paid = {
        (w.chain.casefold(), None if w.asset is None else normalize_address(w.asset).casefold())
        for w in config.wallets
    }
    out = []
    for chain_name, asset in sorted(named):
        folded = chain_name.casefold()
        if (folded, None) in paid or (folded, normalize_address(asset).casefold()) in paid:
            continue
        log.warning(
            "ledger approvals name chain %r and asset %r, which no listed wallet pays: they "
            "explain no payment (check the ledger's chain and asset names against the config)",
            chain_name,
            asset,
        )
        out.append((chain_name, asset))
    return tuple(out)


def _run_sequential(  # noqa: PLR0917
    config: Config,
    transfers_path: Path,
    ledger_path: Path | None,
    alerts_out: Path,
    progress: bool,
    engine: DetectionEngine,
    ledger_lookahead_s: float,
    started: float,
    *,
    settled: _Settled | None = None,
) -> BacktestSummary:
    feed = LedgerFeed(
        ledger_path, engine, ledger_lookahead_s, settled.approvals if settled is not None else 0
    )
    read = watched = alerts = freezes = 0
    first = 1
    bar = ProgressBar(transfers_path) if progress else None
    replay = Replay(config, engine)
    spelled = spellings(config)
    with alerts_out.open("wb") as out, collector_paused():
        if settled is not None:
            first, read, watched = settled.line, settled.read, settled.watched
            replay.elsewhere = settled.elsewhere
            out.writelines(line + b"\n" for line, _ in settled.alerts)
            alerts, freezes = len(settled.alerts), sum(f for _, f in settled.alerts)

        def emit(raised: Iterable[Alert]) -> None:
            nonlocal alerts, freezes
            for alert in raised:
                out.write(orjson.dumps(alert_record(alert, spelled)) + b"\n")
                alerts += 1
                freezes += alert.freeze

        for number, raw in read_lines(transfers_path):
            if number < first:
                continue
            read += 1
            try:
                when, moves = replay.parse(number, raw)
            except _LineError as exc:
                raise line_error(transfers_path, number, exc) from None
            raised = feed.hand_over(when)
            if raised:
                emit(raised)
            if moves:
                watched += 1
                for move in moves:
                    raised = replay.judge(move)
                    if raised:
                        emit(raised)
            if bar is not None:
                bar.advance(len(raw))
        ledger_entries = feed.finish()
    if bar is not None:
        bar.close()
    return BacktestSummary(
        transfers_read=read,
        watched_transfers=watched,
        ledger_entries=ledger_entries,
        alerts=alerts,
        freezes=freezes,
        elapsed_s=time.perf_counter() - started,
        unseen_wallets=unseen_wallets(config, engine.wallets_seen(), replay.elsewhere),
        unpayable_approvals=unpayable_approvals(config, feed.named),
    )


class ProgressBar:
    """A rich progress bar over the bytes of the input, updated every few thousand lines."""

    def __init__(self, path: Path) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=False)
        self._progress.start()
        self._task = self._progress.add_task(f"backtest {path.name}", total=path.stat().st_size)
        self._lines = 0
        self._bytes = 0

    def advance(self, size: int) -> None:
        """Count one line of ``size`` bytes."""
        self._lines += 1
        self._bytes += size
        if self._lines % _PROGRESS_EVERY == 0:
            self._progress.advance(self._task, self._bytes)
            self._bytes = 0

    def show(self, completed: int) -> None:
        """Set the bytes done (a run in worker processes reports them this way)."""
        self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        self._progress.advance(self._task, self._bytes)
        self._progress.stop()
