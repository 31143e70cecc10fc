"""The audit log's hash chain: how an entry is hashed, and how a whole log is verified.

Each entry's hash is ``sha256(prev_hash + canonical JSON of the entry)``, where the entry is its
``seq``, ``time``, ``actor``, ``action``, ``subject`` and ``detail`` and the first ``prev_hash``
is 64 zeros. Editing an entry breaks its own hash; deleting or reordering entries breaks the
``seq`` run and the next entry's ``prev_hash``; deleting the newest entries is caught by the
store's high-water mark (the highest ``seq`` it ever handed out). Someone able to rewrite the whole
chain *and* that mark is caught only by a head hash kept elsewhere: pass it as ``expected_head``
(``GET /v1/audit/head`` gives it; ship it to a log you do not control).

>>> from datetime import UTC, datetime
>>> t = datetime(2018, 1, 26, 3, tzinfo=UTC)
>>> first = chain_entry(GENESIS, 1, t, "alerts", "freeze", "nem:NC3B", {"order": "o1"})
>>> second = chain_entry(first.hash, 2, t, "ops-1", "freeze", "nem:NC4C", {"order": "o2"})
>>> verify_entries([first, second], high_water=2).ok
True
>>> edited = second.model_copy(update={"actor": "mallory"})
>>> verify_entries([first, edited], high_water=2).problems
['entry 2: hash does not match its content (edited)']
>>> verify_entries([second], high_water=2).problems[0]
'entry 2: expected seq 1 (an entry before it was deleted, or entries were reordered)'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "GENESIS",
    "AuditEntry",
    "VerifyResult",
    "canonical_entry",
    "chain_entry",
    "entry_hash",
    "verify_audit",
    "verify_entries",
]

GENESIS = "0" * 64


class AuditEntry(BaseModel):
    """One action in the audit log."""

    model_config = ConfigDict(frozen=True)

    seq: int
    time: datetime
    actor: str
    """The key id that acted (or that a refused request claimed, or ``-``)."""
    action: str
    subject: str
    """What it acted on: a wallet key, an unfreeze request id, a path."""
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str


def canonical_entry(  # noqa: PLR0917 - the entry's fields, in order
    seq: int, time: datetime, actor: str, action: str, subject: str, detail: Mapping[str, Any]
) -> str:
    """The entry as canonical JSON: sorted keys, no spaces, ASCII only, time in ISO UTC.

    >>> from datetime import UTC, datetime
    >>> canonical_entry(1, datetime(2018, 1, 26, tzinfo=UTC), "a", "freeze", "nem:N", {"b": 1})
    '{"action":"freeze","actor":"a","detail":{"b":1},"seq":1,"subject":"nem:N","time":"2018-01-26T00:00:00.000000+00:00"}'
    """
    body = {
        "seq": seq,
        "time": time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": dict(detail),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(prev_hash: str, canonical: str) -> str:
    """``sha256(prev_hash + canonical)`` in hex."""
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def chain_entry(  # noqa: PLR0917 - the entry's fields, in order
    prev_hash: str,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any],
) -> AuditEntry:
    """The next entry of a chain whose last hash is ``prev_hash``."""
    # Round-trip the detail through JSON so the stored entry hashes the same when read back.
    canonical = canonical_entry(seq, time, actor, action, subject, detail)
    clean = json.loads(canonical)["detail"]
    return AuditEntry(
        seq=seq,
        time=time,
        actor=actor,
        action=action,
        subject=subject,
        detail=clean,
        prev_hash=prev_hash,
        hash=entry_hash(prev_hash, canonical),
    )


class VerifyResult(BaseModel):
    """What :func:`verify_entries` found."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    entries: int
    head: str
    """The hash of the last entry (``GENESIS`` for an empty log)."""
    problems: list[str]

    def summary(self) -> str:
        """One line for people, then one line per problem."""
        if self.ok:
            return f"audit log OK: {self.entries} entries, head {self.head}"
        lines = [f"audit log BROKEN: {len(self.problems)} problem(s) in {self.entries} entries"]
        return "\n".join(lines + [f"  {p}" for p in self.problems])


def verify_entries(
    entries: Iterable[AuditEntry], *, high_water: int, expected_head: str | None = None
) -> VerifyResult:
    """Check a whole log, in stored order; report every problem, not just the first.

    Args:
        entries: The entries as stored (ordered by ``seq``).
        high_water: The highest ``seq`` the store ever handed out.
        expected_head: A head hash recorded elsewhere earlier, that must still be in the chain.
    """
    problems: list[str] = []
    prev = GENESIS
    count = 0
    last_seq = 0
    seen_hashes: set[str] = set()
    for expected_seq, entry in enumerate(entries, start=1):
        count += 1
        if entry.seq != expected_seq:
            problems.append(
                f"entry {entry.seq}: expected seq {expected_seq} (an entry before it was deleted,"
                " or entries were reordered)"
            )
        if entry.prev_hash != prev:
            problems.append(f"entry {entry.seq}: prev_hash does not link to the entry before it")
        canonical = canonical_entry(
            entry.seq, entry.time, entry.actor, entry.action, entry.subject, entry.detail
        )
        if entry_hash(entry.prev_hash, canonical) != entry.hash:
            problems.append(f"entry {entry.seq}: hash does not match its content (edited)")
        prev = entry.hash
        last_seq = entry.seq
        seen_hashes.add(entry.hash)
    if high_water > last_seq:
        problems.append(
            f"entries {last_seq + 1}..{high_water} are missing (the newest were deleted)"
        )
    if expected_head is not None and expected_head not in seen_hashes | {GENESIS}:
        problems.append(f"expected head {expected_head} is not in the chain (rewritten)")
    return VerifyResult(ok=not problems, entries=count, head=prev, problems=problems)


class AuditSource(Protocol):
    """What :func:`verify_audit` reads: any kill-switch store."""

    def audit_entries(self) -> list[AuditEntry]:
        """Every entry, ordered by ``seq``."""
        ...

    def audit_high_water(self) -> int:
        """The highest ``seq`` ever handed out."""
        ...


def verify_audit(store: AuditSource, expected_head: str | None = None) -> VerifyResult:
    """Verify a store's whole audit log (see :func:`verify_entries`)."""
    return verify_entries(
        store.audit_entries(), high_water=store.audit_high_water(), expected_head=expected_head
    )
