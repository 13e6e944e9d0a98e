"""The TIAMAT cloud client pinned against the hosted API as documented.

respx stands in for the hosted service where a test pins the exact HTTP exchange (method, path,
query, headers, status handling); the in-memory fake (``tests/fake_tiamat.py``) where a test
needs a service that stores and answers (chunking, outbox replay, deadlines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import new_id
from tests.fake_tiamat import FakeTiamat
from tiamat_hooks import envelope
from tiamat_hooks.errors import (
    CapabilityError,
    ConfigError,
    InvalidInputError,
    QuotaExceededError,
    StoreTimeoutError,
    StoreUnavailableError,
    TiamatError,
)
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import open_store
from tiamat_hooks.stores.cloud import TiamatCloudStore, should_retry

BASE = "https://tiamat.test"
KEY = "sk-tiamat-SECRET-0123456789"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def rec(user: str, text: str, i: int = 0, session: str | None = "s", **kw: Any) -> MemoryRecord:
    return make_record(
        user_id=user,
        session_id=session,
        role="user",
        text=text,
        created_at=T0 + timedelta(seconds=i),
        **kw,
    )


def memory(record: MemoryRecord, n: int = 0) -> dict[str, Any]:
    """What the hosted service answers for a stored envelope."""
    (payload,) = envelope.encode(record)
    return {
        "id": f"m{n}",
        "content": payload["content"],
        "tags": payload["tags"],
        "importance": payload["importance"],
        "created_at": (T0 + timedelta(seconds=n)).isoformat(),
    }


def hosted(router: respx.MockRouter) -> respx.Route:
    """``GET /health`` as the hosted API answers it (no extensions): the one request extension
    detection adds before a store's first operation."""
    return router.get("/health").respond(json={"status": "ok"})


def make_store(**kw: Any) -> TiamatCloudStore:
    options: dict[str, Any] = {"outbox": ":memory:", "retry_base_delay": 0.0}
    options.update(kw)
    return TiamatCloudStore(BASE, KEY, **options)


@pytest.fixture
async def fake() -> FakeTiamat:
    return FakeTiamat(api_key=KEY)


@pytest.fixture
async def store(fake: FakeTiamat) -> AsyncIterator[TiamatCloudStore]:
    s = make_store(transport=fake.transport, circuit_cooldown=0.0, recall_deadline=5.0)
    try:
        yield s
    finally:
        await s.close()


# -- the exact HTTP exchange -------------------------------------------------------------------


async def test_recall_is_a_get_with_query_and_capped_limit_and_bearer() -> None:
    u = new_id()
    r = rec(u, "my dog is called Biscuit")
    store = make_store(recall_deadline=5.0)
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        hosted(router)
        recall = router.get("/api/memory/recall").respond(json={"results": [memory(r)], "count": 1})
        hits = await store.search("what is my dog called?", Scope(u), limit=500)
    await store.close()
    assert [h.record.id for h in hits] == [r.id]
    (call,) = recall.calls
    assert call.request.method == "GET"
    assert call.request.url.params["limit"] == "50"
    assert "dog" in call.request.url.params["query"]
    assert call.request.headers["authorization"] == f"Bearer {KEY}"
    assert store.capabilities.max_search_limit == 50


async def test_recall_reads_results_not_memories() -> None:
    u = new_id()
    good, other = rec(u, "kiwi in results", 0), rec(u, "kiwi in memories", 1)
    store = make_store(recall_deadline=5.0)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        router.get("/api/memory/recall").respond(
            json={"results": [memory(good)], "memories": [memory(other, 1)], "count": 1}
        )
        hits = await store.search("kiwi", Scope(u))
    await store.close()
    assert [h.record.text for h in hits] == ["kiwi in results"]


async def test_recall_never_posts() -> None:
    store = make_store(recall_deadline=5.0, strict=True)
    with respx.mock(base_url=BASE, assert_all_mocked=True) as router:
        hosted(router)
        get = router.get("/api/memory/recall").respond(json={"results": [], "count": 0})
        await store.search("anything at all", Scope(new_id()))
    await store.close()
    assert get.call_count == 1


