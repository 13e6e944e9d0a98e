"""TiamatHooks end to end: ScriptedModel as the model, a real SQLite file as the store.

Every assertion about what the model saw reads ``ScriptedModel.calls`` (the input the model
actually received); every assertion about persistence reads the store after ``flush()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pytest
from agents import (
    Agent,
    MaxTurnsExceeded,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    SQLiteSession,
    function_tool,
)
from agents.items import ModelResponse, TResponseInputItem
from agents.memory import SessionSettings
from agents.run_config import CallModelData, ModelInputData
from agents.testing import ModelCall, ScriptedModel, assistant_message, function_call
from agents.tool import Tool

from tiamat_hooks.errors import ConfigError, StoreUnavailableError
from tiamat_hooks.hooks import TiamatHooks
from tiamat_hooks.items import item_text, to_jsonable
from tiamat_hooks.models import MemoryRecord, Scope, StoreCapabilities
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.tokens import TokenCounter

Mode = Literal["run", "streamed"]
MODES: tuple[Mode, ...] = ("run", "streamed")
MARK = "<memory>\n"

FACT = "My dog is a golden retriever named Biscuit and he loves swimming."
QUESTION = "What breed is my dog Biscuit again?"


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    """A real SQLite file. Shadows conftest's backend-parametrised ``store`` on purpose: the glue
    is backend-agnostic, the contract suite covers the backends."""
    s = SQLiteMemoryStore(tmp_path / "memory.db")
    yield s
    await s.close()


def reply(text: str, n: int = 0) -> list[Any]:
    return [assistant_message(text, item_id=f"msg-{n}")]


def item_texts(call: ModelCall) -> list[str]:
    return [item_text(to_jsonable(item)) for item in call.input]


def memory_items(call: ModelCall) -> list[dict[str, Any]]:
    return [
        to_jsonable(item)
        for item in call.input
        if isinstance(to_jsonable(item).get("content"), str)
        and to_jsonable(item)["content"].startswith(MARK)
    ]


async def run_agent(mode: Mode, agent: Agent[Any], text: str | list[Any], **kwargs: Any) -> Any:
    if mode == "run":
        return await Runner.run(agent, text, **kwargs)
    result = Runner.run_streamed(agent, text, **kwargs)
    async for _ in result.stream_events():
        pass
    return result


async def turns(
    store: SQLiteMemoryStore, user: str, session: str | None = None
) -> list[MemoryRecord]:
    return await store.read(Scope(user, session_id=session), kinds=("turn",))


async def tell_fact(store: SQLiteMemoryStore, user: str, fact: str = FACT, **kw: Any) -> None:
    """Run 1: the user tells a fact, on its own hooks object."""
    hooks = TiamatHooks(store, user_id=user, session_id="s-fact", **kw)
    model = ScriptedModel([reply("Noted!")])
    await Runner.run(Agent(name="assistant", model=model), fact, hooks=hooks)
    await hooks.flush()


# -- memory across runs --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_fact_from_run_1_reaches_model_input_of_run_2(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    hooks1 = TiamatHooks(store, user_id=user_id, session_id="s1")
    model1 = ScriptedModel([reply("What a lovely dog!")])
    await run_agent(mode, Agent(name="assistant", model=model1), FACT, hooks=hooks1)
    await hooks1.flush()
    assert memory_items(model1.calls[0]) == []  # nothing to remember yet

    hooks2 = TiamatHooks(store, user_id=user_id, session_id="s2")
    model2 = ScriptedModel([reply("A golden retriever.", 1)])
    await run_agent(mode, Agent(name="assistant", model=model2), QUESTION, hooks=hooks2)
    await hooks2.flush()

    call = model2.calls[0]
    (memory,) = memory_items(call)
    assert memory["role"] == "user"
    assert "golden retriever named Biscuit" in memory["content"]
    assert memory["content"].rstrip().endswith("</memory>")
    # One item, placed just before the new user message.
    assert item_texts(call)[-1] == QUESTION
    assert hooks2.stats.recalls == 1
    assert hooks2.stats.injections == 1
    assert [r.text for r in await turns(store, user_id, "s2")] == [QUESTION, "A golden retriever."]


def test_run_sync_remembers_and_persists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with TiamatHooks(url, user_id="u-sync", session_id="s1") as hooks1:
        model1 = ScriptedModel([reply("Noted!")])
        Runner.run_sync(Agent(name="assistant", model=model1), FACT, hooks=hooks1)
    with TiamatHooks(url, user_id="u-sync", session_id="s2") as hooks2:
        model2 = ScriptedModel([reply("Golden retriever.", 1)])
        Runner.run_sync(Agent(name="assistant", model=model2), QUESTION, hooks=hooks2)
    (memory,) = memory_items(model2.calls[0])
    assert "Biscuit" in memory["content"]
    assert hooks2.stats.records_persisted == 2

    async def read_back() -> list[str]:
        store = SQLiteMemoryStore(tmp_path / "memory.db")
        try:
            return [r.text for r in await turns(store, "u-sync")]
        finally:
            await store.close()

    assert asyncio.run(read_back()) == [FACT, "Noted!", QUESTION, "Golden retriever."]


# -- what is persisted ---------------------------------------------------------------------------


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21C in {city}"


@pytest.mark.parametrize("mode", MODES)
async def test_tool_call_and_output_persisted_once_in_order(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, session_id="s-tools")
    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Paris"}, call_id="call-1")],
            reply("It is sunny in Paris; Biscuit can swim.", 1),
        ]
    )
    agent = Agent(name="assistant", model=model, tools=[get_weather])
    await run_agent(mode, agent, "Can my dog Biscuit swim in Paris today?", hooks=hooks)
    await hooks.flush()

    records = await turns(store, user_id, "s-tools")
    assert [(r.role, r.text) for r in records] == [
        ("user", "Can my dog Biscuit swim in Paris today?"),
        ("tool", 'called get_weather({"city":"Paris"})'),
        ("tool", "tool result: sunny and 21C in Paris"),
        ("assistant", "It is sunny in Paris; Biscuit can swim."),
    ]
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert len({r.key for r in records}) == 4
    # Recall ran once, memory was re-injected before the call after the tool.
    assert hooks.stats.recalls == 1
    assert [len(memory_items(c)) for c in model.calls] == [1, 1]
    assert memory_items(model.calls[0]) == memory_items(model.calls[1])


async def test_tool_output_kept_when_run_stops_on_the_tool(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    hooks = TiamatHooks(store, user_id=user_id, session_id="s")
    model = ScriptedModel([[function_call("get_weather", {"city": "Oslo"}, call_id="call-1")]])
    agent = Agent(
        name="assistant", model=model, tools=[get_weather], tool_use_behavior="stop_on_first_tool"
    )
    result = await Runner.run(agent, "Weather in Oslo?", hooks=hooks)
    await hooks.flush()
    assert result.final_output == "sunny and 21C in Oslo"
    assert [r.text for r in await turns(store, user_id)] == [
        "Weather in Oslo?",
        'called get_weather({"city":"Oslo"})',
        "tool result: sunny and 21C in Oslo",
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_handoff_between_two_agents(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, session_id="s-handoff")
    vet_model = ScriptedModel([reply("Golden retrievers love water, Biscuit will be fine.", 2)])
    vet = Agent(name="vet", model=vet_model)
    triage_model = ScriptedModel([[function_call("transfer_to_vet", {}, call_id="call-h")]])
    triage = Agent(name="triage", model=triage_model, handoffs=[vet])

    result = await run_agent(mode, triage, "Is swimming safe for my dog Biscuit?", hooks=hooks)
    await hooks.flush()

    assert result.last_agent is vet
    records = await turns(store, user_id, "s-handoff")
    assert [(r.agent_id, r.role) for r in records] == [
        ("triage", "user"),
        ("triage", "tool"),
        ("vet", "tool"),
        ("vet", "assistant"),
    ]
    assert records[1].item is not None and records[1].item["name"] == "transfer_to_vet"
    assert records[2].item is not None and records[2].item["type"] == "function_call_output"
    # Both agents saw the memory, recalled once for the run.
    assert len(memory_items(triage_model.calls[0])) == 1
    assert len(memory_items(vet_model.calls[0])) == 1
    assert hooks.stats.recalls == 1


@pytest.mark.parametrize("fresh_hooks_each_run", [False, True])
async def test_sdk_session_history_is_not_stored_again(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path, fresh_hooks_each_run: bool
) -> None:
    session = SQLiteSession("conv-1", str(tmp_path / "sdk_session.db"))
    hooks = TiamatHooks(store, user_id=user_id, session_id="conv-1")
    for n in range(5):
        if fresh_hooks_each_run:
            hooks = TiamatHooks(store, user_id=user_id, session_id="conv-1")
        model = ScriptedModel([reply(f"answer {n}", n)])
        await Runner.run(
            Agent(name="assistant", model=model), f"question {n}", hooks=hooks, session=session
        )
        await hooks.flush()
        # The whole conversation is visible in the input: nothing to recall from it.
        assert memory_items(model.calls[0]) == []

    records = await turns(store, user_id, "conv-1")
    session_texts = [item_text(to_jsonable(i)) for i in await session.get_items()]
    assert [r.text for r in records] == session_texts
    assert len(records) == 10
    assert [r.seq for r in records] == list(range(1, 11))
    session.close()


async def test_session_limit_history_is_not_stored_again(
    store: SQLiteMemoryStore, user_id: str, tmp_path: Path
) -> None:
    session = SQLiteSession("conv-2", str(tmp_path / "sdk_session.db"))
    config = RunConfig(session_settings=SessionSettings(limit=3))
    answers = ["yes", "no", "yes", "no"]
    for n, answer in enumerate(answers):
        hooks = TiamatHooks(store, user_id=user_id, session_id="conv-2")
        model = ScriptedModel([reply(answer, n)])
        # Repeated identical messages: only order and position tell history from new input.
        await Runner.run(
            Agent(name="assistant", model=model),
            "ok?",
            hooks=hooks,
            session=session,
            run_config=config,
        )
        await hooks.flush()
    records = await turns(store, user_id, "conv-2")
    assert [r.text for r in records] == [t for a in answers for t in ("ok?", a)]
    session.close()


async def test_history_passed_back_by_the_caller_is_not_stored_again(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    hooks = TiamatHooks(store, user_id=user_id, session_id="manual")
    history: list[TResponseInputItem] = []
    for n in range(3):
        model = ScriptedModel([reply(f"answer {n}", n)])
        history.append({"role": "user", "content": f"question {n}"})
        result = await Runner.run(Agent(name="assistant", model=model), history, hooks=hooks)
        history = result.to_input_list()
    await hooks.flush()
    assert [r.text for r in await turns(store, user_id, "manual")] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
    ]


async def test_same_opening_in_a_new_conversation_is_stored(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    hooks = TiamatHooks(store, user_id=user_id)  # default session id for every run
    for n in range(2):
        model = ScriptedModel([reply("hello!", n)])
        await Runner.run(Agent(name="assistant", model=model), "hi", hooks=hooks)
        await hooks.flush()
    assert [r.text for r in await turns(store, user_id, "default")] == [
        "hi",
        "hello!",
        "hi",
        "hello!",
    ]


async def test_memory_item_is_never_persisted(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    for n in range(3):
        hooks = TiamatHooks(store, user_id=user_id, session_id="s-later")
        model = ScriptedModel([reply(f"Biscuit is a golden retriever ({n}).", n)])
        await Runner.run(
            Agent(name="assistant", model=model),
            f"Tell me about my dog Biscuit, take {n}",
            hooks=hooks,
            run_config=hooks.wrap() if n == 1 else None,
        )
        await hooks.flush()
        assert len(memory_items(model.calls[0])) == 1
    records = await turns(store, user_id)
    assert records
    assert not [r for r in records if "<memory>" in r.text or "Memory: quoted" in r.text]


async def test_run_failing_in_a_tool_keeps_items_before_the_error(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    @function_tool(failure_error_function=None)
    def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(reason)

    hooks = TiamatHooks(store, user_id=user_id, session_id="s")
    model = ScriptedModel([[function_call("explode", {"reason": "boom"}, call_id="call-x")]])
    with pytest.raises(Exception, match="boom"):
        await Runner.run(
            Agent(name="assistant", model=model, tools=[explode]), "Please explode", hooks=hooks
        )
    await hooks.flush()
    assert [r.text for r in await turns(store, user_id)] == [
        "Please explode",
        'called explode({"reason":"boom"})',
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_max_turns_keeps_items_before_the_error(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    hooks = TiamatHooks(store, user_id=user_id, session_id="s")
    model = ScriptedModel([[function_call("get_weather", {"city": "Rome"}, call_id="call-1")]])
    with pytest.raises(MaxTurnsExceeded):
        await run_agent(
            mode,
            Agent(name="assistant", model=model, tools=[get_weather]),
            "Weather in Rome?",
            hooks=hooks,
            max_turns=1,
        )
    await hooks.flush()
    assert [r.text for r in await turns(store, user_id)] == [
        "Weather in Rome?",
        'called get_weather({"city":"Rome"})',
        "tool result: sunny and 21C in Rome",
    ]


# -- scoping and concurrency ---------------------------------------------------------------------


@dataclass
class AppContext:
    user: str


def user_of(ctx: RunContextWrapper[Any]) -> str:
    return ctx.context.user  # type: ignore[no-any-return]


async def test_two_users_on_one_store_never_see_each_other(store: SQLiteMemoryStore) -> None:
    hooks = TiamatHooks(store, user_id=user_of, session_id="s")
    facts = {
        "alice": "My cat is called Pixel and she is a Maine Coon.",
        "bob": "My cat is called Tofu and he is a Siamese.",
    }
    for user, fact in facts.items():
        model = ScriptedModel([reply("Noted!")])
        await Runner.run(
            Agent(name="assistant", model=model), fact, hooks=hooks, context=AppContext(user)
        )
    await hooks.flush()
    for user, other in (("alice", "bob"), ("bob", "alice")):
        model = ScriptedModel([reply("...", 1)])
        await Runner.run(
            Agent(name="assistant", model=model),
            "What is my cat called and what breed is my cat?",
            hooks=hooks,
            context=AppContext(user),
        )
        (memory,) = memory_items(model.calls[0])
        assert facts[user] in memory["content"]
        assert facts[other] not in memory["content"]
    await hooks.flush()
    assert all(r.user_id == "alice" for r in await turns(store, "alice"))
    assert len(await turns(store, "alice")) == 4


async def test_concurrent_runs_of_one_hooks_object_do_not_mix(store: SQLiteMemoryStore) -> None:
    hooks = TiamatHooks(store, user_id=user_of, session_id="s")
    for user, fact in (("carol", "I live in Lisbon near the river."), ("dave", FACT)):
        await Runner.run(
            Agent(name="assistant", model=ScriptedModel([reply("Noted!")])),
            fact,
            hooks=hooks,
            context=AppContext(user),
        )
    await hooks.flush()

    @function_tool
    async def slow_lookup(topic: str) -> str:
        """Yields to the loop so the two runs interleave."""
        for _ in range(5):
            await asyncio.sleep(0)
        return f"notes about {topic}"

    def script(user: str) -> ScriptedModel:
        return ScriptedModel(
            [
                [function_call("slow_lookup", {"topic": user}, call_id=f"call-{user}")],
                reply(f"done for {user}", 1),
            ]
        )

    models = {"carol": script("carol"), "dave": script("dave")}
    questions = {"carol": "Where do I live, near which river?", "dave": "What is my dog called?"}
    await asyncio.gather(
        *(
            Runner.run(
                Agent(name="assistant", model=models[u], tools=[slow_lookup]),
                questions[u],
                hooks=hooks,
                context=AppContext(u),
            )
            for u in ("carol", "dave")
        )
    )
    await hooks.flush()
    for user, own, other in (("carol", "Lisbon", "Biscuit"), ("dave", "Biscuit", "Lisbon")):
        for call in models[user].calls:
            (memory,) = memory_items(call)
            assert own in memory["content"]
            assert other not in memory["content"]
        texts = [r.text for r in await turns(store, user)][2:]
        assert texts == [
            questions[user],
            f'called slow_lookup({{"topic":"{user}"}})',
            f"tool result: notes about {user}",
            f"done for {user}",
        ]


# -- failures ------------------------------------------------------------------------------------


class DownStore:
    """A store whose backend is unreachable: every operation raises StoreUnavailableError."""

    capabilities = StoreCapabilities()

    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("connection refused")

    add = search = read = list_sessions = list_users = delete = stats = _down

    async def close(self) -> None:
        pass


async def test_store_down_run_succeeds_and_failures_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = TiamatHooks(DownStore(), user_id="u", session_id="s")  # type: ignore[arg-type]
    model = ScriptedModel(
        [[function_call("get_weather", {"city": "Paris"}, call_id="c1")], reply("Sunny.", 1)]
    )
    with caplog.at_level(logging.WARNING, logger="tiamat_hooks"):
        result = await Runner.run(
            Agent(name="assistant", model=model, tools=[get_weather]), "Weather?", hooks=hooks
        )
        await hooks.flush()
    assert result.final_output == "Sunny."
    assert memory_items(model.calls[0]) == []
    assert hooks.stats.failures == {"recall": 1, "persist": 4}
    assert hooks.stats.last_error_type == "StoreUnavailableError"
    assert hooks.stats.records_persisted == 0
    assert len([r for r in caplog.records if "memory" in r.getMessage()]) == 1


class SearchCountingStore(SQLiteMemoryStore):
    """Counts searches of turns; with ``fail=True`` those searches raise (reads still work)."""

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
        self.turn_searches = 0

    async def search(self, query: str, scope: Scope, **kwargs: Any) -> Any:
        if "turn" in kwargs.get("kinds", ("turn",)):
            self.turn_searches += 1
            if self.fail:
                await asyncio.sleep(0.01)  # still in flight while the session's tail is read
                raise StoreUnavailableError("search index unavailable")
        return await super().search(query, scope, **kwargs)


class TailWaitsForSearch(SQLiteMemoryStore):
    """The session tail read returns only once recall's search has been sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.searching = asyncio.Event()
        self.overlapped: list[bool] = []

    async def search(self, query: str, scope: Scope, **kwargs: Any) -> Any:
        self.searching.set()
        return await super().search(query, scope, **kwargs)

    async def read(self, scope: Scope, **kwargs: Any) -> Any:
        if scope.session_id is not None and kwargs.get("newest"):
            try:
                await asyncio.wait_for(self.searching.wait(), timeout=2)
                self.overlapped.append(True)
            except asyncio.TimeoutError:
                self.overlapped.append(False)
        return await super().read(scope, **kwargs)


