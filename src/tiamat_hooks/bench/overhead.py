"""Overhead benchmark: what :class:`~tiamat_hooks.hooks.TiamatHooks` add to ``Runner.run``.

A store is filled to N turns with the latency benchmark's synthetic conversations
(:func:`~tiamat_hooks.bench.latency.synthetic_turns`), then one realistic agent conversation —
a user message, a model call that calls a function tool, the tool, a second model call that
answers — runs many times through ``Runner.run`` with an offline ``ScriptedModel``: once with
``hooks=TiamatHooks(...)`` and once without, interleaved in one process (the order alternates
so neither side always runs on a warmer cache). Each run is a new session of one of the filled
users, so recall searches a user with a realistic history.

What is measured:

* **Overhead per model call**: wall time spent inside the hooks' callbacks (and, in ``filter``
  mode, inside ``call_model_input_filter``) since the previous model call returned — query
  building, search, ranking, packing, rendering, token counting and the hooks' own
  bookkeeping. The first call of a run carries recall; later calls reuse it.
* **Wall-time ratio**: total ``Runner.run`` time with the hooks / without. The hooks write turns
  in background tasks; ``Runner.run`` returns without waiting for them, so the ratio is
  reported twice: ``ratio`` (the run as the caller sees it) and ``ratio_with_flush`` (each run
  followed by ``await hooks.flush()``: persistence of the run's turns included).
* **Persist throughput**: turns/s of the batched ``store.add`` calls that filled the store, over
  the whole fill and over its last tenth (the rate at about N stored turns).

``ScriptedModel`` answers in microseconds, so the ratio compares the hooks with the SDK's own
per-run work only; with a real model (hundreds of milliseconds per call) the same absolute
overhead is a far smaller share. ``model_latency_ms`` adds a simulated model latency per call
(an ``asyncio.sleep`` inside the model) to both sides to show that.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..stores import analyze, open_store
from ..stores.base import MemoryStore
from .latency import _quantiles, _vocabulary, fill_store, synthetic_turns

__all__ = ["OverheadReport", "measure_overhead", "run_overhead_bench"]

Mode = Literal["hooks", "filter"]


@dataclass
class OverheadReport:
    """Results of one overhead run; see the module docstring for what each number means."""

    store: str
    turns: int
    users: int
    runs: int
    mode: str
    model_calls_per_run: int
    model_latency_ms: float
    persist_turns_per_s: float
    persist_turns_per_s_last: float
    filter_ms: dict[str, float]
    """Overhead before each model call (all calls)."""
    first_call_ms: dict[str, float]
    """Overhead before the first model call of a run (recall happens here)."""
    later_call_ms: dict[str, float]
    """Overhead before the later model calls of a run (recall reused)."""
    hooks_ms_per_run: dict[str, float]
    """All time inside the hooks' callbacks (and filter) during one run."""
    run_ms: dict[str, float]
    """``Runner.run`` wall time without hooks."""
    run_hooks_ms: dict[str, float]
    """``Runner.run`` wall time with hooks."""
    flush_ms: dict[str, float]
    """``await hooks.flush()`` right after each run with hooks."""
    plain_total_s: float
    hooks_total_s: float
    flush_total_s: float
    stored_before: int = 0
    """Records the store already held before the fill (a reused scratch file, a shared
    database): the store the runs searched held ``stored_before + turns`` records."""

    @property
    def ratio(self) -> float:
        """Wall time with hooks / without (``Runner.run`` only)."""
        return self.hooks_total_s / self.plain_total_s if self.plain_total_s else 0.0

    @property
    def ratio_with_flush(self) -> float:
        """Wall time with hooks, each run followed by ``flush()``, / without."""
        total = self.hooks_total_s + self.flush_total_s
        return total / self.plain_total_s if self.plain_total_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "turns": self.turns,
            "stored_before": self.stored_before,
            "users": self.users,
            "runs": self.runs,
            "mode": self.mode,
            "model_calls_per_run": self.model_calls_per_run,
            "model_latency_ms": self.model_latency_ms,
            "persist_turns_per_s": round(self.persist_turns_per_s, 1),
            "persist_turns_per_s_last": round(self.persist_turns_per_s_last, 1),
            "filter_ms": self.filter_ms,
            "first_call_ms": self.first_call_ms,
            "later_call_ms": self.later_call_ms,
            "hooks_ms_per_run": self.hooks_ms_per_run,
            "run_ms": self.run_ms,
            "run_hooks_ms": self.run_hooks_ms,
            "flush_ms": self.flush_ms,
            "plain_total_s": round(self.plain_total_s, 6),
            "hooks_total_s": round(self.hooks_total_s, 6),
            "flush_total_s": round(self.flush_total_s, 6),
            "ratio": round(self.ratio, 4),
            "ratio_with_flush": round(self.ratio_with_flush, 4),
        }


