"""The kill switch's Prometheus metrics: one set per registry, shared by the API and the hooks.

Several kill switches can live in one process (tests), each with its own registry, so the
metrics are not module globals: :meth:`KillSwitchMetrics.of` makes a registry's set once and
hands the same one to every caller. Counters get ``_total`` from prometheus-client; times are in
seconds; no label carries a wallet address.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> metrics = KillSwitchMetrics.of(registry, targets=["custody"])
>>> KillSwitchMetrics.of(registry) is metrics
True
>>> metrics.orders.labels(action="freeze").inc()
>>> text = generate_latest(registry).decode()
>>> 'drainwatch_killswitch_orders_total{action="freeze"} 1.0' in text
True
>>> 'drainwatch_hook_escalations_total{target="custody"} 0.0' in text
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Histogram

from drainwatch.events import FreezeAction

__all__ = ["KillSwitchMetrics"]

AUTHORIZE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""``/v1/authorize`` is on the signing path: a few milliseconds is normal, a second is not."""
HOOK_DELIVERY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""From enqueue to acknowledgement, retries included: up to the escalation time and beyond."""

_BY_REGISTRY: WeakKeyDictionary[CollectorRegistry, KillSwitchMetrics] = WeakKeyDictionary()
_LOCK = threading.Lock()


class KillSwitchMetrics:
    """Every metric of one kill switch, registered on ``registry``.

    Use :meth:`of` rather than the constructor: registering a name twice on one registry fails.

    Attributes:
        orders: ``drainwatch_killswitch_orders_total{action}``, new freeze and unfreeze orders.
        authorize_seconds: ``drainwatch_killswitch_authorize_seconds``, the time
            ``POST /v1/authorize`` took to decide.
        authorize: ``drainwatch_killswitch_authorize_total{allowed="true"|"false"}``, decisions.
        hook_delivery_seconds: ``drainwatch_hook_delivery_seconds{target}``, from a delivery's
            enqueueing to the hook's acknowledgement.
        hook_escalations: ``drainwatch_hook_escalations_total{target}``, deliveries escalated.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.orders = Counter(
            "drainwatch_killswitch_orders",
            "Freeze and unfreeze orders the kill switch created.",
            ["action"],
            registry=registry,
        )
        self.authorize_seconds = Histogram(
            "drainwatch_killswitch_authorize_seconds",
            "Time POST /v1/authorize took to decide (store included).",
            buckets=AUTHORIZE_BUCKETS_S,
            registry=registry,
        )
        self.authorize = Counter(
            "drainwatch_killswitch_authorize",
            "POST /v1/authorize decisions: allowed=true, or false (denied).",
            ["allowed"],
            registry=registry,
        )
        self.hook_delivery_seconds = Histogram(
            "drainwatch_hook_delivery_seconds",
            "From a hook delivery's enqueueing to the hook's acknowledgement (retries included).",
            ["target"],
            buckets=HOOK_DELIVERY_BUCKETS_S,
            registry=registry,
        )
        self.hook_escalations = Counter(
            "drainwatch_hook_escalations",
            "Hook deliveries escalated after repeated failures.",
            ["target"],
            registry=registry,
        )
        # Series exist from the start, so a dashboard shows 0 rather than no data.
        for action in FreezeAction:
            self.orders.labels(action=action.value)
        for allowed in ("true", "false"):
            self.authorize.labels(allowed=allowed)

    @classmethod
    def of(cls, registry: CollectorRegistry, targets: Iterable[str] = ()) -> KillSwitchMetrics:
        """The metrics on ``registry`` (made at the first call), with series for ``targets``."""
        with _LOCK:
            metrics = _BY_REGISTRY.get(registry)
            if metrics is None:
                metrics = _BY_REGISTRY[registry] = cls(registry)
        for target in targets:
            metrics.hook_delivery_seconds.labels(target=target)
            metrics.hook_escalations.labels(target=target)
        return metrics

    def order_created(self, action: FreezeAction) -> None:
        """Count a new order."""
        self.orders.labels(action=action.value).inc()

    def authorized(self, allowed: bool, seconds: float) -> None:
        """Record one ``/v1/authorize`` decision and the time it took."""
        self.authorize_seconds.observe(seconds)
        self.authorize.labels(allowed="true" if allowed else "false").inc()
