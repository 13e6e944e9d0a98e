"""TiamatSession: the SDK Session protocol over every store, and the upstream review findings.

Each store-backed test runs against SQLite (which can delete) and the hosted API fake (which
cannot, so pops and clears are marker records).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.memory.session import Session, _session_accepts_wrapper
from agents.memory.session_settings import SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call

from tests.conftest import new_id
from tests.fake_tiamat import FakeTiamat
from tiamat_hooks import TiamatSession
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.session import visible_turns
from tiamat_hooks.stores import MemoryStore, SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore


def msg(text: str, role: str = "user") -> Any:
    return {"role": role, "content": text}


@pytest.fixture(params=["sqlite", "cloud"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryStore]:
    store: MemoryStore
    if request.param == "sqlite":
        store = SQLiteMemoryStore(tmp_path / "memory.db")
    else:
        fake = FakeTiamat(api_key="k")
        store = TiamatCloudStore(
            "https://tiamat.test",
            "k",
            transport=fake.transport,
            outbox=tmp_path / "outbox.db",
            retry_base_delay=0.0,
            recall_deadline=10.0,
            strict=True,
        )
    try:
        yield store
    finally:
        await store.close()


def new_session(store: MemoryStore, session_id: str | None = None, **kw: Any) -> TiamatSession:
    return TiamatSession(session_id or new_id("sess"), store=store, user_id=new_id(), **kw)


def texts(items: list[Any]) -> list[str]:
    return [i["content"] for i in items]


async def test_satisfies_the_sdk_protocol(backend: MemoryStore) -> None:
    session = new_session(backend)
    assert isinstance(session, Session)
    assert _session_accepts_wrapper(session)  # the SDK will pass ``wrapper`` by keyword
    typed: Session = session  # structural typing, checked by mypy
    assert typed.session_settings is not None


async def test_add_and_get_roundtrip(backend: MemoryStore) -> None:
    session = new_session(backend)
    assert await session.get_items() == []
    await session.add_items([msg("hi"), msg("hello", "assistant")])
    await session.add_items([])
    assert await session.get_items() == [msg("hi"), msg("hello", "assistant")]
    assert texts(await session.get_items(limit=1)) == ["hello"]
    assert await session.get_items(limit=0) == []


async def test_session_settings_limit_is_the_default(backend: MemoryStore) -> None:
    session = new_session(backend, session_settings=SessionSettings(limit=2))
    await session.add_items([msg(str(i)) for i in range(5)])
    assert texts(await session.get_items()) == ["3", "4"]
    assert len(await session.get_items(limit=10)) == 5


async def test_identical_items_are_both_kept(backend: MemoryStore) -> None:
    session = new_session(backend)
    await session.add_items([msg("same"), msg("same")])
    await session.add_items([msg("same")])
    assert texts(await session.get_items()) == ["same"] * 3


# -- upstream review findings ------------------------------------------------------------------


async def test_pop_item_does_not_deadlock(backend: MemoryStore) -> None:
    """Finding: pop_item took a non-reentrant lock and then called get_items, which took it
    again."""
    session = new_session(backend)
    await session.add_items([msg("one"), msg("two")])
    popped = await asyncio.wait_for(session.pop_item(), timeout=10)
    assert popped == msg("two")


async def test_pop_item_removes_the_item(backend: MemoryStore) -> None:
    """Finding: pop_item returned the last item but left it in the history."""
    session = new_session(backend)
    await session.add_items([msg("one"), msg("two"), msg("three")])
    assert await session.pop_item() == msg("three")
    assert texts(await session.get_items()) == ["one", "two"]
    again = TiamatSession(session.session_id, store=backend, user_id=session.user_id)
    assert texts(await again.get_items()) == ["one", "two"]  # removed in the store, not a cache
    assert await session.pop_item() == msg("two")
    assert await session.pop_item() == msg("one")
    assert await session.pop_item() is None


async def test_clear_is_honoured_by_every_read(backend: MemoryStore) -> None:
    """Finding: clear markers were written but reads ignored them."""
    session = new_session(backend)
    await session.add_items([msg("old one"), msg("old two")])
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([msg("new")])
    fresh = TiamatSession(session.session_id, store=backend, user_id=session.user_id)
    assert texts(await fresh.get_items()) == ["new"]
    await session.clear_session()
    await session.clear_session()  # clearing an empty session is fine
    assert await fresh.get_items() == []


async def test_clear_marker_has_a_sequence_number(backend: MemoryStore) -> None:
    """Finding: the clear marker was written without a sequence number, so it sorted nowhere."""
    session = new_session(backend)
    await session.add_items([msg("a"), msg("b")])
    await session.clear_session()
    records = await backend.read(Scope(session.user_id, session_id=session.session_id))
    if backend.capabilities.can_delete:
        assert records == []  # really deleted: no marker needed
        return
    (marker,) = [r for r in records if r.meta.get("marker") == "clear"]
    assert marker.seq == 3
    assert marker.meta["upto_seq"] == 2


def test_a_clear_marker_without_target_clears_what_came_before_it() -> None:
    """Markers written by older code carried no ``upto_seq``; their own seq still bounds them."""
    u, s = "u", "s"
    items = [
        make_record(user_id=u, session_id=s, text=t, item=msg(t), seq=i)
        for i, t in enumerate(["a", "b", "c"], 1)
    ]
    legacy = make_record(user_id=u, session_id=s, text="", seq=3, meta={"marker": "clear"})
    after = make_record(user_id=u, session_id=s, text="d", item=msg("d"), seq=4)
    assert [r.text for r in visible_turns([*items[:2], legacy, after])] == ["d"]


async def test_history_is_not_capped_at_100(backend: MemoryStore) -> None:
    """Finding: get_items() silently returned at most 100 items."""
    session = new_session(backend)
    await session.add_items([msg(f"m{i}") for i in range(250)])
    items = await session.get_items()
    assert texts(items) == [f"m{i}" for i in range(250)]


async def test_sequences_do_not_collide_past_100(backend: MemoryStore) -> None:
    """Finding: sequence numbers wrapped/collided once a session passed 100 items."""
    session = new_session(backend)
    for batch in range(3):
        await session.add_items([msg(f"b{batch}-{i}") for i in range(60)])
    await session.pop_item()
    await session.add_items([msg("after pop")])
    records = await backend.read(Scope(session.user_id, session_id=session.session_id))
    seqs = [r.seq for r in records]
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(1, len(seqs) + 1))
    items = texts(await session.get_items())
    assert len(items) == 180
    assert items[-2:] == ["b2-58", "after pop"]


async def test_concurrent_pops_are_atomic(backend: MemoryStore) -> None:
    """Finding: concurrent pop_item calls returned the same item twice."""
    session = new_session(backend)
    await session.add_items([msg(f"item {i}") for i in range(10)])
    popped = await asyncio.gather(*(session.pop_item() for _ in range(10)))
    assert sorted(texts(popped)) == sorted(f"item {i}" for i in range(10))
    assert await session.get_items() == []
    assert await session.pop_item() is None


async def test_concurrent_pops_from_separate_objects_are_atomic(backend: MemoryStore) -> None:
    first = new_session(backend)
    await first.add_items([msg(f"item {i}") for i in range(6)])
    others = [
        TiamatSession(first.session_id, store=backend, user_id=first.user_id) for _ in range(6)
    ]
    popped = await asyncio.gather(*(s.pop_item() for s in others))
    assert sorted(texts(popped)) == sorted(f"item {i}" for i in range(6))
    assert await first.get_items() == []


async def test_users_and_sessions_are_isolated(backend: MemoryStore) -> None:
    a = TiamatSession("shared-name", store=backend, user_id=new_id("alice"))
    b = TiamatSession("shared-name", store=backend, user_id=new_id("bob"))
    await a.add_items([msg("alice only")])
    await b.add_items([msg("bob only")])
    await b.clear_session()
    assert texts(await a.get_items()) == ["alice only"]


async def test_session_opens_and_closes_its_own_store(tmp_path: Path) -> None:
    session = TiamatSession("s", store=tmp_path / "own.db", user_id="u")
    await session.add_items([msg("persisted")])
    await session.close()
    again = TiamatSession("s", store=f"sqlite:///{tmp_path / 'own.db'}", user_id="u")
    assert texts(await again.get_items()) == ["persisted"]
    await again.close()


# -- the SDK end to end --------------------------------------------------------------------------


@function_tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


def _has_text(value: Any, text: str) -> bool:
    return text in repr(value)


async def test_runner_uses_the_session_across_turns(backend: MemoryStore) -> None:
    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Lisbon"}, call_id="call-1")],
            [assistant_message("It is sunny in Lisbon.", item_id="msg-1")],
            [assistant_message("You asked about Lisbon.", item_id="msg-2")],
            [assistant_message("You are welcome.", item_id="msg-3")],
        ]
    )
    agent = Agent(name="assistant", model=model, tools=[get_weather])
    session = new_session(backend)
    config = RunConfig(tracing_disabled=True)

    first = await Runner.run(agent, "Weather in Lisbon?", session=session, run_config=config)
    assert first.final_output == "It is sunny in Lisbon."
    second = await Runner.run(
        agent, "Which city did I ask about?", session=session, run_config=config
    )
    assert second.final_output == "You asked about Lisbon."
    await Runner.run(agent, "Thanks!", session=session, run_config=config)
    model.assert_complete()

    calls = model.calls
    assert len(calls) == 4
    # The tool round trip inside turn 1 saw the call and its output.
    assert _has_text(calls[1].input, "sunny in Lisbon")
    # Turn 2's model call saw turn 1: question, tool call, tool output, answer.
    for earlier in ("Weather in Lisbon?", "call-1", "sunny in Lisbon", "It is sunny in Lisbon."):
        assert _has_text(calls[2].input, earlier)
    # Turn 3 saw turns 1 and 2.
    for earlier in ("Weather in Lisbon?", "Which city did I ask about?", "You asked about Lisbon."):
        assert _has_text(calls[3].input, earlier)

    items: list[dict[str, Any]] = [dict(i) for i in await session.get_items()]
    kinds = [i.get("type", "message") for i in items]
    assert kinds.count("function_call") == 1
    assert kinds.count("function_call_output") == 1
    user_texts = [i["content"] for i in items if i.get("role") == "user"]
    assert user_texts == ["Weather in Lisbon?", "Which city did I ask about?", "Thanks!"]
    assistant = [i for i in items if i.get("role") == "assistant"]
    assert len(assistant) == 3
    assert len(items) == 8  # 3 user + 3 assistant + call + output, each exactly once
