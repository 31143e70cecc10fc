"""The alerts stage's handler: record, notify, freeze; each alert's effects exactly once in effect.

:meth:`Alerter.handle` is a :data:`drainwatch.stage.Handler`. It records every transfer in the
timeline. For an alert it prints it on the console, routes it to the notification outbox (when a
router and an outbox are given: see :mod:`alerts.routing` and :mod:`alerts.delivery`), and when the
alert asks for a freeze (and is not from a shadow detector, and a kill switch is configured) it
asks the kill switch to freeze the wallet and publishes the kill switch's order on the freezes
topic. Routing comes before the freeze so that people are paged even while the kill switch is down.

How an alert is handled once although it may arrive many times
----------------------------------------------------------------
The bus delivers at least once: after a crash or a failed batch, the stage loop has not committed,
and the same alerts arrive again. Detectors that replay their input also re-emit alerts with the
same deterministic ids. So:

1. **The de-duplication key is "alert processed"**, a mark written in the timeline only *after*
   every effect the alert asked for has succeeded. An alert already marked is skipped whole.
   De-duplicating on "alert seen" (the alert row) would be wrong: if the kill switch was down, the
   stage raises so the loop does not commit; on restart the alert comes back, and a "seen" check
   would drop it, so the wallet would never be frozen.
2. **Each effect is also guarded on its own**, by the actions recorded in the timeline, so a
   retried alert does not repeat the effects that already happened: the console line is printed
   once (a ``notified`` action), a skipped freeze is noted once. Routing is guarded by the outbox:
   an alert it already routed is not routed again, so a retry queues no second page.
3. **The freeze itself may be repeated**, and that is harmless: the kill switch is idempotent (a
   frozen wallet keeps, and returns, the order that froze it). A repeat happens only when the
   earlier attempt may have landed without the stage learning it (a timeout, a crash between the
   request and the ``freeze_accepted`` record). Every attempt and its outcome is in the timeline:
   ``freeze_requested``, then ``freeze_accepted`` (with the order) or ``freeze_failed``.
4. **A failed freeze raises** :class:`alerts.AlertsError` after the client's own retries, once the
   failure is recorded. The stage loop then stops without committing, and the alert is retried
   when the stage restarts. Nothing is marked processed, so the retry goes through steps 2 and 3.
5. **The freeze order is published from the kill switch's answer**, so its id is the kill switch's
   deterministic order id, and only by the alert that froze the wallet: a later alert about an
   already-frozen wallet gets the existing order back and publishes nothing.

What this does not cover: a hard crash after the "processed" mark and before the bus flushes the
freeze order loses that *message* (never the freeze, which the kill switch holds). Re-publishing on
a replay would be worse: an old alert replayed after an unfreeze would put a stale freeze back on
the compacted topic. The kill switch publishes every order it makes itself
(``drainwatch killswitch serve`` wires it to the freezes topic), which closes this gap.

>>> import io
>>> from datetime import UTC, datetime
>>> from drainwatch.events import ALERTS, Severity
>>> from alerts.timeline import Timeline
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> out = io.StringIO()
>>> alerter = Alerter(Timeline(":memory:"), None, ConsoleNotifier(out), clock=lambda: t)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     severity=Severity.WARNING, detector="velocity", freeze=False, summary="5% out in 60 s")
>>> alerter.handle(ALERTS, alert), alerter.handle(ALERTS, alert)
([], [])
>>> out.getvalue().count("5% out in 60 s")
1
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from alerts.channels.base import Notification
from alerts.console import ConsoleNotifier
from alerts.delivery import Outbox
from alerts.errors import AlertsError, KillSwitchError
from alerts.killswitch.client import DEFAULT_REQUESTER, HmacCredentials, KillSwitchClient
from alerts.routing import Router
from alerts.timeline import ActionKind, Timeline, utc_now
from drainwatch.config import AlertsConfig
from drainwatch.events import FREEZES, Alert, Event, FreezeOrder, Transfer
from drainwatch.stage import Output

__all__ = ["Alerter", "FreezeDecision", "freeze_decision"]

log = logging.getLogger(__name__)


class FreezeDecision(StrEnum):
    """What to do about an alert's freeze request."""

    NOT_ASKED = "not asked"
    SEND = "send"
    SHADOW = "shadow mode: never frozen on"
    NO_KILL_SWITCH = "no kill switch configured"


