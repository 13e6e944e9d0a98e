"""The store contract (see ``tiamat_hooks/stores/base.py``), run unchanged against every backend.

Each case is a plain ``async def test_*(store)``; the ``store`` fixture is parametrised over every
registered backend in ``tests/conftest.py``. Cases that need an optional capability skip with the
reason when a backend lacks it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import new_id
from tiamat_hooks.errors import CapabilityError, InvalidInputError, InvalidScopeError
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import MemoryStore

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def turn(user: str, session: str | None, text: str, i: int = 0, **kw: object) -> MemoryRecord:
    return make_record(
        user_id=user,
        session_id=session,
        role="user" if i % 2 == 0 else "assistant",
        text=text,
        created_at=T0 + timedelta(minutes=i),
        **kw,
    )


def need_delete(store: MemoryStore) -> None:
    if not store.capabilities.can_delete:
        pytest.skip(f"{type(store).__name__} cannot delete (capabilities.can_delete is False)")


async def test_satisfies_protocol(store: MemoryStore) -> None:
    assert isinstance(store, MemoryStore)


async def test_add_assigns_gap_free_sequence(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    out = await store.add([turn(u, s, f"message number {i}", i) for i in range(5)])
    assert [r.seq for r in out] == [1, 2, 3, 4, 5]
    more = await store.add([turn(u, s, f"later message {i}", 10 + i) for i in range(3)])
    assert [r.seq for r in more] == [6, 7, 8]


async def test_sequences_are_per_session(store: MemoryStore) -> None:
    u = new_id()
    a = await store.add([turn(u, "a", "alpha one", 0), turn(u, "b", "beta one", 1)])
    b = await store.add([turn(u, "a", "alpha two", 2)])
    assert [r.seq for r in a] == [1, 1]
    assert b[0].seq == 2


async def test_add_is_idempotent_by_key(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    recs = [turn(u, s, "the quick brown fox", 0), turn(u, s, "jumps over the dog", 1)]
    first = await store.add(recs)
    again = await store.add(recs)
    assert [r.id for r in again] == [r.id for r in first]
    assert [r.seq for r in again] == [1, 2]
    assert len(await store.read(Scope(u))) == 2


async def test_explicit_key_deduplicates_within_a_batch(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    a = turn(u, s, "first version", 0, key="k1")
    b = turn(u, s, "second version", 1, key="k1")
    out = await store.add([a, b])
    assert out[0].id == out[1].id
    stored = await store.read(Scope(u))
    assert [r.text for r in stored] == ["first version"]


async def test_add_empty_batch(store: MemoryStore) -> None:
    assert await store.add([]) == []


async def test_add_rejects_non_records(store: MemoryStore) -> None:
    with pytest.raises(InvalidInputError):
        await store.add([{"user_id": "x", "text": "y"}])  # type: ignore[list-item]


async def test_roundtrip_preserves_fields(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "héllo 😀"}],
    }
    rec = make_record(
        user_id=u,
        agent_id="agent-1",
        session_id=s,
        role="user",
        text='héllo 😀 "quoted" it\'s',
        item=item,
        created_at=T0,
        meta={"speaker": "Ann", "n": 3},
    )
    await store.add([rec])
    (got,) = await store.read(Scope(u))
    assert got.id == rec.id
    assert got.text == rec.text
    assert got.item == item
    assert got.meta == {"speaker": "Ann", "n": 3}
    assert got.created_at == T0
    assert got.agent_id == "agent-1"
    assert got.session_id == s
    assert got.kind == "turn"
    assert got.seq == 1


async def test_record_without_session(store: MemoryStore) -> None:
    u = new_id()
    out = await store.add([turn(u, None, "no session here", 0)])
    assert out[0].session_id is None
    (got,) = await store.read(Scope(u))
    assert got.session_id is None


async def test_search_finds_relevant_turn_first(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    await store.add(
        [
            turn(u, s, "I adopted a golden retriever named Biscuit last spring", 0),
            turn(u, s, "My sister works as a nurse in Lisbon", 1),
            turn(u, s, "We talked about the weather and the news", 2),
        ]
    )
    hits = await store.search("What is the name of my dog, the retriever?", Scope(u))
    assert hits
    assert "Biscuit" in hits[0].record.text
    assert all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_search_uses_stemming(store: MemoryStore) -> None:
    u = new_id()
    await store.add([turn(u, "s", "She was running marathons every weekend", 0)])
    hits = await store.search("does she run", Scope(u))
    assert hits and "marathons" in hits[0].record.text


async def test_search_respects_limit(store: MemoryStore) -> None:
    u = new_id()
    await store.add([turn(u, "s", f"pizza topping number {i}", i) for i in range(20)])
    assert len(await store.search("pizza", Scope(u), limit=5)) == 5


async def test_search_filters_kinds(store: MemoryStore) -> None:
    u = new_id()
    await store.add(
        [
            turn(u, "s", "turn about volcanoes", 0),
            make_record(user_id=u, session_id="s", kind="summary", text="summary about volcanoes"),
        ]
    )
    only_turns = await store.search("volcanoes", Scope(u), kinds=["turn"])
    assert {h.record.kind for h in only_turns} == {"turn"}
    only_summaries = await store.search("volcanoes", Scope(u), kinds=["summary"])
    assert {h.record.kind for h in only_summaries} == {"summary"}
    assert await store.search("volcanoes", Scope(u), kinds=[]) == []


async def test_search_narrows_by_session_and_agent(store: MemoryStore) -> None:
    u = new_id()
    await store.add(
        [
            make_record(user_id=u, session_id="s1", agent_id="a1", text="kiwi in session one"),
            make_record(user_id=u, session_id="s2", agent_id="a2", text="kiwi in session two"),
        ]
    )
    by_session = await store.search("kiwi", Scope(u, session_id="s1"))
    assert [h.record.session_id for h in by_session] == ["s1"]
    by_agent = await store.search("kiwi", Scope(u, agent_id="a2"))
    assert [h.record.agent_id for h in by_agent] == ["a2"]


async def test_users_are_isolated(store: MemoryStore) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    await store.add([turn(alice, "s", "alice secret password is swordfish", 0)])
    await store.add([turn(bob, "s", "bob likes swordfish sushi", 0)])
    hits = await store.search("swordfish", Scope(bob))
    assert hits and all(h.record.user_id == bob for h in hits)
    assert all(r.user_id == alice for r in await store.read(Scope(alice)))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        '"',
        '"unbalanced quote',
        "AND OR NOT",
        "NEAR(apple banana, 2)",
        "apple*",
        "^apple",
        "body: apple",
        "scope: anything",
        "{body context}: apple",
        "apple\x00banana",
        "\x01\x02\x1f control",
        "😀🍎 emoji apple",
        "apple' OR 1=1; DROP TABLE records; --",
        "a" * 1_000_000,
        "apple " * 50_000,
        "(((apple)))",
        "-apple +banana",
        "ünïcödé äpple",
    ],
)
async def test_search_never_raises_on_hostile_queries(store: MemoryStore, query: str) -> None:
    u = new_id()
    await store.add([turn(u, "s", "an apple and a banana", 0)])
    hits = await store.search(query, Scope(u))
    assert isinstance(hits, list)
    assert all(h.record.user_id == u for h in hits)
    # Still usable afterwards.
    assert await store.search("banana", Scope(u))


async def test_search_with_no_matches(store: MemoryStore) -> None:
    u = new_id()
    await store.add([turn(u, "s", "completely unrelated", 0)])
    assert await store.search("xylophone", Scope(u)) == []
    assert await store.search("anything", Scope(new_id())) == []


async def test_long_records_report_matching_span(store: MemoryStore) -> None:
    u = new_id()
    filler = " ".join(f"Sentence {i} talks about ordinary daily routines." for i in range(60))
    text = filler + " The secret ingredient is cardamom. " + filler
    (rec,) = await store.add([turn(u, "s", text, 0)])
    hits = await store.search("secret ingredient cardamom", Scope(u))
    assert hits and hits[0].record.id == rec.id
    span = hits[0].span
    if span is not None:  # stores that index whole records report no span
        start, end = span
        assert 0 <= start < end <= len(text)
        assert "cardamom" in text[start:end]


async def test_read_orders_and_windows(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")
    await store.add([turn(u, s, f"item {i}", i) for i in range(10)])
    everything = await store.read(Scope(u, session_id=s))
    assert [r.seq for r in everything] == list(range(1, 11))
    window = await store.read(Scope(u, session_id=s), seq_from=3, seq_to=5)
    assert [r.seq for r in window] == [3, 4, 5]
    last = await store.read(Scope(u, session_id=s), limit=3, newest=True)
    assert [r.seq for r in last] == [8, 9, 10]
    first = await store.read(Scope(u, session_id=s), limit=2)
    assert [r.seq for r in first] == [1, 2]
    assert await store.read(Scope(u, session_id=s), kinds=[]) == []


async def test_read_filters_kinds(store: MemoryStore) -> None:
    u = new_id()
    await store.add(
        [
            turn(u, "s", "a turn", 0),
            make_record(user_id=u, session_id="s", kind="summary", text="a summary"),
            make_record(user_id=u, kind="fact", text="a fact"),
        ]
    )
    assert [r.kind for r in await store.read(Scope(u), kinds=["summary"])] == ["summary"]
    assert len(await store.read(Scope(u))) == 3


async def test_list_sessions_and_users(store: MemoryStore) -> None:
    u = new_id()
    await store.add([turn(u, "s1", "x one", 0), turn(u, "s1", "x two", 1), turn(u, "s2", "y", 2)])
    sessions = {info.session_id: info for info in await store.list_sessions(u)}
    assert set(sessions) == {"s1", "s2"}
    assert sessions["s1"].records == 2
    assert sessions["s1"].last_seq == 2
    assert u in await store.list_users()


async def test_stats(store: MemoryStore) -> None:
    u = new_id()
    await store.add([turn(u, "s1", "one", 0), turn(u, "s2", "two", 1)])
    await store.add([make_record(user_id=u, session_id="s1", kind="summary", text="sum")])
    st = await store.stats(u)
    assert st.users == 1
    assert st.sessions == 2
    assert st.records == 3
    assert st.by_kind == {"turn": 2, "summary": 1}


async def test_delete_user_forgets_everything(store: MemoryStore) -> None:
    need_delete(store)
    u, other = new_id(), new_id()
    await store.add([turn(u, "s", "forget me please", 0), turn(other, "s", "keep me please", 0)])
    assert await store.delete(Scope(u)) == 1
    assert await store.read(Scope(u)) == []
    assert await store.search("forget", Scope(u)) == []
    assert len(await store.read(Scope(other))) == 1
    assert (await store.stats(u)).records == 0


async def test_delete_by_ids_and_session(store: MemoryStore) -> None:
    need_delete(store)
    u = new_id()
    out = await store.add(
        [turn(u, "s1", "first", 0), turn(u, "s1", "second", 1), turn(u, "s2", "third", 2)]
    )
    assert await store.delete(Scope(u), ids=[out[0].id]) == 1
    assert [r.text for r in await store.read(Scope(u))] == ["second", "third"]
    assert await store.delete(Scope(u, session_id="s2")) == 1
    assert await store.delete(Scope(u), ids=[]) == 0
    assert [r.text for r in await store.read(Scope(u))] == ["second"]


async def test_delete_unsupported_raises_capability_error(store: MemoryStore) -> None:
    if store.capabilities.can_delete:
        pytest.skip("store can delete")
    with pytest.raises(CapabilityError):
        await store.delete(Scope(new_id()))


async def test_concurrent_adds_keep_sequences_gap_free(store: MemoryStore) -> None:
    u, s = new_id(), new_id("s")

    async def writer(w: int) -> None:
        for i in range(5):
            await store.add([turn(u, s, f"writer {w} message {i}", w * 100 + i)])

    await asyncio.gather(*(writer(w) for w in range(4)))
    seqs = [r.seq for r in await store.read(Scope(u, session_id=s))]
    assert seqs == list(range(1, 21))


async def test_batch_of_many_records(store: MemoryStore) -> None:
    u = new_id()
    recs = [turn(u, f"s{i % 7}", f"bulk record {i} about topic{i % 13}", i) for i in range(600)]
    out = await store.add(recs)
    assert len(out) == 600
    assert (await store.stats(u)).records == 600
    assert await store.search("topic5", Scope(u), limit=100)


def test_scope_validation() -> None:
    with pytest.raises(InvalidScopeError):
        Scope("")
    with pytest.raises(InvalidScopeError):
        Scope("ok", session_id="   ")
    with pytest.raises(InvalidScopeError):
        make_record(user_id="", text="x")
    with pytest.raises(InvalidScopeError):
        make_record(user_id="a\x00b", text="x")
