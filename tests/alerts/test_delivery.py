"""The outbox and the delivery worker, end to end with the Alerter and real local receivers.

Grouping, duplicates, cooldown, escalation, retries with back-off, undeliverable notifications
kept and reported, restarts. Time is an injected clock, never a sleep.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from alerts import Alerter, AlertsError, ConsoleNotifier, KillSwitchClient, Timeline
from alerts.channels import (
    Channel,
    EmailChannel,
    NotificationAction,
    PagerDutyChannel,
    SlackChannel,
)
from alerts.delivery import DeliveryWorker, Outbox, OutboxEntry
from alerts.routing import Route, Router
from alerts.timeline import incident_of
from drainwatch.config import loads
from drainwatch.events import ALERTS, Alert, Severity
from tests.alerts.channels.receivers import (
    MailServer,
    PagerDutyReceiver,
    Receiver,
    Reply,
    free_port,
    pagerduty_receiver,
    slack_receiver,
    validate_slack,
    webhook_receiver,
)
from tests.alerts.conftest import T0, make_alert

ROUTING_KEY = "R0UT1NGKEY"
WALLET = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
INCIDENT = f"nem:{WALLET}"
DEDUP = f"drainwatch/{INCIDENT}"
W, C = Severity.WARNING, Severity.CRITICAL


@pytest.fixture
def slack() -> Iterator[Receiver]:
    receiver = slack_receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    receiver = pagerduty_receiver(ROUTING_KEY)
    yield receiver
    receiver.stop()


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    yield server
    server.stop()


class Clock:
    """A settable clock shared by the Alerter and the worker."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Rig:
    alerter: Alerter
    outbox: Outbox
    worker: DeliveryWorker
    clock: Clock
    reported: list[OutboxEntry]

    @property
    def timeline(self) -> Timeline:
        return self.alerter.timeline

    def kinds(self, alert_id: str) -> list[str]:
        """The notification and page actions recorded for an alert (freezes left out)."""
        return [
            a.action.value
            for a in self.timeline.actions(alert_id=alert_id)
            if a.action.startswith(("notification_", "page_"))
        ]

    def actions(self, channel: str) -> list[str]:
        return [e.notification.action.value for e in self.outbox.entries(channel=channel)]


def make_rig(
    channels: Mapping[str, Channel],
    routes: Sequence[Route],
    *,
    cooldown_s: float = 600,
    undeliverable_after: int = 3,
    outbox_path: str = ":memory:",
    timeline_path: str = ":memory:",
    killswitch: KillSwitchClient | None = None,
    clock: Clock | None = None,
) -> Rig:
    clock = clock or Clock()
    outbox = Outbox(outbox_path)
    timeline = Timeline(timeline_path, clock=clock)
    alerter = Alerter(
        timeline,
        killswitch,
        clock=clock,
        router=Router(routes, cooldown_s=cooldown_s),
        outbox=outbox,
    )
    reported: list[OutboxEntry] = []
    worker = DeliveryWorker(
        outbox,
        channels,
        timeline,
        clock=clock,
        retry_backoff_s=5,
        retry_backoff_max_s=60,
        undeliverable_after=undeliverable_after,
        on_undeliverable=reported.append,
    )
    return Rig(alerter, outbox, worker, clock, reported)


def at(minutes: float, **fields: object) -> Alert:
    """An alert whose triggering transfer was ``minutes`` after T0."""
    return make_alert(time=T0 + timedelta(minutes=minutes), **fields)


EVERYTHING = [Route(Severity.INFO, (), ("oncall", "sec-slack"))]
ONCALL = [Route(Severity.INFO, (), ("oncall",))]


