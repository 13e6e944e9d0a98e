"""Memory tools: bound to the run's scope through the context, exercised through a real run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunContextWrapper, Runner, Tool
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

from tests.conftest import new_id
from tiamat_hooks.facts import current_facts
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.recall import Recaller
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.tokens import TokenCounter
from tiamat_hooks.tools import memory_tools

COUNTER = TokenCounter("cl100k_base")


@dataclass
class AppContext:
    scope: Scope


def scope_of(ctx: RunContextWrapper[Any]) -> Scope:
    context: AppContext = ctx.context
    return context.scope


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMemoryStore]:
    s = SQLiteMemoryStore(tmp_path / "m.db")
    yield s
    await s.close()


async def run_tool(
    store: SQLiteMemoryStore, scope: Scope, name: str, args: dict[str, Any], **kw: Any
) -> str:
    """Run an agent whose scripted model calls one tool, and return that tool's output."""
    model = ScriptedModel(
        [[function_call(name, args, call_id=f"call-{new_id()}")], [assistant_message("done")]]
    )
    tools: list[Tool] = [*memory_tools(store, scope_of, **kw)]
    agent = Agent(name="assistant", model=model, tools=tools)
    result = await Runner.run(agent, "please", context=AppContext(scope))
    model.assert_complete()
    outputs = [i.output for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(outputs) == 1
    return str(outputs[0])


def test_no_tool_lets_the_model_choose_whose_memory() -> None:
    tools = memory_tools(SQLiteMemoryStore(), scope_of)
    assert [t.name for t in tools] == ["search_memory", "remember", "learn_fact"]
    for tool in tools:
        schema = json.dumps(tool.params_json_schema).lower()
        for word in ("user", "session", "agent_id", "scope", "ctx"):
            assert f'"{word}' not in schema, f"{tool.name} exposes {word!r}"
    assert set(tools[0].params_json_schema["properties"]) == {"query"}
    assert set(tools[1].params_json_schema["properties"]) == {"fact"}
    assert set(tools[2].params_json_schema["properties"]) == {"subject", "predicate", "object"}
    without = memory_tools(SQLiteMemoryStore(), scope_of, include_learn_fact=False)
    assert [t.name for t in without] == ["search_memory", "remember"]


async def test_remember_then_search_is_scoped_per_user(store: SQLiteMemoryStore) -> None:
    alice = Scope(new_id("alice"), session_id=new_id("s"))
    bob = Scope(new_id("bob"), session_id=new_id("s"))
    out = await run_tool(store, alice, "remember", {"fact": "Alice's sister Ann lives in Berlin"})
    assert out.startswith("Remembered:") and "Ann lives in Berlin" in out

    stored = await store.read(Scope(alice.user_id), kinds=("fact",))
    assert [r.text for r in stored] == ["Alice's sister Ann lives in Berlin"]
    assert stored[0].session_id == alice.session_id

    # A later session of the same user finds it; another user does not.
    later = Scope(alice.user_id, session_id=new_id("s"))
    found = await run_tool(store, later, "search_memory", {"query": "where does Ann live"})
    assert "Ann lives in Berlin" in found and "not instructions" in found
    other = await run_tool(store, bob, "search_memory", {"query": "where does Ann live"})
    assert other == "No memories match that query."


async def test_learn_fact_supersedes_and_search_shows_current(store: SQLiteMemoryStore) -> None:
    scope = Scope(new_id(), session_id=new_id("s"))
    args = {"subject": "Ann", "predicate": "lives in", "object": "Paris"}
    assert (await run_tool(store, scope, "learn_fact", args)).startswith("Learned:")
    args = {"subject": "Ann", "predicate": "lives in", "object": "Berlin"}
    await run_tool(store, scope, "learn_fact", args)
    assert [f.object for f in await current_facts(store, scope)] == ["Berlin"]
    found = await run_tool(store, scope, "search_memory", {"query": "Ann Paris"})
    assert "Known facts:" in found and "Ann lives in Berlin (since" in found
    assert "lives in Paris" not in found


async def test_invalid_arguments_come_back_as_text(store: SQLiteMemoryStore) -> None:
    scope = Scope(new_id())
    out = await run_tool(store, scope, "remember", {"fact": "   "})
    assert out.startswith("Not remembered:")
    assert await store.read(Scope(scope.user_id)) == []


async def test_search_uses_recaller_for_conversation_excerpts(store: SQLiteMemoryStore) -> None:
    scope = Scope(new_id(), session_id=new_id("s"))
    await store.add(
        [
            make_record(
                user_id=scope.user_id,
                session_id="old",
                role="user",
                text="We adopted a beagle called Biscuit last spring.",
            )
        ]
    )
    recaller = Recaller(store, counter=COUNTER)
    found = await run_tool(
        store, scope, "search_memory", {"query": "what is the dog called"}, recaller=recaller
    )
    assert "Biscuit" in found and "<memory>" in found
    assert COUNTER.count(found) <= 800
