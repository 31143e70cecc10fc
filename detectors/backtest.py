"""The backtest: replay ``transfers.jsonl`` (and a ledger) through the live detectors.

It runs in event time; the file formats are the contract of DESIGN.md section 4. Each line
becomes one :class:`~drainwatch.events.Transfer` per watched wallet it touches (an outflow when
``from`` is the wallet, an inflow when ``to`` is); lines touching no watched wallet are counted
and skipped.
Ledger lines are merged in by time and reach the engine as approved withdrawals. Alerts go out one
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
'40% of nem-hot drained at once to 1 new address; at this rate empty in 2 min'
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from hashlib import sha256
from pathlib import Path
from typing import IO, Any, Final

import orjson

from detectors.base import to_units
from detectors.engine import DetectionEngine
from detectors.errors import BacktestInputError
from drainwatch.config import Config, WalletConfig
from drainwatch.events import (
    Alert,
    ApprovedWithdrawal,
    Direction,
    Transfer,
    event_id,
    normalize_address,
)

__all__ = [
    "BacktestSummary",
    "alert_record",
    "parse_amount",
    "parse_ts",
    "run_backtest",
    "trusted_transfer",
]

_PROGRESS_EVERY: Final = 8192
_NUMBER_TYPES: Final = (str, int, float, Decimal)
_ZERO: Final = timedelta(0)
_HEX: Final = ("0x", "0X")


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

    @property
    def transfers_per_s(self) -> float:
        """Lines read per second of wall time."""
        return self.transfers_read / self.elapsed_s if self.elapsed_s > 0 else 0.0


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
    """An ISO 8601 UTC time; naive or non-UTC times are refused.

    >>> parse_ts("2018-01-25T15:02:00Z")
    datetime.datetime(2018, 1, 25, 15, 2, tzinfo=datetime.timezone.utc)
    >>> parse_ts("2018-01-25T15:02:00")
    Traceback (most recent call last):
    ...
    detectors.backtest._LineError: ts has no UTC offset: '2018-01-25T15:02:00'
    """
    if not isinstance(value, str):
        raise _LineError(f"ts is not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _LineError(f"ts is not an ISO 8601 time: {value!r}") from None
    offset = parsed.utcoffset()
    if offset is None:
        raise _LineError(f"ts has no UTC offset: {value!r}")
    if offset != _ZERO:
        raise _LineError(f"ts is not UTC: {value!r}")
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


_TRANSFER_DEFAULTS: Final = {
    name: info.get_default(call_default_factory=True)
    for name, info in Transfer.model_fields.items()
    if not info.is_required()
}


def trusted_transfer(values: dict[str, Any]) -> Transfer:
    """A Transfer from values already checked here; fields not given take their defaults.

    ``Transfer.model_construct`` does the same but looks up each field's default on every call,
    which dominated the backtest's profile.

    >>> from datetime import UTC, datetime
    >>> values = {"id": "i", "chain": "nem", "wallet": "W", "direction": Direction.OUT,
    ...     "counterparty": "X", "asset": "XEM", "amount": 5, "decimals": 0, "tx_hash": "h",
    ...     "position": 0, "time": datetime(2018, 1, 25, tzinfo=UTC)}
    >>> trusted_transfer(dict(values)) == Transfer.model_validate(values)
    True
    """
    transfer = Transfer.__new__(Transfer)
    object.__setattr__(transfer, "__pydantic_fields_set__", set(values))
    object.__setattr__(transfer, "__dict__", _TRANSFER_DEFAULTS | values)
    object.__setattr__(transfer, "__pydantic_extra__", None)
    object.__setattr__(transfer, "__pydantic_private__", None)
    return transfer


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def _approvals(path: Path) -> Iterator[ApprovedWithdrawal]:
    for number, raw in _lines(path):
        try:
            data = _load(raw)
            when = parse_ts(data.get("ts"))
            chain, asset, to = _text(data, "chain"), _text(data, "asset"), _text(data, "to")
            if "amount" not in data:
                raise _LineError("missing field 'amount'")
            units, decimals = parse_amount(data["amount"])
            withdrawal = data.get("withdrawal_id")
            tx_hash = _optional_text(data, "tx_hash")
        except _LineError as exc:
            raise BacktestInputError(str(path), number, str(exc)) from None
        yield ApprovedWithdrawal.model_construct(
            id=event_id("ledger", chain, withdrawal if withdrawal is not None else number),
            time=when,
            chain=chain,
            asset=asset,
            to=normalize_address(to),
            amount=Decimal(f"{units}E-{decimals}"),
            wallet=None,
            tx_hash=tx_hash,
        )


def alert_record(alert: Alert) -> dict[str, Any]:
    """The alerts.jsonl object of one alert (the contract's fields first)."""
    return {
        "ts": alert.time.isoformat().replace("+00:00", "Z"),
        "chain": alert.chain,
        "wallet": alert.wallet,
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


class _Replay:
    """The state of one run: the engine, the output, the counters."""

    def __init__(self, config: Config, engine: DetectionEngine, out: IO[bytes]) -> None:
        self.engine = engine
        self.out = out
        self.alerts = 0
        self.freezes = 0
        self._wallets: dict[tuple[str, str], WalletConfig] = {
            (w.chain.casefold(), w.address): w for w in config.wallets
        }
        self._times: dict[str, datetime] = {}
        self._chains: dict[str, str] = {}

    def parse(  # noqa: PLR0915 - the hot path, kept in one frame on purpose
        self, number: int, raw: bytes
    ) -> tuple[datetime, list[Transfer]]:
        """One transfers.jsonl line: its time and the transfers of watched wallets in it."""
        data = _load(raw)
        # The fast path takes well-formed lines as they come; anything unusual goes through the
        # checking helpers, which also produce the error messages.
        ts = data.get("ts")
        if type(ts) is str and len(ts) == 20 and ts[19] == "Z":
            when = self._times.get(ts)
            if when is None:
                when = parse_ts(ts)
                if len(self._times) > 4096:
                    self._times.clear()
                self._times[ts] = when
        else:
            when = parse_ts(ts)
        chain = data.get("chain")
        if type(chain) is not str or not chain:
            chain = _text(data, "chain")
        asset = data.get("asset")
        if type(asset) is not str or not asset:
            asset = _text(data, "asset")
        sender = data.get("from")
        if type(sender) is not str or not sender or sender[0] == " " or sender[-1] == " ":
            sender = _text(data, "from")
        receiver = data.get("to")
        if type(receiver) is not str or not receiver or receiver[0] == " " or receiver[-1] == " ":
            receiver = _text(data, "to")
        if sender[:2] in _HEX or sender[-1:].isspace() or sender[:1].isspace():
            sender = normalize_address(sender)
        if receiver[:2] in _HEX or receiver[-1:].isspace() or receiver[:1].isspace():
            receiver = normalize_address(receiver)
        if "amount" not in data:
            raise _LineError("missing field 'amount'")
        units, decimals = parse_amount(data["amount"])
        usd = data.get("usd_value")
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, _NUMBER_TYPES)):
            raise _LineError(f"usd_value is not a number: {usd!r}")
        tx_hash = _optional_text(data, "tx_hash")
        chain_key = self._chains.get(chain)
        if chain_key is None:
            chain_key = self._chains[chain] = chain.casefold()
        wallets = self._wallets
        out_wallet = wallets.get((chain_key, sender))
        in_wallet = wallets.get((chain_key, receiver))
        if out_wallet is None and in_wallet is None:
            return when, []
        if tx_hash is None:
            tx_hash = "pseudo:" + event_id("line", number, raw.strip().decode("utf-8", "replace"))
        # Several outputs of one transaction must stay distinct transfers while an exact repeat
        # of a line collapses into the same id: derive the position from what the output is.
        position = zlib.crc32(f"{sender}|{receiver}|{asset}|{units}|{decimals}".encode())
        usd_value = _usd(usd)
        transfers = []
        for wallet, direction, counterparty in (
            (out_wallet, Direction.OUT, receiver),
            (in_wallet, Direction.IN, sender),
        ):
            if wallet is None:
                continue
            # Transfer.make_id, inlined: the same id, without re-normalising the address.
            transfer_id = sha256(
                f"{wallet.chain}|{tx_hash}|{position}|{wallet.address}|{direction}".encode()
            ).hexdigest()[:32]
            transfers.append(
                trusted_transfer(
                    {
                        "id": transfer_id,
                        "chain": wallet.chain,
                        "wallet": wallet.address,
                        "direction": direction,
                        "counterparty": counterparty,
                        "asset": asset,
                        "amount": units,
                        "decimals": decimals,
                        "tx_hash": tx_hash,
                        "position": position,
                        "time": when,
                        "usd_value": usd_value,
                    }
                )
            )
        return when, transfers

    def run(self, transfer: Transfer) -> None:
        """Judge one transfer and write its alerts."""
        for alert in self.engine.process(transfer, detected_at=transfer.time):
            self.out.write(orjson.dumps(alert_record(alert)) + b"\n")
            self.alerts += 1
            self.freezes += alert.freeze