async def test_search_is_sent_before_the_tail_read_returns(tmp_path: Path, user_id: str) -> None:
    store = TailWaitsForSearch(tmp_path / "m.db")
    try:
        await tell_fact(store, user_id)
        store.searching.clear()
        store.overlapped.clear()
        hooks = TiamatHooks(store, user_id=user_id, session_id="s2")
        model = ScriptedModel([reply("ok")])
        await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks)
        await hooks.flush()
        assert store.overlapped == [True]  # a search after the tail read would time out
        assert "Biscuit" in memory_items(model.calls[0])[0]["content"]
    finally:
        await store.close()


async def test_one_search_per_run_overlapping_the_tail_read(tmp_path: Path, user_id: str) -> None:
    store = SearchCountingStore(tmp_path / "m.db")
    try:
        await tell_fact(store, user_id)
        before = store.turn_searches
        hooks = TiamatHooks(store, user_id=user_id, session_id="s2")
        model = ScriptedModel(
            [[function_call("get_weather", {"city": "Nice"}, call_id="c1")], reply("ok", 1)]
        )
        agent = Agent(name="assistant", model=model, tools=[get_weather])
        await Runner.run(agent, QUESTION, hooks=hooks, run_config=hooks.wrap())
        await hooks.flush()
        assert store.turn_searches - before == 1  # started early, used once, never repeated
        assert [len(memory_items(c)) for c in model.calls] == [1, 1]
        assert "Biscuit" in memory_items(model.calls[0])[0]["content"]
    finally:
        await store.close()


