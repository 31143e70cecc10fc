"""Outbound hooks: tell wallet infrastructure of every order, retrying until it acknowledges.

Deliveries live in the store's outbox (written in the same transaction as the order), so a
restart loses none. :class:`HookWorker` sends what is due, with exponential back-off, until a 2xx;
after ``escalate_after_attempts`` failures or ``escalate_after_s`` seconds it escalates once (log
at ERROR, ``drainwatch_hook_escalations_total``, status ``escalated`` at ``GET /v1/hooks``, an
audit entry) and keeps retrying; the time from enqueueing to the acknowledgement is observed in
``drainwatch_hook_delivery_seconds``. Delivery is at least once: receivers de-duplicate on
``X-Drainwatch-Delivery`` (webhook) or are idempotent (a custody freeze of a frozen wallet).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry

from alerts.killswitch.metrics import KillSwitchMetrics
from alerts.killswitch.settings import HookSettings, RetrySettings
from alerts.killswitch.store import HookRecord, KillSwitchStore
from drainwatch.events import FreezeAction

__all__ = [
    "HookRequest",
    "HookWorker",
    "backoff_s",
    "build_request",
    "hook_targets",
    "should_escalate",
    "webhook_signature",
]

log = logging.getLogger(__name__)


def hook_targets(
    hooks: Sequence[HookSettings], chain: str, wallet: str, action: FreezeAction
) -> list[str]:
    """The names of the hooks to tell of an order.

    A webhook hears of everything; a BitGo-style hook only of freezes (an unfreeze has no call,
    the freeze expires), and only for wallets it has a custody wallet id and a coin for.

    >>> from pydantic import SecretStr
    >>> web = HookSettings(name="web", kind="webhook", url="http://h", secret=SecretStr("k3y!"))
    >>> bitgo = HookSettings(name="bitgo", kind="bitgo", url="http://b", token=SecretStr("t0k"),
    ...                      coins={"ethereum": "eth"}, wallet_ids={"ethereum:0xAB": "w1"})
    >>> hook_targets([web, bitgo], "ethereum", "0xab", FreezeAction.FREEZE)
    ['web', 'bitgo']
    >>> hook_targets([web, bitgo], "ethereum", "0xab", FreezeAction.UNFREEZE)
    ['web']
    >>> hook_targets([web, bitgo], "ethereum", "0xcd", FreezeAction.FREEZE)
    ['web']
    """
    key = f"{chain}:{wallet}"
    names: list[str] = []
    for hook in hooks:
        if hook.kind == "webhook" or (
            action is FreezeAction.FREEZE and chain in hook.coins and key in hook.wallet_ids
        ):
            names.append(hook.name)
    return names


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.

    >>> webhook_signature(b"k", 1700000000, b"{}")[:16]
    't=1700000000,v1='
    """
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True, slots=True)
class HookRequest:
    """One HTTP request to a hook target."""

    url: str
    headers: dict[str, str]
    body: bytes


def build_request(hook: HookSettings, record: HookRecord, now: float) -> HookRequest:
    """The request that delivers ``record`` to ``hook`` (pure; the worker sends it).

    >>> from pydantic import SecretStr
    >>> bitgo = HookSettings(name="bitgo", kind="bitgo", url="http://b/", token=SecretStr("t0k"),
    ...                      duration_s=600, coins={"ethereum": "eth"},
    ...                      wallet_ids={"ethereum:0xab": "w1"})
    >>> rec = HookRecord(id="h1", target="bitgo", order_id="o1", key="ethereum:0xab",
    ...     action=FreezeAction.FREEZE, payload={"chain": "ethereum", "wallet": "0xab"},
    ...     status="pending", attempts=0, created_at=0.0, next_attempt_at=0.0, last_status=None,
    ...     last_error=None, delivered_at=None, escalated=False)
    >>> req = build_request(bitgo, rec, now=1.0)
    >>> req.url, req.body, req.headers["Authorization"]
    ('http://b/api/v2/eth/wallet/w1/freeze', b'{"duration":600}', 'Bearer t0k')
    """
    base = hook.url.rstrip("/")
    if hook.kind == "bitgo":
        assert hook.token is not None
        chain = str(record.payload["chain"])
        wallet_id = hook.wallet_ids[record.key]
        url = (
            f"{base}/api/v2/{quote(hook.coins[chain], safe='')}/wallet/"
            f"{quote(wallet_id, safe='')}/freeze"
        )
        body = json.dumps({"duration": hook.duration_s}, separators=(",", ":")).encode()
        headers = {
            "Authorization": f"Bearer {hook.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        return HookRequest(url, headers, body)
    assert hook.secret is not None
    event = {"delivery": record.id, "order": record.payload}
    body = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Drainwatch-Delivery": record.id,
        "X-Drainwatch-Signature": webhook_signature(
            hook.secret.get_secret_value().encode(), int(now), body
        ),
    }
    return HookRequest(base, headers, body)


