"""The envelope format: records in and out of the hosted API's ``content`` and ``tags``."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from tiamat_hooks import envelope
from tiamat_hooks.errors import InvalidRecordError
from tiamat_hooks.models import MemoryRecord, make_record

T0 = datetime(2024, 2, 3, 4, 5, 6, 789, tzinfo=timezone.utc)


def full_record(text: str = 'héllo 😀 "quoted"\nsecond line', **kw: Any) -> MemoryRecord:
    fields: dict[str, Any] = {
        "user_id": "alice@example.com",
        "agent_id": "agent-1",
        "session_id": "sess-1",
        "role": "user",
        "text": text,
        "item": {"type": "message", "role": "user", "content": text},
        "created_at": T0,
        "seq": 7,
        "meta": {"speaker": "Ann", "n": [1, 2]},
    }
    fields.update(kw)
    return make_record(**fields)


def as_results(payloads: list[envelope.StorePayload], start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"m{start + i}", "created_at": f"2024-01-01T00:00:{start + i:02d}", **p}
        for i, p in enumerate(payloads)
    ]


def test_roundtrip_keeps_every_field() -> None:
    r = full_record()
    (payload,) = envelope.encode(r)
    assert payload["content"].startswith(envelope.PREFIX)
    assert envelope.decode(as_results([payload])) == [r]


def test_minimal_record_roundtrip() -> None:
    r = make_record(user_id="u", text="")
    assert envelope.decode(as_results(envelope.encode(r))) == [r]


def test_tags_are_short_hashed_and_few() -> None:
    r = full_record()
    (payload,) = envelope.encode(r)
    tags = payload["tags"]
    assert len(tags) <= envelope.MAX_TAGS
    assert all(len(t) <= envelope.MAX_TAG_CHARS for t in tags)
    joined = " ".join(tags)
    for raw in ("alice@example.com", "agent-1", "sess-1", r.key):
        assert raw not in joined
    assert "k:turn" in tags
    assert "q:7" in tags
    assert set(envelope.scope_tags(r.user_id, r.agent_id, r.session_id)) <= set(tags)
    assert envelope.key_tag(r.user_id, r.key) in tags


def test_encoding_is_deterministic() -> None:
    r = full_record("x" * 25_000)
    assert envelope.encode(r) == envelope.encode(r)


@pytest.mark.parametrize("text", ["a" * 25_000, "😀" * 12_000, "mixed 😀 text " * 3000])
def test_long_records_split_under_the_limit_and_reassemble_in_any_order(text: str) -> None:
    r = full_record(text, item=None)
    payloads = envelope.encode(r)
    assert len(payloads) > 1
    assert max(envelope.payload_sizes(payloads)) <= envelope.MAX_CONTENT_CHARS
    n = len(payloads)
    assert [t for t in payloads[0]["tags"] if t.startswith("part:")] == [f"part:0/{n}"]
    results = as_results(payloads)
    random.Random(4).shuffle(results)
    assert envelope.decode(results) == [r]


def test_small_max_chars() -> None:
    r = full_record("some words " * 40)
    payloads = envelope.encode(r, max_chars=300)
    assert max(envelope.payload_sizes(payloads)) <= 300
    assert envelope.decode(as_results(payloads)) == [r]
    with pytest.raises(InvalidRecordError):
        envelope.encode(r, max_chars=50)


def test_missing_part_skips_the_record_and_is_reported() -> None:
    r, other = full_record("z" * 30_000), full_record("short", key="k2")
    results = as_results(envelope.encode(r)) + as_results(envelope.encode(other), 10)
    del results[1]
    assert envelope.decode(results) == [other]
    assert envelope.incomplete_groups(results) == [envelope.group_token(r)]


def test_duplicates_keep_the_earliest_stored_copy() -> None:
    first = full_record("first version", key="same")
    second = full_record("second version", key="same")
    results = as_results(envelope.encode(second), 5) + as_results(envelope.encode(first), 1)
    (got,) = envelope.decode_memories(results)
    assert got.record == first  # stored earlier by the service clock
    assert got.rank == 0  # but ordered where its first copy appeared


def test_duplicate_parts_are_harmless() -> None:
    r = full_record("q" * 22_000)
    payloads = envelope.encode(r)
    results = as_results(payloads) + as_results(payloads[:1], 20)
    assert envelope.decode(results) == [r]


def test_foreign_and_malformed_memories_are_ignored() -> None:
    r = full_record()
    results: list[dict[str, Any]] = [
        {"id": "a", "content": "a plain memory from another app"},
        {"id": "b", "content": envelope.PREFIX + "{not json\ntext"},
        {"id": "c", "content": envelope.PREFIX + '{"v":2}\ntext'},
        {"id": "d", "content": envelope.PREFIX + '{"v":1,"id":"x","u":"","k":"turn"}\nt'},
        {"id": "e", "content": envelope.PART_PREFIX + '{"id":"x","i":5,"n":2}\nchunk'},
        {"id": "f", "content": None},
        *as_results(envelope.encode(r), 9),
    ]
    assert envelope.decode(results) == [r]


def test_order_follows_the_results_and_scores_are_kept() -> None:
    a, b = full_record("a", key="a"), full_record("b", key="b")
    results = as_results(envelope.encode(b)) + as_results(envelope.encode(a), 1)
    results[0]["score"] = 0.9
    decoded = envelope.decode_memories(results)
    assert [d.record.key for d in decoded] == ["b", "a"]
    assert decoded[0].score == 0.9
    assert decoded[1].score is None


def test_encode_rejects_what_cannot_travel() -> None:
    with pytest.raises(InvalidRecordError):
        envelope.encode({"text": "x"})  # type: ignore[arg-type]
    # Records sanitise lone surrogates when built, so what reaches encode can always travel...
    clean = make_record(user_id="u", text="lone \ud800 surrogate")
    assert clean.text == "lone \ufffd surrogate"
    assert envelope.encode(clean)
    # ...and one that bypassed validation is still refused before anything is sent.
    raw = clean.model_copy(update={"text": "lone \ud800 surrogate"})
    with pytest.raises(InvalidRecordError):
        envelope.encode(raw)
