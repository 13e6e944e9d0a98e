"""Scoring of the recall benchmark: evidence recall and the split of its misses."""

from __future__ import annotations

from tiamat_hooks.bench.recall import evidence_misses, evidence_recall
from tiamat_hooks.models import MemoryRecord, make_record
from tiamat_hooks.recall import RecallResult, Snippet

LONG = "x" * 1000
A = make_record(user_id="u", session_id="s", text="short turn", key="A")
B = make_record(user_id="u", session_id="s", text=LONG, key="B")
C = make_record(user_id="u", session_id="s", text="never shown", key="C")


def result(snippets: list[Snippet], ranked: tuple[MemoryRecord, ...]) -> RecallResult:
    return RecallResult("block", 1, tuple(snippets), "q", 0.0, len(ranked), ranked)


def test_whole_turns_and_half_covered_chunks_count() -> None:
    shown = [
        Snippet(A, None, 1.0, A.text),
        Snippet(B, (0, 300), 1.0, LONG[:300]),
        Snippet(B, (250, 500), 1.0, LONG[250:500]),  # overlaps: 500 of 1,000 chars covered
    ]
    r = result(shown, (A, B, C))
    assert evidence_recall(r, ["A", "B"]) == 1.0
    assert evidence_recall(r, ["A", "B", "C"]) == 2 / 3
    assert evidence_misses(r, ["A", "B", "C"]) == (0, 1)  # C was ranked: not fitted
    assert evidence_misses(r, ["A", "D"]) == (1, 0)  # D was never ranked: not found


def test_less_than_half_of_a_long_turn_is_a_miss() -> None:
    r = result([Snippet(B, (0, 499), 1.0, LONG[:499])], (B,))
    assert evidence_recall(r, ["B"]) == 0.0
    assert evidence_misses(r, ["B"]) == (0, 1)


def test_evidence_listed_twice_counts_twice() -> None:
    r = result([Snippet(A, None, 1.0, A.text)], (A, C))
    assert evidence_recall(r, ["A", "A"]) == 1.0
    assert evidence_recall(r, ["A", "A", "C"]) == 2 / 3
    assert evidence_misses(r, ["A", "A", "C"]) == (0, 1)
    assert evidence_recall(r, []) == 0.0
