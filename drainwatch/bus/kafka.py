"""The distributed bus: the bus interface on Apache Kafka, through kafka-python 2.3.

Not 3.0: its new network layer hangs a group consumer's ``poll`` for ever now and then (see
docs/design-decisions.md).

kafka-python is untyped, so every value it hands back is converted to our own types
(:class:`~drainwatch.bus.base.TopicPartition`, :class:`~drainwatch.bus.base.Message`) at this
module's edge and ``Any`` stays inside it.

Delivery is at-least-once: producers are idempotent with ``acks=all`` and ``flush`` raises
:class:`~drainwatch.bus.base.BusError` if any message since the last flush failed; consumers never
auto-commit and commit exactly what ``poll`` returned.

Example (needs a broker, so not run as a doctest)::

    bus = KafkaBus(["127.0.0.1:9092"])
    bus.ensure_topics([TopicSpec("drainwatch.transfers.v1")])
    producer = bus.producer()
    producer.send("drainwatch.transfers.v1", "ethereum:0xabc", b"{...}")
    producer.flush()
    consumer = bus.consumer(["drainwatch.transfers.v1"], "detectors")
    for message in consumer.poll(1.0):
        ...
    consumer.commit()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
)
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)

from drainwatch.bus.base import (
    FOLLOW_BATCH,
    FOLLOW_WAIT_S,
    STATIC_SESSION_TIMEOUT_MS,
    AssignCallback,
    BusError,
    CatchingUpFollower,
    Message,
    MurmurPartitions,
    TopicPartition,
    TopicSpec,
)

__all__ = [
    "KafkaBus",
    "KafkaConsumerAdapter",
    "KafkaProducerAdapter",
    "new_topic",
    "split_overrides",
]

log = logging.getLogger(__name__)

_REBALANCE_ERRORS = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)

TOPICS_READY_S = 30.0
"""How long ``ensure_topics`` waits for every partition of the topics to have a leader."""

_CLIENT_DEFAULTS: dict[str, Any] = {
    # kafka-python backs off up to 30 s between reconnects; Java clients stop at 1 s, and a
    # restarted broker should be used as soon as it is back.
    "reconnect_backoff_max_ms": 1000,
    # kafka-python 2.x refuses a response frame over 1 MB by default and drops the connection,
    # while a consumer's fetch may ask for up to fetch_max_bytes (50 MiB): a backlog on several
    # partitions then costs a reconnect per fetch.
    "receive_message_max_bytes": 64 * 1024 * 1024,
}

_PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    # Idempotence keeps retries in order and free of duplicates; delivery_timeout_ms bounds them.
    "retries": 2**31 - 1,
    "request_timeout_ms": 15000,
    "delivery_timeout_ms": 60000,
}

_CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 3000,
    "max_poll_interval_ms": 300000,
    "request_timeout_ms": 30000,
}


def _ktp(tp: TopicPartition) -> Any:
    return KafkaTopicPartition(tp.topic, tp.partition)


def _ours(ktp: Any) -> TopicPartition:
    return TopicPartition(str(ktp.topic), int(ktp.partition))


def _message(record: Any) -> Message:
    key = record.key
    return Message(
        topic=str(record.topic),
        partition=int(record.partition),
        offset=int(record.offset),
        key="" if key is None else bytes(key).decode("utf-8", errors="replace"),
        value=b"" if record.value is None else bytes(record.value),
        timestamp_ms=int(record.timestamp),
    )


def new_topic(spec: TopicSpec, replication_factor: int = 1) -> Any:
    """The ``NewTopic`` kafka-python's ``create_topics`` takes for one spec.

    >>> t = new_topic(TopicSpec("f", 3, compacted=True, retention_ms=None))
    >>> t.name, t.num_partitions, t.replication_factor, t.topic_configs
    ('f', 3, 1, {'cleanup.policy': 'compact'})
    >>> new_topic(TopicSpec("t", 6, retention_ms=1000), 3).topic_configs
    {'cleanup.policy': 'delete', 'retention.ms': '1000'}
    """
    configs = {"cleanup.policy": "compact" if spec.compacted else "delete"}
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    return NewTopic(
        spec.name,
        num_partitions=spec.partitions,
        replication_factor=replication_factor,
        topic_configs=configs,
    )


def _topics_without_leaders(
    described: Iterable[Mapping[str, Any]], names: Iterable[str]
) -> set[str]:
    """Which of ``names`` are not described yet or have a partition without a leader.

    >>> ok = {"topic": "a", "error_code": 0, "partitions": [{"partition": 0, "leader": 1}]}
    >>> no_leader = {"topic": "b", "error_code": 0, "partitions": [{"partition": 0, "leader": -1}]}
    >>> sorted(_topics_without_leaders([ok, no_leader], ["a", "b", "c"]))
    ['b', 'c']
    """
    ready = {
        str(d["topic"])
        for d in described
        if not d.get("error_code")
        and d.get("partitions")
        and all(int(p.get("leader", -1)) >= 0 for p in d["partitions"])
    }
    return set(names) - ready


def split_overrides(
    overrides: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Route client settings to the clients that know them: (admin, producer, consumer).

    kafka-python rejects settings a client does not know, so a shared setting such as
    ``request_timeout_ms`` goes to all three and ``linger_ms`` only to producers.

    >>> admin, producer, consumer = split_overrides({"linger_ms": 0, "security_protocol": "SSL"})
    >>> sorted(admin), sorted(producer), sorted(consumer)
    (['security_protocol'], ['linger_ms', 'security_protocol'], ['security_protocol'])
    >>> split_overrides({"no_such_setting": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown kafka-python settings: ['no_such_setting']
    """
    known: list[tuple[Mapping[str, Any], dict[str, Any]]] = [
        (KafkaAdminClient.DEFAULT_CONFIG, {}),
        (KafkaProducer.DEFAULT_CONFIG, {}),
        (KafkaConsumer.DEFAULT_CONFIG, {}),
    ]
    unknown = []
    for name, value in overrides.items():
        matched = False
        for defaults, out in known:
            if name in defaults:
                out[name] = value
                matched = True
        if not matched:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown kafka-python settings: {sorted(unknown)}")
    return known[0][1], known[1][1], known[2][1]


