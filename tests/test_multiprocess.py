"""Many OS processes writing to one store at once: nothing lost, nothing doubled, gap-free seqs.

Runs :mod:`tiamat_hooks.bench.stress` against one shared SQLite file and Postgres, in both modes:
store-level ``add`` batches, and whole ``Runner.run`` calls through ``TiamatHooks`` (with tool
calls, several processes appending to the same session). The size is CI-affordable by default;
``TIAMAT_STRESS_WORKERS`` / ``TIAMAT_STRESS_RUNS`` / ``TIAMAT_STRESS_AGENT_RUNS`` make it bigger
(``tiamat-hooks bench stress`` runs 8 x 200).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _drop_schema, need_postgres, new_id, postgres_url, run_sync
from tiamat_hooks.bench.stress import (
    plan_run,
    run_worker,
    run_workers,
    verify,
    verify_runs,
    write_worker,
)
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.stores import open_store

WORKERS = int(os.environ.get("TIAMAT_STRESS_WORKERS", "4"))
RUNS = int(os.environ.get("TIAMAT_STRESS_RUNS", "50"))
USERS = 3
SESSIONS = 4
AGENT_RUNS = int(os.environ.get("TIAMAT_STRESS_AGENT_RUNS", "15"))


def _store_url(backend: str, tmp_path: Path) -> str:
    if backend == "postgres":
        need_postgres()
        return postgres_url()
    return "sqlite:///" + (tmp_path / "shared.db").as_posix()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_processes_writing_at_once(backend: str, tmp_path: Path) -> None:
    url = _store_url(backend, tmp_path)
    prefix = new_id("mp")
    reports = run_workers(
        url, workers=WORKERS, runs=RUNS, users=USERS, sessions=SESSIONS, prefix=prefix
    )
    errors = [e for r in reports for e in r.errors]
    assert errors == []  # includes "database is locked", which SQLite would raise as busy
    assert [r.adds for r in reports] == [RUNS] * WORKERS
    assert asyncio.run(verify(url, WORKERS, RUNS, USERS, SESSIONS, prefix=prefix)) == []


async def test_verify_detects_damage(tmp_path: Path) -> None:
    """The checker is not vacuous: damage a finished run and it says what is wrong."""
    url = "sqlite:///" + (tmp_path / "damaged.db").as_posix()
    prefix = new_id("mp")
    for worker in range(2):
        report = await write_worker(url, worker, 12, USERS, SESSIONS, prefix=prefix)
        assert report.errors == []
    assert await verify(url, 2, 12, USERS, SESSIONS, prefix=prefix) == []

    store = open_store(url)
    try:
        user = f"{prefix}-u0"
        # A turn from the middle of a session: deleting it loses a record and opens a gap.
        victim = next(r for r in await store.read(Scope(user)) if r.seq == 2)
        assert await store.delete(Scope(user), ids=[victim.id]) == 1
    finally:
        await store.close()
    problems = await verify(url, 2, 12, USERS, SESSIONS, prefix=prefix)
    assert any(f"lost record ('{user}', '{victim.key}')" in p for p in problems)
    assert any("seqs are not 1.." in p for p in problems)
    # A worker the plan does not know about wrote records too.
    assert await verify(url, 1, 12, USERS, SESSIONS, prefix=prefix) != []


# -- whole agent runs ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store nobody has used yet: the workers also race to create its tables."""
    if request.param == "sqlite":
        yield "sqlite:///" + (tmp_path / "runs.db").as_posix()
        return
    need_postgres()
    schema = f"tiamat_mp_{uuid.uuid4().hex[:12]}"
    try:
        yield postgres_url(schema)
    finally:
        run_sync(_drop_schema(schema))


def test_agent_runs_in_processes_at_once(fresh_store_url: str) -> None:
    prefix = new_id("runs")
    reports = run_workers(
        fresh_store_url,
        workers=WORKERS,
        runs=AGENT_RUNS,
        users=USERS,
        sessions=SESSIONS,
        prefix=prefix,
        mode="runs",
    )
    # Strict hooks: "database is locked" or any store error would be here, as would a non-zero
    # hooks.stats.failures entry.
    assert [e for r in reports for e in r.errors] == []
    assert [r.runs for r in reports] == [AGENT_RUNS] * WORKERS
    planned = [plan_run(w, n, USERS, SESSIONS) for w in range(WORKERS) for n in range(AGENT_RUNS)]
    assert any(p.tool for p in planned)
    # The hard case is planned: two processes in the same session on the same run.
    first, second = plan_run(0, 0, USERS, SESSIONS), plan_run(1, 0, USERS, SESSIONS)
    assert (first.user, first.session) == (second.user, second.session)
    assert sum(r.records for r in reports) == sum(len(p.items()) for p in planned)
    problems = asyncio.run(
        verify_runs(fresh_store_url, WORKERS, AGENT_RUNS, USERS, SESSIONS, prefix=prefix)
    )
    assert problems == []


async def test_verify_runs_detects_damage(tmp_path: Path) -> None:
    """The run checker is not vacuous: lost, doubled and foreign turns are each reported."""
    url = "sqlite:///" + (tmp_path / "runs-damaged.db").as_posix()
    prefix = new_id("runs")
    for worker in range(2):
        report = await run_worker(url, worker, 6, 2, 2, prefix=prefix)
        assert report.errors == [] and report.runs == 6
    assert await verify_runs(url, 2, 6, 2, 2, prefix=prefix) == []

    user = f"{prefix}-u0"
    store = open_store(url)
    try:
        records = await store.read(Scope(user, session_id="s0"), kinds=("turn",))
        calls = [r for r in records if r.item and r.item.get("type") == "function_call"]
        assert calls, "the plan has tool calls in this session"
        victim = calls[0]
        assert await store.delete(Scope(user), ids=[victim.id]) == 1
        # The same assistant message stored twice (a new key, as a broken retry would).
        answer = next(r for r in records if r.role == "assistant")
        await store.add(
            [answer.model_copy(update={"id": new_id("dup"), "key": "again", "seq": None})]
        )
        await store.add([make_record(user_id=user, session_id="s1", role="user", text="stray")])
    finally:
        await store.close()
    problems = await verify_runs(url, 2, 6, 2, 2, prefix=prefix)
    assert any(p.startswith("lost turn") and "called lookup" in p for p in problems), problems
    assert any(p.startswith("duplicate turn") and answer.text in p for p in problems), problems
    assert any(p.startswith("unexpected turn") and "stray" in p for p in problems), problems
    assert any("seqs are not 1.." in p for p in problems), problems
