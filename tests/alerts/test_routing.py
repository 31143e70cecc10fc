"""Routing: route selection, duplicates, cooldown per wallet and detector, grouping; its config."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from alerts.channels import NotificationAction
from alerts.routing import History, Route, Router, Sent, Verdict, fingerprint
from drainwatch.config import ConfigError, PagerDutyChannelConfig, load, loads
from drainwatch.events import Severity
from tests.alerts.conftest import T0, make_alert

TRIGGER, UPDATE = NotificationAction.TRIGGER, NotificationAction.UPDATE
EXAMPLE = Path(__file__).parents[2] / "deploy" / "config" / "drainwatch.example.toml"

ROUTES = [
    Route(Severity.WARNING, (), ("sec-slack",)),
    Route(Severity.CRITICAL, ("*-hot*",), ("oncall", "sec-slack"), 300, ("soc-mail",)),
]


def sent(
    alert_id: str, minutes_ago: float, severity: Severity = Severity.CRITICAL, freeze: bool = True
) -> Sent:
    return Sent(alert_id, T0 - timedelta(minutes=minutes_ago), severity, freeze)


def test_every_matching_route_adds_its_channels_once() -> None:
    router = Router(ROUTES)
    critical_hot = router.plan(make_alert(), History())
    assert critical_hot.deliveries == (("sec-slack", TRIGGER), ("oncall", TRIGGER))
    assert dict(critical_hot.escalations) == {"soc-mail": 300}

    cold = make_alert(wallet_label="nem-cold")
    assert router.plan(cold, History()).deliveries == (("sec-slack", TRIGGER),)
    warning = make_alert(severity=Severity.WARNING, freeze=False)
    assert router.plan(warning, History()).escalations == ()
    info = router.plan(make_alert(severity=Severity.INFO, freeze=False), History())
    assert (info.verdict, info.deliveries) == (Verdict.NO_ROUTE, ())


def test_a_shadow_critical_alert_notifies_but_never_escalates() -> None:
    plan = Router(ROUTES).plan(make_alert(shadow=True), History())
    assert plan.notify
    assert plan.escalations == ()


def test_later_alerts_of_an_incident_update_its_open_pages() -> None:
    plan = Router(ROUTES).plan(make_alert(), History(open_pages=frozenset({"oncall"})))
    assert plan.deliveries == (("sec-slack", TRIGGER), ("oncall", UPDATE))


def test_a_page_escalated_to_a_channel_keeps_it_updated() -> None:
    history = History(
        open_pages=frozenset({"oncall", "soc-mail"}), escalated_to=frozenset({"soc-mail"})
    )
    plan = Router(ROUTES).plan(make_alert(), history)
    assert plan.deliveries == (("sec-slack", TRIGGER), ("oncall", UPDATE), ("soc-mail", UPDATE))


def test_duplicates_are_suppressed_within_the_window() -> None:
    router = Router(ROUTES, cooldown_s=0)
    alert = make_alert(id="again")
    dup = History(duplicate_of="alert-1", duplicate_time=T0 - timedelta(hours=1))
    plan = router.plan(alert, dup)
    assert (plan.verdict, plan.reason) == (Verdict.DUPLICATE, "duplicate of alert alert-1")
    old = History(duplicate_of="alert-1", duplicate_time=T0 - timedelta(days=2))
    assert router.plan(alert, old).notify
    # An alert is never its own duplicate (a retried alert is re-planned as itself).
    assert router.plan(alert, History(duplicate_of="again", duplicate_time=T0)).notify


@pytest.mark.parametrize(
    ("previous", "update", "verdict"),
    [
        (sent("p", 5), {}, Verdict.COOLDOWN),
        (sent("p", 5, Severity.CRITICAL, freeze=True), {"summary": "other"}, Verdict.COOLDOWN),
        (sent("p", 10), {}, Verdict.NOTIFY),  # the cooldown is over
        (sent("p", 5, Severity.WARNING, freeze=False), {}, Verdict.NOTIFY),  # more severe
        (sent("p", 5, Severity.CRITICAL, freeze=False), {}, Verdict.NOTIFY),  # a freeze now
        (sent("p", 5, Severity.CRITICAL, freeze=False), {"shadow": True}, Verdict.COOLDOWN),
        (
            sent("p", 5, Severity.CRITICAL, freeze=True),
            {"severity": Severity.WARNING},
            Verdict.COOLDOWN,
        ),
    ],
)
def test_the_cooldown_per_wallet_and_detector(
    previous: Sent, update: dict[str, object], verdict: Verdict
) -> None:
    plan = Router(ROUTES, cooldown_s=600).plan(
        make_alert(id="new", **update), History(last_same_source=previous)
    )
    assert plan.verdict is verdict
    if verdict is Verdict.COOLDOWN:
        assert plan.reason.startswith("cooldown of velocity on nem:")
        assert "after alert p" in plan.reason


def test_fingerprints_ignore_the_id_and_see_the_content() -> None:
    a = make_alert()
    assert fingerprint(a) == fingerprint(make_alert(id="other", detected_at=T0 + timedelta(1)))
    assert fingerprint(a) != fingerprint(make_alert(detector="ledger"))
    assert fingerprint(a) != fingerprint(make_alert(incident_id="inc-2"))


# --- config ----------------------------------------------------------------------------------

BASE = """
[[wallets]]
chain = "nem"
address = "NC3B"
label = "nem-hot-1"

