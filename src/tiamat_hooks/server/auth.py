"""API keys of the self-hosted server: whom a bearer key belongs to, and the registry of keys.

A key resolves to a :class:`Principal`: the key's name, its **tenant** (whose memory the key sees)
and its **default user** (the user that plain, non-envelope memories are filed under). Several
keys may share a tenant, e.g. one key per device of one person; keys of different tenants never
see each other's memory.

:class:`KeyRegistry` keeps keys in a small SQLite file. Keys are random (``th_`` plus 32 random
bytes, URL-safe base64), shown once when created, and stored only as their SHA-256 hash: a salt or
a slow hash adds nothing for secrets with 256 bits of entropy. :class:`StaticKeys` holds keys given
in code or on the command line (``serve --dev-key``). Neither imports the web framework, so the
``keys`` commands work without the ``server`` extra.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, InvalidInputError, StoreError, StoreUnavailableError
from ..models import MAX_ID_LENGTH

__all__ = [
    "DEFAULT_USER",
    "KEY_PREFIX",
    "KeyChain",
    "KeyInfo",
    "KeyRegistry",
    "KeyResolver",
    "Principal",
    "StaticKeys",
    "check_tenant",
    "default_keys_path",
    "generate_key",
    "hash_key",
]

KEY_PREFIX = "th_"
"""Every key this package issues starts with this (easy to spot in leaked-secret scanners)."""

DEFAULT_USER = "default"
"""The user plain (non-envelope) memories are filed under unless a key says otherwise."""

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


def check_tenant(tenant: str) -> str:
    """Validate a tenant id: 1–64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.

    The server joins tenant and user ids with ``/`` (and uses ``#`` and ``:`` for its own
    bookkeeping), so a tenant id never contains those; that is what keeps tenants apart.

    Raises:
        ConfigError: the id does not match.
    """
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ConfigError(
            f"tenant id {tenant!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return tenant


def _check_default_user(user: str) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_ID_LENGTH:
        raise ConfigError("the default user must be a non-empty id")
    if any(ord(ch) < 32 for ch in user):
        raise ConfigError("the default user must not contain control characters")
    return user


def generate_key() -> str:
    """A new random API key: ``th_`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: resolved from its bearer key."""

    name: str
    tenant: str
    default_user: str = DEFAULT_USER

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        _check_default_user(self.default_user)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A registered key as listed by :meth:`KeyRegistry.list` (never the key itself)."""

    id: str
    name: str
    tenant: str
    default_user: str
    hint: str
    """The first characters of the key, to recognise it."""
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@runtime_checkable
class KeyResolver(Protocol):
    """Maps a bearer key to its principal. ``resolve`` may block (the server calls it in a
    worker thread) and returns ``None`` for unknown or revoked keys; it never raises for them."""

    def resolve(self, key: str) -> Principal | None: ...


class StaticKeys:
    """A fixed set of keys, e.g. ``StaticKeys({"dev-key": "dev"})`` (key → tenant or principal)."""

    def __init__(self, keys: Mapping[str, str | Principal]) -> None:
        self._by_hash: dict[str, Principal] = {}
        for i, (key, who) in enumerate(keys.items()):
            if not isinstance(key, str) or not key.strip():
                raise ConfigError("API keys must be non-empty strings")
            principal = who if isinstance(who, Principal) else Principal(f"static-{i}", who)
            self._by_hash[hash_key(key)] = principal

    def resolve(self, key: str) -> Principal | None:
        wanted = hash_key(key)
        found: Principal | None = None
        # Compare against every key in constant time per comparison; the set is tiny.
        for digest, principal in self._by_hash.items():
            if hmac.compare_digest(digest, wanted):
                found = principal
        return found

    def __repr__(self) -> str:
        return f"StaticKeys({len(self._by_hash)} keys)"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    default_user TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class KeyRegistry:
    """API keys in a SQLite file (created with its directory on first use).

    Every method opens its own short-lived connection, so one registry object can be used from
    any thread, and keys created or revoked by the CLI take effect on the running server at its
    next request. The constructor does no I/O.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"KeyRegistry(path={str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open the key registry {self.path}: {exc}") from exc
        try:
            with conn:  # one transaction: commit on success, roll back on error
                conn.execute(_SCHEMA)
                yield conn
        except sqlite3.IntegrityError as exc:
            raise InvalidInputError(f"key registry: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"key registry {self.path}: {exc}") from exc
        finally:
            conn.close()

    def create(
        self, name: str, *, tenant: str | None = None, default_user: str = DEFAULT_USER
    ) -> tuple[str, KeyInfo]:
        """Issue a key. Returns ``(key, info)``; the key is not stored and cannot be shown again.

        ``tenant`` defaults to ``name``; give several keys the same tenant to share memory.

        Raises:
            ConfigError: a malformed name, tenant or default user.
            InvalidInputError: a key with this name exists (revoked ones included).
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"key name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ @ - "
                "starting with a letter or digit"
            )
        tenant = check_tenant(tenant if tenant is not None else name)
        _check_default_user(default_user)
        key = generate_key()
        info = KeyInfo(
            id=uuid.uuid4().hex[:12],
            name=name,
            tenant=tenant,
            default_user=default_user,
            hint=key[: len(KEY_PREFIX) + 4],
            created_at=datetime.now(timezone.utc),
            revoked_at=None,
        )
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise InvalidInputError(f"a key named {name!r} already exists")
            conn.execute(
                "INSERT INTO api_keys (id, name, tenant, default_user, hash, hint, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    name,
                    tenant,
                    default_user,
                    hash_key(key),
                    info.hint,
                    info.created_at.isoformat(),
                ),
            )
        return key, info

    def list(self) -> list[KeyInfo]:
        """Every key ever issued (revoked ones too), oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, name, tenant, default_user, hint, created_at, revoked_at "
                "FROM api_keys ORDER BY created_at, name"
            ).fetchall()
        return [
            KeyInfo(r[0], r[1], r[2], r[3], r[4], datetime.fromisoformat(r[5]), _dt(r[6]))
            for r in rows
        ]

    def revoke(self, name_or_id: str) -> bool:
        """Revoke the key with this name or id. Returns ``False`` when no active key matched."""
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (name = ? OR id = ?) "
                "AND revoked_at IS NULL",
                (datetime.now(timezone.utc).isoformat(), name_or_id, name_or_id),
            )
            return cur.rowcount > 0

    def resolve(self, key: str) -> Principal | None:
        """The principal of an active key, or ``None``.

        Looked up by the key's hash. The index lookup leaks nothing useful about the key (an
        attacker would need SHA-256 preimages); the final ``compare_digest`` keeps the check
        itself constant-time as well.
        """
        if not isinstance(key, str) or not key:
            return None
        digest = hash_key(key)
        with self._connect() as conn:
            row = conn.execute(
                "SELECT hash, name, tenant, default_user FROM api_keys "
                "WHERE hash = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return Principal(row[1], row[2], row[3])


class KeyChain:
    """Several resolvers tried in order (e.g. ``serve --dev-key`` next to a registry)."""

    def __init__(self, *resolvers: KeyResolver) -> None:
        self.resolvers = resolvers

    def resolve(self, key: str) -> Principal | None:
        for resolver in self.resolvers:
            found = resolver.resolve(key)
            if found is not None:
                return found
        return None


def default_keys_path(store_url: str | None = None) -> Path:
    """Where the key registry lives unless ``--keys`` says otherwise.

    Next to a SQLite store file (``memory.db`` → ``memory.keys.db``); for other stores (and
    in-memory SQLite) ``keys.db`` in the user data directory. Does no I/O.
    """
    if store_url:
        scheme = urlsplit(store_url).scheme.lower() if "://" in store_url else ""
        path: str | None = None
        if scheme == "":
            path = store_url
        elif scheme == "file":
            path = unquote(store_url[len("file://") :])
        elif scheme == "sqlite":
            rest = store_url.split("://", 1)[1]
            path = unquote(rest[1:] if rest.startswith("/") else rest)
        if path and path not in (":memory:", "/:memory:"):
            db = Path(path).expanduser()
            return db.with_name(db.stem + ".keys.db")
    import platformdirs

    return Path(platformdirs.user_data_dir("tiamat-hooks")) / "keys.db"
