"""A store that wraps another: the delegation every wrapping store shares.

:class:`StoreWrapper` implements the whole :class:`~tiamat_hooks.stores.base.MemoryStore`
contract by handing each call to ``inner`` unchanged (``close`` closes ``inner``). Subclasses
override what they change — :class:`~tiamat_hooks.redaction.RedactingStore` rewrites ``add``,
:class:`~tiamat_hooks.embeddings.HybridStore` fuses ``search`` — and inherit the rest.

Optional capabilities of the inner store (``read_around``, ``integrity_check``, ``analyze``, the
remote store's outbox and server methods) are passed through by attribute access; any other
attribute of ``inner`` is not exposed, so no write path can bypass the wrapper
(``TiamatCloudStore.learn`` would, for instance, skip redaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import (
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
    SessionInfo,
    StoreCapabilities,
    StoreStats,
)
from .base import DEFAULT_SEARCH_KINDS, MemoryStore

__all__ = ["PASSTHROUGH", "StoreWrapper"]

PASSTHROUGH = frozenset(
    {
        "read_around",
        "integrity_check",
        "analyze",
        "flush",
        "outbox",
        "outbox_status",
        "forget_queued",
        "refresh_capabilities",
        "health",
        "server_extensions",
        "server_info",
        "stats_counters",
    }
)
"""Read-only, maintenance (``analyze``) or outbox-management capabilities of inner stores that
wrappers expose."""


class StoreWrapper:
    """Delegates the store contract to ``inner``; subclasses override what they change."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        if name in PASSTHROUGH:
            return getattr(self.inner, name)
        raise AttributeError(name)

    @property
    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        return await self.inner.add(records)

    async def search(
        self,
        query: str,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] = DEFAULT_SEARCH_KINDS,
        limit: int = 50,
    ) -> list[SearchHit]:
        return await self.inner.search(query, scope, kinds=kinds, limit=limit)

    async def read(
        self,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[MemoryRecord]:
        return await self.inner.read(
            scope, kinds=kinds, seq_from=seq_from, seq_to=seq_to, limit=limit, newest=newest
        )

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        return await self.inner.list_sessions(user_id)

    async def list_users(self) -> list[str]:
        return await self.inner.list_users()

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        return await self.inner.delete(scope, ids=ids)

    async def stats(self, user_id: str | None = None) -> StoreStats:
        return await self.inner.stats(user_id)

    async def close(self) -> None:
        await self.inner.close()