class KafkaBus(MurmurPartitions):
    """The bus on a Kafka cluster; producers and consumers are kafka-python clients.

    Args:
        bootstrap_servers: ``host:port`` of one or more brokers.
        client_id: Prefix of every client's id (shows in broker logs and metrics).
        replication_factor: Replicas of the topics ``ensure_topics`` creates.
        read_timeout_s: How long ``read_range`` may go without progress before it gives up.
        **overrides: kafka-python settings (``security_protocol``, ``request_timeout_ms``,
            ``session_timeout_ms``...), each passed to the clients that accept it.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        client_id: str = "drainwatch",
        *,
        replication_factor: int = 1,
        read_timeout_s: float = 30.0,
        instance_id: str | None = None,
        **overrides: Any,
    ) -> None:
        servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else bootstrap_servers
        self.bootstrap_servers = list(servers)
        self.instance_id = instance_id
        """The group consumers' static membership id (``group_instance_id``), if any."""
        self.client_id = client_id
        self.replication_factor = replication_factor
        self.read_timeout_s = read_timeout_s
        self.overrides = dict(overrides)
        self._partition_counts = {}
        self._admin_config, self._producer_config, self._consumer_config = split_overrides(
            overrides
        )
        self._lock = threading.RLock()
        self._admin: Any = None
        self._reader: Any = None

    # -- clients -----------------------------------------------------------------------------

    def _common(self, role: str) -> dict[str, Any]:
        return {
            **_CLIENT_DEFAULTS,
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"{self.client_id}-{role}",
        }

    def _admin_client(self) -> Any:
        with self._lock:
            if self._admin is None:
                try:
                    self._admin = KafkaAdminClient(
                        **{**self._common("admin"), **self._admin_config}
                    )
                except KafkaError as exc:
                    raise BusError(
                        f"cannot reach Kafka at {self.bootstrap_servers}: {exc}"
                    ) from exc
            return self._admin

    def _reader_client(self) -> Any:
        # One group-less consumer for offset look-ups and replays; callers hold self._lock.
        if self._reader is None:
            config = {
                **self._common("reader"),
                **self._consumer_config,
                "group_id": None,
                "enable_auto_commit": False,
                "auto_offset_reset": "earliest",
            }
            # Offset look-ups wait at most this long (kafka-python's consumer default is 305 s).
            config.setdefault("request_timeout_ms", self._timeout_ms)
            try:
                self._reader = KafkaConsumer(**config)
            except KafkaError as exc:
                raise BusError(f"cannot reach Kafka at {self.bootstrap_servers}: {exc}") from exc
        return self._reader

    # -- Bus ---------------------------------------------------------------------------------

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the topics that are missing and wait until every partition has a leader.

        A topic that already exists (or that another process creates at the same moment) is left
        as it is, whatever its settings.
        """
        if not specs:
            return
        admin = self._admin_client()
        names = [s.name for s in specs]
        failures = []
        # One request per topic: kafka-python 2.x raises on a response's first topic error, so
        # "already exists" for one topic would hide what happened to the others.
        for spec in specs:
            try:
                admin.create_topics([new_topic(spec, self.replication_factor)])
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                failures.append(f"{spec.name}: {exc}")
        if failures:
            raise BusError(f"creating topics failed: {'; '.join(failures)}")
        deadline = time.monotonic() + TOPICS_READY_S
        while True:
            try:
                waiting = _topics_without_leaders(admin.describe_topics(names), names)
            except KafkaError as exc:
                raise BusError(f"topics not ready: {exc}") from exc
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise BusError(f"topics not ready after {TOPICS_READY_S}s: {sorted(waiting)}")
            time.sleep(0.1)

    def producer(self) -> KafkaProducerAdapter:
        """An idempotent producer (``acks=all``) whose ``flush`` reports every failure."""
        config = {**self._common("producer"), **_PRODUCER_DEFAULTS, **self._producer_config}

        def make_client() -> Any:
            try:
                return KafkaProducer(**config)
            except KafkaError as exc:
                raise BusError(
                    f"cannot create a producer for {self.bootstrap_servers}: {exc}"
                ) from exc

        return KafkaProducerAdapter(make_client)

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assign: AssignCallback | None = None,
        from_beginning: bool = True,
    ) -> KafkaConsumerAdapter:
        """A member of ``group`` subscribed to ``topics``.

        ``on_assign`` is called from ``poll`` (in the caller's thread, never on kafka-python's IO
        thread, so it may replay topics) with the full assignment after every rebalance, before
        any message of the new assignment is returned.
        """
        config = {
            **self._common("consumer"),
            **_CONSUMER_DEFAULTS,
            **self._consumer_config,
            "group_id": group,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
        }
        if self.instance_id is not None:
            config["group_instance_id"] = self.instance_id
            if "session_timeout_ms" not in self._consumer_config:
                config["session_timeout_ms"] = STATIC_SESSION_TIMEOUT_MS
        if "request_timeout_ms" not in self._consumer_config:
            # kafka-python requires a group member's request timeout to exceed its session's.
            config["request_timeout_ms"] = max(
                config["request_timeout_ms"], config["session_timeout_ms"] + 5000
            )
        try:
            client = KafkaConsumer(**config)
        except KafkaError as exc:
            raise BusError(f"cannot create a consumer for {self.bootstrap_servers}: {exc}") from exc
        return KafkaConsumerAdapter(client, list(topics), group, on_assign)

    def follower(self, topic: str, since_ms: int) -> KafkaFollower:
        """A group-less consumer assigned every partition of ``topic``, from ``since_ms`` on."""
        config = {
            **self._common("follower"),
            **self._consumer_config,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
        }
        starts = {tp: self.offset_for_time(tp, since_ms) for tp in self.partitions(topic)}
        try:
            client = KafkaConsumer(**config)
            client.assign([_ktp(tp) for tp in starts])
            for tp, offset in starts.items():
                client.seek(_ktp(tp), offset)
        except KafkaError as exc:
            raise BusError(f"cannot follow {topic} at {self.bootstrap_servers}: {exc}") from exc
        return KafkaFollower(client, topic, self.end_offsets)

    def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of a topic (none if it does not exist)."""
        with self._lock:
            try:
                ids = self._reader_client().partitions_for_topic(topic)
            except KafkaError as exc:
                raise BusError(f"metadata for {topic} failed: {exc}") from exc
        return [TopicPartition(topic, int(p)) for p in sorted(ids or ())]

    def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next message of this partition will get."""
        return self.end_offsets([tp])[tp]

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """:meth:`end_offset` of several partitions, in one request per broker."""
        with self._lock:
            try:
                ends = self._reader_client().end_offsets([_ktp(tp) for tp in tps])
            except KafkaError as exc:
                raise BusError(f"end offsets of {list(tps)} failed: {exc}") from exc
        return {_ours(ktp): int(end) for ktp, end in ends.items()}

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The group's committed offset for a partition, if any."""
        try:
            offsets = self._admin_client().list_consumer_group_offsets(group, partitions=[_ktp(tp)])
        except KafkaError as exc:
            raise BusError(f"committed offset of {group} on {tp} failed: {exc}") from exc
        found = offsets.get(_ktp(tp))
        if found is None or found.offset is None or int(found.offset) < 0:
            return None
        return int(found.offset)

    def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int:
        """The first offset stamped at or after ``timestamp_ms``, or the end offset."""
        with self._lock:
            try:
                found = self._reader_client().offsets_for_times({_ktp(tp): max(0, timestamp_ms)})
            except KafkaError as exc:
                raise BusError(f"offset for time on {tp} failed: {exc}") from exc
            hit = found.get(_ktp(tp))
            if hit is None:
                return self.end_offset(tp)
            return int(hit.offset)

    def read_range(self, tp: TopicPartition, start_offset: int, end_offset: int) -> list[Message]:
        """Messages of one partition in ``[start_offset, end_offset)``, read without a group.

        Stops at the partition's end even if ``end_offset`` lies beyond it; offsets removed by
        compaction or retention are skipped.
        """
        out: list[Message] = []
        with self._lock:
            reader = self._reader_client()
            ktp = _ktp(tp)
            try:
                first = int(reader.beginning_offsets([ktp])[ktp])
                last = int(reader.end_offsets([ktp])[ktp])
                start, stop = max(start_offset, first), min(end_offset, last)
                if start >= stop:
                    return out
                reader.assign([ktp])
                reader.seek(ktp, start)
                deadline = time.monotonic() + self.read_timeout_s
                while reader.position(ktp) < stop:
                    batch = reader.poll(timeout_ms=200)
                    records = batch.get(ktp, [])
                    if records:
                        deadline = time.monotonic() + self.read_timeout_s
                    out.extend(_message(r) for r in records if start <= r.offset < stop)
                    if time.monotonic() > deadline:
                        raise BusError(
                            f"reading {tp} [{start}, {stop}) made no progress for "
                            f"{self.read_timeout_s}s (at {reader.position(ktp)})"
                        )
            except KafkaError as exc:
                raise BusError(
                    f"reading {tp} [{start_offset}, {end_offset}) failed: {exc}"
                ) from exc
            finally:
                reader.assign([])
        return out

    @property
    def _timeout_ms(self) -> int:
        return int(self.read_timeout_s * 1000)

    def close(self) -> None:
        """Close the admin and reader clients (producers and consumers close themselves)."""
        with self._lock:
            if self._reader is not None:
                self._reader.close(autocommit=False)
                self._reader = None
            if self._admin is not None:
                self._admin.close()
                self._admin = None