def test_three_alerts_of_one_incident_are_one_page_updated(
    pagerduty: PagerDutyReceiver, slack: Receiver
) -> None:
    rig = make_rig(
        {
            "oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url),
            "sec-slack": SlackChannel("sec-slack", slack.url),
        },
        EVERYTHING,
    )
    # Within the cooldown, but each more severe than the last: all three get through.
    rig.alerter.handle(ALERTS, at(0, id="a1", severity=W, freeze=False, summary="5% out in 60 s"))
    rig.alerter.handle(ALERTS, at(1, id="a2", severity=C, freeze=False, summary="12% in 3 min"))
    rig.alerter.handle(ALERTS, at(2, id="a3", severity=C, freeze=True, summary="31% in 4 min"))

    report = rig.worker.run_once()

    assert (report.delivered, report.failed) == (6, 0)
    assert pagerduty.problems == slack.problems == []
    [page] = pagerduty.alerts
    assert page.dedup_key == DEDUP
    assert [s.split(": ", 1)[1] for s in page.summaries] == [
        "5% out in 60 s",
        "12% in 3 min",
        "31% in 4 min [FREEZE requested]",
    ]
    assert {r.json["dedup_key"] for r in pagerduty.accepted} == {DEDUP}
    assert rig.actions("oncall") == ["trigger", "update", "update"]
    assert [r.json["text"].split(" ")[0] for r in slack.accepted] == ["WARNING", "UPDATE", "UPDATE"]
    assert rig.kinds("a2") == [
        "notification_queued",
        "notification_delivered",
        "notification_delivered",
    ]
    assert rig.outbox.counts() == {"pending": 0, "undeliverable": 0, "delivered": 6}


OTHER = "NOTHERWALLET"


def test_a_drain_of_several_wallets_is_one_page(pagerduty: PagerDutyReceiver) -> None:
    # The first wallet is paged before any incident exists; the incident its second wallet
    # opens names both, so it joins the first wallet's page, and so does the fleet freeze.
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    both = (INCIDENT, f"nem:{OTHER}")
    rig.alerter.handle(ALERTS, at(0, id="w1", summary="31% of nem-hot gone"))
    rig.alerter.handle(
        ALERTS,
        at(2, id="w2", wallet=OTHER, incident_id="inc-x", incident_wallets=both, summary="40%"),
    )
    rig.alerter.handle(
        ALERTS,
        at(
            3,
            id="fleet",
            wallet="THIRD",
            detector="correlation",
            incident_id="inc-x",
            incident_wallets=(*both, "nem:THIRD"),
            summary="freezing nem-third",
        ),
    )
    rig.worker.run_once()
    assert [a.dedup_key for a in pagerduty.alerts] == [DEDUP]
    assert rig.actions("oncall") == ["trigger", "update", "update"]
    assert rig.outbox.page_of(at(9, id="later", wallet="THIRD", incident_id="inc-x")) == INCIDENT
    # Acknowledging the incident acknowledges the page it joined.
    [ack] = rig.alerter.acknowledge("inc-x", by="alice")
    rig.worker.run_once()
    assert (ack.incident_id, pagerduty.alerts[0].status) == (INCIDENT, "acknowledged")


def test_an_incident_joins_only_an_open_recent_page_of_its_wallets(
    pagerduty: PagerDutyReceiver,
) -> None:
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    rig.alerter.handle(ALERTS, at(0, id="w1"))
    named = {"wallet": OTHER, "incident_wallets": (INCIDENT, f"nem:{OTHER}")}
    # Another wallet's incident, not naming the paged wallet: a page of its own.
    elsewhere = at(1, id="e1", wallet="ELSEWHERE", incident_id="inc-e", summary="e")
    assert rig.outbox.page_of(elsewhere) == "inc-e"
    # Naming it, but more than an hour after its last alert: a page of its own.
    assert rig.outbox.page_of(at(61, id="late", incident_id="inc-l", **named)) == "inc-l"
    assert rig.outbox.page_of(at(59, id="near", incident_id="inc-n", **named)) == INCIDENT
    # Once someone took the wallet's page, or resolved it, an incident naming it opens its own.
    rig.worker.run_once()
    rig.alerter.acknowledge(INCIDENT, by="alice")
    assert rig.outbox.page_of(at(5, id="x", incident_id="inc-a", **named)) == "inc-a"
    rig.alerter.resolve(INCIDENT, by="bob")
    assert rig.outbox.page_of(at(5, id="x", incident_id="inc-r", **named)) == "inc-r"


