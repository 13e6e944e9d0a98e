"""The compaction benchmark: model-input tokens and evidence visibility over one long session.

Each conversation of a ``memory-recall-bench/1`` file is replayed as ONE long conversation
through ``Runner.run`` with an SDK ``SQLiteSession`` (in memory) and ``ScriptedModel``: every
benchmark *turn pair* is one run — the user turns are the run's input, the scripted model answers
with the recorded assistant turns (a session opening with assistant turns gets a run with empty
input; user turns left without an answer get an empty answer). This happens twice:

* ``off`` — plain SDK, no hooks: the model sees the whole session history every call;
* ``on`` — :class:`~tiamat_hooks.hooks.TiamatHooks` with ``context_budget`` (input compaction),
  background compaction entries, recall and facts, on a fresh in-memory SQLite store.

Defaults (CLI and :func:`run_compaction_bench`): ``context_budget`` 1,536, recall ``token_budget``
1,280 inside it, ``compact_after_tokens`` 512. The split: whatever recall does not take goes to
the verbatim history (the last turns, then summaries). Questions about a long past are answered
from recall, not from the last few turns, so recall gets most of the budget; the history keeps
the request and as many of the newest turns as fit (about 256 tokens). Measured on LoCoMo
(3 conversations × 20 questions): recall 1,024 → 1,280 raises evidence visible from 0.854 to
0.882 with the token ratio at 0.147 either way (recall fills the same budget the history would).

After each run the hooks are flushed (background compaction lands between user turns, as it
would in a live conversation). Then every question (up to ``max_questions`` per conversation,
spread evenly over the conversation's question list: LoCoMo lists its questions by category, so
the first 20 would be nearly all temporal and multi-hop ones and no single-hop or adversarial
one) is asked as a final run on top of the replayed session; its two items are popped from the SDK
session afterwards and the question run persists nothing, so questions do not see each other.

Measured:

* **tokens per model call** — :func:`~tiamat_hooks.compaction.count_item_tokens` summed over
  the input the model received (instructions excluded: there are none), for the replay calls and
  for the question calls, mean and p95 per mode, and the ratio of the means on/off.
* **evidence visible** — for each question, the share of its evidence turns the model can see in
  the question call's input: verbatim as a history item, or in the recall block (the turn's text
  present, or sentences covering at least half of its characters, on lines quoting a turn — a
  summary line never counts). Summary items never count.

Speakers: when the file names them (LoCoMo), the agent is named after the assistant speaker and
the hooks get ``user_name=`` the user speaker, as an application that knows who it talks to
would; the hooks then store each message with its speaker (``meta["speaker"]``), which recall
uses. Without names (LongMemEval) turns are stored as ``user``/``assistant``.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..compaction import count_item_tokens
from ..hooks import TiamatHooks
from ..items import item_text, to_jsonable
from ..stores import open_store
from ..tokens import TokenCounter
from .dataset import BenchConversation, BenchDataset
from .recall import parse_time, turn_text

__all__ = [
    "CompactionBenchReport",
    "ModeResult",
    "pick_questions",
    "replay_runs",
    "run_compaction_bench",
    "visible_share",
]

SCORING_ENCODING = "cl100k_base"
_FRAME = "<memory>\n"
_WS = re.compile(r"\s+")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Run:
    """One replayed run: the user turns sent, the assistant turns the model answers with."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_ids: tuple[str, ...]
    at: datetime | None = None
    """When the run took place: its first turn's session start plus one second per turn."""


def replay_runs(conv: BenchConversation) -> list[Run]:
    """Group a conversation's turns (all sessions, in order) into runs of user → assistant."""
    runs: list[Run] = []
    inputs: list[str] = []
    outputs: list[str] = []
    ids: list[str] = []
    at: datetime | None = None
    for session in conv.sessions:
        started = parse_time(session.started_at)
        for i, t in enumerate(session.turns):
            text = turn_text(t.text, t.image_caption)
            if t.role == "user":
                if outputs:
                    runs.append(Run(tuple(inputs), tuple(outputs), tuple(ids), at))
                    inputs, outputs, ids, at = [], [], [], None
                inputs.append(text)
            else:
                outputs.append(text)
                ids.append(t.id)
            if at is None:
                at = started + timedelta(seconds=i)
    if inputs or outputs:
        if not outputs:
            outputs, ids = [""], [f"{conv.id}-end"]
        runs.append(Run(tuple(inputs), tuple(outputs), tuple(ids), at))
    return runs


