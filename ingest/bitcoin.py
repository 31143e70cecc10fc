"""The Bitcoin chain source: raw blocks and mempool parsed with bitcoinlib, UTXO-accounted.

Blocks and transactions are fetched raw (``getblock <hash> 0``, ``getrawtransaction <txid> 0``)
so that Bitcoin Core and btcd look the same: their verbose JSON layouts differ.

One transfer per (transaction, wallet, direction). A wallet's net effect in a transaction is
``sent - returned``: the value of the inputs it owned minus the outputs paid back to it. Positive is
an outflow (counterparty: the first output address outside the wallet; all of them in
``counterparties``), negative an inflow (counterparty: the first input address outside the wallet,
else ``coinbase`` or the first other output). Inputs are attributed from the watched UTXO set
(:mod:`ingest.utxo`), so no transaction index is needed on the node. ``position`` is always 0, so
the pending, confirmed and retracted versions of a transfer share one id.

A wallet may be one address or an extended public key / descriptor (:mod:`ingest.xpub`); every
derived address belongs to that wallet, and the transfers name the configured key string.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Final

from bitcoinlib.blocks import Block  # type: ignore[import-untyped,unused-ignore]
from bitcoinlib.transactions import Transaction  # type: ignore[import-untyped,unused-ignore]

from drainwatch.config import ChainConfig, WalletConfig
from drainwatch.events import Direction, Transfer, TransferStatus
from ingest.base import BlockData, Publish, Watcher, as_if_mined
from ingest.btc_rpc import BitcoinRpc, BtcRpcError
from ingest.cursor import CursorStore
from ingest.errors import RpcError, WatcherError
from ingest.utxo import Op, Outpoint, Utxo, UtxoStore
from ingest.xpub import (
    DEFAULT_GAP_LIMIT,
    NETWORKS,
    AddressError,
    KeyWallet,
    NetworkParams,
    address_script,
    is_extended,
    parse_watch_spec,
    pubkey_address,
    script_address,
)

__all__ = [
    "BitcoinSource",
    "Movement",
    "ParsedBlock",
    "ParsedTx",
    "TxIn",
    "TxOut",
    "WatchList",
    "account",
    "bitcoin_watcher",
    "input_address",
    "merkle_root",
    "movement_transfer",
    "parse_block",
    "parse_tx",
]

log = logging.getLogger(__name__)

SATOSHI_DECIMALS: Final = 8
COINBASE: Final = "coinbase"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- parsing (every bitcoinlib call stays in this section) ------------------------------------


@dataclass(frozen=True, slots=True)
class TxIn:
    """An input: the output it spends (None for a coinbase) and, when standard, its address."""

    prev: Outpoint | None
    address: str | None


@dataclass(frozen=True, slots=True)
class TxOut:
    """An output: index, value in satoshi, address (None for OP_RETURN and non-standard)."""

    n: int
    value: int
    address: str | None


@dataclass(frozen=True, slots=True)
class ParsedTx:
    """A transaction reduced to what accounting needs."""

    txid: str
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]


@dataclass(frozen=True, slots=True)
class ParsedBlock:
    """A block reduced to what accounting needs."""

    hash: str
    parent: str
    time: datetime
    txs: tuple[ParsedTx, ...]


class _StrictReader(BytesIO):
    """A byte stream that raises on a short read: a truncated block never parses "successfully"
    (bitcoinlib's lenient mode would read zeros past the end)."""

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and len(data) < size:
            raise ValueError(f"truncated data: wanted {size} bytes at {self.tell()}")
        return data


def _dsha(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def merkle_root(txids: Sequence[str]) -> str:
    """The merkle root (display hex) of transaction ids (display hex), as in a block header.

    >>> merkle_root(["4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"])
    '4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b'
    """
    level = [bytes.fromhex(t)[::-1] for t in txids]
    if not level:
        raise ValueError("a block has at least one transaction")
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [_dsha(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0][::-1].hex()


def _push_items(script: bytes) -> list[bytes] | None:
    """The data pushes of a push-only script, or None if it has other opcodes."""
    items: list[bytes] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if 1 <= op <= 75:
            size = op
        elif op == 76 and i < len(script):
            size, i = script[i], i + 1
        elif op == 77 and i + 1 < len(script):
            size, i = int.from_bytes(script[i : i + 2], "little"), i + 2
        else:
            return None
        if i + size > len(script):
            return None
        items.append(script[i : i + size])
        i += size
    return items


def _is_pubkey(item: bytes) -> bool:
    return (len(item) == 33 and item[0] in (2, 3)) or (len(item) == 65 and item[0] == 4)


def input_address(
    script_sig: bytes, witnesses: Sequence[bytes], network: str | NetworkParams
) -> str | None:
    """The address an input spends from, when its script reveals it (P2PKH, P2WPKH, P2SH-P2WPKH).

    >>> pk = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    >>> input_address(b"", [b"sig", pk], "regtest")
    'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080'
    >>> input_address(bytes([3]) + b"sig" + bytes([33]) + pk, [], "bitcoin")
    '1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH'
    >>> input_address(b"", [], "bitcoin") is None
    True
    """
    params = NETWORKS[network] if isinstance(network, str) else network
    pushes = _push_items(script_sig)
    if len(witnesses) == 2 and _is_pubkey(witnesses[1]) and len(witnesses[1]) == 33:
        if not script_sig:
            return pubkey_address(witnesses[1], "p2wpkh", params)
        if pushes is not None and len(pushes) == 1 and pushes[0][:2] == b"\x00\x14":
            return pubkey_address(witnesses[1], "p2sh-p2wpkh", params)
        return None
    if not witnesses and pushes is not None and len(pushes) == 2 and _is_pubkey(pushes[1]):
        return pubkey_address(pushes[1], "p2pkh", params)
    return None


_BITCOINLIB_NETWORK: Final = {"bitcoin": "bitcoin", "testnet": "testnet", "regtest": "regtest"}


def _convert_tx(tx: Any, params: NetworkParams) -> ParsedTx:
    inputs: list[TxIn] = []
    for inp in tx.inputs:
        if tx.coinbase:
            inputs.append(TxIn(None, None))
            continue
        witnesses = [bytes(w) for w in inp.witnesses if w != b"\0"]
        address = input_address(bytes(inp.unlocking_script or b""), witnesses, params)
        inputs.append(TxIn((bytes(inp.prev_txid).hex(), int(inp.output_n_int)), address))
    outputs = tuple(
        TxOut(n, int(out.value), script_address(bytes(out.lock_script), params))
        for n, out in enumerate(tx.outputs)
    )
    return ParsedTx(str(tx.txid), tuple(inputs), outputs)


def _parse_one_tx(reader: BytesIO, params: NetworkParams, index: int | None) -> ParsedTx:
    tx = Transaction.parse_bytesio(
        reader, strict=False, network=_BITCOINLIB_NETWORK[params.name], index=index
    )
    return _convert_tx(tx, params)


def parse_tx(raw: bytes, network: str | NetworkParams) -> ParsedTx:
    """Parse one raw transaction with bitcoinlib; raise ValueError if it is not exactly one."""
    params = NETWORKS[network] if isinstance(network, str) else network
    reader = _StrictReader(raw)
    try:
        parsed = _parse_one_tx(reader, params, None)
    except ValueError:
        raise
    except Exception as exc:  # bitcoinlib raises its own errors (and worse) on garbage
        raise ValueError(f"unparseable transaction: {type(exc).__name__}: {exc}") from exc
    if reader.tell() != len(raw):
        raise ValueError(f"{len(raw) - reader.tell()} bytes after the transaction")
    return parsed


def _header_time(value: Any) -> int:
    # bitcoinlib turns the header's 4 time bytes into an int; older releases kept the bytes.
    return value if isinstance(value, int) else int.from_bytes(bytes(value), "big")


def parse_block(raw: bytes, expected_hash: str, network: str | NetworkParams) -> ParsedBlock:
    """Parse a raw block with bitcoinlib and check it is whole: hash, merkle root, no leftovers.

    Raises:
        ValueError: not the block asked for, truncated, or not a block at all.
    """
    params = NETWORKS[network] if isinstance(network, str) else network
    reader = _StrictReader(raw)
    try:
        header = Block.parse_bytesio(
            reader,
            block_hash=bytes.fromhex(expected_hash),
            parse_transactions=False,
            network=_BITCOINLIB_NETWORK[params.name],
        )
        txs = tuple(_parse_one_tx(reader, params, i) for i in range(int(header.tx_count)))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"unparseable block: {type(exc).__name__}: {exc}") from exc
    if reader.tell() != len(raw):
        raise ValueError(f"{len(raw) - reader.tell()} bytes after the last transaction")
    if merkle_root([t.txid for t in txs]) != bytes(header.merkle_root).hex():
        raise ValueError("merkle root does not match the transactions")
    return ParsedBlock(
        hash=expected_hash,
        parent=bytes(header.prev_block).hex(),
        time=datetime.fromtimestamp(_header_time(header.time), tz=UTC),
        txs=txs,
    )


# -- accounting (pure) ------------------------------------------------------------------------


class WatchList:
    """Which wallet owns an address: single addresses plus extended-key wallets (gap-extended).

    Args:
        addresses: single-address wallets (address -> wallet).
        keys: extended-key wallets (configured key string -> derivation state).
    """

    def __init__(self, addresses: Mapping[str, str], keys: Mapping[str, KeyWallet]) -> None:
        self.keys = dict(keys)
        self._owner = dict(addresses)
        for wallet, kw in self.keys.items():
            for address in kw.addresses:
                self._owner[address] = wallet

    @property
    def wallets(self) -> frozenset[str]:
        """Every wallet (as configured)."""
        return frozenset(self._owner.values()) | frozenset(self.keys)

    def owner(self, address: str | None) -> str | None:
        """The wallet that owns ``address``, or None."""
        return None if address is None else self._owner.get(address)

    def note_used(self, address: str) -> None:
        """``address`` received coins: extend its key wallet's derivation past it."""
        wallet = self._owner.get(address)
        kw = self.keys.get(wallet) if wallet is not None else None
        if kw is not None:
            for new in kw.mark_used([address]):
                self._owner[new] = wallet  # type: ignore[assignment]

    def usage(self) -> dict[str, dict[int, int]]:
        """Highest used index per key wallet and branch (to persist)."""
        return {w: dict(kw.used) for w, kw in self.keys.items() if kw.used}


@dataclass(slots=True)
class Movement:
    """One wallet's part in one transaction."""

    txid: str
    wallet: str
    sent: int = 0
    """Satoshi of the wallet's outputs spent by the transaction."""
    returned: int = 0
    """Satoshi the transaction pays to the wallet."""
    others_out: list[str] = field(default_factory=list)
    """Output addresses outside the wallet, in output order, without repeats."""
    others_in: list[str] = field(default_factory=list)
    """Input addresses outside the wallet (when the scripts reveal them)."""
    coinbase: bool = False


def account(
    txs: Iterable[ParsedTx],
    watch: WatchList,
    known: Mapping[Outpoint, Utxo],
    *,
    extend: bool = True,
) -> tuple[list[Movement], list[Op]]:
    """Attribute transactions (in chain order) to wallets; return movements and UTXO changes.

    ``known`` holds watched outputs created before these transactions; outputs created by earlier
    transactions of ``txs`` are found too. With ``extend``, an address of a key wallet that
    receives coins extends that wallet's derivation before the next transaction is read.

    >>> tx1 = ParsedTx("aa", (TxIn(None, None),), (TxOut(0, 5000, "hot"),))
    >>> tx2 = ParsedTx("bb", (TxIn(("aa", 0), "hot"),),
    ...                (TxOut(0, 3000, "thief"), TxOut(1, 1900, "hot")))
    >>> moves, ops = account([tx1, tx2], WatchList({"hot": "hot"}, {}), {})
    >>> [(m.txid, m.sent, m.returned, m.others_out) for m in moves]
    [('aa', 0, 5000, []), ('bb', 5000, 1900, ['thief'])]
    >>> [(o.kind, o.outpoint) for o in ops]
    [('create', ('aa', 0)), ('spend', ('aa', 0)), ('create', ('bb', 1))]
    """
    created: dict[Outpoint, Utxo] = {}
    spent: set[Outpoint] = set()
    moves: list[Movement] = []
    ops: list[Op] = []
    for tx in txs:
        mine: dict[str, Movement] = {}
        coinbase = any(i.prev is None for i in tx.inputs)
        for inp in tx.inputs:
            if inp.prev is None or inp.prev in spent:
                continue
            utxo = created.get(inp.prev) or known.get(inp.prev)
            if utxo is None:
                continue
            spent.add(inp.prev)
            m = mine.setdefault(utxo.wallet, Movement(tx.txid, utxo.wallet))
            m.sent += utxo.value
            ops.append(Op.spend(inp.prev))
        for out in tx.outputs:
            wallet = watch.owner(out.address)
            if wallet is None or out.address is None:
                continue
            if out.value > 0:
                mine.setdefault(wallet, Movement(tx.txid, wallet)).returned += out.value
            created[(tx.txid, out.n)] = Utxo(out.address, wallet, out.value)
            ops.append(Op.create((tx.txid, out.n), out.address, wallet, out.value))
            if extend:
                watch.note_used(out.address)
        for m in mine.values():
            m.coinbase = coinbase
            for address in (o.address for o in tx.outputs):
                if address is not None and watch.owner(address) != m.wallet:
                    m.others_out.append(address)
            for address in (i.address for i in tx.inputs):
                if address is not None and watch.owner(address) != m.wallet:
                    m.others_in.append(address)
            m.others_out = list(dict.fromkeys(m.others_out))
            m.others_in = list(dict.fromkeys(m.others_in))
            moves.append(m)
    return moves, ops


def movement_transfer(
    m: Movement,
    *,
    chain: str,
    asset: str,
    time: datetime,
    status: TransferStatus,
    block_number: int | None = None,
    block_hash: str | None = None,
    balance_after: int | None = None,
) -> Transfer | None:
    """The transfer of one movement (None when the wallet's net effect is zero).

    >>> from datetime import UTC
    >>> m = Movement("bb", "hot", sent=5000, returned=1900, others_out=["thief", "x"])
    >>> t = movement_transfer(m, chain="btc", asset="BTC", time=datetime(2024, 1, 1, tzinfo=UTC),
    ...                       status=TransferStatus.CONFIRMED)
    >>> t.direction.value, t.amount, t.counterparty, t.counterparties, t.position
    ('out', 3100, 'thief', ('thief', 'x'), 0)
    """
    net = m.sent - m.returned
    if net == 0:
        return None
    if net > 0:
        direction = Direction.OUT
        # All outputs back to the wallet (a consolidation): the fee went to miners.
        others = tuple(m.others_out)
        counterparty = others[0] if others else m.wallet
    else:
        direction = Direction.IN
        others = tuple(m.others_in)
        if others:
            counterparty = others[0]
        elif m.coinbase:
            counterparty = COINBASE
        else:
            counterparty = m.others_out[0] if m.others_out else "unknown"
    return Transfer.create(
        chain=chain,
        wallet=m.wallet,
        direction=direction,
        counterparty=counterparty,
        counterparties=others,
        asset=asset,
        amount=abs(net),
        decimals=SATOSHI_DECIMALS,
        tx_hash=m.txid,
        position=0,
        time=time,
        status=status,
        block_number=block_number,
        block_hash=block_hash,
        balance_after=balance_after,
    )


# -- the source -------------------------------------------------------------------------------


def _as_hash(value: Any) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"not a block or transaction hash: {str(value)[:80]!r}")
    return value


def _as_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a block number: {str(value)[:80]!r}")
    return value


def _as_hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"not hex: {str(value)[:80]!r}")
    return bytes.fromhex(value)