class KafkaProducerAdapter:
    """A :class:`~drainwatch.bus.base.Producer` over a ``KafkaProducer``.

    Args:
        make_client: Creates the ``KafkaProducer``; called again after a message is rejected,
            because an idempotent kafka-python producer can be left unusable by a non-retriable
            error (a record too large, say; 3.0 did this every time).
    """

    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._make_client = make_client
        self._client = make_client()
        self._futures: list[tuple[str, str, Any]] = []

    def send(self, topic: str, key: str, value: bytes, timestamp_ms: int | None = None) -> None:
        """Queue one message; the key picks the partition (Kafka's murmur2 of its UTF-8 bytes)."""
        try:
            future = self._client.send(
                topic, value=value, key=key.encode("utf-8"), timestamp_ms=timestamp_ms
            )
        except KafkaError as exc:
            raise BusError(f"send to {topic} (key {key!r}) failed: {exc}") from exc
        self._futures.append((topic, key, future))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every message sent since the last flush is acknowledged.

        Raises:
            BusError: If any of them failed or is still unacknowledged at the timeout; the caller
                must not commit what produced them (they may still arrive: at-least-once).
        """
        pending, self._futures = self._futures, []
        try:
            self._client.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BusError(
                f"flush timed out after {timeout_s}s with {len(pending)} messages: {exc}"
            ) from exc
        failed = [(t, k, f) for t, k, f in pending if not f.succeeded()]
        if failed:
            topic, key, future = failed[0]
            reason = future.exception if future.is_done else "not acknowledged"
            if any(f.failed() for _, _, f in failed):
                self._replace_client()
            raise BusError(
                f"{len(failed)} of {len(pending)} messages not delivered "
                f"(first: {topic} key {key!r}: {reason})"
            )

    def _replace_client(self) -> None:
        broken, self._client = self._client, None
        try:
            broken.close(timeout=0)
        except Exception:  # closing a broken client must not hide the delivery error
            log.exception("closing a failed Kafka producer")
        try:
            self._client = self._make_client()
        except BusError:
            # Keep the broken client so close() still works; the next flush fails again.
            self._client = broken

    def close(self) -> None:
        """Flush, then close the client (even if the flush failed)."""
        try:
            self.flush()
        finally:
            self._client.close()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    # Runs inside KafkaConsumer.poll, in the middle of the group's join: only record changes;
    # on_assign runs after the poll returns.
    def __init__(self, adapter: KafkaConsumerAdapter) -> None:
        self._adapter = adapter

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self._adapter._forget([_ours(k) for k in revoked])

    def on_partitions_lost(self, lost: Iterable[Any]) -> None:
        self._adapter._forget([_ours(k) for k in lost])

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self._adapter._assignment_changed()


class KafkaConsumerAdapter:
    """A :class:`~drainwatch.bus.base.Consumer` over a subscribed ``KafkaConsumer``."""

    def __init__(
        self,
        client: Any,
        topics: list[str],
        group: str,
        on_assign: AssignCallback | None,
    ) -> None:
        self._client = client
        self.topics = topics
        self.group = group
        self._on_assign = on_assign
        self._lock = threading.Lock()
        self._reassigned = False
        # Offset after the last message poll() returned, and that message's leader epoch.
        self._uncommitted: dict[TopicPartition, tuple[int, int]] = {}
        # While on_assign runs, the first offsets of the batch poll() is about to return.
        self._held: dict[TopicPartition, int] = {}
        try:
            client.subscribe(topics=topics, listener=_Listener(self))
        except KafkaError as exc:
            raise BusError(f"subscribing {group} to {topics} failed: {exc}") from exc

    def _forget(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self._uncommitted.pop(tp, None)

    def _assignment_changed(self) -> None:
        with self._lock:
            self._reassigned = True

    def assignment(self) -> list[TopicPartition]:
        """The partitions this member holds now."""
        return [_ours(k) for k in sorted(self._client.assignment(), key=_tp_order)]

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        """Return the next messages, ordered by partition then offset."""
        try:
            batch = self._client.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BusError(f"poll of {self.group} on {self.topics} failed: {exc}") from exc
        messages = [
            _message(r)
            for ktp in sorted(batch, key=_tp_order)
            for r in sorted(batch[ktp], key=_offset)
        ]
        with self._lock:
            reassigned, self._reassigned = self._reassigned, False
        if reassigned and self._on_assign is not None:
            self._held = {}
            for m in messages:
                self._held.setdefault(TopicPartition(m.topic, m.partition), m.offset)
            try:
                self._on_assign(self.assignment())
            finally:
                self._held = {}
        # The next offset per partition: after the highest offset the batch held for it.
        with self._lock:
            for ktp, records in batch.items():
                if records:
                    newest = max(records, key=_offset)
                    epoch = newest.leader_epoch
                    self._uncommitted[_ours(ktp)] = (
                        int(newest.offset) + 1,
                        -1 if epoch is None else int(epoch),
                    )
        return messages

    def commit(self) -> None:
        """Commit, synchronously, the offset after the last message ``poll`` returned per partition.

        Raises:
            BusError: If the group rebalanced since the poll (the partitions' new owners will
                read those messages again) or the commit failed otherwise.
        """
        with self._lock:
            pending, self._uncommitted = self._uncommitted, {}
        if not pending:
            return
        offsets = {
            _ktp(tp): OffsetAndMetadata(off, "", epoch) for tp, (off, epoch) in pending.items()
        }
        try:
            self._client.commit(offsets=offsets)
        except _REBALANCE_ERRORS as exc:
            raise BusError(
                f"commit of {self.group} failed because the group rebalanced; the messages will "
                f"be delivered again: {exc}"
            ) from exc
        except KafkaError as exc:
            raise BusError(f"commit of {self.group} failed: {exc}") from exc

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next message ``poll`` returns from an assigned partition."""
        held = self._held.get(tp)
        if held is not None:
            return held
        try:
            pos = self._client.position(_ktp(tp))
        except KafkaError as exc:
            raise BusError(f"position of {self.group} on {tp} failed: {exc}") from exc
        if pos is None:
            raise BusError(f"position of {self.group} on {tp} is not known yet")
        return int(pos)

    def lag(self) -> dict[TopicPartition, int]:
        """Unread messages per assigned partition: the last high-water mark a fetch reported
        minus the consumer's position, without a request to the broker (call it from the thread
        that polls). Partitions not fetched yet are left out.
        """
        out: dict[TopicPartition, int] = {}
        try:
            for ktp in self._client.assignment():
                highwater = self._client.highwater(ktp)
                if highwater is None:
                    continue
                # A position is known once a fetch returned the high-water mark; timeout 0 keeps
                # this call from waiting on the coordinator if it is not.
                position = self._client.position(ktp, timeout_ms=0)
                if position is not None:
                    out[_ours(ktp)] = max(0, int(highwater) - int(position))
        except KafkaError as exc:  # a rebalance in progress: report nothing this time
            log.debug("lag of %s not available: %s", self.group, exc)
        return out

    def close(self) -> None:
        """Leave the group without committing."""
        self._client.close(autocommit=False)


