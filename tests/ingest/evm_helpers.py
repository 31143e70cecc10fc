"""Shared helpers for the EVM watcher tests: sending on anvil, recording what was published,
and comparing the published stream with the chain's truth."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from web3 import HTTPProvider, Web3

from drainwatch.config import WalletConfig
from drainwatch.events import Direction, Transfer, TransferStatus, normalize_address
from ingest import CursorStore, EvmSource, RpcClient, Watcher
from tests.harness.services import AnvilService
from tests.ingest.contracts import FORWARDER_INIT, TOKEN_INIT, forward_calldata, transfer_calldata

CHAIN = "anvil"
ETH = 10**18


@dataclass(frozen=True)
class Sent:
    """What we put on chain, as the watcher should report it."""

    tx_hash: str
    sender: str
    to: str
    amount: int
    block_number: int
    block_hash: str
    position: int = 0
    asset: str = "ETH"


class Recorder:
    """A publish callable that remembers every call; can crash after "publishing"."""

    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[Transfer]] = []
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def __call__(self, transfers: Sequence[Transfer]) -> None:
        with self.lock:
            self.batches.append(list(transfers))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("crash between publish and cursor store")

    @property
    def transfers(self) -> list[Transfer]:
        with self.lock:
            return [t for batch in self.batches for t in batch]

    def latest(self) -> dict[str, Transfer]:
        """The last version of each id (what a reader that honours updates ends up with)."""
        return {t.id: t for t in self.transfers}

    def confirmed(self) -> list[Transfer]:
        return [t for t in self.latest().values() if t.status is TransferStatus.CONFIRMED]


def web3(anvil: AnvilService) -> Web3:
    return Web3(HTTPProvider(anvil.url, request_kwargs={"timeout": 10}))


def receipt_of(w3: Web3, tx_hash: Any) -> Any:
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)


def send(w3: Web3, sender: str, to: str | None, amount: int, **extra: Any) -> Sent:
    tx: dict[str, Any] = {"from": sender, "value": amount, **extra}
    if to is not None:
        tx["to"] = to
    receipt = receipt_of(w3, w3.eth.send_transaction(tx))  # type: ignore[arg-type]
    return Sent(
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        sender=normalize_address(sender),
        to=normalize_address(to or str(receipt["contractAddress"])),
        amount=amount,
        block_number=receipt["blockNumber"],
        block_hash=receipt["blockHash"].to_0x_hex(),
    )


def deploy(w3: Web3, sender: str, init: str) -> str:
    receipt = receipt_of(w3, w3.eth.send_transaction({"from": sender, "data": init}))  # type: ignore[typeddict-item]
    assert receipt["status"] == 1
    return normalize_address(str(receipt["contractAddress"]))


def deploy_token(w3: Web3, sender: str) -> str:
    return deploy(w3, sender, TOKEN_INIT)


def deploy_forwarder(w3: Web3, sender: str) -> str:
    return deploy(w3, sender, FORWARDER_INIT)


def send_token(w3: Web3, token: str, sender: str, to: str, amount: int) -> Sent:
    tx = {
        "from": sender,
        "to": Web3.to_checksum_address(token),
        "data": transfer_calldata(to, amount),
    }
    receipt = receipt_of(w3, w3.eth.send_transaction(tx))  # type: ignore[arg-type]
    assert receipt["status"] == 1
    return Sent(
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        sender=normalize_address(sender),
        to=normalize_address(to),
        amount=amount,
        block_number=receipt["blockNumber"],
        block_hash=receipt["blockHash"].to_0x_hex(),
        position=1,
        asset="TKN",
    )


def forward(w3: Web3, forwarder: str, caller: str, to: str, amount: int) -> Sent:
    tx = {
        "from": caller,
        "to": Web3.to_checksum_address(forwarder),
        "data": forward_calldata(to, amount),
        "gas": 100_000,
    }
    receipt = receipt_of(w3, w3.eth.send_transaction(tx))  # type: ignore[arg-type]
    assert receipt["status"] == 1
    return Sent(
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        sender=normalize_address(forwarder),
        to=normalize_address(to),
        amount=amount,
        block_number=receipt["blockNumber"],
        block_hash=receipt["blockHash"].to_0x_hex(),
        position=10_001,
    )


def expected(sent: Sent, watched: set[str]) -> set[tuple[Any, ...]]:
    """The transfers the watcher must report for one movement, as comparable tuples."""
    out: set[tuple[Any, ...]] = set()
    if sent.amount == 0:
        return out
    common = (
        sent.asset,
        sent.amount,
        sent.tx_hash,
        sent.position,
        sent.block_number,
        sent.block_hash,
    )
    if sent.sender in watched:
        out.add((sent.sender, Direction.OUT, sent.to, *common))
    if sent.to in watched:
        out.add((sent.to, Direction.IN, sent.sender, *common))
    return out


def truth(sent: Sequence[Sent], watched: set[str]) -> set[tuple[Any, ...]]:
    return set().union(*(expected(s, watched) for s in sent))


def observed(transfers: Sequence[Transfer]) -> list[tuple[Any, ...]]:
    return [
        (
            t.wallet,
            t.direction,
            t.counterparty,
            t.asset,
            t.amount,
            t.tx_hash,
            t.position,
            t.block_number,
            t.block_hash,
        )
        for t in transfers
    ]


def wallets(*addresses: str) -> list[WalletConfig]:
    return [WalletConfig(chain=CHAIN, address=a, label=f"w{i}") for i, a in enumerate(addresses)]


def rpc_for(
    urls: str | Sequence[str], timeout_s: float = 5.0, attempts: int = 4, max_wait_s: float = 0.2
) -> RpcClient:
    return RpcClient(
        [urls] if isinstance(urls, str) else list(urls),
        chain=CHAIN,
        timeout_s=timeout_s,
        attempts=attempts,
        max_wait_s=max_wait_s,
    )


def source_for(urls: str | Sequence[str], *addresses: str, **kwargs: Any) -> EvmSource:
    rpc = rpc_for(
        urls,
        timeout_s=kwargs.pop("timeout_s", 5.0),
        attempts=kwargs.pop("attempts", 4),
        max_wait_s=kwargs.pop("max_wait_s", 0.2),
    )
    return EvmSource(rpc, CHAIN, wallets(*addresses), "ETH", 18, **kwargs)


def watcher_for(
    source: EvmSource,
    publish: Recorder,
    store: CursorStore,
    confirmations: int = 0,
    max_batch: int = 100,
    **kwargs: Any,
) -> Watcher:
    return Watcher(
        source,
        publish,
        store,
        CHAIN,
        confirmations=confirmations,
        start_block=0,
        max_batch=max_batch,
        **kwargs,
    )


def drain(watcher: Watcher) -> None:
    """Poll until the watcher has nothing more to read."""
    while watcher.poll_once():
        pass
