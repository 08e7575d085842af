"""One SQLite file shared by threads: a connection per thread, write transactions that wait.

The job store and the object layer both keep state in ``<storage>/.separator/jobs.sqlite3``
(WAL mode, so readers never block the writer), each with its own tables.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class Database:
    """``path`` opened per thread; ``schema`` (``CREATE … IF NOT EXISTS``) applied at once."""

    def __init__(self, path: str | Path, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.db().executescript(schema)

    def db(self) -> sqlite3.Connection:
        """This thread's connection (rows as :class:`sqlite3.Row`, autocommit outside ``tx``)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def tx(self) -> "_Tx":
        """``with database.tx() as db:`` a write transaction (``BEGIN IMMEDIATE``), committed
        when the block ends, rolled back when it raises."""
        return _Tx(self.db())

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _Tx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


__all__ = ["Database"]
