"""The event contract: one frozen model per bus topic, with exact amounts and aware UTC times.

Every stage meets the others only through these models. Writers are strict (unknown fields are
refused when a model is built in code), readers are tolerant (:func:`decode` ignores fields it does
not know, so a newer writer does not break an older reader).

Amounts are integer base units (wei, satoshi) plus the asset's decimals; they travel as decimal
strings in JSON so no reader ever rounds them through a float.

>>> from datetime import UTC, datetime
>>> t = Transfer.create(
...     chain="ethereum", wallet="0xAbC", direction=Direction.OUT, counterparty="0xdef",
...     asset="ETH", amount=1_500_000_000_000_000_000, decimals=18, tx_hash="0x01",
...     position=0, time=datetime(2018, 1, 25, 15, 2, tzinfo=UTC),
... )
>>> t.key, t.value == Decimal("1.5")
('ethereum:0xabc', True)
>>> decode(TRANSFERS, encode(t)) == t
True
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar, overload

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

__all__ = [
    "ALERTS",
    "DEADLETTER",
    "FREEZES",
    "HEX_PREFIXES",
    "LEDGER",
    "LEDGER_USES",
    "TOPICS",
    "TRANSFERS",
    "Alert",
    "ApprovalUse",
    "ApprovedWithdrawal",
    "BaseUnits",
    "DecodeError",
    "Direction",
    "Event",
    "FreezeAction",
    "FreezeOrder",
    "Severity",
    "Transfer",
    "TransferStatus",
    "decode",
    "encode",
    "event_id",
    "is_normal_address",
    "normalize_address",
    "wallet_key",
]

TRANSFERS: Final = "drainwatch.transfers.v1"
ALERTS: Final = "drainwatch.alerts.v1"
FREEZES: Final = "drainwatch.freezes.v1"
LEDGER: Final = "drainwatch.ledger.v1"
LEDGER_USES: Final = "drainwatch.ledger-uses.v1"
DEADLETTER: Final = "drainwatch.deadletter.v1"


def _digits(value: int) -> str:
    return str(value)


BaseUnits = Annotated[int, Field(ge=0), PlainSerializer(_digits, return_type=str, when_used="json")]
"""A non-negative integer amount in base units; a decimal string in JSON."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware time, normalised to UTC; a naive time is refused."""

UsdValue = Annotated[Decimal, PlainSerializer(str, return_type=str, when_used="json")]


class Direction(StrEnum):
    """Which way value moved, seen from the watched wallet."""

    IN = "in"
    OUT = "out"


class TransferStatus(StrEnum):
    """Where a transfer stands on its chain.

    ``pending``: seen in the mempool. ``confirmed``: in a block with enough confirmations (or in a
    block, for a watcher that publishes early). ``retracted``: its block was reorganised away or
    the pending transaction was dropped; readers undo whatever they did with it.
    """

    PENDING = "pending"
    CONFIRMED = "confirmed"
    RETRACTED = "retracted"


class Severity(StrEnum):
    """Alert severity, ordered: ``info`` < ``warning`` < ``critical``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0, 1 or 2, for comparisons.

        >>> Severity.CRITICAL.rank > Severity.WARNING.rank
        True
        """
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class FreezeAction(StrEnum):
    """What a freeze order asks of the wallet infrastructure."""

    FREEZE = "freeze"
    UNFREEZE = "unfreeze"


HEX_PREFIXES: Final = ("0x", "0X")
"""How an EVM hex address starts (either case); :func:`normalize_address` lower-cases those."""


def normalize_address(address: str) -> str:
    """Normalise an address the one way every stage agrees on.

    EVM hex addresses are lower-cased; everything else (Bitcoin's case-sensitive Base58, NEM, any
    opaque backtest address) is kept exactly as given, apart from surrounding blanks.

    >>> normalize_address("0xAbCdEf0000000000000000000000000000000001")
    '0xabcdef0000000000000000000000000000000001'
    >>> normalize_address(" 1BoatSLRHtKNngkdXEeobR76b53LETtpyT ")
    '1BoatSLRHtKNngkdXEeobR76b53LETtpyT'
    """
    if is_normal_address(address):
        return address  # the usual case: no new string
    address = address.strip()
    if address[:2] in HEX_PREFIXES:
        return "0x" + address[2:].lower()
    return address


