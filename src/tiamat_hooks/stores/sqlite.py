"""The embedded default store: one SQLite file, FTS5 with BM25 ranking, no server, no key.

Layout: ``records`` holds every record; ``units`` is an FTS5 index of searchable units (a whole
record, or sentence windows of a long one; see :func:`tiamat_hooks.text.index_units`). A unit's
rowid is ``record_rowid * UNITS_PER_RECORD + i``, so a record's units are one rowid range.
Each unit also carries scope tokens (hashed user, agent, session, kind) in an FTS column so that
the full-text index itself narrows a search to one user instead of filtering afterwards.

Concurrency: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` for writes, so several
processes can share one file and sequence numbers stay gap-free. All SQLite calls run on one
worker thread per store object; the event loop never blocks on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from .._sqlite import MMAP_BYTES, SQLiteFile
from ..errors import (
    InvalidInputError,
    StoreConflictError,
)
from ..models import (
    RECORD_KINDS,
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
    SessionInfo,
    StoreCapabilities,
    StoreStats,
)
from ..text import index_units, query_terms
from .base import DEFAULT_SEARCH_KINDS

__all__ = ["SQLiteMemoryStore"]

_T = TypeVar("_T")

UNITS_PER_RECORD = 4096
"""Upper bound on index units of one record (the rest of a huge text joins the last unit)."""

# Append-only: the index of a script is the schema version it produces (user_version = index+1).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE records (
        rowid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        agent_id TEXT,
        session_id TEXT NOT NULL,          -- '' when the record has no session
        kind TEXT NOT NULL,
        role TEXT,
        text TEXT NOT NULL,
        item TEXT,
        created_us INTEGER NOT NULL,       -- microseconds since the epoch, UTC
        seq INTEGER,
        key TEXT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE UNIQUE INDEX records_key ON records(user_id, key);
    CREATE INDEX records_session ON records(user_id, session_id, seq);
    CREATE UNIQUE INDEX records_turn_seq ON records(user_id, session_id, seq) WHERE kind = 'turn';
    CREATE VIRTUAL TABLE units USING fts5(
        scope, body, context, span UNINDEXED,
        tokenize = 'porter unicode61 remove_diacritics 2'
    );
    """,
    # 2: summaries and facts of a user without walking the user's turns (a user's facts were
    # read by scanning every record of the user). Partial, so turns cost the index nothing;
    # reads that want no turns say ``kind != 'turn'`` so the planner can use it.
    """
    CREATE INDEX IF NOT EXISTS records_nonturn ON records(user_id, kind) WHERE kind != 'turn';
    """,
)

_BM25 = "bm25(units, 0.0, 1.0, 0.6)"  # scope tokens weigh nothing; context a little less.


def _tok(prefix: str, value: str) -> str:
    return prefix + hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _scope_tokens(user_id: str, agent_id: str | None, session_id: str, kind: str) -> str:
    # Kind tokens are per user: a store-wide "kturn" token would have a posting list as long as
    # the whole store, and every search would walk it.
    parts = [_tok("u", user_id), _tok("k", user_id + "\x1f" + kind)]
    if agent_id is not None:
        parts.append(_tok("a", user_id + "\x1f" + agent_id))
    parts.append(_tok("s", user_id + "\x1f" + session_id))
    return " ".join(parts)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _to_us(dt: datetime) -> int:
    delta = dt.astimezone(timezone.utc) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_COLUMNS = (
    "rowid, id, user_id, agent_id, session_id, kind, role, text, item, created_us, seq, key, meta"
)


_new_record = MemoryRecord.__new__
_set = object.__setattr__
_FIELDS = frozenset(MemoryRecord.model_fields)
# What ``model_construct`` does for a plain model given every field, without its per-field
# bookkeeping (a tenth of the cost; recall builds a hundred or more records per call). Models
# with post-init hooks, extra fields or a root fall back to ``model_construct``.
_FAST_CONSTRUCT = (
    MemoryRecord.__pydantic_post_init__ is None
    and not MemoryRecord.__pydantic_root_model__
    and MemoryRecord.model_config.get("extra") != "allow"
    and list(MemoryRecord.model_fields)
    == [
        "id",
        "user_id",
        "agent_id",
        "session_id",
        "kind",
        "role",
        "text",
        "item",
        "created_at",
        "seq",
        "key",
        "meta",
    ]
)