def _offset(record: Any) -> int:
    return int(record.offset)


def _tp_order(ktp: Any) -> tuple[str, int]:
    return (str(ktp.topic), int(ktp.partition))


class KafkaFollower(CatchingUpFollower):
    """A :class:`~drainwatch.bus.base.Follower` on kafka-python: a group-less consumer assigned
    every partition, which fetches as it polls."""

    def __init__(
        self,
        client: Any,
        topic: str,
        ends: Callable[[Sequence[TopicPartition]], Mapping[TopicPartition, int]],
        wait_s: float = FOLLOW_WAIT_S,
    ) -> None:
        super().__init__(topic, wait_s)
        self._client = client
        self._ends_of = ends
        """The partitions' end offsets, looked up by another client: this one's connection may
        be holding a fetch open on the broker for up to ``fetch_max_wait_ms`` (500 ms), and a
        request sent behind it would wait that long."""
        self._parts = [_ours(k) for k in sorted(client.assignment(), key=_tp_order)]

    def _take(self, timeout_s: float) -> list[Message]:
        try:
            batch = self._client.poll(timeout_ms=int(timeout_s * 1000), max_records=FOLLOW_BATCH)
        except KafkaError as exc:
            raise BusError(f"following {self._topic} failed: {exc}") from exc
        return [_message(r) for records in batch.values() for r in records]

    def _ends(self) -> dict[TopicPartition, int]:
        return dict(self._ends_of(self._parts))

    def _position(self, tp: TopicPartition) -> int:
        try:
            return int(self._client.position(_ktp(tp)))
        except KafkaError as exc:
            raise BusError(f"following {self._topic} failed: {exc}") from exc

    def close(self) -> None:
        """Close the client."""
        self._client.close()
