"""Generate the JSON Schemas of the bus events (checked in under drainwatch/schemas/).

>>> schema = event_schemas()["drainwatch.transfers.v1"]
>>> schema["properties"]["amount"]["type"]
'string'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drainwatch.events import TOPICS

__all__ = ["SCHEMA_DIR", "event_schemas", "write_schemas"]

SCHEMA_DIR = Path(__file__).parent / "schemas"


def event_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (serialisation mode: what is on the wire) of every topic's event."""
    out: dict[str, dict[str, Any]] = {}
    for topic, model in TOPICS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://drainwatch.dev/schemas/{topic}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[topic] = schema
    return out


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write one ``<topic>.json`` per topic; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for topic, schema in event_schemas().items():
        path = directory / f"{topic}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