def test_an_incident_joins_the_page_of_its_first_freeze_not_an_earlier_warning(
    pagerduty: PagerDutyReceiver, slack: Receiver
) -> None:
    # Warnings go to Slack, criticals to PagerDuty. A wallet warned, another was frozen: the
    # incident naming both joins the frozen wallet's page, the one PagerDuty holds.
    rig = make_rig(
        {
            "oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url),
            "sec-slack": SlackChannel("sec-slack", slack.url),
        },
        [Route(Severity.WARNING, (), ("sec-slack",)), Route(Severity.CRITICAL, (), ("oncall",))],
    )
    pair = (INCIDENT, f"nem:{OTHER}")
    rig.alerter.handle(ALERTS, at(0, id="warned", severity=W, freeze=False, summary="5% out"))
    rig.alerter.handle(ALERTS, at(1, id="frozen", wallet=OTHER, summary="31% out"))
    rig.alerter.handle(
        ALERTS, at(2, id="inc", incident_id="inc-x", incident_wallets=pair, summary="40% out")
    )
    rig.worker.run_once()
    assert [a.dedup_key for a in pagerduty.alerts] == [f"drainwatch/nem:{OTHER}"]
    assert rig.actions("oncall") == ["trigger", "update"]


def test_two_names_for_one_incident_are_one_page(pagerduty: PagerDutyReceiver) -> None:
    # Two detector replicas that opened one incident at once name it twice; the second name's
    # first alert names a wallet of the first's page, and joins it.
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    pair = (INCIDENT, f"nem:{OTHER}")
    rig.alerter.handle(ALERTS, at(0, id="a", incident_id="inc-a", incident_wallets=(INCIDENT,)))
    rig.alerter.handle(
        ALERTS, at(1, id="b", wallet=OTHER, incident_id="inc-b", incident_wallets=pair)
    )
    rig.worker.run_once()
    assert [a.dedup_key for a in pagerduty.alerts] == ["drainwatch/inc-a"]
    assert rig.actions("oncall") == ["trigger", "update"]


def test_duplicates_are_suppressed_and_recorded(pagerduty: PagerDutyReceiver) -> None:
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    rig.alerter.handle(ALERTS, at(0, id="a1"))  # the bus delivering it again
    rig.alerter.handle(ALERTS, at(3, id="a1-replayed"))  # same content, a new id
    rig.worker.run_once()

    assert len(pagerduty.accepted) == 1
    [suppressed] = [
        a for a in rig.timeline.actions(alert_id="a1-replayed") if a.action.startswith("notif")
    ]
    assert suppressed.detail == "duplicate: duplicate of alert a1"
    assert rig.outbox.routed("a1-replayed") is not None