async def test_failed_search_fails_open_and_turns_are_still_stored(
    tmp_path: Path, user_id: str
) -> None:
    store = SearchCountingStore(tmp_path / "m.db", fail=True)
    try:
        hooks = TiamatHooks(store, user_id=user_id, session_id="s")
        model = ScriptedModel([reply("Hello!")])
        result = await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks)
        await hooks.flush()
        assert result.final_output == "Hello!"
        assert memory_items(model.calls[0]) == []
        assert hooks.stats.failures == {"recall": 1}
        assert hooks.stats.last_error_type == "StoreUnavailableError"
        assert [r.text for r in await turns(store, user_id, "s")] == [QUESTION, "Hello!"]
    finally:
        await store.close()


async def test_strict_raises_store_errors_into_the_run() -> None:
    hooks = TiamatHooks(DownStore(), user_id="u", strict=True)  # type: ignore[arg-type]
    model = ScriptedModel([reply("never")])
    with pytest.raises(StoreUnavailableError):
        await Runner.run(Agent(name="assistant", model=model), "hello", hooks=hooks)
    assert hooks.stats.failures == {"recall": 1}


# -- filter, budget, roles -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_filter_and_hooks_together_inject_once(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, session_id="s2")
    model = ScriptedModel(
        [[function_call("get_weather", {"city": "Nice"}, call_id="c1")], reply("ok", 1)]
    )
    agent = Agent(name="assistant", model=model, tools=[get_weather])
    await run_agent(mode, agent, QUESTION, hooks=hooks, run_config=hooks.wrap())
    await hooks.flush()
    assert [len(memory_items(c)) for c in model.calls] == [1, 1]
    assert hooks.stats.recalls == 1
    assert hooks.stats.injections == 2
    assert [r.text for r in await turns(store, user_id, "s2")] == [
        QUESTION,
        'called get_weather({"city":"Nice"})',
        "tool result: sunny and 21C in Nice",
        "ok",
    ]


