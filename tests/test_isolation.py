"""Isolation: a recall never returns a record of another scope.

Property test on SQLite: random layouts of users, agents and sessions (ids chosen to collide in
case, prefix and Unicode look-alikes), every record made of the SAME vocabulary so every query
matches every user's records, then 10,000 scoped recalls (10 layouts x 1,000) through
``store.search``, ``store.read`` and :class:`Recaller` — 0 records from another scope allowed.
The same through the self-hosted server with two API keys (two tenants, same user ids).
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.recall import RecallConfig, Recaller
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

pytestmark = pytest.mark.reliability

WORDS = [
    "trip",
    "kyoto",
    "ramen",
    "budget",
    "dog",
    "biscuit",
    "marathon",
    "berlin",
    "train",
    "hotel",
]
RECALLS_PER_LAYOUT = 1_000
LAYOUTS = 10

_ID = st.text(alphabet="aAb/ _\u200bé1", min_size=1, max_size=6).filter(lambda s: s.strip() != "")


def in_scope(record: MemoryRecord, scope: Scope) -> bool:
    return (
        record.user_id == scope.user_id
        and (scope.agent_id is None or record.agent_id == scope.agent_id)
        and (scope.session_id is None or record.session_id == scope.session_id)
    )


@pytest.mark.slow
@settings(
    max_examples=LAYOUTS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    users=st.lists(_ID, min_size=2, max_size=5, unique=True),
    agents=st.lists(_ID, min_size=1, max_size=3, unique=True),
    sessions=st.lists(_ID, min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
async def test_recall_never_crosses_scopes(
    users: list[str], agents: list[str], sessions: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    store = SQLiteMemoryStore(":memory:")
    recaller = Recaller(store, config=RecallConfig(budget=400))
    try:
        records = []
        for n in range(120):
            text = " ".join(rng.choice(WORDS) for _ in range(6))
            records.append(
                make_record(
                    user_id=rng.choice(users),
                    agent_id=rng.choice([*agents, None]),
                    session_id=rng.choice([*sessions, None]),
                    role="user",
                    text=f"{text} #{n}",
                )
            )
        await store.add(records)
        checked = 0
        for i in range(RECALLS_PER_LAYOUT):
            scope = Scope(
                rng.choice(users),
                agent_id=rng.choice([*agents, None]),
                session_id=rng.choice([*sessions, None]),
            )
            query = " ".join(rng.sample(WORDS, 3))
            if i % 10 == 0:
                result = await recaller.recall(scope, query)
                found = [s.record for s in result.snippets]
            elif i % 10 == 1:
                found = await store.read(scope, limit=50)
            else:
                found = [h.record for h in await store.search(query, scope, limit=50)]
            for rec in found:
                assert in_scope(rec, scope), (rec.user_id, rec.agent_id, rec.session_id, scope)
            checked += len(found)
        # Not vacuous: the shared vocabulary makes most recalls return something.
        assert checked > RECALLS_PER_LAYOUT
    finally:
        await store.close()


async def test_two_api_keys_never_see_each_other(tmp_path: Path) -> None:
    from tiamat_hooks.server import create_app

    backing = SQLiteMemoryStore(tmp_path / "server.db")
    app = create_app(backing, keys={"key-a": "tenant-a", "key-b": "tenant-b"})
    transport = httpx.ASGITransport(app=app)

    def client(key: str, name: str) -> TiamatCloudStore:
        return TiamatCloudStore(
            "http://tiamat-server.test",
            key,
            transport=transport,
            outbox=tmp_path / f"{name}.db",
            retry_base_delay=0.0,
            recall_deadline=10.0,
            strict=True,
        )

    a, b = client("key-a", "a"), client("key-b", "b")
    rng = random.Random(7)
    try:
        # Both tenants use the same user ids, sessions and vocabulary; only the tenant differs.
        for tenant, store in (("A", a), ("B", b)):
            await store.add(
                [
                    make_record(
                        user_id=rng.choice(["alice", "bob"]),
                        session_id=rng.choice(["s1", "s2"]),
                        role="user",
                        text=" ".join(rng.choice(WORDS) for _ in range(5)) + f" tenant{tenant}",
                    )
                    for _ in range(60)
                ]
            )
        checked = 0
        for tenant, store in (("A", a), ("B", b)):
            other = "tenantB" if tenant == "A" else "tenantA"
            for _ in range(100):
                scope = Scope(
                    rng.choice(["alice", "bob"]), session_id=rng.choice(["s1", "s2", None])
                )
                query = " ".join(rng.sample(WORDS, 3))
                found = [h.record for h in await store.search(query, scope, limit=50)]
                found += await store.read(scope)
                for rec in found:
                    assert other not in rec.text
                    assert in_scope(rec, scope)
                checked += len(found)
            assert set(await store.list_users()) <= {"alice", "bob"}
        assert checked > 100
        # The raw API: a tenant cannot name the other tenant's stored user ids either.
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as raw:
            headers = {"Authorization": "Bearer key-b"}
            for user in ("tenant-a/alice", "../tenant-a/alice", "tenant-a", "alice"):
                r = await raw.get("/api/memory/x/read", params={"user": user}, headers=headers)
                if r.status_code == 200:
                    assert all("tenantA" not in rec["text"] for rec in r.json()["records"])
            listed = await raw.get("/api/memory/list", params={"limit": 1000}, headers=headers)
            assert "tenantA" not in listed.text
            recalled = await raw.get(
                "/api/memory/recall", params={"query": "trip kyoto ramen"}, headers=headers
            )
            assert "tenantA" not in recalled.text
    finally:
        await a.close()
        await b.close()
        await backing.close()