def _assemble(values: dict[str, Any], fields_set: set[str]) -> MemoryRecord:
    """A record from already valid ``values`` (every field), as ``model_construct`` builds it."""
    if not _FAST_CONSTRUCT:
        return MemoryRecord.model_construct(fields_set, **values)
    rec = _new_record(MemoryRecord)
    _set(rec, "__dict__", values)
    _set(rec, "__pydantic_fields_set__", fields_set)
    _set(rec, "__pydantic_extra__", None)
    _set(rec, "__pydantic_private__", None)
    return rec


def _with_seq(rec: MemoryRecord, seq: int) -> MemoryRecord:
    """``rec.model_copy(update={"seq": seq})``, cheaper (every stored turn gets its seq)."""
    return _assemble({**rec.__dict__, "seq": seq}, rec.model_fields_set | {"seq"})


def _row_to_record(row: sqlite3.Row | tuple[Any, ...]) -> MemoryRecord:
    meta = row[12]
    values = {
        "id": row[1],
        "user_id": row[2],
        "agent_id": row[3],
        "session_id": row[4] or None,
        "kind": row[5],
        "role": row[6],
        "text": row[7],
        "item": json.loads(row[8]) if row[8] is not None else None,
        "created_at": _EPOCH + timedelta(microseconds=row[9]),
        "seq": row[10],
        "key": row[11],
        "meta": {} if meta == "{}" else json.loads(meta),
    }
    return _assemble(values, set(_FIELDS))


