"""Request authentication of the kill switch: HMAC-signed requests, bearer API keys, and roles.

Stdlib only, so the signing half can be copied into a signer that has nothing else installed.

A signed request carries four headers::

    X-Drainwatch-Key: <key id>
    X-Drainwatch-Timestamp: <unix seconds>
    X-Drainwatch-Nonce: <8 to 128 of [A-Za-z0-9_-], never reused>
    X-Drainwatch-Signature: hex(HMAC-SHA256(secret, <canonical request>))

where the canonical request is ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex(body)``.

``PATH`` is the request path with its query string (``/v1/audit?limit=5``), so neither can be
changed in flight. A request is accepted within ``window_s`` (300 s) of the server's clock, and
its nonce is remembered for that long (in the store, so a restart allows no replay).

The alternative is ``Authorization: Bearer <secret>`` for keys allowed to use it (Prometheus, a
read-only dashboard): simpler, but whoever sees the header can replay it until the key is
rotated.

>>> headers = signed_headers("alerts", b"k3y", "POST", "/v1/freezes", b"{}", now=1_700_000_000,
...                          nonce="n0nce-0001")
>>> keys = {"alerts": ApiKey("alerts", b"k3y", frozenset({Role.DETECTOR}))}
>>> verify_signature(keys, headers, "POST", "/v1/freezes", b"{}", now=1_700_000_010).key.id
'alerts'
>>> verify_signature(keys, headers, "POST", "/v1/freezes", b"{ }", now=1_700_000_010)
Traceback (most recent call last):
...
alerts.killswitch.auth.AuthFailure: bad signature
>>> verify_signature(keys, headers, "POST", "/v1/freezes", b"{}", now=1_700_000_400)
Traceback (most recent call last):
...
alerts.killswitch.auth.AuthFailure: timestamp outside the 300 s window
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "PERMISSIONS",
    "ApiKey",
    "AuthFailure",
    "Permission",
    "Principal",
    "Role",
    "canonical_request",
    "sign",
    "signed_headers",
    "verify_bearer",
    "verify_signature",
]

HEADER_KEY = "X-Drainwatch-Key"
HEADER_TIMESTAMP = "X-Drainwatch-Timestamp"
HEADER_NONCE = "X-Drainwatch-Nonce"
HEADER_SIGNATURE = "X-Drainwatch-Signature"
DEFAULT_WINDOW_S = 300
_NONCE = re.compile(r"^[A-Za-z0-9_\-]{8,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(StrEnum):
    """Who a key belongs to; a key may hold several roles."""

    DETECTOR = "detector"
    """The alerts stage: automatic freezes (subject to the freeze policy)."""
    OPERATOR = "operator"
    """People on call: manual freezes, freeze-all, unfreeze requests."""
    APPROVER = "approver"
    """People who approve unfreezes (two distinct ones per unfreeze)."""
    SIGNER = "signer"
    """Wallet signers: pre-sign authorization."""
    READ_ONLY = "read-only"
    """Dashboards and auditors: every GET, nothing else."""


class Permission(StrEnum):
    """What a route needs."""

    READ = "read"
    FREEZE_AUTOMATIC = "freeze:automatic"
    FREEZE_MANUAL = "freeze:manual"
    FREEZE_ALL = "freeze:all"
    UNFREEZE_REQUEST = "unfreeze:request"
    UNFREEZE_APPROVE = "unfreeze:approve"
    AUTHORIZE = "authorize"


PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.DETECTOR: frozenset({Permission.READ, Permission.FREEZE_AUTOMATIC}),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.FREEZE_MANUAL,
            Permission.FREEZE_ALL,
            Permission.UNFREEZE_REQUEST,
        }
    ),
    Role.APPROVER: frozenset({Permission.READ, Permission.UNFREEZE_APPROVE}),
    Role.SIGNER: frozenset({Permission.READ, Permission.AUTHORIZE}),
    Role.READ_ONLY: frozenset({Permission.READ}),
}
"""The role matrix. Freezing is not a signer's or an approver's business, so they cannot."""


class AuthFailure(Exception):  # noqa: N818 - a verdict, raised and turned into a 401 at once
    """Why a request was not authenticated (safe to show: never contains a secret).

    Attributes:
        key_id: The key the request claimed, if any (for the audit entry).
    """

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A credential: its id, its secret, its roles, and whether it may be sent as a bearer token.

    The secret is left out of ``repr`` so a key can be logged.

    >>> ApiKey("ops-1", b"secret", frozenset({Role.OPERATOR}))
    ApiKey(id='ops-1', roles=frozenset({<Role.OPERATOR: 'operator'>}), bearer=False)
    """

    id: str
    secret: bytes = field(repr=False)
    roles: frozenset[Role]
    bearer: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    >>> p = Principal("ops-1", frozenset({Role.OPERATOR}), "hmac")
    >>> p.can(Permission.FREEZE_ALL), p.can(Permission.UNFREEZE_APPROVE)
    (True, False)
    """

    id: str
    roles: frozenset[Role]
    method: str
    """``hmac``, ``bearer`` or ``none`` (authentication turned off)."""

    def can(self, permission: Permission) -> bool:
        """Whether one of the roles grants ``permission``."""
        return any(permission in PERMISSIONS[role] for role in self.roles)


def canonical_request(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes that are signed.

    >>> canonical_request("post", "/v1/freezes", "1700000000", "abcdefgh", b"")
    b'POST\\n/v1/freezes\\n1700000000\\nabcdefgh\\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(  # noqa: PLR0917 - the order of the canonical request
    secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """The hex HMAC-SHA256 signature of a request."""
    message = canonical_request(method, path, timestamp, nonce, body)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str,
    secret: bytes,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers that sign one request (a fresh nonce each call unless given)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        HEADER_KEY: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: sign(secret, method, path, timestamp, nonce, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette's headers are case-insensitive already; a plain dict (tests, doctests) is not.
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out; the caller must still spend its nonce."""

    key: ApiKey
    nonce: str
    expires_at: float
    """Until when the nonce must be remembered (unix seconds)."""