@dataclass(frozen=True)
class _Script:
    """One planned run: who, what is said, what the tool is asked, what the model answers."""

    user: str
    session: str
    message: str
    topic: str
    answer: str


async def run_overhead_bench(
    store_url: str,
    *,
    turns: int = 100_000,
    users: int = 100,
    runs: int = 300,
    warmup: int = 20,
    mode: Mode = "hooks",
    model_latency_ms: float = 0.0,
    batch: int = 1_000,
    seed: int = 7,
    progress: Callable[[str, int], None] | None = None,
) -> OverheadReport:
    """Fill ``store_url`` with ``turns`` synthetic turns of ``users`` fresh users, then measure.

    ``progress(phase, n)`` is called with ``("fill", turns written)`` and ``("runs", 1)`` per
    measured pair of runs. Users get random ids, so a store that already holds data (a shared
    Postgres database) can be used; only this run's turns count toward ``turns``, and what was
    there before is reported as ``stored_before`` (searches then run over the bigger store). It
    is counted with ``store.stats()``, which on a TIAMAT API store reads every record.
    """
    tag = uuid.uuid4().hex[:8]
    user_ids = [f"ovh-{tag}-{i}" for i in range(users)]
    store = open_store(store_url)
    try:
        stored_before = (await store.stats()).records
        fill = None if progress is None else (lambda n: progress("fill", n))
        last = turns // 10
        stream = synthetic_turns(seed, user_ids)
        first_s = await fill_store(store, stream, turns - last, batch=batch, progress=fill)
        last_s = await fill_store(store, stream, last, batch=batch, progress=fill)
        # As in ``bench latency``: planner statistics, as autovacuum would gather (not timed).
        await analyze(store)
        report = await measure_overhead(
            store,
            user_ids,
            runs=runs,
            warmup=warmup,
            mode=mode,
            model_latency_ms=model_latency_ms,
            seed=seed,
            progress=None if progress is None else (lambda n: progress("runs", n)),
        )
    finally:
        await store.close()
    report.store = store_url.split("@")[-1]
    report.turns = turns
    report.stored_before = stored_before
    report.persist_turns_per_s = turns / (first_s + last_s) if first_s + last_s else 0.0
    report.persist_turns_per_s_last = last / last_s if last_s else 0.0
    return report


def _plan(rng: random.Random, vocab: list[str], users: list[str], n: int) -> list[_Script]:
    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(lo, hi)))

    out = []
    for i in range(n):
        question = words(3, 8)
        out.append(
            _Script(
                user=rng.choice(users),
                session=f"ovh-run-{uuid.uuid4().hex[:8]}-{i}",
                message=f"What did we say about {question}?",
                topic=question.split()[0],
                answer=f"{words(8, 30).capitalize()}.",
            )
        )
    return out


