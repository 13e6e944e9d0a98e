"""The self-hosted server, in process over ``httpx.ASGITransport``: the hosted API, auth, limits,
tenancy, the extension endpoints, the OpenAPI document and the key registry."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tiamat_hooks.cli import app as cli_app
from tiamat_hooks.envelope import PART_PREFIX, PREFIX, decode, encode, is_envelope
from tiamat_hooks.errors import CapabilityError, ConfigError, InvalidInputError
from tiamat_hooks.models import MemoryRecord, Scope, StoreCapabilities, make_record
from tiamat_hooks.server import (
    EXTENSIONS,
    KeyChain,
    KeyRegistry,
    Principal,
    StaticKeys,
    create_app,
    default_keys_path,
)
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

KEY_A, KEY_B = "key-a", "key-b"
BASE = "http://tiamat-server.test"


@pytest.fixture
async def backing(tmp_path: Path) -> AsyncIterator[SQLiteMemoryStore]:
    store = SQLiteMemoryStore(tmp_path / "server.db")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def asgi(backing: SQLiteMemoryStore) -> Any:
    return create_app(backing, keys={KEY_A: "tenant-a", KEY_B: "tenant-b"})


@pytest.fixture
async def http(asgi: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An unauthenticated client of the app; pass ``headers=auth(KEY)`` per request."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url=BASE) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def client_a(asgi: Any, tmp_path: Path) -> AsyncIterator[TiamatCloudStore]:
    store = TiamatCloudStore(
        BASE,
        KEY_A,
        transport=httpx.ASGITransport(app=asgi),
        outbox=tmp_path / "outbox-a.db",
        recall_deadline=10.0,
        strict=True,
        retry_base_delay=0.0,
    )
    try:
        yield store
    finally:
        await store.close()


def turns(user: str, session: str, texts: Sequence[str], **fields: Any) -> list[MemoryRecord]:
    return [
        make_record(user_id=user, session_id=session, role="user", text=t, **fields) for t in texts
    ]


# -- public endpoints ----------------------------------------------------------------------------


async def test_health_is_public_and_advertises_extensions(http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["extensions"]) == {"add", "delete", "read", "search", "sessions", "users"}
    assert body["extensions"] == list(EXTENSIONS)
    assert body["max_recall_limit"] == 50
    assert body["can_delete"] is True


async def test_client_reads_extensions_from_health(client_a: TiamatCloudStore) -> None:
    await client_a.refresh_capabilities()
    assert {"delete", "sessions", "read"} <= client_a.server_extensions
    caps = client_a.capabilities
    # The search extension's limit, not the hosted recall's 50; delete and cheap reads too.
    assert caps.max_search_limit == 1000
    assert caps.can_delete is True
    assert caps.neighbors is True


async def test_inspector_page_is_public_and_self_contained(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" in page and "sessionStorage" in page
    # No CDN, no external resources: everything the page loads is itself or this API.
    assert "http://" not in page and "https://" not in page
    assert "default-src 'self'" in r.headers["content-security-policy"]


# -- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY_A}"}, auth("")],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/memory/recall?query=x"),
        ("GET", "/api/memory/list"),
        ("GET", "/api/memory/stats"),
        ("POST", "/api/memory/store"),
        ("POST", "/api/memory/learn"),
        ("GET", "/api/memory/x/users"),
        ("POST", "/api/memory/x/delete"),
    ],
)
async def test_requests_without_a_valid_key_get_401(
    http: httpx.AsyncClient, headers: dict[str, str], method: str, path: str
) -> None:
    r = await http.request(method, path, headers=headers, json={"content": "x"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "error" in r.json()


async def test_wrong_key_maps_to_config_error_in_the_client(asgi: Any, tmp_path: Path) -> None:
    store = TiamatCloudStore(
        BASE,
        "not-a-key",
        transport=httpx.ASGITransport(app=asgi),
        outbox=tmp_path / "o.db",
        strict=True,
        recall_deadline=10.0,
    )
    try:
        with pytest.raises(ConfigError, match="API key"):
            await store.add(turns("u", "s", ["hello"]))
    finally:
        await store.close()


# -- the hosted API ------------------------------------------------------------------------------


async def test_plain_content_is_stored_and_recalled_as_plain(
    http: httpx.AsyncClient, backing: SQLiteMemoryStore
) -> None:
    r = await http.post(
        "/api/memory/store",
        headers=auth(KEY_A),
        json={"content": "The staging database password rotates every Monday", "tags": ["ops"]},
    )
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["stored"] == "plain"

    r = await http.get(
        "/api/memory/recall", params={"query": "database rotates", "limit": 5}, headers=auth(KEY_A)
    )
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 1
    memory = body["results"][0]
    assert memory["content"] == "The staging database password rotates every Monday"
    assert memory["tags"] == ["ops"]
    assert memory["importance"] == 0.5
    assert memory["score"] > 0
    assert not is_envelope(memory)
    # Filed as a fact of the key's default user, under the tenant.
    records = await backing.read(Scope("tenant-a/default"))
    assert [(r.kind, r.text) for r in records] == [
        ("fact", "The staging database password rotates every Monday")
    ]


async def test_recall_must_be_get(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/memory/recall", headers=auth(KEY_A), json={"query": "x"})
    assert r.status_code == 405


@pytest.mark.parametrize("limit", ["0", "51", "100", "ten", "-1"])
async def test_recall_limit_out_of_range_is_422(http: httpx.AsyncClient, limit: str) -> None:
    r = await http.get(
        "/api/memory/recall", params={"query": "x", "limit": limit}, headers=auth(KEY_A)
    )
    assert r.status_code == 422
    assert "limit" in r.json()["error"]


async def test_recall_returns_at_most_limit_and_caps_at_50(http: httpx.AsyncClient) -> None:
    for i in range(55):
        r = await http.post(
            "/api/memory/store", headers=auth(KEY_A), json={"content": f"apple note {i}"}
        )
        assert r.status_code == 200
    r = await http.get(
        "/api/memory/recall", params={"query": "apple", "limit": 50}, headers=auth(KEY_A)
    )
    assert r.status_code == 200
    assert r.json()["count"] == 50 == len(r.json()["results"])
    r = await http.get(
        "/api/memory/recall", params={"query": "apple", "limit": 7}, headers=auth(KEY_A)
    )
    assert r.json()["count"] == 7


async def test_body_over_64_kib_is_413(http: httpx.AsyncClient) -> None:
    big = {"content": "x" * 70_000}
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json=big)
    assert r.status_code == 413
    assert "larger" in r.json()["error"]


async def test_streamed_body_without_length_is_still_limited(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    r = await http.post("/api/memory/store", headers=auth(KEY_A), content=chunks())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        {"content": "x" * 10_001},
        {"content": ""},
        {"tags": ["a"]},
        {"content": "ok", "tags": [f"t{i}" for i in range(21)]},
        {"content": "ok", "importance": 1.5},
        {"content": "ok", "importance": -0.1},
        {"content": 12},
        ["not", "an", "object"],
    ],
)
async def test_invalid_store_bodies_are_422(http: httpx.AsyncClient, body: Any) -> None:
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json=body)
    assert r.status_code == 422
    assert "error" in r.json()


async def test_validation_error_has_details(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/memory/store", headers=auth(KEY_A), json={"content": "ok", "importance": 3}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["importance"]


async def test_body_that_is_not_json_is_400(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/memory/store",
        headers={**auth(KEY_A), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 400


async def test_envelope_becomes_a_real_record(
    http: httpx.AsyncClient, backing: SQLiteMemoryStore
) -> None:
    record = make_record(
        user_id="alice",
        session_id="s1",
        agent_id="helper",
        role="user",
        text="My sister's wedding is in Lisbon next June",
        seq=1,
        item={"role": "user", "content": "My sister's wedding is in Lisbon next June"},
    )
    (payload,) = encode(record)
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json=dict(payload))
    assert r.status_code == 200 and r.json()["stored"] == "record"

    # Stored in the underlying store under the tenant, searchable with the store's own FTS.
    hits = await backing.search("weddings Lisbon", Scope("tenant-a/alice"))
    assert [h.record.text for h in hits] == [record.text]
    stored = hits[0].record
    assert stored.id == "tenant-a/" + record.id
    assert stored.model_dump(exclude={"id", "user_id"}) == record.model_dump(
        exclude={"id", "user_id"}
    )

    # Served back as an envelope that decodes to the very record the client sent.
    r = await http.get("/api/memory/list", headers=auth(KEY_A))
    assert decode(r.json()["results"]) == [record]
    assert r.json()["total"] == 1


async def test_storing_the_same_envelope_twice_keeps_one_record(
    http: httpx.AsyncClient, backing: SQLiteMemoryStore
) -> None:
    (payload,) = encode(make_record(user_id="u", session_id="s", text="only once", seq=1))
    for _ in range(2):
        r = await http.post("/api/memory/store", headers=auth(KEY_A), json=dict(payload))
        assert r.status_code == 200
    assert (await backing.stats()).records == 1


async def test_plain_content_with_idempotency_key_is_stored_once(
    http: httpx.AsyncClient, backing: SQLiteMemoryStore
) -> None:
    for _ in range(2):
        r = await http.post(
            "/api/memory/store",
            headers={**auth(KEY_A), "Idempotency-Key": "abc-1"},
            json={"content": "retried note"},
        )
        assert r.status_code == 200
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json={"content": "retried note"})
    assert (await backing.stats()).records == 2


async def test_malformed_envelope_is_422(http: httpx.AsyncClient) -> None:
    for content in (PREFIX + "{broken\nbody", PART_PREFIX + '{"id": 3}\nchunk'):
        r = await http.post("/api/memory/store", headers=auth(KEY_A), json={"content": content})
        assert r.status_code == 422, content


async def test_split_record_is_stored_when_its_last_part_arrives(
    http: httpx.AsyncClient, backing: SQLiteMemoryStore
) -> None:
    record = make_record(user_id="u", session_id="s", text="long story " * 3000, seq=1)
    payloads = encode(record)
    assert len(payloads) >= 3
    # Out of order, with a replayed part: neither may duplicate or store half a record.
    order = [*range(1, len(payloads)), 1]
    for i in order:
        r = await http.post("/api/memory/store", headers=auth(KEY_A), json=dict(payloads[i]))
        assert r.json()["stored"] == "part"
    assert (await http.get("/api/memory/list", headers=auth(KEY_A))).json()["total"] == 0
    assert await backing.read(Scope("tenant-a/u")) == []

    r = await http.post("/api/memory/store", headers=auth(KEY_A), json=dict(payloads[0]))
    assert r.json()["stored"] == "record"
    stored = await backing.read(Scope("tenant-a/u"))
    assert [s.text for s in stored] == [record.text]
    # The staging area is emptied once the record is whole.
    assert await backing.list_users() == ["tenant-a/u"]
    listed = (await http.get("/api/memory/list", headers=auth(KEY_A))).json()["results"]
    assert len(listed) == len(payloads)
    assert decode(listed) == [record]


async def test_recall_returns_every_part_of_a_split_record(
    http: httpx.AsyncClient, client_a: TiamatCloudStore
) -> None:
    long_text = "The quarterly zeppelin report. " + "filler words here. " * 1500
    await client_a.add(turns("u", "s", [long_text]))
    r = await http.get(
        "/api/memory/recall", params={"query": "zeppelin", "limit": 1}, headers=auth(KEY_A)
    )
    results = r.json()["results"]
    assert len(results) > 1
    assert [rec.text for rec in decode(results)] == [long_text]


async def test_learn_stores_a_fact(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/memory/learn",
        headers=auth(KEY_A),
        json={"subject": "Ada", "predicate": "prefers", "object": "tea", "confidence": 0.9},
    )
    assert r.status_code == 200 and r.json()["success"] is True
    r = await http.post(
        "/api/memory/learn", headers=auth(KEY_A), json={"subject": "Ada", "predicate": "likes"}
    )
    assert r.status_code == 422
    stats = (await http.get("/api/memory/stats", headers=auth(KEY_A))).json()
    assert stats["total_facts"] == 1
    assert stats["by_kind"] == {"fact": 1}
    r = await http.get("/api/memory/recall", params={"query": "tea"}, headers=auth(KEY_A))
    assert r.json()["results"][0]["content"] == "Ada prefers tea"


async def test_stats_count_the_tenant(http: httpx.AsyncClient, client_a: TiamatCloudStore) -> None:
    await client_a.add(turns("u1", "s1", ["one", "two"]) + turns("u2", "s9", ["three"]))
    stats = (await http.get("/api/memory/stats", headers=auth(KEY_A))).json()
    assert stats["users"] == 2 and stats["sessions"] == 2 and stats["records"] == 3
    assert stats["total_memories"] == 3
    assert (await http.get("/api/memory/stats", headers=auth(KEY_B))).json()["records"] == 0


async def test_list_pages_with_limit_and_offset(
    http: httpx.AsyncClient, client_a: TiamatCloudStore
) -> None:
    await client_a.add(turns("u", "s", [f"turn number {i}" for i in range(7)]))
    seen: list[str] = []
    for offset in range(0, 7, 3):
        r = await http.get(
            "/api/memory/list", params={"limit": 3, "offset": offset}, headers=auth(KEY_A)
        )
        assert r.json()["total"] == 7
        seen += [m["id"] for m in r.json()["results"]]
    assert len(seen) == len(set(seen)) == 7
    r = await http.get("/api/memory/list", params={"limit": 0}, headers=auth(KEY_A))
    assert r.status_code == 422


# -- tenancy -------------------------------------------------------------------------------------


async def test_two_keys_see_only_their_own_memory(
    asgi: Any, http: httpx.AsyncClient, tmp_path: Path, backing: SQLiteMemoryStore
) -> None:
    def client(key: str) -> TiamatCloudStore:
        return TiamatCloudStore(
            BASE,
            key,
            transport=httpx.ASGITransport(app=asgi),
            outbox=tmp_path / f"outbox-{key}.db",
            recall_deadline=10.0,
            strict=True,
        )

    a, b = client(KEY_A), client(KEY_B)
    try:
        # The same user and session names in both tenants.
        (ra,) = await a.add(turns("alice", "s1", ["Tenant A keeps the violet umbrella"]))
        await b.add(turns("alice", "s1", ["Tenant B keeps the orange kayak"]))
        # Tenant B even reuses tenant A's record id: no conflict, no leak.
        await b.add(
            [ra.model_copy(update={"text": "B's copy of the id", "key": "other", "seq": 2})]
        )

        assert [h.record.text for h in await a.search("umbrella kayak", Scope("alice"))] == [
            "Tenant A keeps the violet umbrella"
        ]
        assert "Tenant A keeps the violet umbrella" not in [
            h.record.text for h in await b.search("umbrella kayak", Scope("alice"))
        ]
        assert [r.text for r in await a.read(Scope("alice"))] == [
            "Tenant A keeps the violet umbrella"
        ]
        assert len(await b.read(Scope("alice"))) == 2
    finally:
        await a.close()
        await b.close()

    for key, other in ((KEY_A, "kayak"), (KEY_B, "umbrella")):
        r = await http.get("/api/memory/recall", params={"query": other}, headers=auth(key))
        assert r.json()["count"] == 0
        r = await http.get(
            "/api/memory/x/search", params={"query": other, "user": "alice"}, headers=auth(key)
        )
        assert r.json()["count"] == 0
    assert sorted(await backing.list_users()) == ["tenant-a/alice", "tenant-b/alice"]

    # B cannot delete A's memory, even naming A's record id.
    r = await http.post(
        "/api/memory/x/delete", headers=auth(KEY_B), json={"user": "alice", "ids": [ra.id]}
    )
    assert r.json()["deleted"] == 1  # B's own record with that id
    assert len(await backing.read(Scope("tenant-a/alice"))) == 1


async def test_user_id_too_long_once_prefixed_is_422(http: httpx.AsyncClient) -> None:
    (payload,) = encode(make_record(user_id="u" * 250, text="hi"))
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json=dict(payload))
    assert r.status_code == 422


# -- extensions ----------------------------------------------------------------------------------


async def test_users_and_sessions(http: httpx.AsyncClient, client_a: TiamatCloudStore) -> None:
    await client_a.add(turns("bob", "s1", ["a", "b"]) + turns("bob", "s2", ["c"]))
    await client_a.add(turns("carol", "x", ["d"]))
    r = await http.get("/api/memory/x/users", headers=auth(KEY_A))
    assert r.json() == {"users": ["bob", "carol"], "count": 2}
    assert (await http.get("/api/memory/x/users", headers=auth(KEY_B))).json()["users"] == []
    r = await http.get("/api/memory/x/sessions", params={"user": "bob"}, headers=auth(KEY_A))
    sessions = r.json()["sessions"]
    assert [(s["session_id"], s["records"], s["last_seq"]) for s in sessions] == [
        ("s1", 2, 2),
        ("s2", 1, 1),
    ]
    r = await http.get("/api/memory/x/sessions", headers=auth(KEY_A))
    assert r.status_code == 422


async def test_read_in_order_by_seq_range(
    http: httpx.AsyncClient, client_a: TiamatCloudStore
) -> None:
    written = await client_a.add(turns("bob", "s1", [f"turn {i}" for i in range(1, 9)]))
    summary = make_record(user_id="bob", session_id="s1", kind="summary", text="a summary")
    await client_a.add([summary])

    async def read(**params: Any) -> dict[str, Any]:
        r = await http.get(
            "/api/memory/x/read", params={"user": "bob", **params}, headers=auth(KEY_A)
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    body = await read(session="s1", kind="turn")
    records = [MemoryRecord.model_validate(r) for r in body["records"]]
    assert records == written  # lossless, client ids, in seq order
    body = await read(session="s1", kind="turn", seq_from=3, seq_to=5)
    assert [r["seq"] for r in body["records"]] == [3, 4, 5]
    body = await read(session="s1", kind="turn", limit=2, newest="true")
    assert [r["seq"] for r in body["records"]] == [7, 8] and body["truncated"] is True
    body = await read(session="s1", limit=3)
    assert [r["seq"] for r in body["records"]] == [1, 2, 3] and body["truncated"] is True
    body = await read(kind="summary")
    assert [r["text"] for r in body["records"]] == ["a summary"]
    body = await read(kind="turn,summary")
    assert body["count"] == 9 and body["truncated"] is False
    r = await http.get(
        "/api/memory/x/read", params={"user": "bob", "kind": "bogus"}, headers=auth(KEY_A)
    )
    assert r.status_code == 422


async def test_search_extension_is_scoped(
    http: httpx.AsyncClient, client_a: TiamatCloudStore
) -> None:
    await client_a.add(turns("bob", "s1", ["the lighthouse keeper sings"]))
    await client_a.add(turns("bob", "s2", ["another lighthouse far away"]))
    await client_a.add(turns("eve", "s1", ["eve's lighthouse"]))
    r = await http.get(
        "/api/memory/x/search",
        params={"query": "lighthouse", "user": "bob", "session": "s1"},
        headers=auth(KEY_A),
    )
    hits = r.json()["hits"]
    assert [h["record"]["text"] for h in hits] == ["the lighthouse keeper sings"]
    assert hits[0]["score"] > 0 and hits[0]["record"]["user_id"] == "bob"
    r = await http.get(
        "/api/memory/x/search", params={"query": "lighthouse", "user": "bob"}, headers=auth(KEY_A)
    )
    assert r.json()["count"] == 2
    r = await http.get(
        "/api/memory/x/search",
        params={"query": "lighthouse", "user": "bob", "limit": 1001},
        headers=auth(KEY_A),
    )
    assert r.status_code == 422


async def test_add_extension_assigns_sequence_numbers(http: httpx.AsyncClient) -> None:
    records = [
        make_record(user_id="dev", session_id="s", role="user", text=t).model_dump(mode="json")
        for t in ("first", "second")
    ]
    r = await http.post("/api/memory/x/add", headers=auth(KEY_A), json={"records": records})
    assert r.status_code == 200
    assert [x["seq"] for x in r.json()["records"]] == [1, 2]
    # Idempotent: the same records again come back as stored.
    r = await http.post("/api/memory/x/add", headers=auth(KEY_A), json={"records": records})
    assert [x["seq"] for x in r.json()["records"]] == [1, 2]
    clash = make_record(user_id="dev", session_id="s", text="clash", seq=2)
    r = await http.post(
        "/api/memory/x/add",
        headers=auth(KEY_A),
        json={"records": [clash.model_dump(mode="json")]},
    )
    assert r.status_code == 409
    r = await http.post(
        "/api/memory/x/add", headers=auth(KEY_A), json={"records": [{"text": "no user"}]}
    )
    assert r.status_code == 422


async def test_delete_by_ids_by_session_and_whole_user(
    http: httpx.AsyncClient, client_a: TiamatCloudStore, backing: SQLiteMemoryStore
) -> None:
    s1 = await client_a.add(turns("bob", "s1", ["a1", "a2", "a3"]))
    await client_a.add(turns("bob", "s2", ["b1", "b2"]))
    await client_a.add(turns("carol", "s1", ["c1"]))

    async def delete(body: dict[str, Any]) -> int:
        r = await http.post("/api/memory/x/delete", headers=auth(KEY_A), json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["deleted"])

    assert await delete({"user": "bob", "ids": [s1[1].id]}) == 1
    assert [r.text for r in await backing.read(Scope("tenant-a/bob", session_id="s1"))] == [
        "a1",
        "a3",
    ]
    assert await delete({"user": "bob", "session": "s2"}) == 2
    assert await delete({"user": "bob"}) == 2
    assert await backing.read(Scope("tenant-a/bob")) == []
    assert [r.text for r in await backing.read(Scope("tenant-a/carol"))] == ["c1"]
    r = await http.post("/api/memory/x/delete", headers=auth(KEY_A), json={"session": "s1"})
    assert r.status_code == 422


async def test_plain_memory_can_be_deleted_by_its_listed_id(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/memory/store", headers=auth(KEY_A), json={"content": "scratch"})
    mid = r.json()["id"]
    assert [
        m["id"] for m in (await http.get("/api/memory/list", headers=auth(KEY_A))).json()["results"]
    ] == [mid]
    r = await http.post(
        "/api/memory/x/delete", headers=auth(KEY_A), json={"user": "default", "ids": [mid]}
    )
    assert r.json()["deleted"] == 1


class _NoDeleteStore(SQLiteMemoryStore):
    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(can_delete=False)

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        raise CapabilityError("this store cannot delete")


async def test_delete_on_a_store_that_cannot_is_501(tmp_path: Path) -> None:
    store = _NoDeleteStore(tmp_path / "nodelete.db")
    app = create_app(store, keys={KEY_A: "t"})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            r = await c.post("/api/memory/x/delete", headers=auth(KEY_A), json={"user": "u"})
            assert r.status_code == 501
            assert "CapabilityError" in r.json()["error"]
            assert (await c.get("/health")).json()["can_delete"] is False
    finally:
        await store.close()


async def test_client_record_roundtrips_through_extensions(
    http: httpx.AsyncClient, client_a: TiamatCloudStore
) -> None:
    (stored,) = await client_a.add(
        turns("zed", "s", ["with item"], item={"type": "message", "content": [1, 2]}, meta={"x": 1})
    )
    r = await http.get("/api/memory/x/read", params={"user": "zed"}, headers=auth(KEY_A))
    assert [MemoryRecord.model_validate(x) for x in r.json()["records"]] == [stored]


# -- OpenAPI -------------------------------------------------------------------------------------


async def test_openapi_document_is_valid_and_complete(http: httpx.AsyncClient, asgi: Any) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    try:
        from openapi_spec_validator import validate
    except ImportError:  # structural checks only
        assert all("responses" in op for item in doc["paths"].values() for op in item.values())
    else:
        validate(doc)
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    served = {
        (m, route.path) for route in asgi.routes for m in (route.methods or ()) if m != "HEAD"
    }
    assert served == documented


# -- packaging -----------------------------------------------------------------------------------


def test_server_package_imports_the_web_stack_only_to_build_an_app() -> None:
    # Checked on our own module: openai-agents itself imports starlette (through mcp), so
    # "starlette not in sys.modules" would test that library, not this package.
    code = (
        "import sys, tiamat_hooks.cli, tiamat_hooks.server; "
        "sys.exit('app module imported' if 'tiamat_hooks.server.app' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_starlette_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delitem(sys.modules, "tiamat_hooks.server.app", raising=False)
    monkeypatch.setitem(sys.modules, "starlette.applications", None)
    with pytest.raises(ConfigError, match=r"pip install 'tiamat-hooks\[server\]'"):
        create_app(SQLiteMemoryStore(tmp_path / "x.db"), keys={"k": "t"})


# -- keys ----------------------------------------------------------------------------------------


def test_registry_issues_resolves_and_revokes(tmp_path: Path) -> None:
    reg = KeyRegistry(tmp_path / "keys.db")
    key, info = reg.create("laptop", tenant="alice")
    assert key.startswith("th_") and len(key) > 40
    assert reg.resolve(key) == Principal("laptop", "alice", "default")
    assert reg.resolve(key + "x") is None and reg.resolve("") is None
    key2, _ = reg.create("phone", tenant="alice")
    assert key2 != key and reg.resolve(key2) == Principal("phone", "alice")
    with pytest.raises(InvalidInputError, match="already exists"):
        reg.create("laptop")
    with pytest.raises(ConfigError):
        reg.create("bad/tenant", tenant="a/b")
    # Only the hash is stored.
    raw = (tmp_path / "keys.db").read_bytes()
    assert key.encode() not in raw
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 2
    assert reg.revoke("laptop") is True
    assert reg.revoke("laptop") is False
    assert reg.resolve(key) is None
    assert [(k.name, k.active) for k in reg.list()] == [("laptop", False), ("phone", True)]
    assert reg.revoke(info.id) is False  # already revoked, by id this time


def test_key_chain_and_static_keys() -> None:
    chain = KeyChain(StaticKeys({"a": "ta"}), StaticKeys({"b": Principal("bee", "tb", "me")}))
    assert chain.resolve("a") == Principal("static-0", "ta")
    assert chain.resolve("b") == Principal("bee", "tb", "me")
    assert chain.resolve("c") is None
    with pytest.raises(ConfigError):
        StaticKeys({"k": "no/slashes"})


def test_default_keys_path_sits_next_to_a_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "data" / "memory.db"
    assert default_keys_path(f"sqlite:///{db}") == db.with_name("memory.keys.db")
    assert default_keys_path(str(db)) == db.with_name("memory.keys.db")
    assert default_keys_path("postgresql://h/db").name == "keys.db"
    assert default_keys_path("sqlite://:memory:").name == "keys.db"


async def test_registry_keys_work_on_a_running_app_and_revocation_applies(
    tmp_path: Path, backing: SQLiteMemoryStore
) -> None:
    reg = KeyRegistry(tmp_path / "keys.db")
    key, _ = reg.create("ci")
    app = create_app(backing, keys=reg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        assert (await c.get("/api/memory/stats", headers=auth(key))).status_code == 200
        reg.revoke("ci")
        assert (await c.get("/api/memory/stats", headers=auth(key))).status_code == 401


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    keys = str(tmp_path / "keys.db")
    created = runner.invoke(
        cli_app, ["keys", "create", "--name", "desk", "--tenant", "team", "--keys", keys]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("th_")
    assert KeyRegistry(keys).resolve(key) == Principal("desk", "team")

    listed = runner.invoke(cli_app, ["keys", "list", "--keys", keys])
    assert listed.exit_code == 0 and "desk" in listed.stdout and key not in listed.stdout

    dup = runner.invoke(cli_app, ["keys", "create", "--name", "desk", "--keys", keys])
    assert dup.exit_code == 1 and "InvalidInputError" in dup.output

    revoked = runner.invoke(cli_app, ["keys", "revoke", "desk", "--keys", keys])
    assert revoked.exit_code == 0
    again = runner.invoke(cli_app, ["keys", "revoke", "desk", "--keys", keys])
    assert again.exit_code == 1
    assert KeyRegistry(keys).resolve(key) is None


def test_keys_default_to_a_file_next_to_the_store(tmp_path: Path) -> None:
    db = tmp_path / "mem.db"
    result = CliRunner().invoke(
        cli_app, ["keys", "create", "--name", "n1", "--store", f"sqlite:///{db}"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mem.keys.db").exists()
