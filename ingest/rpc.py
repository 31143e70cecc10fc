"""JSON-RPC for the EVM watcher: batched calls over HTTP with endpoint failover and back-off, an
adapter for an in-process web3 provider, and a WebSocket subscription that wakes the watcher.

Failures are classified: transport trouble (connect, timeout, HTTP 429 and 5xx, a truncated or
garbled body, a batch reply that does not match the request) is retried, on the next endpoint at
once and with exponential back-off once every endpoint failed in a row (a 429's ``Retry-After``
is honoured); each is counted in ``drainwatch_watcher_rpc_errors_total{endpoint,kind}``. A
JSON-RPC error object (the node understood and refused) is not retried: it is raised as
:class:`RpcCallError` with its code, so callers can tell "method not supported" from an outage.

>>> RpcClient(["http://127.0.0.1:1"], chain="doc", attempts=2, max_wait_s=0.01).call(
...     "eth_blockNumber")
Traceback (most recent call last):
...
ingest.errors.RpcError: doc: eth_blockNumber failed after 2 attempts (...: connect...)
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
from web3 import Web3
from web3.exceptions import Web3RPCError

from ingest import metrics
from ingest.errors import RpcCallError, RpcError

__all__ = ["Rpc", "RpcCallError", "RpcClient", "Subscriber", "Web3Rpc"]

log = logging.getLogger(__name__)

Call = tuple[str, Sequence[Any]]


class Rpc(Protocol):
    """What the EVM source needs from a node connection."""

    chain: str

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call; raises :class:`RpcCallError` or, after retries, :class:`RpcError`."""
        ...

    def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Several calls in one round trip; each item is a result or an :class:`RpcCallError`."""
        ...


class _Transient(Exception):  # noqa: N818 - internal: "retry this"
    def __init__(self, kind: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.retry_after_s = retry_after_s


class RpcClient:
    """JSON-RPC over HTTP to one of several endpoints (tried in order, sticky while they work).

    Args:
        endpoints: URLs, the preferred one first.
        chain: the chain id (for errors and metrics).
        timeout_s: per request.
        attempts: requests per call before :class:`RpcError` (spread over the endpoints).
        max_wait_s: the longest back-off pause.
        client: an ``httpx.Client`` to use (tests, proxies); one with keep-alive by default.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        chain: str = "",
        timeout_s: float = 10.0,
        attempts: int = 6,
        max_wait_s: float = 8.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.chain = chain
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        self._client = client or httpx.Client(timeout=timeout_s)
        self._current = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self.endpoints[self._current]

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call (see :class:`Rpc`)."""
        (result,) = self._send([(method, params)], single=True)
        if isinstance(result, RpcCallError):
            raise result
        return result

    def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Several calls in one HTTP request (see :class:`Rpc`)."""
        return self._send(calls, single=False) if calls else []

    def _send(self, calls: Sequence[Call], *, single: bool) -> list[Any]:
        what = calls[0][0] if len(calls) == 1 else f"batch of {len(calls)} ({calls[0][0]}, …)"
        failures: list[str] = []
        streak = 0
        for attempt in range(1, self.attempts + 1):
            url = self.endpoint
            try:
                return self._post(url, calls, single)
            except _Transient as exc:
                metrics.RPC_ERRORS.labels(chain=self.chain, endpoint=url, kind=exc.kind).inc()
                failures.append(f"{url}: {exc.kind}: {exc}")
                log.warning("%s: %s to %s failed (%s: %s)", self.chain, what, url, exc.kind, exc)
                streak += 1
                self._current = (self._current + 1) % len(self.endpoints)
                if attempt == self.attempts:
                    break
                if streak >= len(self.endpoints) or exc.retry_after_s is not None:
                    # every endpoint failed in a row (or one asked us to slow down): back off
                    rounds = (attempt - 1) // len(self.endpoints)
                    pause = min(self.max_wait_s, 0.1 * 2**rounds) * (0.5 + random.random() / 2)  # noqa: S311
                    if exc.retry_after_s is not None:
                        pause = min(self.max_wait_s, max(pause, exc.retry_after_s))
                    time.sleep(pause)
                    streak = 0
        raise RpcError(
            f"{what} failed after {self.attempts} attempts ({failures[-1]})", chain=self.chain
        )

    def _post(self, url: str, calls: Sequence[Call], single: bool) -> list[Any]:
        with self._lock:
            ids = [next(self._ids) for _ in calls]
        body: Any = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        try:
            resp = self._client.post(url, json=body[0] if single else body)
        except httpx.TimeoutException as exc:
            raise _Transient("timeout", str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise _Transient("connect", str(exc) or type(exc).__name__) from exc
        if resp.status_code == 429:
            raise _Transient("http_429", "too many requests", _retry_after(resp))
        if resp.status_code >= 500:
            raise _Transient("http_5xx", f"HTTP {resp.status_code}")
        try:
            data = json.loads(resp.content)
        except ValueError as exc:
            if resp.status_code >= 400:
                raise _Transient("http_4xx", f"HTTP {resp.status_code}") from exc
            raise _Transient("bad_json", f"unreadable reply ({exc})") from exc
        replies = [data] if single and isinstance(data, dict) else data
        if not isinstance(replies, list) or not all(isinstance(r, dict) for r in replies):
            raise _Transient("bad_json", "reply is not a JSON-RPC response")
        by_id = {r.get("id"): r for r in replies}
        out: list[Any] = []
        for i, (method, _) in zip(ids, calls, strict=True):
            reply = by_id.get(i)
            if reply is None:
                if len(replies) == 1 and replies[0].get("id") is None and "error" in replies[0]:
                    raise RpcCallError(method, replies[0]["error"], chain=self.chain)
                raise _Transient("bad_json", f"no reply for {method} (id {i})")
            if "error" in reply and reply["error"] is not None:
                error = RpcCallError(method, reply["error"], chain=self.chain)
                if error.code in (429, -32005):  # rate limits some providers use
                    raise _Transient("http_429", error.reason, 1.0)
                out.append(error)
            elif "result" in reply:
                out.append(reply["result"])
            else:
                raise _Transient("bad_json", f"reply for {method} has no result")
        return out

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


def _retry_after(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


class Web3Rpc:
    """:class:`Rpc` over a web3 client (e.g. the in-process ``EthereumTesterProvider``).

    Results come back in web3's formatting (ints, AttributeDicts); the EVM source reads both.
    Batches are sent one call at a time.
    """

    def __init__(self, w3: Web3, chain: str = "") -> None:
        self.w3 = w3
        self.chain = chain

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call through web3's request manager."""
        try:
            return self.w3.manager.request_blocking(method, list(params))  # type: ignore[arg-type]
        except Web3RPCError as exc:
            error = (exc.rpc_response or {}).get("error") or {"message": str(exc)}
            raise RpcCallError(method, error, chain=self.chain) from exc
        except (NotImplementedError, ValueError, KeyError) as exc:
            raise RpcCallError(method, {"code": -32601, "message": str(exc)}) from exc
        except Exception as exc:
            raise RpcError(f"{method} failed: {exc}", chain=self.chain) from exc

    def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Each call in turn."""
        out: list[Any] = []
        for method, params in calls:
            try:
                out.append(self.call(method, params))
            except RpcCallError as exc:
                out.append(exc)
        return out


class Subscriber:
    """Follows ``newHeads`` (and optionally ``newPendingTransactions``) over WebSocket in a
    background thread, calling ``on_event`` for each notification.

    It only wakes the HTTP poller, which does all the reading: a missed notification (or a dead
    socket) costs latency, never data. It reconnects with back-off, trying each URL in turn.

    Args:
        urls: ``ws://`` endpoints.
        on_event: called with ("head" | "pending", payload) from the subscriber thread.
        chain: for logs and metrics.
        pending: also subscribe to new pending transaction hashes.
    """

    def __init__(
        self,
        urls: Sequence[str],
        on_event: Callable[[str, Any], None],
        *,
        chain: str = "",
        pending: bool = False,
        max_wait_s: float = 10.0,
    ) -> None:
        self.urls = tuple(urls)
        self.on_event = on_event
        self.chain = chain
        self.pending = pending
        self.max_wait_s = max_wait_s
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Subscriber:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name=f"ws-{self.chain}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from websockets.sync.client import connect

        failures = 0
        for url in itertools.cycle(self.urls):
            if self._stop.is_set():
                return
            try:
                with connect(url, open_timeout=5, close_timeout=1, max_size=2**24) as ws:
                    subs: dict[str, str] = {}
                    kinds = ["newHeads", *(["newPendingTransactions"] if self.pending else [])]
                    for n, kind in enumerate(kinds, start=1):
                        ws.send(
                            json.dumps(
                                {
                                    "jsonrpc": "2.0",
                                    "id": n,
                                    "method": "eth_subscribe",
                                    "params": [kind],
                                }
                            )
                        )
                        reply = json.loads(ws.recv(timeout=5))
                        if "result" not in reply:
                            raise RpcError(f"eth_subscribe {kind}: {reply.get('error')}")
                        subs[reply["result"]] = "head" if kind == "newHeads" else "pending"
                    self.connected.set()
                    failures = 0
                    while not self._stop.is_set():
                        try:
                            message = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        params = json.loads(message).get("params") or {}
                        event = subs.get(params.get("subscription", ""))
                        if event is not None:
                            self.on_event(event, params.get("result"))
            except Exception as exc:  # any socket trouble: HTTP polling goes on meanwhile
                self.connected.clear()
                if self._stop.is_set():
                    return
                failures += 1
                metrics.RPC_ERRORS.labels(chain=self.chain, endpoint=url, kind="ws").inc()
                log.warning("%s: WebSocket %s failed (%s); polling meanwhile", self.chain, url, exc)
                self._stop.wait(min(self.max_wait_s, 0.2 * 2 ** min(failures, 6)))
