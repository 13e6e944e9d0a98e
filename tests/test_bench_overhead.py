"""``tiamat-hooks bench overhead`` at a tiny size: it runs, its JSON has the documented shape,
and the ratios are computed from the measured totals. No timing assertions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from tiamat_hooks.bench.overhead import run_overhead_bench
from tiamat_hooks.cli import app
from tiamat_hooks.models import Scope
from tiamat_hooks.stores import SQLiteMemoryStore

runner = CliRunner()

QUANTILES = {"p50", "p95", "mean"}


def test_bench_overhead_cli_json(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    db = tmp_path / "ovh.db"
    res = runner.invoke(
        app,
        [
            "bench",
            "overhead",
            "--store",
            f"sqlite:///{db}",
            "--turns",
            "300",
            "--users",
            "3",
            "--runs",
            "4",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wall-time ratio" in res.output
    report = json.loads(out.read_text())
    assert report["turns"] == 300 and report["users"] == 3 and report["runs"] == 4
    assert report["mode"] == "hooks"
    assert report["model_calls_per_run"] == 2  # a tool call, then the answer
    for key in (
        "filter_ms",
        "first_call_ms",
        "later_call_ms",
        "hooks_ms_per_run",
        "run_ms",
        "run_hooks_ms",
        "flush_ms",
    ):
        assert set(report[key]) == QUANTILES, key
    assert report["persist_turns_per_s"] > 0 and report["persist_turns_per_s_last"] > 0
    assert abs(report["ratio"] - report["hooks_total_s"] / report["plain_total_s"]) < 1e-3
    with_flush = (report["hooks_total_s"] + report["flush_total_s"]) / report["plain_total_s"]
    assert abs(report["ratio_with_flush"] - with_flush) < 1e-3

    async def check() -> None:
        store = SQLiteMemoryStore(db)
        try:
            stats = await store.stats()
        finally:
            await store.close()
        # The fill, plus what the hooks stored: 4 turns (message, call, output, answer) for
        # each of the warm-up and measured runs.
        assert stats.records >= 300 + 4 * 5

    asyncio.run(check())


async def test_bench_overhead_filter_mode(tmp_path: Path) -> None:
    phases: dict[str, int] = {}

    def progress(phase: str, n: int) -> None:
        phases[phase] = phases.get(phase, 0) + n

    report = await run_overhead_bench(
        f"sqlite:///{tmp_path / 'f.db'}",
        turns=200,
        users=2,
        runs=3,
        warmup=0,
        mode="filter",
        model_latency_ms=1.0,
        progress=progress,
    )
    assert phases == {"fill": 200, "runs": 3}
    data = report.as_json()
    assert data["mode"] == "filter" and data["model_latency_ms"] == 1.0
    assert data["model_calls_per_run"] == 2
    assert report.ratio == report.hooks_total_s / report.plain_total_s
    # Memory was recalled from the filled users' history and injected.
    store = SQLiteMemoryStore(tmp_path / "f.db")
    try:
        users = await store.list_users()
        assert len(users) == 2
        assert await store.read(Scope(users[0]), limit=1)
    finally:
        await store.close()


def test_bench_overhead_reports_what_the_store_held_before(tmp_path: Path) -> None:
    db = tmp_path / "reused.db"
    args = ["bench", "overhead", "--store", f"sqlite:///{db}", "--turns", "120"]
    args += ["--users", "2", "--runs", "2", "--warmup", "0"]
    first = runner.invoke(app, [*args, "--json", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "a.json").read_text())["stored_before"] == 0
    assert "already held" not in first.output

    async def count() -> int:
        store = SQLiteMemoryStore(db)
        try:
            return (await store.stats()).records
        finally:
            await store.close()

    held = asyncio.run(count())
    second = runner.invoke(app, [*args, "--json", str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b.json").read_text())["stored_before"] == held
    assert f"already held {held:,} records" in " ".join(second.output.split())
