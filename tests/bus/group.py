"""Consumer groups for the Kafka buses' tests: a member polling in its own thread, and reading a
topic from its beginning through a new group.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from drainwatch.bus import Bus, Consumer, Message, TopicPartition

__all__ = ["Member", "consume", "join_group"]


@dataclass
class Member:
    """One consumer of the group, polling and committing in its own thread."""

    consumer: Consumer
    assignments: list[list[TopicPartition]] = field(default_factory=list)
    positions_at_assign: list[dict[TopicPartition, int]] = field(default_factory=list)
    threads_at_assign: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.assignments[-1]} if self.assignments else set()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.consumer.poll(0.2)
                self.messages.extend(batch)
                self.consumer.commit()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.consumer.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def leave(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)


def join_group(bus: Bus, topic: str, group: str) -> Member:
    """A member of ``group`` on ``topic``, started, recording every assignment it is given."""
    member: Member

    def on_assign(tps: list[TopicPartition]) -> None:
        # Called from poll() in the member's thread, so it may use the consumer and the bus.
        # The assignment goes in last: the test thread waits on it and then reads the positions.
        member.threads_at_assign.append(threading.get_ident())
        member.positions_at_assign.append({tp: member.consumer.position(tp) for tp in tps})
        member.assignments.append(tps)

    member = Member(bus.consumer([topic], group, on_assign=on_assign))
    member.start()
    return member


def consume(bus: Bus, topic: str, group: str, count: int) -> list[Message]:
    """What ``group`` reads of ``topic``: ``count`` messages (or what came in 30 s), then one more
    poll, so that anything beyond ``count`` (a duplicate, say) shows up too.
    """
    consumer = bus.consumer([topic], group)
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll(0.5))
    got.extend(consumer.poll(0.5))
    consumer.close()
    return got
