"""The store contract every backend implements.

A backend implements a few primitive async methods; everything built on top of them (recall for a
prompt, persisting a run, forgetting a user, sessions) lives once in shared code. The contract is
pinned by ``tests/contract/``, which runs unchanged against every backend.

Contract:

``add(records)``
    Stores a batch atomically where the backend can. Idempotent per ``(user_id, key)``: a record
    whose key is already stored is not written again and the stored version is returned in its
    place. Records without ``seq`` get the next gap-free sequence number of their
    ``(user_id, session_id)``, in batch order. Returns the stored records in input order.
    Raises :class:`~tiamat_hooks.errors.InvalidRecordError` for malformed input before anything
    is written.

``search(query, scope, kinds=..., limit=...)``
    Full-text search over the records of ``scope.user_id`` (narrowed by ``agent_id`` /
    ``session_id`` when set). Any string is a valid query: operators, quotes, NUL bytes, emoji,
    huge strings and the empty string never raise; a query with no searchable words returns
    ``[]``. Results are ordered by descending score; ``limit`` is capped at
    ``capabilities.max_search_limit``.

``read(scope, kinds=None, seq_from=None, seq_to=None, limit=None, newest=False)``
    Records of a scope in ``(session_id, seq)`` order. With ``newest=True`` and a ``limit`` it
    returns the *last* ``limit`` records, still in ascending order.

``list_sessions(user_id)`` / ``list_users()``
    What is stored, for inspection and export.

``delete(scope, ids=None)``
    Removes the scope's records (all of a user when only ``user_id`` is set), or only ``ids``
    within it. Returns how many were removed. Stores that cannot delete raise
    :class:`~tiamat_hooks.errors.CapabilityError` and say so in ``capabilities``.

``stats(user_id=None)`` and ``close()``
    Counts, and releasing what the store owns. ``close`` is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..models import (
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
    SessionInfo,
    StoreCapabilities,
    StoreStats,
)

__all__ = ["DEFAULT_SEARCH_KINDS", "MemoryStore"]

DEFAULT_SEARCH_KINDS: tuple[RecordKind, ...] = ("turn", "summary")


@runtime_checkable
class MemoryStore(Protocol):
    """Async storage for memory records. See the module docstring for the full contract."""

    @property
    def capabilities(self) -> StoreCapabilities: ...

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]: ...

    async def search(
        self,
        query: str,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] = DEFAULT_SEARCH_KINDS,
        limit: int = 50,
    ) -> list[SearchHit]: ...

    async def read(
        self,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[MemoryRecord]: ...

    async def list_sessions(self, user_id: str) -> list[SessionInfo]: ...

    async def list_users(self) -> list[str]: ...

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int: ...

    async def stats(self, user_id: str | None = None) -> StoreStats: ...

    async def close(self) -> None: ...
