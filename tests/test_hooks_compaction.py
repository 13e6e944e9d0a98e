"""TiamatHooks with compaction: summaries after runs, model input within ``context_budget``.

The model is ``ScriptedModel``; what it saw is read from ``model.calls``, token counts use the
hooks' own counter and :func:`count_item_tokens` (what the budget is defined by).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, SQLiteSession, function_tool
from agents.testing import ModelCall, ScriptedModel, assistant_message, function_call

from tiamat_hooks.compaction import count_item_tokens
from tiamat_hooks.errors import SummarizationError
from tiamat_hooks.facts import learn
from tiamat_hooks.hooks import TiamatHooks
from tiamat_hooks.items import item_text, to_jsonable
from tiamat_hooks.models import MemoryRecord, Scope
from tiamat_hooks.stores import SQLiteMemoryStore

SUMMARY_MARK = "<memory>\nSummary of earlier turns"
MEMORY_MARK = "<memory>\nMemory:"


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SQLiteMemoryStore(tmp_path / "memory.db")
    yield s
    await s.close()


@function_tool
def lookup(topic: str) -> str:
    """Looks a topic up."""
    return f"Result for {topic}: " + " ".join(f"detail{i} of {topic}" for i in range(5))


def user_text(n: int) -> str:
    return (
        f"Message {n} from the user: I planned trip number {n} to city-{n} with my friend "
        f"Person{n}, leaving on day {n * 3} and bringing {n + 2} suitcases."
    )


def reply_text(n: int) -> str:
    return (
        f"Answer {n}: noted, trip {n} to city-{n} with Person{n} on day {n * 3}; "
        f"I will remind you about the {n + 2} suitcases."
    )


def script_for(n: int, tool_calls: int = 0) -> list[list[Any]]:
    """One run's model turns: ``tool_calls`` lookups, then the answer."""
    turns: list[list[Any]] = [
        [function_call("lookup", {"topic": f"t{n}-{k}"}, call_id=f"c{n}-{k}")]
        for k in range(tool_calls)
    ]
    turns.append([assistant_message(reply_text(n), item_id=f"m{n}")])
    return turns


TOOL_RUNS = {4: 1, 8: 2}


def expected_turns(runs: int) -> int:
    """Stored turns of ``runs`` runs: request and answer, plus a call and an output per tool."""
    return runs * 2 + 2 * sum(k for n, k in TOOL_RUNS.items() if n < runs)


def tokens(call: ModelCall, hooks: TiamatHooks) -> int:
    return sum(count_item_tokens(item, hooks.counter) for item in call.input)


def contents(call: ModelCall) -> list[str]:
    return [item_text(to_jsonable(item)) for item in call.input]


def assert_pairs_intact(call: ModelCall) -> None:
    """No orphan tool output, and no call whose output was removed while a later item stayed."""
    seen_calls: set[str] = set()
    outputs = {
        to_jsonable(i).get("call_id")
        for i in call.input
        if to_jsonable(i).get("type") == "function_call_output"
    }
    items = [to_jsonable(i) for i in call.input]
    for pos, item in enumerate(items):
        if item.get("type") == "function_call":
            seen_calls.add(item["call_id"])
            # A call is only ever the last item(s) of the input when its output is not yet there.
            if item["call_id"] not in outputs:
                assert all(x.get("type") == "function_call" for x in items[pos:]), items[pos:]
        if item.get("type") == "function_call_output":
            assert item["call_id"] in seen_calls, f"orphan output {item['call_id']}"


async def run_session(
    hooks: TiamatHooks | None,
    session: SQLiteSession,
    runs: int,
    *,
    use_filter: bool = False,
    flush_each: bool = True,
) -> list[ModelCall]:
    calls: list[ModelCall] = []
    for n in range(runs):
        model = ScriptedModel(script_for(n, TOOL_RUNS.get(n, 0)))
        agent = Agent(name="assistant", model=model, tools=[lookup])
        kwargs: dict[str, Any] = {"session": session}
        if hooks is not None:
            kwargs["hooks"] = hooks
            if use_filter:
                kwargs["run_config"] = hooks.wrap()
        await Runner.run(agent, user_text(n), **kwargs)
        if hooks is not None and flush_each:
            await hooks.flush()
        calls.extend(model.calls)
    return calls


def make_hooks(store: SQLiteMemoryStore, user: str, **kw: Any) -> TiamatHooks:
    options: dict[str, Any] = {
        "user_id": user,
        "session_id": "conv",
        "context_budget": 420,
        "compact_after_tokens": 160,
        "token_budget": 120,
    }
    options.update(kw)
    return TiamatHooks(store, **options)


