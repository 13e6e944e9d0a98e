"""Record ids: unique, RFC 9562 version 7, ordered by the millisecond they were made in."""

from __future__ import annotations

import uuid

import pytest

import tiamat_hooks.models as models
from tiamat_hooks.models import MemoryRecord, new_id


def test_new_id_is_a_uuid7_in_32_hex_digits() -> None:
    ident = new_id()
    assert len(ident) == 32 and ident == ident.lower()
    parsed = uuid.UUID(ident)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_new_id_carries_the_current_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = 1_732_000_000_123
    monkeypatch.setattr(models.time, "time_ns", lambda: ms * 1_000_000 + 999_999)
    assert int(new_id()[:12], 16) == ms


def test_new_ids_sort_by_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 200))
    monkeypatch.setattr(models.time, "time_ns", lambda: next(clock) * 1_000_000)
    ids = [new_id() for _ in range(200)]
    assert ids == sorted(ids)


def test_new_ids_are_unique_within_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    assert len({new_id() for _ in range(10_000)}) == 10_000


def test_records_get_time_ordered_ids_by_default() -> None:
    record = MemoryRecord(user_id="u", text="hello")
    assert uuid.UUID(record.id).version == 7
    assert MemoryRecord(user_id="u", text="x", id="mine").id == "mine"
