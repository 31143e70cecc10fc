"""The dashboards as code: the checked-in JSON is the builder's output, and it is well-formed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from drainwatch.ops import DASHBOARDS, build_dashboards, dashboard_expressions, render_expression
from drainwatch.ops.dashboards import dump

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
VARIABLES = {"wallet_label": ".*", "__rate_interval": "1m", "__range": "1h"}


def test_checked_in_dashboards_are_the_builders_output() -> None:
    files = {p.stem: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    built = build_dashboards()
    assert sorted(files) == sorted(DASHBOARDS) == sorted(built)
    for uid, board in built.items():
        assert files[uid] == dump(board), f"run `drainwatch grafana export` ({uid} is stale)"


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_dashboard_panels_are_laid_out_and_query_the_chosen_prometheus(uid: str) -> None:
    board = json.loads((GRAFANA / "dashboards" / f"{uid}.json").read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        assert all(t["datasource"] == p["datasource"] for t in p["targets"])
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[0] == "datasource"
    tags = [a.get("target", {}).get("tags") for a in board["annotations"]["list"]]
    assert ["drainwatch"] in tags  # shows what `drainwatch grafana push` annotates
    for expr in dashboard_expressions(board):
        rendered = render_expression(expr, VARIABLES)
        assert "$" not in rendered
        assert rendered.count("(") == rendered.count(")")
        assert "wallet=" not in rendered  # labels, never addresses


def test_wallet_panels_follow_the_wallet_selector() -> None:
    board = build_dashboards()["drainwatch-wallets"]
    exprs = dashboard_expressions(board)
    assert exprs
    assert all('wallet_label=~"$wallet_label"' in e for e in exprs)


def test_render_expression_refuses_an_unknown_variable() -> None:
    with pytest.raises(KeyError, match="instance"):
        render_expression('up{instance=~"$instance"}', VARIABLES)


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    [prom] = datasources["datasources"]
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "drainwatch.yaml").read_text()
    )
    [provider] = providers["providers"]
    compose = yaml.safe_load((GRAFANA.parent / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