def _as_txids(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"not a list of transaction ids: {str(value)[:80]!r}")
    return [_as_hash(v) for v in value]


def build_watch_list(
    wallets: Iterable[WalletConfig],
    params: NetworkParams,
    gap_limit: int,
    usage: Mapping[str, Mapping[int, int]],
) -> WatchList:
    """The watch list of a chain's wallets; raise :class:`AddressError` on a bad one."""
    addresses: dict[str, str] = {}
    keys: dict[str, KeyWallet] = {}
    for w in wallets:
        if is_extended(w.address):
            spec = parse_watch_spec(w.address, params)
            keys[w.address] = KeyWallet(spec, gap_limit, dict(usage.get(w.address, {})))
        else:
            address_script(w.address, params)
            addresses[w.address] = w.address
    return WatchList(addresses, keys)


class BitcoinSource:
    """Blocks and mempool of a Bitcoin chain with the watched wallets' transfers.

    Implements :class:`ingest.base.ChainSource`, ``HashSource`` (``block_hash``) and
    ``PendingSource`` (``pending``). Node calls are retried by :class:`BitcoinRpc`; a block is
    returned only once it parsed whole and its UTXO changes are committed.

    Args:
        rpc: the node client.
        chain: the chain id from the config; wallets of other chains are ignored.
        wallets: the watched wallets (addresses, extended keys or descriptors).
        store: the watched UTXO set.
        network: ``bitcoin``, ``testnet`` or ``regtest``.
        symbol: the asset symbol.
        gap_limit: unused addresses watched past the last used one of a key wallet.
        balances_from: report ``balance_after`` only when the UTXO set was built from a block
            at or below this height (the wallets held nothing before it); None: never.
        max_pending_lookback: unconfirmed-but-mined blocks (above the UTXO tip) read to
            attribute mempool spends of their outputs.
    """

    def __init__(
        self,
        rpc: BitcoinRpc,
        chain: str,
        wallets: Sequence[WalletConfig],
        store: UtxoStore,
        *,
        network: str = "bitcoin",
        symbol: str = "BTC",
        gap_limit: int = DEFAULT_GAP_LIMIT,
        balances_from: int | None = 0,
        max_pending_lookback: int = 24,
    ) -> None:
        if network not in NETWORKS:
            raise ValueError(f"unknown Bitcoin network {network!r}")
        self.rpc = rpc
        self.chain = chain
        self.wallets = tuple(w for w in wallets if w.chain == chain and w.asset in (None, symbol))
        self.store = store
        self.network = network
        self.symbol = symbol
        self.gap_limit = gap_limit
        self.balances_from = balances_from
        self.max_pending_lookback = max_pending_lookback
        self._params = NETWORKS[network]
        try:
            self.watch = build_watch_list(
                self.wallets, self._params, gap_limit, store.key_usage(chain)
            )
        except AddressError as exc:
            raise WatcherError(f"bad wallet: {exc}", chain=chain) from exc
        self._mempool: dict[str, tuple[ParsedTx, datetime]] = {}
        self._pending_cache: dict[str, tuple[Transfer, ...]] = {}
        self._recent: dict[str, ParsedBlock] = {}
        self._pending_tip: tuple[int, str] | None = None

    # -- node calls ---------------------------------------------------------------------------

    def head(self) -> int:
        """The newest block number the node knows."""
        return int(self.rpc.call("getblockcount", check=_as_int))

    def block_hash(self, number: int) -> str | None:
        """The hash of block ``number`` on the node's chain, None above its head."""
        try:
            return str(self.rpc.call("getblockhash", number, check=_as_hash))
        except BtcRpcError:
            if number > self.head():
                return None
            raise

    def _fetch(self, number: int) -> ParsedBlock:
        block_hash = self.block_hash(number)
        if block_hash is None:
            raise RpcError(f"block {number} is above the node's head", chain=self.chain)
        cached = self._recent.get(block_hash)
        if cached is not None:
            return cached
        parsed: ParsedBlock = self.rpc.call(
            "getblock",
            block_hash,
            0,
            check=lambda r: parse_block(_as_hex(r), block_hash, self._params),
        )
        return parsed

    # -- confirmed blocks ---------------------------------------------------------------------

    def block(self, number: int) -> BlockData:
        """Block ``number`` with the watched wallets' transfers; its UTXO changes are committed.

        Raises:
            RpcError: the node failed, or its chain changed while the block was being read.
            ReorgTooDeepError: the UTXO set cannot be undone back to this block's parent.
        """
        parsed = self._fetch(number)
        self._sync_to(number, parsed.parent)
        tip = self.store.tip(self.chain)
        if tip is not None and tip != (number - 1, parsed.parent):
            raise RpcError(
                f"the chain changed while block {number} was read; reading it again",
                chain=self.chain,
                block=number,
            )
        transfers = self._apply(number, parsed)
        return BlockData(
            number=number,
            hash=parsed.hash,
            parent_hash=parsed.parent,
            time=parsed.time,
            transfers=tuple(transfers),
        )

    def _sync_to(self, number: int, parent: str) -> None:
        """Bring the UTXO set to the node's chain just below ``number`` (parent ``parent``).

        Normally it is already there. After a crash it may be ahead (undo), after a reorg on
        another branch (undo to the common block, then read forward).
        """
        tip = self.store.tip(self.chain)
        if tip is None:
            return
        if tip[0] >= number:
            self.store.undo_to(self.chain, number - 1)
            tip = self.store.tip(self.chain)
        if tip is None or tip == (number - 1, parent):
            return
        while tip is not None and self.block_hash(tip[0]) != tip[1]:
            log.info("%s: UTXO block %d is not on the node's chain; undoing it", self.chain, tip[0])
            self.store.undo_to(self.chain, tip[0] - 1)
            tip = self.store.tip(self.chain)
        if tip is None:
            log.warning("%s: UTXO set undone to empty; it restarts at block %d", self.chain, number)
            return
        for height in range(tip[0] + 1, number):
            log.info("%s: bringing the UTXO set forward over block %d", self.chain, height)
            before = self._fetch(height)
            if self.store.tip(self.chain) != (height - 1, before.parent):
                raise RpcError("the chain changed while catching up", chain=self.chain)
            self._apply(height, before)

    def _apply(self, number: int, parsed: ParsedBlock) -> list[Transfer]:
        wanted = [i.prev for tx in parsed.txs for i in tx.inputs if i.prev is not None]
        known = self.store.lookup(self.chain, wanted)
        moves, ops = account(parsed.txs, self.watch, known)
        balances = self.store.apply(
            self.chain,
            number,
            parsed.hash,
            parent=parsed.parent,
            ops=ops,
            key_usage=self.watch.usage(),
        )
        report = self._report_balances()
        out: list[Transfer] = []
        for m in moves:
            t = movement_transfer(
                m,
                chain=self.chain,
                asset=self.symbol,
                time=parsed.time,
                status=TransferStatus.CONFIRMED,
                block_number=number,
                block_hash=parsed.hash,
                balance_after=balances.get(m.wallet) if report else None,
            )
            if t is not None:
                out.append(t)
        return out

    def _report_balances(self) -> bool:
        origin = self.store.origin(self.chain)
        if self.balances_from is None or origin is None:
            return False
        return origin <= self.balances_from

    # -- mempool ------------------------------------------------------------------------------

    def pending(self) -> Sequence[Transfer]:
        """Transfers of watched wallets in the node's mempool now (``status=PENDING``).

        ``time`` is when this source first saw the transaction. Inputs are attributed from the
        UTXO set, from mined blocks the watcher has not confirmed yet, and from other mempool
        transactions. A transaction is fetched and parsed once while it stays in the mempool;
        it is attributed again whenever the UTXO set changed.
        """
        txids = self.rpc.call("getrawmempool", check=_as_txids)
        now = datetime.now(UTC)
        current = set(txids)
        for gone in [t for t in self._mempool if t not in current]:
            del self._mempool[gone]
            self._pending_cache.pop(gone, None)
        new: list[str] = []
        for txid in txids:
            if txid in self._mempool:
                continue
            try:
                tx = self.rpc.call(
                    "getrawtransaction",
                    txid,
                    0,
                    check=lambda r: parse_tx(_as_hex(r), self._params),
                )
            except BtcRpcError:  # mined or dropped since getrawmempool
                continue
            if tx.txid != txid:
                raise RpcError(f"asked for {txid}, got {tx.txid}", chain=self.chain)
            self._mempool[txid] = (tx, now)
            new.append(txid)
        tip = self.store.tip(self.chain)
        if tip != self._pending_tip:
            # The UTXO set moved (a block, a reorg's undo): attribute everything again.
            self._pending_tip = tip
            new = list(self._mempool)
        if new:
            self._attribute_pending(new)
        out: list[Transfer] = []
        for txid in txids:
            out.extend(self._pending_cache.get(txid, ()))
        return out

    def _attribute_pending(self, new: Sequence[str]) -> None:
        known: dict[Outpoint, Utxo] = {}
        # Outputs of blocks above the UTXO tip (mined, not yet confirmed enough) and of the
        # mempool itself: a pending spend of them is attributed too.
        for block in self._unconfirmed_blocks():
            known.update(self._watched_outputs(block.txs))
        known.update(self._watched_outputs(tx for tx, _ in self._mempool.values()))
        wanted = [i.prev for t in new for i in self._mempool[t][0].inputs if i.prev is not None]
        known.update(self.store.lookup(self.chain, wanted))
        # With balances reported, each carries the wallet's confirmed balance moved by it.
        report = self._report_balances()
        for txid in new:
            tx, seen = self._mempool[txid]
            moves, _ = account([tx], self.watch, known, extend=False)
            confirmed = self.store.balances(self.chain, {m.wallet for m in moves}) if report else {}
            transfers = (
                movement_transfer(
                    m,
                    chain=self.chain,
                    asset=self.symbol,
                    time=seen,
                    status=TransferStatus.PENDING,
                )
                for m in moves
            )
            self._pending_cache[txid] = tuple(
                as_if_mined(t, confirmed.get(t.wallet)) for t in transfers if t is not None
            )

    def _watched_outputs(self, txs: Iterable[ParsedTx]) -> dict[Outpoint, Utxo]:
        found: dict[Outpoint, Utxo] = {}
        for tx in txs:
            for out in tx.outputs:
                wallet = self.watch.owner(out.address)
                if wallet is not None and out.address is not None:
                    found[(tx.txid, out.n)] = Utxo(out.address, wallet, out.value)
        return found

    def _unconfirmed_blocks(self) -> list[ParsedBlock]:
        tip = self.store.tip(self.chain)
        if tip is None:
            return []
        head = self.head()
        first = max(tip[0] + 1, head - self.max_pending_lookback + 1)
        blocks = [self._fetch(n) for n in range(first, head + 1)]
        self._recent = {b.hash: b for b in blocks}
        return blocks


