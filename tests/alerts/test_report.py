"""Incident exports: the Markdown report for a regulator and the JSON export."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest

from alerts.incidents import Incident, incidents_from
from alerts.report import JST, describe, integrity, render_json, render_markdown
from alerts.timeline import ActionKind, Timeline
from alerts.web.pages import TAGS
from tests.alerts.incident_data import EXPLORERS, HOT, Drain, at, record_drain

GENERATED = at(120)


@pytest.fixture
def drain() -> Drain:
    return record_drain(Timeline(":memory:", clock=lambda: at(30)))


def _nem(drain: Drain) -> Incident:
    return next(i for i in incidents_from(drain.timeline) if i.wallets[0].chain == "nem")


def _section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title}"
    return match.group(1)


def test_markdown_has_every_section_a_regulator_needs(drain: Drain) -> None:
    nem = _nem(drain)
    text = render_markdown(nem, EXPLORERS, GENERATED)

    assert text.startswith(f"# Incident report: {nem.id}\n")
    for title in ("Summary", "Timeline", "Transfers", "Alerts", "Actions", "Notes", "Integrity"):
        assert f"\n## {title}\n" in text
    summary = _section(text, "Summary")
    assert "**FROZEN (nem-hot)**" in summary
    assert "2 min 6 s after the first alert" in summary
    assert "130,003,310 XEM (nem) in 5 transfers" in summary
    assert "2018-01-25 15:02:00 UTC (2018-01-26 00:02:00 JST)" in summary


def test_markdown_timeline_is_in_utc_with_jst_beside_it(drain: Drain) -> None:
    nem = _nem(drain)
    timeline = _section(render_markdown(nem, EXPLORERS, GENERATED), "Timeline")
    rows = [line for line in timeline.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(nem.entries)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        utc = datetime.fromisoformat(cells[1] + "+00:00")
        jst = datetime.fromisoformat(cells[2]).replace(tzinfo=JST)
        assert jst == utc
        assert jst.utcoffset() == timedelta(hours=9)
    assert any("A2 CRITICAL: 19% of hot wallet drained" in row for row in rows)


def test_markdown_links_transfers_and_lists_alert_numbers(drain: Drain) -> None:
    text = render_markdown(_nem(drain), EXPLORERS, GENERATED)
    link = EXPLORERS["nem"].replace("{tx_hash}", drain.big.tx_hash)
    transfers = _section(text, "Transfers")
    assert f"[`{drain.big.tx_hash}`](<{link}>)" in transfers
    assert "100,000,000 XEM" in transfers
    assert "| retracted |" in transfers
    alerts = _section(text, "Alerts")
    assert "### A2: critical from velocity" in alerts
    assert "| projected\\_empty\\_s | 540 |" in alerts
    assert f"`nem:{HOT}`" in alerts
    # Without a template there is no link, only the hash.
    bare = render_markdown(_nem(drain), {}, GENERATED)
    assert "](<" not in _section(bare, "Transfers")
    assert f"`{drain.big.tx_hash}`" in _section(bare, "Transfers")


def test_markdown_keeps_hostile_text_inside_its_cell(drain: Drain) -> None:
    nem = _nem(drain)
    drain.timeline.add_note(
        nem.id, "line one | not a column\nline two <img src=x> *bold*", author="a|b", time=at(9)
    )
    text = render_markdown(_nem(drain), EXPLORERS, GENERATED)
    [row] = [r for r in _section(text, "Notes").splitlines() if "line one" in r]
    unescaped_pipes = re.findall(r"(?<!\\)\|", row)
    assert len(unescaped_pipes) == 5  # four cells
    assert "\\<img src=x\\>" in row
    assert "line one \\| not a column<br>line two" in row


def test_integrity_line_counts_and_digests_the_records(drain: Drain) -> None:
    nem = _nem(drain)
    text = render_markdown(nem, EXPLORERS, GENERATED)
    integrity_text = _section(text, "Integrity")
    assert "this report holds 8 transfer records, 3 alerts, 5 actions and 0 notes" in integrity_text
    digest = integrity(nem)["sha256"]
    assert f"`{digest}`" in integrity_text
    # The digest depends on the records only, not on when or with which links it was rendered.
    assert integrity(_nem(drain))["sha256"] == digest
    assert json.loads(render_json(nem, {}, at(999)))["integrity"]["sha256"] == digest
    drain.timeline.add_note(nem.id, "one more fact", author="kenji", time=at(9))
    assert integrity(_nem(drain))["sha256"] != digest


def test_json_export_is_exact_and_complete(drain: Drain) -> None:
    nem = _nem(drain)
    data = json.loads(render_json(nem, EXPLORERS, GENERATED))

    assert data["format"] == "drainwatch.incident.v1"
    assert data["generated_at"] == GENERATED.isoformat()
    assert data["incident"]["id"] == nem.id
    assert data["incident"]["status"] == "frozen"
    assert data["incident"]["time_to_freeze_s"] == 126.0
    assert data["incident"]["totals_out"] == [
        {"chain": "nem", "asset": "XEM", "amount": "130003310", "transfers": 5}
    ]
    assert data["incident"]["usd_out"] == "113100008.70"
    assert [a["ref"] for a in data["alerts"]] == ["A1", "A2", "A3"]
    assert data["alerts"][1]["metrics"]["projected_empty_s"] == "540"
    big = next(t for t in data["transfers"] if t["tx_hash"] == drain.big.tx_hash)
    assert big["amount"] == "100000000"
    assert big["amount_base_units"] == "100000000000000"
    assert big["explorer_url"] == EXPLORERS["nem"].replace("{tx_hash}", drain.big.tx_hash)
    assert big["time_jst"] == "2018-01-26T00:04:00+09:00"
    accepted = [a for a in data["actions"] if a["kind"] == "freeze_accepted"]
    assert accepted[0]["order"]["action"] == "freeze"
    assert len(data["timeline"]) == len(nem.entries)
    assert data["integrity"]["counts"] == {"transfers": 8, "alerts": 3, "actions": 5, "notes": 0}


def test_every_action_kind_reads_as_a_known_category(drain: Drain) -> None:
    # Other stages add action kinds; each must still get a tag on the page and a line of text.
    for kind in ActionKind:
        drain.timeline.record_action(kind, drain.critical, time=at(5), detail=f"{kind} detail")
    nem = _nem(drain)
    lines = [describe(a, nem, {}) for a in nem.actions if a.time == at(5)]
    assert len(lines) == len(ActionKind)
    for line in lines:
        assert line.category in TAGS, line
        assert line.ref == "A2"
        assert line.detail.endswith(" detail")
    by_kind = {a.action: describe(a, nem, {}).category for a in nem.actions if a.time == at(5)}
    assert by_kind[ActionKind.FREEZE_FAILED] == "freeze_failed"
    assert by_kind[ActionKind.NOTIFIED] == "notification"