def is_normal_address(address: str) -> bool:
    """Whether :func:`normalize_address` would return ``address`` unchanged, for most addresses.

    True only when it certainly would (letters and digits, and no upper case after a hex
    prefix); a False asks the caller to normalise. A cheap test for routing lines: an address
    that is normal and not in a lookup table needs no normalising to be known as not there.

    >>> is_normal_address("0xabcdef01"), is_normal_address("NB3B39D35"), is_normal_address("0xAB")
    (True, True, False)
    """
    return address.isalnum() and (address.islower() or not address.startswith(HEX_PREFIXES))


def wallet_key(chain: str, wallet: str) -> str:
    """The bus key of a wallet: ``chain:address``. A wallet's events share one partition.

    >>> wallet_key("bitcoin", "bc1qxyz")
    'bitcoin:bc1qxyz'
    """
    return f"{chain}:{normalize_address(wallet)}"


def event_id(*parts: object) -> str:
    """A deterministic id: the first 32 hex digits of SHA-256 over the parts joined by ``|``.

    >>> event_id("ethereum", "0x01", 0) == event_id("ethereum", "0x01", 0)
    True
    >>> len(event_id("x"))
    32
    """
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


class Event(BaseModel):
    """Base of every bus event: frozen, strict when written, tolerant when read (see decode)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    def to_json(self) -> bytes:
        """Serialise to compact JSON bytes (amounts as decimal strings)."""
        return self.model_dump_json(exclude_none=False).encode()


class Transfer(Event):
    """Value that moved into or out of one watched wallet in one transaction (topic ``TRANSFERS``).

    One transaction yields one transfer per (wallet, direction, position): an ERC-20 log, a
    native value, or a Bitcoin transaction's net effect on the wallet.
    """

    id: str
    chain: str
    wallet: str
    direction: Direction
    counterparty: str
    asset: str
    amount: BaseUnits
    decimals: int = Field(ge=0, le=255)
    tx_hash: str
    position: int = Field(ge=0)
    time: UtcDatetime
    status: TransferStatus = TransferStatus.CONFIRMED
    block_number: int | None = None
    block_hash: str | None = None
    usd_value: UsdValue | None = None
    balance_after: BaseUnits | None = None
    """The wallet's balance of this asset after the block, when the watcher read it from the chain
    (live mode); detectors prefer it to the balance they track from the stream."""
    counterparties: tuple[str, ...] = ()
    """All counterparties when there are several (a Bitcoin transaction with many outputs)."""

    @classmethod
    def make_id(cls, chain: str, tx_hash: str, position: int, wallet: str, direction: str) -> str:
        """The deterministic transfer id: chain, tx hash, position, wallet, direction."""
        return event_id(chain, tx_hash, position, normalize_address(wallet), direction)

    @classmethod
    def create(cls, **fields: Any) -> Transfer:
        """Build a transfer, normalising addresses and deriving its id.

        Raises pydantic's ``ValidationError`` on a bad field.
        """
        fields["wallet"] = normalize_address(fields["wallet"])
        fields["counterparty"] = normalize_address(fields["counterparty"])
        direction = Direction(fields["direction"])
        fields.setdefault(
            "id",
            cls.make_id(
                fields["chain"], fields["tx_hash"], fields["position"], fields["wallet"], direction
            ),
        )
        return cls(**fields)

    @property
    def key(self) -> str:
        """The bus key: ``chain:wallet``."""
        return wallet_key(self.chain, self.wallet)

    @property
    def epoch(self) -> float:
        """The event time in seconds since 1970 (UTC)."""
        return self.time.timestamp()

    @property
    def dedup_key(self) -> str:
        """What identifies this transfer among a wallet's transfers: its id."""
        return self.id

    @property
    def value(self) -> Decimal:
        """The amount in the asset's units, exactly (no context rounding, however many digits)."""
        return Decimal(f"{self.amount}E-{self.decimals}")

    @property
    def signed_amount(self) -> int:
        """Base units, negative for an outflow."""
        return -self.amount if self.direction is Direction.OUT else self.amount


