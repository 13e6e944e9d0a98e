"""Unit tests of the hooks' pure helpers: replayed-history detection, options, flush."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner
from agents.testing import ScriptedModel, assistant_message

import tiamat_hooks.hooks as hooks_module
from tiamat_hooks.errors import ConfigError, InvalidScopeError
from tiamat_hooks.hooks import TiamatHooks, _replayed_prefix
from tiamat_hooks.stores import SQLiteMemoryStore


def tail(*names: str) -> list[tuple[str, bool]]:
    """Stored turns; a name starting with ``call`` is a tool call."""
    return [(n, n.startswith("call")) for n in names]


@pytest.mark.parametrize(
    ("fps", "stored", "expected"),
    [
        # Nothing stored: everything is new.
        (["hi"], [], 0),
        # Full history replayed, then new input.
        (["u1", "a1", "u2"], tail("u1", "a1"), 2),
        # A new conversation opening like an old one is not history (it does not end the tail).
        (["hi"], tail("hi", "hello"), 0),
        # Session limit: only the newest stored items are replayed.
        (["a1", "u2", "a2", "u3"], tail("u1", "a1", "u2", "a2"), 3),
        # Repeated messages: order decides.
        (["ok", "yes", "ok"], tail("ok", "yes"), 2),
        (["yes", "ok"], tail("ok", "yes"), 1),
        # The SDK dropped an orphan tool call at the end of the stored session.
        (["u1", "a1", "u2"], tail("u1", "a1", "call-1"), 2),
        # ...or one in the middle (items may be skipped).
        (["u1", "a1", "u2"], tail("u1", "call-1", "a1"), 2),
        # The caller replays history we never stored: stored as new.
        (["x1", "x2", "u"], tail("u1", "a1"), 0),
    ],
)
def test_replayed_prefix(fps: list[str], stored: list[tuple[str, bool]], expected: int) -> None:
    assert _replayed_prefix(fps, stored) == expected


def test_options_are_validated(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db")
    with pytest.raises(ConfigError):
        TiamatHooks(store, user_id=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TiamatHooks(store, user_id="u", role="assistant")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TiamatHooks(store, user_id="u", token_budget=-1)
    hooks = TiamatHooks(store, user_id="u", top_k=3, token_budget=300)
    assert (hooks.recall_config.top_k, hooks.recall_config.budget) == (3, 300)


def test_constructor_does_no_io(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "memory.db"
    TiamatHooks(f"sqlite:///{db}", user_id="u")
    assert not db.parent.exists()


@pytest.mark.parametrize(
    ("user_id", "error"), [(lambda ctx: "", ConfigError), ("bad\x00id", InvalidScopeError)]
)
async def test_a_bad_user_id_fails_the_run(user_id: Any, error: type[Exception]) -> None:
    hooks = TiamatHooks("sqlite://:memory:", user_id=user_id)
    model = ScriptedModel([[assistant_message("never")]])
    with pytest.raises(error):
        await Runner.run(Agent(name="a", model=model), "hello", hooks=hooks)


async def test_unverified_sdk_version_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(hooks_module, "_sdk_version", lambda: (0, 99))
    db = f"sqlite:///{tmp_path / 'm.db'}"
    async with TiamatHooks(db, user_id="u", session_id="s1") as hooks:
        model = ScriptedModel([[assistant_message("ok", item_id="m0")]])
        await Runner.run(Agent(name="a", model=model), "My bike is a red Gazelle.", hooks=hooks)
    with caplog.at_level(logging.WARNING, logger="tiamat_hooks"):
        async with TiamatHooks(db, user_id="u", session_id="s2") as hooks:
            for n in range(2):
                model = ScriptedModel([[assistant_message("ok", item_id=f"m{n}")]])
                await Runner.run(Agent(name="a", model=model), "Which bike do I ride?", hooks=hooks)
            assert hooks.stats.injections == 2
    warnings = [r for r in caplog.records if "hooks.wrap()" in r.getMessage()]
    assert len(warnings) == 1


def test_flush_sync_refuses_to_run_inside_a_loop() -> None:
    hooks = TiamatHooks("sqlite://:memory:", user_id="u")

    async def inside() -> None:
        hooks.flush_sync()

    with pytest.raises(RuntimeError, match="await flush"):
        asyncio.run(inside())


@pytest.mark.parametrize("user_name", ["", "   ", 3, b"Ann", ["Ann"]])
def test_user_name_is_validated(tmp_path: Path, user_name: Any) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db")
    with pytest.raises(ConfigError, match="user_name"):
        TiamatHooks(store, user_id="u", user_name=user_name)
    assert TiamatHooks(store, user_id="u", user_name="Ann").user_name == "Ann"


async def test_a_bad_user_name_callable_fails_the_run() -> None:
    hooks = TiamatHooks("sqlite://:memory:", user_id="u", user_name=lambda ctx: "")
    model = ScriptedModel([[assistant_message("never")]])
    with pytest.raises(ConfigError):
        await Runner.run(Agent(name="a", model=model), "hello", hooks=hooks)
