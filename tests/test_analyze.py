"""``analyze()``: refreshing planner statistics after bulk loads (optional store capability).

The Postgres side (row counts the planner sees) is tested in ``test_postgres_store.py`` and,
through ``import``/``migrate``, in ``test_migrate.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import new_id
from tiamat_hooks.bench import latency
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.redaction import RedactingStore
from tiamat_hooks.stores import SQLiteMemoryStore


async def test_sqlite_analyze_gathers_statistics(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db")
    user = new_id()
    try:
        await store.add(
            [make_record(user_id=user, session_id="s", text=f"tea note {i}") for i in range(30)]
        )
        with sqlite3.connect(tmp_path / "m.db") as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "sqlite_stat1" not in tables
        await store.read(Scope(user, session_id="s"), seq_from=3, seq_to=5)
        await store.analyze()
        assert [r.seq for r in await store.read(Scope(user, session_id="s"), seq_to=2)] == [1, 2]
        assert await store.search("tea", Scope(user), limit=3)
        assert await store.integrity_check() == []
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The planner now has statistics of the records table (none before: no sqlite_stat1).
        stats = conn.execute("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'records'")
        assert stats.fetchone()[0] > 0


async def test_wrappers_pass_analyze_through(tmp_path: Path) -> None:
    calls: list[str] = []
    inner = SQLiteMemoryStore(tmp_path / "m.db")
    original = inner.analyze

    async def counted() -> None:
        calls.append("analyze")
        await original()

    inner.analyze = counted  # type: ignore[method-assign]
    wrapped = RedactingStore(inner)
    try:
        await wrapped.analyze()
    finally:
        await wrapped.close()
    assert calls == ["analyze"]


async def test_latency_bench_analyses_after_each_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = SQLiteMemoryStore.analyze

    async def counted(self: SQLiteMemoryStore) -> None:
        calls.append(1)
        await original(self)

    monkeypatch.setattr(SQLiteMemoryStore, "analyze", counted)
    report = await latency.run_latency_bench(
        f"sqlite:///{tmp_path / 'lat.db'}", sizes=(100, 300), users=3, queries=4
    )
    assert [p.turns for p in report.points] == [100, 300]
    assert len(calls) == 2
