"""Snapshots of what a detector knows of one transfers partition's wallets, with their offset.

A detector replica that takes over a partition (a restart, a rebalance, a crash of another
replica) must judge the partition's next transfer exactly as a replica that never stopped
would. Replaying the topic gives that only for what the replay covers, and the detectors
remember for longer than the topic keeps transfers: destinations for 90 days, the large payments
the large-fresh rule compares with for 28 days (it is silent for a wallet's first 14), a
familiar crowd for 7. So each replica saves, every ``snapshot_interval_s`` after a commit, the
state of each partition it holds (:meth:`DetectionEngine.held_state
<detectors.engine.DetectionEngine.held_state>`) with the offset it committed there; the next
holder takes it back and replays the topic from that offset only.

A snapshot is taken back only when it can be trusted; otherwise :meth:`SnapshotStore.load`
says why in the log and the detector falls back to replaying the topic by time:

* it was written by this code and this config (:func:`fingerprint`: the detectors' source,
  the versions of Python, river and drainwatch, the ``[detection]`` settings and the wallets):
  a pickle of other classes, or state learned under other thresholds, is not taken back;
* it is whole (a SHA-256 of the state is in its header; files are replaced atomically) and
  belongs to the partition asked for, and the topic still holds the message it counted last
  (a digest of it is in the header) and all after it;
* it is a file of the user running the detector that nobody else may write: a pickle runs code
  when loaded, so a file another account could have written is refused.

The directory (``<state_dir>/snapshots``) is the detectors' own: replicas that share it (one
host, or a shared volume) take over each other's partitions from snapshots; a replica that
does not see another's snapshot replays instead. Whether the topic still holds that message is
for the caller (:mod:`drainwatch.app`) to check.

>>> import tempfile
>>> from drainwatch.config import loads
>>> from detectors.engine import DetectionEngine
>>> config = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n')
>>> store = SnapshotStore(Path(tempfile.mkdtemp()))
>>> engine = DetectionEngine(config)
>>> state = engine.held_state({"nem:HOT"})
>>> size = store.save("transfers", 0, 42, message_digest(b"{}"), fingerprint(config), state)
>>> loaded = store.load("transfers", 0, fingerprint(config))
>>> loaded.offset, sorted(loaded.state.keys)
(42, ['nem:HOT'])
>>> store.load("transfers", 1, fingerprint(config)) is None  # none saved for partition 1
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import stat
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from detectors.engine import HeldState
from drainwatch.config import Config

log = logging.getLogger(__name__)

__all__ = ["Snapshot", "SnapshotFile", "SnapshotStore", "fingerprint", "message_digest"]

FORMAT = 1
"""The layout of a snapshot file: a JSON header line, then the pickled state."""


@cache
def _code() -> str:
    """SHA-256 of the detectors' source and the versions their pickles depend on."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info[:2]} river {version('river')}".encode())
    digest.update(f"drainwatch {version('drainwatch')}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def message_digest(value: bytes) -> str:
    """What identifies a message's value in a snapshot's header (its SHA-256).

    >>> message_digest(b"{}")[:12]
    '44136fa355b3'
    """
    return hashlib.sha256(value).hexdigest()


def fingerprint(config: Config) -> str:
    """What a snapshot must have been written under to be taken back: this code, these
    ``[detection]`` settings and these wallets.

    >>> from drainwatch.config import loads
    >>> one = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n')
    >>> other = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n'
    ...               '[detection]\\nfreeze_share = "0.2"\\n')
    >>> fingerprint(one) == fingerprint(one), fingerprint(one) == fingerprint(other)
    (True, False)
    """
    digest = hashlib.sha256(_code().encode())
    digest.update(config.detection.model_dump_json().encode())
    for wallet in config.wallets:
        digest.update(wallet.model_dump_json().encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A partition's state as saved: the offset of the next transfer it has not counted."""

    topic: str
    partition: int
    offset: int
    last: str | None
    """:func:`message_digest` of the message before ``offset`` (None: offset 0)."""
    taken_at: datetime
    state: HeldState


class SnapshotStore:
    """Snapshot files in ``directory``, one per transfers partition (the latest)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, topic: str, partition: int) -> Path:
        """The file of one partition's snapshot."""
        return self.directory / f"{topic}-{partition}{_SUFFIX}"

    def save(  # noqa: PLR0917 - a snapshot's header fields
        self,
        topic: str,
        partition: int,
        offset: int,
        last: str | None,
        fingerprint: str,
        state: HeldState,
    ) -> int:
        """Write the snapshot of ``partition`` at ``offset`` (atomically); return its size.

        ``last`` identifies the message before ``offset`` (:func:`message_digest`), the last one
        ``state`` counted, so that a snapshot is not taken back into another topic that happens
        to have that many messages (a cluster made anew, a test's broker)."""
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        header = {
            "format": FORMAT,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "last": last,
            "fingerprint": fingerprint,
            "taken_at": datetime.now(UTC).isoformat(),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
        }
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(topic, partition)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(json.dumps(header).encode() + b"\n")
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            # The rename itself survives a power loss only once the directory is on disk.
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(payload)

    def files(self, fingerprint: str) -> list[SnapshotFile]:
        """Every snapshot file in the directory, with what its header says and whether it
        could be taken back (its state is not loaded: the topic is not checked here)."""
        out: list[SnapshotFile] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                info, header, payload = _read(path)
            except (OSError, ValueError) as exc:
                out.append(SnapshotFile(path, "?", -1, -1, None, 0, f"unreadable: {exc}"))
                continue
            if not isinstance(header, dict):
                header = {}
            topic, partition = header.get("topic"), header.get("partition")
            if not isinstance(topic, str) or not isinstance(partition, int):
                topic, partition = "?", -1
            verdict = _untrusted(header, payload, topic, partition, fingerprint)
            if _foreign(info):
                verdict = "writable by another account"
            taken = header.get("taken_at")
            offset = header.get("offset")
            out.append(
                SnapshotFile(
                    path,
                    topic,
                    partition,
                    offset if isinstance(offset, int) else -1,
                    datetime.fromisoformat(taken) if isinstance(taken, str) else None,
                    len(payload),
                    verdict or "usable",
                )
            )
        return out

    def load(self, topic: str, partition: int, fingerprint: str) -> Snapshot | None:
        """The snapshot of ``partition`` if there is one that can be trusted (see the module
        doc); None otherwise, with the reason logged."""
        path = self.path(topic, partition)
        try:
            info, header, payload = _read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("snapshot %s cannot be read (%s); replaying the topic instead", path, exc)
            return None
        if _foreign(info):
            log.error(
                "snapshot %s refused: another account could have written it (owner uid %d, "
                "mode %o), and a snapshot runs code when loaded; replaying the topic instead",
                path,
                info.st_uid,
                stat.S_IMODE(info.st_mode),
            )
            return None
        why = _untrusted(header, payload, topic, partition, fingerprint)
        if why:
            log.warning("snapshot %s %s; replaying the topic instead", path, why)
            return None
        try:
            state = pickle.loads(payload)  # noqa: S301 - our own file, checked above
        except Exception as exc:
            log.warning("snapshot %s cannot be loaded (%s); replaying the topic instead", path, exc)
            return None
        if not isinstance(state, HeldState):
            log.warning("snapshot %s holds no detector state; replaying the topic instead", path)
            return None
        return Snapshot(
            topic,
            partition,
            header["offset"],
            header.get("last"),
            datetime.fromisoformat(header["taken_at"]),
            state,
        )


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """What a snapshot file's header says, and whether this code and config would take it
    back (:meth:`SnapshotStore.files`)."""

    path: Path
    topic: str
    partition: int
    offset: int
    taken_at: datetime | None
    size: int
    verdict: str
    """``usable``, or why it would not be taken back."""


_SUFFIX = ".snapshot"


def _read(path: Path) -> tuple[os.stat_result, Any, bytes]:
    """A snapshot file's status (of the file opened, not of a name swapped meanwhile), its
    header and its payload."""
    with path.open("rb") as file:
        info = os.fstat(file.fileno())
        return info, json.loads(file.readline()), file.read()


def _foreign(info: os.stat_result) -> bool:
    """Whether another account owns the file or may write it."""
    return info.st_uid != os.getuid() or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _untrusted(
    header: object, payload: bytes, topic: str, partition: int, fingerprint: str
) -> str | None:
    """Why a snapshot's header and payload may not be taken back (None: they may)."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return "is of another format"
    if header.get("topic") != topic or header.get("partition") != partition:
        return f"is of {header.get('topic')}/{header.get('partition')}"
    if header.get("fingerprint") != fingerprint:
        return "was written by other detector code or another config"
    if not isinstance(header.get("offset"), int) or header["offset"] < 0:
        return "has no offset"
    if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get(
        "sha256"
    ):
        return "is damaged (its checksum does not match)"
    return None
