"""Retention: ``expire`` and ``tiamat-hooks expire`` delete every kind of old record, nothing newer;
``forget`` reaches every kind and the remote store's outbox."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tiamat_hooks.cli import app
from tiamat_hooks.errors import CapabilityError, ConfigError
from tiamat_hooks.models import Scope, make_record, utcnow
from tiamat_hooks.retention import expire, parse_age
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

pytestmark = pytest.mark.reliability


def _records(user: str) -> list:  # type: ignore[type-arg]
    old, new = utcnow() - timedelta(days=40), utcnow() - timedelta(days=1)
    return [
        make_record(user_id=user, session_id="s", role="user", text="old turn", created_at=old),
        make_record(user_id=user, session_id="s", kind="summary", text="old sum", created_at=old),
        make_record(user_id=user, kind="fact", text="old fact", created_at=old),
        make_record(user_id=user, session_id="s", role="user", text="new turn", created_at=new),
        make_record(user_id="other", session_id="s", role="user", text="old", created_at=old),
    ]


async def test_expire_every_kind(tmp_path: Path, user_id: str) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db")
    await store.add(_records(user_id))
    assert await expire(store, Scope(user_id), timedelta(days=30)) == 3
    assert [r.text for r in await store.read(Scope(user_id))] == ["new turn"]
    assert len(await store.read(Scope("other"))) == 1
    await store.close()


def test_cli_expire(tmp_path: Path, user_id: str) -> None:
    import asyncio

    db = tmp_path / "m.db"

    async def seed() -> None:
        s = SQLiteMemoryStore(db)
        await s.add(_records(user_id))
        await s.close()

    asyncio.run(seed())
    url = f"sqlite:///{db}"
    out = CliRunner().invoke(
        app, ["expire", "--user", user_id, "--older-than", "30d", "--store", url]
    )
    assert out.exit_code == 0, out.output
    assert "removed 3" in out.output
    bad = CliRunner().invoke(
        app, ["expire", "--user", user_id, "--older-than", "soon", "--store", url]
    )
    assert bad.exit_code == 1


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("2w") == timedelta(weeks=2)
    for bad in ("", "0d", "-1d", "30", "d", "3y"):
        with pytest.raises(ConfigError):
            parse_age(bad)


async def test_expire_needs_delete_capability() -> None:
    store = TiamatCloudStore("https://tiamat.test", "k", outbox=":memory:")
    with pytest.raises(CapabilityError):
        await expire(store, Scope("u"), timedelta(days=1))
    await store.close()


async def test_forget_reaches_outbox_and_every_kind(tmp_path: Path, user_id: str) -> None:
    from tiamat_hooks.server import create_app

    backing = SQLiteMemoryStore(tmp_path / "server.db")
    app_ = create_app(backing, keys={"k": "t"})
    store = TiamatCloudStore(
        "http://srv.test",
        "k",
        transport=httpx.ASGITransport(app=app_),
        outbox=tmp_path / "outbox.db",
        retry_base_delay=0.0,
        strict=True,
    )
    await store.refresh_capabilities()
    await store.add(_records(user_id)[:4])
    # One more write queued while the circuit is open (service "away"): it sits in the outbox.
    store._trip()
    await store.add([make_record(user_id=user_id, session_id="s", role="user", text="queued")])
    assert (await store.outbox_status()).pending == 1
    assert await store.delete(Scope(user_id)) == 5
    assert (await store.outbox_status()).pending == 0
    await store.flush()
    assert await backing.read(Scope(f"t/{user_id}")) == []
    await store.close()
    await backing.close()
