"""Which channels hear about an alert, and whether they hear about it at all: pure decisions.

The rules, in order:

1. **Routes.** Every ``[[alerts.routes]]`` entry whose ``min_severity`` and ``labels`` globs match
   the alert adds its channels (each channel once). No match: the alert is not routed.
2. **Duplicates are suppressed.** An alert with the same content (incident, detector, severity,
   freeze request, summary) as one already notified in the last ``duplicate_window_s`` says
   nothing new (a detector re-emitting under a new id, two replicas of one detector).
3. **Cooldown per wallet and detector.** After a notification for (wallet, detector), the same
   pair is quiet for ``cooldown_s`` unless the new alert is *more severe*: a higher severity, or a
   freeze requested where the last one did not. An escalating drain always gets through.
4. **Grouping.** Alerts are grouped by incident: the first notification of an incident on a
   channel opens a page (``trigger``); later ones *update* the same page (same dedup key).
5. **Escalation.** A critical, non-shadow alert routed by a route with ``escalate_after_s`` arms
   an escalation: if nobody acknowledges the incident in time, ``escalate_to`` is paged. From
   then on the escalation channels get the incident's updates too.

Times are the alerts' event times, so a replay or a backtest decides as live mode did.

>>> from datetime import UTC, datetime, timedelta
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> router = Router([Route(Severity.WARNING, ("*-hot*",), ("oncall",))], cooldown_s=600)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     wallet_label="nem-hot", severity=Severity.WARNING, detector="velocity", freeze=False,
...     summary="5% out in 60 s")
>>> router.plan(alert, History()).deliveries
(('oncall', <NotificationAction.TRIGGER: 'trigger'>),)
>>> sent = Sent("a0", t - timedelta(minutes=2), Severity.WARNING, freeze=False)
>>> router.plan(alert, History(last_same_source=sent)).verdict
<Verdict.COOLDOWN: 'cooldown'>
>>> worse = alert.model_copy(update={"severity": Severity.CRITICAL})
>>> router.plan(worse, History(last_same_source=sent, open_pages=frozenset({"oncall"}))).deliveries
(('oncall', <NotificationAction.UPDATE: 'update'>),)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Final

from alerts.channels.base import NotificationAction
from alerts.timeline import incident_of
from drainwatch.config import AlertsConfig, RouteConfig
from drainwatch.events import Alert, Severity

__all__ = [
    "DUPLICATE_WINDOW_S",
    "History",
    "Plan",
    "Route",
    "Router",
    "Sent",
    "Verdict",
    "fingerprint",
    "is_more_severe",
    "select_channels",
]

DUPLICATE_WINDOW_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Route:
    """One ``[[alerts.routes]]`` entry."""

    min_severity: Severity
    labels: tuple[str, ...]
    channels: tuple[str, ...]
    escalate_after_s: float | None = None
    escalate_to: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: RouteConfig) -> Route:
        """From the config model."""
        return cls(
            config.min_severity,
            config.labels,
            config.channels,
            config.escalate_after_s,
            config.escalate_to,
        )

    def matches(self, alert: Alert) -> bool:
        """Severity at least ``min_severity`` and the label (or ``chain:wallet``) matching a glob.

        >>> from datetime import UTC, datetime
        >>> t = datetime(2018, 1, 26, tzinfo=UTC)
        >>> a = Alert(id="a", time=t, detected_at=t, chain="ethereum", wallet="0xAB",
        ...     wallet_label="eth-hot-1", severity=Severity.WARNING, detector="d", freeze=False,
        ...     summary="s")
        >>> Route(Severity.INFO, ("*-hot-*",), ("c",)).matches(a)
        True
        >>> Route(Severity.CRITICAL, (), ("c",)).matches(a)
        False
        >>> Route(Severity.INFO, ("ethereum:*",), ("c",)).matches(
        ...     a.model_copy(update={"wallet_label": None}))
        True
        """
        if alert.severity.rank < self.min_severity.rank:
            return False
        name = alert.wallet_label or alert.key
        return not self.labels or any(fnmatchcase(name, glob) for glob in self.labels)


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def select_channels(alert: Alert, routes: Sequence[Route]) -> tuple[str, ...]:
    """The channels of every matching route, in config order, each once.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N",
    ...     severity=Severity.CRITICAL, detector="d", freeze=True, summary="s")
    >>> select_channels(a, [Route(Severity.WARNING, (), ("slack",)),
    ...                     Route(Severity.CRITICAL, (), ("oncall", "slack"))])
    ('slack', 'oncall')
    """
    return _unique(name for route in routes if route.matches(alert) for name in route.channels)


def fingerprint(alert: Alert) -> str:
    """What makes two alerts duplicates: incident, detector, severity, freeze request, summary.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N",
    ...     severity=Severity.CRITICAL, detector="d", freeze=True, summary="s")
    >>> fingerprint(a) == fingerprint(a.model_copy(update={"id": "b"}))
    True
    >>> fingerprint(a) == fingerprint(a.model_copy(update={"summary": "t"}))
    False
    """
    parts = (
        incident_of(alert),
        alert.detector,
        alert.severity.value,
        str(alert.freeze),
        alert.summary,
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Sent:
    """An alert that was notified, as the routing history remembers it."""

    alert_id: str
    time: datetime
    severity: Severity
    freeze: bool


def is_more_severe(alert: Alert, previous: Sent) -> bool:
    """A higher severity, or a (real) freeze request where the previous alert had none.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N",
    ...     severity=Severity.CRITICAL, detector="d", freeze=True, summary="s")
    >>> is_more_severe(a, Sent("p", t, Severity.CRITICAL, freeze=False))
    True
    >>> is_more_severe(a, Sent("p", t, Severity.CRITICAL, freeze=True))
    False
    """
    if alert.severity.rank > previous.severity.rank:
        return True
    return alert.freeze and not alert.shadow and not previous.freeze


@dataclass(frozen=True, slots=True)
class History:
    """What the outbox remembers that bears on one alert.

    Attributes:
        last_same_source: The last notified alert of the same wallet and detector, at or before
            this alert's time.
        duplicate_of: The notified alert with the same fingerprint in the duplicate window.
        duplicate_time: Its time.
        open_pages: The channels on which this alert's incident already has an open page.
        escalated_to: The channels its open page was escalated to.
    """

    last_same_source: Sent | None = None
    duplicate_of: str | None = None
    duplicate_time: datetime | None = None
    open_pages: frozenset[str] = field(default_factory=frozenset)
    escalated_to: frozenset[str] = field(default_factory=frozenset)


class Verdict(StrEnum):
    """Whether an alert is notified, and why not."""

    NOTIFY = "notify"
    NO_ROUTE = "no route"
    DUPLICATE = "duplicate"
    COOLDOWN = "cooldown"


@dataclass(frozen=True, slots=True)
class Plan:
    """The routing decision for one alert.

    Attributes:
        verdict: Notify, or why not.
        reason: A human sentence for the timeline.
        deliveries: (channel, trigger or update) for each channel to notify.
        escalations: (channel, after_s): whom to page if the incident is not acknowledged in time.
    """

    verdict: Verdict
    reason: str
    deliveries: tuple[tuple[str, NotificationAction], ...] = ()
    escalations: tuple[tuple[str, float], ...] = ()

    @property
    def notify(self) -> bool:
        """True when at least one channel is to be told."""
        return self.verdict is Verdict.NOTIFY


class Router:
    """Applies the routing rules of the module docstring.

    Args:
        routes: The routes, in config order.
        cooldown_s: Quiet time per (wallet, detector) after a notification.
        duplicate_window_s: How far back an identical alert counts as a duplicate.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        cooldown_s: float = 600.0,
        duplicate_window_s: float = DUPLICATE_WINDOW_S,
    ) -> None:
        self.routes = tuple(routes)
        self.cooldown_s = cooldown_s
        self.duplicate_window_s = duplicate_window_s

    @classmethod
    def from_config(cls, config: AlertsConfig) -> Router:
        """From ``[alerts]``: its routes and ``cooldown_s``."""
        return cls([Route.from_config(r) for r in config.routes], config.cooldown_s)

    def escalations(self, alert: Alert) -> tuple[tuple[str, float], ...]:
        """(channel, after_s) armed by a critical, non-shadow alert; the shortest delay wins.

        A shadow detector is on trial: it may notify, it never wakes the escalation chain.
        """
        if alert.severity is not Severity.CRITICAL or alert.shadow:
            return ()
        soonest: dict[str, float] = {}
        for route in self.routes:
            if route.escalate_after_s is None or not route.matches(alert):
                continue
            for name in route.escalate_to:
                soonest[name] = min(
                    soonest.get(name, route.escalate_after_s), route.escalate_after_s
                )
        return tuple(soonest.items())

    def plan(self, alert: Alert, history: History) -> Plan:
        """Decide for one alert, given what the outbox remembers (see the module docstring)."""
        channels = select_channels(alert, self.routes)
        channels += tuple(sorted(history.escalated_to - set(channels)))
        if not channels:
            return Plan(Verdict.NO_ROUTE, "no route matches")
        window = timedelta(seconds=self.duplicate_window_s)
        if (
            history.duplicate_of is not None
            and history.duplicate_of != alert.id
            and (history.duplicate_time is None or alert.time - history.duplicate_time <= window)
        ):
            return Plan(Verdict.DUPLICATE, f"duplicate of alert {history.duplicate_of}")
        previous = history.last_same_source
        if (
            previous is not None
            and previous.alert_id != alert.id
            and alert.time - previous.time < timedelta(seconds=self.cooldown_s)
            and not is_more_severe(alert, previous)
        ):
            until = previous.time + timedelta(seconds=self.cooldown_s)
            return Plan(
                Verdict.COOLDOWN,
                f"cooldown of {alert.detector} on {alert.key} after alert {previous.alert_id},"
                f" until {until.isoformat()}",
            )
        deliveries = tuple(
            (
                name,
                NotificationAction.UPDATE
                if name in history.open_pages
                else NotificationAction.TRIGGER,
            )
            for name in channels
        )
        return Plan(
            Verdict.NOTIFY,
            "to " + ", ".join(channels),
            deliveries,
            self.escalations(alert),
        )
