"""Shared fixtures: stores for the contract suite, random scopes, the Postgres URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

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


# Every backend registers a factory here; the contract suite runs once per entry.
STORE_FACTORIES: dict[str, StoreFactory] = {"sqlite": _sqlite_factory}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryStore]:
    factory = STORE_FACTORIES[request.param]
    s = await factory(tmp_path)
    try:
        yield s
    finally:
        await s.close()
