"""One way to open the SQLite files the stages keep their state in.

Every store shares one connection between threads under its own lock, commits explicitly
(autocommit mode, ``BEGIN`` where it needs a transaction) and writes ahead (WAL), so a reader
never waits for a writer.

>>> import tempfile, pathlib
>>> where = pathlib.Path(tempfile.mkdtemp()) / "new" / "state.sqlite3"
>>> db = open_sqlite(str(where), create_dir=True)
>>> db.execute("PRAGMA journal_mode").fetchone()[0], where.exists()
('wal', True)
>>> open_sqlite(":memory:").isolation_level is None
True
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_sqlite"]


def open_sqlite(path: str, *, create_dir: bool = False) -> sqlite3.Connection:
    """Connect to ``path`` (a file, or ``":memory:"``) for use from several threads, in WAL mode.

    With ``create_dir`` the file's directory is created first when it is missing.
    """
    if create_dir and path not in ("", ":memory:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db
