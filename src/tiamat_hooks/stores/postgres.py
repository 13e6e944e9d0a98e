"""The server store: PostgreSQL through an asyncpg pool, ``tsvector`` full-text search.

Install with ``pip install 'tiamat-hooks[postgres]'``; ``import tiamat_hooks`` never imports
asyncpg, this module imports it only when a store is built.

Layout (all tables live in one Postgres schema, ``tiamat_hooks`` unless configured):

* ``records`` mirrors the SQLite table: one row per record, ``session_id`` is ``''`` when the
  record has no session, ``item``/``meta`` are ``json`` (kept verbatim; unlike ``jsonb`` it
  accepts ``\\u0000`` escapes, which tool outputs do contain).
* ``units`` holds the searchable units of each record (see
  :func:`tiamat_hooks.text.index_units`): the unit's character span and a ``tsvector`` with the
  unit's own words at weight A and its context (the previous short turn) at weight B. Units carry
  the record's user/agent/session/kind so a search filters on the index side without a join.
  Units go away with their record (``ON DELETE CASCADE``).
* ``schema_version`` records which of :data:`MIGRATIONS` have run.

Concurrency: every write is one transaction. Before reading a session's last sequence number a
writer takes a transaction-scoped advisory lock on that session, so any number of processes can
append to one session and sequence numbers stay gap-free. Migrations run under an advisory lock
too, so processes that start together migrate exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    ConfigError,
    InvalidInputError,
    InvalidRecordError,
    StoreConflictError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    TiamatError,
)
from ..models import (
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

if TYPE_CHECKING:  # pragma: no cover
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    _Conn = PoolConnectionProxy[asyncpg.Record]

__all__ = ["DEFAULT_SCHEMA", "MIGRATIONS", "PostgresMemoryStore"]

DEFAULT_SCHEMA = "tiamat_hooks"

_INSTALL_HINT = "PostgresMemoryStore needs asyncpg: pip install 'tiamat-hooks[postgres]'"

# Lower case only: the name is always double-quoted in SQL, and a lower-case name means the same
# schema whether someone else's SQL quotes it or not. ``pg_`` is reserved by Postgres.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_TS_CONFIG = "english"
# ts_rank weights for {D, C, B, A}: the unit's own words (A) count fully, its context (B) a bit
# more than half, as in the SQLite store's BM25 column weights.
_RANK = "ts_rank_cd('{0.1, 0.2, 0.6, 1.0}'::float4[], u.tsv, q.q, 1)"

_WRITE_ATTEMPTS = 5
"""How often one ``add`` transaction is tried when it loses a race (deadlock, key race)."""

# Append-only: the index of a script is the schema version it produces (version = index + 1).
# ``{s}`` is the quoted schema name.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.records (
        rowid bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        user_id text NOT NULL,
        agent_id text,
        session_id text NOT NULL,          -- '' when the record has no session
        kind text NOT NULL,
        role text,
        text text NOT NULL,
        item json,
        created_at timestamptz NOT NULL,
        seq bigint,
        key text NOT NULL,
        meta json NOT NULL DEFAULT '{{}}'
    );
    CREATE UNIQUE INDEX records_key ON {s}.records (user_id, key);
    CREATE INDEX records_session ON {s}.records (user_id, session_id, seq);
    CREATE UNIQUE INDEX records_turn_seq ON {s}.records (user_id, session_id, seq)
        WHERE kind = 'turn';
    CREATE TABLE {s}.units (
        record_rowid bigint NOT NULL REFERENCES {s}.records (rowid) ON DELETE CASCADE,
        unit integer NOT NULL,
        user_id text NOT NULL,
        agent_id text,
        session_id text NOT NULL,
        kind text NOT NULL,
        span_start integer NOT NULL,
        span_end integer NOT NULL,
        tsv tsvector NOT NULL,
        PRIMARY KEY (record_rowid, unit)
    );
    CREATE INDEX units_tsv ON {s}.units USING gin (tsv);
    CREATE INDEX units_scope ON {s}.units (user_id, kind, session_id);
    """,
)

_COLUMNS = "r.rowid, r.id, r.user_id, r.agent_id, r.session_id, r.kind, r.role, r.text, r.item, "
_COLUMNS += "r.created_at, r.seq, r.key, r.meta"


class _KeyRace(StoreConflictError):
    """Another transaction stored one of our keys between our check and our insert."""


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(_INSTALL_HINT) from exc


