"""Redaction: secrets and personal data never reach a store through ``RedactingStore``.

The strongest check reads the raw bytes of every database file involved (the server's store and
the client's outbox) and asserts no secret appears anywhere, not only in ``text``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents import Agent, RunConfig, Runner
from agents.testing import ScriptedModel, assistant_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiamat_hooks import ConfigError, TiamatCloudStore, learn
from tiamat_hooks.hooks import TiamatHooks
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.redaction import DefaultRedactor, RedactingStore, luhn_valid, redact_record
from tiamat_hooks.stores import SQLiteMemoryStore, open_store

pytestmark = pytest.mark.reliability

SECRETS: list[tuple[str, str, str]] = [
    # (text, the secret that must disappear, the marker kind)
    ("my key is sk-proj-Abc123def456GHI789jkl0", "sk-proj-Abc123def456GHI789jkl0", "api_key"),
    ("use sk-1234567890abcdefXYZ7 please", "sk-1234567890abcdefXYZ7", "api_key"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "api_key"),
    ("Authorization: Bearer abc.DEF-ghi_jkl12345", "abc.DEF-ghi_jkl12345", "token"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "aws_key"),
    (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "secret",
    ),
    ("token ghp_" + "a1B2" * 9 + " leaked", "ghp_" + "a1B2" * 9, "github_token"),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghij", "github_pat_11ABCDEFG0123456789", "github"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9",
        "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        "token",
    ),
    ("config api_key=abcdef123456 done", "abcdef123456", "secret"),
    ('{"api_key": "zz9zz9zz9zz9"}', "zz9zz9zz9zz9", "secret"),
    ("my password is hunter2hunter", "hunter2hunter", "secret"),
    ("mail ann.lee+travel@example.co.uk today", "ann.lee+travel@example.co.uk", "email"),
    ("visa 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111", "card"),
    ("amex 378282246310005", "378282246310005", "card"),
    ("call +1 415 555 0100", "415 555 0100", "phone"),
    ("or (415) 555-0100 at night", "555-0100", "phone"),
    ("Berlin: 030 1234 5678", "1234 5678", "phone"),
    ("intl +4915112345678", "4915112345678", "phone"),
]

KEEP = [
    "On 2024-01-01 10:30 we met at the cafe.",
    "The order 1700000000 shipped; 12345 steps walked; pi is 3.14159.",
    "visa 4111 1111 1111 1112 is not a valid card number",  # fails the Luhn check
    "We were 10-12 people in room 404, budget 2500 EUR.",
    "Bearer of bad news, token of appreciation, the password field is empty.",
    "sk-short and AKIA alone are not keys",
]


@pytest.mark.parametrize(("text", "secret", "kind"), SECRETS)
def test_default_redactor_removes_each_kind(text: str, secret: str, kind: str) -> None:
    out = DefaultRedactor().redact(text)
    assert secret not in out
    assert f"[REDACTED:{kind}" in out


@pytest.mark.parametrize("text", KEEP)
def test_default_redactor_keeps_ordinary_text(text: str) -> None:
    assert DefaultRedactor().redact(text) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41x1")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_redaction_never_raises_and_is_idempotent(text: str) -> None:
    r = DefaultRedactor()
    once = r.redact(text)
    assert r.redact(once) == once


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.text(alphabet="abcdefgh ,.", max_size=40),
    suffix=st.text(alphabet="abcdefgh ,.", max_size=40),
    secret=st.sampled_from([s for _, s, k in SECRETS if k in ("api_key", "aws_key", "email")]),
)
def test_secret_is_removed_wherever_it_sits(prefix: str, suffix: str, secret: str) -> None:
    out = DefaultRedactor().redact(f"{prefix} {secret} {suffix}")
    assert secret not in out


def test_extra_patterns() -> None:
    r = DefaultRedactor(extra=[(r"EMP-\d{6}", "employee_id")])
    assert r.redact("badge EMP-123456") == "badge [REDACTED:employee_id]"


# -- the store wrapper ---------------------------------------------------------------------------

KEY = "sk-proj-Zx9Yw8Vu7Ts6Rq5Po4Nm3"
MAIL = "maya.k@example.org"
CARD = "4242 4242 4242 4242"


def _secret_bytes_in(path: Path) -> list[str]:
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # db, -wal, -shm
    return [s for s in (KEY, MAIL, CARD, "4242424242424242") if s.encode() in raw]


async def test_redacting_store_redacts_text_item_and_meta_of_every_kind(
    tmp_path: Path, user_id: str
) -> None:
    inner = SQLiteMemoryStore(tmp_path / "memory.db")
    store = RedactingStore(inner)
    scope = Scope(user_id, session_id="s1")
    turn = make_record(
        user_id=user_id,
        session_id="s1",
        role="user",
        text=f"my key is {KEY} and mail {MAIL}",
        item={
            "role": "user",
            "content": [{"type": "input_text", "text": f"my key is {KEY}, card {CARD}"}],
        },
    )
    summary = make_record(
        user_id=user_id,
        session_id="s1",
        kind="summary",
        text=f"The user shared card {CARD}.",
        meta={"seq_from": 1, "seq_to": 1, "notes": [f"mail {MAIL}"]},
    )
    stored = await store.add([turn, summary])
    fact = await learn(store, scope, "maya", "email is", MAIL)
    assert stored[0].key == turn.key  # the idempotency key survives redaction
    # Retrying the same (unredacted) write is a no-op, as the contract says.
    again = await store.add([turn])
    assert again[0].id == stored[0].id
    records = await inner.read(Scope(user_id))
    assert len(records) == 3
    assert {r.kind for r in records} == {"turn", "summary", "fact"}
    dumped = json.dumps([r.model_dump(mode="json") for r in records])
    for secret in (KEY, MAIL, CARD):
        assert secret not in dumped
    assert "[REDACTED:api_key]" in records[0].text
    assert "[REDACTED:card]" in json.dumps(records[0].item)
    assert fact.meta and MAIL not in json.dumps(fact.meta)
    await store.close()
    assert _secret_bytes_in(tmp_path / "memory.db") == []


async def test_redact_record_keeps_clean_records_identical(user_id: str) -> None:
    r = make_record(user_id=user_id, text="nothing secret here", item={"content": "hi"})
    assert redact_record(r, DefaultRedactor()) is r


async def test_wrapper_passes_through_read_capabilities_only(tmp_path: Path) -> None:
    store = RedactingStore(SQLiteMemoryStore(tmp_path / "m.db"))
    assert callable(store.read_around)
    assert callable(store.integrity_check)
    with pytest.raises(AttributeError):
        _ = store.learn  # a write path that would bypass redaction
    assert await store.integrity_check() == []
    await store.close()


async def test_open_store_redacts_remote_by_default_and_local_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIAMAT_API_KEY", "k")
    remote = open_store("https://tiamat.test", outbox=":memory:")
    assert isinstance(remote, RedactingStore)
    assert isinstance(remote.inner, TiamatCloudStore)
    plain = open_store("https://tiamat.test", outbox=":memory:", redact=False)
    assert isinstance(plain, TiamatCloudStore)
    local = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(local, SQLiteMemoryStore)
    opted = open_store(f"sqlite:///{tmp_path / 'b.db'}", redact=True)
    assert isinstance(opted, RedactingStore)

    class Upper:
        def redact(self, text: str) -> str:
            return text.upper()

    custom = open_store(f"sqlite:///{tmp_path / 'c.db'}", redact=Upper())
    assert isinstance(custom, RedactingStore)
    assert isinstance(custom.redactor, Upper)
    with pytest.raises(ConfigError):
        open_store(f"sqlite:///{tmp_path / 'd.db'}", redact="yes")  # type: ignore[arg-type]
    for s in (remote, plain, local, opted, custom):
        await s.close()


async def test_run_through_remote_store_sends_no_secret(tmp_path: Path) -> None:
    """End to end: Runner.run + TiamatHooks on ``open_store("http://...")`` against the real
    server app in process. Neither the server's database nor the client's outbox holds a secret,
    in any record kind (turns, the compaction summary, facts)."""
    from tiamat_hooks.server import create_app

    backing = SQLiteMemoryStore(tmp_path / "server.db")
    app = create_app(backing, keys={"key-a": "tenant-a"})
    store = open_store(
        "http://key-a@tiamat-server.test",
        transport=httpx.ASGITransport(app=app),
        outbox=tmp_path / "outbox.db",
        retry_base_delay=0.0,
        strict=True,
    )
    assert isinstance(store, RedactingStore)
    hooks = TiamatHooks(store, user_id="maya", strict=True, compact_after_tokens=8)
    model = ScriptedModel(
        [
            [assistant_message(f"Noted: your key {KEY} and email {MAIL}.", item_id="m1")],
            [assistant_message("ok", item_id="m2")],
        ]
    )
    agent = Agent(name="assistant", model=model)
    config = RunConfig(tracing_disabled=True)
    await Runner.run(
        agent, f"Remember my key {KEY}, mail {MAIL}, card {CARD}", hooks=hooks, run_config=config
    )
    await Runner.run(agent, "What else do you know about me? " * 5, hooks=hooks, run_config=config)
    await hooks.flush()
    await learn(store, Scope("maya"), "maya", "card", CARD)
    records = await store.read(Scope("maya"))
    kinds = {r.kind for r in records}
    assert {"turn", "fact"} <= kinds
    everything: Any = [r.model_dump(mode="json") for r in records]
    dumped = json.dumps(everything)
    assert "[REDACTED:api_key]" in dumped
    for secret in (KEY, MAIL, CARD):
        assert secret not in dumped
    await store.close()
    await backing.close()
    assert _secret_bytes_in(tmp_path / "server.db") == []
    assert _secret_bytes_in(tmp_path / "outbox.db") == []


async def test_replayed_history_with_a_secret_is_not_stored_again(tmp_path: Path) -> None:
    """A redacting store keeps redacted text; the hooks must still recognise replayed history.

    Without that, every run with an SDK Session would store the (redacted) history once more.
    """
    from agents import SQLiteSession

    store = RedactingStore(SQLiteMemoryStore(tmp_path / "m.db"))
    session = SQLiteSession("chat", str(tmp_path / "s.db"))
    messages = [
        "my card is 4111 1111 1111 1111 and mail me at ann@example.com",
        "what did I just tell you?",
        "thanks, bye",
    ]
    try:
        for i, text in enumerate(messages):
            hooks = TiamatHooks(store, user_id="ann", session_id="chat", compact_after_tokens=None)
            model = ScriptedModel([[assistant_message(f"reply {i}", item_id=f"m{i}")]])
            await Runner.run(
                Agent(name="a", model=model),
                text,
                hooks=hooks,
                session=session,
                run_config=RunConfig(tracing_disabled=True),
            )
            await hooks.flush()
        stored = await store.read(Scope("ann", session_id="chat"))
        assert len(stored) == len(await session.get_items()) == 2 * len(messages)
        assert "4111" not in stored[0].text
        assert "ann@example.com" not in json.dumps(stored[0].item)
    finally:
        session.close()
        await store.close()