def backoff_s(attempts: int, retry: RetrySettings) -> float:
    """The wait after the ``attempts``-th failure: doubling from ``backoff_s``, capped.

    >>> r = RetrySettings(backoff_s=0.5, backoff_max_s=3)
    >>> [backoff_s(n, r) for n in (1, 2, 3, 4)]
    [0.5, 1.0, 2.0, 3.0]
    """
    return float(min(retry.backoff_s * 2.0 ** max(attempts - 1, 0), retry.backoff_max_s))


def should_escalate(attempts: int, age_s: float, retry: RetrySettings) -> bool:
    """Whether a delivery that failed ``attempts`` times over ``age_s`` seconds is escalated.

    >>> r = RetrySettings(escalate_after_attempts=3, escalate_after_s=60)
    >>> should_escalate(2, 10, r), should_escalate(3, 10, r), should_escalate(1, 61, r)
    (False, True, True)
    """
    return attempts >= retry.escalate_after_attempts or age_s >= retry.escalate_after_s


class HookWorker:
    """Delivers the outbox from a background thread (or step by step with :meth:`run_once`).

    Args:
        store: Where the outbox is.
        hooks: The configured targets, by name in the outbox.
        retry: Back-off and escalation.
        http: The HTTP client (one is made, and closed by :meth:`stop`, when None).
        on_result: Called after each attempt with the updated record (the timeline hooks in
            here); its exceptions are logged, never raised.
        registry: Where the kill switch's metrics are (see
            :class:`~alerts.killswitch.metrics.KillSwitchMetrics`); the worker records
            ``drainwatch_hook_delivery_seconds`` and ``drainwatch_hook_escalations_total``.
        clock: Unix seconds.
    """

    def __init__(
        self,
        store: KillSwitchStore,
        hooks: Sequence[HookSettings],
        retry: RetrySettings,
        *,
        http: httpx.Client | None = None,
        on_result: Callable[[HookRecord], None] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hooks = {h.name: h for h in hooks}
        self.retry = retry
        self.on_result = on_result
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.metrics = KillSwitchMetrics.of(self.registry, targets=self.hooks)
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=retry.timeout_s)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """Something was enqueued: deliver now rather than at the next poll."""
        self._wake.set()

    def _send(self, hook: HookSettings, record: HookRecord) -> tuple[bool, int | None, str | None]:
        request = build_request(hook, record, self.clock())
        try:
            response = self._http.post(request.url, content=request.body, headers=request.headers)
        except httpx.HTTPError as exc:
            return False, None, f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return True, response.status_code, None
        return False, response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"

    def deliver(self, record: HookRecord) -> HookRecord:
        """Make one attempt at one delivery and record its outcome."""
        hook = self.hooks.get(record.target)
        error: str | None
        if hook is None:
            ok, status_code, error = False, None, f"no hook named {record.target} is configured"
        else:
            ok, status_code, error = self._send(hook, record)
        now = self.clock()
        attempts = record.attempts + 1
        escalate = not ok and should_escalate(attempts, now - record.created_at, self.retry)
        updated = self.store.record_hook_attempt(
            record.id,
            ok=ok,
            status_code=status_code,
            error=error,
            next_attempt_at=now + backoff_s(attempts, self.retry),
            escalate=escalate,
        )
        if ok:
            self.metrics.hook_delivery_seconds.labels(target=record.target).observe(
                max(now - record.created_at, 0.0)
            )
            log.info("hook %s delivered order %s to %s", record.id, record.order_id, record.target)
        elif escalate and not record.escalated:
            self.metrics.hook_escalations.labels(target=record.target).inc()
            log.error(
                "hook %s to %s ESCALATED after %d attempts (%.0f s): %s; still retrying",
                record.id,
                record.target,
                attempts,
                now - record.created_at,
                error,
            )
        else:
            log.warning(
                "hook %s to %s failed (attempt %d): %s", record.id, record.target, attempts, error
            )
        if self.on_result is not None:
            try:
                self.on_result(updated)
            except Exception:
                log.exception("on_hook_result callback failed for hook %s", record.id)
        return updated

    def run_once(self) -> int:
        """Attempt every due delivery once; return how many were attempted."""
        due = self.store.due_hooks(self.clock())
        for record in due:
            self.deliver(record)
        return len(due)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.run_once()
                due = self.store.next_hook_due()
            except Exception:
                # The store or the network failed in an unexpected way: keep the worker alive.
                log.exception("hook worker iteration failed")
                due = None
            wait = 1.0 if due is None else min(max(due - self.clock(), 0.0), 1.0)
            if wait > 0:
                self._wake.wait(wait)

    def start(self) -> None:
        """Run the worker in a daemon thread."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="killswitch-hooks", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (after its current attempt) and close the HTTP client if ours."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._owns_http:
            self._http.close()
