"""What the server does, without HTTP: tenancy, envelopes in and out, and every operation.

Everything here takes a :class:`~tiamat_hooks.server.auth.Principal` and client-side ids, and
talks to the underlying store in store-side ids. The HTTP layer (:mod:`.app`) only parses,
validates and serialises; errors raised here are package errors that it maps once.

**Store-side ids.** Tenants share one store; each is kept apart by prefixing ids:

* a client user ``U`` of tenant ``T`` is stored as user ``T/U``;
* a record id ``R`` sent in an envelope is stored as ``T/R`` (record ids are unique store-wide,
  and one tenant must not be able to block or probe another's ids);
* a plain memory (content that is not an envelope) gets a fresh id ``T:<hex>`` and is filed as a
  ``fact`` under ``T/<default user of the key>``, its tags and importance kept in
  ``meta["hosted"]``. The ``:`` marks it as plain, so it is served back as plain content;
* parts of a split envelope wait under the internal user ``T#parts`` (one session per record)
  until all have arrived; then the record is decoded, stored, and the parts are deleted.

Tenant ids contain neither ``/`` nor ``#`` nor ``:`` (see :func:`.auth.check_tenant`), so no client
input can reach another tenant's ids. A client user id may be at most
``MAX_ID_LENGTH - len(tenant) - 1`` characters.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..envelope import PART_PREFIX, PREFIX, decode, encode, id_hash
from ..errors import CapabilityError, InvalidRecordError, InvalidScopeError
from ..models import (
    RECORD_KINDS,
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
    SessionInfo,
    make_record,
    new_id,
)
from ..stores.base import MemoryStore
from .auth import Principal

__all__ = [
    "EXTENSIONS",
    "MAX_LIST_LIMIT",
    "MAX_READ_LIMIT",
    "MAX_RECALL_LIMIT",
    "MAX_SEARCH_LIMIT",
    "MemoryService",
    "ReadResult",
]

EXTENSIONS: tuple[str, ...] = ("add", "delete", "read", "search", "sessions", "users")
"""Extension names ``GET /health`` advertises (see the package docstring for the endpoints)."""

MAX_RECALL_LIMIT = 50
"""Largest ``limit`` of ``GET /api/memory/recall``, as on the hosted API."""

MAX_LIST_LIMIT = 1000
"""Largest page of ``GET /api/memory/list``."""

MAX_SEARCH_LIMIT = 1000
"""Largest ``limit`` of the search extension."""

MAX_READ_LIMIT = 10_000
"""Most records one call of the read extension returns."""

_PARTS = "#parts"
_PLAIN = ":"
_USER = "/"


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Records of one read, and whether more matched than were returned."""

    records: list[MemoryRecord]
    truncated: bool


def _user(p: Principal, client_user: str) -> str:
    if not isinstance(client_user, str) or not client_user.strip():
        raise InvalidScopeError("user is required")
    return p.tenant + _USER + client_user


def _scope(
    p: Principal, user: str, agent_id: str | None = None, session_id: str | None = None
) -> Scope:
    return Scope(_user(p, user), agent_id=agent_id, session_id=session_id)


def _client_id(p: Principal, store_id: str) -> str:
    for sep in (_USER, _PLAIN):
        if store_id.startswith(p.tenant + sep):
            return store_id[len(p.tenant) + 1 :]
    return store_id


def _is_plain(p: Principal, record: MemoryRecord) -> bool:
    return record.id.startswith(p.tenant + _PLAIN)


def to_client(p: Principal, record: MemoryRecord) -> MemoryRecord:
    """A stored record as the client sees it (tenant prefixes removed)."""
    return record.model_copy(
        update={
            "user_id": record.user_id[len(p.tenant) + 1 :],
            "id": _client_id(p, record.id),
        }
    )


def to_store(p: Principal, record: MemoryRecord) -> MemoryRecord:
    """A client record as stored (tenant prefixes added; validated again, so an id that is too
    long once prefixed is an :class:`InvalidScopeError`)."""
    data = record.model_dump()
    data["user_id"] = _user(p, record.user_id)
    data["id"] = p.tenant + _USER + record.id
    return make_record(**data)


def _hosted_meta(record: MemoryRecord) -> dict[str, Any]:
    hosted = record.meta.get("hosted")
    return hosted if isinstance(hosted, dict) else {}


def to_memories(
    p: Principal, record: MemoryRecord, score: float | None = None
) -> list[dict[str, Any]]:
    """A stored record as hosted-API memories: plain content for plain memories, else the
    envelope payloads of the client record (several for a split record, ids ``<id>#<i>``)."""
    created = record.created_at.isoformat()
    extra: dict[str, Any] = {} if score is None else {"score": score}
    if _is_plain(p, record):
        hosted = _hosted_meta(record)
        tags = hosted.get("tags")
        importance = hosted.get("importance")
        return [
            {
                "id": _client_id(p, record.id),
                "content": record.text,
                "tags": list(tags) if isinstance(tags, list) else [],
                "importance": importance if isinstance(importance, (int, float)) else 0.5,
                "created_at": created,
                **extra,
            }
        ]
    client = to_client(p, record)
    payloads = encode(client)
    return [
        {
            "id": client.id if len(payloads) == 1 else f"{client.id}#{i}",
            "content": payload["content"],
            "tags": payload["tags"],
            "importance": payload["importance"],
            "created_at": created,
            **extra,
        }
        for i, payload in enumerate(payloads)
    ]


