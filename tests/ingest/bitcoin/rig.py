"""Helpers for the Bitcoin watcher tests: a btcd node wrapper with a faucet and a transaction
builder (bitcoinlib signs), a recorder for published transfers, and a small HTTP proxy in front of
btcd that can refuse, garble or truncate replies on demand.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bitcoinlib.keys import HDKey
from bitcoinlib.transactions import Transaction

from drainwatch.config import WalletConfig
from drainwatch.events import Transfer
from ingest.bitcoin import BitcoinSource, parse_block
from ingest.btc_rpc import BitcoinRpc
from ingest.cursor import CursorStore
from ingest.utxo import UtxoStore
from ingest.xpub import address_script
from tests.harness.services import BtcdService

CHAIN = "btc-regtest"
NETWORK = "regtest"
FEE = 10_000


def new_key() -> Any:
    """A fresh regtest key (P2WPKH) made with bitcoinlib."""
    return HDKey(network=NETWORK, witness_type="segwit")


def addr(key: Any) -> str:
    return str(key.address())


@dataclass(frozen=True)
class Coin:
    """A spendable output we created: outpoint, value, and the key that can sign for it."""

    txid: str
    vout: int
    value: int
    key: Any


class Node:
    """btcd plus the helpers a test needs to move coins on it."""

    def __init__(self, svc: BtcdService, miner: Any) -> None:
        self.svc = svc
        self.miner = miner
        self._next_coinbase = 1

    @property
    def url(self) -> str:
        return self.svc.rpc_url

    def rpc_client(self, **kwargs: Any) -> BitcoinRpc:
        kwargs.setdefault("retry_attempts", 3)
        kwargs.setdefault("retry_max_wait_s", 0.05)
        return BitcoinRpc([self.url], auth=self.svc.rpc_auth, chain=CHAIN, **kwargs)

    def mine(self, n: int = 1) -> list[str]:
        return self.svc.generate(n)

    def height(self) -> int:
        return self.svc.block_count()

    def _coinbase(self) -> Coin:
        """The next mature coinbase output of the miner (low heights: never reorganised)."""
        height = self._next_coinbase
        assert height + 100 <= self.height(), "no mature coinbase left"
        self._next_coinbase += 1
        block_hash = self.svc.rpc("getblockhash", [height])
        raw = bytes.fromhex(self.svc.rpc("getblock", [block_hash, 0]))
        cb = parse_block(raw, block_hash, NETWORK).txs[0]
        return Coin(cb.txid, 0, cb.outputs[0].value, self.miner)

    def send(
        self, coins: Sequence[Coin], outputs: Sequence[tuple[str, int]], change: str | None = None
    ) -> tuple[str, list[Coin]]:
        """Sign and broadcast a transaction; return its txid and the outputs as coins.

        With ``change``, whatever the inputs hold above the outputs and :data:`FEE` goes there.
        """
        tx = Transaction(network=NETWORK, witness_type="segwit")
        for c in coins:
            tx.add_input(c.txid, c.vout, keys=c.key, value=c.value, witness_type="segwit")
        outs = list(outputs)
        if change is not None:
            outs.append((change, sum(c.value for c in coins) - sum(v for _, v in outs) - FEE))
        for address, value in outs:
            tx.add_output(value, lock_script=address_script(address, NETWORK))
        tx.sign()
        assert tx.verify()
        txid = str(self.svc.rpc("sendrawtransaction", [tx.raw_hex()]))
        return txid, [Coin(txid, n, v, None) for n, (_, v) in enumerate(outs)]

    def fund(self, payments: Sequence[tuple[str, int]]) -> tuple[str, list[Coin]]:
        """Pay ``payments`` from a mature coinbase (change back to the miner)."""
        return self.send([self._coinbase()], payments, change=addr(self.miner))


@dataclass
class Recorder:
    """A publish callable that remembers every call; can fail before or after "publishing"."""

    batches: list[list[Transfer]] = field(default_factory=list)
    fail_before: int = 0
    fail_after: int = 0

    def __call__(self, transfers: Sequence[Transfer]) -> None:
        if self.fail_before:
            self.fail_before -= 1
            raise RuntimeError("crash before the bus acknowledged")
        self.batches.append(list(transfers))
        if self.fail_after:
            self.fail_after -= 1
            raise RuntimeError("crash between publish and cursor store")

    @property
    def transfers(self) -> list[Transfer]:
        return [t for batch in self.batches for t in batch]

    def latest(self) -> dict[str, Transfer]:
        """The last version of each transfer id (what a de-duplicating reader keeps)."""
        out: dict[str, Transfer] = {}
        for t in self.transfers:
            out[t.id] = t
        return out


def make_source(
    node: Node,
    tmp_path: Path,
    wallets: Sequence[str],
    *,
    rpc: BitcoinRpc | None = None,
    balances_from: int | None = 0,
    gap_limit: int = 20,
) -> BitcoinSource:
    """A source over a UTXO store in ``tmp_path`` (reopened by every call: a "restart")."""
    cfgs = [WalletConfig(chain=CHAIN, address=w) for w in wallets]
    return BitcoinSource(
        rpc or node.rpc_client(),
        CHAIN,
        cfgs,
        UtxoStore(tmp_path / "utxo.sqlite3"),
        network=NETWORK,
        balances_from=balances_from,
        gap_limit=gap_limit,
    )


def cursors(tmp_path: Path) -> CursorStore:
    return CursorStore(tmp_path / "cursors.sqlite3")


class FlakyProxy:
    """An HTTP server in front of a node: ``mode`` is ``proxy``, ``refuse`` (HTTP 503 with an
    HTML body), ``truncate`` (the node's reply cut in half) or ``garble`` (valid JSON, wrong
    shape). ``only`` limits the misbehaviour to one RPC method; ``times`` to a number of calls."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.mode = "proxy"
        self.only: str | None = None
        self.times: int | None = None
        self.requests: list[str] = []
        self._client = httpx.Client(trust_env=False)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                method = str(httpx.Response(200, content=body).json().get("method"))
                proxy.requests.append(method)
                mode = proxy._mode_for(method)
                if mode == "refuse":
                    self._reply(503, b"<html>service unavailable</html>")
                    return
                resp = proxy._client.post(
                    proxy.target,
                    content=body,
                    headers={
                        "Authorization": self.headers.get("Authorization", ""),
                        "Content-Type": "application/json",
                    },
                )
                data = resp.content
                if mode == "truncate":
                    data = data[: len(data) // 2]
                elif mode == "garble":
                    data = b'{"jsonrpc": "1.0", "unexpected": true}'
                self._reply(resp.status_code, data)

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _mode_for(self, method: str) -> str:
        if self.mode == "proxy" or (self.only is not None and method != self.only):
            return "proxy"
        if self.times is not None:
            if self.times <= 0:
                return "proxy"
            self.times -= 1
        return self.mode

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()
