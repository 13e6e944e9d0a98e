"""Typed records that flow between the SDK glue, recall and the stores.

A :class:`MemoryRecord` is one unit of memory: a conversation turn (any SDK input item: a message,
a tool call, a tool output, a handoff), a compaction summary, or a knowledge fact. Records are
immutable; a store assigns the per-session sequence number when the caller leaves it empty.

Contract shared by every store:

* ``user_id`` is required and non-empty; ``agent_id`` and ``session_id`` are optional.
* ``key`` is the idempotency key. Adding a record whose ``(user_id, key)`` is already stored is a
  no-op that returns the stored record, so retried writes never duplicate.
* ``seq`` numbers are per ``(user_id, session_id)``, start at 1 and are gap-free when the store
  assigns them.
* ``created_at`` is timezone-aware UTC (naive datetimes are taken as UTC).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidRecordError, InvalidScopeError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_TEXT_CHARS",
    "MemoryRecord",
    "RecordKind",
    "Scope",
    "SearchHit",
    "SessionInfo",
    "StoreCapabilities",
    "StoreStats",
    "make_record",
    "new_id",
    "utcnow",
]

RecordKind = Literal["turn", "summary", "fact"]
RECORD_KINDS: tuple[RecordKind, ...] = ("turn", "summary", "fact")

MAX_ID_LENGTH = 256
"""Longest user/agent/session id accepted."""

MAX_TEXT_CHARS = 1_000_000
"""Longest record text accepted (characters). Remote stores chunk what their API limits."""


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(timezone.utc)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_str(value: str, *, drop_nul: bool = True) -> str:
    """Replace lone surrogates (not encodable as UTF-8) with U+FFFD; drop NUL bytes if asked."""
    if drop_nul and "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # In a Python str every surrogate code point is a lone one (pairs are one code point).
        value = _SURROGATE.sub("\ufffd", value)
    return value


def clean_json(value: Any) -> Any:
    """``value`` made storable as strict JSON by every backend.

    Lone surrogates in strings become U+FFFD (NUL bytes are kept: JSON escapes them, and the
    original item must survive); non-finite floats (``inf``, ``nan``) become ``None``; tuples
    become lists; dict keys become strings. Anything else non-JSON is ``str()``-ed.
    """
    if isinstance(value, str):
        return _clean_str(value, drop_nul=False)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_clean_str(str(k), drop_nul=False): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return _clean_str(str(value), drop_nul=False)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _check_id(name: str, value: str | None, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidScopeError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidScopeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidScopeError(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidScopeError(f"{name} is longer than {MAX_ID_LENGTH} characters")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidScopeError(f"{name} must not contain control characters")
    return value


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose memory an operation touches. Chosen by the application, never by the model.

    ``user_id`` is required. ``agent_id`` and ``session_id`` narrow the scope when set; as a
    search filter ``None`` means "any".
    """

    user_id: str
    agent_id: str | None = field(default=None, kw_only=True)
    session_id: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_id("user_id", self.user_id, required=True)
        _check_id("agent_id", self.agent_id, required=False)
        _check_id("session_id", self.session_id, required=False)


def new_id() -> str:
    """A new unique id: the 32 hex digits of a UUIDv7 (RFC 9562).

    The first 48 bits are the Unix time in milliseconds and the rest (version and variant bits
    aside) are 74 random bits, so ids are unique without coordination, like UUIDv4, and also
    ordered by the millisecond they were made in (within one millisecond, or if the wall clock
    steps back, the order is random). The order is what matters: B-tree indexes on ids (SQLite,
    Postgres) then take new ids at their right edge, where random ids dirty a random leaf page
    per insert. Growing a store to a million turns in batches of 1,000 (``tiamat-hooks bench
    latency``), the last 900k were written at 16k turns/s with random ids and 21-25k with these.
    """
    value = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(
        os.urandom(10), "big"
    )
    value = (value & ~(0xF << 76)) | 0x7 << 76  # version 7
    value = (value & ~(0x3 << 62)) | 0x2 << 62  # variant 10 (RFC 9562)
    return f"{value:032x}"