async def measure_overhead(
    store: MemoryStore,
    user_ids: list[str],
    *,
    runs: int = 300,
    warmup: int = 20,
    mode: Mode = "hooks",
    model_latency_ms: float = 0.0,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
) -> OverheadReport:
    """The measuring half of :func:`run_overhead_bench`, on a store that already holds the
    history of ``user_ids`` (the caller fills and closes it)."""
    from agents import Agent, RunConfig, RunContextWrapper, Runner, function_tool
    from agents.models.interface import Model
    from agents.testing import ScriptedModel, assistant_message, function_call

    from ..hooks import TiamatHooks

    if mode not in ("hooks", "filter"):
        raise ValueError(f"mode must be 'hooks' or 'filter', got {mode!r}")

    class Scoped:
        def __init__(self, script: _Script) -> None:
            self.script = script

    def user_of(ctx: RunContextWrapper[Any]) -> str:
        scoped: Scoped = ctx.context
        return scoped.script.user

    def session_of(ctx: RunContextWrapper[Any]) -> str:
        scoped: Scoped = ctx.context
        return scoped.script.session

    class Timed(TiamatHooks):
        """TiamatHooks that time every callback (and the filter) they handle."""

        pending = 0.0
        calls_this_run: list[float]

        def start_run(self) -> None:
            self.pending = 0.0
            self.calls_this_run = []

        async def input_filter(self, data: Any) -> Any:
            t = time.perf_counter()
            try:
                return await super().input_filter(data)
            finally:
                self.pending += time.perf_counter() - t

        async def on_agent_start(self, context: Any, agent: Any) -> None:
            t = time.perf_counter()
            await super().on_agent_start(context, agent)
            self.pending += time.perf_counter() - t

        async def on_llm_start(self, context: Any, agent: Any, sp: Any, items: Any) -> None:
            t = time.perf_counter()
            await super().on_llm_start(context, agent, sp, items)
            self.calls_this_run.append(self.pending + time.perf_counter() - t)
            self.pending = 0.0

        async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
            t = time.perf_counter()
            await super().on_llm_end(context, agent, response)
            self.pending += time.perf_counter() - t

        async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
            t = time.perf_counter()
            await super().on_tool_start(context, agent, tool)
            self.pending += time.perf_counter() - t

        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
            t = time.perf_counter()
            await super().on_tool_end(context, agent, tool, result)
            self.pending += time.perf_counter() - t

        async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
            t = time.perf_counter()
            await super().on_agent_end(context, agent, output)
            self.pending += time.perf_counter() - t

    @function_tool
    def lookup(topic: str) -> str:
        """Look up notes on a topic."""
        return f"Notes on {topic}: nothing new since last week."

    class Slow(ScriptedModel):
        """ScriptedModel plus a fixed latency per call (the same on both sides)."""

        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(model_latency_ms / 1000)
            return await super().get_response(*args, **kwargs)

    model_cls: type[ScriptedModel] = Slow if model_latency_ms > 0 else ScriptedModel

    def agent_for(script: _Script, i: int) -> Agent[Any]:
        model: Model = model_cls(
            [
                [function_call("lookup", f'{{"topic": "{script.topic}"}}', call_id=f"call-{i}")],
                [assistant_message(script.answer, item_id=f"msg-{i}")],
            ]
        )
        return Agent(name="overhead-bench", instructions="Be brief.", model=model, tools=[lookup])

    hooks = Timed(store, user_id=user_of, session_id=session_of)
    config = RunConfig(tracing_disabled=True)
    hooks_config = hooks.wrap(config) if mode == "filter" else config
    rng = random.Random(seed + 2)
    vocab = _vocabulary(random.Random(seed), 20_000)[:5_000]
    plan = _plan(rng, vocab, user_ids, warmup + runs)

    plain_s: list[float] = []
    hooks_s: list[float] = []
    flush_s: list[float] = []
    first: list[float] = []
    later: list[float] = []
    per_run: list[float] = []
    calls_per_run = 0
    for i, script in enumerate(plan):
        measured = i >= warmup
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_hooks in order:
            agent = agent_for(script, i)
            ctx = Scoped(script)
            if with_hooks:
                hooks.start_run()
                t = time.perf_counter()
                await Runner.run(
                    agent, script.message, hooks=hooks, context=ctx, run_config=hooks_config
                )
                t1 = time.perf_counter()
                await hooks.flush()
                t2 = time.perf_counter()
                if measured:
                    hooks_s.append(t1 - t)
                    flush_s.append(t2 - t1)
                    calls = hooks.calls_this_run
                    calls_per_run = len(calls)
                    first.append(calls[0])
                    later.extend(calls[1:])
                    per_run.append(sum(calls) + hooks.pending)
            else:
                t = time.perf_counter()
                await Runner.run(agent, script.message, context=ctx, run_config=config)
                if measured:
                    plain_s.append(time.perf_counter() - t)
        if measured and progress is not None:
            progress(1)

    def ms(values: list[float]) -> dict[str, float]:
        return _quantiles([v * 1000 for v in values]) if values else {}

    return OverheadReport(
        store=repr(store),
        turns=0,
        users=len(user_ids),
        runs=runs,
        mode=mode,
        model_calls_per_run=calls_per_run,
        model_latency_ms=model_latency_ms,
        persist_turns_per_s=0.0,
        persist_turns_per_s_last=0.0,
        filter_ms=ms(first + later),
        first_call_ms=ms(first),
        later_call_ms=ms(later),
        hooks_ms_per_run=ms(per_run),
        run_ms=ms(plain_s),
        run_hooks_ms=ms(hooks_s),
        flush_ms=ms(flush_s),
        plain_total_s=math.fsum(plain_s),
        hooks_total_s=math.fsum(hooks_s),
        flush_total_s=math.fsum(flush_s),
    )
