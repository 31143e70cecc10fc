"""The EVM chain source: native-coin transfers of watched wallets, read over JSON-RPC with web3.

Covered: top-level transactions whose sender or recipient is a watched wallet and whose value is
positive, successful ones only, contract creations included. Not yet covered (later issues):
ERC-20 ``Transfer`` logs and value moved by internal calls (needs traces).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import requests
from hexbytes import HexBytes
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from web3 import HTTPProvider, Web3
from web3.exceptions import (
    BlockNotFound,
    MethodNotSupported,
    MethodUnavailable,
    ProviderConnectionError,
    RequestTimedOut,
    TooManyRequests,
    TransactionNotFound,
)
from web3.types import TxReceipt

from drainwatch.config import WalletConfig
from drainwatch.events import Direction, Transfer, TransferStatus, normalize_address
from ingest.base import BlockData
from ingest.errors import EndpointsUnreachableError, RpcError, WatcherError

__all__ = ["EvmSource", "connect_evm", "is_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT: tuple[type[BaseException], ...] = (
    # requests' ConnectionError is not the builtin one; web3's own default retry list misses it.
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    ProviderConnectionError,
    RequestTimedOut,
    TooManyRequests,
    # A load-balanced node may not have a block yet that another one reported as head.
    BlockNotFound,
    TransactionNotFound,
)


def is_transient(exc: BaseException) -> bool:
    """Whether an RPC failure is worth retrying (network trouble, overload, a lagging node).

    >>> is_transient(requests.ConnectionError("refused")), is_transient(ValueError("bad"))
    (True, False)
    """
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


def _provider(url: str, timeout_s: float) -> HTTPProvider:
    # web3's built-in retry is switched off: tenacity in EvmSource is the one retry policy.
    return HTTPProvider(
        url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
    )


def connect_evm(rpc_urls: Sequence[str], timeout_s: float = 10.0) -> Web3:
    """A Web3 client on the first endpoint that answers, trying ``rpc_urls`` in order.

    Raises:
        EndpointsUnreachableError: no endpoint answered (each one's error is in ``errors``).

    >>> connect_evm(["http://127.0.0.1:1"], timeout_s=1)
    Traceback (most recent call last):
    ...
    ingest.errors.EndpointsUnreachableError: no RPC endpoint answered (http://127.0.0.1:1: ...)
    """
    errors: list[tuple[str, str]] = []
    for url in rpc_urls:
        w3 = Web3(_provider(url, timeout_s))
        try:
            w3.eth.block_number  # noqa: B018 - the probe is the point
        except Exception as exc:  # any failure: try the next one
            log.warning("EVM endpoint %s did not answer: %s", url, exc)
            errors.append((url, f"{type(exc).__name__}: {exc}"))
            continue
        return w3
    raise EndpointsUnreachableError(errors)


def _hex(value: Any) -> str:
    """A 0x-prefixed lower-case hex string from HexBytes, bytes or a hex string."""
    if isinstance(value, bytes | bytearray):
        return HexBytes(value).to_0x_hex()
    return normalize_address(str(value))


class EvmSource:
    """Blocks of an EVM chain with the native transfers of the watched wallets.

    Implements :class:`ingest.base.ChainSource`. Every RPC call is retried on transient errors
    with exponential backoff; when retries run out it raises :class:`RpcError` and the watcher
    keeps its cursor where it was.

    Args:
        w3: the client (see :func:`connect_evm`).
        chain: the chain id from the config; wallets of other chains are ignored.
        wallets: the watched wallets; one whose ``asset`` names another asset is ignored here.
        native_symbol: the native asset's symbol (``ETH``).
        native_decimals: its decimals (18).
        retry_attempts: attempts per RPC call before giving up.
        retry_max_wait_s: the longest pause between two attempts.
        read_balances: fill ``Transfer.balance_after`` (one ``eth_getBalance`` per wallet that
            moved value in the block, read at that block's hash).
        block_receipts: use ``eth_getBlockReceipts`` (True), one ``eth_getTransactionReceipt``
            per watched transaction (False), or find out on first use (None: try, fall back).
    """

    def __init__(
        self,
        w3: Web3,
        chain: str,
        wallets: Sequence[WalletConfig],
        native_symbol: str = "ETH",
        native_decimals: int = 18,
        *,
        retry_attempts: int = 5,
        retry_max_wait_s: float = 8.0,
        read_balances: bool = True,
        block_receipts: bool | None = None,
    ) -> None:
        self.w3 = w3
        self.chain = chain
        self.wallets = tuple(wallets)
        self.native_symbol = native_symbol
        self.native_decimals = native_decimals
        self.retry_attempts = retry_attempts
        self.retry_max_wait_s = retry_max_wait_s
        self.read_balances = read_balances
        self._watched = frozenset(
            w.address
            for w in self.wallets
            if w.chain == chain and (w.asset is None or w.asset == native_symbol)
        )
        self.block_receipts = block_receipts
        self._block_receipts = block_receipts
        """Whether the node serves eth_getBlockReceipts; None until first tried."""

    @property
    def watched(self) -> frozenset[str]:
        """The normalised addresses whose native transfers this source reports."""
        return self._watched

    def _call(self, what: str, fn: Callable[[], T], block: int | None = None) -> T:
        """Run one RPC call, retrying transient failures; raise :class:`RpcError` at the end."""
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.25, max=self.retry_max_wait_s),
            stop=stop_after_attempt(self.retry_attempts),
            before_sleep=lambda state: log.warning(
                "%s: %s failed (attempt %d): %s",
                self.chain,
                what,
                state.attempt_number,
                state.outcome.exception() if state.outcome else None,
            ),
        )
        try:
            return retrying(fn)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise RpcError(f"{what} failed: {cause}", chain=self.chain, block=block) from cause
        except Exception as exc:  # fn is one RPC call: whatever it raises is a node failure
            raise RpcError(f"{what} failed: {exc}", chain=self.chain, block=block) from exc

    def head(self) -> int:
        """The newest block number the node knows."""
        return self._call("eth_blockNumber", lambda: int(self.w3.eth.block_number))

    def block(self, number: int) -> BlockData:
        """Block ``number`` with the watched wallets' successful native transfers."""
        raw: Mapping[str, Any] = self._call(
            "eth_getBlockByNumber",
            lambda: self.w3.eth.get_block(number, full_transactions=True),
            number,
        )
        block_hash = _hex(raw["hash"])
        when = datetime.fromtimestamp(int(raw["timestamp"]), tz=UTC)
        touching = [tx for tx in raw["transactions"] if self._touches(tx)]
        receipts = self._receipts(number, block_hash, touching) if touching else {}
        transfers: list[Transfer] = []
        for tx in touching:
            tx_hash = _hex(tx["hash"])
            receipt = receipts[tx_hash]
            # Pre-Byzantium receipts carry no status; such transactions did not revert.
            if receipt.get("status", 1) == 0:
                continue
            transfers.extend(self._transfers(tx, receipt, number, block_hash, when))
        if self.read_balances and transfers:
            transfers = self._with_balances(transfers, number, block_hash)
        return BlockData(
            number=int(raw["number"]),
            hash=block_hash,
            parent_hash=_hex(raw["parentHash"]),
            time=when,
            transfers=tuple(transfers),
        )

    def _touches(self, tx: Any) -> bool:
        if isinstance(tx, bytes | str):
            raise WatcherError("node returned transaction hashes only", chain=self.chain)
        if int(tx["value"]) <= 0:
            return False
        to = tx.get("to")
        return normalize_address(tx["from"]) in self._watched or (
            to is not None and normalize_address(to) in self._watched
        )

    def _transfers(
        self,
        tx: Mapping[str, Any],
        receipt: Mapping[str, Any],
        number: int,
        block_hash: str,
        when: datetime,
    ) -> list[Transfer]:
        sender = normalize_address(tx["from"])
        to = tx.get("to")
        created = receipt.get("contractAddress")
        recipient = normalize_address(to if to is not None else (created or ""))
        common: dict[str, Any] = {
            "chain": self.chain,
            "asset": self.native_symbol,
            "amount": int(tx["value"]),
            "decimals": self.native_decimals,
            "tx_hash": _hex(tx["hash"]),
            # eth-tester leaves transactionIndex out of full transactions; receipts always have it
            "position": int(tx.get("transactionIndex", receipt["transactionIndex"])),
            "time": when,
            "block_number": number,
            "block_hash": block_hash,
            "status": TransferStatus.CONFIRMED,
        }
        out: list[Transfer] = []
        if sender in self._watched:
            out.append(
                Transfer.create(
                    wallet=sender, direction=Direction.OUT, counterparty=recipient, **common
                )
            )
        if recipient in self._watched:
            out.append(
                Transfer.create(
                    wallet=recipient, direction=Direction.IN, counterparty=sender, **common
                )
            )
        return out

    def _with_balances(
        self, transfers: list[Transfer], number: int, block_hash: str
    ) -> list[Transfer]:
        """The transfers with each wallet's balance after the block (by hash: no newer fork)."""
        balances: dict[str, int] = {}
        for wallet in dict.fromkeys(t.wallet for t in transfers):
            balances[wallet] = self._call(
                "eth_getBalance",
                partial(
                    self.w3.eth.get_balance,
                    Web3.to_checksum_address(wallet),
                    HexBytes(block_hash),
                ),
                number,
            )
        return [t.model_copy(update={"balance_after": balances[t.wallet]}) for t in transfers]

    def _receipts(
        self, number: int, block_hash: str, txs: Sequence[Mapping[str, Any]]
    ) -> dict[str, Mapping[str, Any]]:
        """Receipts of ``txs`` by tx hash, all from block ``block_hash`` (not a newer fork)."""
        receipts: list[TxReceipt] | None = None
        if self._block_receipts is not False:
            try:
                receipts = self._call(
                    "eth_getBlockReceipts",
                    lambda: self.w3.eth.get_block_receipts(HexBytes(block_hash)),
                    number,
                )
                self._block_receipts = True
            except RpcError as exc:
                unsupported = isinstance(exc.__cause__, MethodUnavailable | MethodNotSupported)
                if self._block_receipts is True or not unsupported:
                    raise
                log.info("%s: node lacks eth_getBlockReceipts; fetching one by one", self.chain)
                self._block_receipts = False
        if receipts is None:
            receipts = [
                self._call(
                    "eth_getTransactionReceipt",
                    partial(self.w3.eth.get_transaction_receipt, tx["hash"]),
                    number,
                )
                for tx in txs
            ]
        by_hash: dict[str, Mapping[str, Any]] = {}
        for receipt in receipts:
            if _hex(receipt["blockHash"]) != block_hash:
                # The block was replaced between the two calls; the watcher will read it again.
                raise RpcError(
                    f"receipt from block {_hex(receipt['blockHash'])}, expected {block_hash}",
                    chain=self.chain,
                    block=number,
                )
            by_hash[_hex(receipt["transactionHash"])] = receipt
        missing = [_hex(tx["hash"]) for tx in txs if _hex(tx["hash"]) not in by_hash]
        if missing:
            raise RpcError(f"no receipt for {missing[0]}", chain=self.chain, block=number)
        return by_hash
