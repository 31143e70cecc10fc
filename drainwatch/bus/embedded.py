"""The in-process bus: every stage in one process, the log and group offsets in SQLite.

With a file path the log survives a crash or restart exactly like a Kafka topic does (committed
offsets included); with ``":memory:"`` it is a fast throwaway bus for demos and tests.

>>> bus = EmbeddedBus(":memory:")
>>> bus.ensure_topics([TopicSpec("t", partitions=1)])
>>> p = bus.producer(); p.send("t", "k", b"hello"); p.flush()
>>> c = bus.consumer(["t"], "g")
>>> [m.value for m in c.poll(0.1)]
[b'hello']
>>> c.commit(); c.poll(0.01)
[]
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence

from drainwatch.bus.base import (
    AssignCallback,
    BusError,
    Message,
    OffsetFollower,
    TopicPartition,
    TopicSpec,
    partition_for,
)
from drainwatch.sqlite import open_sqlite

__all__ = ["EmbeddedBus"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, ts_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, part, off)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
"""


class EmbeddedBus:
    """A durable single-process bus with Kafka's semantics (partitions, groups, commits)."""

    def __init__(self, path: str = ":memory:", default_partitions: int = 1) -> None:
        self.path = path
        self.default_partitions = default_partitions
        self._lock = threading.RLock()
        self._new_data = threading.Condition(self._lock)
        self._db = open_sqlite(path)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._partitions: dict[str, int] = dict(
            self._db.execute("SELECT name, partitions FROM topics").fetchall()
        )
        self._next: dict[tuple[str, int], int] = {
            (t, p): o + 1
            for t, p, o in self._db.execute("SELECT topic, part, MAX(off) FROM log GROUP BY 1, 2")
        }

    def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics (the spec's partition count is used as is)."""
        with self._lock:
            for spec in specs:
                if spec.name not in self._partitions:
                    self._db.execute(
                        "INSERT INTO topics VALUES (?, ?)", (spec.name, spec.partitions)
                    )
                    self._partitions[spec.name] = spec.partitions

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            self.ensure_topics([TopicSpec(topic, partitions=self.default_partitions)])
        return self._partitions[topic]

    def append(self, items: Sequence[tuple[str, str, bytes, int]]) -> None:
        """Append ``(topic, key, value, ts_ms)`` messages atomically."""
        with self._lock:
            rows = []
            for topic, key, value, ts_ms in items:
                part = partition_for(key, self._partition_count(topic))
                off = self._next.get((topic, part), 0)
                self._next[(topic, part)] = off + 1
                rows.append((topic, part, off, key, value, ts_ms))
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise BusError(f"embedded bus append failed: {exc}") from exc
            self._new_data.notify_all()

    def producer(self) -> EmbeddedProducer:
        """A producer whose ``flush`` writes its batch in one transaction."""
        return EmbeddedProducer(self)

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assign: AssignCallback | None = None,
        from_beginning: bool = True,
    ) -> EmbeddedConsumer:
        """The only member of ``group``: it is assigned every partition of ``topics``."""
        return EmbeddedConsumer(self, list(topics), group, on_assign, from_beginning)

    def follower(self, topic: str, since_ms: int) -> OffsetFollower:
        """Every partition of ``topic`` from ``since_ms`` on."""
        return OffsetFollower(self, topic, since_ms)

    def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of a topic."""
        return [TopicPartition(topic, p) for p in range(self._partition_count(topic))]

    def partition_of(self, topic: str, key: str) -> int:
        """The partition of ``topic`` a message keyed ``key`` goes to."""
        return partition_for(key, self._partition_count(topic))

    def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next message of this partition will get."""
        with self._lock:
            return self._next.get((tp.topic, tp.partition), 0)

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The group's committed offset for a partition, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT off FROM offsets WHERE grp=? AND topic=? AND part=?",
                (group, tp.topic, tp.partition),
            ).fetchone()
        return None if row is None else int(row[0])

    def commit_offsets(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Store a group's positions."""
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?)",
                [(group, tp.topic, tp.partition, off) for tp, off in offsets.items()],
            )

    def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int:
        """The first offset stamped at or after ``timestamp_ms``, or the end offset."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(off) FROM log WHERE topic=? AND part=? AND ts_ms>=?",
                (tp.topic, tp.partition, timestamp_ms),
            ).fetchone()
        return self.end_offset(tp) if row[0] is None else int(row[0])

    def read_range(self, tp: TopicPartition, start_offset: int, end_offset: int) -> list[Message]:
        """Messages of one partition in ``[start_offset, end_offset)``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT off, key, value, ts_ms FROM log WHERE topic=? AND part=? AND off>=? "
                "AND off<? ORDER BY off",
                (tp.topic, tp.partition, start_offset, end_offset),
            ).fetchall()
        return [Message(tp.topic, tp.partition, o, k, bytes(v), ts) for o, k, v, ts in rows]

    def wait(self, timeout_s: float) -> None:
        """Block until something is appended or the timeout passes."""
        with self._new_data:
            self._new_data.wait(timeout_s)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class EmbeddedProducer:
    """Buffers sends; ``flush`` appends them in one transaction."""

    def __init__(self, bus: EmbeddedBus) -> None:
        self._bus = bus
        self._pending: list[tuple[str, str, bytes, int]] = []

    def send(self, topic: str, key: str, value: bytes, timestamp_ms: int | None = None) -> None:
        """Queue a message."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._pending.append((topic, key, value, ts))
        if len(self._pending) >= 1000:
            self.flush()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Append everything queued."""
        if self._pending:
            batch, self._pending = self._pending, []
            self._bus.append(batch)

    def close(self) -> None:
        """Flush."""
        self.flush()