def _check_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"invalid Postgres schema name {schema!r}: use 1-63 lower-case letters, digits and "
            "underscores, not starting with a digit"
        )
    if schema.startswith("pg_"):
        raise ConfigError(f"invalid Postgres schema name {schema!r}: 'pg_' names are reserved")
    return schema


def _lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key. Stable across processes and Python versions."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _map_error(exc: BaseException, *, connecting: bool = False) -> TiamatError | None:
    """The package error for a driver/OS error, or ``None`` when ``exc`` is not one of ours to map.

    The only place asyncpg and socket errors are translated; callers chain with ``from exc``.
    While ``connecting``, every failure (refused, unresolvable host, timeout, bad credentials)
    means the store cannot be reached.
    """
    import asyncpg

    if isinstance(exc, TiamatError):
        return None
    msg = f"Postgres: {type(exc).__name__}: {exc}"
    driver_errors = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
    if connecting and isinstance(exc, driver_errors):
        return StoreUnavailableError(f"cannot connect to {msg}")
    if isinstance(exc, UnicodeEncodeError):
        return InvalidInputError(f"text that is not valid Unicode cannot be stored: {exc}")
    # QueryCanceledError (statement_timeout) subclasses OperatorInterventionError: test it first.
    if isinstance(
        exc,
        (
            asyncio.TimeoutError,
            asyncpg.QueryCanceledError,
            asyncpg.LockNotAvailableError,
            asyncpg.TransactionTimeoutError,
            asyncpg.IdleInTransactionSessionTimeoutError,
        ),
    ):
        return StoreTimeoutError(msg)
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.OperatorInterventionError,
            asyncpg.InsufficientResourcesError,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError,
            asyncpg.ConnectionDoesNotExistError,
        ),
    ):
        return StoreUnavailableError(msg)
    if isinstance(
        exc,
        (
            asyncpg.IntegrityConstraintViolationError,
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
        ),
    ):
        return StoreConflictError(msg)
    if isinstance(exc, asyncpg.DataError):
        return InvalidInputError(msg)
    if isinstance(
        exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    ):
        return StoreError(msg)
    return None


def _is_retryable(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, (_KeyRace, asyncpg.DeadlockDetectedError, asyncpg.SerializationError))


def _row_to_record(row: Any, offset: int = 0) -> MemoryRecord:
    r = row[offset : offset + 13] if offset else row
    return MemoryRecord.model_construct(
        id=r[1],
        user_id=r[2],
        agent_id=r[3],
        session_id=r[4] or None,
        kind=r[5],
        role=r[6],
        text=r[7],
        item=json.loads(r[8]) if r[8] is not None else None,
        created_at=r[9],
        seq=r[10],
        key=r[11],
        meta=json.loads(r[12]),
    )


def _encode(rec: MemoryRecord) -> tuple[str | None, str]:
    """``(item_json, meta_json)``; raises :class:`InvalidRecordError` for what Postgres rejects."""
    try:
        item = json.dumps(rec.item, ensure_ascii=False) if rec.item is not None else None
        meta = json.dumps(rec.meta, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"record {rec.id!r}: item/meta is not JSON: {exc}") from exc
    # Postgres text cannot hold NUL and asyncpg sends UTF-8; check before any write starts.
    for name, value in (("key", rec.key), ("role", rec.role), ("text", rec.text), ("id", rec.id)):
        if value is not None and "\x00" in value:
            raise InvalidRecordError(f"record {rec.id!r}: {name} contains a NUL character")
    try:
        for value in (rec.user_id, rec.agent_id, rec.session_id, rec.key, rec.role, rec.text):
            if value is not None:
                value.encode("utf-8")
        for value in (rec.id, item, meta):
            if value is not None:
                value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecordError(f"record {rec.id!r}: not valid Unicode: {exc}") from exc
    return item, meta


def _span(start: int, end: int, length: int) -> tuple[int, int] | None:
    if start == 0 and end >= length:
        return None
    return (start, end)


