"""The stage loop's outputs made outside any message survive a failed flush."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from drainwatch.bus import BusError, EmbeddedBus, Producer, TopicPartition
from drainwatch.events import ALERTS, TRANSFERS, Alert, Severity
from drainwatch.stage import FOLLOWED_TOTAL, Output, StageLoop


class _FirstFlushLost:
    """A producer on the embedded bus whose first flush fails and loses what was sent (a broker
    that went away with the batch)."""

    def __init__(self, real: Producer) -> None:
        self.real = real
        self.queued: list[tuple[str, str, bytes, int | None]] = []
        self.failures = 1

    def send(self, topic: str, key: str, value: bytes, timestamp_ms: int | None = None) -> None:
        self.queued.append((topic, key, value, timestamp_ms))

    def flush(self, timeout_s: float = 30.0) -> None:
        queued, self.queued = self.queued, []
        if self.failures:
            self.failures -= 1
            raise BusError("broker gone")
        for message in queued:
            self.real.send(*message)
        self.real.flush()

    def close(self) -> None:
        self.real.close()


class _Bus(EmbeddedBus):
    def producer(self) -> Any:
        return _FirstFlushLost(super().producer())


def _alert() -> Alert:
    t = datetime(2024, 3, 1, tzinfo=UTC)
    return Alert(
        id="a1",
        time=t,
        detected_at=t,
        chain="eth",
        wallet="0xab",
        severity=Severity.CRITICAL,
        detector="correlation",
        freeze=True,
        summary="s",
    )


def test_what_ready_gave_is_published_again_after_a_failed_flush() -> None:
    bus = _Bus(":memory:")
    alert = _alert()
    given = [[Output(ALERTS, alert)]]
    loop = StageLoop(
        bus,
        [TRANSFERS],
        "g",
        handler=lambda topic, event: [],
        ready=lambda: given.pop() if given else [],
    )
    with pytest.raises(BusError):
        loop.run_once(timeout_s=0.05)
    loop.run_once(timeout_s=0.05)  # ready gives nothing now; what it gave before goes out
    tp = TopicPartition(ALERTS, 0)
    assert [m.key for m in bus.read_range(tp, 0, bus.end_offset(tp))] == [alert.key]
    loop.run_once(timeout_s=0.05)  # and only once
    assert bus.end_offset(tp) == 1


def test_messages_of_a_followed_topic_are_counted_per_topic() -> None:
    bus = EmbeddedBus(":memory:")
    loop = StageLoop(bus, [TRANSFERS], "g", handler=lambda topic, event: [], stage="followtest",
                     broadcast=[ALERTS])  # fmt: skip
    counter = FOLLOWED_TOTAL.labels(stage="followtest", topic=ALERTS)
    before = counter._value.get()
    producer = bus.producer()
    for n in range(3):
        producer.send(ALERTS, "eth:0xab", b"{}", 1_000 + n)  # malformed: dead-lettered, counted
    producer.flush()
    loop.run_once(timeout_s=0.05)
    assert counter._value.get() - before == 3


def test_a_round_that_never_ends_is_a_stall_the_health_check_sees() -> None:
    # A consumer hung in poll() (kafka-python has been seen to) leaves the thread alive: only
    # the length of the round tells. Here the handler blocks instead.
    bus = EmbeddedBus(":memory:")
    release, entered = threading.Event(), threading.Event()

    def blocking(topic: str, event: object) -> list[Output]:
        entered.set()
        release.wait(30)
        return []

    loop = StageLoop(bus, [ALERTS], "g", blocking)
    producer = bus.producer()
    producer.send(ALERTS, "k", _alert().to_json())
    producer.flush()
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        assert entered.wait(10)
        time.sleep(0.3)
        assert thread.is_alive()
        assert loop.stalled(limit_s=0.2)
        assert not loop.stalled()  # within STALL_S
        release.set()
        deadline = time.monotonic() + 10
        while loop.stalled(limit_s=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not loop.stalled(limit_s=0.2)  # the next rounds are short again
    finally:
        release.set()
        stop.set()
        thread.join(10)
