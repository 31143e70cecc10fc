"""The README's first command, ``drainwatch demo``: the whole pipeline on an in-process chain
freezes the Coincheck-style drain after its first large transfer and says so."""

from __future__ import annotations

import io
import logging
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from alerts import Timeline
from alerts.timeline import ActionKind
from drainwatch.demo import run_demo


def test_the_demo_freezes_the_drain_after_its_first_large_transfer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    out = io.StringIO()
    result = run_demo(tmp_path, Console(file=out, width=400, color_system=None))
    assert result.frozen
    assert result.ordinary_alerts == 0  # an hour of customers: silence
    assert (result.drained_eth, result.saved_eth) == (Decimal("150.01"), Decimal(700))
    text = out.getvalue()
    # Nothing but the story: no warning logged (the in-process chain cannot trace calls).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    [alert_line] = [line for line in text.splitlines() if "CRITICAL eth-hot-1" in line]
    assert "(after a 0.01 ETH test); 854.64 ETH left, at this rate empty in" in alert_line
    assert alert_line.endswith("FREEZE")
    assert text.count("refused, wallet frozen") == 5
    assert "700 ETH saved (82% of the drain)" in text
    timeline = Timeline(str(result.timeline_path))
    [alert] = [a for a in timeline.alerts() if a.alert.freeze]
    actions = {a.action for a in timeline.actions(alert_id=alert.alert.id)}
    assert ActionKind.FREEZE_ACCEPTED in actions
