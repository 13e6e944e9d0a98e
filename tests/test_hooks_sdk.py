"""Pins the openai-agents behaviour the hooks rely on, and the hooks' tracing spans.

If an SDK upgrade breaks one of these, hooks-only injection (``hooks=`` without the filter) or
session handling needs revisiting; ``TiamatHooks`` warns on SDK versions it was not verified on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    SQLiteSession,
    add_trace_processor,
    function_tool,
)
from agents.items import TResponseInputItem
from agents.run_config import CallModelData, ModelInputData
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tracing import Span, Trace, TracingProcessor
from agents.tracing.span_data import CustomSpanData

from tiamat_hooks.hooks import TiamatHooks
from tiamat_hooks.items import item_text, to_jsonable
from tiamat_hooks.stores import SQLiteMemoryStore

MARKER: TResponseInputItem = {"role": "user", "content": "inserted by on_llm_start"}


class InsertingHooks(RunHooks[Any]):
    def __init__(self) -> None:
        self.lists: list[list[TResponseInputItem]] = []

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        self.lists.append(input_items)
        input_items.insert(0, dict(MARKER))  # type: ignore[arg-type]


@function_tool
def ping() -> str:
    """Answers pong."""
    return "pong"


@pytest.mark.parametrize("streamed", [False, True])
async def test_on_llm_start_receives_the_list_sent_to_the_model(streamed: bool) -> None:
    """The hooks-only path: an item inserted in on_llm_start reaches the model, every call."""
    hooks = InsertingHooks()
    model = ScriptedModel(
        [[function_call("ping", {}, call_id="c1")], [assistant_message("done", item_id="m1")]]
    )
    agent = Agent(name="a", model=model, tools=[ping])
    if streamed:
        result = Runner.run_streamed(agent, "hello", hooks=hooks)
        async for _ in result.stream_events():
            pass
    else:
        await Runner.run(agent, "hello", hooks=hooks)
    assert len(model.calls) == 2
    for call, sent in zip(model.calls, hooks.lists, strict=True):
        assert call.input[0] == MARKER
        assert call.input == sent  # the very list (recorded calls are deep copies of it)


async def test_injection_is_not_saved_to_an_sdk_session(tmp_path: Path) -> None:
    """Neither a hooks insertion nor a filter insertion is persisted by the SDK."""
    session = SQLiteSession("s", str(tmp_path / "session.db"))

    def inserting_filter(data: CallModelData[Any]) -> ModelInputData:
        items = [{"role": "user", "content": "inserted by filter"}, *data.model_data.input]
        return ModelInputData(input=items, instructions=data.model_data.instructions)  # type: ignore[list-item]

    model = ScriptedModel([[assistant_message("done", item_id="m1")]])
    await Runner.run(
        Agent(name="a", model=model),
        "hello",
        hooks=InsertingHooks(),
        session=session,
        run_config=RunConfig(call_model_input_filter=inserting_filter),
    )
    texts = [item_text(to_jsonable(i)) for i in model.calls[0].input]
    assert texts == ["inserted by on_llm_start", "inserted by filter", "hello"]
    assert [item_text(to_jsonable(i)) for i in await session.get_items()] == ["hello", "done"]
    session.close()


class SpanCollector(TracingProcessor):
    """Registered once (the SDK has no public way to remove a processor); inert when off."""

    def __init__(self) -> None:
        self.active = False
        self.spans: list[Span[Any]] = []

    def on_trace_start(self, trace: Trace) -> None:
        pass

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        if self.active and isinstance(span.span_data, CustomSpanData):
            self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


_collector = SpanCollector()
add_trace_processor(_collector)


@pytest.mark.parametrize("sensitive", [False, True])
async def test_recall_and_persist_spans(tmp_path: Path, sensitive: bool) -> None:
    store = SQLiteMemoryStore(tmp_path / "memory.db")
    fact = "My favourite colour is teal."
    _collector.spans.clear()
    _collector.active = True
    try:
        for n, text in enumerate((fact, "What is my favourite colour?")):
            hooks = TiamatHooks(
                store, user_id="u", session_id=f"s{n}", trace_include_sensitive_data=sensitive
            )
            model = ScriptedModel([[assistant_message("ok", item_id=f"m{n}")]])
            await Runner.run(Agent(name="a", model=model), text, hooks=hooks)
            await hooks.flush()
    finally:
        _collector.active = False
        await store.close()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in _collector.spans:
        by_name.setdefault(span.span_data.name, []).append(span.span_data.data)
    recall = by_name["tiamat.recall"][-1]
    assert recall["snippets"] >= 1
    assert 0 < recall["tokens"] <= recall["budget"]
    assert "elapsed_ms" in recall
    assert ("block" in recall) is sensitive
    if sensitive:
        assert fact in recall["block"]
    assert sum(d["records"] for d in by_name["tiamat.persist"]) == 4
    assert not [d for d in by_name["tiamat.persist"] if "block" in d or "text" in d]
