"""Every example config in deploy/config/ loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drainwatch.config import load, require_live_chains

EXAMPLES = sorted((Path(__file__).parents[2] / "deploy" / "config").glob("*.toml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text())):
        monkeypatch.setenv(name, "example-secret-value")
    cfg = load(path)
    assert cfg.wallets
    if path.name != "backtest.toml":
        require_live_chains(cfg, path)  # a live example watches every wallet it lists
