"""Small builders for detector tests: wallets, configs and transfers with sensible defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from drainwatch.config import Config, DetectionConfig, WalletConfig
from drainwatch.events import ApprovedWithdrawal, Direction, Transfer, TransferStatus, event_id

T0 = datetime(2018, 1, 25, 15, 0, tzinfo=UTC)


def wallet(
    address: str = "HOT",
    *,
    chain: str = "nem",
    role: str = "hot",
    balance: str | None = "1000",
    label: str | None = None,
    asset: str | None = None,
    known: tuple[str, ...] = (),
) -> WalletConfig:
    return WalletConfig.model_validate(
        {
            "chain": chain,
            "address": address,
            "role": role,
            "label": label or f"{chain}-{address.lower()}",
            "asset": asset,
            "opening_balance": Decimal(balance) if balance is not None else None,
            "known_counterparties": known,
        }
    )


def config(*wallets: WalletConfig, shadow: tuple[str, ...] = ()) -> Config:
    return Config(
        wallets=wallets or (wallet(), wallet("COLD", role="cold", balance="100000")),
        detection=DetectionConfig(shadow=shadow),
    )


def at(minutes: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes)


def transfer(
    to: str = "X",
    amount: int = 1,
    *,
    minutes: float = 0,
    wallet: str = "HOT",
    direction: Direction = Direction.OUT,
    decimals: int = 0,
    tx: str | None = None,
    status: TransferStatus = TransferStatus.CONFIRMED,
    chain: str = "nem",
    asset: str = "XEM",
) -> Transfer:
    """An outflow (by default) of ``wallet`` to ``to``, ``minutes`` after T0."""
    return Transfer.create(
        chain=chain,
        wallet=wallet,
        direction=direction,
        counterparty=to,
        asset=asset,
        amount=amount,
        decimals=decimals,
        tx_hash=tx or event_id(wallet, to, amount, minutes, direction),
        position=0,
        time=at(minutes),
        status=status,
    )


def approval(to: str, amount: str, *, minutes: float = 0, asset: str = "XEM") -> ApprovedWithdrawal:
    return ApprovedWithdrawal(
        id=event_id("approval", to, amount, minutes),
        time=at(minutes),
        chain="nem",
        asset=asset,
        to=to,
        amount=Decimal(amount),
    )
