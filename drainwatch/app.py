"""Wiring: the only module that imports the stages and connects them to a bus.

``run_pipeline`` runs every stage in one process on the embedded bus (the default), or one stage
per process on Kafka (``drainwatch run ingest|detect|alert --bus kafka``).
"""

from __future__ import annotations

import logging
import pickle
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts import (
    ActionKind,
    Alerter,
    DeliveryWorker,
    Timeline,
    create_web_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from alerts.killswitch import HookRecord
from detectors import DetectionEngine, SnapshotStore, fingerprint, message_digest
from detectors.wire import read_transfer
from drainwatch.bus import Bus, BusError, EmbeddedBus, Message, Producer, TopicPartition
from drainwatch.config import Config, learning_notice
from drainwatch.events import (
    ALERTS,
    FREEZES,
    LEDGER,
    LEDGER_USES,
    TRANSFERS,
    DecodeError,
    FreezeOrder,
    Transfer,
)
from drainwatch.metrics import (
    LEARN_UNTIL,
    LEDGER_LATEST_APPROVAL,
    REBUILDS_TOTAL,
    SNAPSHOT_FAILURES_TOTAL,
    SNAPSHOT_SECONDS,
    MetricsServer,
    WalletMetrics,
    serve_metrics,
)
from drainwatch.stage import Output, StageLoop, default_topics, topic_name
from ingest import CursorStore, Watcher, bitcoin_watcher, evm_watcher

__all__ = [
    "STAGES",
    "PartitionSnapshots",
    "alert_loop",
    "build_bus",
    "build_watchers",
    "detect_loop",
    "explorer_urls",
    "hook_result_recorder",
    "publisher",
    "rebuild_state",
    "run_pipeline",
    "serve_killswitch",
]

log = logging.getLogger(__name__)

STAGES = ("ingest", "detect", "alert")


def build_bus(config: Config, kind: str | None = None) -> Bus:
    """The configured bus, with every topic created."""
    kind = kind or config.bus.kind
    bus: Bus
    timeout_s = config.bus.session_timeout_s
    timeout_ms = None if timeout_s is None else round(timeout_s * 1000)
    if kind == "kafka" and config.bus.client == "confluent":
        from drainwatch.bus.confluent import ConfluentBus

        bus = ConfluentBus(
            config.bus.bootstrap_servers,
            instance_id=config.bus.instance_id,
            consumer_config={} if timeout_ms is None else {"session.timeout.ms": timeout_ms},
        )
    elif kind == "kafka":
        from drainwatch.bus.kafka import KafkaBus

        overrides: dict[str, Any] = {} if timeout_ms is None else {"session_timeout_ms": timeout_ms}
        bus = KafkaBus(
            config.bus.bootstrap_servers, instance_id=config.bus.instance_id, **overrides
        )
    else:
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        bus = EmbeddedBus(str(state / "bus.sqlite3"), default_partitions=1)
    bus.ensure_topics(default_topics(config.bus.topic_prefix, config.bus.partitions))
    return bus


def publisher(
    producer: Producer,
    prefix: str = "",
    on_published: Callable[[Sequence[Transfer]], None] | None = None,
) -> Callable[[Sequence[Transfer]], None]:
    """A watcher's ``publish``: send each transfer keyed by wallet, then wait until durable.

    ``on_published`` (per-wallet metrics) sees each batch once it is durable.
    """
    topic = topic_name(prefix, TRANSFERS)

    def publish(transfers: Sequence[Transfer]) -> None:
        for t in transfers:
            producer.send(topic, t.key, t.to_json(), int(t.time.timestamp() * 1000))
        producer.flush()
        if on_published is not None:
            on_published(transfers)

    return publish


def build_watchers(config: Config, producer: Producer) -> list[tuple[Watcher, float]]:
    """One watcher per configured chain that has wallets, with its poll interval."""
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    cursors = CursorStore(Path(config.state_dir) / "cursors.sqlite3")
    publish = publisher(producer, config.bus.topic_prefix, WalletMetrics(config.wallets).observe)
    watchers = []
    for name, chain in config.chains.items():
        wallets = config.wallets_on(name)
        if not wallets:
            continue
        if chain.kind == "bitcoin":
            utxo_path = Path(config.state_dir) / f"utxo-{name}.sqlite3"
            watcher = bitcoin_watcher(name, chain, wallets, publish, cursors, utxo_path=utxo_path)
        else:
            watcher = evm_watcher(name, chain, wallets, publish, cursors)
        watchers.append((watcher, chain.poll_interval_s))
    return watchers


REBUILD_S = 30 * 86400
"""How much transfer history a detector replays for a partition it is newly assigned and has no
snapshot of (``[detection] rebuild_s``): the large-fresh rule's 28 days of history and a margin
(the transfers topic keeps 35 days)."""


def rebuild_state(
    bus: Bus,
    engine: DetectionEngine,
    position: Callable[[TopicPartition], int],
    tps: Sequence[TopicPartition],
    *,
    rebuild_s: int = REBUILD_S,
    starts: Mapping[TopicPartition, int] | None = None,
) -> int:
    """Replay each partition's transfers into ``engine`` without alerting: from its offset in
    ``starts`` (where its snapshot ends), else its last ``rebuild_s`` of transfers.

    The replay stops where the consumer will resume, so nothing is counted twice; transfers the
    engine already holds are ignored by id. Returns how many transfers were replayed.
    """
    replayed = 0
    for tp in tps:
        start = (starts or {}).get(tp)
        REBUILDS_TOTAL.labels(source="replay" if start is None else "snapshot").inc()
        end = position(tp)
        if end <= 0:
            continue
        if start is None:
            last = bus.read_range(tp, end - 1, end)
            if not last:
                continue
            start = bus.offset_for_time(tp, last[-1].timestamp_ms - rebuild_s * 1000)
        transfers = []
        for msg in bus.read_range(tp, start, end):
            try:
                transfers.append(read_transfer(msg.value))
            except DecodeError:
                continue  # it went to the dead-letter topic when first read
        replayed += engine.replay(transfers)
        log.info(
            "rebuilt %s/%d from %d transfers (offsets %d to %d)",
            tp.topic,
            tp.partition,
            len(transfers),
            start,
            end,
        )
    return replayed


_SLOW_REBUILD_S = 120.0
"""A rebuild this long is said: Kafka drops a group member that has not polled for 5 minutes."""


class PartitionSnapshots:
    """A detector's snapshots of the transfers partitions it holds (see
    :mod:`detectors.snapshots`): taken back when it is assigned one, saved after commits.

    Args:
        bus: The bus (which wallets a partition holds, which offsets it still keeps).
        engine: The detector's engine.
        store: Where the snapshots are.
        topic: The transfers topic (its full name).
        interval_s: Least time between two saves of a partition.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        bus: Bus,
        engine: DetectionEngine,
        store: SnapshotStore,
        topic: str,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.store = store
        self.topic = topic
        self.interval_s = interval_s
        self.clock = clock
        self.fingerprint = fingerprint(engine.config)
        self.reached: dict[TopicPartition, tuple[int, str | None]] = {}
        """Per partition held, the offset the engine's state has counted up to and the digest
        of the message before it: what the next save writes."""
        self._saved: dict[TopicPartition, float] = {}
        """When each partition was last saved since the assignment (clock seconds)."""
        self._moved: set[TopicPartition] = set()
        """Partitions whose state transfers changed since they were last saved."""
        self._rebuilt: set[TopicPartition] = set()
        """Partitions held since the assignment and not saved since (their state was rebuilt)."""
        self._due = 0.0

    def keys(self, partition: int) -> frozenset[str]:
        """The bus keys of the configured wallets whose transfers this partition holds."""
        return frozenset(
            w.key
            for w in self.engine.config.wallets
            if self.bus.partition_of(self.topic, w.key) == partition
        )

    def restore(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Take back the snapshot of each of ``tps`` that can be trusted and is still followed
        by the topic without a gap; return the offsets to replay each restored one from."""
        starts: dict[TopicPartition, int] = {}
        for tp in tps:
            snapshot = self.store.load(tp.topic, tp.partition, self.fingerprint)
            if snapshot is None:
                continue
            # Other wallets: the topic's partition count changed since. Checked before the
            # topic is read for the gap.
            why = (
                "is of other wallets than the partition holds now"
                if snapshot.state.keys != self.keys(tp.partition)
                else self._gap(tp, snapshot.offset, snapshot.last)
            )
            if why:
                log.warning(
                    "snapshot of %s/%d at offset %d %s: replaying the topic instead",
                    tp.topic,
                    tp.partition,
                    snapshot.offset,
                    why,
                )
                continue
            try:
                self.engine.restore(snapshot.state)
            except (TypeError, ValueError) as exc:
                log.warning(
                    "snapshot of %s/%d cannot be taken back (%s): replaying the topic instead",
                    tp.topic,
                    tp.partition,
                    exc,
                )
                continue
            starts[tp] = snapshot.offset
            log.info(
                "restored %s/%d from its snapshot of %s at offset %d (%d wallets)",
                tp.topic,
                tp.partition,
                snapshot.taken_at.isoformat(timespec="seconds"),
                snapshot.offset,
                len(snapshot.state.keys),
            )
        return starts

    def _gap(self, tp: TopicPartition, offset: int, last: str | None) -> str | None:
        """Why the topic does not go on from a snapshot at ``offset`` (None: it does)."""
        if offset == 0:
            return None
        before = self.bus.read_range(tp, offset - 1, offset)
        if not before:
            first = self.bus.offset_for_time(tp, 0)
            return f"is not followed by the topic, which holds offsets {first} to " + str(
                self.bus.end_offset(tp)
            )
        if message_digest(before[0].value) != last:
            return "was not taken of this topic (its last message differs)"
        return None

    def assigned(self, held: Mapping[TopicPartition, int]) -> None:
        """After an assignment and its rebuild: the partitions held now, each at the offset the
        engine has counted up to. Each is saved after one of the next commits, so that a
        rebuild by replay is not repeated by the next holder."""
        self.reached = {}
        for tp, offset in held.items():
            before = self.bus.read_range(tp, offset - 1, offset) if offset > 0 else []
            self.reached[tp] = (offset, message_digest(before[0].value) if before else None)
        self._saved = {}
        self._moved = set()
        self._rebuilt = set(self.reached)
        self._due = 0.0

    def committed(self, last: Mapping[TopicPartition, Message]) -> None:
        """After a commit: remember where each partition is, and save one if it is time.

        A commit saves at most one partition, so that the stage waits for one partition's state
        at a time: of those whose state changed since they were saved, one never saved since
        the assignment at once (those that moved first), else the one saved longest ago once
        ``interval_s`` divided by the partitions held has passed since the last save. So each
        busy partition is saved about every ``interval_s``, and a quiet one is not saved again.
        """
        for tp, message in last.items():
            if tp in self.reached:
                self.reached[tp] = (message.offset + 1, message_digest(message.value))
                self._moved.add(tp)
        pending = self._moved | self._rebuilt
        if not pending:
            return
        now = self.clock()
        unsaved = [tp for tp in pending if tp not in self._saved]
        if not unsaved and now < self._due:
            return
        tp = min(
            unsaved or pending,
            key=lambda held: (held not in self._moved, self._saved.get(held, float("-inf"))),
        )
        offset, digest = self.reached[tp]
        self._due = now + self.interval_s / len(self.reached)
        self._saved[tp] = now  # tried: a failed save is tried again when next due, not at once
        try:
            with SNAPSHOT_SECONDS.time():
                size = self.store.save(
                    tp.topic,
                    tp.partition,
                    offset,
                    digest,
                    self.fingerprint,
                    self.engine.held_state(self.keys(tp.partition)),
                )
        except (OSError, TypeError, pickle.PicklingError) as exc:
            # Detection goes on: a snapshot only shortens the next holder's replay.
            SNAPSHOT_FAILURES_TOTAL.inc()
            log.error("could not save the snapshot of %s/%d: %s", tp.topic, tp.partition, exc)
            return
        self._moved.discard(tp)
        self._rebuilt.discard(tp)
        log.debug(
            "saved the snapshot of %s/%d at offset %d (%d bytes)",
            tp.topic,
            tp.partition,
            offset,
            size,
        )


_LEDGER_LOOKBACK_S = 86400
"""How far back a starting detector reads the ledger at most (see ``detect_loop``)."""


def oldest_unjudged_s(bus: Bus, group: str, topic: str) -> float | None:
    """The time (epoch seconds) of the oldest message of ``topic`` that ``group`` has not
    committed yet, if the group has committed somewhere and left messages after it."""
    oldest: float | None = None
    try:
        for tp in bus.partitions(topic):
            committed = bus.committed(group, tp)
            if committed is None or committed >= bus.end_offset(tp):
                continue
            first = bus.read_range(tp, committed, committed + 1)
            if first:
                at = first[0].timestamp_ms / 1000
                oldest = at if oldest is None else min(oldest, at)
    except BusError as exc:  # a group the cluster does not know yet: nothing to catch up on
        log.debug("no committed offsets of %s: %s", group, exc)
        return None
    return oldest


def detect_loop(config: Config, bus: Bus, engine: DetectionEngine | None = None) -> StageLoop:
    """The detector stage: transfers (shared by the group) in, alerts out; the ledger and the
    alerts topic are read whole by each detector.

    On every (re)assignment the partitions it did not hold before are replayed into the engine
    first, so a detector that took over wallets after a crash or a rebalance judges their next
    transfers against their real recent history, and does not repeat their alerts.

    The engine owns the wallets whose transfers partitions this detector holds. It correlates
    the other replicas' alerts with its own findings, so a drain across wallets held by
    different replicas is one incident, and freezes only its own wallets on it.
    """
    engine = engine or DetectionEngine(config)
    if config.detection.learn_until is not None:
        LEARN_UNTIL.set(config.detection.learn_until.timestamp())
    # Which approval each payment used up, told to and learned from the other replicas.
    engine.share_approval_uses()
    transfers = topic_name(config.bus.topic_prefix, TRANSFERS)
    held: set[TopicPartition] = set()
    loops: list[StageLoop] = []

    def owns(key: str) -> bool:
        return TopicPartition(transfers, bus.partition_of(transfers, key)) in held

    engine.owns = owns
    owed: list[Output] = []
    for source in ("snapshot", "replay"):  # dashboards show 0, not "no data", before the first
        REBUILDS_TOTAL.labels(source=source)
    interval_s = config.detection.snapshot_interval_s
    snapshots = (
        PartitionSnapshots(
            bus,
            engine,
            SnapshotStore(Path(config.state_dir) / "snapshots"),
            transfers,
            interval_s=interval_s,
        )
        if interval_s
        else None
    )

    def on_assign(tps: list[TopicPartition]) -> None:
        new = [tp for tp in tps if tp.topic == transfers and tp not in held]
        held.clear()
        held.update(tps)
        if new:
            starts = snapshots.restore(new) if snapshots is not None else {}
            began = time.monotonic()
            replayed = rebuild_state(
                bus,
                engine,
                loops[0].position,
                new,
                rebuild_s=config.detection.rebuild_s,
                starts=starts,
            )
            took = time.monotonic() - began
            if took > _SLOW_REBUILD_S:
                # The group drops a member that does not poll within max.poll.interval (5 min).
                log.warning(
                    "rebuilding %d partitions took %.0f s (%d transfers replayed): near the "
                    "5 minutes a consumer may go without polling; lower [detection] rebuild_s, "
                    "add detector replicas, or let them see each other's snapshots",
                    len(new),
                    took,
                    replayed,
                )
            # Wallets nobody held for a while (their replica died), or whose rebuild decided
            # nothing, in an incident that acted meanwhile: freeze them as it would have.
            owed.extend(Output(ALERTS, alert) for alert in engine.take_over())
        if snapshots is not None:
            position = loops[0].position
            snapshots.assigned({tp: position(tp) for tp in tps if tp.topic == transfers})

    def take_owed() -> list[Output]:
        outputs = owed[:]
        owed.clear()
        return outputs

    # Every detector learns every approval: an approval is keyed by its destination, and the
    # wallet that pays it may be any detector's. They are read again from the last two match
    # windows on start, so a restarted detector has the approvals still open; and every alert,
    # so that it has the incidents still open.
    window_s = engine.correlator.window_s if engine.correlator is not None else 0
    now_s = datetime.now(UTC).timestamp()
    since_s = now_s - 2 * max(config.detection.ledger_match_window_s, window_s)
    # The approvals (and their uses) from a match window before the oldest transfer the group
    # has not judged yet, if that is earlier: a detector back from an outage works through its
    # backlog, whose payments were approved before it stopped. At most a day back: the ledger
    # detector keeps no approval a day older than the latest one.
    group = f"{config.bus.group_prefix}-detect"
    oldest = oldest_unjudged_s(bus, group, transfers)
    ledger_since_s = since_s
    if oldest is not None:
        window = config.detection.ledger_match_window_s
        ledger_since_s = max(min(since_s, oldest - window), now_s - _LEDGER_LOOKBACK_S + window)

    def handle(topic: str, event: object) -> list[Output]:
        outputs = engine.handle(topic, event)
        if topic == LEDGER and (at := engine.latest_approval_at) is not None:
            LEDGER_LATEST_APPROVAL.set(at)
        return outputs

    loop = StageLoop(
        bus,
        [TRANSFERS],
        group,
        handle,
        prefix=config.bus.topic_prefix,
        stage="detect",
        on_assign=on_assign,
        decoders={TRANSFERS: read_transfer},
        broadcast=[LEDGER, LEDGER_USES, ALERTS],
        ready=take_owed,
        broadcast_since_ms={
            LEDGER: int(ledger_since_s * 1000),
            LEDGER_USES: int(ledger_since_s * 1000),
            ALERTS: int(since_s * 1000),
        },
        on_commit=snapshots.committed if snapshots is not None else None,
    )
    loops.append(loop)
    return loop


def alert_loop(config: Config, bus: Bus, alerter: Alerter | None = None) -> StageLoop:
    """The alerts stage: transfers (for the timeline) and alerts in, freeze orders out."""
    alerter = alerter or Alerter.from_config(config.alerts)
    return StageLoop(
        bus,
        [TRANSFERS, ALERTS],
        f"{config.bus.group_prefix}-alert",
        alerter.handle,
        prefix=config.bus.topic_prefix,
        stage="alert",
    )


def hook_result_recorder(timeline: Timeline) -> Callable[[HookRecord], None]:
    """The kill switch's ``on_hook_result``: every hook attempt joins its incident's timeline."""

    def record(record: HookRecord) -> None:
        kind = (
            ActionKind.HOOK_DELIVERED
            if record.delivered_at is not None
            else ActionKind.HOOK_ESCALATED
            if record.escalated
            else ActionKind.HOOK_FAILED
        )
        detail = f"{record.target}: {record.status} after {record.attempts} attempt(s)"
        if record.last_error:
            detail += f"; {record.last_error}"
        timeline.record_hook_result(
            kind,
            chain=str(record.payload.get("chain", "")),
            wallet=str(record.payload.get("wallet", "")),
            alert_id=record.payload.get("alert_id"),
            time=datetime.now(UTC),
            detail=detail,
        )

    return record


def serve_killswitch(config: Config, path: Path, bus_kind: str | None = None) -> None:
    """Run the kill-switch service: orders go on the freezes topic, hook results to the timeline."""
    from alerts.killswitch import serve

    bus = build_bus(config, bus_kind)
    producer = bus.producer()
    freezes = topic_name(config.bus.topic_prefix, FREEZES)
    timeline = Timeline(config.alerts.timeline_path)

    def publish(order: FreezeOrder) -> None:
        producer.send(freezes, order.key, order.to_json(), int(order.time.timestamp() * 1000))
        producer.flush()

    try:
        serve(path, publish=publish, on_hook_result=hook_result_recorder(timeline))
    finally:
        producer.close()
        timeline.close()
        bus.close()


def explorer_urls(config: Config) -> dict[str, str]:
    """Block-explorer link templates (``{tx_hash}``) per chain, from the config."""
    return {n: c.explorer_tx_url for n, c in config.chains.items() if c.explorer_tx_url}


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())


