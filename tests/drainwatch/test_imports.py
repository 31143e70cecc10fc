"""Commands load only what they use: ``drainwatch backtest`` does not import a Kafka client or
the kill switch's web stack (a second of start-up, paid on every replay before the lazy exports
of ``alerts`` and ``drainwatch.bus``)."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import pytest

import alerts
import drainwatch.bus

HEAVY = ("kafka", "confluent_kafka", "fastapi", "uvicorn", "httpx", "alerts.alerter")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_the_cli_and_the_backtest_do_not_import_kafka_or_the_web_stack() -> None:
    loaded = _loaded_after("import drainwatch.cli, detectors.backtest, detectors.partitioned")
    assert {"drainwatch.cli", "detectors.backtest", "alerts.cli"} <= loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_lazy_exports_resolve_to_the_real_objects() -> None:
    from alerts.alerter import Alerter
    from drainwatch.bus.kafka import KafkaBus

    assert alerts.Alerter is Alerter
    assert drainwatch.bus.KafkaBus is KafkaBus
    assert "Alerter" in dir(alerts)


@pytest.mark.parametrize("module", [alerts, drainwatch.bus])
def test_an_unknown_name_is_still_an_attribute_error(module: ModuleType) -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = module.NoSuchThing
