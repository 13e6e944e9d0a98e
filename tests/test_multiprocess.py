"""Many OS processes writing to one store at once: nothing lost, nothing doubled, gap-free seqs.

Runs :mod:`tiamat_hooks.bench.stress` against one shared SQLite file and the shared Postgres test
schema. The size is CI-affordable by default; ``TIAMAT_STRESS_WORKERS`` / ``TIAMAT_STRESS_RUNS``
make it bigger (the benchmark command runs 8 x 200).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.conftest import need_postgres, new_id, postgres_url
from tiamat_hooks.bench.stress import run_workers, verify, write_worker
from tiamat_hooks.models import Scope
from tiamat_hooks.stores import open_store

WORKERS = int(os.environ.get("TIAMAT_STRESS_WORKERS", "4"))
RUNS = int(os.environ.get("TIAMAT_STRESS_RUNS", "50"))
USERS = 3
SESSIONS = 4


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