class Alert(Event):
    """A detector's finding about one wallet (topic ``ALERTS``).

    ``id`` is deterministic (detector, wallet, triggering transfer), so a detector that replays its
    input after a restart emits the same id and the alerts service drops the repeat.
    """

    id: str
    time: UtcDatetime
    """Event time: the time of the transfer that triggered it."""
    detected_at: UtcDatetime
    """Wall-clock time at which the detector decided."""
    chain: str
    wallet: str
    wallet_label: str | None = None
    severity: Severity
    detector: str
    freeze: bool
    summary: str
    metrics: dict[str, str] = Field(default_factory=dict)
    """The numbers that made it fire, as exact decimal strings (window sums, shares, rates)."""
    transfer_ids: tuple[str, ...] = ()
    tx_hashes: tuple[str, ...] = ()
    incident_id: str | None = None
    incident_wallets: tuple[str, ...] = ()
    """With ``incident_id``: the incident's wallets (bus keys) when the alert was made, so the
    alerts stage can page a wallet's earlier alerts and its incident as one."""
    shadow: bool = False
    """True when the detector runs in shadow mode: recorded, never frozen on."""

    @property
    def key(self) -> str:
        """The bus key: ``chain:wallet``."""
        return wallet_key(self.chain, self.wallet)


class FreezeOrder(Event):
    """The latest freeze state asked for a wallet (topic ``FREEZES``, compacted by key)."""

    id: str
    time: UtcDatetime
    chain: str
    wallet: str
    action: FreezeAction
    reason: str
    requested_by: str
    alert_id: str | None = None

    @property
    def key(self) -> str:
        """The bus key: ``chain:wallet``."""
        return wallet_key(self.chain, self.wallet)


class ApprovedWithdrawal(Event):
    """A withdrawal the exchange approved, from its own ledger (topic ``LEDGER``)."""

    id: str
    time: UtcDatetime
    chain: str
    asset: str
    to: str
    amount: Decimal
    """In the asset's units (exact)."""
    wallet: str | None = None
    tx_hash: str | None = None

    @property
    def key(self) -> str:
        """The bus key: ``chain:to`` (the source wallet is often unknown to the ledger)."""
        return wallet_key(self.chain, self.wallet or self.to)

    @property
    def epoch(self) -> float:
        """The approval time in seconds since 1970 (UTC)."""
        return self.time.timestamp()


class ApprovalUse(Event):
    """A payment a detector matched with an approved withdrawal (topic ``LEDGER_USES``).

    Every detector replica reads every approval, but judges only its own wallets' payments: it
    publishes which approval each of them used up, so that an approval explains one payment
    across the replicas, not one on each. A later record for the same ``transfer_id`` replaces
    an earlier one (the payment moved to another approval of the same customer).
    """

    id: str
    time: UtcDatetime
    """The payment's time."""
    chain: str
    wallet: str
    """The paying wallet."""
    transfer_id: str
    tx_hash: str
    approval_id: str
    asset: str
    to: str
    amount: Decimal
    """What the payment moved, in the asset's units (exact)."""

    @property
    def key(self) -> str:
        """The bus key: ``chain:wallet`` (a wallet's uses stay in order)."""
        return wallet_key(self.chain, self.wallet)


TOPICS: Final[dict[str, type[Event]]] = {
    TRANSFERS: Transfer,
    ALERTS: Alert,
    FREEZES: FreezeOrder,
    LEDGER: ApprovedWithdrawal,
    LEDGER_USES: ApprovalUse,
}

E = TypeVar("E", bound=Event)


class DecodeError(ValueError):
    """A message that is not a valid event of its topic; it goes to the dead-letter topic."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


def encode(event: Event) -> bytes:
    """Serialise an event for the bus."""
    return event.to_json()


@overload
def decode(topic: str, payload: bytes) -> Event: ...
@overload
def decode(topic: str, payload: bytes, model: type[E]) -> E: ...
def decode(topic: str, payload: bytes, model: type[Event] | None = None) -> Event:
    """Parse a message of ``topic``, ignoring unknown fields; raise :class:`DecodeError` if bad.

    >>> decode(TRANSFERS, b"not json")
    Traceback (most recent call last):
    ...
    drainwatch.events.DecodeError: drainwatch.transfers.v1: invalid JSON ...
    """
    cls = model or TOPICS.get(topic)
    if cls is None:
        raise DecodeError(topic, "unknown topic")
    try:
        return cls.model_validate_json(payload, extra="ignore")
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise DecodeError(topic, f"invalid JSON ({first['msg']})") from exc
        if first["type"] in ("model_type", "model_attributes_type"):
            raise DecodeError(topic, "not a JSON object") from exc
        where = ".".join(str(p) for p in first["loc"])
        raise DecodeError(topic, f"{where}: {first['msg']}") from exc