async def test_list_accepts_memories_key_and_pages(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    fake.list_key = "memories"
    fake.max_list_page = 7
    store.page_size = 7
    u = new_id()
    await store.add([rec(u, f"note {i}", i) for i in range(20)])
    got = await store.read(Scope(u))
    assert [r.seq for r in got] == list(range(1, 21))
    offsets = [int(r.url.params["offset"]) for r in fake.calls("GET", "/api/memory/list")[-3:]]
    assert offsets == [0, 7, 14]


async def test_list_stops_when_the_server_ignores_offset() -> None:
    u = new_id()
    page = [memory(rec(u, f"n{i}", i), i) for i in range(3)]
    store = make_store(page_size=3)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/list").respond(json={"results": page})
        got = await store.read(Scope(u))
    await store.close()
    assert len(got) == 3
    assert route.call_count == 2  # the second page brought nothing new


# -- retries -----------------------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's backoff sleeps instead of waiting them out."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: Any) -> None:
        recorded.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("tiamat_hooks.stores.cloud.asyncio.sleep", fake_sleep)
    return recorded


async def test_429_with_retry_after_then_success(sleeps: list[float]) -> None:
    store = make_store(recall_deadline=5.0, strict=True)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/recall").mock(
            side_effect=[
                httpx.Response(429, json={"error": "quota", "retry_after_seconds": 7}),
                httpx.Response(429, headers={"Retry-After": "3"}),
                httpx.Response(200, json={"results": [], "count": 0}),
            ]
        )
        assert await store.search("hello world", Scope(new_id())) == []
    await store.close()
    assert route.call_count == 3
    assert sleeps == [7.0, 3.0]  # the body's retry_after_seconds, then the header
    assert store.stats_counters["retries"] == 2


async def test_backoff_is_exponential_jittered_and_bounded(sleeps: list[float]) -> None:
    store = make_store(
        recall_deadline=5.0, strict=True, max_retries=5, retry_base_delay=0.5, retry_max_delay=2.0
    )
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        router.get("/api/memory/recall").respond(503)
        with pytest.raises(StoreUnavailableError):
            await store.search("hello world", Scope(new_id()))
    await store.close()
    assert len(sleeps) == 5
    for attempt, delay in enumerate(sleeps):
        nominal = min(0.5 * 2**attempt, 2.0)
        assert 0.75 * nominal <= delay <= nominal


async def test_429_forever_raises_quota_for_reads_and_fails_open_for_recall() -> None:
    store = make_store(recall_deadline=5.0, max_retries=2)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        recall = router.get("/api/memory/recall").respond(429, json={"retry_after_seconds": 0})
        router.get("/api/memory/list").respond(429)
        assert await store.search("hello", Scope(new_id())) == []
        assert recall.call_count == 3  # first attempt + max_retries
        assert store.stats_counters["recall_errors"] == 1
        with pytest.raises(QuotaExceededError):
            await store.search("hello", Scope(new_id()), strict=True)
        with pytest.raises(QuotaExceededError):
            await store.read(Scope(new_id()))
    await store.close()


async def test_429_forever_queues_writes(fake: FakeTiamat, store: TiamatCloudStore) -> None:
    fake.quota_forever = True
    u = new_id()
    out = await store.add([rec(u, "remember me", 0), rec(u, "and me", 1)])
    assert [r.seq for r in out] == [1, 2]
    status = await store.outbox_status()
    assert status.pending == 2
    assert "quota" in (status.last_error or "").lower() or "429" in (status.last_error or "")
    fake.quota_forever = False
    assert await store.flush() == 2
    assert [r.text for r in await store.read(Scope(u))] == ["remember me", "and me"]


async def test_retry_after_beyond_the_cap_is_not_waited_for() -> None:
    store = make_store(recall_deadline=5.0, strict=True, max_retry_after=10)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/recall").respond(429, json={"retry_after_seconds": 3600})
        with pytest.raises(QuotaExceededError, match="3600"):
            await store.search("hello", Scope(new_id()))
    await store.close()
    assert route.call_count == 1


async def test_5xx_is_retried() -> None:
    store = make_store(recall_deadline=5.0, strict=True)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/recall").mock(
            side_effect=[
                httpx.Response(502),
                httpx.ConnectError("refused"),
                httpx.Response(200, json={"results": [], "count": 0}),
            ]
        )
        assert await store.search("hello", Scope(new_id())) == []
    await store.close()
    assert route.call_count == 3