def test_the_cooldown_is_per_wallet_and_detector(pagerduty: PagerDutyReceiver) -> None:
    rig = make_rig(
        {"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)},
        ONCALL,
        cooldown_s=600,
    )
    rig.alerter.handle(ALERTS, at(0, id="v1", summary="31% in 4 min"))
    rig.alerter.handle(ALERTS, at(5, id="v2", summary="35% in 9 min"))  # cooling down
    rig.alerter.handle(ALERTS, at(5, id="l1", detector="ledger", summary="unapproved outflow"))
    rig.alerter.handle(ALERTS, at(5, id="o1", wallet="NOTHERWALLET", summary="2% in 1 min"))
    rig.alerter.handle(ALERTS, at(11, id="v3", summary="52% in 15 min"))  # cooldown over
    rig.worker.run_once()

    assert rig.kinds("v2") == ["notification_suppressed"]
    [cooled] = [a for a in rig.timeline.actions(alert_id="v2") if a.action.startswith("notif")]
    assert cooled.detail.startswith("cooldown: cooldown of velocity on nem:")
    assert rig.actions("oncall") == ["trigger", "update", "trigger", "update"]
    assert [a.dedup_key for a in pagerduty.alerts] == [DEDUP, "drainwatch/nem:NOTHERWALLET"]
    assert [s.split(": ", 1)[1] for s in pagerduty.alerts[0].summaries] == [
        "31% in 4 min [FREEZE requested]",
        "unapproved outflow [FREEZE requested]",
        "52% in 15 min [FREEZE requested]",
    ]


ESCALATING = [Route(Severity.CRITICAL, ("nem-*",), ("oncall",), 300, ("soc-mail",))]


def escalation_rig(pagerduty: PagerDutyReceiver, mail: MailServer) -> Rig:
    return make_rig(
        {
            "oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url),
            "soc-mail": EmailChannel(
                "soc-mail", "127.0.0.1", mail.port, "drainwatch@example.org", ("soc@example.org",)
            ),
        },
        ESCALATING,
    )


def test_a_critical_page_not_acknowledged_in_time_escalates_once(
    pagerduty: PagerDutyReceiver, mail: MailServer
) -> None:
    rig = escalation_rig(pagerduty, mail)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    assert rig.worker.run_once().delivered == 1

    rig.clock.advance(299)
    assert rig.worker.run_once().escalated == 0
    assert mail.messages == []

    rig.clock.advance(1)
    report = rig.worker.run_once()
    assert (report.escalated, report.delivered) == (1, 1)
    [message] = mail.messages
    assert message["Subject"].startswith("[drainwatch] ESCALATED CRITICAL nem-hot: 31% of hot")
    assert "note: not acknowledged within 300 s" in message.get_content().splitlines()
    assert rig.kinds("a1") == [
        "notification_queued",
        "notification_delivered",
        "notification_escalated",
        "notification_delivered",
    ]

    # Later alerts of the incident update the pages; the escalation does not fire again.
    rig.alerter.handle(ALERTS, at(20, id="a2", summary="60% gone"))
    rig.clock.advance(3600)
    assert rig.worker.run_once().escalated == 0
    assert rig.actions("soc-mail") == ["escalate", "update"]
    assert len(mail.messages) == 2
    assert mail.messages[1]["Subject"].startswith("[drainwatch] UPDATE CRITICAL")


def test_an_acknowledged_page_does_not_escalate_and_pagerduty_is_told(
    pagerduty: PagerDutyReceiver, mail: MailServer
) -> None:
    rig = escalation_rig(pagerduty, mail)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    rig.worker.run_once()
    rig.clock.advance(60)

    [ack] = rig.alerter.acknowledge(INCIDENT, by="alice")
    assert rig.alerter.acknowledge(INCIDENT, by="bob") == []  # once
    assert (ack.channel, ack.action) == ("oncall", NotificationAction.ACKNOWLEDGE)
    rig.worker.run_once()
    assert pagerduty.actions == ["trigger", "acknowledge"]
    assert pagerduty.alerts[0].status == "acknowledged"
    assert "page_acknowledged" in rig.kinds("a1")

    rig.clock.advance(600)
    assert rig.worker.run_once().escalated == 0
    assert mail.messages == []


def test_a_resolved_incident_opens_a_new_page_on_its_next_alert(
    pagerduty: PagerDutyReceiver,
) -> None:
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    rig.worker.run_once()
    rig.alerter.resolve(INCIDENT, by="bob")
    rig.worker.run_once()
    assert pagerduty.alerts[0].status == "resolved"

    rig.alerter.handle(ALERTS, at(30, id="a2", summary="again"))
    rig.worker.run_once()
    assert pagerduty.actions == ["trigger", "resolve", "trigger"]
    assert rig.actions("oncall") == ["trigger", "resolve", "trigger"]
    assert [a.status for a in pagerduty.alerts] == ["resolved", "triggered"]


def test_an_acknowledgement_waits_for_its_trigger(pagerduty: PagerDutyReceiver) -> None:
    rig = make_rig({"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)}, ONCALL)
    pagerduty.fail_next(1)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    assert rig.worker.run_once().failed == 1
    rig.alerter.acknowledge(INCIDENT, by="alice")

    rig.clock.advance(1)
    assert rig.worker.run_once().delivered == 0
    assert pagerduty.attempts == 1, "the acknowledge did not overtake the trigger"

    rig.clock.advance(4)
    assert rig.worker.run_once().delivered == 2
    assert pagerduty.actions == ["trigger", "acknowledge"]


def test_an_undeliverable_notification_is_kept_reported_and_delivered_later(
    slack: Receiver,
) -> None:
    rig = make_rig(
        {"sec-slack": SlackChannel("sec-slack", slack.url)},
        [Route(Severity.INFO, (), ("sec-slack",))],
        undeliverable_after=3,
    )
    slack.fail_next(1000)
    rig.alerter.handle(ALERTS, at(0, id="a1"))

    schedule = []
    for wait in (0, 4, 1, 10, 20, 40):  # back-off: 5, 10, 20, 40 s after attempts 1..4
        rig.clock.advance(wait)
        rig.worker.run_once()
        schedule.append(slack.attempts)
    assert schedule == [1, 1, 2, 3, 4, 5]

    [entry] = rig.outbox.undeliverable()
    assert entry.attempts == 5
    assert entry.last_error == "channel sec-slack: HTTP 503: unavailable"
    assert entry.undeliverable_since == T0 + timedelta(seconds=15)
    assert entry.next_attempt_at == rig.clock.now + timedelta(seconds=60)
    assert [r.notification.id for r in rig.reported] == [entry.notification.id]
    [failed] = [a for a in rig.timeline.actions(alert_id="a1") if a.action == "notification_failed"]
    assert "undeliverable after 3 attempts" in failed.detail
    assert rig.outbox.counts() == {"pending": 1, "undeliverable": 1, "delivered": 0}

    slack.fail_next(0)  # the receiver comes back
    rig.clock.advance(60)
    assert rig.worker.run_once().delivered == 1
    assert rig.outbox.undeliverable() == []
    assert len(slack.accepted) == 1
    assert len(rig.reported) == 1
    assert rig.kinds("a1")[-1] == "notification_delivered"


def test_a_receiver_that_was_down_gets_it_when_it_starts() -> None:
    receiver = Receiver(validate_slack, lambda _: Reply(200, b"ok", "text/plain"))  # not started
    rig = make_rig(
        {"sec-slack": SlackChannel("sec-slack", receiver.url, timeout_s=2)},
        [Route(Severity.INFO, (), ("sec-slack",))],
    )
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    assert rig.worker.run_once().failed == 1
    assert "ConnectError" in (rig.outbox.pending()[0].last_error or "")

    receiver.start()
    try:
        assert rig.outbox.retry_now(rig.clock.now) == 1
        assert rig.worker.run_once().delivered == 1
        assert receiver.problems == []
        assert len(receiver.accepted) == 1
    finally:
        receiver.stop()


def test_a_refusal_is_reported_at_once_and_a_fixed_config_delivers_it(
    pagerduty: PagerDutyReceiver,
) -> None:
    rig = make_rig({"oncall": PagerDutyChannel("oncall", "WRONG", pagerduty.url)}, ONCALL)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    rig.worker.run_once()
    [entry] = rig.outbox.undeliverable()
    assert (entry.attempts, entry.next_attempt_at) == (1, T0 + timedelta(seconds=60))
    assert "HTTP 400" in (entry.last_error or "")

    fixed = DeliveryWorker(
        rig.outbox,
        {"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)},
        clock=rig.clock,
    )
    rig.outbox.retry_now(rig.clock.now)
    assert fixed.run_once().delivered == 1
    assert len(pagerduty.alerts) == 1


def test_a_notification_for_a_channel_no_longer_configured_is_kept() -> None:
    rig = make_rig({}, [Route(Severity.INFO, (), ("gone",))], undeliverable_after=1)
    rig.alerter.handle(ALERTS, at(0, id="a1"))
    assert rig.worker.run_once().newly_undeliverable == 1
    [entry] = rig.outbox.undeliverable()
    assert entry.last_error == "channel gone: no such channel is configured"


def test_pending_deliveries_survive_a_restart(tmp_path: Path, slack: Receiver) -> None:
    outbox_path, timeline_path = str(tmp_path / "outbox.sqlite3"), str(tmp_path / "tl.sqlite3")
    routes = [Route(Severity.INFO, (), ("sec-slack",))]
    channels = {"sec-slack": SlackChannel("sec-slack", slack.url)}
    slack.fail_next(1000)
    first = make_rig(channels, routes, outbox_path=outbox_path, timeline_path=timeline_path)
    first.alerter.handle(ALERTS, at(0, id="a1"))
    first.alerter.handle(ALERTS, at(0, id="b1", wallet="NOTHERWALLET"))
    first.worker.run_once()
    first.alerter.close()

    slack.fail_next(0)
    clock = Clock(T0 + timedelta(minutes=1))
    second = make_rig(
        channels, routes, outbox_path=outbox_path, timeline_path=timeline_path, clock=clock
    )
    assert [(e.notification.alert.id, e.attempts) for e in second.outbox.pending()] == [
        ("a1", 1),
        ("b1", 1),
    ]
    # The bus redelivers what the first process had not committed: nothing is queued twice,
    # even by an alerter whose timeline lost the "processed" mark.
    second.alerter.handle(ALERTS, at(0, id="a1"))
    forgetful = Alerter(
        Timeline(":memory:"), router=Router(routes), outbox=second.outbox, clock=clock
    )
    forgetful.handle(ALERTS, at(0, id="b1", wallet="NOTHERWALLET"))
    assert len(second.outbox.entries()) == 2

    assert second.worker.run_once().delivered == 2
    assert len(slack.accepted) == 2
    second.alerter.close()


def test_pages_go_out_even_while_the_kill_switch_is_down(pagerduty: PagerDutyReceiver) -> None:
    dead = KillSwitchClient(f"http://127.0.0.1:{free_port()}", attempts=1, timeout_s=2)
    rig = make_rig(
        {"oncall": PagerDutyChannel("oncall", ROUTING_KEY, pagerduty.url)},
        ONCALL,
        killswitch=dead,
    )
    alert = at(0, id="a1")
    for _ in range(2):  # the stage retries the alert after the failed freeze
        with pytest.raises(AlertsError):
            rig.alerter.handle(ALERTS, alert)
    rig.worker.run_once()
    assert pagerduty.actions == ["trigger"]
    assert rig.kinds("a1").count("notification_queued") == 1
    assert not rig.timeline.is_processed("a1")


def test_the_background_worker_delivers(slack: Receiver) -> None:
    rig = make_rig(
        {"sec-slack": SlackChannel("sec-slack", slack.url)},
        [Route(Severity.INFO, (), ("sec-slack",))],
    )
    rig.worker.poll_s = 0.05
    rig.worker.start()
    try:
        rig.alerter.handle(ALERTS, at(0, id="a1"))
        deadline = time.monotonic() + 10
        while not slack.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        rig.worker.close()
    assert len(slack.accepted) == 1
    assert rig.outbox.counts()["delivered"] == 1
    assert threading.active_count() >= 1


def test_from_config_wires_every_channel_kind(
    pagerduty: PagerDutyReceiver,
    slack: Receiver,
    mail: MailServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    webhook = webhook_receiver("whsec-cfg")
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("HOOK_SECRET", "whsec-cfg")
    config = loads(f"""
[[wallets]]
chain = "nem"
address = "{WALLET}"
label = "nem-hot"

[alerts]
timeline_path = "{tmp_path / "tl.sqlite3"}"
outbox_path = "{tmp_path / "outbox.sqlite3"}"
console = true

[alerts.channels.oncall]
kind = "pagerduty"
routing_key = "${{PD_KEY}}"
url = "{pagerduty.url}"

[alerts.channels.sec-slack]
kind = "slack"
url = "{slack.url}"

[alerts.channels.siem]
kind = "webhook"
url = "{webhook.url}"
secret = "${{HOOK_SECRET}}"

[alerts.channels.soc-mail]
kind = "email"
smtp_port = {mail.port}
sender = "drainwatch@example.org"
to = ["soc@example.org"]

[[alerts.routes]]
channels = ["sec-slack", "siem", "soc-mail"]

[[alerts.routes]]
min_severity = "critical"
labels = ["nem-*"]
channels = ["oncall"]
""")
    out = io.StringIO()
    alerter = Alerter.from_config(config.alerts, console=ConsoleNotifier(out))
    assert alerter.outbox is not None
    worker = DeliveryWorker.from_config(config.alerts, alerter.outbox, alerter.timeline)
    try:
        alerter.handle(ALERTS, make_alert())
        assert worker.run_once().delivered == 4
    finally:
        worker.close()
        alerter.close()
        webhook.stop()
    assert pagerduty.problems == slack.problems == webhook.problems == []
    assert (len(pagerduty.accepted), len(slack.accepted), len(webhook.accepted)) == (1, 1, 1)
    assert len(mail.messages) == 1
    assert make_alert().summary in out.getvalue(), "the console still prints"
    assert incident_of(make_alert()) == INCIDENT


def test_alerter_needs_router_and_outbox_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        Alerter(Timeline(":memory:"), outbox=Outbox(":memory:"))
    with pytest.raises(ValueError, match="no outbox"):
        Alerter(Timeline(":memory:")).acknowledge(INCIDENT, by="alice")
