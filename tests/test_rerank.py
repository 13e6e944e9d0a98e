"""Reranking recall's best candidates: the fusion in ``Recaller``, failure handling, the hooks'
``reranker=`` option, the bench's one-scoring-per-question, and the real cross-encoder (extra
``rerank``: skipped locally without it, a failure in CI, which installs it through ``.[dev]``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call

from tests.conftest import new_id, require_extra
from tiamat_hooks.bench.dataset import (
    BenchConversation,
    BenchDataset,
    BenchQuestion,
    BenchSession,
    BenchTurn,
)
from tiamat_hooks.bench.recall import run_recall_bench
from tiamat_hooks.errors import ConfigError
from tiamat_hooks.hooks import TiamatHooks
from tiamat_hooks.items import item_text, to_jsonable
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.recall import RecallConfig, Recaller
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.tokens import TokenCounter

T0 = datetime(2024, 2, 1, 9, 0, tzinfo=timezone.utc)
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
COUNTER = TokenCounter("cl100k_base")

# Every turn names the garden, so all match "garden"; only one says what grows there, in other
# words than the question's.
TURNS = [
    "The garden needs a new fence before the spring, the old garden fence fell over.",
    "We walked past the community garden garden garden on Sunday.",
    "In the garden I planted tomatoes and basil last weekend.",
    "My neighbour's garden has a pond with goldfish in it, garden life.",
    "The garden centre was closed, so no garden shopping for us.",
]
QUESTION = "Which vegetables are growing in my garden?"


class Keyword:
    """A reranker that scores a text by whether it holds a word; counts what it is asked."""

    model_id = "keyword"

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls.append((query, list(texts)))
        return [1.0 if self.word in t else 0.0 for t in texts]


class Broken:
    model_id = "broken"

    def __init__(self, result: Any = None) -> None:
        self.result = result

    def score(self, query: str, texts: Sequence[str]) -> Any:
        if self.result is None:
            raise RuntimeError("model file is gone")
        return self.result


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SQLiteMemoryStore(tmp_path / "m.db")
    yield s
    await s.close()


async def seed(store: SQLiteMemoryStore, user: str) -> None:
    # One session per turn: no neighbours, so each candidate stands on its own score.
    await store.add(
        [
            make_record(
                user_id=user,
                session_id=f"s{i}",
                role="user",
                text=text,
                created_at=T0 + timedelta(days=i),
            )
            for i, text in enumerate(TURNS)
        ]
    )


def first_input(model: ScriptedModel) -> str:
    """The text of everything the model received on its first call."""
    return " ".join(item_text(to_jsonable(item)) for item in model.calls[0].input)


async def test_reranker_order_decides_what_fits(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)
    # A budget with room for about one excerpt: what ranks first is what the model sees.
    one = RecallConfig(budget=0)
    plain = Recaller(store, counter=COUNTER, config=one)
    frame = plain._frame_tokens(NOW, ())
    # Weight 4: the reranker's first choice, fifth in recall's order, outranks recall's first
    # (1/14 + 4/10 > 1/10 + 4/11); at weight 1 reciprocal-rank fusion would keep recall's first.
    config = RecallConfig(budget=frame + 24, rerank_weight=4.0)
    lexical = await Recaller(store, counter=COUNTER, config=config).recall(
        Scope(user), QUESTION, now=NOW
    )
    assert "tomatoes" not in lexical.block  # the word-count ranking prefers "garden garden"
    reranker = Keyword("tomatoes")
    reranked = await Recaller(store, counter=COUNTER, config=config, reranker=reranker).recall(
        Scope(user), QUESTION, now=NOW
    )
    assert "tomatoes" in reranked.block
    assert reranked.tokens <= config.budget
    ((query, texts),) = reranker.calls
    assert query == QUESTION
    assert len(texts) == len(TURNS) and all(t.startswith("user: ") for t in texts)


async def test_only_the_first_candidates_are_reranked(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)
    plain = await Recaller(store, counter=COUNTER).recall(Scope(user), QUESTION, now=NOW)
    own = [r.text for r in plain.ranked]
    # The reranker favours recall's last candidate, but sees only the first two.
    favourite = next(w for w in own[-1].split() if not any(w in t for t in own[:-1]))
    reranker = Keyword(favourite)
    config = RecallConfig(rerank_candidates=2)
    result = await Recaller(store, counter=COUNTER, config=config, reranker=reranker).recall(
        Scope(user), QUESTION, now=NOW
    )
    ((_, texts),) = reranker.calls
    assert [t.removeprefix("user: ") for t in texts] == own[:2]
    ranked = [r.text for r in result.ranked]
    assert ranked[2:] == own[2:]  # the rest keep their place, the favourite did not rise
    assert set(ranked[:2]) == set(own[:2])


async def test_an_agreeing_reranker_changes_nothing(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)

    class Agreeing(Keyword):
        def score(self, query: str, texts: Sequence[str]) -> list[float]:
            super().score(query, texts)
            return [float(-i) for i in range(len(texts))]  # recall's own order

    plain = await Recaller(store, counter=COUNTER).recall(Scope(user), QUESTION, now=NOW)
    reranker = Agreeing("")
    agreed = await Recaller(store, counter=COUNTER, reranker=reranker).recall(
        Scope(user), QUESTION, now=NOW
    )
    assert reranker.calls
    assert agreed.block == plain.block
    assert [s.score for s in agreed.snippets] == [s.score for s in plain.snippets]


async def test_a_slow_reranker_is_not_waited_for(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)
    release = threading.Event()

    class Slow(Keyword):
        def score(self, query: str, texts: Sequence[str]) -> list[float]:
            release.wait(10)  # held until the recall has given up on it
            return super().score(query, texts)

    config = RecallConfig(rerank_timeout=0.05, rerank_weight=4.0)
    recaller = Recaller(store, counter=COUNTER, config=config, reranker=Slow("tomatoes"))
    try:
        result = await recaller.recall(Scope(user), QUESTION, now=NOW)
    finally:
        release.set()
    plain = await Recaller(store, counter=COUNTER).recall(Scope(user), QUESTION, now=NOW)
    assert result.block == plain.block
    assert recaller.rerank_failures == 1


async def test_weight_zero_leaves_recall_as_it_was(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)
    config = RecallConfig(rerank_weight=0)
    reranker = Keyword("tomatoes")
    with_it = await Recaller(store, counter=COUNTER, config=config, reranker=reranker).recall(
        Scope(user), QUESTION, now=NOW
    )
    without = await Recaller(store, counter=COUNTER, config=config).recall(
        Scope(user), QUESTION, now=NOW
    )
    assert reranker.calls == []
    assert with_it.block == without.block


@pytest.mark.parametrize(
    "broken",
    [Broken(), Broken([1.0]), Broken([math.nan] * len(TURNS))],
    ids=["raises", "wrong-length", "not-finite"],
)
async def test_a_failing_reranker_keeps_recall_order(
    store: SQLiteMemoryStore, broken: Broken, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_id()
    await seed(store, user)
    recaller = Recaller(store, counter=COUNTER, reranker=broken)
    with caplog.at_level(logging.WARNING, logger="tiamat_hooks"):
        result = await recaller.recall(Scope(user), QUESTION, now=NOW)
    plain = await Recaller(store, counter=COUNTER).recall(Scope(user), QUESTION, now=NOW)
    assert result.block == plain.block and result.block
    assert recaller.rerank_failures == 1
    assert "reranker failed" in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rerank_candidates", -1),
        ("rerank_candidates", 2.5),
        ("rerank_candidates", 501),
        ("rerank_weight", -0.1),
        ("rerank_timeout", 0),
        ("rerank_timeout", math.inf),
        ("rerank_timeout", True),
    ],
)
def test_rerank_settings_are_checked(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        RecallConfig(**{field: value})


async def test_reranker_must_look_like_one(store: SQLiteMemoryStore) -> None:
    with pytest.raises(ConfigError, match="reranker"):
        Recaller(store, reranker=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reranker"):
        TiamatHooks(store, user_id="u", reranker=lambda q, t: [])  # type: ignore[arg-type]


async def test_hooks_rerank_once_per_run(store: SQLiteMemoryStore) -> None:
    user = new_id()
    await seed(store, user)
    reranker = Keyword("tomatoes")
    config = RecallConfig(budget=90, rerank_weight=4.0)
    hooks = TiamatHooks(
        store, user_id=user, session_id="now", reranker=reranker, recall_config=config
    )

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}."

    # Two model calls: a tool call, then the answer. The block is recalled (and reranked) once.
    model = ScriptedModel(
        [
            [function_call("weather", '{"city": "Lisbon"}', call_id="c1")],
            [assistant_message("Tomatoes and basil.", item_id="m1")],
        ]
    )
    agent = Agent(name="assistant", model=model, tools=[weather])
    await Runner.run(agent, QUESTION, hooks=hooks)
    await hooks.flush()
    assert len(model.calls) == 2
    assert len(reranker.calls) == 1
    assert "tomatoes and basil" in first_input(model)


@pytest.mark.parametrize("strict", [False, True])
async def test_hooks_count_a_failing_reranker(store: SQLiteMemoryStore, strict: bool) -> None:
    user = new_id()
    await seed(store, user)
    hooks = TiamatHooks(store, user_id=user, session_id="now", reranker=Broken(), strict=strict)
    model = ScriptedModel([[assistant_message("Tomatoes.", item_id="m1")]])
    agent = Agent(name="assistant", model=model)
    if strict:
        with pytest.raises(RuntimeError, match="model file is gone"):
            await Runner.run(agent, QUESTION, hooks=hooks)
    else:
        await Runner.run(agent, QUESTION, hooks=hooks)
        assert "<memory>" in first_input(model)  # memory still arrived, in recall's own order
    await hooks.flush()
    assert hooks.stats.failures == {"rerank": 1}
    assert hooks.stats.last_error_type == "RuntimeError"


async def test_bench_scores_each_question_once() -> None:
    turns = [BenchTurn(id=f"t{i}", role="user", speaker=None, text=t) for i, t in enumerate(TURNS)]
    data = BenchDataset(
        format="memory-recall-bench/1",
        name="tiny",
        conversations=[
            BenchConversation(
                id="c1",
                speakers=None,
                sessions=[BenchSession(id="s1", started_at=T0.isoformat(), turns=turns)],
                questions=[
                    BenchQuestion(
                        id=f"q{i}",
                        question=q,
                        answer="",
                        asked_at=NOW.isoformat(),
                        category="single-hop",
                        evidence=["t2"],
                    )
                    for i, q in enumerate([QUESTION, "Where is the pond with goldfish?"])
                ],
            )
        ],
    )
    reranker = Keyword("tomatoes")
    report = await run_recall_bench(data, budgets=(256, 512, 1024), reranker=reranker)
    warm_up, *scored = reranker.calls  # the model loads before the timed recalls
    assert warm_up[0] == "warm up"
    assert len(scored) == 2  # two questions, three budgets each
    assert report.rerank is not None
    assert report.rerank["rerankings"] == 2 and report.rerank["failures"] == 0
    assert report.as_json()["rerank"]["model"] == "keyword"


# -- the real model --------------------------------------------------------------------------------


def _need_extra() -> None:
    from tiamat_hooks.rerank import _missing_extra

    require_extra("rerank", _missing_extra())


def test_cross_encoder_prefers_the_answer() -> None:
    _need_extra()
    from tiamat_hooks.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(threads=1)
    texts = [TURNS[0], TURNS[2], TURNS[3], "Parking near the office costs eight euros a day."]
    scores = reranker.score(QUESTION, texts)
    assert len(scores) == len(texts) and all(math.isfinite(s) for s in scores)
    assert max(range(len(texts)), key=lambda i: scores[i]) == 1
    assert min(range(len(texts)), key=lambda i: scores[i]) == 3
    # Batching and padding move a pair's score only a little: the int8 model quantises its
    # activations per batch.
    alone = reranker.score(QUESTION, [texts[1]])
    assert alone[0] == pytest.approx(scores[1], abs=0.2)
    assert reranker.score(QUESTION, []) == []


def test_cross_encoder_options_are_checked() -> None:
    _need_extra()
    from tiamat_hooks.rerank import CrossEncoderReranker

    for kwargs in ({"max_tokens": 8}, {"max_tokens": 1024}, {"threads": 0}, {"batch_tokens": 1}):
        with pytest.raises(ConfigError):
            CrossEncoderReranker(**kwargs)


def test_bench_recall_rerank_option(tmp_path: Path) -> None:
    _need_extra()
    import json

    from typer.testing import CliRunner

    from tests.test_cli import tiny_dataset
    from tiamat_hooks.cli import app

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    out = tmp_path / "out.json"
    args = ["bench", "recall", str(path), "--budget", "256", "--rerank", "--json", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["rerank"]["model"].startswith("ms-marco-MiniLM-L-12-v2")
    assert report["rerank"]["rerankings"] >= 1 and report["rerank"]["failures"] == 0
    assert "rerank (ms-marco" in res.output


def test_search_rerank_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tests.test_cli import _seed
    from tiamat_hooks import cli

    db = tmp_path / "m.db"
    _seed(str(db))
    runner = CliRunner()
    url = f"sqlite:///{db}"
    assert (
        runner.invoke(cli.app, ["import", str(db.with_suffix(".jsonl")), "--store", url]).exit_code
        == 0
    )
    reranker = Keyword("genmaicha")
    monkeypatch.setattr(cli, "_reranker", lambda: reranker)
    args = ["search", "which tea do I like", "--user", "ann", "--store", url]
    res = runner.invoke(cli.app, [*args, "--rerank"])
    assert res.exit_code == 0, res.output
    assert "genmaicha" in res.output
    assert len(reranker.calls) == 1
    assert runner.invoke(cli.app, args).exit_code == 0
    assert len(reranker.calls) == 1  # without --rerank, no reranker


def test_cross_encoder_refuses_an_unexpected_model_file(monkeypatch: pytest.MonkeyPatch) -> None:
    _need_extra()
    from tiamat_hooks import rerank

    monkeypatch.setattr(rerank, "_MODEL_SHA256", "0" * 64)
    reranker = rerank.CrossEncoderReranker(threads=1)
    with pytest.raises(ConfigError, match="not the expected") as first:
        reranker.score(QUESTION, TURNS)
    # Kept: the next call raises the same error without reading 34 MB again.
    monkeypatch.setattr(rerank, "checked_bytes", lambda *a: pytest.fail("read the files again"))
    with pytest.raises(ConfigError) as second:
        reranker.score(QUESTION, TURNS)
    assert second.value is first.value
