"""Faults, CI size: agent runs against a failing memory service lose no run and no write.

The full size is ``tiamat-hooks bench faults --runs 1000`` (see ``tiamat_hooks.bench.faults``).
"""

from __future__ import annotations

import pytest

from tiamat_hooks.bench.faults import run_fault_bench

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


async def test_respx_faults_lose_nothing() -> None:
    report = await run_fault_bench(60, mode="respx", rate=0.3, seed=1)
    assert sum(report.faults.values()) > 30  # faults really happened
    assert report.runs_failed == 0, report.errors
    assert report.lost == 0
    assert report.queued_after_replay == 0
    assert report.duplicates == 0


async def test_real_server_with_proxy_faults_and_sigkill_restarts() -> None:
    report = await run_fault_bench(24, mode="server", rate=0.3, restart_every=8, seed=2)
    assert report.restarts == 2
    assert sum(report.faults.values()) > 0
    assert report.runs_failed == 0, report.errors
    assert report.lost == 0
    assert report.queued_after_replay == 0