class MemoryRecord(BaseModel):
    """One stored unit of memory. See the module docstring for the contract."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_id)
    user_id: str
    agent_id: str | None = None
    session_id: str | None = None
    kind: RecordKind = "turn"
    role: str | None = None
    text: str
    item: dict[str, Any] | None = None
    """The original SDK input item (JSON-able), when the record is a turn."""
    created_at: datetime = Field(default_factory=utcnow)
    seq: int | None = Field(default=None, ge=1)
    key: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Kind-specific data: a summary's covered ``seq_from``/``seq_to``, a fact's triple..."""

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str) -> str:
        _check_id("user_id", v, required=True)
        return v

    @field_validator("agent_id", "session_id")
    @classmethod
    def _optional_ids(cls, v: str | None) -> str | None:
        return _check_id("id", v, required=False)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        v = _clean_str(v)
        if len(v) > MAX_TEXT_CHARS:
            raise ValueError(f"text is longer than {MAX_TEXT_CHARS} characters")
        return v

    @field_validator("item", "meta")
    @classmethod
    def _json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        cleaned: dict[str, Any] = clean_json(v)
        return cleaned

    @field_validator("role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return None if v is None else _clean_str(v)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        # A key is an identity: silently changing it could merge two records into one.
        if "\x00" in v or _clean_str(v) != v:
            raise ValueError("key must not contain NUL bytes or lone surrogates")
        return v

    @field_validator("created_at")
    @classmethod
    def _created(cls, v: datetime) -> datetime:
        return _as_utc(v)

    @model_validator(mode="after")
    def _default_key(self) -> MemoryRecord:
        if not self.key:
            object.__setattr__(self, "key", content_key(self))
        return self

    def scope(self) -> Scope:
        return Scope(self.user_id, agent_id=self.agent_id, session_id=self.session_id)


def content_key(record: MemoryRecord) -> str:
    """A stable idempotency key derived from what a record says and where it belongs.

    Used when the caller gives no key: the same turn written twice (a retry) maps to one record.
    Callers that legitimately store identical content twice pass their own keys.
    """
    payload = json.dumps(
        [
            record.user_id,
            record.agent_id,
            record.session_id,
            record.kind,
            record.role,
            record.text,
            record.seq,
            record.created_at.isoformat(),
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def make_record(**fields: Any) -> MemoryRecord:
    """Build a :class:`MemoryRecord`, turning validation failures into typed package errors.

    Raises:
        InvalidScopeError: a user/agent/session id is missing or malformed.
        InvalidRecordError: anything else about the record is malformed.
    """
    try:
        return MemoryRecord(**fields)
    except InvalidScopeError:
        raise
    except ValidationError as exc:
        locs = {str(err["loc"][0]) for err in exc.errors() if err.get("loc")}
        if locs & {"user_id", "agent_id", "session_id"}:
            raise InvalidScopeError(str(exc)) from exc
        raise InvalidRecordError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A record that matched a search, with the store's relevance score (higher is better).

    ``span`` is the ``(start, end)`` character range of the record text that matched when the
    store indexes long records in parts; ``None`` means the whole text.
    """

    record: MemoryRecord
    score: float
    span: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Summary of one stored session."""

    user_id: str
    session_id: str | None
    records: int
    first_at: datetime | None
    last_at: datetime | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for a whole store or one user."""

    users: int
    sessions: int
    records: int
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a store can do beyond the common contract. Callers adapt instead of failing.

    ``can_delete``: ``delete`` removes records (the hosted TIAMAT API cannot).
    ``max_search_limit``: the largest ``limit`` one search honours.
    ``neighbors``: ``read`` by sequence range is cheap enough to call on the recall path.
    """

    can_delete: bool = True
    max_search_limit: int = 1000
    neighbors: bool = True
