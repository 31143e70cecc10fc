"""The checked-in JSON Schemas are exactly what the models generate."""

from __future__ import annotations

import json

from drainwatch.events import TOPICS
from drainwatch.schema import SCHEMA_DIR, event_schemas


def test_checked_in_schemas_match_the_models() -> None:
    for topic, schema in event_schemas().items():
        path = SCHEMA_DIR / f"{topic}.json"
        assert path.exists(), f"run `drainwatch schemas` to write {path}"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `drainwatch schemas`"
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.json")) == sorted(TOPICS)


def test_amounts_are_strings_on_the_wire() -> None:
    schema = event_schemas()["drainwatch.transfers.v1"]
    assert schema["properties"]["amount"]["type"] == "string"
    assert "amount" in schema["required"]
