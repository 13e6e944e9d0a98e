"""TiamatCloudStore against the self-hosted server: the extensions are used when advertised.

The server runs in process (``httpx.ASGITransport``) behind a small transport that records the
paths called and can play "down" (connection refused), so tests assert which endpoints the
client used, not only what it returned. The hosted fake checks the hosted path stays as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import new_id
from tests.fake_tiamat import FakeTiamat
from tiamat_hooks.errors import CapabilityError, InvalidInputError
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.outbox import MIGRATIONS, Outbox
from tiamat_hooks.server import create_app
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

KEY = "server-key"
BASE = "http://tiamat-server.test"


@dataclass
class Switch(httpx.AsyncBaseTransport):
    """Forwards to the in-process server; refuses connections while ``down``."""

    inner: httpx.AsyncBaseTransport
    down: bool = False
    paths: list[str] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    def used(self, fragment: str) -> bool:
        return any(fragment in p for p in self.paths)


@pytest.fixture
async def backing(tmp_path: Path) -> AsyncIterator[SQLiteMemoryStore]:
    store = SQLiteMemoryStore(tmp_path / "server.db")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def net(backing: SQLiteMemoryStore) -> Switch:
    app = create_app(backing, keys={KEY: "tenant-a"})
    return Switch(httpx.ASGITransport(app=app))


def device(net: Switch, outbox: Path | str = ":memory:", **kw: Any) -> TiamatCloudStore:
    options: dict[str, Any] = {
        "transport": net,
        "outbox": outbox,
        "retry_base_delay": 0.0,
        "recall_deadline": 10.0,
        "strict": True,
        "max_retries": 0,
    }
    options.update(kw)
    return TiamatCloudStore(BASE, KEY, **options)


def turn(user: str, session: str | None, text: str, **kw: Any) -> MemoryRecord:
    return make_record(user_id=user, session_id=session, role="user", text=text, **kw)


# -- detection ---------------------------------------------------------------------------------


async def test_detection_is_lazy_and_happens_once(net: Switch) -> None:
    store = device(net)
    assert net.paths == []  # the constructor does no I/O
    assert store.capabilities.can_delete is False  # hosted behaviour until detected
    u = new_id()
    await store.add([turn(u, "s", "first words")])
    await store.read(Scope(u))
    await store.search("words", Scope(u))
    await store.list_users()
    assert net.paths.count("/health") == 1
    assert net.paths[0] == "/health"
    caps = store.capabilities
    assert caps.can_delete and caps.neighbors
    assert caps.max_search_limit == 1000
    await store.close()


async def test_failed_detection_means_hosted_behaviour_then_retries(
    net: Switch, tmp_path: Path
) -> None:
    store = device(net, tmp_path / "o.db", circuit_cooldown=0.0, detect_retry_interval=3600)
    u = new_id()
    net.down = True
    (queued,) = await store.add([turn(u, "s", "written while the server is away")])
    assert queued.seq == 1
    assert store.stats_counters["detect_failures"] == 1
    assert store.server_extensions == frozenset()
    net.down = False
    # Within the retry interval no new /health: hosted endpoints serve the read.
    before = net.paths.count("/health")
    assert [r.text for r in await store.read(Scope(u))] == ["written while the server is away"]
    assert net.paths.count("/health") == before
    assert net.used("/api/memory/list") and not net.used("/x/")
    # flush detects at once, then delivers through the add extension.
    assert await store.flush() == 1
    assert "add" in store.server_extensions
    assert net.used("/api/memory/x/add")
    assert [(r.seq, r.text) for r in await store.read(Scope(u))] == [
        (1, "written while the server is away")
    ]
    await store.close()


async def test_a_4xx_health_means_no_extensions_for_good() -> None:
    fake = FakeTiamat(api_key=KEY)
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path == "/health":
            calls += 1
            return httpx.Response(404, json={"error": "not found"})
        return await fake.handler(request)

    store = TiamatCloudStore(
        "https://tiamat.test",
        KEY,
        transport=httpx.MockTransport(handler),
        outbox=":memory:",
        recall_deadline=10.0,
    )
    u = new_id()
    await store.add([turn(u, "s", "hello there")])
    await store.read(Scope(u))
    assert calls == 1
    assert store.stats_counters["detect_failures"] == 0
    await store.close()


# -- every operation through its extension -----------------------------------------------------


async def test_operations_use_the_extensions(net: Switch) -> None:
    store = device(net)
    u = new_id()
    out = await store.add(
        [turn(u, "s1", "kayak trip to the fjords"), turn(u, "s2", "kayak paddles are blue")]
    )
    assert [r.seq for r in out] == [1, 1]
    hits = await store.search("kayak", Scope(u, session_id="s1"))
    assert [h.record.session_id for h in hits] == ["s1"]
    assert {s.session_id for s in await store.list_sessions(u)} == {"s1", "s2"}
    assert u in await store.list_users()
    assert (await store.stats(u)).records == 2
    assert await store.delete(Scope(u, session_id="s2")) == 1
    assert [r.text for r in await store.read(Scope(u))] == ["kayak trip to the fjords"]
    for path in ("add", "search", "sessions", "users", "read", "delete"):
        assert net.used(f"/api/memory/x/{path}"), path
    # Nothing went through the hosted endpoints the extensions replace.
    assert not net.used("/api/memory/store")
    assert not net.used("/api/memory/list")
    assert not net.used("/api/memory/recall")
    await store.close()


async def test_hosted_api_never_sees_extension_calls() -> None:
    fake = FakeTiamat(api_key=KEY, extensions=None)
    store = TiamatCloudStore(
        "https://tiamat.test",
        KEY,
        transport=fake.transport,
        outbox=":memory:",
        recall_deadline=10.0,
    )
    u = new_id()
    await store.add([turn(u, "s", "plain hosted write")])
    await store.search("hosted", Scope(u))
    await store.read(Scope(u))
    await store.list_sessions(u)
    await store.list_users()
    with pytest.raises(CapabilityError):
        await store.delete(Scope(u))
    assert not [r for r in fake.requests if "/x/" in r.url.path]
    assert len(fake.calls("GET", "/health")) == 1
    await store.close()


async def test_search_limit_goes_past_the_hosted_cap_and_reports_spans(net: Switch) -> None:
    store = device(net)
    u = new_id()
    await store.add([turn(u, "s", f"walnut note number {i}") for i in range(60)])
    assert len(await store.search("walnut", Scope(u), limit=60)) == 60
    filler = " ".join(f"Sentence {i} is about ordinary chores." for i in range(80))
    await store.add([turn(u, "long", filler + " The password hint is saffron. " + filler)])
    (hit,) = await store.search("saffron hint", Scope(u, session_id="long"))
    assert hit.span is not None
    start, end = hit.span
    assert "saffron" in hit.record.text[start:end]
    await store.close()


async def test_read_merges_queued_writes_and_windows(net: Switch) -> None:
    store = device(net, circuit_cooldown=3600.0)
    u = new_id()
    await store.add([turn(u, "s", f"stored {i}") for i in range(4)])
    net.down = True
    (late,) = await store.add([turn(u, "s", "queued while away")])
    net.down = False  # back, but the circuit is open: the write stays queued
    assert late.seq == 5  # provisional, after the server's numbers
    got = await store.read(Scope(u, session_id="s"), limit=2, newest=True)
    assert [(r.seq, r.text) for r in got] == [(4, "stored 3"), (5, "queued while away")]
    assert [r.seq for r in await store.read(Scope(u), seq_from=2, seq_to=3)] == [2, 3]
    (info,) = await store.list_sessions(u)
    assert (info.records, info.last_seq) == (5, 5)
    await store.close()


# -- sequence numbers: the server assigns them ------------------------------------------------


async def test_two_devices_never_collide(net: Switch, tmp_path: Path) -> None:
    a, b = device(net, tmp_path / "a.db"), device(net, tmp_path / "b.db")
    u = new_id()
    (a1,) = await a.add([turn(u, "trip", "device a first")])
    (b1,) = await b.add([turn(u, "trip", "device b first")])
    (a2,) = await a.add([turn(u, "trip", "device a again")])  # a's own counter would say 2
    assert [a1.seq, b1.seq, a2.seq] == [1, 2, 3]
    assert [r.seq for r in await b.read(Scope(u, session_id="trip"))] == [1, 2, 3]
    await a.close()
    await b.close()


async def test_offline_turn_is_renumbered_by_the_server(net: Switch, tmp_path: Path) -> None:
    a = device(net, tmp_path / "a.db", circuit_cooldown=0.0)
    b = device(net, tmp_path / "b.db")
    u = new_id()
    await a.refresh_capabilities()
    net.down = True
    (provisional,) = await a.add([turn(u, "trip", "written offline on a")])
    assert provisional.seq == 1
    net.down = False
    await b.add([turn(u, "trip", "b one"), turn(u, "trip", "b two")])  # takes 1 and 2
    assert await a.flush() == 1
    got = await a.read(Scope(u, session_id="trip"))
    assert [(r.seq, r.text) for r in got] == [
        (1, "b one"),
        (2, "b two"),
        (3, "written offline on a"),
    ]
    assert (await a.outbox_status()).dead == 0
    await a.close()
    await b.close()


async def test_idempotent_across_devices(net: Switch, tmp_path: Path) -> None:
    a, b = device(net, tmp_path / "a.db"), device(net, tmp_path / "b.db")
    u = new_id()
    rec = turn(u, "s", "stored once", key="shared-key")
    (first,) = await a.add([rec])
    (again,) = await b.add([rec])
    assert again.id == first.id and again.seq == first.seq
    assert len(await a.read(Scope(u))) == 1
    await a.close()
    await b.close()


async def test_a_rejected_record_does_not_sink_its_batch(net: Switch) -> None:
    store = device(net)
    u = new_id()
    await store.add([turn(u, "s", "holds number one")])
    with pytest.raises(InvalidInputError):
        await store.add([turn(u, "s", "wants a taken number", seq=1), turn(u, "s", "fine")])
    assert [r.text for r in await store.read(Scope(u))] == ["holds number one", "fine"]
    status = await store.outbox_status()
    assert (status.pending, status.dead) == (0, 1)
    await store.close()


async def test_record_too_large_for_one_body_goes_as_parts(net: Switch) -> None:
    store = device(net)
    u = new_id()
    text = "meadow " * 20_000  # ~140 KB: over the server's 64 KiB body limit
    await store.add([turn(u, "s", "before"), turn(u, "s", text), turn(u, "s", "after")])
    assert net.used("/api/memory/store") and net.used("/api/memory/x/add")
    got = await store.read(Scope(u))
    assert [(r.seq, len(r.text)) for r in got] == [(1, 6), (2, len(text)), (3, 5)]
    await store.close()


# -- deletes drop queued writes of the scope ---------------------------------------------------


async def test_delete_drops_queued_writes_of_the_scope(net: Switch) -> None:
    store = device(net, circuit_cooldown=3600.0)
    u = new_id()
    await store.add([turn(u, "gone", "stored then deleted"), turn(u, "kept", "stored and kept")])
    net.down = True
    await store.add([turn(u, "gone", "queued then deleted"), turn(u, "kept", "queued and kept")])
    net.down = False  # the circuit is still open: both stay queued
    assert (await store.outbox_status()).pending == 2
    assert await store.delete(Scope(u, session_id="gone")) == 2  # one stored + one queued
    assert (await store.outbox_status()).pending == 1
    assert await store.flush() == 1
    texts = [r.text for r in await store.read(Scope(u))]
    assert texts == ["stored and kept", "queued and kept"]
    await store.close()


async def test_forget_queued_narrows_by_ids(tmp_path: Path) -> None:
    fake = FakeTiamat(api_key=KEY)
    store = TiamatCloudStore(
        "https://tiamat.test", KEY, transport=fake.transport, outbox=":memory:", max_retries=0
    )
    u = new_id()
    fake.down = True
    out = await store.add([turn(u, "s", "drop me"), turn(u, "s", "keep me")])
    assert await store.forget_queued(u, ids=[out[0].id]) == 1
    assert [q.record.text for q in await store.outbox.pending()] == ["keep me"]
    await store.close()


# -- TiamatSession markers never surface in recall ---------------------------------------------


def marker(user: str, session: str) -> MemoryRecord:
    return make_record(
        user_id=user,
        session_id=session,
        kind="turn",
        role="marker",
        text="",
        meta={"marker": "pop", "target_seq": 1},
        key="tiamat-session:pop:1",
    )


async def test_hosted_search_drops_markers() -> None:
    fake = FakeTiamat(api_key=KEY)
    store = TiamatCloudStore(
        "https://tiamat.test",
        KEY,
        transport=fake.transport,
        outbox=":memory:",
        strict=True,
        recall_deadline=10.0,
    )
    u = new_id()
    await store.add([turn(u, "s", "the pop concert was loud"), marker(u, "s")])
    # The hosted recall does match the marker's envelope header...
    recall = await store._call("GET", "/api/memory/recall", params={"query": "marker pop"})
    assert any('"marker"' in m["content"] for m in recall["results"])
    # ...but search never returns it.
    hits = await store.search("marker pop target", Scope(u))
    assert [h.record.text for h in hits] == ["the pop concert was loud"]
    await store.close()


async def test_server_search_drops_markers(net: Switch) -> None:
    store = device(net)
    u = new_id()
    await store.add([turn(u, "s", "the pop concert was loud"), marker(u, "s")])
    hits = await store.search("marker pop target", Scope(u))
    assert [h.record.text for h in hits] == ["the pop concert was loud"]
    assert any(r.meta.get("marker") for r in await store.read(Scope(u)))  # reads keep them
    await store.close()


# -- outbox schema -----------------------------------------------------------------------------


async def test_outbox_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    rec = turn("alice", "s", "queued by the old version", seq=4)
    conn.execute(
        "INSERT INTO pending (user_id, session_id, key, record, enqueued_us) VALUES (?,?,?,?,?)",
        ("alice", "s", rec.key, rec.model_dump_json(), 0),
    )
    conn.commit()
    conn.close()
    outbox = Outbox(path)
    (q,) = await outbox.pending()
    assert q.record.seq == 4 and q.local_seq is False  # never renumbered: its number was given
    await outbox.close()
