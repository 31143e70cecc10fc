"""A small JSON-RPC client for Bitcoin nodes (Bitcoin Core, btcd): failover, back-off, no partials.

Each call goes to the endpoint that last answered; a transient failure (connection refused, time-
out, HTTP 5xx without a JSON-RPC error, 429, a truncated or garbled body, a node still warming up)
moves the next attempt to the next endpoint, with exponential back-off between attempts (tenacity).
A JSON-RPC error the node means (unknown block, bad parameter, wrong password) is raised at once.
A result is returned only after it parsed completely and passed the caller's ``check``; whatever
went wrong before that is retried, so a caller never sees half a block.

Credentials come from the URL (``http://user:pass@host:port``) or ``auth``; logs show URLs
without them.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ingest import metrics
from ingest.errors import RpcError

__all__ = [
    "BitcoinRpc",
    "BtcRpcError",
    "TransientRpcError",
    "redact_url",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bitcoin Core's RPC_IN_WARMUP: the node is loading its block index; asking again later works.
_WARMUP = -28


class BtcRpcError(RpcError):
    """The node answered a call with a JSON-RPC error (``code``, ``message``); not retried."""

    def __init__(
        self, method: str, code: int | None, message: str, *, chain: str | None = None
    ) -> None:
        super().__init__(f"{method}: JSON-RPC error {code}: {message}", chain=chain)
        self.method = method
        self.code = code
        self.message = message


class TransientRpcError(Exception):
    """One attempt failed in a way worth retrying (``kind`` is the metrics label: ``timeout``,
    ``connect``, ``http_5xx``, ``http_429``, ``bad_json``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def redact_url(url: str) -> str:
    """The URL without its password, for logs.

    >>> redact_url("http://user:secret@127.0.0.1:8332/")
    'http://user:***@127.0.0.1:8332/'
    >>> redact_url("http://127.0.0.1:8332")
    'http://127.0.0.1:8332'
    """
    parsed = httpx.URL(url)
    if not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def decode_reply(method: str, status: int, body: bytes, request_id: int) -> Any:
    """The ``result`` of one JSON-RPC reply; raise what the caller should do about a bad one.

    Raises:
        TransientRpcError: the reply is not a complete JSON-RPC answer to this request, or the
            server is overloaded or warming up: retry.
        BtcRpcError: the node refused the call: do not retry.

    >>> decode_reply("getblockcount", 200, b'{"result": 7, "error": null, "id": 1}', 1)
    7
    >>> decode_reply("getblockcount", 200, b'{"result": 7, "err', 1)
    Traceback (most recent call last):
    ...
    ingest.btc_rpc.TransientRpcError: bad_json: getblockcount: HTTP 200, body is not JSON ...
    >>> decode_reply("getblockhash", 500, b'{"result": null, "error": {"code": -8, '
    ...              b'"message": "out of range"}, "id": 1}', 1)
    Traceback (most recent call last):
    ...
    ingest.btc_rpc.BtcRpcError: getblockhash: JSON-RPC error -8: out of range
    >>> decode_reply("getblockcount", 502, b"<html>bad gateway</html>", 1)
    Traceback (most recent call last):
    ...
    ingest.btc_rpc.TransientRpcError: http_5xx: getblockcount: HTTP 502, body is not JSON ...
    """
    if status in (401, 403):
        # A wrong password does not heal by waiting; say so at once.
        raise BtcRpcError(method, None, f"HTTP {status}: authentication refused")
    try:
        reply = json.loads(body)
    except ValueError:
        kind = "http_429" if status == 429 else "http_5xx" if status >= 500 else "bad_json"
        raise TransientRpcError(
            kind, f"{method}: HTTP {status}, body is not JSON ({body[:80]!r}...)"
        ) from None
    if not isinstance(reply, dict) or "result" not in reply or reply.get("id") != request_id:
        raise TransientRpcError("bad_json", f"{method}: not a reply to request {request_id}")
    error = reply.get("error")
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        if code == _WARMUP:
            raise TransientRpcError("http_5xx", f"{method}: warming up: {message}")
        raise BtcRpcError(method, code if isinstance(code, int) else None, message)
    if status == 429:
        raise TransientRpcError("http_429", f"{method}: HTTP {status}")
    return reply["result"]


class BitcoinRpc:
    """JSON-RPC over HTTP to one of several equivalent nodes, tried in order.

    Args:
        urls: the endpoints; the first is preferred, the others take over when it fails.
        auth: basic-auth user and password, for URLs that do not carry them.
        chain: the chain id, for errors, logs and metrics.
        timeout_s: per-request timeout.
        retry_attempts: attempts per call (over all endpoints) before :class:`RpcError`.
        retry_max_wait_s: the longest pause between two attempts.
        client: the HTTP client (tests pass one with a custom transport).

    >>> rpc = BitcoinRpc(["http://127.0.0.1:1"], retry_attempts=2, retry_max_wait_s=0.01)
    >>> rpc.call("getblockcount")
    Traceback (most recent call last):
    ...
    ingest.errors.RpcError: getblockcount failed after 2 attempts: connect: ...
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        chain: str | None = None,
        timeout_s: float = 30.0,
        retry_attempts: int = 5,
        retry_max_wait_s: float = 8.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is needed")
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        self.urls = tuple(urls)
        self.auth = auth
        self.chain = chain
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.retry_max_wait_s = retry_max_wait_s
        self._client = client or httpx.Client(trust_env=False)
        self._current = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def current_url(self) -> str:
        """The endpoint the next call goes to first (redacted)."""
        return redact_url(self.urls[self._current])

    def call(self, method: str, *params: Any, check: Callable[[Any], T] | None = None) -> T | Any:
        """Call ``method`` and return its result, converted by ``check`` when given.

        ``check`` raises ``ValueError`` (or ``TypeError``) for a result that is incomplete or
        malformed (a truncated block, a wrong type); that counts as a transient failure.

        Raises:
            BtcRpcError: the node returned a JSON-RPC error.
            RpcError: every attempt failed transiently.
        """
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, TransientRpcError)),
            wait=wait_exponential(multiplier=0.1, max=self.retry_max_wait_s),
            stop=stop_after_attempt(self.retry_attempts),
            reraise=False,
        )
        try:
            return retrying(self._attempt, method, params, check)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise RpcError(
                f"{method} failed after {self.retry_attempts} attempts: {cause}", chain=self.chain
            ) from cause
        except BtcRpcError as exc:
            exc.chain = self.chain
            raise

    def _attempt(
        self, method: str, params: tuple[Any, ...], check: Callable[[Any], T] | None
    ) -> T | Any:
        with self._lock:
            index = self._current
            request_id = next(self._ids)
        url = self.urls[index]
        payload = {"jsonrpc": "1.0", "id": request_id, "method": method, "params": list(params)}
        try:
            try:
                resp = self._client.post(
                    url,
                    json=payload,
                    auth=self.auth if self.auth is not None else httpx.USE_CLIENT_DEFAULT,
                    timeout=self.timeout_s,
                )
            except httpx.TimeoutException as exc:
                raise TransientRpcError("timeout", f"{type(exc).__name__}: {exc}") from exc
            except httpx.HTTPError as exc:  # refused, reset, truncated body
                raise TransientRpcError("connect", f"{type(exc).__name__}: {exc}") from exc
            result = decode_reply(method, resp.status_code, resp.content, request_id)
            if check is not None:
                try:
                    return check(result)
                except (ValueError, TypeError) as exc:
                    raise TransientRpcError("bad_json", f"{method}: bad result: {exc}") from exc
            return result
        except TransientRpcError as exc:
            metrics.RPC_ERRORS.labels(self.chain or "", redact_url(url), exc.kind).inc()
            self._fail_over(index, method, exc)
            raise
        except BtcRpcError:
            metrics.RPC_ERRORS.labels(self.chain or "", redact_url(url), "rpc_error").inc()
            raise

    def _fail_over(self, index: int, method: str, exc: TransientRpcError) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.urls)
            nxt = self._current
        log.warning(
            "%s: %s on %s failed (%s); next attempt on %s",
            self.chain or "bitcoin",
            method,
            redact_url(self.urls[index]),
            exc,
            redact_url(self.urls[nxt]),
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
