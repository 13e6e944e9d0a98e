"""A durable local outbox for a remote store: queued writes, sequence counters, known keys.

The hosted TIAMAT API has no transactions, no idempotency and no per-session counters, and it is
sometimes unreachable. :class:`Outbox` is the client-side bookkeeping that makes
:class:`~tiamat_hooks.stores.cloud.TiamatCloudStore` behave like a store anyway. It is one SQLite
file (or ``":memory:"``) with three tables:

``pending``
    Writes not yet acknowledged by the service, in arrival order (``pos``). A write is queued
    *before* it is sent, so a crash never loses an acknowledged write; ``parts_sent`` records how
    many parts of a split record the service has already taken, so a resumed replay continues
    where it stopped instead of duplicating parts. A write the service rejects for good (a 4xx
    about the write itself) moves to ``dead`` with the error, so it never blocks the queue.
    ``local_seq`` marks a turn whose sequence number this client assigned (it had none): a
    server that numbers turns itself may renumber it on delivery.
``seqs``
    The next sequence number of each ``(user_id, session_id)`` this outbox has written to.
``known``
    Every record this outbox has queued or seen stored, by ``(user_id, key)``: the idempotency
    index the hosted API lacks. It grows with what this client writes.

All SQLite calls run on one worker thread per outbox; the event loop never blocks on disk. The
constructor does no I/O; the file (and its directory) is created on first use. Several
processes may share a file (WAL, busy timeout), but sequence counters assume one writer per
session at a time (see the cloud store's documentation).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from ._sqlite import SQLiteFile
from .models import MemoryRecord

__all__ = ["Outbox", "OutboxStatus", "QueuedUser", "QueuedWrite", "default_outbox_path"]

_T = TypeVar("_T")

# Append-only: the index of a script is the schema version it produces (user_version = index+1).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pending (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        session_id TEXT NOT NULL,          -- '' when the record has no session
        key TEXT NOT NULL,
        record TEXT NOT NULL,              -- MemoryRecord JSON
        parts_sent INTEGER NOT NULL DEFAULT 0,
        enqueued_us INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE UNIQUE INDEX pending_key ON pending(user_id, key);
    CREATE INDEX pending_scope ON pending(user_id, session_id, pos);
    CREATE TABLE dead (
        pos INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        record TEXT NOT NULL,
        error TEXT NOT NULL,
        failed_us INTEGER NOT NULL
    );
    CREATE TABLE seqs (
        user_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, session_id)
    );
    CREATE TABLE known (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    """,
    """
    ALTER TABLE pending ADD COLUMN local_seq INTEGER NOT NULL DEFAULT 0;
    """,
)


def default_outbox_path() -> Path:
    """``outbox.db`` in the user's data directory (computed, not created)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("tiamat-hooks")) / "outbox.db"


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class QueuedWrite:
    """One queued record. ``pos`` orders the queue; ``parts_sent`` parts are already stored.

    ``local_seq`` is true when the record's ``seq`` was assigned by this client (the caller left
    it empty), so a server that assigns sequence numbers may replace it.
    """

    pos: int
    record: MemoryRecord
    parts_sent: int
    attempts: int
    enqueued_at: datetime
    last_error: str | None
    local_seq: bool = False


@dataclass(frozen=True, slots=True)
class QueuedUser:
    """Queued writes of one user: how many, and when the oldest was queued."""

    user_id: str
    pending: int
    oldest_enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What is waiting. Ages are in seconds; ``None`` when nothing is queued."""

    pending: int
    users: int
    dead: int
    oldest_enqueued_at: datetime | None
    oldest_age_seconds: float | None
    last_error: str | None


def _dump(record: MemoryRecord) -> str:
    # ASCII-escaped JSON: a lone surrogate in an item or meta survives the round trip instead of
    # failing UTF-8 encoding.
    return json.dumps(record.model_dump(mode="json"), ensure_ascii=True)


