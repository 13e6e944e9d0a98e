"""The SQLite store's speed work keeps its answers: schema migration 1 -> 2 on open, the
non-turn index, per-range ``read_around``, the fast record builder and lazy hit fetching."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tiamat_hooks.facts import current_facts, learn
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores import sqlite as sqlite_store

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def _v1_database(path: Path) -> None:
    """A database as schema version 1 wrote it (before ``records_nonturn``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in sqlite_store.MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()


async def test_version_1_database_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_database(path)
    # Written through the current code, then the new index dropped and the version reset: the
    # file is then exactly what version 1 held, with data in it.
    store = SQLiteMemoryStore(path)
    u = "ann"
    turns = [
        make_record(user_id=u, session_id="s1", text=f"turn {i} about sailing", created_at=T0)
        for i in range(5)
    ]
    await store.add(turns)
    await learn(store, Scope(u, session_id="s1"), "Ann", "lives in", "Lisbon")
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX records_nonturn")
    conn.execute("PRAGMA user_version = 1")
    conn.close()

    store = SQLiteMemoryStore(path)
    try:
        facts = await current_facts(store, Scope(u))
        assert [(f.subject, f.predicate, f.object) for f in facts] == [
            ("Ann", "lives in", "Lisbon")
        ]
        assert len(await store.read(Scope(u), kinds=("turn",))) == 5
        hits = await store.search("sailing", Scope(u))
        assert {h.record.id for h in hits} == {t.id for t in turns}
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_store.MIGRATIONS)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "records_nonturn" in names
    conn.close()


