"""Start-up checks of the pipeline (drainwatch.app)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from drainwatch.app import balance_blind, detect_loop, run_pipeline
from drainwatch.bus import EmbeddedBus
from drainwatch.cli import app
from drainwatch.config import Config, loads
from drainwatch.events import LEDGER, ApprovedWithdrawal
from drainwatch.stage import default_topics, topic_name

HOT = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
COLD = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"


def config(
    tmp_path: Path, *, start_block: str = "", opening: str = "", evm: bool = False
) -> Config:
    return loads(
        f"""
state_dir = "{tmp_path / "state"}"

[[wallets]]
chain = "btc"
address = "{HOT}"
label = "btc-hot"
{opening}

[[wallets]]
chain = "btc"
address = "{COLD}"
label = "btc-cold"
role = "cold"

[[wallets]]
chain = "eth"
address = "0x{"11" * 20}"
label = "eth-hot"

[chains.btc]
kind = "bitcoin"
rpc = ["http://127.0.0.1:1"]
{start_block}

[chains.eth]
kind = "evm"
rpc = ["http://127.0.0.1:1"]

[alerts]
timeline_path = "{tmp_path / "timeline.sqlite3"}"
"""
    )


def test_only_bitcoin_hot_wallets_with_no_balance_to_start_from_are_blind(
    tmp_path: Path,
) -> None:
    # The EVM wallet's balance is read with every block; the cold wallet freezes on any outflow.
    assert balance_blind(config(tmp_path)) == ["btc-hot"]
    assert balance_blind(config(tmp_path, start_block="start_block = 100")) == []
    assert balance_blind(config(tmp_path, opening='opening_balance = "12.5"')) == []


def test_the_detect_stage_warns_about_each_blind_wallet_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    stop.set()  # start, warn, and stop at once
    with caplog.at_level(logging.WARNING, logger="drainwatch.app"):
        run_pipeline(config(tmp_path), "detect", stop=stop)
    warned = [r.getMessage() for r in caplog.records if "opening_balance" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("btc-hot: no opening_balance")


@pytest.mark.parametrize("instance", ["  ", "$(POD_NAME)", "${POD_NAME}"])
def test_run_refuses_an_instance_id_every_replica_would_share(
    tmp_path: Path, instance: str
) -> None:
    # `--instance-id $(POD_NAME)` without POD_NAME in the pod's env reaches us as written (and a
    # blank as blank): every pod would be the same static member. Refused before starting.
    path = tmp_path / "drainwatch.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[[wallets]]\nchain = "eth"\n'
        f'address = "0x{"11" * 20}"\nlabel = "eth-hot"\n'
    )
    result = CliRunner().invoke(
        app, ["run", "detect", "--config", str(path), "--instance-id", instance]
    )
    assert result.exit_code == 2
    assert f"--instance-id {instance!r}: give this process's own name" in result.output


def test_the_detect_stage_exports_the_time_of_the_latest_approval_it_read(
    tmp_path: Path,
) -> None:
    # Prometheus's DrainwatchLedgerQuiet compares it with the clock: a ledger feed that stops
    # freezes every hot wallet at its next payment.
    cfg = loads(
        f'state_dir = "{tmp_path / "state"}"\n[[wallets]]\nchain = "eth"\n'
        f'address = "0x{"11" * 20}"\nlabel = "eth-hot"\n'
    )
    bus = EmbeddedBus(":memory:")
    bus.ensure_topics(default_topics(cfg.bus.topic_prefix, 1))
    loop = detect_loop(cfg, bus)
    producer = bus.producer()
    made = [datetime(2030, 1, 1, 12, minute, tzinfo=UTC) for minute in (5, 1)]  # out of order
    for i, at in enumerate(made):
        approval = ApprovedWithdrawal(
            id=f"w{i}", time=at, chain="eth", asset="ETH", to="0xc", amount=Decimal(1)
        )
        producer.send(topic_name(cfg.bus.topic_prefix, LEDGER), approval.key, approval.to_json())
    producer.flush()
    loop.run_once(0.1)
    loop.close()
    assert (
        REGISTRY.get_sample_value("drainwatch_ledger_latest_approval_timestamp_seconds")
        == made[0].timestamp()
    )


def test_the_detect_stage_exports_its_go_live_moment(tmp_path: Path) -> None:
    # Prometheus's DrainwatchNotJudging compares it with the clock: until then nothing is judged.
    cfg = loads(
        f'state_dir = "{tmp_path / "state"}"\n[[wallets]]\nchain = "eth"\n'
        f'address = "0x{"11" * 20}"\nlabel = "eth-hot"\n'
        "[detection]\nlearn_until = 2030-01-01T09:00:00+09:00\n"
    )
    bus = EmbeddedBus(":memory:")
    bus.ensure_topics(default_topics(cfg.bus.topic_prefix, 1))
    detect_loop(cfg, bus).close()
    assert (
        REGISTRY.get_sample_value("drainwatch_detect_learn_until_timestamp_seconds")
        == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    )
