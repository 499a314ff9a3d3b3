"""The embedded backend: one sqlite file in WAL mode, written by one service process.

Reads run inline on the event loop (a point read takes microseconds, less than a thread
hand-off); commits run on one writer thread because `synchronous=FULL` waits for the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from federation.errors import Gone
from federation.storage import Delete, Entry, Expect, LogPage, Put, Snapshot, Store, prefix_end

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_rev INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('pruned', 0);
"""


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._changed = asyncio.Event()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        # Lookups are random reads over the whole table: keep it in memory and mapped, so a
        # lookup costs no read() system calls once warm.
        db.execute("PRAGMA cache_size=-65536")
        db.execute("PRAGMA mmap_size=268435456")
        return db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_db = self._connect()
        self._write_db.executescript(_SCHEMA)
        self._read_db = self._connect()

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._read_db.close()
        self._write_db.close()

    def _read(self, sql: str, args: tuple) -> Snapshot:
        db = self._read_db
        db.execute("BEGIN")
        try:
            (revision,) = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            rows = db.execute(sql, args).fetchall()
        finally:
            db.execute("COMMIT")
        return Snapshot(revision, {key: Entry(key, value, rev) for key, value, rev in rows})

    async def get(self, *keys: str) -> Snapshot:
        marks = ",".join("?" * len(keys))
        return self._read(f"SELECT key, value, mod_rev FROM kv WHERE key IN ({marks})", keys)

    async def scan(self, prefix: str) -> Snapshot:
        return self._read(
            "SELECT key, value, mod_rev FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix_end(prefix)),
        )

    async def commit(
        self, expects: list[Expect], ops: list[Put | Delete], record: bytes | None
    ) -> int | None:
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(self._writer, self._commit, expects, ops, record)
        if revision is not None and record is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        return revision

    def _commit(
        self, expects: list[Expect], ops: list[Put | Delete], record: bytes | None
    ) -> int | None:
        db = self._write_db
        db.execute("BEGIN IMMEDIATE")
        try:
            for expect in expects:
                row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (expect.key,)).fetchone()
                if (row[0] if row else 0) != expect.mod_rev:
                    db.execute("ROLLBACK")
                    return None
            (revision,) = db.execute("SELECT value + 1 FROM meta WHERE name='revision'").fetchone()
            for op in ops:
                if isinstance(op, Put):
                    db.execute(
                        "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (op.key, op.value, revision)
                    )
                else:
                    db.execute("DELETE FROM kv WHERE key=?", (op.key,))
            if record is not None:
                db.execute("INSERT INTO log VALUES (?, ?)", (revision, record))
            db.execute("UPDATE meta SET value=? WHERE name='revision'", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return revision

    async def log(self, since: int, limit: int) -> LogPage:
        db = self._read_db
        db.execute("BEGIN")
        try:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            rows = db.execute(
                "SELECT rev, record FROM log WHERE rev > ? ORDER BY rev LIMIT ?", (since, limit)
            ).fetchall()
        finally:
            db.execute("COMMIT")
        if since < meta["pruned"]:
            raise Gone(f"changes after revision {since} were pruned; resynchronise")
        return LogPage(rows, meta["revision"])

    async def wait(self, since: int, timeout: float) -> None:
        changed = self._changed
        (latest,) = self._read_db.execute("SELECT coalesce(max(rev), 0) FROM log").fetchone()
        if latest > since:
            return
        # asyncio.timeout, not wait_for: with wait_for (Python 3.11), cancelling the change
        # feed's reader at shutdown hung now and then (the directory tests' teardown).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    async def prune(self, keep: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._prune, keep)

    def _prune(self, keep: int) -> None:
        db = self._write_db
        newest_dropped = "SELECT rev FROM log ORDER BY rev DESC LIMIT 1 OFFSET ?"
        row = db.execute(newest_dropped, (keep,)).fetchone()
        if row:  # one transaction: the pruned mark and the deletion land together
            db.executescript(
                f"BEGIN; DELETE FROM log WHERE rev <= {int(row[0])};"
                f"UPDATE meta SET value=max(value, {int(row[0])}) WHERE name='pruned'; COMMIT;"
            )