async def test_filter_alone_injects(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id)
    model = ScriptedModel([reply("ok")])
    config = RunConfig(call_model_input_filter=hooks.input_filter)
    await Runner.run(Agent(name="assistant", model=model), QUESTION, run_config=config)
    (memory,) = memory_items(model.calls[0])
    assert "Biscuit" in memory["content"]


async def test_wrap_runs_the_users_filter_first(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, session_id="s2")
    seen: list[list[str]] = []

    def users_filter(data: CallModelData[Any]) -> ModelInputData:
        seen.append([item_text(to_jsonable(i)) for i in data.model_data.input])
        return ModelInputData(
            input=data.model_data.input, instructions=f"{data.model_data.instructions} Be brief."
        )

    model = ScriptedModel([reply("ok")])
    agent = Agent(name="assistant", model=model, instructions="You are helpful.")
    config = hooks.wrap(RunConfig(call_model_input_filter=users_filter, workflow_name="wf"))
    assert config.workflow_name == "wf"
    await Runner.run(agent, QUESTION, hooks=hooks, run_config=config)
    assert seen == [[QUESTION]]  # the user's filter saw the plain input
    call = model.calls[0]
    assert call.system_instructions == "You are helpful. Be brief."
    assert len(memory_items(call)) == 1

    composed = hooks.wrap(users_filter)
    model2 = ScriptedModel([reply("ok", 1)])
    await Runner.run(
        Agent(name="assistant", model=model2),
        QUESTION,
        run_config=RunConfig(call_model_input_filter=composed),
    )
    assert len(memory_items(model2.calls[0])) == 1


