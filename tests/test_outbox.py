"""The durable outbox on its own: queue order, progress, dead letters, forget, status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tiamat_hooks.errors import StoreUnavailableError
from tiamat_hooks.models import MemoryRecord, make_record
from tiamat_hooks.outbox import Outbox, default_outbox_path


def rec(user: str, text: str, session: str | None = "s") -> MemoryRecord:
    return make_record(user_id=user, session_id=session, text=text)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "sub" / "outbox.db")
    try:
        yield box
    finally:
        await box.close()


async def test_queue_keeps_order_and_ignores_requeued_keys(outbox: Outbox) -> None:
    a, b, c = rec("u", "a"), rec("u", "b"), rec("v", "c")
    await outbox.enqueue([a, b])
    await outbox.enqueue([c, a])
    assert [q.record for q in await outbox.pending()] == [a, b, c]
    assert [q.record for q in await outbox.pending("u")] == [a, b]
    assert [q.record for q in await outbox.pending("u", session_id="other")] == []


async def test_progress_sent_failed_and_dead(outbox: Outbox) -> None:
    a, b = rec("u", "a"), rec("u", "b")
    await outbox.enqueue([a, b])
    qa, qb = await outbox.pending()
    await outbox.mark_progress(qa.pos, 2)
    await outbox.mark_failed(qa.pos, "HTTP 503")
    (qa2, _) = await outbox.pending()
    assert (qa2.parts_sent, qa2.attempts, qa2.last_error) == (2, 1, "HTTP 503")
    await outbox.mark_sent(qa.pos)
    await outbox.dead_letter(qb.pos, "HTTP 400")
    status = await outbox.status()
    assert (status.pending, status.dead, status.oldest_age_seconds) == (0, 1, None)


async def test_status_reports_oldest(outbox: Outbox) -> None:
    assert (await outbox.status()).pending == 0
    await outbox.enqueue([rec("u", "a"), rec("v", "b")])
    status = await outbox.status()
    assert status.pending == 2
    assert status.users == 2
    assert status.oldest_enqueued_at is not None
    assert status.oldest_age_seconds is not None
    assert status.oldest_age_seconds >= 0


async def test_known_keys_and_sequence_counters(outbox: Outbox) -> None:
    a = rec("u", "a")
    await outbox.enqueue([a], {("u", "s"): 5, ("u", None): 2})
    await outbox.enqueue([], {("u", "s"): 3})  # counters never go back
    assert await outbox.next_seq("u", "s") == 5
    assert await outbox.next_seq("u", None) == 2
    assert await outbox.next_seq("u", "unknown") is None
    assert await outbox.known("u", [a.key, "missing"]) == {a.key: a}
    seen = rec("u", "seen on the service")
    await outbox.remember([seen])
    assert await outbox.known("u", [seen.key]) == {seen.key: seen}


async def test_forget_drops_only_that_user(outbox: Outbox) -> None:
    a, b = rec("alice", "secret"), rec("bob", "note")
    await outbox.enqueue([a, b], {("alice", "s"): 2})
    assert await outbox.forget("alice") == 1
    assert [q.record for q in await outbox.pending()] == [b]
    assert await outbox.known("alice", [a.key]) == {}
    assert await outbox.next_seq("alice", "s") is None


async def test_discard_forgets_keys(outbox: Outbox) -> None:
    a = rec("u", "a")
    await outbox.enqueue([a])
    (q,) = await outbox.pending()
    await outbox.discard([q.pos])
    assert await outbox.pending() == []
    assert await outbox.known("u", [a.key]) == {}


async def test_survives_reopen_and_close_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first = Outbox(path)
    await first.enqueue([rec("u", "a")])
    await first.close()
    await first.close()
    with pytest.raises(StoreUnavailableError):
        await first.pending()
    second = Outbox(path)
    assert len(await second.pending()) == 1
    await second.close()


def test_constructor_does_no_io(tmp_path: Path) -> None:
    Outbox(tmp_path / "never" / "created.db")
    assert not (tmp_path / "never").exists()
    assert default_outbox_path().name == "outbox.db"