class SQLiteMemoryStore:
    """The embedded store. ``SQLiteMemoryStore("memory.db")`` or ``open_store("sqlite:///memory.db")``.

    Args:
        path: database file, created with its parent directories on first use; ``":memory:"``
            for a private in-memory database.
        busy_timeout: seconds a writer waits for another process's lock before failing with
            :class:`~tiamat_hooks.errors.StoreTimeoutError`.
        mmap_bytes: how much of the file is read through a memory map (default 1 GiB; ``0``
            reads every page with ``read()``). With the map, an I/O error on a mapped page
            ends the process instead of raising (see :data:`tiamat_hooks._sqlite.MMAP_BYTES`).

    No I/O happens in the constructor; the file is opened on first use.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        busy_timeout: float = 30.0,
        mmap_bytes: int = MMAP_BYTES,
    ) -> None:
        self._db = SQLiteFile(
            path,
            migrations=MIGRATIONS,
            busy_timeout=busy_timeout,
            name="sqlite",
            mmap_bytes=mmap_bytes,
        )
        self.path = self._db.path
        self.busy_timeout = busy_timeout

    def __repr__(self) -> str:
        return f"SQLiteMemoryStore(path={self.path!r})"

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(can_delete=True, max_search_limit=1000, neighbors=True)

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        return await self._db.run(fn, write=write)

    async def close(self) -> None:
        await self._db.close()

    # -- writes -----------------------------------------------------------------------------

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        batch = list(records)
        for r in batch:
            if not isinstance(r, MemoryRecord):
                raise InvalidInputError(f"add() takes MemoryRecord objects, got {type(r).__name__}")
        if not batch:
            return []
        return await self._run(lambda conn: _insert(conn, batch), write=True)

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        where, params = _scope_where(scope)
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return 0
            where += f" AND id IN ({','.join('?' * len(id_list))})"
            params.extend(id_list)

        def run(conn: sqlite3.Connection) -> int:
            rowids = [
                r[0] for r in conn.execute(f"SELECT rowid FROM records WHERE {where}", params)
            ]
            for rowid in rowids:
                conn.execute(
                    "DELETE FROM units WHERE rowid BETWEEN ? AND ?",
                    (rowid * UNITS_PER_RECORD, rowid * UNITS_PER_RECORD + UNITS_PER_RECORD - 1),
                )
            conn.executemany("DELETE FROM records WHERE rowid = ?", [(r,) for r in rowids])
            return len(rowids)

        return await self._run(run, write=True)

    # -- reads ------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] = DEFAULT_SEARCH_KINDS,
        limit: int = 50,
    ) -> list[SearchHit]:
        terms = query_terms(query) if isinstance(query, str) else []
        kinds = list(kinds)
        limit = max(0, min(int(limit), self.capabilities.max_search_limit))
        if not terms or not kinds or limit == 0:
            return []
        scope_q = [_tok("u", scope.user_id)]
        if scope.agent_id is not None:
            scope_q.append(_tok("a", scope.user_id + "\x1f" + scope.agent_id))
        if scope.session_id is not None:
            scope_q.append(_tok("s", scope.user_id + "\x1f" + scope.session_id))
        # Every term is letters/digits only (query_terms guarantees it) and double-quoted, so no
        # user text is ever parsed as FTS5 syntax.
        words = " OR ".join(f'"{t}"' for t in terms)
        scope_match = "scope : (" + " AND ".join(f'"{t}"' for t in scope_q) + ")"
        kind_q = " OR ".join(f'"{_tok("k", scope.user_id + chr(31) + k)}"' for k in kinds)
        kind_set = set(kinds)
        # The user token is selective; OR-ing the per-user kind tokens into the match costs more
        # than it saves when turns are wanted (turns are nearly every unit), so then kinds are
        # filtered afterwards, with the kind-filtered match as a fallback when that comes up
        # short. Without turns (summaries, facts: few units), the kind tokens lead the match.
        filtered = f"{scope_match} AND scope : ({kind_q}) AND {{body context}} : ({words})"
        plain = f"{scope_match} AND {{body context}} : ({words})"
        sql = (
            f"SELECT u.rowid, u.span, {_BM25} AS score FROM units u WHERE units MATCH ? "
            "ORDER BY score LIMIT ?"
        )

        def collect(conn: sqlite3.Connection, match: str) -> tuple[list[SearchHit], bool]:
            # Over-fetch units: several units of one record collapse into one hit.
            rows = conn.execute(sql, (match, limit * 3)).fetchall()
            best: dict[int, tuple[float, str | None]] = {}
            for unit_rowid, span, score in rows:
                rec_rowid = unit_rowid // UNITS_PER_RECORD
                if rec_rowid not in best:
                    best[rec_rowid] = (-score, span)
            # ``best`` is in rank order already (rows come best first), so only the records of
            # the first ``limit`` hits of a wanted kind are read, not all the over-fetched ones.
            order = list(best)
            hits: list[SearchHit] = []
            start = 0
            while len(hits) < limit and start < len(order):
                chunk = order[start : start + limit - len(hits)]
                start += len(chunk)
                recs = _fetch_by_rowid(conn, chunk)
                for rowid in chunk:
                    rec = recs.get(rowid)
                    if rec is None or rec.kind not in kind_set:
                        continue
                    score, span = best[rowid]
                    hits.append(SearchHit(rec, score, _parse_span(span, len(rec.text))))
            hits.sort(key=lambda h: -h.score)
            return hits[:limit], len(rows) == limit * 3

        def run(conn: sqlite3.Connection) -> list[SearchHit]:
            if "turn" not in kind_set or kind_set >= set(RECORD_KINDS):
                return collect(conn, filtered if "turn" not in kind_set else plain)[0]
            hits, more = collect(conn, plain)
            if len(hits) < limit and more:
                hits = collect(conn, filtered)[0]
            return hits

        return await self._run(run)

    async def read(
        self,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[MemoryRecord]:
        where, params = _scope_where(scope)
        table = "records"
        if kinds is not None:
            kind_list = list(kinds)
            if not kind_list:
                return []
            where += f" AND kind IN ({','.join('?' * len(kind_list))})"
            params.extend(kind_list)
            if "turn" not in kind_list:
                where += " AND kind != 'turn'"  # makes the records_nonturn index usable
                if scope.session_id is None:
                    # Without the hint the planner walks the user's records in session order
                    # (to skip a sort) and so reads every turn of the user.
                    table = "records INDEXED BY records_nonturn"
        if seq_from is not None:
            where += " AND seq >= ?"
            params.append(seq_from)
        if seq_to is not None:
            where += " AND seq <= ?"
            params.append(seq_to)
        direction = "DESC" if newest else "ASC"
        # Records without seq (summaries, facts) sort after turns by time within a session.
        order = (
            f"session_id {direction}, seq IS NULL {direction}, seq {direction}, "
            f"created_us {direction}, rowid {direction}"
        )
        sql = f"SELECT {_COLUMNS} FROM {table} WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))

        def run(conn: sqlite3.Connection) -> list[MemoryRecord]:
            out = [_row_to_record(r) for r in conn.execute(sql, params)]
            if newest:
                out.reverse()
            return out

        return await self._run(run)

    async def read_around(
        self, scope: Scope, refs: Sequence[tuple[str | None, int]], *, radius: int = 1
    ) -> list[MemoryRecord]:
        """Turns within ``radius`` of each ``(session_id, seq)`` in one call (optional capability).

        Recall uses this to pull in the turns next to its hits without one round trip per hit.
        Results are unique, in ``(session_id, seq)`` order, and limited to ``scope``.
        """
        pairs = list(dict.fromkeys(refs))
        if not pairs:
            return []
        # Overlapping ranges of one session merge into one, and each range is one lookup on the
        # (user_id, session_id, seq) index: an OR of ranges in one statement makes SQLite scan
        # every turn of the user instead.
        by_session: dict[str, list[tuple[int, int]]] = {}
        for sid, seq in pairs:
            by_session.setdefault(sid or "", []).append((seq - radius, seq + radius))
        ranges: list[tuple[str, int, int]] = []
        for sid in sorted(by_session):
            spans = sorted(by_session[sid])
            lo, hi = spans[0]
            for s, e in spans[1:]:
                if s > hi + 1:
                    ranges.append((sid, lo, hi))
                    lo = s
                hi = max(hi, e)
            ranges.append((sid, lo, hi))
        agent = "" if scope.agent_id is None else " AND agent_id = ?"
        sql = (
            f"SELECT {_COLUMNS} FROM records WHERE user_id = ? AND session_id = ? "
            f"AND seq BETWEEN ? AND ? AND kind = 'turn'{agent} ORDER BY seq"
        )
        extra = () if scope.agent_id is None else (scope.agent_id,)

        def run(conn: sqlite3.Connection) -> list[MemoryRecord]:
            out: list[MemoryRecord] = []
            for sid, lo, hi in ranges:
                rows = conn.execute(sql, (scope.user_id, sid, lo, hi, *extra)).fetchall()
                out.extend(_row_to_record(r) for r in rows)
            return out

        return await self._run(run)

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        Scope(user_id)
        sql = (
            "SELECT session_id, COUNT(*), MIN(created_us), MAX(created_us), COALESCE(MAX(seq), 0) "
            "FROM records WHERE user_id = ? GROUP BY session_id ORDER BY MIN(created_us)"
        )

        def run(conn: sqlite3.Connection) -> list[SessionInfo]:
            return [
                SessionInfo(user_id, sid or None, n, _from_us(lo), _from_us(hi), last)
                for sid, n, lo, hi, last in conn.execute(sql, (user_id,))
            ]

        return await self._run(run)

    async def list_users(self) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM records ORDER BY 1")]

        return await self._run(run)

    async def stats(self, user_id: str | None = None) -> StoreStats:
        where, params = ("user_id = ?", [user_id]) if user_id is not None else ("1", [])

        def run(conn: sqlite3.Connection) -> StoreStats:
            users, sessions = conn.execute(
                "SELECT COUNT(DISTINCT user_id), "
                f"COUNT(DISTINCT user_id || char(31) || session_id) FROM records WHERE {where}",
                params,
            ).fetchone()
            by_kind = dict(
                conn.execute(
                    f"SELECT kind, COUNT(*) FROM records WHERE {where} GROUP BY kind", params
                ).fetchall()
            )
            return StoreStats(users, sessions, sum(by_kind.values()), by_kind)

        return await self._run(run)

    async def analyze(self) -> None:
        """Refresh the query planner's statistics where they are stale (``PRAGMA optimize``).

        The counterpart of :meth:`PostgresMemoryStore.analyze`, for callers that bulk-load any
        store. Searches here go through the FTS5 index, which keeps no planner statistics, so
        this mostly helps the reads by session.
        """

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA optimize")

        await self._run(run, write=True)

    async def integrity_check(self) -> list[str]:
        """Run SQLite's integrity check and FTS5's; returns problems found (empty when sound)."""

        def run(conn: sqlite3.Connection) -> list[str]:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
            try:
                conn.execute("INSERT INTO units(units) VALUES ('integrity-check')")
            except sqlite3.DatabaseError as exc:
                problems.append(f"fts: {exc}")
            return problems

        return await self._run(run)


# -- helpers (run on the worker thread) ---------------------------------------------------------


def _scope_where(scope: Scope) -> tuple[str, list[Any]]:
    where = "user_id = ?"
    params: list[Any] = [scope.user_id]
    if scope.agent_id is not None:
        where += " AND agent_id = ?"
        params.append(scope.agent_id)
    if scope.session_id is not None:
        where += " AND session_id = ?"
        params.append(scope.session_id)
    return where, params


def _parse_span(span: str | None, length: int) -> tuple[int, int] | None:
    if not span:
        return None
    s, e = (int(x) for x in span.split(":"))
    if s == 0 and e >= length:
        return None
    return (s, e)


def _fetch_by_rowid(conn: sqlite3.Connection, rowids: Iterable[int]) -> dict[int, MemoryRecord]:
    ids = list(rowids)
    out: dict[int, MemoryRecord] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        q = f"SELECT {_COLUMNS} FROM records WHERE rowid IN ({','.join('?' * len(chunk))})"
        for row in conn.execute(q, chunk):
            out[row[0]] = _row_to_record(row)
    return out


def _insert(conn: sqlite3.Connection, batch: list[MemoryRecord]) -> list[MemoryRecord]:
    """Insert a batch inside the caller's write transaction (``BEGIN IMMEDIATE`` held).

    Because the write lock is held, reading ``max(rowid)`` and the sessions' last ``seq`` and then
    inserting is race-free across processes; rows go in with two ``executemany`` calls.
    """
    # 1. Idempotency: records whose (user, key) is stored already are returned as stored.
    existing: dict[tuple[str, str], MemoryRecord] = {}
    by_user: dict[str, list[str]] = {}
    for r in batch:
        by_user.setdefault(r.user_id, []).append(r.key)
    for user, keys in by_user.items():
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT {_COLUMNS} FROM records WHERE user_id = ? AND key IN ({marks})"
            for row in conn.execute(q, [user, *chunk]):
                existing[(user, row[11])] = _row_to_record(row)

    # 2. Sequence numbers, rowids and the previous turn of each session (indexed as context).
    next_rowid = conn.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM records").fetchone()[0]
    next_seq: dict[tuple[str, str], int] = {}
    prev_text: dict[tuple[str, str], str | None] = {}
    used_seq: set[tuple[str, str, int]] = set()
    out: list[MemoryRecord] = []
    record_rows: list[tuple[Any, ...]] = []
    unit_rows: list[tuple[Any, ...]] = []
    for r in batch:
        k = (r.user_id, r.key)
        if k in existing:
            out.append(existing[k])
            continue
        sess = (r.user_id, r.session_id or "")
        if r.kind == "turn" and sess not in next_seq:
            row = conn.execute(
                "SELECT seq, text FROM records WHERE user_id = ? AND session_id = ? "
                "AND kind = 'turn' ORDER BY seq DESC LIMIT 1",
                sess,
            ).fetchone()
            next_seq[sess] = (row[0] + 1) if row else 1
            prev_text[sess] = row[1] if row else None
        rec = r
        if r.kind == "turn":
            if r.seq is None:
                rec = _with_seq(r, next_seq[sess])
            seq_key = (sess[0], sess[1], rec.seq or 0)
            if seq_key in used_seq:
                raise StoreConflictError(
                    f"two turns with seq {rec.seq} in session {rec.session_id!r} in one batch"
                )
            used_seq.add(seq_key)
            next_seq[sess] = max(next_seq[sess], (rec.seq or 0) + 1)
        rowid = next_rowid
        next_rowid += 1
        record_rows.append(
            (
                rowid,
                rec.id,
                rec.user_id,
                rec.agent_id,
                rec.session_id or "",
                rec.kind,
                rec.role,
                rec.text,
                json.dumps(rec.item, ensure_ascii=False) if rec.item is not None else None,
                _to_us(rec.created_at),
                rec.seq,
                rec.key,
                json.dumps(rec.meta, ensure_ascii=False) if rec.meta else "{}",
            )
        )
        scope_tokens = _scope_tokens(rec.user_id, rec.agent_id, rec.session_id or "", rec.kind)
        units = index_units(
            rec.text,
            prev_text.get(sess) if rec.kind == "turn" else None,
            speaker=rec.meta.get("speaker"),
            max_units=UNITS_PER_RECORD,
        )
        unit_rows.extend(
            (rowid * UNITS_PER_RECORD + i, scope_tokens, u.body, u.context, f"{u.start}:{u.end}")
            for i, u in enumerate(units)
        )
        if rec.kind == "turn":
            prev_text[sess] = rec.text
        existing[k] = rec
        out.append(rec)
    try:
        conn.executemany(
            f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", record_rows
        )
    except sqlite3.IntegrityError as exc:
        raise StoreConflictError(
            f"a record conflicts with a stored one (duplicate id or turn seq): {exc}"
        ) from exc
    conn.executemany(
        "INSERT INTO units (rowid, scope, body, context, span) VALUES (?,?,?,?,?)", unit_rows
    )
    return out