class EmbeddedConsumer:
    """Reads every partition of its topics from the group's committed offsets."""

    def __init__(
        self,
        bus: EmbeddedBus,
        topics: list[str],
        group: str,
        on_assign: AssignCallback | None,
        from_beginning: bool,
    ) -> None:
        self._bus = bus
        self._group = group
        self._assigned = [tp for t in topics for tp in bus.partitions(t)]
        self._positions: dict[TopicPartition, int] = {}
        for tp in self._assigned:
            committed = bus.committed(group, tp)
            start = 0 if from_beginning else bus.end_offset(tp)
            self._positions[tp] = committed if committed is not None else start
        self._uncommitted: dict[TopicPartition, int] = {}
        # Like KafkaBus: the callback runs from the first poll(), in the caller's thread, once the
        # consumer exists, so it can ask position() while it rebuilds state.
        self._on_assign = on_assign

    def position(self, tp: TopicPartition) -> int:
        """The next offset to read from ``tp``."""
        return self._positions[tp]

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Message]:
        """Read what is there; wait up to ``timeout_s`` when nothing is."""
        if self._on_assign is not None:
            on_assign, self._on_assign = self._on_assign, None
            on_assign(list(self._assigned))
        deadline = time.monotonic() + timeout_s
        while True:
            out: list[Message] = []
            for tp in self._assigned:
                if len(out) >= max_records:
                    break
                pos = self._positions[tp]
                end = min(self._bus.end_offset(tp), pos + max_records - len(out))
                if end > pos:
                    msgs = self._bus.read_range(tp, pos, end)
                    out.extend(msgs)
                    self._positions[tp] = end
                    self._uncommitted[tp] = end
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            self._bus.wait(min(remaining, 0.05))

    def lag(self) -> dict[TopicPartition, int]:
        """Unread messages per assigned partition.

        >>> bus = EmbeddedBus(":memory:")
        >>> p = bus.producer(); p.send("t", "k", b"1"); p.send("t", "k", b"2"); p.flush()
        >>> bus.consumer(["t"], "g").lag()
        {TopicPartition(topic='t', partition=0): 2}
        """
        return {tp: self._bus.end_offset(tp) - self._positions[tp] for tp in self._assigned}

    def commit(self) -> None:
        """Commit what poll returned."""
        if self._uncommitted:
            self._bus.commit_offsets(self._group, self._uncommitted)
            self._uncommitted = {}

    def close(self) -> None:
        """Nothing to release: uncommitted positions are forgotten, as in Kafka."""
        self._uncommitted = {}
