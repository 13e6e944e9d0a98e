"""Crashes, CI size: a writer SIGKILLed mid-persist loses no acknowledged write (SQLite, Postgres).

The full size is ``tiamat-hooks bench crash --rounds 100`` (see ``tiamat_hooks.bench.crash``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import need_postgres, postgres_url
from tiamat_hooks.bench.crash import run_crash_bench

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL"),
]


async def test_sqlite_writer_killed_mid_persist(tmp_path: Path) -> None:
    report = await run_crash_bench(f"sqlite:///{tmp_path / 'crash.db'}", rounds=12, seed=3)
    assert report.killed >= 10
    assert report.acked > 0
    assert report.integrity_problems == []
    assert report.lost == 0, report.lost_keys
    assert report.seq_errors == 0


@pytest.mark.postgres
async def test_postgres_writer_killed_mid_persist() -> None:
    need_postgres()
    report = await run_crash_bench(postgres_url(), rounds=10, seed=4)
    assert report.killed >= 8
    assert report.integrity_problems == []
    assert report.lost == 0, report.lost_keys
    assert report.seq_errors == 0
