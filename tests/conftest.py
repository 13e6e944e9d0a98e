"""Shared fixtures: stores for the contract suite, random scopes, the Postgres URL."""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tiamat_hooks.stores import MemoryStore, SQLiteMemoryStore

POSTGRES_URL = os.environ.get(
    "TIAMAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def new_id(prefix: str = "u") -> str:
    """A fresh random id: tests isolate by ids, not by resetting databases."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def user_id() -> str:
    return new_id("user")


@pytest.fixture
def session_id() -> str:
    return new_id("sess")


StoreFactory = Callable[[Path], Awaitable[MemoryStore]]


async def _sqlite_factory(tmp_path: Path) -> MemoryStore:
    return SQLiteMemoryStore(tmp_path / "memory.db")


# -- Postgres ------------------------------------------------------------------------------------

POSTGRES_SCHEMA = f"tiamat_test_{uuid.uuid4().hex[:12]}"
"""This test run's own schema: created by the first store that uses it, dropped at session end."""

_T = TypeVar("_T")
_postgres_used = False


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a fresh loop in a worker thread (callable from a loop too)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def postgres_url(schema: str = POSTGRES_SCHEMA) -> str:
    """``POSTGRES_URL`` with ``?schema=`` set, for code that takes one store URL string."""
    parts = urlsplit(POSTGRES_URL)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@functools.cache
def _postgres_unavailable() -> str | None:
    """Why the test Postgres cannot be used, or ``None`` when it can. Probed once per run."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'tiamat-hooks[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    try:
        run_sync(probe())
    except Exception as exc:
        return f"Postgres at {POSTGRES_URL} is unreachable: {type(exc).__name__}: {exc}"
    return None


def need_postgres() -> None:
    """Skip the calling test when Postgres is unreachable; fail it instead when running in CI."""
    global _postgres_used
    reason = _postgres_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the Postgres tests)")
        pytest.skip(reason)
    _postgres_used = True


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schema() -> Iterator[None]:
    yield
    if _postgres_used:
        run_sync(_drop_schema(POSTGRES_SCHEMA))


async def _postgres_factory(tmp_path: Path) -> MemoryStore:
    need_postgres()
    from tiamat_hooks.stores.postgres import PostgresMemoryStore

    return PostgresMemoryStore.from_url(POSTGRES_URL, schema=POSTGRES_SCHEMA, max_size=4)


# -- TIAMAT cloud (the hosted API, faked in process) ----------------------------------------------


async def _cloud_factory(tmp_path: Path) -> MemoryStore:
    from tests.fake_tiamat import FakeTiamat
    from tiamat_hooks.stores.cloud import TiamatCloudStore

    fake = FakeTiamat(api_key="test-key")
    # strict=True and a generous deadline: a contract case must fail loudly, never by failing open.
    return TiamatCloudStore(
        "https://tiamat.test",
        "test-key",
        transport=fake.transport,
        outbox=tmp_path / "outbox.db",
        retry_base_delay=0.0,
        recall_deadline=10.0,
        strict=True,
    )


# -- the self-hosted server (tiamat_hooks.server) through the HTTP client, in process -----------


async def _server_factory(tmp_path: Path) -> MemoryStore:
    import httpx

    from tiamat_hooks.server import create_app
    from tiamat_hooks.stores.cloud import TiamatCloudStore

    backing = SQLiteMemoryStore(tmp_path / "server.db")
    app = create_app(backing, keys={"server-key": "tenant-a"})

    class ServerBackedStore(TiamatCloudStore):
        async def close(self) -> None:
            try:
                await super().close()
            finally:
                await backing.close()

    # strict=True and a generous deadline, as for "cloud": no case may pass by failing open.
    store = ServerBackedStore(
        "http://tiamat-server.test",
        "server-key",
        transport=httpx.ASGITransport(app=app),
        outbox=tmp_path / "outbox.db",
        retry_base_delay=0.0,
        recall_deadline=10.0,
        strict=True,
    )
    # The client detects the server's extensions on its first operation; contract cases read
    # ``capabilities`` before any, so detect now (as an application branching on them would).
    await store.refresh_capabilities()
    return store


# -- the redacting wrapper (tiamat_hooks.redaction) over SQLite -------------------------------


async def _redacting_factory(tmp_path: Path) -> MemoryStore:
    from tiamat_hooks.redaction import RedactingStore

    # The contract's records hold no secrets, so the wrapper must pass the contract unchanged.
    return RedactingStore(SQLiteMemoryStore(tmp_path / "memory.db"))


# -- dense retrieval fused with the lexical search (tiamat_hooks.embeddings) over SQLite -------


def require_extra(extra: str, missing: list[str]) -> None:
    """Skip locally when an optional extra's modules are ``missing``; fail in CI, which installs
    every extra through ``.[dev]`` and must test them."""
    if missing:
        reason = f"the {extra} extra is not installed ({', '.join(missing)})"
        if IN_CI:
            pytest.fail(f"{reason}; CI must test it")
        pytest.skip(reason)


async def _hybrid_factory(tmp_path: Path) -> MemoryStore:
    from tiamat_hooks.embeddings import HybridStore, _missing_extra, default_embedder

    require_extra("embeddings", _missing_extra())
    # One model per test session (default_embedder is shared); the store is fresh per case.
    return HybridStore(SQLiteMemoryStore(":memory:"), default_embedder())


# Every backend registers a factory here; the contract suite runs once per entry.
STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite": _sqlite_factory,
    "postgres": _postgres_factory,
    "cloud": _cloud_factory,
    "server": _server_factory,
    "redacting": _redacting_factory,
    "hybrid": _hybrid_factory,
}
# Marks for a backend's parameter of the ``store`` fixture (select with ``-m "not postgres"``).
STORE_MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {"postgres": (pytest.mark.postgres,)}


@pytest.fixture(
    params=[pytest.param(name, marks=STORE_MARKS.get(name, ())) for name in sorted(STORE_FACTORIES)]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryStore]:
    factory = STORE_FACTORIES[request.param]
    s = await factory(tmp_path)
    try:
        yield s
    finally:
        await s.close()


def pytest_configure(config: pytest.Config) -> None:
    # The reliability suite (faults, crashes, fuzzing, isolation, injection, redaction):
    # ``pytest -m reliability`` runs just it.
    config.addinivalue_line(
        "markers", "reliability: the reliability and security suite (pytest -m reliability)"
    )
