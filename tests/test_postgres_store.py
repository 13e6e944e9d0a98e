"""Postgres-specific behaviour beyond the shared contract (which runs in ``tests/contract``).

Tests marked ``postgres`` need the server at ``TIAMAT_TEST_POSTGRES_URL``: they skip when it is
unreachable and fail in CI. The others (configuration, error mapping, unreachable servers) need
no server at all.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import POSTGRES_SCHEMA, POSTGRES_URL, need_postgres, new_id
from tiamat_hooks.errors import (
    ConfigError,
    InvalidInputError,
    InvalidRecordError,
    StoreConflictError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    TiamatError,
)
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore, open_store
from tiamat_hooks.stores.postgres import MIGRATIONS, PostgresMemoryStore, _map_error

# -- no server needed ------------------------------------------------------------------------------


def test_import_tiamat_hooks_does_not_import_asyncpg() -> None:
    code = (
        "import sys, tiamat_hooks, tiamat_hooks.stores; "
        "sys.exit(1 if 'asyncpg' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes `import asyncpg` fail
    with pytest.raises(ConfigError, match=r"tiamat-hooks\[postgres\]"):
        PostgresMemoryStore.from_url("postgresql://localhost/db")


@pytest.mark.parametrize(
    "schema",
    [
        "",
        "Upper",
        "1starts_with_digit",
        "has-dash",
        'x"; DROP SCHEMA public; --',
        "pg_catalog",
        "a" * 64,
        "spa ce",
        "ünï",
    ],
)
def test_invalid_schema_names_are_config_errors(schema: str) -> None:
    with pytest.raises(ConfigError):
        PostgresMemoryStore.from_url("postgresql://localhost/db", schema=schema)
    with pytest.raises(ConfigError):
        PostgresMemoryStore.from_url(f"postgresql://localhost/db?schema={schema}")


def test_valid_schema_names_are_accepted_without_io() -> None:
    # An address that would fail if anything connected: constructors do no I/O.
    url = "postgresql://nobody@unreachable.invalid:1/db"
    assert PostgresMemoryStore.from_url(url, schema="memory_2").schema == "memory_2"
    assert PostgresMemoryStore.from_url(url + "?schema=from_url").schema == "from_url"
    assert PostgresMemoryStore.from_url(url).schema == "tiamat_hooks"
    assert isinstance(open_store(url + "?schema=via_open_store"), PostgresMemoryStore)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("postgresql://localhost/db?schema=a", {"schema": "b"}),
        ("mysql://localhost/db", {}),
        ("localhost/db", {}),
        ("postgresql://localhost/db", {"min_size": 5, "max_size": 2}),
        ("postgresql://localhost/db", {"max_size": 0}),
        ("postgresql://localhost/db", {"min_size": -1}),
    ],
)
def test_bad_configuration_is_config_error(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PostgresMemoryStore.from_url(url, **options)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "host", [f"127.0.0.1:{_closed_port()}", "no-such-host.invalid:5432"], ids=["refused", "dns"]
)
async def test_unreachable_server_is_store_unavailable(host: str) -> None:
    store = PostgresMemoryStore.from_url(f"postgresql://postgres@{host}/test", timeout=3)
    with pytest.raises(StoreUnavailableError) as info:
        await store.search("anything", Scope("u"))
    assert info.value.__cause__ is not None  # the driver error is chained, not swallowed
    # Nothing was cached: the next call tries (and fails) again, and close still works.
    with pytest.raises(StoreUnavailableError):
        await store.add([make_record(user_id="u", text="x")])
    await store.close()
    await store.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(), StoreUnavailableError),
        (socket.gaierror(), StoreUnavailableError),
        (asyncio.TimeoutError(), StoreTimeoutError),
        (asyncpg.QueryCanceledError("statement timeout"), StoreTimeoutError),
        (asyncpg.LockNotAvailableError("lock timeout"), StoreTimeoutError),
        (asyncpg.CannotConnectNowError("starting up"), StoreUnavailableError),
        (asyncpg.AdminShutdownError("shutdown"), StoreUnavailableError),
        (asyncpg.TooManyConnectionsError("too many"), StoreUnavailableError),
        (asyncpg.ConnectionDoesNotExistError("gone"), StoreUnavailableError),
        (asyncpg.InvalidPasswordError("password"), StoreUnavailableError),
        (asyncpg.UniqueViolationError("dup"), StoreConflictError),
        (asyncpg.DeadlockDetectedError("deadlock"), StoreConflictError),
        (asyncpg.SerializationError("serialization"), StoreConflictError),
        (asyncpg.DataError("bad value"), InvalidInputError),
        (asyncpg.UndefinedTableError("no table"), StoreError),
        (asyncpg.InterfaceError("pool is closing"), StoreError),
        (UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogate"), InvalidInputError),
    ],
)
def test_error_map(exc: BaseException, expected: type[TiamatError]) -> None:
    mapped = _map_error(exc)
    assert type(mapped) is expected


@pytest.mark.parametrize(
    "exc",
    [asyncio.TimeoutError(), asyncpg.InvalidPasswordError("pw"), asyncpg.InterfaceError("x")],
)
def test_every_failure_while_connecting_is_unavailable(exc: BaseException) -> None:
    assert type(_map_error(exc, connecting=True)) is StoreUnavailableError


def test_error_map_leaves_other_exceptions_alone() -> None:
    assert _map_error(ValueError("not a driver error")) is None
    assert _map_error(StoreConflictError("already ours")) is None


# -- needs the server ------------------------------------------------------------------------------


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def fresh_schema() -> AsyncIterator[str]:
    """A schema of its own, for tests that damage data or watch migrations."""
    need_postgres()
    name = f"tiamat_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await _drop(name)


@pytest.fixture
async def pg() -> AsyncIterator[PostgresMemoryStore]:
    need_postgres()
    store = PostgresMemoryStore.from_url(POSTGRES_URL, schema=POSTGRES_SCHEMA, max_size=4)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.postgres
async def test_concurrent_starts_migrate_exactly_once(fresh_schema: str) -> None:
    stores = [
        PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema, max_size=2)
        for _ in range(8)
    ]
    try:
        # Every store's first operation migrates; they all start at once.
        await asyncio.gather(*(s.stats() for s in stores))
        u = new_id()
        await stores[0].add([make_record(user_id=u, session_id="s", text="visible everywhere")])
        for s in stores:
            assert [r.text for r in await s.read(Scope(u))] == ["visible everywhere"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        versions = await conn.fetch(
            f'SELECT version FROM "{fresh_schema}".schema_version ORDER BY version'
        )
    finally:
        await conn.close()
    assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))


@pytest.mark.postgres
async def test_restart_on_a_migrated_schema_keeps_data(fresh_schema: str) -> None:
    u = new_id()
    first = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        await first.add([make_record(user_id=u, session_id="s", text="survives restarts")])
    finally:
        await first.close()
    second = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        assert [r.text for r in await second.read(Scope(u))] == ["survives restarts"]
        assert await second.integrity_check() == []
    finally:
        await second.close()


@pytest.mark.postgres
async def test_passed_in_pool_is_not_closed(fresh_schema: str) -> None:
    pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=2)
    try:
        store = PostgresMemoryStore(pool, schema=fresh_schema)
        u = new_id()
        await store.add([make_record(user_id=u, text="borrowed pool")])
        await store.close()
        await store.close()  # idempotent
        assert await pool.fetchval("SELECT 1") == 1
        with pytest.raises(StoreUnavailableError):
            await store.read(Scope(u))
    finally:
        await pool.close()


@pytest.mark.postgres
async def test_owned_pool_is_closed(pg: PostgresMemoryStore) -> None:
    await pg.stats()
    await pg.close()
    await pg.close()
    with pytest.raises(StoreUnavailableError):
        await pg.stats()


@pytest.mark.postgres
async def test_analyze_gives_the_planner_row_counts(fresh_schema: str) -> None:
    store = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    u = new_id()

    async def reltuples() -> dict[str, float]:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await conn.fetch(
                "SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                fresh_schema,
            )
        finally:
            await conn.close()
        return {name: float(n) for name, n in rows}

    try:
        await store.add(
            [make_record(user_id=u, session_id="s", text=f"turn {i}") for i in range(50)]
        )
        before = await reltuples()
        # Never analysed (PostgreSQL >= 14 says -1): the planner has to guess. The test server
        # runs with autovacuum off, so nothing else analyses the fresh schema meanwhile.
        assert before["records"] < 0
        await store.analyze()
        after = await reltuples()
        assert after["records"] == 50 and after["units"] == 50
        assert [r.text for r in await store.read(Scope(u), limit=1)] == ["turn 0"]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_integrity_check_finds_missing_units(fresh_schema: str) -> None:
    store = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        u = new_id()
        recs = await store.add(
            [make_record(user_id=u, session_id="s", text=f"t {i}") for i in range(3)]
        )
        assert await store.integrity_check() == []
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(
                f'DELETE FROM "{fresh_schema}".units WHERE record_rowid = '
                f'(SELECT rowid FROM "{fresh_schema}".records WHERE id = $1)',
                recs[1].id,
            )
        finally:
            await conn.close()
        problems = await store.integrity_check()
        assert len(problems) == 1
        assert recs[1].id in problems[0]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_key_race_with_another_writer_returns_the_stored_record(
    pg: PostgresMemoryStore,
) -> None:
    """A writer that inserts our key after we looked for it: we wait for it, then return its row.

    Facts take no session lock, so only the unique key orders the two writers.
    """
    u = new_id()
    await pg.stats()  # migrate before the race starts
    theirs = make_record(user_id=u, kind="fact", text="written by them", key="same-key")
    ours = make_record(user_id=u, kind="fact", text="written by us", key="same-key")
    blocker = await asyncpg.connect(POSTGRES_URL)
    # Watch from outside any transaction: a transaction sees one frozen pg_stat_activity.
    watcher = await asyncpg.connect(POSTGRES_URL)
    try:
        # Hold their insert open in a transaction.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            f'INSERT INTO "{POSTGRES_SCHEMA}".records (id, user_id, session_id, kind, text, '
            "created_at, key) VALUES ($1, $2, '', 'fact', $3, now(), $4)",
            theirs.id,
            u,
            theirs.text,
            theirs.key,
        )
        task = asyncio.create_task(pg.add([ours]))
        # Wait until our insert is blocked on their uncommitted row, then let them commit.
        for _ in range(500):
            waiting = await _blocked_inserts(watcher)
            if waiting or task.done():
                break
            await asyncio.sleep(0.01)
        assert waiting, "our add never blocked on the uncommitted key"
        await blocker.execute(
            f'INSERT INTO "{POSTGRES_SCHEMA}".units (record_rowid, unit, user_id, session_id, '
            "kind, span_start, span_end, tsv) SELECT rowid, 0, user_id, '', kind, 0, "
            f"char_length(text), to_tsvector('english', text) FROM \"{POSTGRES_SCHEMA}\".records "
            "WHERE id = $1",
            theirs.id,
        )
        await tx.commit()
        (got,) = await task
    finally:
        await blocker.close()
        await watcher.close()
    assert got.id == theirs.id
    assert got.text == "written by them"
    assert [r.id for r in await pg.read(Scope(u))] == [theirs.id]


async def _blocked_inserts(conn: asyncpg.Connection) -> int:
    """Backends waiting for a lock while inserting into this run's records table."""
    n = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid() AND position($1 in query) > 0",
        f'INSERT INTO "{POSTGRES_SCHEMA}".records',
    )
    return int(n)


