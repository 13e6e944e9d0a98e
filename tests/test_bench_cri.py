"""The CRI persona reader: a held-out set built from CRI's own ground truth.

The files here are written by the test in CRI's layout (nothing of CRI's data is copied).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tiamat_hooks.bench.cri import is_cri, load_cri
from tiamat_hooks.bench.dataset import load_dataset
from tiamat_hooks.cli import app
from tiamat_hooks.errors import InvalidInputError

MESSAGES = [
    (1, "user", "I'm Dana. I work as a nurse in Leeds.", "2025-01-01T09:00:00", "s1"),
    (2, "assistant", "Nice to meet you, Dana.", "2025-01-01T09:00:10", "s1"),
    (3, "user", "I eat everything. Burgers are my weakness.", "2025-01-03T10:00:00", "s2"),
    (4, "assistant", "Burgers are hard to beat.", "2025-01-03T10:00:20", "s2"),
    (5, "user", "Big news: I quit the hospital and started teaching.", "2025-02-10T08:00:00", "s3"),
    (6, "assistant", "Congratulations on the new job!", "2025-02-10T08:00:30", "s3"),
    (7, "user", "I went vegetarian this week. No more burgers.", "2025-03-01T19:00:00", "s4"),
    (8, "assistant", "How is it going so far?", "2025-03-01T19:00:05", "s4"),
]
TRUTH: dict[str, Any] = {
    "changes": [
        {
            "fact": "occupation",
            "old_value": "nurse",
            "new_value": "teacher",
            "query_topic": "current occupation",
            "key_messages": [1, 5],
        }
    ],
    "conflicts": [
        {
            "conflict_id": "c-diet",
            "topic": "diet",
            "correct_resolution": "vegetarian since March",
            "introduced_at_messages": [3, 7],
        }
    ],
    "final_profile": {"name": {"value": "Dana"}},
}
META = {"dataset_id": "persona-t", "persona_name": "Dana Smith"}


def _write(folder: Path, truth: dict[str, Any] = TRUTH) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {"message_id": i, "role": r, "content": c, "timestamp": t, "session_id": s, "day": 1}
        )
        for i, r, c, t, s in MESSAGES
    ]
    (folder / "conversations.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "ground_truth.json").write_text(json.dumps(truth))
    (folder / "metadata.json").write_text(json.dumps(META))
    return folder


def _wheel(tmp_path: Path) -> Path:
    folder = _write(tmp_path / "src")
    whl = tmp_path / "cri_benchmark-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("cri/__init__.py", "")
        for f in folder.iterdir():
            zf.write(f, f"cri/datasets/persona-t/{f.name}")
    return whl


def test_folder_becomes_questions_with_cri_evidence(tmp_path: Path) -> None:
    data = load_cri(_write(tmp_path / "p"))
    assert data.name == "cri-persona-t"
    questions = {q.id: (c, q) for c in data.conversations for q in c.questions}
    conv, change = questions["change-1"]
    assert change.question == "What is Dana's current occupation?"
    assert change.answer == "teacher"
    assert change.category == "knowledge-update"
    assert change.evidence == ["1", "5"]
    # asked a day after its last evidence, against the history up to then only
    assert change.asked_at == "2025-02-11T08:00:00"
    turns = [t.id for s in conv.sessions for t in s.turns]
    assert turns == ["1", "2", "3", "4", "5", "6"]
    conv, conflict = questions["c-diet"]
    assert conflict.question == "What is Dana's diet?"
    assert conflict.category == "conflict"
    assert conflict.evidence == ["3", "7"]
    assert [t.id for s in conv.sessions for t in s.turns] == [str(m[0]) for m in MESSAGES]
    assert [s.id for s in conv.sessions] == ["s1", "s2", "s3", "s4"]
    user_turn = conv.sessions[0].turns[0]
    assert (user_turn.role, user_turn.speaker) == ("user", "Dana")
    assert conv.speakers == {"user": "Dana", "assistant": "assistant"}


def test_wheel_is_read_in_place_and_through_load_dataset(tmp_path: Path) -> None:
    whl = _wheel(tmp_path)
    assert is_cri(whl)
    assert is_cri(tmp_path / "src")
    assert not is_cri(tmp_path)
    assert load_dataset(whl) == load_cri(tmp_path / "src")
    with pytest.raises(InvalidInputError, match="named 'other'"):
        load_cri(whl, persona="other")


@pytest.mark.parametrize(
    "truth",
    [
        {"changes": [{"query_topic": "x", "new_value": "y", "key_messages": [99]}]},
        {"changes": [], "conflicts": []},
        {"conflicts": [{"topic": "diet"}]},
    ],
)
def test_bad_ground_truth_is_a_typed_error(tmp_path: Path, truth: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        load_cri(_write(tmp_path / "p", truth))


def test_not_a_zip_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError):
        load_cri(bad)


def test_bench_recall_runs_on_a_cri_wheel(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app, ["bench", "recall", str(_wheel(tmp_path)), "--budget", "256", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "cri-persona-t"
    assert report["questions"] == 2
    result = report["results"][0]
    assert result["evidence"]["total"] == 4
    assert set(result["recall"]) == {"overall", "conflict", "knowledge-update"}
    ev = result["evidence"]
    assert ev["recalled"] + ev["not_found"] + ev["not_fitted"] == 4


def test_without_a_persona_name_questions_ask_about_the_user(tmp_path: Path) -> None:
    folder = _write(tmp_path / "p")
    (folder / "metadata.json").unlink()
    data = load_cri(folder)
    assert data.name == "cri-cri"
    first = data.conversations[0].questions[0]
    assert first.question == "What is the user's current occupation?"
