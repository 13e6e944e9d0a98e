"""One SQLite file used from asyncio: a lazily opened connection on one worker thread.

Shared by the embedded store and the cloud store's outbox so both get the same guarantees: no
I/O before first use, every call off the event loop, WAL with a busy timeout (safe for several
processes), append-only migrations whose index is the ``user_version``, and sqlite3 errors mapped
into the package's error tree in one place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .errors import (
    ConfigError,
    StoreConflictError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)

__all__ = ["SQLiteFile", "map_sqlite_error"]

_T = TypeVar("_T")

CACHE_KIB = -65536
"""``PRAGMA cache_size`` of every connection (negative: KiB, so 64 MiB)."""

MMAP_BYTES = 1 << 30
"""``PRAGMA mmap_size`` the embedded memory store asks for: the first GiB of the file is read
through a memory map instead of ``read()`` calls that copy each page (SQLite caps it at its
compile-time limit). The trade-off SQLite documents: an I/O error while reading mapped pages (a
failing disk, a file cut short under the process) arrives as a signal that ends the process
instead of as an error. So :class:`SQLiteFile` maps nothing unless asked: the outbox and the
vector cache are small and read little, and the outbox must fail as an error."""


def map_sqlite_error(exc: sqlite3.Error) -> StoreError:
    """The package error for a sqlite3 error (the one place this mapping lives)."""
    msg = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in msg or "busy" in msg:
            return StoreTimeoutError(f"SQLite busy: {msg}")
        return StoreUnavailableError(f"SQLite: {msg}")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflictError(f"SQLite integrity: {msg}")
    return StoreError(f"SQLite: {msg}")


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Switching a file to WAL takes an exclusive lock and SQLite answers "database is locked" at
    # once instead of calling the busy handler, so processes opening a new file together would
    # fail. Retry within the busy timeout.
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _migrate(conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for index in range(version, len(migrations)):
            for statement in migrations[index].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {index + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteFile:
    """A SQLite database file (or ``":memory:"``) driven from asyncio.

    Args:
        path: the file; parent directories are created on first use.
        migrations: append-only SQL scripts; script ``i`` brings ``user_version`` to ``i + 1``.
        busy_timeout: seconds to wait for another process's write lock.
        name: used in the worker thread's name and in "closed" errors.
        mmap_bytes: ``PRAGMA mmap_size`` of a file database (see :data:`MMAP_BYTES`); 0 (the
            default): off.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: Sequence[str],
        busy_timeout: float = 30.0,
        name: str = "sqlite",
        mmap_bytes: int = 0,
    ) -> None:
        if isinstance(mmap_bytes, bool) or not isinstance(mmap_bytes, int) or mmap_bytes < 0:
            raise ConfigError(f"mmap_bytes must be an int >= 0, got {mmap_bytes!r}")
        self.path = str(path)
        self.mmap_bytes = mmap_bytes
        self.busy_timeout = busy_timeout
        self.name = name
        self._migrations = tuple(migrations)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tiamat-{name}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._open_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self) -> sqlite3.Connection:
        with self._open_lock:
            if self._closed:
                raise StoreUnavailableError(f"{self.name} is closed")
            if self._conn is None:
                if self.path != ":memory:":
                    Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,  # explicit transactions only
                    check_same_thread=False,
                )
                try:
                    conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                    if self.path != ":memory:":
                        _enable_wal(conn, self.busy_timeout)
                    conn.execute("PRAGMA synchronous = NORMAL")
                    # Up to 64 MiB of page cache (the default is 2 MiB): inserts touch random
                    # pages of the id and FTS indexes, which at a million records no longer
                    # fit in 2 MiB (persist throughput at 1M turns: ~17k -> ~24k turns/s).
                    # Memory is only taken as pages are used.
                    conn.execute(f"PRAGMA cache_size = {CACHE_KIB}")
                    if self.mmap_bytes and self.path != ":memory:":
                        conn.execute(f"PRAGMA mmap_size = {self.mmap_bytes}")
                    _migrate(conn, self._migrations)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
            return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        """Run ``fn(connection)`` on the worker thread; with ``write=True`` inside
        ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if ``fn`` raises).

        Raises:
            StoreError: mapped from any sqlite3 error (see :func:`map_sqlite_error`).
        """
        if self._closed:
            raise StoreUnavailableError(f"{self.name} is closed")

        def call() -> _T:
            try:
                conn = self._connect()
                if not write:
                    return fn(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                    return out
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Close the connection and the worker thread. Idempotent."""
        if self._closed:
            return

        def shut() -> None:
            with self._open_lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=False)