@pytest.mark.postgres
async def test_blocked_write_past_lock_timeout_is_store_timeout() -> None:
    need_postgres()
    u = new_id()
    store = PostgresMemoryStore.from_url(
        POSTGRES_URL, schema=POSTGRES_SCHEMA, server_settings={"lock_timeout": "200"}
    )
    blocker = await asyncpg.connect(POSTGRES_URL)
    try:
        await store.stats()  # migrate first: only the write below should wait
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            f'INSERT INTO "{POSTGRES_SCHEMA}".records (id, user_id, session_id, kind, text, '
            "created_at, key) VALUES ($1, $2, '', 'fact', 'held', now(), 'held-key')",
            uuid.uuid4().hex,
            u,
        )
        with pytest.raises(StoreTimeoutError):
            await store.add([make_record(user_id=u, kind="fact", text="x", key="held-key")])
        await tx.rollback()
        assert await store.read(Scope(u)) == []
    finally:
        await blocker.close()
        await store.close()


@pytest.mark.postgres
async def test_explicit_duplicate_turn_seq_is_a_conflict(pg: PostgresMemoryStore) -> None:
    u = new_id()
    await pg.add([make_record(user_id=u, session_id="s", text="one", seq=1, key="a")])
    with pytest.raises(StoreConflictError):
        await pg.add(
            [
                make_record(user_id=u, session_id="s", text="fresh", key="b"),
                make_record(user_id=u, session_id="s", text="clash", seq=1, key="c"),
            ]
        )
    # The batch is one transaction: its first record was not kept either.
    assert [r.text for r in await pg.read(Scope(u))] == ["one"]


