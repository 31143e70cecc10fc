"""The EVM chain source: every value movement of the watched wallets, read over JSON-RPC.

Per block it reports, for each watched wallet as sender or recipient:

* native-coin value of successful top-level transactions (contract creations included),
  ``position`` 0;
* ERC-20 ``Transfer`` logs of *any* token contract, found by topic filter on the padded wallet
  addresses (no token list), ``position`` 1 + the log's index within its transaction; the
  token's symbol and decimals are read once per contract and cached;
* native value moved by internal calls (a multisig or smart wallet paying out), from call traces
  where the node offers them, ``position`` 10_000 + the call's depth-first index
  (see :mod:`ingest.traces`).

A run of blocks is read in a few batched round trips: blocks, logs and traces in one, receipts of
the transactions that touch a watched wallet in a second, token metadata and balances in a
third. Positions never depend on where a transaction lands, so a transfer keeps its id from the
mempool (:mod:`ingest.pending`) through a reorg to its final block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from web3 import Web3

from drainwatch.config import WalletConfig, entry_for
from drainwatch.events import Direction, Transfer, TransferStatus, normalize_address
from ingest.base import BlockData, as_if_mined
from ingest.erc20 import (
    DECIMALS_CALL,
    SYMBOL_CALL,
    TRANSFER_TOPIC,
    decode_decimals,
    decode_symbol,
    decode_transfer_call,
    decode_transfer_log,
    pad,
)
from ingest.errors import RpcError, WatcherError
from ingest.rpc import Rpc, RpcCallError, Web3Rpc
from ingest.traces import TRACE_POSITION_BASE, InternalTransfer, walk_call_tree, walk_parity_traces

__all__ = ["EvmSource", "TokenInfo", "TraceMode"]

log = logging.getLogger(__name__)

TraceMode = Literal["auto", "debug", "trace", "off"]
_BALANCE_OF = "0x70a08231"


def _int(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text)


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if hasattr(value, "to_0x_hex"):
        return str(value.to_0x_hex())
    return normalize_address(str(value))


def _get(tx: Mapping[str, Any], *names: str) -> Any:
    for name in names:  # web3's in-process provider uses snake_case for some fields
        if name in tx:
            return tx[name]
    return None


class TokenInfo:
    """A token contract's symbol (the transfer's ``asset``) and decimals."""

    __slots__ = ("address", "decimals", "symbol")

    def __init__(self, address: str, symbol: str | None, decimals: int | None) -> None:
        self.address = address
        self.symbol = symbol or address
        """The contract address when the token has no readable symbol."""
        self.decimals = 0 if decimals is None else decimals

    def __repr__(self) -> str:
        return f"TokenInfo({self.address!r}, {self.symbol!r}, {self.decimals})"


class EvmSource:
    """Blocks of an EVM chain with the watched wallets' native, token and internal transfers.

    Implements :class:`ingest.base.ChainSource`, :class:`~ingest.base.BatchSource` and
    :class:`~ingest.base.HashSource`. Transport failures are retried by the RPC client; when it
    gives up it raises :class:`RpcError` and the watcher keeps its cursor where it was.

    Args:
        rpc: the node (:class:`ingest.rpc.RpcClient`), or a ``Web3`` (wrapped in
            :class:`ingest.rpc.Web3Rpc`; for the in-process demo chain).
        chain: the chain id from the config; wallets of other chains are ignored.
        wallets: the watched wallets; one with an ``asset`` gets only that asset's transfers.
        native_symbol: the native asset's symbol (``ETH``, ``BNB``, ``POL``…).
        native_decimals: its decimals (18).
        read_balances: fill ``Transfer.balance_after`` (the wallet's balance of the asset after
            the block, read at the block's hash).
        traces: internal transfers from ``debug_traceBlockByNumber`` (``debug``), ``trace_block``
            (``trace``), whichever the node offers (``auto``) or not at all (``off``).
        tokens: report ERC-20 transfers.
    """

    def __init__(
        self,
        rpc: Rpc | Web3,
        chain: str,
        wallets: Sequence[WalletConfig],
        native_symbol: str = "ETH",
        native_decimals: int = 18,
        *,
        read_balances: bool = True,
        traces: TraceMode = "auto",
        tokens: bool = True,
    ) -> None:
        self.rpc: Rpc = Web3Rpc(rpc, chain) if isinstance(rpc, Web3) else rpc
        self.chain = chain
        self.wallets = tuple(w for w in wallets if w.chain == chain)
        self.native_symbol = native_symbol
        self.native_decimals = native_decimals
        self.read_balances = read_balances
        self.traces: TraceMode = traces
        self.tokens = tokens
        self._assets: dict[str, list[WalletConfig]] = {}
        """The config entries of each watched address (one per asset when it lists several)."""
        for w in self.wallets:
            self._assets.setdefault(w.address, []).append(w)
        self._padded = [pad(a) for a in sorted(self._assets)]
        self._token_cache: dict[str, TokenInfo] = {}
        self._trace_mode: TraceMode = traces
        self._contract_of: dict[str, str] = {}
        """Token contract of each token transfer being assembled (symbols can collide)."""

    @property
    def watched(self) -> frozenset[str]:
        """The normalised addresses this source reports on."""
        return frozenset(self._assets)

    @property
    def trace_mode(self) -> TraceMode:
        """The trace flavour in use (``auto`` until the first block was traced)."""
        return self._trace_mode

    def head(self) -> int:
        """The newest block number the node knows."""
        return _int(self.rpc.call("eth_blockNumber"))

    def block_hash(self, number: int) -> str | None:
        """The hash of block ``number`` on the node's chain now (None above its head)."""
        raw = self.rpc.call("eth_getBlockByNumber", [hex(number), False])
        return None if raw is None else _hex(raw["hash"])

    def block(self, number: int) -> BlockData:
        """Block ``number`` with the watched wallets' transfers."""
        return self.read_range(range(number, number + 1))[0]

    def read_range(self, numbers: range) -> list[BlockData]:
        """Blocks ``numbers`` (one consistent chain, oldest first) with their transfers."""
        if not numbers:
            return []
        lo, hi = numbers[0], numbers[-1]
        calls: list[tuple[str, Sequence[Any]]] = [
            ("eth_getBlockByNumber", [hex(n), True]) for n in numbers
        ]
        if self.tokens and self._padded:
            span = {"fromBlock": hex(lo), "toBlock": hex(hi)}
            calls.append(("eth_getLogs", [{**span, "topics": [TRANSFER_TOPIC, self._padded]}]))
            calls.append(
                ("eth_getLogs", [{**span, "topics": [TRANSFER_TOPIC, None, self._padded]}])
            )
        mode = "debug" if self._trace_mode == "auto" else self._trace_mode
        calls += self._trace_calls(numbers, mode)
        results = self.rpc.batch(calls)
        raw_blocks = results[: len(numbers)]
        rest = results[len(numbers) :]
        logs_raw = rest[:2] if self.tokens and self._padded else []
        traces_raw = rest[len(logs_raw) :]
        blocks = self._check_blocks(numbers, raw_blocks)
        logs = self._check_logs(blocks, logs_raw)
        internal = self._internal(numbers, blocks, traces_raw, mode)
        return self._assemble(blocks, logs, internal)

    # -- fetching and checking ------------------------------------------------------------

    def _trace_calls(self, numbers: range, mode: str) -> list[tuple[str, Sequence[Any]]]:
        if mode == "debug":
            return [
                ("debug_traceBlockByNumber", [hex(n), {"tracer": "callTracer"}]) for n in numbers
            ]
        if mode == "trace":
            return [("trace_block", [hex(n)]) for n in numbers]
        return []

    def _check_blocks(self, numbers: range, raw: Sequence[Any]) -> list[Mapping[str, Any]]:
        blocks: list[Mapping[str, Any]] = []
        for n, block in zip(numbers, raw, strict=True):
            if isinstance(block, RpcCallError):
                raise block
            if block is None:
                # a load-balanced node behind the one that reported the head: try again later
                raise RpcError("node does not have the block yet", chain=self.chain, block=n)
            if blocks and _hex(block["parentHash"]) != _hex(blocks[-1]["hash"]):
                raise RpcError("chain changed while reading", chain=self.chain, block=n)
            txs = block.get("transactions") or []
            if txs and isinstance(txs[0], str | bytes):
                raise WatcherError("node returned transaction hashes only", chain=self.chain)
            blocks.append(block)
        return blocks

    def _check_logs(
        self, blocks: Sequence[Mapping[str, Any]], raw: Sequence[Any]
    ) -> dict[str, list[Mapping[str, Any]]]:
        """Token Transfer logs per tx hash, each once (a watched-to-watched log matches both)."""
        hashes = {_int(b["number"]): _hex(b["hash"]) for b in blocks}
        seen: set[tuple[str, int]] = set()
        by_tx: dict[str, list[Mapping[str, Any]]] = {}
        for part in raw:
            if isinstance(part, RpcCallError):
                raise part
            for entry in part or ():
                if entry.get("removed"):
                    continue
                number = _int(entry["blockNumber"])
                if hashes.get(number) != _hex(entry["blockHash"]):
                    raise RpcError("logs from another branch", chain=self.chain, block=number)
                tx_hash = _hex(entry["transactionHash"])
                key = (tx_hash, _int(entry["logIndex"]))
                if key not in seen:
                    seen.add(key)
                    by_tx.setdefault(tx_hash, []).append(entry)
        return by_tx

    def _internal(
        self,
        numbers: range,
        blocks: Sequence[Mapping[str, Any]],
        raw: Sequence[Any],
        mode: str,
    ) -> dict[str, list[InternalTransfer]]:
        if mode == "off":
            return {}
        if any(isinstance(r, RpcCallError) for r in raw):
            error = next(r for r in raw if isinstance(r, RpcCallError))
            if self._trace_mode != "auto":
                raise error
            fallback: TraceMode = "trace" if mode == "debug" else "off"
            log.warning(
                "%s: %s tracing unavailable (%s); trying %s", self.chain, mode, error, fallback
            )
            self._trace_mode = fallback
            if fallback == "off":
                self._trace_mode = "off"
                return {}
            self._trace_mode = "auto"  # still deciding until a trace succeeds
            results = self.rpc.batch(self._trace_calls(numbers, fallback))
            if any(isinstance(r, RpcCallError) for r in results):
                log.warning(
                    "%s: no tracing on this node: internal transfers are not seen", self.chain
                )
                self._trace_mode = "off"
                return {}
            self._trace_mode = "trace"
            return self._internal(numbers, blocks, results, "trace")
        if self._trace_mode == "auto":
            self._trace_mode = "debug" if mode == "debug" else "trace"
        out: dict[str, list[InternalTransfer]] = {}
        for block, result in zip(blocks, raw, strict=True):
            if mode == "debug":
                txs = block.get("transactions") or []
                for tx, item in zip(txs, result or [], strict=False):
                    tree = item.get("result", item) if isinstance(item, dict) else item
                    moves = walk_call_tree(tree)
                    if moves:  # geth names the transaction; older nodes rely on the order
                        out[_hex(item.get("txHash") or _get(tx, "hash"))] = moves
            else:
                for tx_hash, moves in walk_parity_traces(result or []).items():
                    if moves:
                        out[tx_hash] = moves
        return out

    # -- building transfers ---------------------------------------------------------------

    def _assemble(
        self,
        blocks: Sequence[Mapping[str, Any]],
        logs: Mapping[str, list[Mapping[str, Any]]],
        internal: Mapping[str, list[InternalTransfer]],
    ) -> list[BlockData]:
        watched = self._assets
        self._contract_of.clear()
        need_receipt: list[str] = []
        for block in blocks:
            for tx in block.get("transactions") or []:
                tx_hash = _hex(_get(tx, "hash"))
                to = _get(tx, "to")
                touches = _int(_get(tx, "value")) > 0 and (
                    normalize_address(str(_get(tx, "from"))) in watched
                    or (to is not None and normalize_address(str(to)) in watched)
                )
                if touches or tx_hash in logs:
                    need_receipt.append(tx_hash)
        receipts = self._receipts(need_receipt)
        tokens = self._token_info(
            {normalize_address(str(e["address"])) for v in logs.values() for e in v}
        )
        out: list[BlockData] = []
        for block in blocks:
            number, block_hash = _int(block["number"]), _hex(block["hash"])
            when = datetime.fromtimestamp(_int(block["timestamp"]), tz=UTC)
            transfers: list[Transfer] = []
            for tx in block.get("transactions") or []:
                tx_hash = _hex(_get(tx, "hash"))
                receipt = receipts.get(tx_hash)
                if receipt is not None and _hex(receipt["blockHash"]) != block_hash:
                    raise RpcError("receipt from another branch", chain=self.chain, block=number)
                common = {
                    "tx_hash": tx_hash,
                    "time": when,
                    "block_number": number,
                    "block_hash": block_hash,
                    "status": TransferStatus.CONFIRMED,
                }
                if receipt is not None and _int(receipt.get("status", 1)) == 1:
                    transfers += self._native(tx, receipt, common)
                    transfers += self._token(logs.get(tx_hash, ()), receipt, tokens, common)
                for move in internal.get(tx_hash, ()):
                    transfers += self._pair(
                        move.sender,
                        move.recipient,
                        self.native_symbol,
                        move.value,
                        self.native_decimals,
                        TRACE_POSITION_BASE + move.call,
                        common,
                    )
            if self.read_balances and transfers:
                transfers = self._with_balances(transfers, block_hash)
            out.append(
                BlockData(number, block_hash, _hex(block["parentHash"]), when, tuple(transfers))
            )
        return out

    def _pair(  # noqa: PLR0917 - one movement's fields, always passed in this order
        self,
        sender: str,
        recipient: str,
        asset: str,
        amount: int,
        decimals: int,
        position: int,
        common: Mapping[str, Any],
    ) -> list[Transfer]:
        """The OUT and/or IN transfer of one movement, for whichever side is watched."""
        out: list[Transfer] = []
        for wallet, direction, other in (
            (sender, Direction.OUT, recipient),
            (recipient, Direction.IN, sender),
        ):
            if wallet not in self._assets:
                continue
            if entry_for(self._assets[wallet], asset) is None:
                continue
            out.append(
                Transfer.create(
                    chain=self.chain,
                    wallet=wallet,
                    direction=direction,
                    counterparty=other,
                    asset=asset,
                    amount=amount,
                    decimals=decimals,
                    position=position,
                    **common,
                )
            )
        return out

    def _native(
        self, tx: Mapping[str, Any], receipt: Mapping[str, Any], common: Mapping[str, Any]
    ) -> list[Transfer]:
        value = _int(_get(tx, "value"))
        if value <= 0:
            return []
        to = _get(tx, "to") or receipt.get("contractAddress") or ""
        return self._pair(
            normalize_address(str(_get(tx, "from"))),
            normalize_address(str(to)),
            self.native_symbol,
            value,
            self.native_decimals,
            0,
            common,
        )

    def _token(
        self,
        entries: Sequence[Mapping[str, Any]],
        receipt: Mapping[str, Any],
        tokens: Mapping[str, TokenInfo],
        common: Mapping[str, Any],
    ) -> list[Transfer]:
        if not entries:
            return []
        first = min(_int(e["logIndex"]) for e in receipt.get("logs") or entries)
        out: list[Transfer] = []
        for entry in sorted(entries, key=lambda e: _int(e["logIndex"])):
            decoded = decode_transfer_log(entry)
            if decoded is None:
                continue
            token, sender, recipient, amount = decoded
            info = tokens[token]
            position = 1 + _int(entry["logIndex"]) - first
            made = self._pair(
                sender, recipient, info.symbol, amount, info.decimals, position, common
            )
            for t in made:
                self._contract_of[t.id] = token
            out += made
        return out

    def _receipts(self, tx_hashes: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        results = self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in tx_hashes])
        out: dict[str, Mapping[str, Any]] = {}
        for tx_hash, receipt in zip(tx_hashes, results, strict=True):
            if isinstance(receipt, RpcCallError):
                raise receipt
            if receipt is None:
                raise RpcError(f"no receipt for {tx_hash}", chain=self.chain)
            out[tx_hash] = receipt
        return out

    def token_info(self, token: str) -> TokenInfo:
        """Symbol and decimals of a token contract (read once, then cached)."""
        return self._token_info({normalize_address(token)})[normalize_address(token)]

    def _token_info(self, addresses: set[str]) -> dict[str, TokenInfo]:
        missing = sorted(a for a in addresses if a not in self._token_cache)
        if missing:
            calls: list[tuple[str, Sequence[Any]]] = []
            for a in missing:
                calls.append(("eth_call", [{"to": a, "data": SYMBOL_CALL}, "latest"]))
                calls.append(("eth_call", [{"to": a, "data": DECIMALS_CALL}, "latest"]))
            results = self.rpc.batch(calls)
            for i, a in enumerate(missing):
                symbol, decimals = results[2 * i], results[2 * i + 1]
                info = TokenInfo(
                    a,
                    None if isinstance(symbol, RpcCallError) else decode_symbol(symbol),
                    None if isinstance(decimals, RpcCallError) else decode_decimals(decimals),
                )
                self._token_cache[a] = info
                log.info(
                    "%s: token %s is %s with %d decimals", self.chain, a, info.symbol, info.decimals
                )
        return {a: self._token_cache[a] for a in addresses}

    def _with_balances(self, transfers: list[Transfer], block_hash: str) -> list[Transfer]:
        """Each wallet's balance of each asset after the block (read at its hash: no newer fork)."""

        def asset_of(t: Transfer) -> str | None:
            return self._contract_of.get(t.id) if t.position != 0 and t.position < 10_000 else None

        balances = self._balances(
            [(t.wallet, asset_of(t)) for t in transfers], {"blockHash": block_hash}
        )
        return [
            t.model_copy(update={"balance_after": balances.get((t.wallet, asset_of(t)))})
            for t in transfers
        ]

    def _balances(
        self, wanted: Sequence[tuple[str, str | None]], at: str | Mapping[str, str]
    ) -> dict[tuple[str, str | None], int]:
        """Balances of (wallet, token contract or None for the native asset) at block ``at``;
        one that could not be read is left out."""
        pairs = list(dict.fromkeys(wanted))
        calls: list[tuple[str, Sequence[Any]]] = []
        for wallet, contract in pairs:
            if contract is None:
                calls.append(("eth_getBalance", [wallet, at]))
            else:
                data = _BALANCE_OF + pad(wallet)[2:]
                calls.append(("eth_call", [{"to": contract, "data": data}, at]))
        results = self.rpc.batch(calls)
        balances: dict[tuple[str, str | None], int] = {}
        for pair, result in zip(pairs, results, strict=True):
            if not isinstance(result, RpcCallError) and result not in (None, "0x"):
                balances[pair] = (
                    _int(result) if not isinstance(result, bytes) else int.from_bytes(result, "big")
                )
        return balances

    # -- the mempool --------------------------------------------------------------------

    def pending_transfers(self, tx: Mapping[str, Any], seen_at: datetime) -> list[Transfer]:
        """What an unmined transaction will move for the watched wallets, ``status=PENDING``.

        Native value gets position 0. A plain ERC-20 ``transfer``/``transferFrom`` call gets
        position 1: the position its Transfer log will have when, as for a standard token, it is
        the transaction's only log (a token that logs more, e.g. a fee, gets other ids once
        mined; the pending one is then retracted as dropped). Value a contract will forward
        (a multisig execution) cannot be known before it runs and is not reported pending.
        """
        tx_hash = _hex(_get(tx, "hash"))
        sender = normalize_address(str(_get(tx, "from")))
        to = _get(tx, "to")
        common = {"tx_hash": tx_hash, "time": seen_at, "status": TransferStatus.PENDING}
        out: list[Transfer] = []
        value = _int(_get(tx, "value") or 0)
        if to is not None and value > 0:
            out += self._pair(
                sender,
                normalize_address(str(to)),
                self.native_symbol,
                value,
                self.native_decimals,
                0,
                common,
            )
        data = _get(tx, "input", "data")
        tokens: list[Transfer] = []
        if self.tokens and to is not None and data:
            call = decode_transfer_call(sender, data)
            if call is not None and (call[0] in self._assets or call[1] in self._assets):
                info = self.token_info(str(to))
                tokens = self._pair(
                    call[0], call[1], info.symbol, call[2], info.decimals, 1, common
                )
        out += tokens
        if not self.read_balances or not out:
            return out
        # The wallet's latest balance, moved by this transaction (see as_if_mined).
        contract = normalize_address(str(to)) if tokens else None
        natives = len(out) - len(tokens)  # the native transfers come first
        wanted = [(t.wallet, None if i < natives else contract) for i, t in enumerate(out)]
        balances = self._balances(wanted, "latest")
        return [as_if_mined(t, balances.get(pair)) for t, pair in zip(out, wanted, strict=True)]