async def session_turns(store: SQLiteMemoryStore, user: str) -> list[MemoryRecord]:
    return await store.read(Scope(user, session_id="conv"), kinds=("turn",))


async def session_summaries(store: SQLiteMemoryStore, user: str) -> list[MemoryRecord]:
    return await store.read(Scope(user, session_id="conv"), kinds=("summary",))


# -- the long session ----------------------------------------------------------------------------


@pytest.mark.parametrize("use_filter", [False, True], ids=["hooks", "hooks+filter"])
async def test_long_session_stays_within_budget_with_summary_and_verbatim_tail(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path, use_filter: bool
) -> None:
    hooks = make_hooks(store, user_id)
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    runs = 14
    calls = await run_session(hooks, session, runs, use_filter=use_filter)

    assert hooks.stats.over_budget == 0
    for call in calls:
        assert tokens(call, hooks) <= 420
        assert_pairs_intact(call)
    # The input was compacted and summaries were written in the background.
    assert hooks.stats.input_compactions > 0
    assert hooks.stats.compactions >= runs - 1
    summaries = await session_summaries(store, user_id)
    assert summaries and hooks.stats.summaries_written == len(summaries)

    last = calls[-1]
    texts = contents(last)
    summary_items = [t for t in texts if t.startswith(SUMMARY_MARK)]
    assert len(summary_items) == 1
    assert "turns 1–" in summary_items[0]  # it covers the oldest turns
    assert user_text(0) not in texts  # the oldest turn is no longer verbatim
    # The last turns are verbatim, in order, the request last (memory sits just before it).
    plain = [t for t in texts if not t.startswith("<memory>\n")]
    assert plain[-3:] == [user_text(runs - 2), reply_text(runs - 2), user_text(runs - 1)]
    assert texts[-2].startswith(MEMORY_MARK)
    # Memory and summary are injected items, never stored; every turn is stored exactly once.
    stored = [r.text for r in await session_turns(store, user_id)]
    assert len(stored) == len(set(stored)) == expected_turns(runs)
    assert stored[0] == user_text(0) and stored[-1] == reply_text(runs - 1)
    # The SDK session still holds every item.
    assert [item_text(to_jsonable(i)) for i in await session.get_items()] == stored
    session.close()