@pytest.mark.postgres
async def test_nul_in_key_is_rejected_before_writing(pg: PostgresMemoryStore) -> None:
    u = new_id()
    with pytest.raises(InvalidRecordError):
        await pg.add(
            [
                make_record(user_id=u, text="fine", key="ok"),
                make_record(user_id=u, text="bad", key="a\x00b"),
            ]
        )
    assert await pg.read(Scope(u)) == []


@pytest.mark.postgres
async def test_nul_and_unicode_inside_item_and_meta_roundtrip(pg: PostgresMemoryStore) -> None:
    u = new_id()
    item = {"type": "function_call_output", "output": "binary\x00junk 😀", "nested": [1, None]}
    rec = make_record(user_id=u, text="tool output", item=item, meta={"z": 1, "a": "\x00"})
    await pg.add([rec])
    (got,) = await pg.read(Scope(u))
    assert got.item == item
    assert got.meta == {"z": 1, "a": "\x00"}


@pytest.mark.postgres
async def test_read_order_matches_sqlite(pg: PostgresMemoryStore) -> None:
    u = new_id()
    recs = []
    for i, sid in enumerate(["b", "B", "_x", "a", "Z", "é", None]):
        recs.append(make_record(user_id=u, session_id=sid, text=f"turn {i}"))
        recs.append(make_record(user_id=u, session_id=sid, kind="summary", text=f"sum {i}"))
    sqlite = SQLiteMemoryStore(":memory:")
    try:
        await sqlite.add(recs)
        expected = [r.id for r in await sqlite.read(Scope(u))]
        expected_last = [r.id for r in await sqlite.read(Scope(u), limit=5, newest=True)]
    finally:
        await sqlite.close()
    await pg.add(recs)
    assert [r.id for r in await pg.read(Scope(u))] == expected
    assert [r.id for r in await pg.read(Scope(u), limit=5, newest=True)] == expected_last


