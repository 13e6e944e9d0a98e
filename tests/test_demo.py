"""The offline demo: three sessions, memory from session 1 reaches the model in sessions 2 and 3."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from tiamat_hooks.demo import run_demo
from tiamat_hooks.models import Scope
from tiamat_hooks.stores import SQLiteMemoryStore


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, color_system=None), out


async def test_demo_offline_remembers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    con, out = console()
    report = await run_demo(None, "gpt-4o-mini", con)
    assert not report.real_model
    assert report.remembered
    assert [c.session for c in report.calls] == ["session-1", "session-2", "session-3"]
    assert report.calls[0].memory == ""
    assert all(0 < c.memory_tokens <= 1024 for c in report.calls[1:])
    assert "peanuts" in report.replies[1]
    printed = out.getvalue()
    assert "OPENAI_API_KEY is not set" in printed
    assert f"memory block, {report.calls[1].memory_tokens} tokens" in printed
    assert "allergic to peanuts" in printed


async def test_demo_on_a_given_store_keeps_the_turns(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    con, _ = console()
    report = await run_demo(f"sqlite:///{db}", None, con)
    assert report.remembered
    store = SQLiteMemoryStore(db)
    try:
        records = await store.read(Scope(report.user_id))
    finally:
        await store.close()
    assert [r.session_id for r in records] == ["session-1"] * 2 + ["session-2"] * 2 + [
        "session-3"
    ] * 2
    assert not [r for r in records if "<memory>" in r.text]
