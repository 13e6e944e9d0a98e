"""An Agents SDK ``Session`` backed by any :class:`~tiamat_hooks.stores.base.MemoryStore`.

:class:`TiamatSession` implements the SDK's ``Session`` protocol structurally (it does not
subclass ``SessionABC``, as the SDK asks of third-party sessions). Every history item is stored
as a ``turn`` record (see :func:`tiamat_hooks.items.item_to_record`), so the same rows serve the
conversation history *and* long-term recall.

Removing items on stores that cannot delete (``capabilities.can_delete`` is ``False``, e.g. the
hosted TIAMAT API) is done with *marker records*: ``turn`` records with empty text, no item and

* ``meta={"marker": "pop", "target_seq": n}``: the turn with sequence number ``n`` is gone;
* ``meta={"marker": "clear", "upto_seq": n}``: every turn with ``seq <= n`` is gone.

Markers get sequence numbers from the store like any turn, and every read of this class honours
them. Their idempotency keys are derived from their target (``tiamat-session:pop:<n>``), so two
sessions popping the same item race on the store's idempotency: only one marker is stored and
the loser pops the next item instead. Popped and cleared turns stay in the store (recall may
still find them); only the session view forgets them. On stores that can delete, ``pop_item``
and ``clear_session`` delete for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import StoreConflictError
from .items import item_to_record
from .models import MemoryRecord, Scope, make_record, new_id
from .stores import MemoryStore, open_store

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import SessionSettings
    from agents.run_context import RunContextWrapper

__all__ = ["TiamatSession"]

MARKER_KEY_PREFIX = "tiamat-session:"
_POP_ATTEMPTS = 16


def is_marker(record: MemoryRecord) -> bool:
    """Whether a turn record is a pop/clear marker rather than a history item."""
    return record.meta.get("marker") in ("pop", "clear")


def visible_turns(records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
    """The history items left after applying every marker, in sequence order.

    ``records`` are a session's turn records in any order. Records without an item (markers,
    turns not written by a session) are not history items. A marker whose target number is
    missing or malformed falls back to its own sequence number (``clear``: everything before it).
    """
    popped: set[int] = set()
    cleared = 0
    for r in records:
        marker = r.meta.get("marker")
        if marker == "pop":
            target = r.meta.get("target_seq")
            if isinstance(target, int):
                popped.add(target)
        elif marker == "clear":
            upto = r.meta.get("upto_seq")
            if not isinstance(upto, int) and r.seq is not None:
                upto = r.seq - 1
            if isinstance(upto, int):
                cleared = max(cleared, upto)
    items = [
        r
        for r in records
        if r.item is not None
        and not is_marker(r)
        and r.seq is not None
        and r.seq > cleared
        and r.seq not in popped
    ]
    items.sort(key=lambda r: r.seq or 0)
    return items


class TiamatSession:
    """Conversation history for one session of one user, in a memory store.

    Args:
        session_id: the conversation's id (also the records' ``session_id``).
        store: a store, a store URL/path for :func:`~tiamat_hooks.stores.open_store`, or
            ``None`` for the default store. A store this session opened is closed by
            :meth:`close`; a store passed in is not.
        user_id: whose memory this is; chosen by the application, never by the model.
        agent_id: written on every record this session adds. Reads are *not* narrowed by it: a
            session's history includes every agent's items (handoffs share one conversation).
        session_settings: the SDK's settings; ``limit`` is the default of :meth:`get_items`.

    Operations on one object are serialised by a (non-reentrant) lock; no public method calls
    another, so none can deadlock on it.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        *,
        store: MemoryStore | str | Path | None = None,
        user_id: str = "default",
        agent_id: str | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.scope = Scope(user_id, session_id=session_id)  # validates the ids
        Scope(user_id, agent_id=agent_id)
        self.session_id = session_id
        self.user_id = user_id
        self.agent_id = agent_id
        if session_settings is None:
            # Imported here: the SDK takes seconds to import and ``import tiamat_hooks`` must not.
            from agents.memory.session_settings import SessionSettings

            session_settings = SessionSettings()
        self.session_settings = session_settings
        self._owns_store = not isinstance(store, MemoryStore)
        self.store: MemoryStore = store if isinstance(store, MemoryStore) else open_store(store)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"TiamatSession(session_id={self.session_id!r}, user_id={self.user_id!r}, "
            f"store={self.store!r})"
        )

    async def _turns(self) -> list[MemoryRecord]:
        # Every turn of the session, markers included: markers can target any earlier item, so
        # the history is only known after reading all of them.
        return await self.store.read(self.scope, kinds=["turn"])

    async def get_items(
        self, limit: int | None = None, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> list[TResponseInputItem]:
        """The session's items, oldest first; with ``limit`` the latest ``limit`` of them.

        ``limit`` defaults to ``session_settings.limit``; ``None`` means every item (there is no
        hidden cap). ``wrapper`` is accepted for the SDK's context-aware protocol and unused.
        """
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        async with self._lock:
            items = visible_turns(await self._turns())
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return [cast("TResponseInputItem", r.item) for r in items]

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        """Append items in order. Each gets a fresh idempotency key, so identical items added
        twice are two history entries (as the SDK expects); the store assigns sequence numbers."""
        if not items:
            return
        records = [
            item_to_record(
                item,
                user_id=self.user_id,
                session_id=self.session_id,
                agent_id=self.agent_id,
                key=f"turn:{new_id()}",
            )
            for item in items
        ]
        async with self._lock:
            await self.store.add(records)

    async def pop_item(
        self, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> TResponseInputItem | None:
        """Remove and return the latest item, or ``None`` when the session is empty.

        Atomic: concurrent pops (from this object or others on the same store) each remove a
        different item. Raises :class:`StoreConflictError` if it keeps losing races.
        """
        async with self._lock:
            for _ in range(_POP_ATTEMPTS):
                items = visible_turns(await self._turns())
                if not items:
                    return None
                last = items[-1]
                if await self._remove(last):
                    return cast("TResponseInputItem", last.item)
            raise StoreConflictError(f"pop_item lost {_POP_ATTEMPTS} races in a row")

    async def _remove(self, record: MemoryRecord) -> bool:
        """Remove one item; ``False`` when another writer removed it first."""
        if self.store.capabilities.can_delete:
            return await self.store.delete(self.scope, ids=[record.id]) == 1
        assert record.seq is not None  # visible_turns only returns sequenced records
        marker = self._marker("pop", {"target_seq": record.seq})
        (stored,) = await self.store.add([marker])
        # Same key stored already means someone else popped this item: the store returned
        # their marker, not ours.
        return stored.id == marker.id

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        """Forget every item of the session (a clear marker on stores that cannot delete)."""
        async with self._lock:
            if self.store.capabilities.can_delete:
                await self.store.delete(self.scope)
                return
            turns = await self._turns()
            upto = max((r.seq for r in turns if r.seq is not None), default=0)
            if upto == 0:
                return
            await self.store.add([self._marker("clear", {"upto_seq": upto})])

    def _marker(self, kind: str, target: dict[str, int]) -> MemoryRecord:
        (n,) = target.values()
        return make_record(
            user_id=self.user_id,
            session_id=self.session_id,
            agent_id=self.agent_id,
            kind="turn",
            role="marker",
            text="",
            meta={"marker": kind, **target},
            key=f"{MARKER_KEY_PREFIX}{kind}:{n}",
        )

    async def close(self) -> None:
        """Close the store if this session opened it. Idempotent."""
        if self._owns_store:
            await self.store.close()
