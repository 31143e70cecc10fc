"""The HTTP client of the kill switch: freeze a wallet, retrying until the service answers.

Retries (tenacity, exponential backoff) cover connection errors, timeouts and 5xx answers. A POST
is retried even after a timeout, when the first attempt may have landed: freezing is idempotent,
so a repeat returns the same order. A 4xx is final and raises :class:`KillSwitchRejectedError`.

>>> from alerts.killswitch.app import create_app, serve_in_thread, server_port, stop_server
>>> from alerts.killswitch.store import FreezeStore
>>> store = FreezeStore(":memory:")
>>> server, thread = serve_in_thread(create_app(store))
>>> client = KillSwitchClient(f"http://127.0.0.1:{server_port(server)}")
>>> order = client.freeze("nem", "NC3B", reason="drain", alert_id="a1")
>>> order["action"], store.is_frozen("nem", "NC3B")
('freeze', True)
>>> client.close(); stop_server(server, thread)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from alerts.errors import KillSwitchRejectedError, KillSwitchUnavailableError
from alerts.killswitch.auth import signed_headers

__all__ = ["DEFAULT_REQUESTER", "HmacCredentials", "KillSwitchClient"]

DEFAULT_REQUESTER = "drainwatch-alerts"


@dataclass(frozen=True, slots=True)
class HmacCredentials:
    """A key id and its secret, to sign requests with (the secret stays out of ``repr``).

    >>> HmacCredentials("alerts", "s3cret")
    HmacCredentials(key_id='alerts')
    """

    key_id: str
    secret: str = field(repr=False)


class _RetryableError(Exception):
    """An answer (or no answer) worth another attempt."""


class KillSwitchClient:
    """Talks to a drainwatch kill switch.

    Args:
        base_url: The service, e.g. ``http://127.0.0.1:8700``.
        token: Bearer token, if the service wants one (see ``credentials`` for signing).
        http: The HTTP client to use (its ``base_url`` should be ``base_url``); one is made (and
            closed by :meth:`close`) when None.
        attempts: Tries per request, the first included.
        backoff_s: The first wait between tries; it doubles each time.
        backoff_max_s: The longest wait between tries.
        timeout_s: Per-request timeout of the client made here.
        sleep: How to wait (a test or a simulation passes its own).
        credentials: Sign every request (each attempt anew: fresh timestamp and nonce) with
            this HMAC key instead of sending ``token``.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        http: httpx.Client | None = None,
        attempts: int = 5,
        *,
        backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
        timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        credentials: HmacCredentials | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.base_url = base_url
        self.token = token
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout_s)
        self.credentials = credentials
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # The signed path includes any path prefix of the base URL (a reverse proxy's mount).
        self._prefix = urlsplit(base_url).path.rstrip("/")

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.credentials is not None:
            headers.update(
                signed_headers(
                    self.credentials.key_id,
                    self.credentials.secret.encode(),
                    method,
                    self._prefix + path,
                    content,
                )
            )
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise _RetryableError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, chain: str, wallet: str
    ) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
            retry=retry_if_exception_type(_RetryableError),
            reraise=True,
            sleep=self.sleep,
        )
        try:
            response = retrying(self._send, method, path, body)
        except _RetryableError as exc:
            raise KillSwitchUnavailableError(
                chain, wallet, f"{self.base_url}: {exc}", self.attempts
            ) from exc
        if response.status_code >= 400:
            raise KillSwitchRejectedError(chain, wallet, response.status_code, response.text)
        return response.json()

    def freeze(
        self,
        chain: str,
        wallet: str,
        reason: str,
        alert_id: str | None = None,
        requested_by: str = DEFAULT_REQUESTER,
        *,
        severity: str | None = None,
    ) -> dict[str, Any]:
        """Freeze a wallet; return the order in force (new, or the one that already froze it).

        With a detector key the kill switch's policy may decline the freeze, or only pretend in
        dry-run mode: the answer is then ``{"applied": false, "dry_run": ..., "reason": ...}``.

        Raises:
            KillSwitchUnavailableError: No answer, or only 5xx, through every attempt.
            KillSwitchRejectedError: A 4xx answer (bad token, bad request).
        """
        body: dict[str, Any] = {
            "chain": chain,
            "wallet": wallet,
            "reason": reason,
            "alert_id": alert_id,
            "requested_by": requested_by,
        }
        if severity is not None:
            body["severity"] = severity
        order: dict[str, Any] = self._request("POST", "/v1/freezes", body, chain, wallet)
        return order

    def wallet_status(self, chain: str, wallet: str) -> dict[str, Any]:
        """``{"frozen": bool, "order": ... | None}`` for one wallet (same retries and errors)."""
        path = f"/v1/wallets/{quote(chain, safe='')}/{quote(wallet, safe='')}"
        result: dict[str, Any] = self._request("GET", path, None, chain, wallet)
        return result

    def close(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KillSwitchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