def freeze_decision(alert: Alert, kill_switch: bool) -> FreezeDecision:
    """Whether an alert's freeze goes to the kill switch, and why not when it does not.

    >>> from datetime import UTC, datetime
    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, tzinfo=UTC)
    >>> a = Alert(id="a", time=t, detected_at=t, chain="nem", wallet="N", detector="velocity",
    ...           severity=Severity.CRITICAL, freeze=True, summary="s")
    >>> freeze_decision(a, kill_switch=True).name
    'SEND'
    >>> freeze_decision(a.model_copy(update={"shadow": True}), kill_switch=True).name
    'SHADOW'
    >>> freeze_decision(a, kill_switch=False).name
    'NO_KILL_SWITCH'
    """
    if not alert.freeze:
        return FreezeDecision.NOT_ASKED
    if alert.shadow:
        return FreezeDecision.SHADOW
    if not kill_switch:
        return FreezeDecision.NO_KILL_SWITCH
    return FreezeDecision.SEND


def _order_from(answer: dict[str, Any]) -> FreezeOrder:
    """The kill switch's answer as an event, ignoring fields we do not know (tolerant reader)."""
    return FreezeOrder.model_validate(
        {k: v for k, v in answer.items() if k in FreezeOrder.model_fields}
    )


class Alerter:
    """Handles the transfers and alerts topics for the alerts stage (see the module docstring).

    Args:
        timeline: Where everything seen and done is recorded; also the de-duplication state.
        killswitch: The kill switch to freeze wallets with; None records freezes as skipped.
        console: Where alerts are printed; None prints nothing.
        clock: The time of actions (aware UTC); a backtest passes its simulated clock.
        requested_by: Who the kill switch is told asked for the freeze.
        router: Decides which channels hear about an alert; needs ``outbox``.
        outbox: Where notifications are queued for a :class:`alerts.delivery.DeliveryWorker`.
    """

    def __init__(
        self,
        timeline: Timeline,
        killswitch: KillSwitchClient | None = None,
        console: ConsoleNotifier | None = None,
        clock: Callable[[], datetime] = utc_now,
        *,
        requested_by: str = DEFAULT_REQUESTER,
        router: Router | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        if (router is None) != (outbox is None):
            raise ValueError("router and outbox go together")
        self.timeline = timeline
        self.killswitch = killswitch
        self.console = console
        self.clock = clock
        self.requested_by = requested_by
        self.router = router
        self.outbox = outbox

    @classmethod
    def from_config(
        cls, config: AlertsConfig, *, console: ConsoleNotifier | None = None
    ) -> Alerter:
        """Build from the ``[alerts]`` config: a timeline file, the kill switch if a URL is set,
        ``console`` (standard output by default) if ``config.console`` is true, and a router with
        its outbox file when routes are configured (deliver them with
        ``DeliveryWorker.from_config(config, alerter.outbox, alerter.timeline)``)."""
        killswitch = (
            KillSwitchClient(
                config.killswitch_url,
                token=config.killswitch_token,
                credentials=HmacCredentials(
                    config.killswitch_key_id, config.killswitch_secret.get_secret_value()
                )
                if config.killswitch_key_id and config.killswitch_secret
                else None,
            )
            if config.killswitch_url
            else None
        )
        routed = bool(config.routes)
        return cls(
            Timeline(config.timeline_path),
            killswitch,
            (console or ConsoleNotifier()) if config.console else None,
            router=Router.from_config(config) if routed else None,
            outbox=Outbox(config.outbox_path) if routed else None,
        )

    def handle(self, topic: str, event: Event) -> list[Output]:
        """Handle one event from the bus; return the freeze orders to publish.

        Raises:
            AlertsError: A freeze could not be delivered; do not commit, retry later.
        """
        if isinstance(event, Transfer):
            self.timeline.record_transfer(event)
            return []
        if isinstance(event, Alert):
            return self.handle_alert(event)
        return []

    def handle_alert(self, alert: Alert) -> list[Output]:
        """Record, notify and (if asked) freeze; nothing at all for an alert already processed."""
        if self.timeline.is_processed(alert.id):
            log.debug("alert %s already processed; skipped", alert.id)
            return []
        # False on a retry of an alert whose freeze failed: carry on, the effects guard themselves.
        self.timeline.record_alert(alert)
        if self.console is not None and not self.timeline.has_action(alert.id, ActionKind.NOTIFIED):
            self.console.notify(alert)
            self.timeline.record_action(
                ActionKind.NOTIFIED, alert, time=self.clock(), detail="console"
            )
        self._route(alert)
        outputs: list[Output] = []
        decision = freeze_decision(alert, kill_switch=self.killswitch is not None)
        if decision is FreezeDecision.SEND:
            order = self._freeze(alert)
            # Only the alert that froze the wallet publishes its order: for a wallet already
            # frozen the kill switch answers with the order already on the compacted topic.
            if order is not None and order.alert_id == alert.id:
                outputs.append(Output(FREEZES, order))
        elif decision is not FreezeDecision.NOT_ASKED and not self.timeline.has_action(
            alert.id, ActionKind.FREEZE_SKIPPED
        ):
            self.timeline.record_action(
                ActionKind.FREEZE_SKIPPED, alert, time=self.clock(), detail=decision.value
            )
        self.timeline.mark_processed(alert.id)
        return outputs

    def _route(self, alert: Alert) -> None:
        """Queue the alert's notifications (once), and note the decision in the timeline (once)."""
        if self.router is None or self.outbox is None:
            return
        routed = self.outbox.routed(alert.id)
        if routed is None:
            plan = self.router.plan(alert, self.outbox.history(alert))
            routed = self.outbox.enqueue(alert, plan, now=self.clock())
        kind = (
            ActionKind.NOTIFICATION_QUEUED
            if routed.notified
            else ActionKind.NOTIFICATION_SUPPRESSED
        )
        if not self.timeline.has_action(alert.id, kind):
            detail = routed.detail if routed.notified else f"{routed.verdict}: {routed.detail}"
            self.timeline.record_action(kind, alert, time=self.clock(), detail=detail)

    def acknowledge(self, incident_id: str, *, by: str) -> list[Notification]:
        """Someone took the incident: no escalation; every channel holding a page is told.

        Returns the notifications queued (none when the page was already acknowledged).
        """
        return self._close_page(incident_id, by, ActionKind.PAGE_ACKNOWLEDGED)

    def resolve(self, incident_id: str, *, by: str) -> list[Notification]:
        """The incident is over: its pages are resolved; a later alert opens a new page."""
        return self._close_page(incident_id, by, ActionKind.PAGE_RESOLVED)

    def _close_page(self, incident_id: str, by: str, kind: ActionKind) -> list[Notification]:
        if self.outbox is None:
            raise ValueError("no outbox: nothing was paged")
        now = self.clock()
        close = (
            self.outbox.acknowledge if kind is ActionKind.PAGE_ACKNOWLEDGED else self.outbox.resolve
        )
        queued = close(incident_id, by=by, now=now)
        if queued:
            channels = ", ".join(n.channel for n in queued)
            self.timeline.record_action(
                kind, queued[0].alert, time=now, detail=f"by {by}; telling {channels}"
            )
        return queued

    @contextmanager
    def _failures_recorded(self, alert: Alert) -> Iterator[None]:
        try:
            yield
        except AlertsError as exc:
            self.timeline.record_action(
                ActionKind.FREEZE_FAILED, alert, time=self.clock(), detail=str(exc)
            )
            log.error("freeze for alert %s failed: %s", alert.id, exc)
            raise

    def _freeze(self, alert: Alert) -> FreezeOrder | None:
        """Ask the kill switch; None when its policy declined (or only pretended, in dry run)."""
        assert self.killswitch is not None
        self.timeline.record_action(
            ActionKind.FREEZE_REQUESTED, alert, time=self.clock(), detail=self.killswitch.base_url
        )
        with self._failures_recorded(alert):
            answer = self.killswitch.freeze(
                alert.chain,
                alert.wallet,
                reason=alert.summary,
                alert_id=alert.id,
                requested_by=self.requested_by,
                severity=alert.severity.value,
            )
            if answer.get("applied") is False:
                detail = "declined by the kill switch's policy"
                if answer.get("dry_run"):
                    detail = "dry run: the kill switch's policy would have frozen"
                if not self.timeline.has_action(alert.id, ActionKind.FREEZE_SKIPPED):
                    self.timeline.record_action(
                        ActionKind.FREEZE_SKIPPED,
                        alert,
                        time=self.clock(),
                        detail=f"{detail} ({answer.get('reason', '')})",
                    )
                return None
            try:
                order = _order_from(answer)
            except ValidationError as exc:
                raise KillSwitchError(
                    alert.chain, alert.wallet, f"unexpected answer {answer!r}: {exc}"
                ) from exc
        detail = f"order {order.id}"
        if order.alert_id != alert.id:
            detail += f" (already frozen, by alert {order.alert_id})"
        self.timeline.record_action(
            ActionKind.FREEZE_ACCEPTED, alert, time=self.clock(), detail=detail, order=order
        )
        return order

    def close(self) -> None:
        """Close the timeline, the outbox and the kill-switch client."""
        if self.killswitch is not None:
            self.killswitch.close()
        if self.outbox is not None:
            self.outbox.close()
        self.timeline.close()
