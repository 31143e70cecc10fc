"""Endpoint failover, back-off on 429s and garbled replies, metrics, and config checks.

The misbehaving node is a real local HTTP server that answers from a script (429, a truncated
body, a 502, a JSON-RPC error) and then proxies to anvil.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from drainwatch.config import ConfigError, loads
from ingest import CursorStore, RpcCallError, RpcClient, RpcError
from ingest.metrics import REGISTRY
from tests.harness.services import AnvilService
from tests.ingest.evm_helpers import (
    CHAIN,
    Recorder,
    drain,
    observed,
    send,
    source_for,
    truth,
    watcher_for,
    web3,
)

pytestmark = pytest.mark.services


class FlakyNode:
    """An HTTP JSON-RPC endpoint that plays ``script`` (one step per request), then proxies."""

    def __init__(self, upstream: str, script: list[str] | None = None) -> None:
        self.upstream = upstream
        self.script = list(script or [])
        self.requests = 0
        self.down = False
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                node.requests += 1
                step = node.script.pop(0) if node.script else "proxy"
                if node.down:
                    self.connection.close()  # like a crashed backend behind a load balancer
                    return
                if step == "429":
                    self._reply(429, b"slow down", {"retry-after": "0"})
                elif step == "502":
                    self._reply(502, b"<html>bad gateway</html>")
                elif step == "truncated":
                    reply = node.forward(body)
                    self._reply(200, reply[: len(reply) // 2])
                elif step == "rpc429":  # some providers say it in a JSON-RPC error instead
                    request = json.loads(body)
                    ident = request[0]["id"] if isinstance(request, list) else request["id"]
                    error = {"code": 429, "message": "rate limited"}
                    self._reply(
                        200, json.dumps({"jsonrpc": "2.0", "id": ident, "error": error}).encode()
                    )
                else:
                    self._reply(200, node.forward(body))

            def _reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, body: bytes) -> bytes:
        headers = {"content-type": "application/json"}
        return httpx.post(self.upstream, content=body, headers=headers).content

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(anvil: AnvilService) -> Iterator[FlakyNode]:
    node = FlakyNode(anvil.url)
    yield node
    node.close()


def errors(endpoint: str, kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "drainwatch_watcher_rpc_errors_total", {"chain": CHAIN, "endpoint": endpoint, "kind": kind}
    )
    return value or 0.0


def test_429_truncated_and_502_replies_are_retried_counted_and_lose_nothing(
    anvil: AnvilService, flaky: FlakyNode
) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    sent = [send(w3, hot, alice, n) for n in (1, 2, 3)]
    flaky.script = ["429", "truncated", "502", "rpc429", "proxy", "truncated"]
    before = {k: errors(flaky.url, k) for k in ("http_429", "bad_json", "http_5xx")}
    rec = Recorder()
    store = CursorStore(":memory:")
    drain(watcher_for(source_for(flaky.url, hot, attempts=8), rec, store))
    assert set(observed(rec.transfers)) == truth(sent, {hot.lower()})
    assert len(rec.transfers) == 3
    assert errors(flaky.url, "http_429") - before["http_429"] == 2  # HTTP 429 and a JSON-RPC 429
    assert errors(flaky.url, "bad_json") - before["bad_json"] == 2
    assert errors(flaky.url, "http_5xx") - before["http_5xx"] == 1


def test_a_node_that_keeps_failing_raises_and_never_moves_the_cursor(
    anvil: AnvilService, flaky: FlakyNode
) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    send(w3, hot, alice, 1)
    rec = Recorder()
    store = CursorStore(":memory:")
    watcher = watcher_for(source_for(flaky.url, hot, attempts=3), rec, store)
    drain(watcher)
    cursor = store.get(CHAIN)
    send(w3, hot, alice, 2)
    flaky.script = ["truncated"] * 10
    with pytest.raises(RpcError, match="failed after 3 attempts"):
        watcher.poll_once()
    assert store.get(CHAIN) == cursor
    assert len(rec.transfers) == 1
    flaky.script = []
    drain(watcher)
    assert [t.amount for t in rec.transfers] == [1, 2]


def test_a_json_rpc_error_is_not_retried_and_names_its_code(anvil: AnvilService) -> None:
    rpc = RpcClient([anvil.url], chain=CHAIN)
    with pytest.raises(RpcCallError) as info:
        rpc.call("no_suchMethod")
    assert info.value.unsupported
    assert rpc.batch([("eth_chainId", []), ("no_suchMethod", [])])[1].code == info.value.code


def test_dead_endpoint_first_then_live_and_failover_in_the_middle_of_a_run(
    anvil: AnvilService, flaky: FlakyNode
) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    dead = "http://127.0.0.1:1"
    sent = [send(w3, hot, alice, n) for n in (1, 2)]
    before = errors(dead, "connect")
    source = source_for([dead, flaky.url, anvil.url], hot, attempts=6)
    rec = Recorder()
    watcher = watcher_for(source, rec, CursorStore(":memory:"))
    drain(watcher)
    assert errors(dead, "connect") - before == 1
    assert source.rpc.endpoint == flaky.url  # type: ignore[attr-defined]
    flaky.down = True  # the endpoint in use dies mid-run
    sent += [send(w3, hot, alice, n) for n in (3, 4)]
    drain(watcher)
    assert source.rpc.endpoint == anvil.url  # type: ignore[attr-defined]
    assert set(observed(rec.transfers)) == truth(sent, {hot.lower()})
    assert len(rec.transfers) == 4


def test_watcher_metrics_follow_head_cursor_blocks_and_transfers(anvil: AnvilService) -> None:
    w3 = web3(anvil)
    hot, alice = list(w3.eth.accounts)[:2]
    chain = "anvil-metrics"
    send(w3, hot, alice, 5)
    send(w3, hot, alice, 6)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"chain": chain, **labels}) or 0.0

    blocks = sample("drainwatch_watcher_blocks_total")
    confirmed = sample("drainwatch_watcher_transfers_total", status="confirmed")
    source = source_for(anvil.url, hot)
    source.chain = chain
    from ingest import Watcher

    store = CursorStore(":memory:")
    drain(Watcher(source, Recorder(), store, chain, confirmations=0, start_block=0))
    head = w3.eth.block_number
    assert sample("drainwatch_watcher_head_block") == head
    assert sample("drainwatch_watcher_cursor_block") == head
    assert sample("drainwatch_watcher_blocks_total") - blocks == head + 1
    assert sample("drainwatch_watcher_transfers_total", status="confirmed") - confirmed == 2


CONFIG = """
[[wallets]]
chain = "ethereum"
address = "0x00000000000000000000000000000000000000aa"

[[wallets]]
chain = "ethereum"
address = "{bad}"

[[wallets]]
chain = "bitcoin"
address = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"

[chains.ethereum]
kind = "evm"
rpc = ["http://127.0.0.1:8545"]
ws = ["ws://127.0.0.1:8545"]
traces = "trace"
pending = "txpool"

[chains.bitcoin]
kind = "bitcoin"
rpc = ["http://127.0.0.1:18443"]
"""


@pytest.mark.parametrize("bad", ["0x12", "0xzz000000000000000000000000000000000000aa", "alice.eth"])
def test_an_invalid_evm_address_is_rejected_at_load_with_its_key(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(CONFIG.format(bad=bad), path="dw.toml")
    assert info.value.key == "wallets[1].address"
    assert info.value.line == 8  # the line of that address


def test_evm_chain_options_load() -> None:
    cfg = loads(CONFIG.format(bad="0x" + "AB" * 20))
    eth = cfg.chains["ethereum"]
    assert (eth.ws, eth.traces, eth.pending, eth.batch_blocks) == (
        ("ws://127.0.0.1:8545",),
        "trace",
        "txpool",
        100,
    )
