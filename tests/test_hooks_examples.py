"""The example scripts compile and import (they are not run: most need the real API)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "agent_with_memory.py",
        "per_user_scoping.py",
        "streaming.py",
        "with_session.py",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_imports(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"example_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)  # runs module level only; main() is behind __main__
    assert callable(module.main)
