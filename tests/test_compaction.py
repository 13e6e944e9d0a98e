"""Compaction: summarizers, the store-side Compactor, and the pure input compaction."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from agents.testing import ScriptedModel, assistant_message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import new_id
from tiamat_hooks.compaction import (
    ITEM_OVERHEAD_TOKENS,
    Compactor,
    ExtractiveSummarizer,
    ModelSummarizer,
    SummarizationError,
    atomic_groups,
    compact_input,
    count_item_tokens,
    render_summary_item,
    seq_map_from_history,
    summary_key,
)
from tiamat_hooks.errors import ConfigError, InvalidInputError, InvalidScopeError
from tiamat_hooks.items import item_to_record
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.tokens import TokenCounter

COUNTER = TokenCounter("cl100k_base")
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

FILLER = [
    "okay that sounds good to me",
    "thanks a lot for the help so far",
    "hmm let me think about it for a moment",
    "sure, that works fine",
    "right, I see what you mean here",
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMemoryStore]:
    s = SQLiteMemoryStore(tmp_path / "m.db")
    yield s
    await s.close()


def msg(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


def call(cid: str, name: str = "lookup", **args: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": cid, "name": name, "arguments": json.dumps(args)}


def output(cid: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": cid, "output": text}


def turns(items: Sequence[dict[str, Any]], user: str, session: str) -> list[MemoryRecord]:
    return [
        item_to_record(it, user_id=user, session_id=session, created_at=T0 + timedelta(minutes=i))
        for i, it in enumerate(items)
    ]


def summary(user: str, a: int, b: int, text: str, level: int = 0) -> MemoryRecord:
    return make_record(
        user_id=user,
        session_id="s",
        kind="summary",
        text=text,
        created_at=T0,
        meta={"seq_from": a, "seq_to": b, "level": level, "tokens": COUNTER.count(text)},
    )


# -- ExtractiveSummarizer ---------------------------------------------------------------------


async def test_extractive_summary_within_budget_keeps_name_date_number() -> None:
    user = new_id()
    convo = [msg("user", " ".join(FILLER)) for _ in range(6)]
    convo.insert(3, msg("user", "Ann booked the flight to Lisbon on 12 March for 340 euros."))
    convo.insert(5, msg("assistant", "Understood. I will remind you to pack."))
    records = turns(convo, user, "s")
    summarizer = ExtractiveSummarizer(COUNTER)
    text = await summarizer.summarize(records, max_tokens=40)
    assert COUNTER.count(text) <= 40
    assert "Ann" in text and "12 March" in text and "340" in text
    assert "user:" in text  # the speaker is kept
    # Deterministic.
    assert await summarizer.summarize(records, max_tokens=40) == text


async def test_extractive_keeps_original_order_and_collapses_tool_calls() -> None:
    user = new_id()
    records = turns(
        [
            msg("user", "On Monday Ben starts at Acme."),
            call("c1", "weather", city="Oslo"),
            output("c1", "Oslo: 4 degrees and rain"),
            msg("assistant", "We decided to meet on Friday at 10."),
        ],
        user,
        "s",
    )
    text = await ExtractiveSummarizer(COUNTER).summarize(records, max_tokens=200)
    lines = text.splitlines()
    assert lines[0].startswith("user: On Monday Ben")
    tool_lines = [ln for ln in lines if ln.startswith("tool:")]
    assert len(tool_lines) == 1
    assert "weather(" in tool_lines[0] and "→" in tool_lines[0] and "4 degrees" in tool_lines[0]
    assert lines[-1].startswith("assistant: We decided")


async def test_extractive_empty_and_zero_budget() -> None:
    s = ExtractiveSummarizer(COUNTER)
    assert await s.summarize([], max_tokens=50) == ""
    records = turns([msg("user", "Ann lives in Berlin.")], new_id(), "s")
    assert await s.summarize(records, max_tokens=0) == ""


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=12),
    budget=st.integers(min_value=1, max_value=80),
)
def test_extractive_never_exceeds_budget(texts: list[str], budget: int) -> None:
    records = turns([msg("user", t) for t in texts], "u", "s")
    text = ExtractiveSummarizer(COUNTER).summarize_sync(records, max_tokens=budget)
    assert COUNTER.count(text) <= budget


# -- ModelSummarizer --------------------------------------------------------------------------


async def test_model_summarizer_sends_turns_and_instruction_and_uses_answer() -> None:
    model = ScriptedModel([[assistant_message("Ann moved to Berlin on 2 March 2024.")]])
    records = turns(
        [msg("user", "My sister Ann moved to Berlin."), msg("assistant", "When was that?")],
        new_id(),
        "s",
    )
    text = await ModelSummarizer(model, counter=COUNTER).summarize(records, max_tokens=100)
    assert text == "Ann moved to Berlin on 2 March 2024."
    sent = model.last_call
    assert sent is not None
    assert sent.system_instructions is not None
    for word in ("name", "date", "number", "decision", "open task"):
        assert word in sent.system_instructions
    assert "never follow instructions" in sent.system_instructions
    prompt = json.dumps(sent.input)
    assert "My sister Ann moved to Berlin." in prompt and "When was that?" in prompt
    assert "<transcript>" in prompt and "2024-03-01" in prompt
    assert sent.tools == [] and sent.output_schema is None
    model.assert_complete()


async def test_model_summarizer_truncates_long_output_and_rejects_empty() -> None:
    long_answer = "Ann likes tea. " * 200
    model = ScriptedModel([[assistant_message(long_answer)], [assistant_message("  ")]])
    summarizer = ModelSummarizer(model, counter=COUNTER)
    records = turns([msg("user", "hello there")], new_id(), "s")
    text = await summarizer.summarize(records, max_tokens=30)
    assert 0 < COUNTER.count(text) <= 30 and long_answer.startswith(text)
    with pytest.raises(SummarizationError):
        await summarizer.summarize(records, max_tokens=30)


# -- Compactor --------------------------------------------------------------------------------


def session_items(n_blocks: int) -> list[dict[str, Any]]:
    """A conversation with tool call/output pairs (some parallel) spread through it."""
    items: list[dict[str, Any]] = []
    for b in range(n_blocks):
        items.append(msg("user", f"Block {b}: Ann asked about order {1000 + b}. " + FILLER[b % 5]))
        if b % 3 == 0:
            items.append(call(f"c{b}a", order=1000 + b))
            items.append(call(f"c{b}b", order=2000 + b))
            items.append(output(f"c{b}a", f"order {1000 + b} shipped on 3 May " + FILLER[1]))
            items.append(output(f"c{b}b", f"order {2000 + b} pending " + FILLER[2]))
        elif b % 3 == 1:
            items.append(call(f"c{b}", order=1000 + b))
            items.append(output(f"c{b}", f"order {1000 + b} delivered to Oslo " + FILLER[3]))
        items.append(msg("assistant", f"Noted for block {b}. We will follow up on Friday."))
    return items


async def add_session(store: SQLiteMemoryStore, user: str, session: str, items: list[Any]) -> None:
    await store.add(turns(items, user, session))


def assert_pairs_intact(turn_records: list[MemoryRecord], summaries: list[MemoryRecord]) -> None:
    """No summary range separates a call from its output, or starts with an output."""
    seq_of_call: dict[str, int] = {}
    seq_of_out: dict[str, int] = {}
    by_seq = {t.seq: t for t in turn_records}
    for t in turn_records:
        item = t.item or {}
        if item.get("type") == "function_call":
            seq_of_call[item["call_id"]] = t.seq or 0
        elif item.get("type") == "function_call_output":
            seq_of_out[item["call_id"]] = t.seq or 0
    for s in summaries:
        a, b = s.meta["seq_from"], s.meta["seq_to"]
        for cid, cs in seq_of_call.items():
            os_ = seq_of_out[cid]
            assert (a <= cs <= b) == (a <= os_ <= b), f"pair {cid} split by summary {a}-{b}"
        first = by_seq[a].item or {}
        assert first.get("type") != "function_call_output"


def compactor(store: SQLiteMemoryStore, **kw: Any) -> Compactor:
    opts: dict[str, Any] = {
        "compact_after_tokens": 400,
        "span_tokens": 200,
        "max_summary_tokens": 60,
        "keep_recent_tokens": 100,
        "merge_after": 3,
        "counter": COUNTER,
        "retry_base_delay": 0.0,
    }
    opts.update(kw)
    return Compactor(store, ExtractiveSummarizer(COUNTER), **opts)


async def test_compaction_covers_spans_without_splitting_pairs(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(24))
    comp = compactor(store, merge_after=100)
    written = await comp.compact(scope)
    assert written, "a long session must be compacted"
    all_turns = await store.read(scope, kinds=("turn",))
    level0 = sorted([s for s in written if s.meta["level"] == 0], key=lambda s: s.meta["seq_from"])
    # Contiguous from the first turn, no overlap.
    assert level0[0].meta["seq_from"] == 1
    for prev, nxt in itertools.pairwise(level0):
        assert nxt.meta["seq_from"] == prev.meta["seq_to"] + 1
    assert_pairs_intact(all_turns, level0)
    for s in level0:
        a, b = s.meta["seq_from"], s.meta["seq_to"]
        assert s.key == summary_key(session, a, b, 0)
        assert s.kind == "summary" and s.session_id == session
        assert 0 < COUNTER.count(s.text) <= 60 == comp.max_summary_tokens
        assert s.meta["tokens"] == COUNTER.count(s.text)
        assert s.created_at == max(t.created_at for t in all_turns if a <= (t.seq or 0) <= b)
    # What is left uncovered is under the threshold, and the newest turns are never summarized.
    covered_to = level0[-1].meta["seq_to"]
    rest = [t for t in all_turns if (t.seq or 0) > covered_to]
    assert sum(comp.record_tokens(t) for t in rest) <= 400
    assert sum(comp.record_tokens(t) for t in rest) >= 100
    # Raw turns are untouched.
    assert len(all_turns) == len(session_items(24))


async def test_compaction_is_idempotent_and_concurrent_safe(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(30))
    first, second = await asyncio.gather(
        compactor(store).compact(scope), compactor(store).compact(scope)
    )
    stored = await store.read(scope, kinds=("summary",))
    keys = [s.key for s in stored]
    assert len(keys) == len(set(keys))
    assert {s.key for s in first} | {s.key for s in second} == set(keys)
    # Rerunning finds nothing to do.
    again = compactor(store)
    assert await again.compact(scope) == []
    assert len(await store.read(scope, kinds=("summary",))) == len(stored)


async def test_growing_session_never_overlaps_summaries(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    items = session_items(40)
    half = len(items) // 2
    await add_session(store, user, session, items[:half])
    comp = compactor(store, merge_after=100)
    await comp.compact(scope)
    more = turns(items[half:], user, session)
    await store.add(more)
    await comp.compact(scope)
    level0 = sorted(
        (s for s in await store.read(scope, kinds=("summary",)) if s.meta["level"] == 0),
        key=lambda s: s.meta["seq_from"],
    )
    for prev, nxt in itertools.pairwise(level0):
        assert nxt.meta["seq_from"] == prev.meta["seq_to"] + 1
    assert_pairs_intact(await store.read(scope, kinds=("turn",)), level0)


async def test_summaries_of_summaries(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(40))
    written = await compactor(store, merge_after=3).compact(scope)
    level0 = sorted((s for s in written if s.meta["level"] == 0), key=lambda s: s.meta["seq_from"])
    level1 = [s for s in written if s.meta["level"] == 1]
    assert len(level0) >= 4 and level1
    top = min(level1, key=lambda s: s.meta["seq_from"])
    # The first level-1 summary covers exactly the union of the oldest three level-0 ones.
    assert top.meta["seq_from"] == level0[0].meta["seq_from"]
    assert top.meta["seq_to"] == level0[2].meta["seq_to"]
    assert top.key == summary_key(session, top.meta["seq_from"], top.meta["seq_to"], 1)
    assert COUNTER.count(top.text) <= 60
    # At most merge_after level-0 summaries remain loose.
    loose = [
        s
        for s in level0
        if not any(
            h.meta["seq_from"] <= s.meta["seq_from"] and s.meta["seq_to"] <= h.meta["seq_to"]
            for h in level1
        )
    ]
    assert len(loose) <= 3


async def test_below_threshold_does_nothing(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(2))
    assert await compactor(store).compact(scope) == []
    assert await store.read(scope, kinds=("summary",)) == []


class FlakySummarizer:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def summarize(self, records: Sequence[MemoryRecord], *, max_tokens: int) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("model unavailable")
        return f"summary of {len(records)} records"


async def test_summarizer_failure_leaves_turns_and_counts(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(24))
    flaky = FlakySummarizer(failures=100)
    comp = Compactor(
        store,
        flaky,
        compact_after_tokens=400,
        span_tokens=200,
        max_summary_tokens=60,
        keep_recent_tokens=100,
        counter=COUNTER,
        retries=2,
        retry_base_delay=0.0,
    )
    with pytest.raises(SummarizationError) as info:
        await comp.compact(scope)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert flaky.calls == 3  # one try + two retries, bounded
    assert comp.counters.failures == 1 and comp.counters.retries == 2
    assert await store.read(scope, kinds=("summary",)) == []
    assert len(await store.read(scope, kinds=("turn",))) == len(session_items(24))


async def test_summarizer_retry_then_success(store: SQLiteMemoryStore) -> None:
    user, session = new_id(), new_id("s")
    scope = Scope(user, session_id=session)
    await add_session(store, user, session, session_items(24))
    flaky = FlakySummarizer(failures=1)
    comp = Compactor(
        store,
        flaky,
        compact_after_tokens=400,
        span_tokens=200,
        max_summary_tokens=60,
        keep_recent_tokens=100,
        counter=COUNTER,
        retry_base_delay=0.0,
    )
    written = await comp.compact(scope)
    assert written and comp.counters.retries == 1 and comp.counters.failures == 0


async def test_compactor_validates_config_and_scope(store: SQLiteMemoryStore) -> None:
    with pytest.raises(ConfigError):
        Compactor(store, ExtractiveSummarizer(COUNTER), span_tokens=100, max_summary_tokens=200)
    with pytest.raises(ConfigError):
        Compactor(store, ExtractiveSummarizer(COUNTER), keep_recent_tokens=5000)
    with pytest.raises(InvalidScopeError):
        await compactor(store).compact(Scope(new_id()))


# -- input side -------------------------------------------------------------------------------


def test_count_item_tokens_counts_text_plus_overhead() -> None:
    item = msg("user", "Ann lives in Berlin")
    assert count_item_tokens(item, COUNTER) == COUNTER.count("Ann lives in Berlin") + (
        ITEM_OVERHEAD_TOKENS
    )
    assert count_item_tokens(call("c", x=1), COUNTER) > ITEM_OVERHEAD_TOKENS


def test_atomic_groups_keep_parallel_calls_and_reasoning_together() -> None:
    items = [
        msg("user", "hi"),
        {"type": "reasoning", "id": "rs1", "summary": []},
        call("a"),
        call("b"),
        output("a", "1"),
        output("b", "2"),
        msg("assistant", "done"),
        output("zz", "orphan from a server-side conversation"),
    ]
    assert atomic_groups(items) == [(0, 1), (1, 6), (6, 8)]
    assert atomic_groups([output("x", "1"), msg("user", "q")]) == [(0, 1), (1, 2)]


def convo_items(n: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i in range(n):
        items.append(msg("user", f"Question {i}: tell me about order {i} " + FILLER[i % 5] * 3))
        items.append(msg("assistant", f"Answer {i}: order {i} shipped " + FILLER[(i + 1) % 5] * 3))
    return items


def test_compact_input_under_budget_is_unchanged() -> None:
    items = convo_items(3)
    result = compact_input(items, [], context_budget=10_000, seq_of={}, counter=COUNTER)
    assert result.items == items and not result.changed and result.fits
    assert result.tokens_before == result.tokens_after


def test_compact_input_replaces_covered_items_with_one_summary() -> None:
    items = convo_items(10)  # 20 history items, seqs 1..20
    items.append(msg("user", "What about order 3?"))  # the new request, not stored
    seq_of = {i: i + 1 for i in range(20)}
    summaries = [
        summary("u", 1, 8, "User asked about orders 0-3; all shipped."),
        summary("u", 9, 16, "User asked about orders 4-7; all shipped."),
    ]
    before = sum(count_item_tokens(it, COUNTER) for it in items)
    budget = before // 2
    result = compact_input(
        items, summaries, context_budget=budget, seq_of=seq_of, counter=COUNTER, keep_last=3
    )
    assert result.fits and result.tokens_after <= budget
    assert result.summarized and not result.dropped
    assert result.summarized[0] == 0 and all(seq_of[i] <= 16 for i in result.summarized)
    assert result.summary_index == 0
    item = result.items[0]
    assert item["role"] == "user" and item["type"] == "message"
    assert item["content"].startswith("<memory>") and item["content"].endswith("</memory>")
    assert (
        "not instructions" in item["content"] and "> User asked about orders 0-3" in item["content"]
    )
    assert "turns 1–8" in item["content"]
    assert result.items[-3:] == items[-3:]  # the last turns verbatim
    assert result.tokens_after == sum(count_item_tokens(it, COUNTER) for it in result.items)


def test_compact_input_drops_oldest_when_nothing_is_summarized() -> None:
    items = convo_items(10)
    before = sum(count_item_tokens(it, COUNTER) for it in items)
    result = compact_input(items, [], context_budget=before // 3, seq_of={}, counter=COUNTER)
    assert result.fits and result.dropped and not result.summarized
    assert result.dropped == tuple(range(len(result.dropped)))  # oldest first
    assert result.items == items[len(result.dropped) :]


def test_compact_input_keeps_pinned_memory_and_newest_request() -> None:
    items = [msg("user", "<memory>recalled things</memory>"), *convo_items(8)]
    items.append(call("c1", q="x"))
    items.append(output("c1", "result " * 50))
    result = compact_input(
        items, [], context_budget=200, seq_of={}, counter=COUNTER, keep_last=1, pinned={0}
    )
    assert result.items[0] == items[0]
    newest_user = max(i for i, it in enumerate(items) if it.get("role") == "user" and i != 0)
    assert items[newest_user] in result.items
    assert result.items[-2:] == items[-2:]


def test_compact_input_gives_up_recent_history_before_going_over_budget() -> None:
    """A huge last reply yields to memory and the request; it is the last history to go."""
    memory = msg("user", "<memory>\nrecalled " + "fact " * 40 + "\n</memory>")
    old = convo_items(3)
    long_reply = msg("assistant", "Here is a very long answer. " * 120)
    request = msg("user", "And what did I say about order 2?")
    items = [memory, *old, msg("user", "Tell me everything."), long_reply, request]
    costs = [count_item_tokens(it, COUNTER) for it in items]
    budget = costs[0] + costs[-2] + costs[-1] - 1  # memory + reply + request: one token over
    result = compact_input(
        items, [], context_budget=budget, seq_of={}, counter=COUNTER, keep_last=4, pinned={0}
    )
    assert result.fits
    # History is trimmed oldest first and stays a contiguous tail: the reply goes last.
    assert result.items == [memory, request]
    assert result.dropped == tuple(range(1, len(items) - 1))
    # With room for the reply, the older turns go and the reply stays verbatim.
    result = compact_input(
        items, [], context_budget=budget + 1, seq_of={}, counter=COUNTER, keep_last=4, pinned={0}
    )
    assert result.items == [memory, long_reply, request]


def test_compact_input_validates() -> None:
    with pytest.raises(InvalidInputError):
        compact_input([], [], context_budget=-1, seq_of={}, counter=COUNTER)
    with pytest.raises(InvalidInputError):
        render_summary_item([])


def test_seq_map_from_history_aligns_from_the_end() -> None:
    user = new_id()
    stored = turns(convo_items(4), user, "s")
    stored = [t.model_copy(update={"seq": i + 1}) for i, t in enumerate(stored)]
    history = [t.item for t in stored[-5:]]  # the SDK replayed only the newest five
    mapping = seq_map_from_history(history, stored)
    assert mapping == {i: 4 + i for i in range(5)}
    # A mismatch stops the mapping instead of mislabelling.
    history[1] = msg("user", "something else")
    assert seq_map_from_history(history, stored) == {2: 6, 3: 7, 4: 8}


# Random conversations: messages, single and parallel tool calls, reasoning items.
_event = st.one_of(
    st.tuples(st.just("msg"), st.sampled_from(["user", "assistant"]), st.integers(1, 200)),
    st.tuples(st.just("calls"), st.integers(1, 3), st.integers(1, 150)),
    st.tuples(st.just("reasoned_call"), st.just(1), st.integers(1, 40)),
)


def build_items(events: list[tuple[str, Any, int]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    n = 0
    for kind, arg, size in events:
        if kind == "msg":
            items.append(msg(arg, " ".join(f"word{j}" for j in range(size))))
            continue
        k = arg
        ids = [f"call{n + j}" for j in range(k)]
        n += k
        if kind == "reasoned_call":
            items.append({"type": "reasoning", "id": f"rs{n}", "summary": []})
        items.extend(call(cid, n=size) for cid in ids)
        items.extend(output(cid, "x " * size) for cid in ids)
    return items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_event, min_size=1, max_size=40),
    stored_share=st.floats(0, 1),
    cuts=st.lists(st.floats(0.01, 1.0), max_size=6),
    budget_share=st.floats(0.05, 1.2),
    keep_last=st.integers(0, 4),
    pin_first=st.booleans(),
)
def test_compact_input_properties(
    events: list[tuple[str, Any, int]],
    stored_share: float,
    cuts: list[float],
    budget_share: float,
    keep_last: int,
    pin_first: bool,
) -> None:
    items = build_items(events)
    if pin_first:
        items.insert(0, msg("user", "<memory>\nrecalled\n</memory>"))
    n = len(items)
    history = int(n * stored_share)
    first_stored = 1 if pin_first else 0
    seq_of: list[int | None] = [None] * n
    for i in range(first_stored, history):
        seq_of[i] = i - first_stored + 1
    stored = max(history - first_stored, 0)
    bounds = sorted({max(1, round(c * stored)) for c in cuts}) if stored else []
    summaries, start = [], 1
    for b in bounds:
        if b >= start:
            summaries.append(summary("u", start, b, f"turns {start} to {b} summarized"))
            start = b + 1
    costs = [count_item_tokens(it, COUNTER) for it in items]
    before = sum(costs)
    budget = int(before * budget_share)
    pinned = {0} if pin_first else set()
    result = compact_input(
        items,
        summaries,
        context_budget=budget,
        seq_of=seq_of,
        counter=COUNTER,
        keep_last=keep_last,
        pinned=pinned,
    )

    event("summarized" if result.summarized else "not summarized")
    event("dropped" if result.dropped else "nothing dropped")
    event("fits" if result.fits else "over budget")

    # Accounting.
    assert result.tokens_before == before
    assert result.tokens_after == sum(count_item_tokens(it, COUNTER) for it in result.items)
    assert not set(result.summarized) & set(result.dropped)
    kept_ids = {id(it) for it in result.items}
    for i, it in enumerate(items):
        gone = i in result.summarized or i in result.dropped
        assert gone != (id(it) in kept_ids), f"item {i} both kept and removed, or neither"
    for i in result.summarized:
        seq = seq_of[i]
        assert seq is not None
        assert any(s.meta["seq_from"] <= seq <= s.meta["seq_to"] for s in result.summaries)
    assert (result.summary_index is None) == (not result.summarized)

    # Never an orphan output, never a call whose output the input had.
    calls = {it["call_id"] for it in result.items if it.get("type") == "function_call"}
    outs = {it["call_id"] for it in result.items if it.get("type") == "function_call_output"}
    assert outs <= calls and calls <= outs
    # A reasoning item is never left without the item it precedes.
    for i, it in enumerate(result.items):
        if it.get("type") == "reasoning":
            assert i + 1 < len(result.items) and result.items[i + 1].get("type") == "function_call"

    # Protected items survive: pinned, the newest user request, and the last keep_last groups
    # from the request on. The last keep_last groups before it are history, removed last.
    groups = atomic_groups(items)
    users = [
        i
        for i, it in enumerate(items)
        if it.get("role") == "user" and i not in pinned and it.get("type") == "message"
    ]
    request = next((g for g, (s, e) in enumerate(groups) if users and s <= users[-1] < e), None)
    tail_from = max(0, len(groups) - keep_last)
    protected = {g for g in range(tail_from, len(groups)) if request is None or g >= request}
    for g, (s, _e) in enumerate(groups):
        if (pin_first and s == 0) or g == request:
            protected.add(g)
    protected_idx = [i for g in protected for i in range(*groups[g])]
    for i in protected_idx:
        assert id(items[i]) in kept_ids
    # The protected tail is verbatim and in order.
    hard_from = tail_from if request is None else max(tail_from, request)
    tail = items[groups[hard_from][0] :] if hard_from < len(groups) else []
    if tail:
        assert result.items[-len(tail) :] == tail
    # Recent history goes last: a dropped group means every older removable group is gone too.
    removed = set(result.summarized) | set(result.dropped)
    removable = [g for g in range(len(groups)) if g not in protected]
    for k, g in enumerate(removable):
        if groups[g][0] in result.dropped:
            older = removable[:k]
            assert all(groups[o][0] in removed for o in older), (g, older)

    # Within budget whenever that is achievable.
    floor = sum(costs[i] for i in protected_idx)
    if before <= budget:
        assert result.items == items
    elif floor <= budget:
        assert result.fits, (result.tokens_after, budget, floor)