async def test_5xx_forever_is_unavailable() -> None:
    store = make_store(max_retries=1)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/list").respond(503)
        with pytest.raises(StoreUnavailableError) as info:
            await store.read(Scope(new_id()))
    await store.close()
    assert route.call_count == 2
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInputError), (422, InvalidInputError), (401, ConfigError), (403, ConfigError)],
)
async def test_4xx_is_not_retried(status: int, error: type[TiamatError]) -> None:
    store = make_store(recall_deadline=5.0)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/list").respond(status, json={"error": "nope"})
        with pytest.raises(error):
            await store.read(Scope(new_id()))
    await store.close()
    assert route.call_count == 1


async def test_timeouts_map_to_store_timeout() -> None:
    store = make_store(max_retries=1)
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        route = router.get("/api/memory/list").mock(side_effect=httpx.ReadTimeout("slow"))
        with pytest.raises(StoreTimeoutError) as info:
            await store.read(Scope(new_id()))
    await store.close()
    assert route.call_count == 2
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_should_retry_is_the_one_decision() -> None:
    request = httpx.Request("GET", BASE)

    def status(code: int, **headers: str) -> httpx.HTTPStatusError:
        response = httpx.Response(code, headers=headers, request=request)
        return httpx.HTTPStatusError("x", request=request, response=response)

    assert should_retry(status(429), max_retry_after=60)
    assert should_retry(status(500), max_retry_after=60)
    assert should_retry(status(408), max_retry_after=60)
    assert not should_retry(status(429, **{"Retry-After": "3600"}), max_retry_after=60)
    assert not should_retry(status(400), max_retry_after=60)
    assert not should_retry(status(404), max_retry_after=60)
    assert should_retry(httpx.ConnectError("x"), max_retry_after=60)
    assert should_retry(httpx.ReadTimeout("x"), max_retry_after=60)
    assert not should_retry(httpx.UnsupportedProtocol("x"), max_retry_after=60)