def balance_blind(config: Config) -> list[str]:
    """Labels of the hot wallets whose balance live mode cannot read: on a Bitcoin chain with no
    ``start_block`` (the watcher's UTXO set starts empty at the newest block) and with no
    ``opening_balance``. Their balance is estimated from the stream, as in a backtest without
    one: the first outflow reads as all of it and freezes the wallet.

    >>> from drainwatch.config import loads
    >>> cfg = loads('''
    ... [[wallets]]
    ... chain = "btc"
    ... address = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    ... label = "btc-hot"
    ... [chains.btc]
    ... kind = "bitcoin"
    ... rpc = ["http://127.0.0.1:8334"]
    ... ''')
    >>> balance_blind(cfg)
    ['btc-hot']
    """
    return [
        w.label or w.address
        for w in config.wallets
        if w.role == "hot"
        and w.opening_balance is None
        and (chain := config.chains.get(w.chain)) is not None
        and chain.kind == "bitcoin"
        and chain.start_block is None
    ]


def _warn_before_detecting(config: Config) -> None:
    """Say what a detector starting with this config cannot know or will not judge."""
    for label in balance_blind(config):
        log.warning(
            "%s: no opening_balance and its Bitcoin chain has no start_block, so its balance "
            "is unknown: its first outflow will read as all of it and freeze it; set either",
            label,
        )
    notice = learning_notice(config.detection, datetime.now(UTC))
    if notice is not None:
        log.warning("%s", notice)