def _load(text: str) -> MemoryRecord:
    return MemoryRecord.model_validate(json.loads(text))


def _in_scope(
    record: MemoryRecord,
    agent_id: str | None,
    session_id: str | None,
    ids: Collection[str] | None,
) -> bool:
    return (
        (agent_id is None or record.agent_id == agent_id)
        and (session_id is None or record.session_id == session_id)
        and (ids is None or record.id in ids)
    )


class Outbox:
    """Durable queue and bookkeeping for a remote store (see the module docstring).

    Args:
        path: SQLite file, or ``":memory:"`` for a process-lifetime outbox (queued writes are
            then lost when the process exits).
        busy_timeout: seconds to wait for another process holding the file's write lock.
    """

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout: float = 30.0) -> None:
        self._db = SQLiteFile(path, migrations=MIGRATIONS, busy_timeout=busy_timeout, name="outbox")
        self.path = self._db.path
        self.busy_timeout = busy_timeout

    def __repr__(self) -> str:
        return f"Outbox(path={self.path!r})"

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        return await self._db.run(fn, write=write)

    async def close(self) -> None:
        """Close the file. Idempotent; queued writes stay in the file for a later replay."""
        await self._db.close()

    # -- queue ------------------------------------------------------------------------------

    async def enqueue(
        self,
        records: Sequence[MemoryRecord],
        next_seqs: dict[tuple[str, str | None], int] | None = None,
        *,
        local_seq: Collection[tuple[str, str]] = (),
        remember: bool = True,
    ) -> None:
        """Queue ``records`` (in order), remember their keys and save sequence counters, in one
        transaction. A record whose ``(user_id, key)`` is already queued is not queued twice.

        ``local_seq`` holds the ``(user_id, key)`` of records whose ``seq`` this client assigned.
        ``remember=False`` leaves the known-keys index alone (for a server that is idempotent
        itself, where a local index could go stale).
        """
        rows = [
            (
                r.user_id,
                r.session_id or "",
                r.key,
                _dump(r),
                _now_us(),
                int((r.user_id, r.key) in local_seq),
            )
            for r in records
        ]
        seq_rows = [(u, s or "", n) for (u, s), n in (next_seqs or {}).items()]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO pending "
                "(user_id, session_id, key, record, enqueued_us, local_seq) VALUES (?,?,?,?,?,?)",
                rows,
            )
            if remember:
                conn.executemany(
                    "INSERT OR IGNORE INTO known (user_id, key, record) VALUES (?,?,?)",
                    [(u, k, rec) for u, _, k, rec, _, _ in rows],
                )
            conn.executemany(
                "INSERT INTO seqs (user_id, session_id, next_seq) VALUES (?,?,?) "
                "ON CONFLICT (user_id, session_id) DO UPDATE SET "
                "next_seq = max(next_seq, excluded.next_seq)",
                seq_rows,
            )

        await self._run(run, write=True)

    async def pending(
        self,
        user_id: str | None = None,
        *,
        session_id: str | None = None,
        limit: int | None = None,
    ) -> list[QueuedWrite]:
        """Queued writes in queue order, optionally of one user (and session)."""
        where, params = "1", []
        if user_id is not None:
            where, params = "user_id = ?", [user_id]
            if session_id is not None:
                where += " AND session_id = ?"
                params.append(session_id)
        sql = (
            "SELECT pos, record, parts_sent, attempts, enqueued_us, last_error, local_seq "
            "FROM pending "
            f"WHERE {where} ORDER BY pos"
        )
        if limit is not None:
            sql += f" LIMIT {max(0, int(limit))}"

        def run(conn: sqlite3.Connection) -> list[QueuedWrite]:
            return [
                QueuedWrite(
                    pos,
                    _load(rec),
                    parts,
                    attempts,
                    datetime.fromtimestamp(us / 1e6, timezone.utc),
                    err,
                    bool(local),
                )
                for pos, rec, parts, attempts, us, err, local in conn.execute(sql, params)
            ]

        return await self._run(run)

    async def mark_progress(self, pos: int, parts_sent: int) -> None:
        """Record that the first ``parts_sent`` parts of queued write ``pos`` are stored."""
        await self._run(
            lambda c: c.execute(
                "UPDATE pending SET parts_sent = max(parts_sent, ?) WHERE pos = ?",
                (parts_sent, pos),
            ),
            write=True,
        )

    async def mark_sent(self, pos: int) -> None:
        """Remove queued write ``pos``: the service has every part."""
        await self._run(
            lambda c: c.execute("DELETE FROM pending WHERE pos = ?", (pos,)), write=True
        )

    async def mark_sent_many(self, positions: Iterable[int]) -> None:
        """Remove several queued writes at once (one transaction): the service has them all."""
        pos_list = [(p,) for p in positions]
        await self._run(
            lambda c: c.executemany("DELETE FROM pending WHERE pos = ?", pos_list), write=True
        )

    async def mark_failed(self, pos: int, error: str) -> None:
        """Count a failed delivery attempt of ``pos`` (it stays queued)."""
        await self._run(
            lambda c: c.execute(
                "UPDATE pending SET attempts = attempts + 1, last_error = ? WHERE pos = ?",
                (error[:500], pos),
            ),
            write=True,
        )

    async def dead_letter(self, pos: int, error: str) -> None:
        """Move ``pos`` out of the queue into ``dead``: the service rejected it for good."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO dead (pos, user_id, key, record, error, failed_us) "
                "SELECT pos, user_id, key, record, ?, ? FROM pending WHERE pos = ?",
                (error[:500], _now_us(), pos),
            )
            conn.execute("DELETE FROM pending WHERE pos = ?", (pos,))

        await self._run(run, write=True)

    async def discard(self, positions: Iterable[int]) -> None:
        """Drop queued writes and their known keys (a write the caller was told failed)."""
        pos_list = [(p,) for p in positions]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM known WHERE (user_id, key) IN "
                "(SELECT user_id, key FROM pending WHERE pos = ?)",
                pos_list,
            )
            conn.executemany("DELETE FROM pending WHERE pos = ?", pos_list)

        await self._run(run, write=True)

    async def forget(
        self,
        user_id: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        ids: Collection[str] | None = None,
    ) -> int:
        """Drop what this outbox holds about a scope; returns how many queued writes were dropped
        (they are never sent now). What the service already stored is not affected.

        With only ``user_id``: every queued write, dead letter, known key and sequence counter
        of the user. ``agent_id`` / ``session_id`` narrow it as in a
        :class:`~tiamat_hooks.models.Scope`, and ``ids`` to those record ids within it; then
        the matching queued writes, dead letters and known keys are dropped, and the session's
        counter too when a whole session (no agent, no ids) is forgotten.
        """
        if agent_id is None and session_id is None and ids is None:

            def run_all(conn: sqlite3.Connection) -> int:
                n = conn.execute("DELETE FROM pending WHERE user_id = ?", (user_id,)).rowcount
                for table in ("dead", "known", "seqs"):
                    conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
                return int(n)

            return await self._run(run_all, write=True)
        wanted = None if ids is None else frozenset(ids)

        def run(conn: sqlite3.Connection) -> int:
            dropped = 0
            # Agent and record ids live only in the record JSON, so they are matched in Python.
            for table in ("pending", "dead"):
                doomed = [
                    (pos,)
                    for pos, rec in conn.execute(
                        f"SELECT pos, record FROM {table} WHERE user_id = ?", (user_id,)
                    )
                    if _in_scope(_load(rec), agent_id, session_id, wanted)
                ]
                conn.executemany(f"DELETE FROM {table} WHERE pos = ?", doomed)
                if table == "pending":
                    dropped = len(doomed)
            keys = [
                (user_id, key)
                for key, rec in conn.execute(
                    "SELECT key, record FROM known WHERE user_id = ?", (user_id,)
                )
                if _in_scope(_load(rec), agent_id, session_id, wanted)
            ]
            conn.executemany("DELETE FROM known WHERE user_id = ? AND key = ?", keys)
            if session_id is not None and agent_id is None and ids is None:
                conn.execute(
                    "DELETE FROM seqs WHERE user_id = ? AND session_id = ?", (user_id, session_id)
                )
            return dropped

        return await self._run(run, write=True)

    async def status(self) -> OutboxStatus:
        """Counts of queued and dead writes and the age of the oldest queued one."""

        def run(conn: sqlite3.Connection) -> OutboxStatus:
            n, users, oldest = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT user_id), MIN(enqueued_us) FROM pending"
            ).fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
            row = conn.execute(
                "SELECT last_error FROM pending WHERE last_error IS NOT NULL ORDER BY pos LIMIT 1"
            ).fetchone()
            at = datetime.fromtimestamp(oldest / 1e6, timezone.utc) if oldest is not None else None
            age = max(0.0, (_now_us() - oldest) / 1e6) if oldest is not None else None
            return OutboxStatus(n, users, dead, at, age, row[0] if row else None)

        return await self._run(run)

    async def users(self) -> list[QueuedUser]:
        """Queued writes per user, most queued first (then by user id)."""

        def run(conn: sqlite3.Connection) -> list[QueuedUser]:
            rows = conn.execute(
                "SELECT user_id, COUNT(*), MIN(enqueued_us) FROM pending GROUP BY user_id "
                "ORDER BY COUNT(*) DESC, user_id"
            ).fetchall()
            return [
                QueuedUser(u, n, datetime.fromtimestamp(us / 1e6, timezone.utc))
                for u, n, us in rows
            ]

        return await self._run(run)

    # -- bookkeeping ------------------------------------------------------------------------

    async def known(self, user_id: str, keys: Sequence[str]) -> dict[str, MemoryRecord]:
        """The stored (or queued) records of ``user_id`` among ``keys``, by key."""
        key_list = list(dict.fromkeys(keys))

        def run(conn: sqlite3.Connection) -> dict[str, MemoryRecord]:
            out: dict[str, MemoryRecord] = {}
            for i in range(0, len(key_list), 500):
                chunk = key_list[i : i + 500]
                sql = (
                    "SELECT key, record FROM known WHERE user_id = ? "
                    f"AND key IN ({','.join('?' * len(chunk))})"
                )
                for key, rec in conn.execute(sql, [user_id, *chunk]):
                    out[key] = _load(rec)
            return out

        return await self._run(run)

    async def remember(self, records: Iterable[MemoryRecord]) -> None:
        """Add records seen stored on the service to the known-keys index (first copy wins)."""
        rows = [(r.user_id, r.key, _dump(r)) for r in records]
        if rows:
            await self._run(
                lambda c: c.executemany(
                    "INSERT OR IGNORE INTO known (user_id, key, record) VALUES (?,?,?)", rows
                ),
                write=True,
            )

    async def advance_seqs(self, next_seqs: dict[tuple[str, str | None], int]) -> None:
        """Raise sequence counters to at least the given next numbers (never lowers one)."""
        rows = [(u, s or "", n) for (u, s), n in next_seqs.items()]
        if rows:
            await self._run(
                lambda c: c.executemany(
                    "INSERT INTO seqs (user_id, session_id, next_seq) VALUES (?,?,?) "
                    "ON CONFLICT (user_id, session_id) DO UPDATE SET "
                    "next_seq = max(next_seq, excluded.next_seq)",
                    rows,
                ),
                write=True,
            )

    async def next_seq(self, user_id: str, session_id: str | None) -> int | None:
        """The next sequence number of a session, or ``None`` when this outbox has no counter."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT next_seq FROM seqs WHERE user_id = ? AND session_id = ?",
                (user_id, session_id or ""),
            ).fetchone()
        )
        return int(row[0]) if row else None