async def test_reads_without_turns_use_the_nonturn_index(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db")
    try:
        await store.add([make_record(user_id="u", text="hello")])
        plans: list[str] = []

        def trace(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(plans.append)

        await store._run(trace)
        await store.read(Scope("u"), kinds=("fact",), limit=10, newest=True)
        await store._run(lambda conn: conn.set_trace_callback(None))
        (sql,) = [p for p in plans if p.startswith("SELECT")]

        def plan(conn: sqlite3.Connection) -> str:
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            return " ".join(str(r[-1]) for r in rows)

        assert "records_nonturn" in await store._run(plan)
    finally:
        await store.close()


async def test_read_around_matches_a_full_read() -> None:
    store = SQLiteMemoryStore(":memory:")
    u = "u1"
    recs = [
        make_record(user_id=u, session_id=sid, agent_id=agent, text=f"{sid} turn {i}")
        for sid, agent in (("b", "a1"), ("a", "a2"), (None, "a1"), ("ü", "a1"))
        for i in range(12)
    ]
    recs.append(make_record(user_id="other", session_id="a", text="not yours"))
    recs.append(make_record(user_id=u, session_id="a", kind="summary", text="a summary"))
    await store.add(recs)
    try:
        everything = await store.read(Scope(u), kinds=("turn",))
        cases: list[tuple[Scope, list[tuple[str | None, int]], int]] = [
            (Scope(u), [("a", 3), ("b", 1), ("b", 2), (None, 6), ("zz", 1), ("a", 3)], 1),
            (Scope(u), [("a", 1), ("a", 4), ("a", 9), ("a", 12), ("ü", 6)], 2),
            (Scope(u, agent_id="a1"), [("a", 3), ("b", 5), ("b", 8), (None, 1)], 2),
            (Scope(u), [("b", 6)], 0),
        ]
        for scope, refs, radius in cases:
            want = [
                r
                for r in everything
                if (scope.agent_id is None or r.agent_id == scope.agent_id)
                and any(
                    (r.session_id or "") == (sid or "") and abs((r.seq or 0) - seq) <= radius
                    for sid, seq in refs
                )
            ]
            want.sort(key=lambda r: ((r.session_id or "").encode(), r.seq or 0))
            got = await store.read_around(scope, refs, radius=radius)
            assert [r.id for r in got] == [r.id for r in want]
            assert got == want
        assert await store.read_around(Scope(u), []) == []
    finally:
        await store.close()


def test_fast_record_builder_matches_model_construct() -> None:
    assert sqlite_store._FAST_CONSTRUCT
    created_us = 1_700_000_000_123_456
    for item, meta in ((None, "{}"), ('{"role": "user", "content": "hi"}', '{"speaker": "Ann"}')):
        row = (1, "id1", "u", None, "", "turn", "user", "hi", item, created_us, 3, "k1", meta)
        got = sqlite_store._row_to_record(row)
        want = MemoryRecord.model_construct(
            id="id1",
            user_id="u",
            agent_id=None,
            session_id=None,
            kind="turn",
            role="user",
            text="hi",
            item=None if item is None else {"role": "user", "content": "hi"},
            created_at=datetime(1970, 1, 1, tzinfo=timezone.utc)
            + timedelta(microseconds=created_us),
            seq=3,
            key="k1",
            meta={} if meta == "{}" else {"speaker": "Ann"},
        )
        assert got == want
        assert repr(got) == repr(want)
        assert got.model_fields_set == want.model_fields_set
        assert got.model_dump() == want.model_dump()
    rec = make_record(user_id="u", session_id="s", text="x", meta={"a": 1})
    copied = sqlite_store._with_seq(rec, 7)
    assert copied == rec.model_copy(update={"seq": 7})
    assert copied.model_fields_set == rec.model_copy(update={"seq": 7}).model_fields_set


async def test_search_reads_only_the_records_it_returns() -> None:
    store = SQLiteMemoryStore(":memory:")
    u = "u"
    await store.add(
        [
            make_record(user_id=u, session_id=f"s{i % 7}", text=f"sailing trip number {i}")
            for i in range(60)
        ]
    )
    await store.add([make_record(user_id=u, kind="summary", text="sailing summary")])
    fetched: list[int] = []
    real = sqlite_store._fetch_by_rowid

    def spy(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, MemoryRecord]:
        fetched.extend(rowids)
        return real(conn, rowids)

    sqlite_store._fetch_by_rowid = spy  # type: ignore[assignment]
    try:
        few = await store.search("sailing trip", Scope(u), limit=5)
        assert len(few) == 5 and len(fetched) == 5
        fetched.clear()
        every = await store.search("sailing trip", Scope(u), limit=100)
        assert [h.record.id for h in every[:5]] == [h.record.id for h in few]
        assert [h.score for h in every] == sorted((h.score for h in every), reverse=True)
        fetched.clear()
        turns_only = await store.search("sailing", Scope(u), kinds=("turn",), limit=60)
        assert len(turns_only) == 60
        assert all(h.record.kind == "turn" for h in turns_only)
    finally:
        sqlite_store._fetch_by_rowid = real
        await store.close()


async def test_file_connections_read_through_a_memory_map(tmp_path: Path) -> None:
    from tiamat_hooks import _sqlite

    file_store = SQLiteMemoryStore(tmp_path / "m.db")
    memory_store = SQLiteMemoryStore(":memory:")
    try:

        def mmap_size(conn: sqlite3.Connection) -> int:
            row = conn.execute("PRAGMA mmap_size").fetchone()
            return 0 if row is None else int(row[0])

        on_file = await file_store._db.run(mmap_size)
        options = await file_store._db.run(
            lambda c: [r[0] for r in c.execute("PRAGMA compile_options")]
        )
        if on_file == 0 and "MAX_MMAP_SIZE=0" in options:
            pytest.skip("this SQLite build cannot map files")
        assert 0 < on_file <= _sqlite.MMAP_BYTES  # SQLite may cap it at its build's limit
        assert await memory_store._db.run(mmap_size) == 0  # nothing to map
        off = SQLiteMemoryStore(tmp_path / "off.db", mmap_bytes=0)
        try:
            assert await off._db.run(mmap_size) == 0
        finally:
            await off.close()
        with pytest.raises(ValueError, match="mmap_bytes"):
            SQLiteMemoryStore(tmp_path / "bad.db", mmap_bytes=-1)
        # The file helper itself (the outbox's, the vector cache's) maps nothing unless asked.
        plain = _sqlite.SQLiteFile(tmp_path / "outbox.db", migrations=())
        try:
            assert await plain.run(mmap_size) == 0
        finally:
            await plain.close()
        # Reads through the map see what was just written.
        rec = make_record(user_id="u", session_id="s", text="mapped pages", created_at=T0)
        await file_store.add([rec])
        assert [r.text for r in await file_store.read(Scope("u"))] == ["mapped pages"]
    finally:
        await file_store.close()
        await memory_store.close()