def run_backtest(
    config: Config,
    transfers_path: str | Path,
    ledger_path: str | Path | None,
    alerts_out: str | Path,
    progress: bool = False,
    *,
    engine: DetectionEngine | None = None,
    ledger_lookahead_s: float = 120.0,
) -> BacktestSummary:
    """Replay a transfers file (and optionally a ledger) and write the alerts; see the module doc.

    Raises:
        BacktestInputError: a line breaks the contract (the error names file and line).
    """
    started = time.perf_counter()
    transfers_path = Path(transfers_path)
    if engine is None:
        engine = DetectionEngine(config, reconcile=ledger_path is not None)
    approvals = _approvals(Path(ledger_path)) if ledger_path is not None else iter(())
    pending = next(approvals, None)
    ledger_entries = 0
    lookahead = timedelta(seconds=ledger_lookahead_s)
    read = watched = 0
    bar = _ProgressBar(transfers_path) if progress else None
    path_text = str(transfers_path)
    with Path(alerts_out).open("wb") as out:
        replay = _Replay(config, engine, out)
        for number, raw in _lines(transfers_path):
            read += 1
            try:
                when, transfers = replay.parse(number, raw)
            except _LineError as exc:
                raise BacktestInputError(path_text, number, str(exc)) from None
            # Approvals precede their transfers, give or take a little clock skew: hand over
            # everything up to shortly after this line's time.
            horizon = when + lookahead
            while pending is not None and pending.time <= horizon:
                engine.process_approval(pending)
                ledger_entries += 1
                pending = next(approvals, None)
            if transfers:
                watched += 1
                for transfer in transfers:
                    replay.run(transfer)
            if bar is not None:
                bar.advance(len(raw))
        if pending is not None:  # read the rest, so a malformed tail is still reported
            ledger_entries += 1 + sum(1 for _ in approvals)
    if bar is not None:
        bar.close()
    return BacktestSummary(
        transfers_read=read,
        watched_transfers=watched,
        ledger_entries=ledger_entries,
        alerts=replay.alerts,
        freezes=replay.freezes,
        elapsed_s=time.perf_counter() - started,
    )


class _ProgressBar:
    """A rich progress bar over the bytes of the input, updated every few thousand lines."""

    def __init__(self, path: Path) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=False)
        self._progress.start()
        self._task = self._progress.add_task(f"backtest {path.name}", total=path.stat().st_size)
        self._lines = 0
        self._bytes = 0

    def advance(self, size: int) -> None:
        self._lines += 1
        self._bytes += size
        if self._lines % _PROGRESS_EVERY == 0:
            self._progress.advance(self._task, self._bytes)
            self._bytes = 0

    def close(self) -> None:
        self._progress.advance(self._task, self._bytes)
        self._progress.stop()
