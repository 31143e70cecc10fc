"""State snapshots: a detector that takes a partition over from its snapshot judges like one
that never stopped, even on what it learned before the topic replay would reach."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from detectors import DetectionEngine, SnapshotStore, fingerprint, message_digest
from detectors.backtest import watched_moves
from detectors.move import Move
from detectors.traffic import DrainSpec, config_toml, evm_hot_wallets, generate_traffic, write_jsonl
from drainwatch.app import PartitionSnapshots, detect_loop
from drainwatch.bus import EmbeddedBus, Message, TopicPartition
from drainwatch.cli import app
from drainwatch.config import Config, loads
from drainwatch.events import ALERTS, TRANSFERS, Alert, Direction, Transfer, decode
from drainwatch.stage import StageLoop
from tests.detectors.factories import config, transfer

DAY_MIN = 1440


def market_maker_history() -> list[Transfer]:
    """Eight days of a wallet of 1,000: customers take 1 twenty times a day, and a market maker
    is paid 50 (5%) to its usual address every two and a half days."""
    paid = [
        transfer(f"C{d}-{i}", 1, minutes=d * DAY_MIN + i * 60) for d in range(8) for i in range(20)
    ]
    paid += [transfer("MM", 50, minutes=int(k * 2.5 * DAY_MIN) + 500) for k in range(3)]
    return sorted(paid, key=lambda t: t.time)


NEXT_MM = transfer("MM", 50, minutes=int(7.5 * DAY_MIN) + 500)


def judged(engine: DetectionEngine, transfers: list[Transfer]) -> list[tuple[str, bool, str]]:
    return [(a.id, a.freeze, a.summary) for t in transfers for a in engine.process(t)]


def test_the_market_makers_payment_is_frozen_after_a_short_replay_but_not_after_a_snapshot() -> (
    None
):
    history = market_maker_history()
    # A detector that never stopped knows the market maker's address: no alert.
    never_stopped = DetectionEngine(config())
    judged(never_stopped, history)
    assert judged(never_stopped, [NEXT_MM]) == []
    # Rebuilt from the last day of transfers only, it has forgotten the address: a false freeze.
    replayed = DetectionEngine(config())
    replayed.replay(t for t in history if t.time >= NEXT_MM.time - timedelta(days=1))
    assert [freeze for _, freeze, _ in judged(replayed, [NEXT_MM])] == [True]
    # Taken back from a snapshot (pickled, as saved), it judges as if it had never stopped.
    saved = DetectionEngine(config())
    judged(saved, history)
    blob = pickle.dumps(saved.held_state({w.key for w in config().wallets}))
    restored = DetectionEngine(config())
    restored.restore(pickle.loads(blob))
    assert judged(restored, [NEXT_MM]) == []


def test_every_alert_after_a_restore_is_the_one_an_engine_that_never_stopped_raises(
    tmp_path: Path,
) -> None:
    # Eighteen days of generated traffic (whales, a market maker, top-ups, a panic day) on two
    # wallets, with a drain in 1.5% steps to fresh addresses and one to an address the thief
    # warmed as a customer nine days before. One engine runs through; another is snapshotted
    # on day 15 and taken back into a fresh engine, which judges the last three days.
    # Large-fresh judging (from day 14) and the destinations of two weeks are in the snapshot
    # and in no replay of the last days.
    spaced = DrainSpec(16.3 * 86400, "fresh_fanout", 0.015, 6, 480.0)  # 1.5% every 8 min
    warmed = DrainSpec(17.2 * 86400, "burst", 0.03, 5, 120.0, warmed_days=9)
    wallets = [
        replace(w, drains=(drain,))
        for w, drain in zip(evm_hot_wallets(2), (spaced, warmed), strict=True)
    ]
    start = datetime(2030, 1, 7, tzinfo=UTC)
    traffic = generate_traffic(wallets, start, days=18, seed=5, panic_day=16)
    cfg = loads(config_toml(wallets))
    lines = watched_moves(cfg, write_jsonl(tmp_path / "t.jsonl", traffic.transfers))
    cut = (start + timedelta(days=15)).timestamp()
    before = [m for when, moves in lines if when < cut for m in moves]
    after = [m for when, moves in lines if when >= cut for m in moves]

    def run(engine: DetectionEngine, moves: list[Move]) -> list[tuple[str, bool, str]]:
        return [
            (a.id, a.freeze, a.summary)
            for m in moves
            for a in engine.process(m, at_event_time=True)
        ]

    never_stopped = DetectionEngine(cfg)
    run(never_stopped, before)
    expected = run(never_stopped, after)
    assert expected, "the last days must raise alerts for the comparison to mean anything"

    snapshotted = DetectionEngine(cfg)
    run(snapshotted, before)
    keys = {w.key for w in cfg.wallets}
    restored = DetectionEngine(cfg)
    restored.restore(pickle.loads(pickle.dumps(snapshotted.held_state(keys))))
    assert run(restored, after) == expected

    # A week's replay instead (what the topic keeps) does not give the same alerts.
    week = DetectionEngine(cfg)
    week.replay(m for when, moves in lines if cut - 7 * 86400 <= when < cut for m in moves)
    assert run(week, after) != expected


def test_a_restore_replaces_only_the_wallets_of_the_snapshot() -> None:
    cfg = config()  # HOT and COLD
    hot, cold = cfg.wallets
    source = DetectionEngine(cfg)
    judged(source, market_maker_history())
    target = DetectionEngine(cfg)
    judged(target, [transfer("TOPUP", 300, wallet="COLD", direction=Direction.IN, minutes=10)])
    cold_before = target.state(cold, "XEM").balance_units()
    target.restore(source.held_state({hot.key}))
    assert judged(target, [NEXT_MM]) == []
    assert (
        target.state(cold, "XEM").balance_units()
        == cold_before
        != (source.state(cold, "XEM").balance_units())
    )


def test_store_round_trip_and_what_it_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config()
    engine = DetectionEngine(cfg)
    judged(engine, market_maker_history())
    store = SnapshotStore(tmp_path / "snapshots")
    mark = fingerprint(cfg)
    state = engine.held_state({cfg.wallets[0].key})
    store.save("transfers", 3, 163, message_digest(b"m"), mark, state)
    loaded = store.load("transfers", 3, mark)
    assert loaded is not None
    assert (loaded.offset, loaded.last, loaded.state.keys) == (
        163,
        message_digest(b"m"),
        state.keys,
    )
    assert not list((tmp_path / "snapshots").glob("*.tmp")), "the temporary file is renamed"
    path = store.path("transfers", 3)
    assert stat_mode(path) == 0o600

    caplog.set_level(logging.WARNING)
    # Another partition's, another config's.
    assert store.load("transfers", 4, mark) is None
    other = fingerprint(config(*config().wallets[:1]))
    assert store.load("transfers", 3, other) is None
    assert "other detector code or another config" in caplog.text
    # Damaged: a byte of the state changed.
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.load("transfers", 3, mark) is None
    assert "damaged" in caplog.text
    # Writable by the group: refused, whatever it holds (a pickle runs code when loaded).
    store.save("transfers", 3, 163, None, mark, state)
    path.chmod(0o620)
    assert store.load("transfers", 3, mark) is None
    assert "another account could have written it" in caplog.text
    path.chmod(0o600)
    assert store.load("transfers", 3, mark) is not None


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


# -- the detector stage on the embedded bus: save after commits, take back on assignment --------


def stage_config(tmp_path: Path) -> Config:
    return loads(
        f"""
