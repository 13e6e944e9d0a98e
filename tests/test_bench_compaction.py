"""The compaction benchmark on a tiny synthetic dataset, through the CLI and the function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import tiamat_hooks.bench.compaction as bench_compaction
from tiamat_hooks.bench.compaction import (
    pick_questions,
    replay_runs,
    run_compaction_bench,
    visible_share,
)
from tiamat_hooks.bench.dataset import BenchDataset
from tiamat_hooks.cli import app

TOPICS = ["sailing", "pottery", "chess", "violin", "gardening", "astronomy", "baking", "karate"]


def tiny_dataset() -> dict[str, Any]:
    """Two conversations; each session talks about one hobby, questions ask about the first."""
    conversations = []
    for c in range(2):
        sessions = []
        for s, topic in enumerate(TOPICS):
            turns = []
            for k in range(6):
                role = "user" if k % 2 == 0 else "assistant"
                text = (
                    f"In session {s} we talk about {topic}: detail {k} says the {topic} club "
                    f"meets on day {s * 10 + k} at place-{c}-{s}-{k} with {k + 3} members."
                )
                turns.append({"id": f"c{c}-s{s}-t{k}", "role": role, "text": text})
            sessions.append(
                {"id": f"c{c}-s{s}", "started_at": f"2024-01-{s + 1:02d}T10:00:00", "turns": turns}
            )
        questions = [
            {
                "id": f"c{c}-q{q}",
                "question": f"On which day does the {TOPICS[q]} club meet at place-{c}-{q}-2?",
                "answer": f"day {q * 10 + 2}",
                "asked_at": "2024-02-01T10:00:00",
                "category": "single-hop",
                "evidence": [f"c{c}-s{q}-t2"],
            }
            for q in range(3)
        ]
        conversations.append({"id": f"c{c}", "sessions": sessions, "questions": questions})
    return {"format": "memory-recall-bench/1", "name": "tiny", "conversations": conversations}


def test_replay_runs_pair_user_and_assistant_turns() -> None:
    data = BenchDataset.model_validate(tiny_dataset())
    runs = replay_runs(data.conversations[0])
    assert len(runs) == len(TOPICS) * 3
    assert all(len(r.inputs) == 1 and len(r.outputs) == 1 for r in runs)


def test_visible_share_counts_history_and_quoted_turns_not_summaries() -> None:
    header = "Memory: quoted"
    items = [
        {"role": "user", "content": "<memory>\nSummary of earlier turns\n> user: Alpha beta.\n"},
        {"role": "user", "content": f"<memory>\n{header}\n[2024-01-01]\n> user: Gamma delta."},
        {"role": "user", "content": "Epsilon zeta."},
    ]
    assert visible_share(items, ["Epsilon zeta."], header) == 1.0
    assert visible_share(items, ["Gamma delta."], header) == 1.0
    assert visible_share(items, ["Alpha beta."], header) == 0.0
    assert visible_share(items, ["Gamma delta. Something else entirely long."], header) == 0.0


async def test_bench_on_vs_off() -> None:
    data = BenchDataset.model_validate(tiny_dataset())
    report = await run_compaction_bench(
        data, context_budget=400, token_budget=200, compact_after_tokens=150
    )
    out = report.as_json()
    on, off = out["on"], out["off"]
    assert out["questions"] == 6 and not out["limited"]
    assert on["replay_tokens"]["calls"] == off["replay_tokens"]["calls"] == 2 * len(TOPICS) * 3
    assert on["replay_tokens"]["max"] <= 400 and on["question_tokens"]["max"] <= 400
    assert off["replay_tokens"]["max"] > 400
    assert 0 < out["ratio"]["replay_tokens_mean"] < 1
    assert off["evidence_visible"] == 1.0
    assert 0.0 <= on["evidence_visible"] <= 1.0
    assert on["stats"]["summaries_written"] > 0 and on["stats"]["over_budget"] == 0


def test_cli_bench_compaction_writes_json(tmp_path: Path) -> None:
    src = tmp_path / "tiny.json"
    src.write_text(json.dumps(tiny_dataset()))
    out = tmp_path / "out" / "compaction.json"
    result = CliRunner().invoke(
        app,
        [
            "bench", "compaction", str(src), "--json", str(out),
            "--limit-conversations", "1", "--max-questions", "2",
            "--context-budget", "400", "--token-budget", "200", "--compact-after", "150",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "evidence visible" in result.output
    assert "limited" in result.output
    data = json.loads(out.read_text())
    assert data["conversations"] == 1 and data["conversations_total"] == 2
    assert data["questions"] == 2 and data["limited"] is True
    assert set(data["on"]) >= {"replay_tokens", "question_tokens", "evidence_visible", "stats"}
    assert data["settings"]["context_budget"] == 400


def test_pick_questions_spreads_over_the_list() -> None:
    qs = list(range(10))
    assert pick_questions(qs, None) == qs
    assert pick_questions(qs, 20) == qs
    assert pick_questions(qs, 5) == [0, 2, 4, 6, 8]
    assert pick_questions(qs, 3) == [0, 3, 6]
    assert pick_questions(qs, 1) == [0]


async def test_bench_names_the_speakers(monkeypatch: Any) -> None:
    """With speaker names in the file, turns are stored (and recalled) under those names."""
    raw = tiny_dataset()
    for conv in raw["conversations"]:
        conv["speakers"] = {"user": "Ann", "assistant": "Bo"}
    data = BenchDataset.model_validate(raw)
    seen: list[str] = []
    real = bench_compaction.visible_share

    def spy(items: Any, evidence: Any, header: str) -> float:
        seen.extend(str(getattr(i, "get", lambda k: "")("content")) for i in items)
        return real(items, evidence, header)

    monkeypatch.setattr(bench_compaction, "visible_share", spy)
    await run_compaction_bench(
        data, limit_conversations=1, context_budget=400, token_budget=200, compact_after_tokens=150
    )
    block = "\n".join(t for t in seen if t.startswith("<memory>\nMemory:"))
    assert block and ("> Ann: " in block or "> Bo: " in block)
    assert "> user: " not in block and "> assistant: " not in block
