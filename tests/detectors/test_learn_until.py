"""``[detection] learn_until``: history before go-live is learned from, not alerted on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from detectors import DetectionEngine, run_backtest
from detectors.evaluate import _fleet
from detectors.traffic import DrainSpec, config_toml, generate_traffic, write_jsonl
from drainwatch.config import Config, ConfigError, DetectionConfig, loads
from tests.detectors.factories import at, transfer, wallet

START = datetime(2024, 3, 1, tzinfo=UTC)
DAY = 86400.0


def _config(learn_until: datetime | None) -> Config:
    return Config(
        wallets=(wallet("HOT1"), wallet("HOT2")),
        detection=DetectionConfig(learn_until=learn_until),
    )


def test_a_drain_before_go_live_is_learned_from_not_alerted_on() -> None:
    history = [
        transfer("THIEF", 1, wallet="HOT1", minutes=1),
        transfer("THIEF", 400, wallet="HOT1", minutes=2),
    ]
    live = DetectionEngine(_config(at(10)))
    assert [a for t in history for a in live.process(t)] == []
    # It was judged all the same, its windows and balance counted.
    # But no freeze went out, so none holds the thief's next payment back, as a rebuilt engine
    # (whose alerts went out before its restart) does within the hour.
    rebuilt = DetectionEngine(_config(None))
    rebuilt.replay(history)
    after = transfer("THIEF", 300, wallet="HOT1", minutes=11)
    assert not any(a.freeze for a in rebuilt.process(after))
    # A detector restarted after go-live rebuilds the history as history, the same way.
    restarted = DetectionEngine(_config(at(10)))
    restarted.replay(history)
    again = [(a.id, a.summary) for a in restarted.process(after) if a.freeze]
    frozen = [a for a in live.process(after) if a.freeze]
    assert again == [(a.id, a.summary) for a in frozen]
    assert [a.wallet for a in frozen] == ["HOT1"]
    # The history is in its windows: 700 of 1,000 XEM in 10 minutes, after the 1 XEM test.
    assert frozen[0].summary.startswith("70.1% of nem-hot1 drained in 10 min")
    assert "(after a 1 XEM test); 299 XEM left" in frozen[0].summary
    # Without learn_until the same history is alerted on, and frozen.
    judged = DetectionEngine(_config(None))
    assert any(a.freeze for t in history for a in judged.process(t))


def test_an_incident_in_the_history_freezes_nothing_when_a_detector_starts() -> None:
    # Three wallets drained within minutes just before go-live: a detector that starts after
    # the watchers backfilled them rebuilds the incident, and owes it nothing (take_over).
    config = Config(
        wallets=(wallet("HOT1"), wallet("HOT2"), wallet("HOT3"), wallet("HOT4")),
        detection=DetectionConfig(learn_until=at(10)),
    )
    history = [transfer(f"T{i}", 400, wallet=f"HOT{i}", minutes=2 * i) for i in (1, 2, 3)]
    started = DetectionEngine(config)
    started.replay(history)
    assert started.take_over() == []
    # Without learn_until the same rebuild makes up for the fleet freeze it missed (HOT4).
    judged = DetectionEngine(Config(wallets=config.wallets, detection=DetectionConfig()))
    judged.replay(history)
    assert {a.wallet for a in judged.take_over()} == {"HOT4"}


def test_after_go_live_a_drain_is_judged_as_without_it(tmp_path: Path) -> None:
    # Two weeks of generated traffic and a drain on day 10; go-live on day 4. No alert comes
    # before it, and from a day after it (when no cooldown or warning episode of the history's
    # alerts, which went out only in the run without learn_until, is left) every alert is that
    # run's.
    specs = _fleet(2, drains={1: (DrainSpec(10 * DAY, "burst", 0.06, 5, 60),)})
    traffic = generate_traffic(specs, START, days=14, seed=3, panic_days=(2,))
    transfers = write_jsonl(tmp_path / "transfers.jsonl", traffic.transfers)
    go_live = START + timedelta(days=4)
    text = config_toml(specs)
    plain = loads(text)
    learning = loads(f"{text}\n[detection]\nlearn_until = {go_live.isoformat()}\n")
    assert learning.detection.learn_until == go_live
    run_backtest(plain, transfers, None, tmp_path / "plain.jsonl", workers=1)
    run_backtest(learning, transfers, None, tmp_path / "learning.jsonl", workers=1)

    def rows(name: str) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in (tmp_path / name).read_bytes().splitlines()]

    cut = go_live.isoformat().replace("+00:00", "Z")
    plain_rows, learning_rows = rows("plain.jsonl"), rows("learning.jsonl")
    assert any(str(r["ts"]) < cut for r in plain_rows), "the history alone would alert"
    assert all(str(r["ts"]) >= cut for r in learning_rows)
    settled = (go_live + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert [r for r in learning_rows if str(r["ts"]) >= settled] == [
        r for r in plain_rows if str(r["ts"]) >= settled
    ]
    assert any(r["freeze"] and r["wallet_label"] == specs[1].label for r in learning_rows)


def test_go_live_is_an_instant_with_its_offset(tmp_path: Path) -> None:
    wallets = '[[wallets]]\nchain = "nem"\naddress = "A"\n'
    with_offset = loads(f"{wallets}[detection]\nlearn_until = 2026-12-07T09:00:00+09:00\n")
    assert with_offset.detection.learn_until == datetime(2026, 12, 7, tzinfo=UTC)
    with pytest.raises(ConfigError) as caught:
        loads(f"{wallets}[detection]\nlearn_until = 2026-12-07T09:00:00\n", path="x.toml")
    assert "x.toml:5: detection.learn_until" in str(caught.value)
    assert "timezone" in str(caught.value)
