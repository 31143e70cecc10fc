"""`drainwatch grafana push` against a local receiver that checks Grafana's API requests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alerts import ActionKind, Timeline
from drainwatch.events import Alert, FreezeAction, FreezeOrder, Severity
from drainwatch.ops import build_dashboards
from drainwatch.ops.cli import grafana_app
from tests.ops.grafana_receiver import GrafanaReceiver

TOKEN = "glsa_test_token"
T0 = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)


@pytest.fixture
def grafana() -> Iterator[GrafanaReceiver]:
    receiver = GrafanaReceiver(f"Bearer {TOKEN}")
    yield receiver
    receiver.close()


def run(grafana: GrafanaReceiver, *args: str, token: str = TOKEN) -> tuple[int, str]:
    env = {"GRAFANA_URL": grafana.url, "GRAFANA_TOKEN": token}
    result = CliRunner().invoke(grafana_app, ["push", *args], env=env)
    return result.exit_code, result.output


def make_alert(i: int, freeze: bool) -> Alert:
    return Alert(
        id=f"alert-{i}",
        time=T0 + timedelta(minutes=i),
        detected_at=T0 + timedelta(minutes=i, seconds=1),
        chain="ethereum",
        wallet="0xabc",
        wallet_label="eth-hot-1",
        severity=Severity.CRITICAL if freeze else Severity.WARNING,
        detector="velocity",
        freeze=freeze,
        summary=f"drain number {i}",
    )


def timeline_with_a_freeze(path: Path) -> tuple[list[Alert], FreezeOrder]:
    timeline = Timeline(str(path))
    alerts = [make_alert(0, False), make_alert(1, True)]
    for alert in alerts:
        timeline.record_alert(alert)
    order = FreezeOrder(
        id="order-1",
        time=T0 + timedelta(minutes=1, seconds=2),
        chain="ethereum",
        wallet="0xabc",
        action=FreezeAction.FREEZE,
        reason="drain number 1",
        requested_by="detector",
        alert_id="alert-1",
    )
    timeline.record_action(ActionKind.FREEZE_REQUESTED, alerts[1], time=order.time)
    timeline.record_action(ActionKind.FREEZE_ACCEPTED, alerts[1], time=order.time, order=order)
    # The kill switch answers a repeated request with the same order: one annotation only.
    timeline.record_action(ActionKind.FREEZE_ACCEPTED, alerts[1], time=order.time, order=order)
    timeline.close()
    return alerts, order


def test_push_creates_the_folder_and_uploads_every_dashboard_with_overwrite(
    grafana: GrafanaReceiver,
) -> None:
    code, output = run(grafana, "--no-annotations")
    assert code == 0, output

    assert [r.path for r in grafana.requests("GET", "/api/folders/drainwatch")] == [
        "/api/folders/drainwatch"
    ]
    [folder] = grafana.requests("POST", "/api/folders")
    assert folder.body == {"title": "drainwatch", "uid": "drainwatch"}

    uploads = grafana.requests("POST", "/api/dashboards/db")
    expected = build_dashboards()
    assert [u.body["dashboard"]["uid"] for u in uploads] == list(expected)
    for upload in uploads:
        assert upload.body["overwrite"] is True
        assert upload.body["folderUid"] == "drainwatch"
        assert "id" not in upload.body["dashboard"]  # Grafana matches on uid, not a stale id
        assert upload.body["dashboard"] == expected[upload.body["dashboard"]["uid"]]
        assert upload.headers["content-type"].startswith("application/json")
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in grafana.state.requests)
    assert "drainwatch-wallets: success /d/drainwatch-wallets/x" in output

    # Pushing again updates in place: the folder exists, every dashboard gets a new version.
    code, output = run(grafana, "--no-annotations")
    assert code == 0, output
    assert len(grafana.requests("POST", "/api/folders")) == 1
    versions = {u: d["version"] for u, d in grafana.state.dashboards.items()}
    assert versions == dict.fromkeys(expected, 2)


def test_push_marks_alerts_and_freezes_once_as_annotations(
    grafana: GrafanaReceiver, tmp_path: Path
) -> None:
    alerts, order = timeline_with_a_freeze(tmp_path / "timeline.sqlite3")
    code, output = run(grafana, "--timeline", str(tmp_path / "timeline.sqlite3"))
    assert code == 0, output
    assert "annotations added: 3" in output

    [lookup] = grafana.requests("GET", "/api/annotations")
    assert lookup.query["tags"] == ["drainwatch"]
    assert int(lookup.query["from"][0]) == int(alerts[0].time.timestamp() * 1000)
    assert int(lookup.query["to"][0]) == int(order.time.timestamp() * 1000)

    posted = [r.body for r in grafana.requests("POST", "/api/annotations")]
    assert [p["time"] for p in posted] == [
        int(alerts[0].time.timestamp() * 1000),
        int(alerts[1].time.timestamp() * 1000),
        int(order.time.timestamp() * 1000),
    ]
    warning, critical, freeze = posted
    assert warning["tags"][:2] == ["drainwatch", "id:alert-0"]
    assert {"alert", "warning", "velocity", "eth-hot-1"} <= set(warning["tags"])
    assert "freeze-requested" in critical["tags"]
    assert "drain number 1" in critical["text"]
    assert freeze["tags"][:2] == ["drainwatch", "id:order-1"]
    assert "freeze" in freeze["tags"]
    assert freeze["text"].startswith("freeze ethereum:0xabc")
    assert all("dashboardUID" not in p for p in posted)  # organisation-wide annotations

    # A second push finds them by their id tags and adds nothing.
    code, output = run(grafana, "--timeline", str(tmp_path / "timeline.sqlite3"))
    assert code == 0, output
    assert "annotations added: 0" in output
    assert len(grafana.requests("POST", "/api/annotations")) == 3


def test_push_with_a_wrong_token_fails_and_names_the_request(grafana: GrafanaReceiver) -> None:
    code, output = run(grafana, "--no-annotations", token="wrong")
    assert code == 2
    assert "folder drainwatch" in output
    assert not grafana.state.dashboards


def test_basic_auth_is_used_when_there_is_no_token(tmp_path: Path) -> None:
    receiver = GrafanaReceiver("Basic " + base64.b64encode(b"admin:secret").decode())
    try:
        env = {"GRAFANA_URL": receiver.url, "GRAFANA_USER": "admin", "GRAFANA_PASSWORD": "secret"}
        result = CliRunner().invoke(
            grafana_app, ["push", "--no-annotations", "--token-env", "UNSET_VAR_X"], env=env
        )
        assert result.exit_code == 0, result.output
        assert len(receiver.state.dashboards) == 3
    finally:
        receiver.close()


def test_push_without_credentials_refuses_to_start(grafana: GrafanaReceiver) -> None:
    result = CliRunner().invoke(
        grafana_app, ["push", "--token-env", "UNSET_VAR_X"], env={"GRAFANA_URL": grafana.url}
    )
    assert result.exit_code == 2
    assert "UNSET_VAR_X" in result.output
    assert not grafana.state.requests