def run_pipeline(
    config: Config,
    stage: str = "all",
    bus_kind: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run ``stage`` (or all of them) until ``stop`` is set or SIGINT/SIGTERM arrives."""
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    bus = build_bus(config, bus_kind)
    wanted = STAGES if stage == "all" else (stage,)
    threads: list[threading.Thread] = []
    loops: dict[str, StageLoop] = {}
    """The stage loops by thread name, whose rounds ``/healthz`` watches (see ``stalled``)."""
    if "ingest" in wanted:
        producer = bus.producer()
        for watcher, interval in build_watchers(config, producer):
            threads.append(
                threading.Thread(
                    target=watcher.run, args=(stop, interval), name=f"ingest-{watcher.chain}"
                )
            )
    if "detect" in wanted:
        _warn_before_detecting(config)
        detecting = detect_loop(config, bus)
        loops["detect"] = detecting
        threads.append(threading.Thread(target=detecting.run, args=(stop,), name="detect"))
    worker: DeliveryWorker | None = None
    web: tuple[Any, threading.Thread] | None = None
    if "alert" in wanted:
        alerter = Alerter.from_config(config.alerts)
        if alerter.outbox is not None:
            worker = DeliveryWorker.from_config(
                config.alerts, alerter.outbox, alerter.timeline, tx_urls=explorer_urls(config)
            )
            worker.start()
        alerting = alert_loop(config, bus, alerter)
        loops["alert"] = alerting
        threads.append(threading.Thread(target=alerting.run, args=(stop,), name="alert"))
        if config.alerts.web_port is not None:
            web = serve_in_thread(
                create_web_app(
                    Timeline(config.alerts.timeline_path),
                    explorer_urls(config),
                    wallets=config.wallets,
                ),
                config.alerts.web_host,
                config.alerts.web_port,
            )
            log.warning(
                "incidents page on http://%s:%d/incidents",
                config.alerts.web_host,
                server_port(web[0]),
            )
    for thread in threads:
        thread.start()
    metrics_server: MetricsServer | None = None
    if config.metrics.port_for(stage):
        metrics_server = serve_metrics(
            config.metrics.host,
            config.metrics.port_for(stage),
            health=lambda: {
                t.name: t.is_alive() and not (t.name in loops and loops[t.name].stalled())
                for t in threads
            },
        )
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
            if not all(t.is_alive() for t in threads):
                stop.set()  # one stage died: stop the others so a supervisor restarts us whole
    finally:
        stop.set()
        if worker is not None:
            worker.close()
        if web is not None:
            stop_server(*web)
        if metrics_server is not None:
            metrics_server.close()
        bus.close()
