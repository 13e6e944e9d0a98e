"""Memory stores behind one contract (:class:`MemoryStore`) and :func:`open_store` to pick one.

Backends with optional dependencies import lazily, so ``import tiamat_hooks`` never imports a
Postgres driver or a server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import DEFAULT_SEARCH_KINDS, MemoryStore
from .sqlite import SQLiteMemoryStore

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import Embedder
    from ..redaction import Redactor

__all__ = [
    "DEFAULT_SEARCH_KINDS",
    "MemoryStore",
    "SQLiteMemoryStore",
    "analyze",
    "default_store_url",
    "open_store",
]

ENV_VAR = "TIAMAT_HOOKS_DB"


async def analyze(store: MemoryStore) -> None:
    """After a bulk load: refresh the store's query-planner statistics, if it keeps any.

    Calls the store's optional ``analyze()`` (Postgres ``ANALYZE``, SQLite ``PRAGMA
    optimize``, passed through by wrappers); a store without one is left alone.
    """
    method = getattr(store, "analyze", None)
    if callable(method):
        await method()


def default_store_url() -> str:
    """``$TIAMAT_HOOKS_DB`` if set, else a SQLite file in the user's data directory."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    import platformdirs

    return "sqlite:///" + str(Path(platformdirs.user_data_dir("tiamat-hooks")) / "memory.db")


def open_store(
    url: str | Path | None = None,
    *,
    redact: bool | Redactor | None = None,
    embeddings: bool | Embedder = False,
    **options: Any,
) -> MemoryStore:
    """Build a store from a URL. No I/O happens until the store is first used.

    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``
      or a plain file path: :class:`SQLiteMemoryStore`.
    * ``postgresql://...`` / ``postgres://...``: ``PostgresMemoryStore`` (extra ``postgres``).
    * ``http://...`` / ``https://...``: ``TiamatCloudStore`` (the TIAMAT memory API).
    * ``None``: :func:`default_store_url`.

    ``redact``: wrap the store in a :class:`~tiamat_hooks.redaction.RedactingStore` (secrets and
    personal data are removed from records before they are stored or sent). ``None`` (default)
    means on for remote stores (``http(s)://``) and off for local ones; ``True`` uses the
    :class:`~tiamat_hooks.redaction.DefaultRedactor`; a ``Redactor`` is used as given.

    ``embeddings``: wrap the store in a :class:`~tiamat_hooks.embeddings.HybridStore` (dense
    retrieval fused with the store's search; extra ``tiamat-hooks[embeddings]``). ``True`` uses
    the bundled all-MiniLM-L6-v2 model; an ``Embedder`` is used as given. Off by default. With
    redaction too, redaction is applied first, so only redacted text is embedded.

    Raises:
        ConfigError: the URL has an unknown scheme or is malformed, ``redact`` or ``embeddings``
            is invalid, or ``embeddings`` is asked for without the extra installed.
    """
    from ..redaction import RedactingStore, Redactor

    if not (redact is None or isinstance(redact, (bool, Redactor))):
        raise ConfigError("redact must be True, False, None or a Redactor (with .redact(text))")
    try:
        store = _open(url, **options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # Constructors do no I/O: a TypeError/ValueError here is a bad option or URL part.
        raise ConfigError(f"cannot open store {url!r}: {exc}") from exc
    remote = isinstance(url, str) and url.lower().startswith(("http://", "https://"))
    if redact is None:
        redact = remote
    if redact is not False:
        store = RedactingStore(store, None if redact is True else redact)
    if embeddings is False:
        return store
    from ..embeddings import Embedder, HybridStore

    if embeddings is True:
        return HybridStore(store)
    if not isinstance(embeddings, Embedder):
        raise ConfigError("embeddings must be True, False or an Embedder (model_id, dim, embed)")
    return HybridStore(store, embeddings)


def _open(url: str | Path | None, **options: Any) -> MemoryStore:
    if url is None:
        url = default_store_url()
    if isinstance(url, Path):
        return SQLiteMemoryStore(url, **options)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("store URL must be a non-empty string")
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "file"):
        path = url[len("file://") :] if scheme == "file" else url
        return SQLiteMemoryStore(unquote(path) or ":memory:", **options)
    if scheme == "sqlite":
        rest = url.split("://", 1)[1]
        if rest in ("", ":memory:", "/:memory:"):
            return SQLiteMemoryStore(":memory:", **options)
        # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteMemoryStore(unquote(path), **options)
    if scheme in ("postgres", "postgresql"):
        from .postgres import PostgresMemoryStore

        return PostgresMemoryStore.from_url(url, **options)
    if scheme in ("http", "https"):
        from .cloud import TiamatCloudStore

        return TiamatCloudStore.from_url(url, **options)
    raise ConfigError(
        f"unknown store URL scheme {scheme!r}: use sqlite:///path.db, postgresql://... or https://..."
    )
