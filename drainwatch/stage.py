"""The thin consume-process-produce loop every consuming stage runs on the bus.

A stage supplies a pure-ish handler (event in, events out); this loop decodes, sends malformed
messages to the dead-letter topic (counted), publishes the handler's output, flushes, and only then
commits, so a crash repeats work and never loses it.

>>> from drainwatch.bus import EmbeddedBus
>>> bus = EmbeddedBus(":memory:")
>>> p = bus.producer(); p.send(TRANSFERS, "k", b"{broken"); p.flush()
>>> loop = StageLoop(bus, [TRANSFERS], "g", handler=lambda topic, event: [])
>>> loop.run_once(timeout_s=0.1)
1
>>> [m.key for m in bus.read_range(TopicPartition(DEADLETTER, 0), 0, 10)]
['k']
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from prometheus_client import Counter

from drainwatch import metrics
from drainwatch.bus.base import (
    AssignCallback,
    Bus,
    Follower,
    Message,
    TopicPartition,
    TopicSpec,
)
from drainwatch.errors import DrainwatchError
from drainwatch.events import (
    ALERTS,
    DEADLETTER,
    FREEZES,
    LEDGER,
    LEDGER_USES,
    TRANSFERS,
    DecodeError,
    Event,
    decode,
)

__all__ = [
    "DEADLETTER_TOTAL",
    "Handler",
    "Output",
    "StageLoop",
    "default_topics",
    "topic_name",
]

log = logging.getLogger(__name__)

DEADLETTER_TOTAL = Counter(
    "drainwatch_deadletter_messages_total",
    "Malformed messages moved to the dead-letter topic.",
    ["topic"],
)
FAILURES_TOTAL = Counter(
    "drainwatch_stage_failures_total", "Batches a stage could not finish and will redo.", ["stage"]
)
PROCESSED_TOTAL = Counter(
    "drainwatch_stage_messages_total", "Messages processed by a consuming stage.", ["stage"]
)
FOLLOWED_TOTAL = Counter(
    "drainwatch_stage_followed_messages_total",
    "Messages of a topic each member of a stage reads whole (not shared with its group): every "
    "detector reads the ledger and every replica's alerts.",
    ["stage", "topic"],
)


@dataclass(frozen=True, slots=True)
class Output:
    """One event a handler wants published."""

    topic: str
    event: Event

    @property
    def key(self) -> str:
        """The event's bus key."""
        key: str = getattr(self.event, "key")  # noqa: B009 - every keyed event has one
        return key


Handler = Callable[[str, Any], Iterable[Output]]
"""Takes a topic and what was read from it (an :class:`~drainwatch.events.Event`, or what the
stage's own decoder for that topic returns); returns what to publish."""

Decoder = Callable[[bytes], object]
"""Reads one message of a topic; raises :class:`~drainwatch.events.DecodeError` when malformed."""


def topic_name(prefix: str, topic: str) -> str:
    """Apply a deployment's topic prefix.

    >>> topic_name("test1-", TRANSFERS)
    'test1-drainwatch.transfers.v1'
    """
    return f"{prefix}{topic}"


def default_topics(prefix: str = "", partitions: int = 6) -> list[TopicSpec]:
    """Every topic drainwatch uses, with the settings DESIGN.md asks for."""
    return [
        # A detector without a usable snapshot replays 30 days of transfers ([detection]
        # rebuild_s): kept for 35.
        TopicSpec(topic_name(prefix, TRANSFERS), partitions, retention_ms=35 * 24 * 3600 * 1000),
        TopicSpec(topic_name(prefix, LEDGER), partitions),
        TopicSpec(topic_name(prefix, LEDGER_USES), partitions),
        TopicSpec(topic_name(prefix, ALERTS), partitions),
        TopicSpec(topic_name(prefix, FREEZES), partitions, compacted=True, retention_ms=None),
        TopicSpec(topic_name(prefix, DEADLETTER), 1, retention_ms=30 * 24 * 3600 * 1000),
    ]


STALL_S: Final = 330.0
"""A round of a stage loop longer than this makes its process unhealthy (``/healthz`` 503): more
than Kafka's ``max.poll.interval`` (300 s, which a detector's state rebuild must stay within)
and a little. A kafka-python consumer has been seen to hang in ``poll()`` for ever
(docs/design-decisions.md); the thread stays alive, and only this notices."""

