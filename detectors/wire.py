"""Transfer events read off the bus straight into lean :class:`~detectors.move.Move` records.

The detector reads every transfer the watchers publish; pydantic's full model costs it more than
judging the transfer does. Events in the canonical form our writers produce (amounts and balances
as digit strings, times as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``) are read by msgspec into exactly
what the engine needs; anything else (a number for an amount, another offset, an unknown status)
goes to :func:`drainwatch.events.decode`, which accepts what the contract allows and raises
:class:`~drainwatch.events.DecodeError` (the message is dead-lettered) otherwise. The fields the
engine does not read (block, USD value, all counterparties) are still checked for their types.

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Direction, Transfer
>>> t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty="X",
...     asset="XEM", amount=10**30, decimals=6, tx_hash="h", position=0,
...     time=datetime(2018, 1, 25, 15, 2, tzinfo=UTC), balance_after=5)
>>> m = read_transfer(t.to_json())
>>> (m.id, m.amount, m.time, m.balance_after) == (t.id, t.amount, t.time, t.balance_after)
True
>>> odd = t.to_json().replace(b'"decimals":6', b'"decimals":"6"')  # pydantic reads this one
>>> type(m).__name__, type(read_transfer(odd)).__name__
('Move', 'Transfer')
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final

import msgspec

from detectors.move import Move, TransferView
from drainwatch.events import TRANSFERS, Direction, Transfer, TransferStatus, decode

__all__ = ["read_transfer"]

_U8 = Annotated[int, msgspec.Meta(ge=0, le=255)]
_NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class _Wire(msgspec.Struct):
    """A transfer event with every field of :class:`~drainwatch.events.Transfer` type-checked."""

    id: str
    chain: str
    wallet: str
    direction: Direction
    counterparty: str
    asset: str
    amount: str
    decimals: _U8
    tx_hash: str
    position: _NonNegative
    time: str
    status: TransferStatus = TransferStatus.CONFIRMED
    block_number: int | None = None
    block_hash: str | None = None
    usd_value: str | None = None
    balance_after: str | None = None
    counterparties: tuple[str, ...] = ()


_read_wire = msgspec.json.Decoder(_Wire).decode
_CANONICAL_TIME: Final = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", re.ASCII
).fullmatch


def _digits(text: str | None) -> int | None:
    if text is not None and text.isdigit() and text.isascii():
        return int(text)
    return None


def _usd_ok(text: str | None) -> bool:
    if text is None:
        return True
    try:
        return Decimal(text).is_finite() and text.strip() == text
    except InvalidOperation:
        return False


def read_transfer(payload: bytes) -> TransferView:
    """The transfer event in ``payload``, as a :class:`Move` when it is in canonical form.

    Raises:
        DecodeError: the event is malformed (the stage dead-letters it).
    """
    try:
        wire = _read_wire(payload)
    except msgspec.DecodeError:
        return decode(TRANSFERS, payload, Transfer)
    amount = _digits(wire.amount)
    after = _digits(wire.balance_after)
    ts = wire.time
    if (
        amount is None
        or (after is None and wire.balance_after is not None)
        or not _CANONICAL_TIME(ts)
        or not _usd_ok(wire.usd_value)
    ):
        return decode(TRANSFERS, payload, Transfer)
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:  # the right shape, an impossible date
        return decode(TRANSFERS, payload, Transfer)
    return Move(
        wire.chain,
        wire.wallet,
        wire.direction,
        wire.counterparty,
        wire.asset,
        amount,
        wire.decimals,
        wire.tx_hash,
        when.timestamp(),
        status=wire.status,
        balance_after=after,
        event_id=wire.id,
        time=when,
    )