async def test_inject_into_instructions(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, inject_into_instructions=True)
    model = ScriptedModel([reply("ok")])
    agent = Agent(name="assistant", model=model, instructions="Be kind.")
    await Runner.run(agent, QUESTION, hooks=hooks, run_config=hooks.wrap())
    call = model.calls[0]
    assert memory_items(call) == []
    assert call.system_instructions is not None
    assert call.system_instructions.startswith("Be kind.\n\n<memory>\n")
    assert "Biscuit" in call.system_instructions


async def test_developer_role(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, role="developer")
    model = ScriptedModel([reply("ok")])
    await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks)
    (memory,) = memory_items(model.calls[0])
    assert memory["role"] == "developer"


@pytest.mark.parametrize("budget", [40, 80, 200])
async def test_injected_block_never_exceeds_the_budget(
    store: SQLiteMemoryStore, user_id: str, budget: int
) -> None:
    for n in range(12):
        await tell_fact(
            store, user_id, fact=f"Fact {n}: my dog Biscuit likes toy number {n} a lot."
        )
    hooks = TiamatHooks(store, user_id=user_id, token_budget=budget, session_id="s2")
    model = ScriptedModel([reply("ok")])
    await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks)
    counter = TokenCounter()
    for memory in memory_items(model.calls[0]):
        assert counter.count(memory["content"]) <= budget
    if budget >= 200:
        assert memory_items(model.calls[0])


