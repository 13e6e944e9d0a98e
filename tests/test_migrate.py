"""Moving memory between stores with the CLI: ``migrate``, ``export``/``import`` and ``forget``.

SQLite -> Postgres -> SQLite must keep every record as it was (ids, keys, seqs, kinds, meta,
items, created_at); importing an export is idempotent; ``forget`` also drops writes a TIAMAT
store still has queued.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import (
    POSTGRES_URL,
    _drop_schema,
    need_postgres,
    new_id,
    postgres_url,
    run_sync,
)
from tests.fake_tiamat import FakeTiamat
from tiamat_hooks import cli
from tiamat_hooks.cli import app
from tiamat_hooks.envelope import decode
from tiamat_hooks.facts import learn, note
from tiamat_hooks.items import item_to_record
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import MemoryStore, SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

runner = CliRunner()

T0 = datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)

UNICODE = [
    "Mein Hund heißt Bällchen 🐕 und liebt Wasser",
    "東京の天気はどうですか？",
    "مرحبا، كيف حالك؟",
    "cafe\u0301 (combining accent) vs café",
    "tab\tand\nnewline, quotes \"x\" and 'y', backslash \\",
]


def _turns(user: str, session: str, agent: str | None, start: int) -> list[MemoryRecord]:
    """A conversation with a tool call and its output, as the hooks would store it."""
    items: list[dict[str, Any]] = [
        {"role": "user", "content": UNICODE[start % len(UNICODE)]},
        {
            "type": "function_call",
            "name": "get_weather",
            "arguments": json.dumps({"city": "Zürich", "units": "°C"}, ensure_ascii=False),
            "call_id": f"call-{session}",
            "id": f"fc-{session}",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": f"call-{session}", "output": "☀️ 21 °C"},
        {
            "type": "message",
            "role": "assistant",
            "id": f"msg-{session}",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "text": UNICODE[(start + 1) % len(UNICODE)],
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        },
    ]
    return [
        item_to_record(
            item,
            user_id=user,
            session_id=session,
            agent_id=agent,
            created_at=T0 + timedelta(minutes=start, seconds=n, microseconds=n),
            key=f"run-{session}:{n}",
            meta={"run_id": f"run-{session}", "n": n, "nested": {"ok": True, "x": [1, 2.5, None]}},
        )
        for n, item in enumerate(items)
    ]


async def _seed(store: MemoryStore) -> None:
    users = [f"ann-{uuid.uuid4().hex[:6]}", f"bø-{uuid.uuid4().hex[:6]}", "carol"]
    for i, user in enumerate(users):
        for j, session in enumerate(["s1", "sesión-2"]):
            agent = "helper" if j else None
            await store.add(_turns(user, session, agent, start=i * 10 + j))
            await store.add(
                [
                    make_record(
                        user_id=user,
                        session_id=session,
                        agent_id=agent,
                        kind="summary",
                        role="summary",
                        text=f"Summary of {session}: weather in Zürich ☀️",
                        key=f"summary:{session}:1-4:0",
                        created_at=T0 + timedelta(hours=1, minutes=i),
                        meta={"seq_from": 1, "seq_to": 4, "level": 0},
                    )
                ]
            )
        await learn(
            store, Scope(user), "dog", "is named", "Bällchen", valid_from=T0, confidence=0.75
        )
        await learn(store, Scope(user, agent_id="helper"), "city", "is", "東京", valid_from=T0)
        await note(store, Scope(user, session_id="s1"), "likes genmaicha 🍵")


def _export(url: str) -> list[dict[str, Any]]:
    res = runner.invoke(app, ["export", "--store", url])
    assert res.exit_code == 0, res.output
    return sorted((json.loads(line) for line in res.output.splitlines()), key=lambda r: r["id"])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A Postgres schema of this test's own, dropped afterwards."""
    need_postgres()
    schema = f"tiamat_migrate_{uuid.uuid4().hex[:12]}"
    try:
        yield postgres_url(schema)
    finally:
        run_sync(_drop_schema(schema))


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    url = "sqlite:///" + (tmp_path / "a.db").as_posix()

    async def seed() -> None:
        store = SQLiteMemoryStore(tmp_path / "a.db")
        try:
            await _seed(store)
        finally:
            await store.close()

    asyncio.run(seed())
    return url


def _records_reltuples(url: str) -> float:
    """What the Postgres planner believes the schema's records table holds (-1: never analysed).

    The test server runs with autovacuum off: only an explicit ``ANALYZE`` changes it here.
    """
    schema = dict(parse_qsl(urlsplit(url).query))["schema"]

    async def read() -> float:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            value = await conn.fetchval(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = 'records'",
                schema,
            )
        finally:
            await conn.close()
        return float(value)

    return run_sync(read())


@pytest.mark.postgres
def test_import_and_migrate_leave_postgres_analysed(
    seeded: str, pg_url: str, tmp_path: Path
) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text(runner.invoke(app, ["export", "--store", seeded]).output)
    n = len(dump.read_text().splitlines())
    res = runner.invoke(app, ["import", str(dump), "--store", pg_url])
    assert res.exit_code == 0, res.output
    # A bulk load with autovacuum off or behind would leave the planner guessing.
    assert _records_reltuples(pg_url) == n
    other = pg_url.replace("tiamat_migrate_", "tiamat_migrate2_")
    try:
        res = runner.invoke(app, ["migrate", seeded, other])
        assert res.exit_code == 0, res.output
        assert _records_reltuples(other) == n
    finally:
        run_sync(_drop_schema(dict(parse_qsl(urlsplit(other).query))["schema"]))