@pytest.mark.postgres
async def test_long_record_is_one_hit_with_the_best_span(pg: PostgresMemoryStore) -> None:
    u = new_id()
    filler = " ".join(f"Sentence {i} is about ordinary errands." for i in range(40))
    text = (
        "Cardamom appears once here. "
        + filler
        + " Cardamom cardamom, the cardamom recipe. "
        + filler
    )
    (rec,) = await pg.add([make_record(user_id=u, session_id="s", text=text)])
    hits = await pg.search("cardamom", Scope(u))
    assert [h.record.id for h in hits] == [rec.id]
    assert hits[0].span is not None
    start, end = hits[0].span
    assert text[start:end].count("Cardamom") + text[start:end].count("cardamom") == 3


@pytest.mark.postgres
async def test_previous_turn_is_searchable_context(pg: PostgresMemoryStore) -> None:
    u = new_id()
    await pg.add(
        [
            make_record(
                user_id=u, session_id="s", role="user", text="Where did you travel in May?"
            ),
            make_record(
                user_id=u, session_id="s", role="assistant", text="Lisbon, with my sister."
            ),
        ]
    )
    # "travel" only occurs in the question; the answer is found through its context, ranked
    # below the question itself.
    hits = await pg.search("travel", Scope(u))
    assert [h.record.text for h in hits] == [
        "Where did you travel in May?",
        "Lisbon, with my sister.",
    ]


@pytest.mark.postgres
async def test_stop_word_only_query_returns_nothing(pg: PostgresMemoryStore) -> None:
    u = new_id()
    await pg.add([make_record(user_id=u, text="who is it")])
    assert await pg.search("who is it", Scope(u)) == []


@pytest.mark.postgres
async def test_read_around_matches_sqlite(pg: PostgresMemoryStore) -> None:
    u = new_id()
    recs = [
        make_record(user_id=u, session_id=sid, agent_id=agent, text=f"{sid} turn {i}")
        for sid, agent in (("b", "a1"), ("a", "a2"), (None, "a1"))
        for i in range(6)
    ]
    refs: list[tuple[str | None, int]] = [("a", 3), ("b", 1), ("b", 2), (None, 6), ("zz", 1)]
    sqlite = SQLiteMemoryStore(":memory:")
    try:
        await sqlite.add(recs)
        expected = [r.id for r in await sqlite.read_around(Scope(u), refs, radius=1)]
        expected_a1 = [
            r.id for r in await sqlite.read_around(Scope(u, agent_id="a1"), refs, radius=2)
        ]
    finally:
        await sqlite.close()
    await pg.add(recs)
    got = await pg.read_around(Scope(u), refs, radius=1)
    assert [r.id for r in got] == expected
    assert [(r.session_id, r.seq) for r in got][:5] == [
        (None, 5),
        (None, 6),
        ("a", 2),
        ("a", 3),
        ("a", 4),
    ]
    assert [r.id for r in await pg.read_around(Scope(u, agent_id="a1"), refs, radius=2)] == (
        expected_a1
    )
    assert await pg.read_around(Scope(u), []) == []


@pytest.mark.postgres
async def test_schema_from_a_newer_version_is_refused(fresh_schema: str) -> None:
    first = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        await first.stats()
    finally:
        await first.close()
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(
            f'INSERT INTO "{fresh_schema}".schema_version (version) VALUES ($1)',
            len(MIGRATIONS) + 1,
        )
    finally:
        await conn.close()
    later = PostgresMemoryStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        with pytest.raises(StoreError, match="newer"):
            await later.stats()
    finally:
        await later.close()