class PostgresMemoryStore:
    """The Postgres store. ``PostgresMemoryStore(pool)`` or ``PostgresMemoryStore.from_url(url)``.

    Args:
        pool: a ready ``asyncpg.Pool``. The store uses it but does not own it: ``close()`` leaves
            it open.
        schema: the Postgres schema holding the tables; created (with the tables) on first use.
            1-63 lower-case letters, digits and underscores.

    No I/O happens in the constructor. The first operation creates the schema and applies pending
    migrations.

    Raises:
        ConfigError: the schema name is invalid.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], *, schema: str = DEFAULT_SCHEMA) -> None:
        self._setup(schema)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = pool
        self._owns_pool = False

    def _setup(self, schema: str) -> None:
        self.schema = _check_schema(schema)
        self._s = f'"{self.schema}"'
        self._dsn = ""
        self._pool_options: dict[str, Any] = {}
        self._ready_lock = asyncio.Lock()
        self._migrated = False
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        **options: Any,
    ) -> PostgresMemoryStore:
        """A store that creates and owns its pool, connecting on first use.

        ``url`` is a ``postgresql://`` (or ``postgres://``) DSN. A ``schema`` query parameter
        (``...?schema=memory``) names the schema when the ``schema`` argument is not given;
        the default is ``tiamat_hooks``. ``options`` go to ``asyncpg.create_pool`` (for example
        ``timeout`` for connecting, ``command_timeout``, ``server_settings``).

        Raises:
            ConfigError: asyncpg is not installed, the URL is not a Postgres URL, the schema name
                or the pool sizes are invalid.
        """
        _require_asyncpg()
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"not a Postgres URL: {url!r}")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgres", "postgresql"):
            raise ConfigError(f"not a Postgres URL (scheme {parts.scheme!r}): use postgresql://")
        query = parse_qsl(parts.query, keep_blank_values=True)
        url_schema = [v for k, v in query if k == "schema"]
        if schema is None:
            schema = url_schema[-1] if url_schema else DEFAULT_SCHEMA
        elif url_schema and url_schema[-1] != schema:
            raise ConfigError(
                f"schema {schema!r} contradicts the URL's schema={url_schema[-1]!r}; give one"
            )
        dsn = urlunsplit(
            parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"]))
        )
        if (
            not (
                isinstance(min_size, int)
                and isinstance(max_size, int)
                and 0 <= min_size <= max_size
            )
            or max_size < 1
        ):
            raise ConfigError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        store = cls.__new__(cls)
        store._setup(schema)
        store._pool = None
        store._owns_pool = True
        store._dsn = dsn
        store._pool_options = {"min_size": min_size, "max_size": max_size, **options}
        return store

    def __repr__(self) -> str:
        # No DSN: it may carry a password.
        return f"PostgresMemoryStore(schema={self.schema!r}, owns_pool={self._owns_pool})"

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(can_delete=True, max_search_limit=1000, neighbors=True)

    # -- plumbing ---------------------------------------------------------------------------

    async def _ready(self) -> asyncpg.Pool[asyncpg.Record]:
        """The pool, created (when owned) and migrated on first use."""
        if self._closed:
            raise StoreUnavailableError("store is closed")
        if self._pool is not None and self._migrated:
            return self._pool
        async with self._ready_lock:
            if self._closed:
                raise StoreUnavailableError("store is closed")
            if self._pool is None:
                import asyncpg

                try:
                    self._pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
                except Exception as exc:
                    mapped = _map_error(exc, connecting=True)
                    if mapped is None:
                        raise
                    raise mapped from exc
            if not self._migrated:
                async with self._pool.acquire() as conn, conn.transaction():
                    await self._migrate(conn)
                self._migrated = True
            return self._pool

    async def _version(self, conn: _Conn) -> int:
        table = await conn.fetchval("SELECT to_regclass($1)", f"{self._s}.schema_version")
        if table is None:
            return 0
        version = await conn.fetchval(f"SELECT max(version) FROM {self._s}.schema_version")
        return int(version or 0)

    async def _migrate(self, conn: _Conn) -> None:
        # Existence is checked before every CREATE: CREATE ... IF NOT EXISTS still needs the
        # CREATE privilege, which a role using a schema its DBA set up may lack. An up-to-date
        # schema is recognised without the lock, so ordinary starts neither wait nor write.
        if await self._version(conn) == len(MIGRATIONS):
            return
        # Serialises concurrent starters: the others wait here, then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key("migrate", self.schema))
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema):
            await conn.execute(f"CREATE SCHEMA {self._s}")
        version = await self._version(conn)
        if version == 0:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        if version > len(MIGRATIONS):
            raise StoreError(
                f"schema {self.schema!r} is at version {version}, newer than this tiamat-hooks "
                f"understands ({len(MIGRATIONS)}); upgrade tiamat-hooks"
            )
        for index in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[index].format(s=self._s))
            await conn.execute(
                f"INSERT INTO {self._s}.schema_version (version) VALUES ($1)", index + 1
            )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        """A pooled connection; driver errors leaving the block become package errors."""
        try:
            pool = await self._ready()
            async with pool.acquire() as conn:
                yield conn
        except Exception as exc:
            mapped = _map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def close(self) -> None:
        """Close the pool if this store created it; a pool passed in stays open. Idempotent."""
        async with self._ready_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    # -- writes -----------------------------------------------------------------------------

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        batch = list(records)
        for r in batch:
            if not isinstance(r, MemoryRecord):
                raise InvalidInputError(f"add() takes MemoryRecord objects, got {type(r).__name__}")
        if not batch:
            return []
        encoded = [_encode(r) for r in batch]
        async with self._connection() as conn:
            for attempt in range(1, _WRITE_ATTEMPTS + 1):
                try:
                    async with conn.transaction():
                        return await self._insert(conn, batch, encoded)
                except Exception as exc:
                    # The whole batch rolled back, so trying again cannot duplicate anything.
                    if attempt == _WRITE_ATTEMPTS or not _is_retryable(exc):
                        raise
                await asyncio.sleep(random.uniform(0.0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _insert(
        self, conn: _Conn, batch: list[MemoryRecord], encoded: list[tuple[str | None, str]]
    ) -> list[MemoryRecord]:
        s = self._s
        # 1. Lock every session that receives turns, in key order: two writers that share
        # sessions lock them in the same order and so cannot deadlock on them.
        sessions = sorted({(r.user_id, r.session_id or "") for r in batch if r.kind == "turn"})
        for key in sorted({_lock_key("seq", self.schema, u, sid) for u, sid in sessions}):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)

        # 2. Idempotency: records whose (user, key) is stored already are returned as stored.
        existing: dict[tuple[str, str], MemoryRecord] = {}
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM {s}.records r "
            "JOIN unnest($1::text[], $2::text[]) AS b(u, k) ON r.user_id = b.u AND r.key = b.k",
            [r.user_id for r in batch],
            [r.key for r in batch],
        )
        for row in rows:
            existing[(row[2], row[11])] = _row_to_record(row)

        # 3. Last turn of each session: its seq continues, its text is the next turn's context.
        # Read after the lock, so no other writer can be between this read and our commit.
        next_seq: dict[tuple[str, str], int] = {}
        prev_text: dict[tuple[str, str], str | None] = {}
        if sessions:
            last = await conn.fetch(
                "SELECT b.u, b.sid, t.seq, t.text "
                "FROM unnest($1::text[], $2::text[]) AS b(u, sid) "
                f"LEFT JOIN LATERAL (SELECT seq, text FROM {s}.records WHERE user_id = b.u "
                "AND session_id = b.sid AND kind = 'turn' AND seq IS NOT NULL "
                "ORDER BY seq DESC LIMIT 1) t ON true",
                [u for u, _ in sessions],
                [sid for _, sid in sessions],
            )
            for u, sid, seq, text in last:
                next_seq[(u, sid)] = (seq + 1) if seq is not None else 1
                prev_text[(u, sid)] = text

        # 4. Decide every new record (seq, context) in batch order, as the SQLite store does.
        out: list[MemoryRecord | None] = []
        new: list[tuple[MemoryRecord, str | None, str, str | None]] = []
        for r, (item, meta) in zip(batch, encoded, strict=True):
            k = (r.user_id, r.key)
            if k in existing:
                out.append(existing[k])
                continue
            sess = (r.user_id, r.session_id or "")
            rec = r
            context: str | None = None
            if r.kind == "turn":
                if r.seq is None:
                    rec = r.model_copy(update={"seq": next_seq[sess]})
                next_seq[sess] = max(next_seq[sess], (rec.seq or 0) + 1)
                context = prev_text[sess]
                prev_text[sess] = rec.text
            existing[k] = rec
            out.append(None)
            new.append((rec, item, meta, context))
        if not new:
            return [r for r in out if r is not None]

        # 5. One INSERT for the records, one for their units.
        recs = [n[0] for n in new]
        inserted = await conn.fetch(
            f"INSERT INTO {s}.records (id, user_id, agent_id, session_id, kind, role, text, "
            "item, created_at, seq, key, meta) "
            "SELECT id, u, a, sid, kind, role, txt, item, ts, seq, key, meta FROM unnest("
            "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::json[], $9::timestamptz[], $10::bigint[], $11::text[], "
            "$12::json[]) WITH ORDINALITY "
            "AS b(id, u, a, sid, kind, role, txt, item, ts, seq, key, meta, ord) "
            "ORDER BY ord "
            "ON CONFLICT (user_id, key) DO NOTHING RETURNING rowid, user_id, key",
            [r.id for r in recs],
            [r.user_id for r in recs],
            [r.agent_id for r in recs],
            [r.session_id or "" for r in recs],
            [r.kind for r in recs],
            [r.role for r in recs],
            [r.text for r in recs],
            [n[1] for n in new],
            [r.created_at for r in recs],
            [r.seq for r in recs],
            [r.key for r in recs],
            [n[2] for n in new],
        )
        if len(inserted) != len(recs):
            # A concurrent writer committed one of our keys after step 2 (it wrote another
            # session, so our lock did not stop it). Retrying sees its row and returns it.
            raise _KeyRace("a concurrent writer stored the same key; retry")
        rowid_of = {(row[1], row[2]): row[0] for row in inserted}

        unit_rows: list[tuple[Any, ...]] = []
        for rec, _item, _meta, context in new:
            rowid = rowid_of[(rec.user_id, rec.key)]
            units = index_units(rec.text, context, speaker=rec.meta.get("speaker"))
            for i, u in enumerate(units):
                unit_rows.append((rowid, i, u.start, u.end, u.body, u.context, rec))
        await conn.execute(
            f"INSERT INTO {s}.units (record_rowid, unit, user_id, agent_id, session_id, kind, "
            "span_start, span_end, tsv) "
            f"SELECT rid, n, u, a, sid, kind, ss, se, "
            f"setweight(to_tsvector('{_TS_CONFIG}', body), 'A') || "
            f"setweight(to_tsvector('{_TS_CONFIG}', ctx), 'B') "
            "FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::text[], "
            "$6::text[], $7::integer[], $8::integer[], $9::text[], $10::text[]) "
            "AS b(rid, n, u, a, sid, kind, ss, se, body, ctx)",
            [row[0] for row in unit_rows],
            [row[1] for row in unit_rows],
            [row[6].user_id for row in unit_rows],
            [row[6].agent_id for row in unit_rows],
            [row[6].session_id or "" for row in unit_rows],
            [row[6].kind for row in unit_rows],
            [row[2] for row in unit_rows],
            [row[3] for row in unit_rows],
            [row[4] for row in unit_rows],
            [row[5] for row in unit_rows],
        )
        fresh = iter(recs)
        return [r if r is not None else next(fresh) for r in out]

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        where, params = _scope_where(scope)
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return 0
            params.append(id_list)
            where += f" AND id = ANY(${len(params)}::text[])"
        async with self._connection() as conn:
            # Units follow by ON DELETE CASCADE, in the same statement.
            count = await conn.fetchval(
                f"WITH d AS (DELETE FROM {self._s}.records r WHERE {where} RETURNING 1) "
                "SELECT count(*) FROM d",
                *params,
            )
        return int(count)

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
        kind_list = list(kinds)
        limit = max(0, min(int(limit), self.capabilities.max_search_limit))
        if not terms or not kind_list or limit == 0:
            return []
        params: list[Any] = [scope.user_id, kind_list, limit]
        where = "u.user_id = $1 AND u.kind = ANY($2::text[])"
        if scope.agent_id is not None:
            params.append(scope.agent_id)
            where += f" AND u.agent_id = ${len(params)}"
        if scope.session_id is not None:
            params.append(scope.session_id)
            where += f" AND u.session_id = ${len(params)}"
        # Each term is a bound parameter parsed as plain text, OR-ed together: no user text is
        # ever read as tsquery syntax. A term that is a stop word yields an empty tsquery, which
        # || ignores; when all are empty numnode() is 0 and nothing matches.
        ors = []
        for term in terms:
            params.append(term)
            ors.append(f"plainto_tsquery('{_TS_CONFIG}', ${len(params)})")
        sql = (
            f"WITH q AS (SELECT {' || '.join(ors)} AS q), "
            "best AS ("
            f"  SELECT DISTINCT ON (u.record_rowid) u.record_rowid, u.span_start, u.span_end, "
            f"  {_RANK} AS score "
            f"  FROM {self._s}.units u CROSS JOIN q "
            f"  WHERE numnode(q.q) > 0 AND u.tsv @@ q.q AND {where} "
            "  ORDER BY u.record_rowid, score DESC, u.unit"
            ") "
            f"SELECT b.score, b.span_start, b.span_end, {_COLUMNS} "
            f"FROM best b JOIN {self._s}.records r ON r.rowid = b.record_rowid "
            "WHERE b.score > 0 ORDER BY b.score DESC, r.rowid LIMIT $3"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *params)
        hits = []
        for row in rows:
            rec = _row_to_record(row, offset=3)
            hits.append(SearchHit(rec, float(row[0]), _span(row[1], row[2], len(rec.text))))
        return hits

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
        if kinds is not None:
            kind_list = list(kinds)
            if not kind_list:
                return []
            params.append(kind_list)
            where += f" AND kind = ANY(${len(params)}::text[])"
        if seq_from is not None:
            params.append(seq_from)
            where += f" AND seq >= ${len(params)}"
        if seq_to is not None:
            params.append(seq_to)
            where += f" AND seq <= ${len(params)}"
        d = "DESC" if newest else "ASC"
        # Same order as SQLite: byte order of session ids (COLLATE "C"), then turns by seq, then
        # records without seq (summaries, facts) by time, then insertion order.
        order = (
            f'r.session_id COLLATE "C" {d}, (r.seq IS NULL) {d}, r.seq {d}, r.created_at {d}, '
            f"r.rowid {d}"
        )
        sql = f"SELECT {_COLUMNS} FROM {self._s}.records r WHERE {where} ORDER BY {order}"
        if limit is not None:
            params.append(max(0, int(limit)))
            sql += f" LIMIT ${len(params)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *params)
        out = [_row_to_record(row) for row in rows]
        if newest:
            out.reverse()
        return out

    async def read_around(
        self, scope: Scope, refs: Sequence[tuple[str | None, int]], *, radius: int = 1
    ) -> list[MemoryRecord]:
        """Turns within ``radius`` of each ``(session_id, seq)`` in one call (optional capability).

        Same semantics as :meth:`SQLiteMemoryStore.read_around`: results are unique, in
        ``(session_id, seq)`` order, limited to the scope's user (and agent when set); the
        sessions come from ``refs``.
        """
        pairs = list(dict.fromkeys(refs))
        if not pairs:
            return []
        where, params = _scope_where(Scope(scope.user_id, agent_id=scope.agent_id))
        n = len(params)
        params.append([sid or "" for sid, _ in pairs])
        params.append([seq - radius for _, seq in pairs])
        params.append([seq + radius for _, seq in pairs])
        # A LATERAL lookup per window walks the (user_id, session_id, seq) index directly. An
        # IN (semi-join) form was planned as a nested loop over the user's records whenever
        # table statistics were missing, which made recall quadratic in the user's history.
        sql = (
            f"SELECT {_COLUMNS} FROM unnest(${n + 1}::text[], ${n + 2}::bigint[], "
            f"${n + 3}::bigint[]) AS w(sid, lo, hi) CROSS JOIN LATERAL ("
            f"SELECT * FROM {self._s}.records r WHERE {where} AND r.session_id = w.sid "
            "AND r.kind = 'turn' AND r.seq BETWEEN w.lo AND w.hi) AS r"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *params)
        # Windows may overlap: keep each record once. Python's str order is code-point order,
        # the same as the "C" collation the other reads sort by.
        unique = {row["rowid"]: row for row in rows}
        ordered = sorted(unique.values(), key=lambda row: (row["session_id"], row["seq"]))
        return [_row_to_record(row) for row in ordered]

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        """The user's sessions, oldest first. ``last_seq`` is 0 for a session without seqs."""
        Scope(user_id)
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT session_id, count(*), min(created_at), max(created_at), "
                f"COALESCE(max(seq), 0) FROM {self._s}.records WHERE user_id = $1 "
                'GROUP BY session_id ORDER BY min(created_at), session_id COLLATE "C"',
                user_id,
            )
        return [
            SessionInfo(user_id, sid or None, n, lo, hi, int(last)) for sid, n, lo, hi, last in rows
        ]

    async def list_users(self) -> list[str]:
        """Every user with at least one record, in byte order of the id."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT user_id FROM {self._s}.records "
                'GROUP BY user_id ORDER BY user_id COLLATE "C"'
            )
        return [row[0] for row in rows]

    async def stats(self, user_id: str | None = None) -> StoreStats:
        where, params = ("user_id = $1", [user_id]) if user_id is not None else ("true", [])
        async with self._connection() as conn:
            counts = await conn.fetchrow(
                "SELECT count(DISTINCT user_id), count(DISTINCT (user_id, session_id)) "
                f"FROM {self._s}.records WHERE {where}",
                *params,
            )
            rows = await conn.fetch(
                f"SELECT kind, count(*) FROM {self._s}.records WHERE {where} GROUP BY kind", *params
            )
        assert counts is not None  # an aggregate without GROUP BY returns one row
        by_kind = {kind: int(n) for kind, n in rows}
        return StoreStats(int(counts[0]), int(counts[1]), sum(by_kind.values()), by_kind)

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the store's tables (``ANALYZE``).

        Autovacuum does this on a normal server. Call it after a bulk load when autovacuum is
        off or has not caught up: without statistics the planner may pick a full-text plan that
        makes searches several times slower (at 1M turns ``bench latency`` measured a search p50 of
        53 ms without statistics and 9 ms with them). ``import`` and ``migrate`` call it.
        """
        async with self._connection() as conn:
            await conn.execute(f"ANALYZE {self._s}.records")
            await conn.execute(f"ANALYZE {self._s}.units")

    async def integrity_check(self) -> list[str]:
        """Check the invariants the schema alone does not enforce; returns problems (empty: sound).

        Checked: the schema version, invalid indexes, every record has units numbered ``0..n-1``
        whose spans start at 0 and end at the text's end, units agree with their record's scope,
        every turn has a seq and no two turns of a session share one.
        """
        s = self._s
        checks = [
            (
                "record without index units",
                f"SELECT r.id FROM {s}.records r WHERE NOT EXISTS "
                f"(SELECT 1 FROM {s}.units u WHERE u.record_rowid = r.rowid)",
            ),
            (
                "units not numbered 0..n-1 or not covering the text",
                f"SELECT r.id FROM {s}.records r JOIN {s}.units u ON u.record_rowid = r.rowid "
                "GROUP BY r.rowid, r.id, r.text HAVING min(u.unit) <> 0 "
                "OR max(u.unit) <> count(*) - 1 OR min(u.span_start) <> 0 "
                "OR max(u.span_end) <> char_length(r.text)",
            ),
            (
                "units whose scope differs from their record",
                f"SELECT DISTINCT r.id FROM {s}.records r JOIN {s}.units u "
                "ON u.record_rowid = r.rowid WHERE u.user_id <> r.user_id OR u.kind <> r.kind "
                "OR u.session_id <> r.session_id OR u.agent_id IS DISTINCT FROM r.agent_id",
            ),
            (
                "turn without seq",
                f"SELECT id FROM {s}.records WHERE kind = 'turn' AND seq IS NULL",
            ),
            (
                "turn seq used twice in a session",
                f"SELECT user_id || '/' || session_id || '#' || seq FROM {s}.records "
                "WHERE kind = 'turn' GROUP BY user_id, session_id, seq HAVING count(*) > 1",
            ),
        ]
        problems: list[str] = []
        async with self._connection() as conn:
            version = await conn.fetchval(f"SELECT max(version) FROM {s}.schema_version")
            if version != len(MIGRATIONS):
                problems.append(f"schema version {version}, expected {len(MIGRATIONS)}")
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND NOT (i.indisvalid AND i.indisready)",
                self.schema,
            ):
                problems.append(f"invalid index: {row[0]}")
            for label, sql in checks:
                for row in await conn.fetch(sql + " LIMIT 20"):
                    problems.append(f"{label}: {row[0]}")
        return problems


def _scope_where(scope: Scope) -> tuple[str, list[Any]]:
    where = "r.user_id = $1"
    params: list[Any] = [scope.user_id]
    if scope.agent_id is not None:
        params.append(scope.agent_id)
        where += f" AND r.agent_id = ${len(params)}"
    if scope.session_id is not None:
        params.append(scope.session_id)
        where += f" AND r.session_id = ${len(params)}"
    return where, params