async def test_compaction_between_tool_calls_inside_one_run(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    hooks = make_hooks(store, user_id)
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    await run_session(hooks, session, 8)
    before = hooks.stats.input_compactions

    # One run, five tool calls with bulky outputs: the input grows between the model calls.
    model = ScriptedModel(script_for(99, tool_calls=5))
    agent = Agent(name="assistant", model=model, tools=[lookup])
    await Runner.run(agent, user_text(99), hooks=hooks, session=session)
    await hooks.flush()

    assert len(model.calls) == 6
    uncompacted = [
        sum(count_item_tokens(i, hooks.counter) for i in call.input if not _injected(i))
        for call in model.calls
    ]
    assert [tokens(call, hooks) <= 420 for call in model.calls] == [True] * 6, (
        [tokens(call, hooks) for call in model.calls],
        hooks.stats,
        [contents(c) for c in model.calls[-1:]],
    )
    assert hooks.stats.input_compactions - before >= 6  # every call of the run was compacted
    for call in model.calls:
        assert_pairs_intact(call)
        # The run's own request and its newest tool exchange stay verbatim.
        assert user_text(99) in contents(call)
    last = contents(model.calls[-1])
    assert any(t.startswith("tool result: Result for t99-4") for t in last)
    assert uncompacted[-1] > uncompacted[0]
    assert hooks.stats.over_budget == 0
    session.close()


def _injected(item: Any) -> bool:
    content = to_jsonable(item).get("content")
    return isinstance(content, str) and content.startswith("<memory>\n")


# -- SDK session semantics -----------------------------------------------------------------------


def _plain(items: Sequence[Any]) -> list[str]:
    return [json.dumps(to_jsonable(i), sort_keys=True) for i in items]


async def test_sqlite_session_semantics_unchanged(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    """The same script with and without the hooks leaves the SDK sessions identical."""
    with_hooks = SQLiteSession("conv", str(tmp_path / "with.db"))
    without = SQLiteSession("conv", str(tmp_path / "without.db"))
    hooks = make_hooks(store, user_id)
    await run_session(hooks, with_hooks, 10)
    await run_session(None, without, 10)
    assert hooks.stats.input_compactions > 0  # the hooks did compact the model input

    a, b = await with_hooks.get_items(), await without.get_items()
    assert _plain(a) == _plain(b)
    assert len(a) == expected_turns(10)
    assert not any(_injected(i) for i in a)  # neither memory nor summaries leak into it
    assert _plain(await with_hooks.get_items(limit=3)) == _plain(await without.get_items(limit=3))

    popped = [await with_hooks.pop_item(), await with_hooks.pop_item()]
    expected = [await without.pop_item(), await without.pop_item()]
    assert _plain(popped) == _plain(expected)
    assert _plain(await with_hooks.get_items()) == _plain(await without.get_items())

    # A run after pop_item sees the same history either way (plus injected items).
    model_a = ScriptedModel(script_for(50))
    model_b = ScriptedModel(script_for(50))
    await Runner.run(
        Agent(name="assistant", model=model_a), user_text(50), hooks=hooks, session=with_hooks
    )
    await Runner.run(Agent(name="assistant", model=model_b), user_text(50), session=without)
    await hooks.flush()
    assert _plain(await with_hooks.get_items()) == _plain(await without.get_items())

    await with_hooks.clear_session()
    await without.clear_session()
    assert await with_hooks.get_items() == [] == await without.get_items()
    assert await with_hooks.pop_item() is None
    # Clearing the SDK session does not touch long-term memory.
    assert len(await session_turns(store, user_id)) > 0
    with_hooks.close()
    without.close()


# -- background compaction -----------------------------------------------------------------------


async def test_background_compaction_is_idempotent(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    hooks = make_hooks(store, user_id, context_budget=None)
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    await run_session(hooks, session, 10, flush_each=False)
    await hooks.flush()
    await hooks.flush()
    first = await session_summaries(store, user_id)
    assert first
    # Compacting again writes nothing new (same spans, same keys).
    assert await hooks.compactor().compact(Scope(user_id, session_id="conv")) == []
    again = await session_summaries(store, user_id)
    assert [s.key for s in again] == [s.key for s in first]
    assert len({s.key for s in again}) == len(again)
    # Level-0 summaries never overlap.
    ranges = sorted((s.meta["seq_from"], s.meta["seq_to"]) for s in again if s.meta["level"] == 0)
    for (_, b), (c, _) in itertools.pairwise(ranges):
        assert c > b
    session.close()


class BlockingSummarizer:
    """A summarizer that waits for the test to let it go: the run must not wait for it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def summarize(self, records: Sequence[MemoryRecord], *, max_tokens: int) -> str:
        self.started += 1
        await self.release.wait()
        return "summary: " + " ".join(r.text.split()[0] for r in records)


async def test_runs_do_not_wait_for_the_summarizer(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    summarizer = BlockingSummarizer()
    hooks = make_hooks(store, user_id, summarizer=summarizer)
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    # flush() would wait for the blocked summarizer, so the runs go back to back without it.
    await run_session(hooks, session, 8, flush_each=False)
    for _ in range(50):
        if summarizer.started:
            break
        await asyncio.sleep(0.01)
    assert summarizer.started == 1  # blocked inside the first summary
    assert not summarizer.release.is_set()  # ...and every run completed meanwhile
    assert await session_summaries(store, user_id) == []
    summarizer.release.set()
    await hooks.flush()
    assert await session_summaries(store, user_id)
    assert hooks.stats.failures == {}
    session.close()


class FailingSummarizer:
    def __init__(self) -> None:
        self.calls = 0

    async def summarize(self, records: Sequence[MemoryRecord], *, max_tokens: int) -> str:
        self.calls += 1
        raise RuntimeError("summarizer down")


async def test_failing_summarizer_keeps_turns_and_is_counted(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    summarizer = FailingSummarizer()
    hooks = make_hooks(store, user_id, summarizer=summarizer)
    hooks.compactor().retry_base_delay = 0.0
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    calls = await run_session(hooks, session, 8)
    assert summarizer.calls >= 3  # tried, and retried
    assert hooks.stats.failures.get("compact", 0) >= 1
    assert hooks.stats.last_error_type == "SummarizationError"
    assert await session_summaries(store, user_id) == []
    assert len(await session_turns(store, user_id)) == expected_turns(8)
    # Without summaries the input is still kept within budget by trimming whole groups.
    for call in calls:
        assert tokens(call, hooks) <= 420
        assert_pairs_intact(call)
        assert not any(t.startswith(SUMMARY_MARK) for t in contents(call))
    session.close()


async def test_failing_summarizer_in_strict_mode_raises_from_flush(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    hooks = make_hooks(store, user_id, summarizer=FailingSummarizer(), strict=True)
    hooks.compactor().retry_base_delay = 0.0
    session = SQLiteSession("conv", str(tmp_path / "sdk.db"))
    with pytest.raises(SummarizationError):
        await run_session(hooks, session, 8)
    assert await session_summaries(store, user_id) == []
    session.close()


# -- facts ---------------------------------------------------------------------------------------


def facts_section(call: ModelCall) -> list[str]:
    (block,) = [t for t in contents(call) if t.startswith(MEMORY_MARK)]
    lines = block.splitlines()
    start = lines.index("Known facts:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("> "):
            break
        out.append(line)
    return out


async def test_current_fact_is_injected_and_superseded_one_is_not(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    hooks = TiamatHooks(store, user_id=user_id, session_id="s3")
    tools = hooks.tools()
    # Learned through the tools, in two earlier runs: Paris first, then the move to Berlin.
    for n, (predicate, city) in enumerate([("lives in", "Paris"), ("moved to", "Berlin")]):
        model = ScriptedModel(
            [
                [
                    function_call(
                        "learn_fact",
                        {"subject": "Ann", "predicate": predicate, "object": city},
                        call_id=f"f{n}",
                    )
                ],
                [assistant_message("Got it.", item_id=f"ok{n}")],
            ]
        )
        await Runner.run(
            Agent(name="assistant", model=model, tools=tools),
            f"Remember this about Ann, number {n}.",
            hooks=TiamatHooks(store, user_id=user_id, session_id=f"s{n}"),
        )
    model = ScriptedModel([[assistant_message("Berlin.", item_id="a")]])
    await Runner.run(Agent(name="assistant", model=model), "Where does Ann live?", hooks=hooks)
    await hooks.flush()
    facts = facts_section(model.calls[0])
    assert any("Ann moved to Berlin (since" in line for line in facts)
    assert not any("Paris" in line for line in facts)
    block = next(t for t in contents(model.calls[0]) if t.startswith(MEMORY_MARK))
    assert hooks.counter.count(block) <= hooks.recall_config.budget


async def test_facts_can_be_turned_off_and_users_without_facts_get_no_section(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    await learn(store, Scope(user_id), "Ann", "lives in", "Berlin")
    off = TiamatHooks(store, user_id=user_id, facts=False)
    model = ScriptedModel([[assistant_message("?", item_id="a")]])
    await Runner.run(Agent(name="a", model=model), "Where does Ann live?", hooks=off)
    assert not any("Known facts:" in t for t in contents(model.calls[0]))

    other = TiamatHooks(store, user_id=user_id + "-other")
    model = ScriptedModel([[assistant_message("?", item_id="a")]])
    await Runner.run(Agent(name="a", model=model), "Where does Ann live?", hooks=other)
    assert not any("Known facts:" in t for t in contents(model.calls[0]))
    await off.flush()
    await other.flush()


# -- tools ---------------------------------------------------------------------------------------


async def test_tools_are_scoped_per_user_through_the_run_context(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    hooks = TiamatHooks(store, user_id=lambda ctx: ctx.context["user"])
    tools = hooks.tools()
    for tool in tools:
        assert not any("user" in name for name in tool.params_json_schema["properties"])

    async def run(user: str, calls: list[Any], final: str) -> ModelCall:
        model = ScriptedModel([calls, [assistant_message(final, item_id="x")]])
        await Runner.run(
            Agent(name="assistant", model=model, tools=tools),
            "memory please",
            hooks=hooks,
            context={"user": user},
        )
        await hooks.flush()
        return model.calls[1]

    alice, bob = f"{user_id}-alice", f"{user_id}-bob"
    await run(
        alice, [function_call("remember", {"fact": "Alice loves green tea"}, call_id="r1")], "ok"
    )
    seen_by_bob = await run(
        bob, [function_call("search_memory", {"query": "green tea"}, call_id="s1")], ""
    )
    seen_by_alice = await run(
        alice, [function_call("search_memory", {"query": "green tea"}, call_id="s2")], ""
    )

    def tool_output(call: ModelCall) -> str:
        return next(
            str(to_jsonable(i)["output"])
            for i in call.input
            if to_jsonable(i).get("type") == "function_call_output"
        )

    assert "Alice" not in tool_output(seen_by_bob)
    assert "Alice loves green tea" in tool_output(seen_by_alice)
    notes = await store.read(Scope(alice), kinds=("fact",))
    assert [n.text for n in notes] == ["Alice loves green tea"]
    assert await store.read(Scope(bob), kinds=("fact",)) == []