# -- fan-out -------------------------------------------------------------------------------------


class RecordingHooks(RunHooks[Any]):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.llm_inputs: list[list[TResponseInputItem]] = []

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        self.events.append(f"agent_start:{agent.name}")

    async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
        self.events.append(f"agent_end:{agent.name}")

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        self.events.append("llm_start")
        self.llm_inputs.append(list(input_items))

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        self.events.append("llm_end")

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Any, tool: Tool) -> None:
        self.events.append(f"tool_start:{tool.name}")

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Any, tool: Tool, result: object
    ) -> None:
        self.events.append(f"tool_end:{tool.name}")

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Any, to_agent: Any
    ) -> None:
        self.events.append(f"handoff:{from_agent.name}->{to_agent.name}")


async def test_every_event_fans_out_to_the_users_hooks(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    await tell_fact(store, user_id)
    mine = RecordingHooks()
    hooks = TiamatHooks(store, user_id=user_id, session_id="s2", hooks=mine)
    vet = Agent(name="vet", model=ScriptedModel([reply("fine", 3)]))
    triage_model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Paris"}, call_id="c1")],
            [function_call("transfer_to_vet", {}, call_id="c2")],
        ]
    )
    triage = Agent(name="triage", model=triage_model, tools=[get_weather], handoffs=[vet])
    await Runner.run(triage, QUESTION, hooks=hooks)
    assert mine.events == [
        "agent_start:triage",
        "llm_start",
        "llm_end",
        "tool_start:get_weather",
        "tool_end:get_weather",
        "llm_start",
        "llm_end",
        "handoff:triage->vet",
        "agent_start:vet",
        "llm_start",
        "llm_end",
        "agent_end:vet",
    ]
    # The user's on_llm_start sees the input as the model receives it, memory included.
    assert all(len(_memory(items)) == 1 for items in mine.llm_inputs)


