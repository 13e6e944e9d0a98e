"""A self-hosted TIAMAT memory server over any tiamat-hooks store (extra ``server``).

``create_app(store, keys=...)`` builds a Starlette ASGI app; ``tiamat-hooks serve`` runs it with
uvicorn. Starlette and uvicorn are imported only when an app is built or served, so
``import tiamat_hooks`` (and this package) never imports them.

It speaks the hosted TIAMAT memory API exactly, so
``TiamatCloudStore(base_url="http://127.0.0.1:8765", api_key=...)`` works against it unchanged:

==========================  ======================================================================
``GET  /health``            public; see *Detecting the extensions* below
``POST /api/memory/store``  ``{content ≤ 10,000 chars, tags ≤ 20, importance 0–1}`` →
                            ``{"success": true, "id", "stored": "record"|"part"|"plain"}``.
                            An envelope (:mod:`tiamat_hooks.envelope`) becomes a real record in
                            the store (so search is the store's full-text search); the parts of
                            a split record are held until all have arrived. Other content is kept
                            as a ``fact`` of the key's default user and served back unchanged
                            (an ``Idempotency-Key`` header makes its retries harmless).
``GET  /api/memory/recall`` ``?query=&limit=`` (1–50, default 10) → ``{"results": [memory...],
                            "count"}``: the best ``limit`` records of the whole tenant by the
                            store's score, re-encoded as envelopes (plain content as stored), each
                            with a ``score``; every part of a split record is returned together.
``POST /api/memory/learn``  ``{subject, predicate, object, confidence}`` → a fact record.
``GET  /api/memory/list``   ``?limit=`` (1–1000, default 100) ``&offset=`` →
                            ``{"results", "count", "total"}``, every memory of the tenant.
``GET  /api/memory/stats``  ``{"total_memories", "total_facts", "users", "sessions", "records",
                            "by_kind"}`` for the tenant.
==========================  ======================================================================

A memory is ``{"id", "content", "tags", "importance", "created_at"[, "score"]}``; a split
record's parts have ids ``<record id>#<part index>``.

**Auth and tenancy.** Every ``/api/`` call needs ``Authorization: Bearer <key>`` (401 otherwise).
A key belongs to a *tenant* (:mod:`.auth`); the tenant is baked into the store's user ids
(``<tenant>/<user>``), so a key sees only its tenant's memory. Keys of one tenant share it.

**Limits and errors.** Bodies over ``max_body`` bytes (default 64 KiB) → 413; a body that is not
JSON → 400; invalid parameters or bodies → 422; store conflicts → 409; a store that cannot
delete → 501; store unavailable → 503, timeout → 504. Every error body is
``{"error": message[, "detail": [...]]}``. ``GET /openapi.json`` is the OpenAPI 3.1 document;
``GET /`` is the inspector page (public; its calls use the key typed into it).

Extension endpoints
-------------------

What the hosted API lacks, under ``/api/memory/x/``. They take and return **records** as
lossless JSON (``MemoryRecord.model_dump(mode="json")``; read them back with
``MemoryRecord.model_validate``), with client-side ids (no tenant prefix). ``user`` is always the
client user id and is required; ``agent``/``session`` narrow the scope when given, as in
:class:`~tiamat_hooks.models.Scope`. ``kind`` may be repeated or comma-separated
(``turn``, ``summary``, ``fact``).

``GET /api/memory/x/users``
    → ``{"users": [user id, ...sorted], "count"}``.

``GET /api/memory/x/sessions?user=U``
    → ``{"user": U, "sessions": [{"session_id" (null: no session), "records", "first_at",
    "last_at", "last_seq"}], "count"}``, ordered by first record time (the store's
    ``list_sessions``).

``GET /api/memory/x/read?user=U[&agent=][&session=][&kind=...][&seq_from=][&seq_to=]``
``[&limit=][&newest=true]``
    → ``{"records": [...], "count", "truncated"}``: the store's ``read`` — records in
    ``(session_id, seq)`` order, sequence range inclusive, ``newest=true`` with ``limit`` gives
    the last ``limit`` records still ascending. At most 10,000 records per call (``limit`` 0–10000);
    ``truncated`` is true when more matched. Page through a long session with ``seq_from``.

``GET /api/memory/x/search?query=Q&user=U[&agent=][&session=][&kind=...][&limit=]``
    → ``{"hits": [{"record", "score", "span": [start, end] | null}], "count"}``: the store's
    ``search`` in that scope (``limit`` 1–1000, default 50; kinds default to turn and summary).

``POST /api/memory/x/add`` ``{"records": [record, ...]}`` (1–1000, within the body limit)
    → ``{"records": [stored...], "count"}``: the store's ``add`` — idempotent by
    ``(user_id, key)``, sequence numbers assigned by the server when ``seq`` is null, so several
    devices can append to one session without colliding. 409 when a given ``seq`` is taken.

``POST /api/memory/x/delete`` ``{"user": U[, "session": S][, "agent": A][, "ids": [...]]}``
    → ``{"deleted": n}``: the store's ``delete`` — the whole user when only ``user`` is given,
    else the narrowed scope, or only ``ids`` within it (record ids; a plain memory's id as
    recall/list returned it also works). 501 when the underlying store cannot delete.

Detecting the extensions
------------------------

``GET /health`` (no key needed) answers::

    {"status": "ok", "service": "tiamat-hooks", "version": "...",
     "extensions": ["add", "delete", "read", "search", "sessions", "users"],
     "max_recall_limit": 50, "max_body_bytes": 65536, "can_delete": true}

The hosted API sends no ``extensions``; a client uses an endpoint only when its name is listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..stores.base import MemoryStore
from .auth import (
    KeyChain,
    KeyInfo,
    KeyRegistry,
    KeyResolver,
    Principal,
    StaticKeys,
    default_keys_path,
    generate_key,
)
from .service import EXTENSIONS

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette

__all__ = [
    "EXTENSIONS",
    "KeyChain",
    "KeyInfo",
    "KeyRegistry",
    "KeyResolver",
    "Principal",
    "StaticKeys",
    "create_app",
    "default_keys_path",
    "generate_key",
    "serve",
]

_INSTALL = "the server needs Starlette and uvicorn: pip install 'tiamat-hooks[server]'"


def create_app(
    store: MemoryStore,
    *,
    keys: KeyResolver | Mapping[str, str | Principal],
    max_body: int = 64 * 1024,
    close_store: bool = False,
    inspector: bool = True,
) -> Starlette:
    """The ASGI app serving ``store`` (see the package docstring for the API).

    Args:
        store: any :class:`~tiamat_hooks.stores.base.MemoryStore`; the app does not own it
            unless ``close_store`` is set (then it is closed at application shutdown).
        keys: a :class:`KeyResolver` (e.g. :class:`KeyRegistry`) or a mapping of API key to
            tenant id (or :class:`Principal`) for fixed keys.
        max_body: largest request body in bytes; larger bodies are answered with 413.
        inspector: serve the inspector page at ``/``.

    Raises:
        ConfigError: Starlette is not installed, or ``keys``/``max_body`` is invalid.
    """
    try:
        from .app import build_app
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in ("starlette", "anyio"):
            raise ConfigError(_INSTALL) from exc
        raise
    resolver: KeyResolver = keys if isinstance(keys, KeyResolver) else StaticKeys(keys)
    if not isinstance(max_body, int) or max_body < 1024:
        raise ConfigError("max_body must be an integer of at least 1024 bytes")
    return build_app(
        store, keys=resolver, max_body=max_body, close_store=close_store, inspector=inspector
    )


async def serve(
    app: Starlette, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info"
) -> None:
    """Run ``app`` with uvicorn on the running event loop until interrupted (Ctrl+C/SIGTERM).

    ``port=0`` picks a free port; uvicorn logs the one it bound.

    Raises:
        ConfigError: uvicorn is not installed.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError(_INSTALL) from exc
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    await uvicorn.Server(config).serve()
