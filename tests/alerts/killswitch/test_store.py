"""The store on both backends, and the audit chain catching every kind of tampering."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from alerts.errors import KillSwitchStateError, UnfreezeRequestError
from alerts.killswitch import FreezeStore, KillSwitchStore, audit_verify, verify_audit
from drainwatch.events import FreezeAction


def _no_hooks(*_: object) -> list[str]:
    return []


def test_orders_are_append_only_and_ids_deterministic(
    open_stores: Callable[[], KillSwitchStore],
) -> None:
    store = open_stores()
    frozen, _ = store.freeze("nem", "N1", "drain", alert_id="a1", requested_by="alerts")
    record = store.request_unfreeze("nem", "N1", "false alarm", "ops")
    store.approve_unfreeze(record.id, "ap-1", hooks_for=_no_hooks)
    _, unfrozen = store.approve_unfreeze(record.id, "ap-2", hooks_for=_no_hooks)
    refrozen, created = store.freeze("nem", "N1", "drain", alert_id="a1", requested_by="alerts")
    assert created
    assert unfrozen is not None
    assert len({frozen.id, unfrozen.id, refrozen.id}) == 3
    assert store.frozen() == [refrozen]
    assert [o.action for o in store.latest_orders()] == [FreezeAction.FREEZE]
    other = FreezeStore(":memory:")
    assert other.freeze("nem", "N1", "other reason")[0].id == frozen.id
    other.close()
    with pytest.raises(UnfreezeRequestError) as refused:
        store.request_unfreeze("nem", "N2", "?", "ops")
    assert refused.value.status_code == 409
    assert verify_audit(store).ok


def test_a_direct_unfreeze_of_a_never_frozen_wallet_fails(tmp_path: Path) -> None:
    store = FreezeStore(str(tmp_path / "s.sqlite3"))
    with pytest.raises(KillSwitchStateError, match="never frozen"):
        store.unfreeze("nem", "N2", "?", requested_by="ops")
    store.close()


def test_the_database_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = FreezeStore(path)
    store.freeze("nem", "N1", "drain")
    store.close()
    db = sqlite3.connect(path)
    for statement in (
        "UPDATE orders SET action = 'unfreeze'",
        "DELETE FROM requests",
        "UPDATE audit SET actor = 'x'",
        "DELETE FROM audit",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    db.close()


def test_postgres_refuses_updates_to_the_audit_log(postgres: object) -> None:
    import psycopg

    from alerts.killswitch import PostgresStore
    from tests.harness.postgres import PostgresService

    assert isinstance(postgres, PostgresService)
    dsn = postgres.create_database("ro")
    store = PostgresStore(dsn)
    store.freeze("nem", "N1", "drain")
    store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'x'")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM orders")


def test_nonces_are_spent_once_and_survive_a_reopen(
    open_stores: Callable[[], KillSwitchStore],
) -> None:
    store = open_stores()
    assert store.remember_nonce("k", "nonce-0001", 4e9)
    assert not store.remember_nonce("k", "nonce-0001", 4e9)
    assert store.remember_nonce("other-key", "nonce-0001", 4e9)
    store.close()
    assert not open_stores().remember_nonce("k", "nonce-0001", 4e9)


def _tampered(tmp_path: Path, *statements: str) -> list[str]:
    path = str(tmp_path / "audit.sqlite3")
    store = FreezeStore(path)
    for i in range(5):
        store.freeze("nem", f"N{i}", f"drain {i}", requested_by="alerts")
    assert verify_audit(store).ok
    store.close()
    # An attacker with the file drops the guards first.
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
    for statement in statements:
        db.execute(statement)
    db.close()
    store = FreezeStore(path)
    result = verify_audit(store)
    store.close()
    assert not result.ok
    with (tmp_path / "out.txt").open("w") as out:
        assert audit_verify(path, out=out) == 1
    return result.problems


def test_verify_detects_an_edited_entry(tmp_path: Path) -> None:
    problems = _tampered(tmp_path, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    assert problems == ["entry 3: hash does not match its content (edited)"]


def test_verify_detects_an_edited_detail(tmp_path: Path) -> None:
    problems = _tampered(
        tmp_path, """UPDATE audit SET detail = replace(detail, 'drain 1', 'test') WHERE seq = 2"""
    )
    assert problems == ["entry 2: hash does not match its content (edited)"]


def test_verify_detects_a_deleted_entry(tmp_path: Path) -> None:
    problems = _tampered(tmp_path, "DELETE FROM audit WHERE seq = 2")
    assert any("expected seq 2" in p for p in problems)
    assert any("prev_hash does not link" in p for p in problems)


def test_verify_detects_deleted_newest_entries(tmp_path: Path) -> None:
    problems = _tampered(tmp_path, "DELETE FROM audit WHERE seq >= 4")
    assert problems == ["entries 4..5 are missing (the newest were deleted)"]


def test_verify_detects_reordered_entries(tmp_path: Path) -> None:
    problems = _tampered(
        tmp_path,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    assert "entry 2: hash does not match its content (edited)" in problems
    assert "entry 2: prev_hash does not link to the entry before it" in problems


def test_verify_detects_a_rewritten_chain_with_an_external_head(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    store = FreezeStore(path)
    store.freeze("nem", "N1", "drain")
    _, head = store.audit_head()
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("DROP TRIGGER audit_no_delete; DELETE FROM audit; DELETE FROM audit_head;")
    db.close()
    store = FreezeStore(path)
    assert verify_audit(store).ok  # an empty log, consistently emptied...
    assert not verify_audit(store, expected_head=head).ok  # ...but the recorded head is gone
    store.close()


def test_audit_verify_command_on_an_intact_log(tmp_path: Path) -> None:
    path = tmp_path / "ok.sqlite3"
    store = FreezeStore(str(path))
    store.freeze("nem", "N1", "drain")
    store.close()
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        assert audit_verify(str(path), out=stream) == 0
        assert audit_verify(str(tmp_path / "missing.sqlite3"), out=stream) == 2
    assert out.read_text().startswith("audit log OK: 1 entries")