@pytest.mark.postgres
def test_sqlite_to_postgres_and_back_keeps_every_record(
    seeded: str, pg_url: str, tmp_path: Path
) -> None:
    original = _export(seeded)
    assert {r["kind"] for r in original} == {"turn", "summary", "fact"}
    assert len(original) == 3 * (2 * (4 + 1) + 3)

    res = runner.invoke(app, ["migrate", seeded, pg_url])
    assert res.exit_code == 0, res.output
    assert f"copied {len(original)} records" in res.output
    assert _export(pg_url) == original  # ids, keys, seqs, kinds, meta, items, created_at, text

    back = "sqlite:///" + (tmp_path / "b.db").as_posix()
    res = runner.invoke(app, ["migrate", pg_url, back])
    assert res.exit_code == 0, res.output
    assert _export(back) == original

    # Migrating again changes nothing.
    assert runner.invoke(app, ["migrate", seeded, pg_url]).exit_code == 0
    assert _export(pg_url) == original
    # Sessions read back in conversation order on the target too.
    ann = next(r["user_id"] for r in original if r["user_id"].startswith("ann-"))
    res = runner.invoke(app, ["export", "--store", pg_url, "--user", ann])
    turns = [json.loads(x) for x in res.output.splitlines()]
    turns = [t for t in turns if t["kind"] == "turn" and t["session_id"] == "s1"]
    assert [t["seq"] for t in turns] == [1, 2, 3, 4]


@pytest.mark.postgres
def test_import_of_an_export_into_postgres_is_idempotent(
    seeded: str, pg_url: str, tmp_path: Path
) -> None:
    original = _export(seeded)
    dump = tmp_path / "dump.jsonl"
    dump.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in original))
    for _ in range(2):
        res = runner.invoke(app, ["import", str(dump), "--store", pg_url, "--batch", "7"])
        assert res.exit_code == 0, res.output
        assert _export(pg_url) == original
    stats = runner.invoke(app, ["stats", "--store", pg_url])
    assert json.loads(stats.output)["records"] == len(original)


# -- forget: queued writes of a TIAMAT store too ---------------------------------------------------


def _record(user: str, text: str) -> MemoryRecord:
    return make_record(user_id=user, session_id="s", role="user", text=text)


def test_forget_drops_queued_writes_on_the_hosted_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTiamat(api_key="test-key")

    def cloud(url: object = None) -> TiamatCloudStore:
        return TiamatCloudStore(
            "https://tiamat.test",
            "test-key",
            transport=fake.transport,
            outbox=tmp_path / "outbox.db",
            retry_base_delay=0.0,
            max_retries=0,
        )

    alice, bob = new_id("alice"), new_id("bob")

    async def write_while_down() -> None:
        store = cloud()
        try:
            await store.add([_record(alice, "alice private"), _record(bob, "bob note")])
        finally:
            await store.close()

    fake.down = True
    asyncio.run(write_while_down())

    monkeypatch.setattr(cli, "open_store", cloud)
    res = runner.invoke(app, ["forget", "--user", alice, "--store", "https://tiamat.test", "--yes"])
    # The hosted API cannot delete what it already stored: an error, but the queue is gone.
    assert res.exit_code == 1
    assert f"dropped 1 queued write(s) of {alice!r}" in res.output
    assert "CapabilityError" in res.output

    async def deliver() -> None:
        store = cloud()
        try:
            await store.flush()
        finally:
            await store.close()

    fake.down = False
    asyncio.run(deliver())
    assert [r.user_id for r in decode(fake.memories)] == [bob]


class _Switch(httpx.AsyncBaseTransport):
    """The in-process server, or connection refused while ``down``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


def test_forget_on_the_server_removes_stored_and_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("starlette")
    from tiamat_hooks.server import create_app

    backing = SQLiteMemoryStore(tmp_path / "server.db")
    switch = _Switch(httpx.ASGITransport(app=create_app(backing, keys={"k": "tenant"})))

    def cloud(url: object = None) -> TiamatCloudStore:
        return TiamatCloudStore(
            "http://tiamat-server.test",
            "k",
            transport=switch,
            outbox=tmp_path / "outbox.db",
            retry_base_delay=0.0,
            max_retries=0,
        )

    alice, bob = new_id("alice"), new_id("bob")

    async def add(*records: MemoryRecord) -> None:
        store = cloud()
        try:
            await store.add(list(records))
        finally:
            await store.close()

    async def read(user: str) -> list[str]:
        store = cloud()
        try:
            await store.flush()
            return [r.text for r in await store.read(Scope(user))]
        finally:
            await store.close()

    asyncio.run(add(_record(alice, "alice stored"), _record(bob, "bob stored")))
    switch.down = True
    asyncio.run(add(_record(alice, "alice queued")))
    switch.down = False

    monkeypatch.setattr(cli, "open_store", cloud)
    res = runner.invoke(app, ["forget", "--user", alice, "--store", "http://x", "--yes"])
    assert res.exit_code == 0, res.output
    assert f"dropped 1 queued write(s) of {alice!r}" in res.output
    assert f"removed 1 records of {alice!r}" in res.output
    assert asyncio.run(read(alice)) == []
    assert asyncio.run(read(bob)) == ["bob stored"]
    asyncio.run(backing.close())