def verify_signature(
    keys: Mapping[str, ApiKey],
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: float,
    window_s: int = DEFAULT_WINDOW_S,
) -> Verified:
    """Check a signed request's key, timestamp and signature (not its nonce: see the store).

    Raises:
        AuthFailure: Missing header, unknown key, stale timestamp, malformed nonce or signature.
    """
    key_id = _header(headers, HEADER_KEY)
    timestamp = _header(headers, HEADER_TIMESTAMP)
    nonce = _header(headers, HEADER_NONCE)
    signature = _header(headers, HEADER_SIGNATURE)
    if not (key_id and timestamp and nonce and signature):
        raise AuthFailure("missing credentials", key_id)
    key = keys.get(key_id)
    if key is None:
        raise AuthFailure("unknown key", key_id)
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise AuthFailure("malformed timestamp", key_id)
    if abs(now - int(timestamp)) > window_s:
        raise AuthFailure(f"timestamp outside the {window_s} s window", key_id)
    if not _NONCE.match(nonce):
        raise AuthFailure("malformed nonce", key_id)
    expected = sign(key.secret, method, path, timestamp, nonce, body)
    # Constant time, so a signature cannot be found byte by byte from response times.
    if not _HEX64.match(signature) or not hmac.compare_digest(expected, signature):
        raise AuthFailure("bad signature", key_id)
    # Remember the nonce until the timestamp itself leaves the window: after that the request is
    # refused as stale anyway.
    return Verified(key, nonce, int(timestamp) + window_s + 1)


def verify_bearer(keys: Iterable[ApiKey], authorization: str) -> ApiKey:
    """The bearer-enabled key whose secret is the token of ``Authorization: Bearer <token>``.

    Every key is compared, in constant time, so timing tells nothing about which one is close.

    >>> k = ApiKey("grafana", b"t0ken", frozenset({Role.READ_ONLY}), bearer=True)
    >>> verify_bearer([k], "Bearer t0ken").id
    'grafana'
    >>> verify_bearer([k], "Basic dDBrZW4=")
    Traceback (most recent call last):
    ...
    alerts.killswitch.auth.AuthFailure: missing credentials
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure("missing credentials")
    given = token.strip().encode()
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(given, key.secret) and key.bearer:
            found = key
    if found is None:
        raise AuthFailure("bad bearer token")
    return found