state_dir = "{tmp_path / "state"}"
[[wallets]]
chain = "nem"
address = "HOT"
label = "nem-hot"
opening_balance = "1000"
[detection]
rebuild_s = 86400
"""
    )


def run_until_idle(loop: StageLoop) -> None:
    while loop.run_once(timeout_s=0.05):
        pass


def publish(bus: EmbeddedBus, transfers: list[Transfer]) -> None:
    producer = bus.producer()
    for t in transfers:
        producer.send(TRANSFERS, t.key, t.to_json(), int(t.time.timestamp() * 1000))
    producer.flush()


def frozen_on(bus: EmbeddedBus, t: Transfer) -> list[Alert]:
    """The freezing alerts that name ``t``."""
    tp = TopicPartition(ALERTS, 0)
    alerts = [decode(ALERTS, m.value, Alert) for m in bus.read_range(tp, 0, bus.end_offset(tp))]
    return [a for a in alerts if a.freeze and t.tx_hash in a.tx_hashes]


@pytest.mark.parametrize("snapshot", [True, False])
def test_a_restarted_detector_stage_takes_its_partition_back_from_the_snapshot(
    tmp_path: Path, snapshot: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = stage_config(tmp_path)
    bus = EmbeddedBus(":memory:")
    publish(bus, market_maker_history())
    first = detect_loop(cfg, bus)
    run_until_idle(first)
    files = list((tmp_path / "state" / "snapshots").glob("*.snapshot"))
    assert len(files) == 1, "saved at the first commit"
    first.close()
    if not snapshot:
        files[0].unlink()

    caplog.set_level(logging.INFO)
    second = detect_loop(cfg, bus)  # the restarted detector, same group
    publish(bus, [NEXT_MM])
    run_until_idle(second)
    second.close()
    if snapshot:
        assert "restored" in caplog.text
        assert frozen_on(bus, NEXT_MM) == []
    else:
        # From a day's replay the market maker's address is new: this is what snapshots prevent.
        assert "restored" not in caplog.text
        assert len(frozen_on(bus, NEXT_MM)) == 1


def test_a_snapshot_of_another_topic_is_not_taken_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Same config and state_dir, a broker made anew with other transfers at the same offsets.
    cfg = stage_config(tmp_path)
    old = EmbeddedBus(":memory:")
    publish(old, market_maker_history())
    run_until_idle(loop := detect_loop(cfg, old))
    loop.close()
    new = EmbeddedBus(":memory:")
    others = [transfer(f"D{i}", 1, minutes=i) for i in range(len(market_maker_history()) + 5)]
    publish(new, others)
    caplog.set_level(logging.WARNING)
    run_until_idle(loop := detect_loop(cfg, new))
    loop.close()
    assert "its last message differs" in caplog.text
    assert "restored" not in caplog.text


def test_a_snapshot_carries_the_balance_inflows_made() -> None:
    # A wallet's inflows move its balance: a snapshot carries the balance they made.
    cfg = config()
    engine = DetectionEngine(cfg)
    judged(engine, [transfer("DEPOSIT", 500, direction=Direction.IN)])
    restored = DetectionEngine(cfg)
    restored.restore(pickle.loads(pickle.dumps(engine.held_state({cfg.wallets[0].key}))))
    hot = cfg.wallets[0]
    assert restored.state(hot, "XEM").balance_units() == engine.state(hot, "XEM").balance_units()


def test_partitions_are_saved_one_per_commit_and_each_about_once_an_interval(
    tmp_path: Path,
) -> None:
    cfg = stage_config(tmp_path)
    bus = EmbeddedBus(":memory:")
    now = [1000.0]
    store = SnapshotStore(tmp_path / "snapshots")
    snapshots = PartitionSnapshots(
        bus, DetectionEngine(cfg), store, TRANSFERS, interval_s=100, clock=lambda: now[0]
    )
    tps = [TopicPartition(TRANSFERS, p) for p in range(3)]
    mark = snapshots.fingerprint

    def offset(tp: TopicPartition) -> int | None:
        loaded = store.load(tp.topic, tp.partition, mark)
        return loaded.offset if loaded is not None else None

    def commit(tp: TopicPartition, at: int) -> None:
        snapshots.committed({tp: Message(tp.topic, tp.partition, at - 1, "k", b"{}", 0)})

    snapshots.assigned(dict.fromkeys(tps, 0))
    commit(tps[2], 5)  # the partition that moved is saved first...
    assert [offset(tp) for tp in tps] == [None, None, 5]
    commit(tps[2], 6)  # ...then, a commit each, those rebuilt and not saved yet
    commit(tps[2], 7)
    assert [offset(tp) for tp in tps] == [0, 0, 5]
    commit(tps[2], 8)  # all saved: the next save is due a third of the interval later
    now[0] += 30
    commit(tps[2], 9)
    assert offset(tps[2]) == 5
    now[0] += 4
    commit(tps[2], 10)  # due: of the partitions that changed, the one saved longest ago
    assert [offset(tp) for tp in tps] == [0, 0, 10]
    now[0] += 1000
    commit(tps[0], 3)  # quiet partitions are not saved again; the one that moved is
    assert [offset(tp) for tp in tps] == [3, 0, 10]


def test_a_snapshot_of_other_wallets_than_the_partition_holds_now_is_not_taken_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Partitions added to the topic move wallets between partitions: a snapshot of partition 0
    # taken before may hold wallets that are now on another partition.
    cfg = stage_config(tmp_path)
    bus = EmbeddedBus(":memory:")
    engine = DetectionEngine(cfg)
    snapshots = PartitionSnapshots(
        bus, engine, SnapshotStore(tmp_path / "snapshots"), TRANSFERS, interval_s=300
    )
    tp = TopicPartition(TRANSFERS, 0)
    snapshots.store.save(
        TRANSFERS, 0, 0, None, snapshots.fingerprint, engine.held_state({"nem:ELSEWHERE"})
    )
    caplog.set_level(logging.WARNING)
    assert snapshots.restore([tp]) == {}
    assert "other wallets than the partition holds now" in caplog.text
    snapshots.store.save(
        TRANSFERS, 0, 0, None, snapshots.fingerprint, engine.held_state(snapshots.keys(0))
    )
    assert snapshots.restore([tp]) == {tp: 0}


def test_the_snapshots_command_lists_each_partition_and_whether_it_is_usable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "drainwatch.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[[wallets]]\nchain = "nem"\naddress = "HOT"\nlabel = "nem-hot"\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["snapshots", "--config", str(path)]).output.startswith(
        "no snapshots in "
    )
    cfg = loads(path.read_text())
    store = SnapshotStore(tmp_path / "state" / "snapshots")
    state = DetectionEngine(cfg).held_state({"nem:HOT"})
    store.save("drainwatch.transfers.v1", 0, 1234, None, fingerprint(cfg), state)
    store.save("drainwatch.transfers.v1", 1, 99, None, "another config's", state)
    result = runner.invoke(app, ["snapshots", "--config", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("drainwatch.transfers.v1/0: offset 1,234, taken 0 min ago, ")
    assert lines[0].endswith(", usable")
    assert lines[1].endswith("was written by other detector code or another config")


def test_a_snapshot_that_cannot_be_saved_is_counted_and_the_stage_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = stage_config(tmp_path)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # a disk that refuses the snapshot, as a full one would
    now = [0.0]
    snapshots = PartitionSnapshots(
        EmbeddedBus(":memory:"),
        DetectionEngine(cfg),
        SnapshotStore(blocked),
        TRANSFERS,
        interval_s=300,
        clock=lambda: now[0],
    )
    tp = TopicPartition(TRANSFERS, 0)
    snapshots.assigned({tp: 0})
    failures = REGISTRY.get_sample_value("drainwatch_detector_snapshot_failures_total") or 0.0
    caplog.set_level(logging.ERROR)
    snapshots.committed({tp: Message(TRANSFERS, 0, 0, "k", b"{}", 0)})
    assert "could not save the snapshot" in caplog.text
    assert REGISTRY.get_sample_value("drainwatch_detector_snapshot_failures_total") == failures + 1
    # Not tried again at every commit (a full disk would cost every batch a pickle)...
    snapshots.committed({tp: Message(TRANSFERS, 0, 1, "k", b"{}", 0)})
    assert REGISTRY.get_sample_value("drainwatch_detector_snapshot_failures_total") == failures + 1
    # ...but when the partition is next due.
    now[0] += 301
    snapshots.committed({tp: Message(TRANSFERS, 0, 2, "k", b"{}", 0)})
    assert REGISTRY.get_sample_value("drainwatch_detector_snapshot_failures_total") == failures + 2