def _memory(items: Sequence[Any]) -> list[Any]:
    return [
        i
        for i in items
        if isinstance(to_jsonable(i).get("content"), str)
        and to_jsonable(i)["content"].startswith(MARK)
    ]


async def test_other_injected_memory_frames_are_never_persisted(
    store: SQLiteMemoryStore, user_id: str
) -> None:
    """A compaction summary (also ``<memory>``-framed) from another filter is not a turn."""
    await tell_fact(store, user_id)
    summary = "<memory>\nSummary of earlier turns of this conversation (turns 1-8).\n</memory>"

    def compaction_like(data: CallModelData[Any]) -> ModelInputData:
        items = [{"role": "user", "content": summary}, *data.model_data.input]
        return ModelInputData(input=items, instructions=data.model_data.instructions)  # type: ignore[list-item]

    hooks = TiamatHooks(store, user_id=user_id, session_id="s2")
    model = ScriptedModel([reply("ok")])
    config = RunConfig(call_model_input_filter=compaction_like)
    await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks, run_config=config)
    await hooks.flush()
    texts = item_texts(model.calls[0])
    assert texts[0] == summary
    assert texts[1].startswith("<memory>\nMemory: quoted")
    assert texts[2:] == [QUESTION]
    assert [r.text for r in await turns(store, user_id, "s2")] == [QUESTION, "ok"]


async def test_persist_false_only_recalls(store: SQLiteMemoryStore, user_id: str) -> None:
    await tell_fact(store, user_id)
    hooks = TiamatHooks(store, user_id=user_id, session_id="s2", persist=False)
    model = ScriptedModel([reply("ok")])
    await Runner.run(Agent(name="assistant", model=model), QUESTION, hooks=hooks)
    await hooks.flush()
    assert len(memory_items(model.calls[0])) == 1
    assert await turns(store, user_id, "s2") == []