async def test_idempotency_key_is_reused_across_attempts(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    fake.fail_next = [503, 503]
    u = new_id()
    await store.add([rec(u, "only once please", seq=1)])  # an explicit seq: no seed listing
    posts = fake.calls("POST", "/api/memory/store")
    assert len(posts) == 3
    keys = {p.headers["idempotency-key"] for p in posts}
    assert len(keys) == 1
    assert len(fake.memories) == 1


# -- envelopes over the wire -------------------------------------------------------------------


async def test_oversize_content_is_chunked_and_reassembled(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    u = new_id()
    text = " ".join(f"word{i} 😀" for i in range(6000))  # ~60k UTF-16 units
    item = {"type": "message", "role": "user", "content": text}
    (out,) = await store.add([rec(u, text, item=item)])
    posts = fake.calls("POST", "/api/memory/store")
    assert len(posts) > 2
    for p in posts:
        body = json.loads(p.content)
        assert len(body["content"]) <= 10_000
        assert len(body["tags"]) <= 20
    (got,) = await store.read(Scope(u))
    assert got == out
    # A part lost on the server hides the record instead of returning half of it.
    fake.memories.pop(1)
    assert await store.read(Scope(u)) == []


async def test_search_fetches_missing_parts_of_a_long_record(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    u = new_id()
    text = "aardvark " + "filler words here " * 2000 + " zebra"
    (out,) = await store.add([rec(u, text)])
    hits = await store.search("zebra", Scope(u))  # recall matches the last part only
    assert [h.record for h in hits] == [out]


async def test_foreign_memories_and_duplicates_are_ignored(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    u = new_id()
    r = rec(u, "the only record")
    fake.memories.append({"id": "x1", "content": "someone else's plain memory", "tags": []})
    fake.memories.append({"id": "x2", "content": "tiamat-hooks/1 {broken json\nrecord", "tags": []})
    await store.add([r])
    fake.memories.append(dict(memory(r, 99), id="dup"))  # the same write stored twice
    assert [x.id for x in await store.read(Scope(u))] == [r.id]
    assert (await store.stats()).records == 1
    assert await store.list_users() == [u]


async def test_sequence_counter_is_seeded_from_the_service(
    fake: FakeTiamat, tmp_path: Path
) -> None:
    u = new_id()
    first = make_store(transport=fake.transport, outbox=tmp_path / "a.db")
    await first.add([rec(u, f"turn {i}", i) for i in range(3)])
    await first.close()
    # Another machine (its own outbox) continues the session after the service's last seq...
    second = make_store(transport=fake.transport, outbox=tmp_path / "b.db")
    out = await second.add([rec(u, "turn 3", 3), rec(u, "turn 0", 0)])
    await second.close()
    assert out[0].seq == 4
    # ...and recognises a record the service already holds (idempotency across machines).
    assert out[1].seq == 1


# -- secrets -----------------------------------------------------------------------------------


async def test_api_key_never_shows(fake: FakeTiamat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_store(transport=fake.transport, max_retries=1, recall_deadline=5.0)
    assert KEY not in repr(store)
    assert KEY not in repr(vars(store))
    errors: list[BaseException] = []
    fake.fail_next = [500, 500]
    try:
        await store.read(Scope(new_id()))
    except TiamatError as exc:
        errors.append(exc)
    fake.down = True
    try:
        await store.read(Scope(new_id()))
    except TiamatError as exc:
        errors.append(exc)
    await store.close()
    # A server that echoes the key in its error body must not leak it either.
    echo = make_store()
    with respx.mock(base_url=BASE) as router:
        hosted(router)
        router.get("/api/memory/list").respond(401, text=f"bad key {KEY}")
        try:
            await echo.read(Scope(new_id()))
        except TiamatError as exc:
            errors.append(exc)
    await echo.close()
    assert len(errors) == 3
    for error in errors:
        rendered = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        assert KEY not in rendered
        # Even a traceback that prints every frame's locals (pytest --showlocals, rich).
        with_locals = traceback.TracebackException.from_exception(error, capture_locals=True)
        assert KEY not in "".join(with_locals.format())
        assert KEY not in repr(error)
    assert KEY not in caplog.text


async def test_from_url_takes_key_from_userinfo_option_or_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = TiamatCloudStore.from_url(f"https://{KEY}@tiamat.test/prefix/", outbox=":memory:")
    assert s.base_url == "https://tiamat.test/prefix"
    assert KEY not in repr(s)
    await s.close()
    monkeypatch.setenv("TIAMAT_API_KEY", KEY)
    # Remote stores are wrapped in a redactor by default; redact=False gives the client itself.
    opened = open_store("https://tiamat.test", outbox=":memory:", redact=False)
    assert isinstance(opened, TiamatCloudStore)
    s = opened
    with respx.mock(base_url="https://tiamat.test") as router:
        route = router.get("/health").respond(json={"status": "ok"})
        await s.health()
    assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"
    await s.close()
    monkeypatch.delenv("TIAMAT_API_KEY")
    with pytest.raises(ConfigError, match="TIAMAT_API_KEY"):
        TiamatCloudStore.from_url("https://tiamat.test", outbox=":memory:")
    with pytest.raises(ConfigError):
        TiamatCloudStore(f"https://{KEY}@tiamat.test", KEY, outbox=":memory:")


# -- outbox ------------------------------------------------------------------------------------


async def test_outbox_replays_in_order_exactly_once(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    u = new_id()
    fake.down = True
    acked = []
    for i in range(3):
        (r,) = await store.add([rec(u, f"offline write {i}", i)])
        acked.append(r)
    assert [r.seq for r in acked] == [1, 2, 3]
    assert fake.memories == []
    assert (await store.outbox_status()).pending == 3
    fake.down = False
    (last,) = await store.add([rec(u, "online again", 3)])
    assert last.seq == 4
    stored = envelope.decode(fake.memories)
    assert [r.text for r in stored] == [f"offline write {i}" for i in range(3)] + ["online again"]
    assert [r.seq for r in stored] == [1, 2, 3, 4]
    assert len(fake.memories) == 4  # delivered once each
    assert (await store.outbox_status()).pending == 0
    assert await store.flush() == 0


async def test_replay_resumes_a_split_record_without_duplicating_parts(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    u = new_id()
    text = "long " * 6000  # three parts
    fake.store_budget = 1  # the service dies after the first part
    (out,) = await store.add([rec(u, text)])
    assert len(fake.memories) == 1
    fake.down, fake.store_budget = False, None
    assert await store.flush() == 1
    assert len(fake.memories) == len(envelope.encode(out))
    assert await store.read(Scope(u)) == [out]


async def test_outbox_survives_a_restart(fake: FakeTiamat, tmp_path: Path) -> None:
    u = new_id()
    fake.down = True
    first = make_store(transport=fake.transport, outbox=tmp_path / "o.db")
    await first.add([rec(u, "queued before the crash")])
    await first.close()
    fake.down = False
    second = make_store(transport=fake.transport, outbox=tmp_path / "o.db")
    assert (await second.outbox_status()).pending == 1
    assert await second.flush() == 1
    assert [r.text for r in await second.read(Scope(u))] == ["queued before the crash"]
    await second.close()


async def test_reads_merge_queued_writes(fake: FakeTiamat) -> None:
    store = make_store(transport=fake.transport, circuit_cooldown=60.0)
    u = new_id()
    fake.down = True
    await store.add([rec(u, "not yet sent")])
    fake.down = False  # back, but the circuit is still open: nothing replayed yet
    await store.add([rec(u, "also queued", 1)])
    assert fake.memories == []
    assert [r.text for r in await store.read(Scope(u))] == ["not yet sent", "also queued"]
    assert (await store.stats(u)).records == 2
    await store.close()


async def test_forget_drops_a_users_queued_writes(
    fake: FakeTiamat, store: TiamatCloudStore
) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    fake.down = True
    await store.add([rec(alice, "alice private"), rec(bob, "bob note")])
    assert await store.forget_queued(alice) == 1
    fake.down = False
    await store.flush()
    assert [r.user_id for r in envelope.decode(fake.memories)] == [bob]


async def test_open_circuit_skips_the_service(fake: FakeTiamat) -> None:
    store = make_store(transport=fake.transport, circuit_cooldown=60.0, max_retries=0)
    u = new_id()
    fake.down = True
    await store.add([rec(u, "queued")])
    before = len(fake.requests)
    await store.add([rec(u, "queued too", 1)])
    assert await store.search("queued", Scope(u)) == []
    assert len(fake.requests) == before  # neither call touched the service
    assert store.stats_counters["recall_skipped"] == 1
    await store.close()


# -- recall deadline ---------------------------------------------------------------------------


async def test_recall_deadline_returns_empty_quickly(fake: FakeTiamat) -> None:
    store = make_store(transport=fake.transport, recall_deadline=0.2)
    u = new_id()
    await store.add([rec(u, "slow service memory")])
    fake.recall_delay = 30.0
    started = time.monotonic()
    assert await store.search("memory", Scope(u)) == []
    assert time.monotonic() - started < 2.0
    assert store.stats_counters["recall_timeouts"] == 1
    with pytest.raises(StoreTimeoutError):
        await store.search("memory", Scope(u), strict=True)
    await store.close()


async def test_recall_fails_open_when_down(fake: FakeTiamat) -> None:
    store = make_store(transport=fake.transport, recall_deadline=5.0)
    fake.down = True
    assert await store.search("anything", Scope(new_id())) == []
    assert store.stats_counters["recall_errors"] == 1
    await store.close()


# -- the rest of the API -----------------------------------------------------------------------


async def test_delete_is_a_capability_error(store: TiamatCloudStore) -> None:
    assert store.capabilities.can_delete is False
    assert store.capabilities.neighbors is False
    with pytest.raises(CapabilityError):
        await store.delete(Scope(new_id()))


async def test_learn_posts_a_triple(fake: FakeTiamat, store: TiamatCloudStore) -> None:
    await store.learn("Ann", "lives in", "Lisbon", 0.9)
    assert fake.facts == [
        {"subject": "Ann", "predicate": "lives in", "object": "Lisbon", "confidence": 0.9}
    ]
    with pytest.raises(InvalidInputError):
        await store.learn("Ann", "likes", "tea", 1.5)


async def test_capabilities_follow_health(fake: FakeTiamat, store: TiamatCloudStore) -> None:
    assert store.server_extensions == frozenset()
    fake.extensions = ["delete", "list"]
    await store.refresh_capabilities()
    assert store.server_extensions == {"delete", "list"}
    # "delete" is listed, but /health does not say "can_delete": true.
    assert store.capabilities.can_delete is False
    assert store.capabilities.neighbors is False  # no "read" extension
