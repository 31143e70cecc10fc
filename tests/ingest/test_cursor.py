"""The SQLite cursor store: durable per-chain cursors and a bounded recent-hash history."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ingest import Cursor, CursorStore


def test_unknown_chain_has_no_cursor() -> None:
    assert CursorStore(":memory:").get("ethereum") is None


def test_set_then_get_per_chain() -> None:
    store = CursorStore(":memory:")
    store.set("ethereum", 7, "0x07")
    store.set("polygon", 3, "0x03")
    store.set("ethereum", 8, "0x08")
    assert store.get("ethereum") == Cursor(8, "0x08")
    assert store.get("polygon") == Cursor(3, "0x03")
    assert store.hash_at("ethereum", 7) == "0x07"
    assert store.hash_at("polygon", 7) is None


def test_cursor_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cursors.sqlite3"
    with CursorStore(path) as store:
        for n in range(5):
            store.set("ethereum", n, f"0x{n}")
    # Another connection sees it without any explicit close/flush: set() committed.
    other = CursorStore(path)
    store2 = CursorStore(path)
    assert other.get("ethereum") == Cursor(4, "0x4")
    assert store2.hash_at("ethereum", 0) == "0x0"


def test_set_is_committed_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "cursors.sqlite3"
    writer = CursorStore(path)
    reader = CursorStore(path)
    writer.set("ethereum", 1, "0x1")
    assert reader.get("ethereum") == Cursor(1, "0x1")


def test_history_keeps_only_the_most_recent_hashes() -> None:
    store = CursorStore(":memory:", history=128)
    for n in range(300):
        store.set("ethereum", n, f"0x{n}")
    kept = [n for n in range(300) if store.hash_at("ethereum", n) is not None]
    assert kept == list(range(300 - 128, 300))


def test_moving_the_cursor_back_forgets_the_replaced_hashes() -> None:
    store = CursorStore(":memory:")
    for n in range(10):
        store.set("ethereum", n, f"0xold{n}")
    store.set("ethereum", 6, "0xold6")
    assert store.get("ethereum") == Cursor(6, "0xold6")
    assert [store.hash_at("ethereum", n) for n in (5, 6, 7, 9)] == ["0xold5", "0xold6", None, None]
    store.set("ethereum", 7, "0xnew7")
    assert store.hash_at("ethereum", 7) == "0xnew7"


def test_history_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history"):
        CursorStore(":memory:", history=0)


def test_usable_from_another_thread() -> None:
    store = CursorStore(":memory:")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for n in range(50):
                store.set("ethereum", n, f"0x{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get("ethereum") == Cursor(49, "0x49")