def bitcoin_watcher(
    name: str,
    chain: ChainConfig,
    wallets: Sequence[WalletConfig],
    publish: Publish,
    cursors: CursorStore,
    *,
    utxo_path: str | Path,
) -> Watcher:
    """The watcher of Bitcoin chain ``name`` (mempool included unless ``pending = "off"``).

    ``balance_after`` is reported only with a ``start_block``: the UTXO set then holds every
    coin the wallets received since (the config promises they held none before).

    >>> cfg = ChainConfig(kind="bitcoin", rpc=("http://127.0.0.1:1",), network="regtest")
    >>> w = bitcoin_watcher("btc", cfg, [], print, CursorStore(":memory:"), utxo_path=":memory:")
    >>> w.pending is w.source, w.confirmations
    (True, 12)
    """
    rpc = BitcoinRpc(chain.rpc, chain=name, timeout_s=chain.rpc_timeout_s)
    source = BitcoinSource(
        rpc,
        name,
        wallets,
        UtxoStore(utxo_path),
        network=chain.network,
        symbol=chain.native_symbol if chain.native_symbol != "ETH" else "BTC",
        balances_from=chain.start_block,
    )
    return Watcher(
        source,
        publish,
        cursors,
        name,
        confirmations=chain.confirmations,
        start_block=chain.start_block,
        max_batch=chain.batch_blocks,
        pending=None if chain.pending == "off" else source,
    )
