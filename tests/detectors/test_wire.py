"""The detector's bus reader: canonical events read fast, the rest exactly as pydantic does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from detectors.move import Move
from detectors.wire import read_transfer
from drainwatch.events import DecodeError, Direction, Transfer, TransferStatus

T0 = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def _transfer(**overrides: object) -> Transfer:
    fields: dict[str, object] = {
        "chain": "ethereum",
        "wallet": "0x" + "a" * 40,
        "direction": Direction.OUT,
        "counterparty": "0x" + "b" * 40,
        "asset": "ETH",
        "amount": 10**20,
        "decimals": 18,
        "tx_hash": "0x" + "c" * 64,
        "position": 3,
        "time": T0,
    }
    fields.update(overrides)
    return Transfer.create(**fields)


CANONICAL = [
    _transfer(),
    _transfer(amount=10**40, balance_after=7, usd_value="12.50", block_number=9),
    _transfer(time=T0 + timedelta(microseconds=123456), status=TransferStatus.PENDING),
    _transfer(direction=Direction.IN, counterparties=("a", "b"), decimals=0),
    _transfer(status=TransferStatus.RETRACTED, block_hash="0xdd"),
]
BASE = orjson.loads(CANONICAL[1].to_json())
BENDS: list[tuple[str, object]] = [
    ("amount", 5),
    ("amount", "05"),
    ("amount", "5.0"),
    ("amount", "-5"),
    ("amount", "1_000"),
    ("amount", " 5"),
    ("amount", "\u0665"),  # an Arabic-Indic five: a digit, but not ASCII
    ("decimals", "18"),
    ("decimals", 256),
    ("decimals", 18.0),
    ("position", -1),
    ("time", "2024-05-01T09:30:00+09:00"),
    ("time", "2024-05-01T09:30:00"),
    ("time", "2024-05-01 09:30:00Z"),
    ("time", "2024-05-01T09:30:60Z"),
    ("time", "2024-02-30T09:30:00Z"),
    ("time", "2024-05-01T09:30:00.1234567Z"),
    ("time", 1714555800),
    ("usd_value", 12.5),
    ("usd_value", "NaN"),
    ("usd_value", "1e3"),
    ("usd_value", " 1"),
    ("usd_value", "cheap"),
    ("balance_after", "-1"),
    ("balance_after", 3),
    ("direction", "OUT"),
    ("status", "lost"),
    ("id", 7),
    ("block_number", "9"),
    ("counterparties", ["a", 1]),
    ("extra_field", {"x": 1}),
]
PAYLOADS = [t.to_json() for t in CANONICAL] + [
    orjson.dumps({**BASE, name: value}) for name, value in BENDS
]
PAYLOADS += [orjson.dumps({k: v for k, v in BASE.items() if k != "tx_hash"}), b"[1]", b"{"]

VIEW_FIELDS = (
    "id",
    "chain",
    "wallet",
    "direction",
    "counterparty",
    "asset",
    "amount",
    "decimals",
    "tx_hash",
    "time",
    "epoch",
    "status",
    "balance_after",
    "dedup_key",
)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_reader_agrees_with_the_model(payload: bytes) -> None:
    try:
        expected: Transfer | None = Transfer.model_validate_json(payload, extra="ignore")
    except ValidationError:
        expected = None
    if expected is None:
        with pytest.raises(DecodeError):
            read_transfer(payload)
        return
    got = read_transfer(payload)
    assert {f: getattr(got, f) for f in VIEW_FIELDS} == {
        f: getattr(expected, f) for f in VIEW_FIELDS
    }


def test_what_our_writers_write_takes_the_fast_path() -> None:
    assert all(type(read_transfer(t.to_json())) is Move for t in CANONICAL)
    assert type(read_transfer(orjson.dumps({**BASE, "amount": 5}))) is Transfer
