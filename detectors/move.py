"""What detectors read of a transfer: :class:`TransferView`, and :class:`Move`, its lean form.

Live mode hands the engine :class:`~drainwatch.events.Transfer` events from the bus; the backtest's
hot path builds a :class:`Move` per watched transfer instead, which costs a tenth as much: the
event id and the aware ``time`` are derived only when an alert needs them. Both satisfy
:class:`TransferView`, the only thing detectors and the wallet state read.

``dedup_key`` identifies a transfer within one wallet's state (a repeated line or a redelivered
event has the same key); ``epoch`` is the event time in seconds since 1970 (UTC).

>>> from drainwatch.events import Direction, Transfer
>>> m = Move("nem", "HOT", Direction.OUT, "THIEF", "XEM", 400, 0, "a", 1516892520)
>>> m.time.isoformat(), m.dedup_key
('2018-01-25T15:02:00+00:00', ('a', 'THIEF', 'XEM', 400, 0, <Direction.OUT: 'out'>))
>>> t = Transfer.create(chain="nem", wallet="HOT", direction=Direction.OUT, counterparty="THIEF",
...     asset="XEM", amount=400, decimals=0, tx_hash="a", position=m.position, time=m.time)
>>> m.id == t.id
True
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Protocol

from drainwatch.events import Direction, Transfer, TransferStatus

__all__ = ["Move", "TransferView"]


class TransferView(Protocol):
    """The fields of a transfer the detectors and :class:`~detectors.base.WalletState` read."""

    @property
    def id(self) -> str: ...
    @property
    def dedup_key(self) -> Hashable: ...
    @property
    def chain(self) -> str: ...
    @property
    def wallet(self) -> str: ...
    @property
    def direction(self) -> Direction: ...
    @property
    def counterparty(self) -> str: ...
    @property
    def asset(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def decimals(self) -> int: ...
    @property
    def tx_hash(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def epoch(self) -> float: ...
    @property
    def status(self) -> TransferStatus: ...
    @property
    def balance_after(self) -> int | None: ...


class Move:
    """A confirmed transfer of a watched wallet, as the backtest reads it from a line.

    The position (which output of the transaction) is derived from what the output is, so
    several outputs of one transaction stay distinct while an exact repeat collapses.
    """

    __slots__ = (
        "_id",
        "_time",
        "amount",
        "asset",
        "balance_after",
        "chain",
        "counterparty",
        "decimals",
        "dedup_key",
        "direction",
        "epoch",
        "status",
        "tx_hash",
        "wallet",
    )

    def __init__(  # noqa: PLR0917 - the fields, positional for the hot path
        self,
        chain: str,
        wallet: str,
        direction: Direction,
        counterparty: str,
        asset: str,
        amount: int,
        decimals: int,
        tx_hash: str,
        epoch: float,
        *,
        status: TransferStatus = TransferStatus.CONFIRMED,
        balance_after: int | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> None:
        self.chain = chain
        self.wallet = wallet
        self.direction = direction
        self.counterparty = counterparty
        self.asset = asset
        self.amount = amount
        self.decimals = decimals
        self.tx_hash = tx_hash
        self.epoch = epoch
        self.status = status
        self.balance_after = balance_after
        self._id = event_id
        self._time = time
        # An event's id when it came with one (a pending transfer and its confirmation share
        # it); else equal for an exact repeat of the same output, distinct for other outputs.
        self.dedup_key: Hashable = (
            event_id
            if event_id is not None
            else (tx_hash, counterparty, asset, amount, decimals, direction)
        )

    @property
    def position(self) -> int:
        """A stable position for this output within its transaction."""
        sender, receiver = (
            (self.wallet, self.counterparty)
            if self.direction is Direction.OUT
            else (self.counterparty, self.wallet)
        )
        return zlib.crc32(
            f"{sender}|{receiver}|{self.asset}|{self.amount}|{self.decimals}".encode()
        )

    @property
    def id(self) -> str:
        """The same id :meth:`Transfer.make_id <drainwatch.events.Transfer.make_id>` gives."""
        if self._id is None:
            self._id = Transfer.make_id(
                self.chain, self.tx_hash, self.position, self.wallet, self.direction
            )
        return self._id

    @property
    def time(self) -> datetime:
        """The event time, aware UTC."""
        return self._time or datetime.fromtimestamp(self.epoch, UTC)
