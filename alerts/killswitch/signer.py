"""The pre-sign check for wallet signers: a tiny client that fails closed.

A signer asks before every signature; anything but an explicit allow is a deny: the kill switch
unreachable, slow (past ``timeout_s``), answering an error, or answering something unexpected.
A drain that starts by taking the kill switch down must not be able to sign through the gap.

Stdlib only (``http.client``), with one kept-alive connection, so it drops into any signer.

>>> from alerts.killswitch.app import create_app, serve_in_thread, server_port, stop_server
>>> from alerts.killswitch.store import FreezeStore
>>> store = FreezeStore(":memory:")
>>> server, thread = serve_in_thread(create_app(store))
>>> signer = SignerClient(f"http://127.0.0.1:{server_port(server)}", "signer-1", "s3cret")
>>> signer.authorize("nem", "NC3B", "XEM", "100", to="NC4C")
Verdict(allowed=True, reason='ok')
>>> _ = store.freeze("nem", "NC3B", "drain")
>>> signer.authorize("nem", "NC3B", "XEM", "100", to="NC4C")
Verdict(allowed=False, reason='wallet nem:NC3B is frozen')
>>> signer.close(); stop_server(server, thread)
>>> signer.authorize("nem", "NC3B", "XEM", "1", to="NC4C").allowed
False
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from alerts.killswitch.auth import signed_headers

__all__ = ["SignerClient", "Verdict"]

AUTHORIZE_PATH = "/v1/authorize"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer: sign only when ``allowed``."""

    allowed: bool
    reason: str


class SignerClient:
    """Asks the kill switch ``POST /v1/authorize``; never raises, denies on any doubt.

    Args:
        base_url: The kill switch, e.g. ``http://127.0.0.1:8700``.
        key_id: A key with the signer role.
        secret: Its secret.
        timeout_s: How long to wait for an answer before denying.
    """

    def __init__(self, base_url: str, key_id: str, secret: str, *, timeout_s: float = 0.5) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url
        self.key_id = key_id
        self.timeout_s = timeout_s
        self._secret = secret.encode()
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + AUTHORIZE_PATH
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _post(self, body: bytes) -> tuple[int, bytes]:
        headers = signed_headers(self.key_id, self._secret, "POST", self._path, body)
        headers["Content-Type"] = "application/json"
        conn = self._connection()
        conn.request("POST", self._path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    def authorize(
        self, chain: str, wallet: str, asset: str, amount: Decimal | int | str, *, to: str
    ) -> Verdict:
        """May ``wallet`` send ``amount`` of ``asset`` to ``to`` now? Deny on any failure."""
        body = json.dumps(
            {"chain": chain, "wallet": wallet, "asset": asset, "amount": str(amount), "to": to},
            separators=(",", ":"),
        ).encode()
        with self._lock:
            try:
                try:
                    status, raw = self._post(body)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    # A kept-alive connection the server closed: one fresh try, newly signed.
                    self.close_connection()
                    status, raw = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self.close_connection()
                return Verdict(False, f"kill switch unreachable, failing closed: {exc!r}")
        if status != 200:
            return Verdict(False, f"kill switch answered HTTP {status}, failing closed")
        try:
            answer = json.loads(raw)
        except ValueError:
            return Verdict(False, "kill switch answered non-JSON, failing closed")
        if not isinstance(answer, dict) or answer.get("allowed") is not True:
            reason = answer.get("reason") if isinstance(answer, dict) else None
            return Verdict(False, str(reason or "not explicitly allowed"))
        return Verdict(True, str(answer.get("reason", "ok")))

    def close_connection(self) -> None:
        """Drop the kept-alive connection (the next call opens one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.close_connection()