class MemoryService:
    """The server's operations over one store. Every method acts within ``p.tenant`` only."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    # -- tenancy helpers ------------------------------------------------------------------------

    async def _tenant_users(self, p: Principal) -> list[str]:
        """Store-side user ids of the tenant (internal ones excluded), sorted."""
        prefix = p.tenant + _USER
        return sorted(u for u in await self.store.list_users() if u.startswith(prefix))

    # -- the hosted API -------------------------------------------------------------------------

    async def store_memory(
        self,
        p: Principal,
        content: str,
        tags: Sequence[str],
        importance: float,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/memory/store``. Returns ``{"success": true, "id": ..., "stored": ...}``:
        ``stored`` is ``"record"``, ``"plain"`` or ``"part"`` (a part waiting for its siblings).

        Raises:
            InvalidRecordError: content that starts like an envelope but does not decode, or an
                envelope record that cannot be stored under this tenant.
        """
        if not content.startswith(PREFIX):
            return await self._store_plain(p, content, tags, importance, idempotency_key)
        if content.startswith(PART_PREFIX):
            return await self._store_part(p, content)
        records = decode([{"content": content}])
        if not records:
            raise InvalidRecordError("content starts with the tiamat-hooks prefix but is malformed")
        stored = (await self.store.add([to_store(p, records[0])]))[0]
        return {"success": True, "id": _client_id(p, stored.id), "stored": "record"}

    async def _store_plain(
        self,
        p: Principal,
        content: str,
        tags: Sequence[str],
        importance: float,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "id": p.tenant + _PLAIN + new_id(),
            "user_id": _user(p, p.default_user),
            "kind": "fact",
            "text": content,
            "meta": {"hosted": {"tags": list(tags), "importance": importance}},
        }
        if idempotency_key:
            # The hosted API has no idempotency; honouring the header makes retries harmless.
            fields["key"] = "idem:" + id_hash(idempotency_key)
        stored = (await self.store.add([make_record(**fields)]))[0]
        return {"success": True, "id": _client_id(p, stored.id), "stored": "plain"}

    async def _store_part(self, p: Principal, content: str) -> dict[str, Any]:
        head_text, sep, _ = content[len(PART_PREFIX) :].partition("\n")
        try:
            head = json.loads(head_text) if sep else None
        except ValueError:
            head = None
        rid = head.get("id") if isinstance(head, dict) else None
        i = head.get("i") if isinstance(head, dict) else None
        n = head.get("n") if isinstance(head, dict) else None
        if not (
            isinstance(rid, str)
            and isinstance(i, int)
            and isinstance(n, int)
            and 0 <= i < n <= 10_000
        ):
            raise InvalidRecordError("malformed tiamat-hooks part header")
        group = id_hash(rid, str(n))
        staging = Scope(p.tenant + _PARTS, session_id=group)
        await self.store.add(
            [
                make_record(
                    id=p.tenant + _PARTS + ":" + new_id(),
                    user_id=staging.user_id,
                    session_id=group,
                    kind="fact",
                    text=content,
                    key=f"{group}:{i}",  # a replayed part is stored once
                )
            ]
        )
        parts = await self.store.read(staging)
        if len({r.key for r in parts}) < n:
            return {"success": True, "id": f"{rid}#{i}", "stored": "part"}
        records = decode({"content": r.text, "id": r.key} for r in parts)
        if not records:
            await self._drop_parts(staging)
            raise InvalidRecordError(f"the {n} parts of record {rid!r} do not decode")
        stored = (await self.store.add([to_store(p, records[0])]))[0]
        await self._drop_parts(staging)
        return {"success": True, "id": f"{_client_id(p, stored.id)}#{i}", "stored": "record"}

    async def _drop_parts(self, staging: Scope) -> None:
        # A store that cannot delete keeps the staged parts; they are never served.
        with contextlib.suppress(CapabilityError):
            await self.store.delete(staging)

    async def learn(
        self, p: Principal, subject: str, predicate: str, obj: str, confidence: float
    ) -> dict[str, Any]:
        """``POST /api/memory/learn``: a fact of the key's default user, served as plain content."""
        triple = {"subject": subject, "predicate": predicate, "object": obj}
        record = make_record(
            id=p.tenant + _PLAIN + new_id(),
            user_id=_user(p, p.default_user),
            kind="fact",
            text=f"{subject} {predicate} {obj}",
            meta={
                "hosted": {"tags": ["fact"], "importance": confidence, "source": "learn"},
                "triple": triple,
                "confidence": confidence,
            },
            key="learn:" + id_hash(subject, predicate, obj),
        )
        stored = (await self.store.add([record]))[0]
        return {"success": True, "id": _client_id(p, stored.id)}

    async def recall(self, p: Principal, query: str, limit: int) -> list[dict[str, Any]]:
        """``GET /api/memory/recall``: the best ``limit`` records of the whole tenant (every user,
        every kind) by the store's full-text score, as memories with a ``score``.

        ``limit`` counts records; all parts of a split record are returned together, so the
        answer can hold more than ``limit`` memories but never half a record.
        """
        hits: list[SearchHit] = []
        for user in await self._tenant_users(p):
            hits.extend(
                await self.store.search(query, Scope(user), kinds=RECORD_KINDS, limit=limit)
            )
        hits.sort(key=lambda h: -h.score)
        out: list[dict[str, Any]] = []
        for hit in hits[:limit]:
            out.extend(to_memories(p, hit.record, hit.score))
        return out

    async def list_memories(
        self, p: Principal, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """``GET /api/memory/list``: a page of every memory of the tenant and the total count.

        Order is stable while nothing is written: users by id, then each user's records in read
        order. Each page reads the tenant's records again; use the read extension for large
        tenants.
        """
        memories: list[dict[str, Any]] = []
        for user in await self._tenant_users(p):
            for record in await self.store.read(Scope(user)):
                memories.extend(to_memories(p, record))
        return memories[offset : offset + limit], len(memories)

    async def stats(self, p: Principal) -> dict[str, Any]:
        """``GET /api/memory/stats`` for the tenant."""
        users = await self._tenant_users(p)
        sessions = records = 0
        by_kind: dict[str, int] = {}
        for user in users:
            st = await self.store.stats(user)
            sessions += st.sessions
            records += st.records
            for kind, n in st.by_kind.items():
                by_kind[kind] = by_kind.get(kind, 0) + n
        learned = 0
        default = _user(p, p.default_user)
        if default in users:
            learned = sum(
                1
                for r in await self.store.read(Scope(default), kinds=["fact"])
                if _hosted_meta(r).get("source") == "learn"
            )
        return {
            "total_memories": records - learned,
            "total_facts": learned,
            "users": len(users),
            "sessions": sessions,
            "records": records,
            "by_kind": by_kind,
        }

    # -- extensions -----------------------------------------------------------------------------

    async def users(self, p: Principal) -> list[str]:
        """Client user ids of the tenant, sorted."""
        return [u[len(p.tenant) + 1 :] for u in await self._tenant_users(p)]

    async def sessions(self, p: Principal, user: str) -> list[SessionInfo]:
        """Sessions of a client user, as the store orders them, with client ids."""
        infos = await self.store.list_sessions(_user(p, user))
        return [
            SessionInfo(user, i.session_id, i.records, i.first_at, i.last_at, i.last_seq)
            for i in infos
        ]

    async def read(
        self,
        p: Principal,
        user: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        kinds: Sequence[RecordKind] | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> ReadResult:
        """The store's ``read`` for a client scope, at most :data:`MAX_READ_LIMIT` records;
        ``truncated`` says that more matched than ``limit`` (or the maximum) allowed."""
        cap = MAX_READ_LIMIT if limit is None else min(limit, MAX_READ_LIMIT)
        records = await self.store.read(
            _scope(p, user, agent_id, session_id),
            kinds=kinds,
            seq_from=seq_from,
            seq_to=seq_to,
            limit=cap + 1,  # one more tells whether the answer was cut
            newest=newest,
        )
        truncated = len(records) > cap
        if truncated:
            records = records[1:] if newest else records[:cap]
        return ReadResult([to_client(p, r) for r in records], truncated)

    async def search(
        self,
        p: Principal,
        query: str,
        user: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        kinds: Sequence[RecordKind] | None = None,
        limit: int = 50,
    ) -> list[SearchHit]:
        """The store's ``search`` for a client scope (default kinds: the store's default)."""
        scope = _scope(p, user, agent_id, session_id)
        if kinds is None:
            hits = await self.store.search(query, scope, limit=limit)
        else:
            hits = await self.store.search(query, scope, kinds=kinds, limit=limit)
        return [SearchHit(to_client(p, h.record), h.score, h.span) for h in hits]

    async def add(self, p: Principal, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """The store's ``add`` for client records: server-assigned sequence numbers, idempotent
        by ``(user_id, key)``; returns the stored records (client ids) in input order."""
        stored = await self.store.add([to_store(p, r) for r in records])
        return [to_client(p, r) for r in stored]

    async def delete(
        self,
        p: Principal,
        user: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> int:
        """The store's ``delete`` for a client scope; ``ids`` are client record ids (a plain
        memory's id as the hosted API returned it works too). Returns how many were removed.

        Raises:
            CapabilityError: the underlying store cannot delete.
        """
        store_ids = None
        if ids is not None:
            store_ids = [p.tenant + sep + i for i in ids for sep in (_USER, _PLAIN)]
        return await self.store.delete(_scope(p, user, agent_id, session_id), ids=store_ids)