def pick_questions(questions: Sequence[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` of ``questions``, evenly spaced over the list, in order (all: ``None``)."""
    n = len(questions)
    if limit is None or limit >= n:
        return list(questions)
    return [questions[i * n // limit] for i in range(limit)]


def _fold(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _quoted_turn_lines(block: str) -> str:
    """The recall block's lines that quote a turn (``> speaker: text``), summaries left out."""
    lines = []
    for line in block.splitlines():
        if line.startswith("> ") and not line.startswith("> summary:"):
            lines.append(line[2:])
    return "\n".join(lines)


def visible_share(
    input_items: Sequence[Any], evidence_texts: Sequence[str], recall_header: str
) -> float:
    """Share of ``evidence_texts`` the model can see in ``input_items`` (module docstring)."""
    if not evidence_texts:
        return 0.0
    history: set[str] = set()
    quoted = ""
    for item in input_items:
        text = item_text(to_jsonable(item))
        if text.startswith(_FRAME):
            if text[len(_FRAME) :].startswith(recall_header):
                quoted += "\n" + _quoted_turn_lines(text)
            continue  # a compaction summary: never counts
        history.add(_fold(text))
    seen = 0
    for ev in evidence_texts:
        folded = _fold(ev)
        if folded in history or (folded and folded in quoted):
            seen += 1
            continue
        parts = [_fold(p) for p in _SENTENCES.split(ev) if p.strip()]
        covered = sum(len(p) for p in parts if p in quoted)
        if folded and covered * 2 >= len(folded):
            seen += 1
    return seen / len(evidence_texts)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class ModeResult:
    """Token counts and visibility of one mode (``on`` or ``off``)."""

    mode: str
    replay_tokens: list[int] = field(default_factory=list)
    question_tokens: list[int] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def dist(values: list[int]) -> dict[str, float]:
            return {
                "mean": round(statistics.fmean(values), 1) if values else 0.0,
                "p95": _pct(values, 0.95),
                "max": max(values, default=0),
                "calls": len(values),
            }

        return {
            "replay_tokens": dist(self.replay_tokens),
            "question_tokens": dist(self.question_tokens),
            "evidence_visible": round(statistics.fmean(self.visible), 4) if self.visible else 0.0,
            "seconds": round(self.seconds, 1),
            "stats": self.stats,
        }


@dataclass
class CompactionBenchReport:
    dataset: str
    conversations: int
    conversations_total: int
    questions: int
    questions_total: int
    settings: dict[str, Any]
    on: ModeResult
    off: ModeResult

    @property
    def replay_ratio(self) -> float:
        off = statistics.fmean(self.off.replay_tokens) if self.off.replay_tokens else 0.0
        on = statistics.fmean(self.on.replay_tokens) if self.on.replay_tokens else 0.0
        return on / off if off else 0.0

    @property
    def question_ratio(self) -> float:
        off = statistics.fmean(self.off.question_tokens) if self.off.question_tokens else 0.0
        on = statistics.fmean(self.on.question_tokens) if self.on.question_tokens else 0.0
        return on / off if off else 0.0

    @property
    def limited(self) -> bool:
        return (
            self.conversations < self.conversations_total or self.questions < self.questions_total
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "conversations": self.conversations,
            "conversations_total": self.conversations_total,
            "questions": self.questions,
            "questions_total": self.questions_total,
            "limited": self.limited,
            "settings": self.settings,
            "ratio": {
                "replay_tokens_mean": round(self.replay_ratio, 4),
                "question_tokens_mean": round(self.question_ratio, 4),
            },
            "on": self.on.summary(),
            "off": self.off.summary(),
        }


async def _replay(
    conv: BenchConversation,
    mode: str,
    result: ModeResult,
    *,
    counter: TokenCounter,
    max_questions: int | None,
    hooks_options: dict[str, Any],
    progress: Callable[[int], None] | None,
) -> int:
    from agents import Agent, RunConfig, Runner, SQLiteSession
    from agents.testing import ScriptedModel, assistant_message

    started = time.perf_counter()
    config = RunConfig(tracing_disabled=True)
    session = SQLiteSession(f"bench-{conv.id}")
    store = open_store("sqlite://:memory:") if mode == "on" else None
    user = f"bench-{conv.id}"
    # Who speaks, as an application would say it: the agent is named after the conversation's
    # assistant speaker and the hooks are told the user's name (both None-safe: LongMemEval
    # has no speaker names, so its turns are stored as user/assistant).
    speakers = conv.speakers or {}
    agent_name = speakers.get("assistant") or "assistant"
    # The conversation happened over weeks or months: the hooks' clock follows the recorded
    # times (each run at its session's start, each question at its ``asked_at``), so stored
    # turns carry their real dates and recall resolves "last week" as the user meant it.
    first = parse_time(conv.sessions[0].started_at) if conv.sessions else None
    now = [first or datetime.now(timezone.utc)]
    hooks_options = {"user_name": speakers.get("user"), "clock": lambda: now[0], **hooks_options}
    hooks = (
        TiamatHooks(store, user_id=user, session_id=session.session_id, **hooks_options)
        if store is not None
        else None
    )
    texts = {t.id: turn_text(t.text, t.image_caption) for s in conv.sessions for t in s.turns}
    asked = 0
    try:
        for n, run in enumerate(replay_runs(conv)):
            if run.at is not None:
                now[0] = max(now[0], run.at)
            model = ScriptedModel(
                [
                    [
                        assistant_message(t, item_id=f"{i}-{n}")
                        for t, i in zip(run.outputs, run.output_ids, strict=True)
                    ]
                ]
            )
            agent = Agent(name=agent_name, model=model)
            items = [{"role": "user", "content": t} for t in run.inputs]
            await Runner.run(agent, items, session=session, hooks=hooks, run_config=config)  # type: ignore[arg-type]
            if hooks is not None:
                await hooks.flush()
            for call in model.calls:
                result.replay_tokens.append(sum(count_item_tokens(i, counter) for i in call.input))
            if progress is not None:
                progress(1)
        # Questions read the replayed session and store nothing: each sees the same state.
        ask = (
            TiamatHooks(
                store,
                user_id=user,
                session_id=session.session_id,
                **{**hooks_options, "persist": False, "compact_after_tokens": None},
            )
            if store is not None
            else None
        )
        questions = pick_questions(conv.questions, max_questions)
        last = now[0]
        for q in questions:
            now[0] = max(last, parse_time(q.asked_at))
            model = ScriptedModel([[assistant_message(q.answer, item_id=f"answer-{q.id}")]])
            agent = Agent(name=agent_name, model=model)
            await Runner.run(agent, q.question, session=session, hooks=ask, run_config=config)
            if ask is not None:
                await ask.flush()
            call = model.calls[0]
            result.question_tokens.append(sum(count_item_tokens(i, counter) for i in call.input))
            header = ask.recall_config.header if ask is not None else ""
            result.visible.append(
                visible_share(call.input, [texts[e] for e in q.evidence if e in texts], header)
            )
            await session.pop_item()
            await session.pop_item()
            asked += 1
            if progress is not None:
                progress(1)
        if hooks is not None:
            for name in ("compactions", "summaries_written", "input_compactions", "over_budget"):
                result.stats[name] = result.stats.get(name, 0) + getattr(hooks.stats, name)
            for op, k in hooks.stats.failures.items():
                key = f"failures_{op}"
                result.stats[key] = result.stats.get(key, 0) + k
    finally:
        session.close()
        if hooks is not None:
            await hooks.close()
        if store is not None:
            await store.close()
    result.seconds += time.perf_counter() - started
    return asked


async def run_compaction_bench(
    data: BenchDataset,
    *,
    limit_conversations: int | None = None,
    max_questions: int | None = None,
    context_budget: int = 1536,
    token_budget: int = 1280,
    compact_after_tokens: int = 512,
    progress: Callable[[int], None] | None = None,
) -> CompactionBenchReport:
    """Run the benchmark (see the module docstring). ``progress`` gets 1 per run and question."""
    counter = TokenCounter(SCORING_ENCODING)
    convs = (
        data.conversations
        if limit_conversations is None
        else data.conversations[:limit_conversations]
    )
    options: dict[str, Any] = {
        "context_budget": context_budget,
        "token_budget": token_budget,
        "compact_after_tokens": compact_after_tokens,
        "encoding": SCORING_ENCODING,
    }
    on, off = ModeResult("on"), ModeResult("off")
    asked = 0
    for conv in convs:
        for mode, result in (("off", off), ("on", on)):
            n = await _replay(
                conv,
                mode,
                result,
                counter=counter,
                max_questions=max_questions,
                hooks_options=options,
                progress=progress,
            )
        asked += n
    return CompactionBenchReport(
        dataset=data.name,
        conversations=len(convs),
        conversations_total=len(data.conversations),
        questions=asked,
        questions_total=sum(len(c.questions) for c in data.conversations),
        settings={**{k: v for k, v in options.items()}, "max_questions": max_questions},
        on=on,
        off=off,
    )


def total_steps(
    data: BenchDataset, limit_conversations: int | None, max_questions: int | None
) -> int:
    """How many ``progress`` steps :func:`run_compaction_bench` will report."""
    convs = (
        data.conversations
        if limit_conversations is None
        else data.conversations[:limit_conversations]
    )
    steps = 0
    for conv in convs:
        qs = (
            len(conv.questions)
            if max_questions is None
            else min(max_questions, len(conv.questions))
        )
        steps += 2 * (len(replay_runs(conv)) + qs)
    return steps
