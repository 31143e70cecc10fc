"""``drainwatch incidents``: list, show, export and note, through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from alerts.cli import incidents_app
from alerts.timeline import Timeline
from tests.alerts.incident_data import EXPLORERS, at, record_drain

# Mounted the way drainwatch/cli.py mounts it.
app = typer.Typer()
app.add_typer(incidents_app, name="incidents")
runner = CliRunner()


@pytest.fixture
def timeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "timeline.sqlite3"
    timeline = Timeline(str(path), clock=lambda: at(30))
    record_drain(timeline)
    timeline.close()
    return path


@pytest.fixture
def drain_ids(timeline_file: Path) -> tuple[str, str]:
    from alerts.incidents import incidents_from

    timeline = Timeline(str(timeline_file))
    nem, eth = (i.id for i in incidents_from(timeline))
    timeline.close()
    return nem, eth


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["incidents", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_newest_first_and_filters_by_severity(
    timeline_file: Path, drain_ids: tuple[str, str]
) -> None:
    nem, eth = drain_ids
    code, out, _ = run("list", "--timeline", str(timeline_file))
    assert code == 0
    assert out.index(eth) < out.index(nem)
    assert "FROZEN" in out
    assert "130,003,310 XEM" in out

    code, out, _ = run("list", "--timeline", str(timeline_file), "--severity", "critical", "--json")
    assert code == 0
    assert [i["id"] for i in json.loads(out)] == [nem]


def test_show_accepts_a_prefix_and_prints_the_timeline(
    timeline_file: Path, drain_ids: tuple[str, str]
) -> None:
    nem, _ = drain_ids
    code, out, _ = run("show", nem[:10], "--timeline", str(timeline_file))
    assert code == 0
    assert f"Incident {nem}" in out
    assert "FROZEN at 2018-01-25 15:04:06 UTC" in out
    assert "A2 CRITICAL: 19% of hot wallet drained" in out
    assert "2018-01-26 00:04:00" in out  # JST column
    assert "Freeze accepted: wallet frozen" in out


def test_export_markdown_to_a_file_and_json_to_stdout(
    timeline_file: Path, drain_ids: tuple[str, str], tmp_path: Path
) -> None:
    nem, _ = drain_ids
    report = tmp_path / "report.md"
    code, _, err = run("export", nem, "--timeline", str(timeline_file), "-o", str(report))
    assert code == 0
    assert f"wrote {report}" in err
    text = report.read_text(encoding="utf-8")
    assert text.startswith(f"# Incident report: {nem}")
    assert "Timeline integrity:" in text

    code, out, _ = run("export", nem, "--timeline", str(timeline_file), "--format", "json")
    assert code == 0
    assert json.loads(out)["incident"]["status"] == "frozen"


def test_a_note_lands_in_the_timeline_and_the_export(
    timeline_file: Path, drain_ids: tuple[str, str]
) -> None:
    nem, eth = drain_ids
    code, out, _ = run(
        "note", nem, "Signer halted by custody; keys rotating", "--author", "kenji.sato",
        "--timeline", str(timeline_file),
    )  # fmt: skip
    assert code == 0
    assert f"added to {nem} by kenji.sato" in out

    timeline = Timeline(str(timeline_file))
    [note] = timeline.notes(nem)
    assert (note.author, note.text) == ("kenji.sato", "Signer halted by custody; keys rotating")
    assert timeline.notes(eth) == []
    timeline.close()
    code, out, _ = run("export", nem, "--timeline", str(timeline_file), "-f", "json")
    assert [n["text"] for n in json.loads(out)["notes"]] == [note.text]

    code, _, err = run("note", nem, "  ", "--timeline", str(timeline_file))
    assert code == 2
    assert "empty" in err


def test_the_config_names_the_timeline_and_the_explorers(
    timeline_file: Path, drain_ids: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nem, _ = drain_ids
    (tmp_path / "drainwatch.toml").write_text(
        f"""
[[wallets]]
chain = "ethereum"
address = "0x00000000000000000000000000000000000000e1"

[chains.nem]
kind = "evm"
rpc = ["http://127.0.0.1:7890"]
explorer_tx_url = "{EXPLORERS["nem"]}"

[alerts]
timeline_path = "{timeline_file.name}"
""",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # drainwatch.toml in the working directory is the default
    code, out, _ = run("export", nem, "-f", "json")
    assert code == 0, out
    links = {t["explorer_url"] for t in json.loads(out)["transfers"]}
    assert "https://explorer.nemtool.com/#/s_tx?hash=0xb2drain" in links


def test_missing_timeline_unknown_incident_and_bad_config(
    timeline_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.sqlite3"
    code, _, err = run("list", "--timeline", str(missing))
    assert code == 2
    assert "does not exist" in err
    assert not missing.exists()  # reading never creates an empty timeline

    code, _, err = run("list")
    assert code == 2
    assert "--timeline" in err

    code, _, err = run("show", "no-such-incident", "--timeline", str(timeline_file))
    assert code == 1
    assert "no incident matches 'no-such-incident'" in err

    bad = tmp_path / "bad.toml"
    bad.write_text('[[wallets]]\nchain = "nem"\naddress = "A"\nrole = "warm"\n', encoding="utf-8")
    code, _, err = run("list", "--config", str(bad))
    assert code == 2
    assert "wallets[0].role" in err