HANDLE_SAMPLE_EVERY: Final = 8
"""Handle times of quiet events (no output) are observed for one event in this many."""


def _deadletter_payload(msg: Message, reason: str) -> bytes:
    return orjson.dumps(
        {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
            "payload": msg.value.decode("utf-8", errors="replace"),
        }
    )


class StageLoop:
    """Consume ``topics`` as ``group``; hand each decoded event to ``handler``; publish; commit."""

    def __init__(
        self,
        bus: Bus,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        prefix: str = "",
        stage: str = "stage",
        on_assign: AssignCallback | None = None,
        max_batch: int = 2000,
        decoders: Mapping[str, Decoder] | None = None,
        broadcast: Sequence[str] = (),
        broadcast_since_ms: int | Mapping[str, int] = 0,
        ready: Callable[[], Iterable[Output]] | None = None,
        on_commit: Callable[[Mapping[TopicPartition, Message]], None] | None = None,
    ) -> None:
        self.bus = bus
        self.max_batch = max_batch
        """Most messages handled between two commits (a commit is a broker round trip)."""
        self.topics = [topic_name(prefix, t) for t in topics]
        self.group = group
        self.handler = handler
        self.prefix = prefix
        self.stage = stage
        self._producer = bus.producer()
        self._on_assign = on_assign
        self._consumer = bus.consumer(self.topics, group, on_assign=on_assign)
        self._followers: list[Follower] = [
            bus.follower(
                topic_name(prefix, t),
                broadcast_since_ms
                if isinstance(broadcast_since_ms, int)
                else broadcast_since_ms[t],
            )
            for t in broadcast
        ]
        """``broadcast`` topics, read whole by this member (from ``broadcast_since_ms``, or
        its value for the topic), not shared with the group: what was published to them by the
        end of each poll of the group is handled before the group's messages."""
        self._ready = ready
        """What the stage made outside any message (in ``on_assign``, say), taken after each
        poll and published with what the poll's messages make, before the commit."""
        self._on_commit = on_commit
        """Told, after each commit, the last message committed on each partition it moved on."""
        self._unflushed: list[Output] = []
        """What ``ready`` gave that no flush has confirmed yet (published again after a
        failure: no message brings it back)."""
        self._deadletter = topic_name(prefix, DEADLETTER)
        self.polled_at = time.monotonic()
        """When the current round of :meth:`run` began (see :meth:`stalled`)."""
        self._lag_due_s = 0.0
        self._handled = 0
        self._decoders = dict(decoders or {})
        """Per logical topic, a reader to use instead of :func:`~drainwatch.events.decode`."""
        # Create the series up front so dashboards show 0, not "no data", before the first event.
        FAILURES_TOTAL.labels(stage=stage)
        PROCESSED_TOTAL.labels(stage=stage)
        for topic in broadcast:
            FOLLOWED_TOTAL.labels(stage=stage, topic=topic)
        metrics.STAGE_HANDLE_SECONDS.labels(stage=stage)
        for topic in topics:
            DEADLETTER_TOTAL.labels(topic=topic)

    def _logical(self, topic: str) -> str:
        return topic[len(self.prefix) :] if topic.startswith(self.prefix) else topic

    def run_once(self, timeout_s: float = 1.0) -> int:
        """Process one poll's worth of messages; return how many were read."""
        published: list[Event] = []
        messages = self._consumer.poll(timeout_s, self.max_batch)
        # After the group's poll, which may have waited: an approval published before the
        # transfer it explains, even a moment before, is learned before that transfer is judged.
        # With nothing to judge, the followers may take only what has arrived.
        followed = [m for f in self._followers for m in f.poll(to_end=bool(messages))]
        if self._ready is not None:
            self._unflushed += self._ready()
        for out in self._unflushed:
            self._publish(out, published)
        self._handle(followed, published, followed=True)
        self._handle(messages, published)
        if messages or followed or published:
            self._producer.flush()
            self._unflushed.clear()
            if messages:
                self._consumer.commit()
                if self._on_commit is not None:
                    last: dict[TopicPartition, Message] = {}
                    for m in messages:
                        tp = TopicPartition(m.topic, m.partition)
                        if tp not in last or last[tp].offset < m.offset:
                            last[tp] = m
                    self._on_commit(last)
            PROCESSED_TOTAL.labels(stage=self.stage).inc(len(messages) + len(followed))
        if published:
            metrics.observe_outputs(published)
        self._record_lag()
        return len(messages) + len(followed)

    def _handle(
        self, messages: Sequence[Message], published: list[Event], *, followed: bool = False
    ) -> None:
        handle_seconds = metrics.STAGE_HANDLE_SECONDS.labels(stage=self.stage)
        for msg in messages:
            topic = self._logical(msg.topic)
            if followed:
                FOLLOWED_TOTAL.labels(stage=self.stage, topic=topic).inc()
            decoder = self._decoders.get(topic)
            try:
                event = decode(topic, msg.value) if decoder is None else decoder(msg.value)
            except DecodeError as exc:
                log.warning("dead-lettered %s@%d/%d: %s", msg.topic, msg.partition, msg.offset, exc)
                DEADLETTER_TOTAL.labels(topic=topic).inc()
                self._producer.send(self._deadletter, msg.key, _deadletter_payload(msg, str(exc)))
                continue
            if not followed:  # a followed topic is read again from hours back on start
                metrics.observe_input(event)
            began = time.perf_counter()
            outputs = 0
            for out in self.handler(topic, event):
                self._publish(out, published)
                outputs += 1
            self._handled += 1
            if outputs or not self._handled % HANDLE_SAMPLE_EVERY:
                # The histogram's lock costs as much as judging a quiet transfer: time every
                # event that raised something, and a sample of the quiet ones.
                handle_seconds.observe(time.perf_counter() - began)

    def _publish(self, out: Output, published: list[Event]) -> None:
        ts_ms = int(getattr(out.event, "time").timestamp() * 1000)  # noqa: B009
        self._producer.send(topic_name(self.prefix, out.topic), out.key, out.event.to_json(), ts_ms)
        published.append(out.event)

    def _record_lag(self, every_s: float = 1.0) -> None:
        now = time.monotonic()
        if now < self._lag_due_s or not isinstance(self._consumer, metrics.SupportsLag):
            return
        self._lag_due_s = now + every_s
        metrics.record_lag(self.stage, self._consumer.lag(), self.prefix)

    def run(
        self, stop: threading.Event, timeout_s: float = 0.5, max_backoff_s: float = 30.0
    ) -> None:
        """Loop until ``stop`` is set.

        A :class:`DrainwatchError` from the handler (a kill switch that stays down, a broker that
        refuses a flush) does not commit: the loop waits, rejoins from the committed offsets and
        handles the same messages again, so nothing is lost; effects are idempotent by event id.
        """
        backoff_s = 0.5
        try:
            while not stop.is_set():
                self.polled_at = time.monotonic()
                try:
                    self.run_once(timeout_s)
                    backoff_s = 0.5
                except DrainwatchError as exc:
                    FAILURES_TOTAL.labels(stage=self.stage).inc()
                    log.error(
                        "%s: %s; retrying in %.1f s from the last commit",
                        self.stage,
                        exc,
                        backoff_s,
                    )
                    stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, max_backoff_s)
                    self._rejoin()
        finally:
            self.close()

    def stalled(self, limit_s: float = STALL_S) -> bool:
        """Whether the loop has spent more than ``limit_s`` in one round (a poll and what it
        brought): a hung client, which leaves the thread alive and judging nothing.

        >>> from drainwatch.bus.embedded import EmbeddedBus
        >>> loop = StageLoop(EmbeddedBus(":memory:"), ["t"], "g", lambda topic, event: [])
        >>> loop.stalled(), loop.stalled(limit_s=-1.0)
        (False, True)
        """
        return time.monotonic() - self.polled_at > limit_s

    def _rejoin(self) -> None:
        self._consumer.close()
        self._consumer = self.bus.consumer(self.topics, self.group, on_assign=self._on_assign)

    def position(self, tp: TopicPartition) -> int:
        """The consumer's next offset on ``tp``."""
        return self._consumer.position(tp)

    def close(self) -> None:
        """Flush what is pending and leave the group."""
        self._producer.close()
        self._consumer.close()
        for follower in self._followers:
            follower.close()
