"""Redaction of secrets and personal data before memory is stored or sent.

:class:`RedactingStore` wraps any :class:`~tiamat_hooks.stores.base.MemoryStore` and rewrites
every record passed to ``add`` through a :class:`Redactor` before the inner store sees it: the
``text``, every string inside the ``item`` JSON (the verbatim SDK item) and every string value
inside ``meta`` (a fact's triple, a summary's notes). Ids, ``key``, ``kind``, ``role``, ``seq``
and ``created_at`` are left alone: they are chosen by the application, and the idempotency key
must stay the same across retries of the same (unredacted) write so retries never duplicate.

:func:`~tiamat_hooks.stores.open_store` wraps remote stores (``http(s)://``) by default, because
their data leaves the machine; local stores are wrapped only on request (``redact=True`` or a
:class:`Redactor`).

:class:`DefaultRedactor` replaces, in this order (an earlier kind wins where two overlap):

=================  ==============================================================================
``api_key``        ``sk-...`` / ``sk-proj-...`` (OpenAI-style), ``sk_live_``/``rk_test_``...
                   (Stripe), ``AIza...`` (Google), ``xox[abprs]-...`` (Slack)
``token``          ``Bearer <token>`` (the word ``Bearer`` is kept), JSON Web Tokens
``aws_key``        AWS access key ids (``AKIA``/``ASIA``... + 16 characters)
``github_token``   ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` tokens and ``github_pat_...``
``secret``         the value after ``api_key=``, ``token:``, ``password=``, ``secret=``,
                   ``aws_secret_access_key=``... (6+ characters; quotes and JSON ``"key": "v"``
                   forms too; the name is kept)
``email``          e-mail addresses
``card``           13–19 digit numbers (spaces or dashes allowed) that pass the Luhn check; a
                   number that fails it is left as it is
``phone``          phone numbers written with a leading ``+`` (9–15 digits) or with 9–12 digits and
                   separators (``+1 415 555 0100``, ``(415) 555-0100``, ``030 1234 5678``);
                   ISO dates and bare digit runs (timestamps, order ids) are not touched
=================  ==============================================================================

Each match becomes ``[REDACTED:<kind>]``. Redaction is idempotent: redacted text has nothing
left to redact. It is pattern based: it lowers the risk, it does not prove absence of secrets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .models import (
    MemoryRecord,
    make_record,
)
from .stores.base import MemoryStore
from .stores.wrapper import StoreWrapper

__all__ = ["DefaultRedactor", "RedactingStore", "Redactor", "luhn_valid", "redact_record"]


@runtime_checkable
class Redactor(Protocol):
    """Anything with ``redact(text) -> text``. Must be pure and must not raise on any string."""

    def redact(self, text: str) -> str: ...


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (card numbers do)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


# Secret-like names whose value is redacted; the name itself stays readable.
_SECRET_NAMES = (
    r"api[_-]?key|apikey|x-api-key|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?access)?[_-]?key"
    r"|aws[_-]?secret[_-]?access[_-]?key|client[_-]?secret|secret|access[_-]?token"
    r"|refresh[_-]?token|auth[_-]?token|token|password|passwd|pwd|private[_-]?key"
)

_SUBS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    # Provider keys with recognisable prefixes.
    (
        re.compile(
            r"(?<![A-Za-z0-9])(?:sk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{16,}"
            r"|[rs]k_(?:live|test)_[A-Za-z0-9]{10,}|AIza[0-9A-Za-z_\-]{35}"
            r"|xox[abprs]-[A-Za-z0-9\-]{10,})"
        ),
        lambda m: _marker("api_key"),
    ),
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
        lambda m: _marker("github_token"),
    ),
    (
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[0-9A-Z]{16}\b"),
        lambda m: _marker("aws_key"),
    ),
    (
        re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}"),
        lambda m: _marker("token"),
    ),
    (
        re.compile(r"\b(Bearer)\s+(?!\[REDACTED)[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
        lambda m: f"{m.group(1)} {_marker('token')}",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9])({_SECRET_NAMES})(\"|')?(\s*[:=]\s*|\s+is\s+)(\"|')?"
            r"(?!\[REDACTED)([^\s\"',;&}\]]{6,})",
            re.IGNORECASE,
        ),
        lambda m: (
            f"{m.group(1)}{m.group(2) or ''}{m.group(3)}{m.group(4) or ''}{_marker('secret')}"
        ),
    ),
    (
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
        ),
        lambda m: _marker("email"),
    ),
)

_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?|\d{1,5}[ .\-])(?:\d{2,5}[ .\-]){0,3}"
    r"\d{3,5}(?![\w])"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    return _marker("card") if 13 <= len(digits) <= 19 and luhn_valid(digits) else m.group(0)


def _phone(m: re.Match[str]) -> str:
    raw = m.group(0)
    if _ISO_DATE.search(raw):
        return raw
    digits = sum(ch.isdigit() for ch in raw)
    # With a "+" it is a phone number (E.164 allows 15 digits; cards are never written so);
    # without, stop at 12 digits so a 13-19 digit number that failed the Luhn check survives.
    top = 15 if raw.startswith("+") else 12
    return _marker("phone") if 9 <= digits <= top else raw


class DefaultRedactor:
    """Removes API keys, tokens, e-mail addresses, card numbers and phone numbers.

    See the module docstring for what each pattern catches. ``extra`` adds ``(pattern, kind)``
    pairs applied after the built-in secret patterns (before e-mails, cards and phones).
    """

    def __init__(self, *, extra: Sequence[tuple[str | re.Pattern[str], str]] = ()) -> None:
        self._extra = tuple(
            (re.compile(p) if isinstance(p, str) else p, _marker(kind)) for p, kind in extra
        )

    def __repr__(self) -> str:
        return f"DefaultRedactor(extra={len(self._extra)})"

    def redact(self, text: str) -> str:
        if not text:
            return text
        for pattern, sub in _SUBS:
            text = pattern.sub(sub, text)
        for pattern, marker in self._extra:
            text = pattern.sub(marker, text)
        # Cards before phones: a valid card number must never be half-eaten as a phone number.
        text = _CARD.sub(_card, text)
        return _PHONE.sub(_phone, text)


def redact_json(value: Any, redactor: Redactor) -> Any:
    """``value`` with every string in it (at any depth) passed through ``redactor``."""
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, redactor) for v in value]
    return value


def redact_record(record: MemoryRecord, redactor: Redactor) -> MemoryRecord:
    """``record`` with ``text``, every string in ``item`` and every string in ``meta`` redacted.

    Everything else (ids, ``key``, ``seq``, times) is unchanged. The result is validated again.

    Raises:
        InvalidRecordError: the redacted record is not valid (e.g. the text grew past the limit).
    """
    text = redactor.redact(record.text)
    item = redact_json(record.item, redactor) if record.item is not None else None
    meta = redact_json(record.meta, redactor) if record.meta else record.meta
    if text == record.text and item == record.item and meta == record.meta:
        return record
    fields = record.model_dump()
    fields.update(text=text, item=item, meta=meta)
    return make_record(**fields)


class RedactingStore(StoreWrapper):
    """A store that redacts every record before ``add`` hands it to ``inner``.

    Implements the store contract by delegation: reads, search, delete, stats and ``close``
    go to ``inner`` unchanged (``close`` closes ``inner``). The optional capabilities
    ``read_around``, ``integrity_check``, ``analyze`` and the remote store's outbox methods are
    passed through when ``inner`` has them; any other attribute of ``inner`` is not exposed.

    ``add`` returns what ``inner`` stored, i.e. the redacted records.
    """

    def __init__(self, inner: MemoryStore, redactor: Redactor | None = None) -> None:
        super().__init__(inner)
        self.redactor: Redactor = redactor if redactor is not None else DefaultRedactor()

    def __repr__(self) -> str:
        return f"RedactingStore({self.inner!r}, redactor={self.redactor!r})"

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        batch = list(records)
        # Non-records are left for the inner store to reject with its own typed error.
        redacted = [
            redact_record(r, self.redactor) if isinstance(r, MemoryRecord) else r for r in batch
        ]
        return await self.inner.add(redacted)