@pytest.mark.parametrize("mode", MODES)
async def test_speakers_are_stored_and_quoted(
    store: SQLiteMemoryStore, user_id: str, mode: Mode
) -> None:
    """Assistant messages carry the name of the agent that said them (across a handoff), user
    messages the ``user_name``; tool items carry no speaker; recall quotes turns by speaker."""
    hooks = TiamatHooks(store, user_id=user_id, session_id="s-names", user_name="Ann")
    vet_model = ScriptedModel([reply("Golden retrievers love water, Biscuit will be fine.", 2)])
    vet = Agent(name="Dr Vet", model=vet_model)
    triage_model = ScriptedModel([[function_call("transfer_to_dr_vet", {}, call_id="call-n")]])
    triage = Agent(name="triage", model=triage_model, handoffs=[vet])
    await run_agent(mode, triage, "Is swimming safe for my dog Biscuit?", hooks=hooks)
    await hooks.flush()

    records = await turns(store, user_id, "s-names")
    assert [(r.role, r.meta.get("speaker")) for r in records] == [
        ("user", "Ann"),
        ("tool", None),
        ("tool", None),
        ("assistant", "Dr Vet"),
    ]
    assert all(r.meta.get("run_id") for r in records)

    later = TiamatHooks(store, user_id=user_id, session_id="s-later", user_name="Ann")
    model = ScriptedModel([reply("ok")])
    await Runner.run(Agent(name="triage", model=model), "Can Biscuit go swimming?", hooks=later)
    await later.flush()
    (memory,) = memory_items(model.calls[0])
    assert "> Ann: Is swimming safe for my dog Biscuit?" in memory["content"]
    assert "> Dr Vet: Golden retrievers love water" in memory["content"]


async def test_user_name_callable_and_default(store: SQLiteMemoryStore, user_id: str) -> None:
    """``user_name`` may depend on the run context; without it user turns have no speaker."""
    named = TiamatHooks(
        store, user_id=user_id, session_id="s-a", user_name=lambda ctx: f"user {ctx.context}"
    )
    await Runner.run(
        Agent(name="helper", model=ScriptedModel([reply("hi")])), "hello", hooks=named, context=7
    )
    await named.flush()
    plain = TiamatHooks(store, user_id=user_id, session_id="s-b")
    await Runner.run(Agent(name="helper", model=ScriptedModel([reply("yo")])), "hey", hooks=plain)
    await plain.flush()
    assert [r.meta.get("speaker") for r in await turns(store, user_id, "s-a")] == [
        "user 7",
        "helper",
    ]
    assert [r.meta.get("speaker") for r in await turns(store, user_id, "s-b")] == [
        None,
        "helper",
    ]


async def test_clock_dates_stored_turns_and_recall(store: SQLiteMemoryStore, user_id: str) -> None:
    """``clock`` is "now" for stored turns and for recall: a conversation replayed at its
    recorded time keeps its dates, and "last Tuesday" is resolved against the clock."""
    now = [datetime(2023, 5, 2, 15, 0, tzinfo=timezone.utc)]  # a Tuesday
    hooks = TiamatHooks(store, user_id=user_id, session_id="s-clock", clock=lambda: now[0])
    agent = Agent(name="helper", model=ScriptedModel([reply("Noted.")]))
    await Runner.run(agent, FACT, hooks=hooks)
    await hooks.flush()
    assert {r.created_at for r in await turns(store, user_id, "s-clock")} == {now[0]}

    now[0] = datetime(2023, 5, 10, 9, 0, tzinfo=timezone.utc)  # the Wednesday after
    model = ScriptedModel([reply("A golden retriever.")])
    await Runner.run(
        Agent(name="helper", model=model), "What did I say about my dog last Tuesday?", hooks=hooks
    )
    await hooks.flush()
    (memory,) = memory_items(model.calls[0])
    assert "Today is 2023-05-10 Wed." in memory["content"]
    assert "[2023-05-02 Tue]" in memory["content"] and "golden retriever" in memory["content"]
    assert max(r.created_at for r in await turns(store, user_id, "s-clock")) == now[0]


@pytest.mark.parametrize("clock", [42, lambda: "2023-05-02", lambda: datetime(2023, 5, 2)])
def test_clock_must_give_an_aware_datetime(clock: Any) -> None:
    with pytest.raises(ConfigError, match="clock"):
        TiamatHooks(":memory:", user_id="u", clock=clock)