[alerts]
cooldown_s = 120

[alerts.channels.oncall]
kind = "pagerduty"
routing_key = "${PD_KEY}"

[alerts.channels.soc-mail]
kind = "email"
sender = "drainwatch@example.org"
to = ["soc@example.org"]

[[alerts.routes]]
min_severity = "critical"
labels = ["*-hot-*"]
channels = ["oncall"]
escalate_after_s = 300
escalate_to = ["soc-mail"]
"""


def test_routes_and_channels_load_with_secrets_by_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PD_KEY", "s3cret-key")
    alerts = loads(BASE).alerts
    oncall = alerts.channels["oncall"]
    assert isinstance(oncall, PagerDutyChannelConfig)
    assert oncall.routing_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(alerts)
    assert oncall.url == "https://events.pagerduty.com/v2/enqueue"
    router = Router.from_config(alerts)
    assert router.cooldown_s == 120
    assert router.routes == (
        Route(Severity.CRITICAL, ("*-hot-*",), ("oncall",), 300, ("soc-mail",)),
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('channels = ["oncall"]', 'channels = ["oncall", "pager"]'),
            "x.toml:22: alerts.routes[0].channels: unknown channel 'pager'",
        ),
        (
            ('escalate_to = ["soc-mail"]', 'escalate_to = ["soc"]'),
            "x.toml:24: alerts.routes[0].escalate_to: unknown channel 'soc'",
        ),
        (
            ("escalate_after_s = 300\n", ""),
            "alerts.routes[0]: Value error, escalate_after_s and escalate_to go together",
        ),
        (('kind = "email"', 'kind = "sms"'), "alerts.channels.soc-mail: Input tag 'sms'"),
        (
            ('routing_key = "${PD_KEY}"\n', ""),
            "alerts.channels.oncall.pagerduty.routing_key: Field",
        ),
    ],
)
def test_bad_routing_config_names_the_key(
    edit: tuple[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_KEY", "k")
    with pytest.raises(ConfigError, match=re.escape(message)):
        loads(BASE.replace(*edit), path="x.toml")


def test_the_commented_routing_example_loads_when_uncommented(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = EXAMPLE.read_text()
    marker = "# --- alert routing"
    head, _, section = text.partition(marker)
    assert section, "the example has an alert routing section"
    section = section.split("\n", 1)[1]  # the rest of the marker line
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and not line.startswith("# #") else line
        for line in section.splitlines()
    )
    for name in (
        "DRAINWATCH_KILLSWITCH_TOKEN",
        "SLACK_WEBHOOK_URL",
        "PD_ROUTING_KEY",
        "WEBHOOK_SECRET",
        "SMTP_PASSWORD",
    ):
        monkeypatch.setenv(name, "example")
    path = tmp_path / "routing.toml"
    path.write_text(head + uncommented)
    alerts = load(path).alerts
    assert sorted(alerts.channels) == ["oncall", "sec-slack", "siem", "soc-mail"]
    assert len(alerts.routes) == 2
    assert Router.from_config(alerts).routes[1].escalate_to == ("soc-mail",)
