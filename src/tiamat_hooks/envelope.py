"""How a :class:`~tiamat_hooks.models.MemoryRecord` travels through the hosted TIAMAT memory API.

The hosted API stores opaque memories: ``{content: str ≤ 10,000 chars, tags: list[str] ≤ 20,
importance: float 0–1}``. A record is richer (scope, kind, role, seq, idempotency key, item...), so
it is packed into an *envelope* inside ``content`` and mirrored, hashed, into ``tags``. This
module is pure (no I/O): the HTTP client uses it today and a self-hosted server can use it later.

Content format (version 1)::

    tiamat-hooks/1 {"v":1,"id":...,"u":...,"k":"turn",...}\\n<record text>

The first line after the prefix is compact JSON holding every field except ``text``; the text
follows the first newline verbatim, so the hosted service's search mostly sees natural language.
JSON escapes newlines inside strings, so the first ``\\n`` always ends the header.

A record whose content would exceed ``max_chars`` is split into parts. The serialised record
``S = header + "\\n" + text`` is cut into chunks and each part is stored as::

    tiamat-hooks/1 part {"id":...,"i":0,"n":3,"g":"<group token>"}\\n<chunk of S>

Parts share the record id and key; joining the chunks of parts ``0..n-1`` gives back ``S``. A
record with a missing part is skipped by :func:`decode`, never returned half-read. Lengths are
counted in UTF-16 code units (an emoji counts 2), so the limit holds whether the service counts
Python characters or JavaScript string length.

Tags (each at most :data:`MAX_TAG_CHARS`, at most :data:`MAX_TAGS` per memory)::

    th:1              this memory is a tiamat-hooks envelope (format 1)
    u:<hash>          user          a:<hash>   agent      s:<hash>   session
    k:<kind>          turn/summary/fact
    key:<hash>        the idempotency key (hashed with the user id)
    q:<seq>           the sequence number, when set
    part:<i>/<n>      only on split records
    g:<token>         only on split records: the group token shared by its parts

User, agent and session ids and keys appear in tags only as truncated SHA-256 hashes: the service
need not see raw ids in its (indexed, displayed) tags. The envelope in ``content`` keeps the real
ids, because a record must round-trip exactly; anything sent to the hosted service is visible to
it. Tags are prefilters and hints; :func:`decode` trusts only the envelope.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypedDict

from pydantic import ValidationError

from .errors import InvalidInputError, InvalidRecordError
from .models import MemoryRecord

__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "PART_PREFIX",
    "PREFIX",
    "DecodedMemory",
    "StorePayload",
    "decode",
    "decode_memories",
    "encode",
    "group_token",
    "id_hash",
    "incomplete_groups",
    "is_envelope",
    "key_tag",
    "payload_sizes",
    "scope_tags",
]

PREFIX = "tiamat-hooks/1 "
"""Every envelope's content starts with this (whole records)."""

PART_PREFIX = PREFIX + "part "
"""Content prefix of one part of a split record."""

MAX_CONTENT_CHARS = 10_000
"""The hosted API's content limit."""

MAX_TAGS = 20
"""The hosted API's tag-count limit."""

MAX_TAG_CHARS = 64
"""Longest tag this module emits (the API does not state one; tags stay short on purpose)."""

_HASH_CHARS = 16  # 64 bits: collisions only ever widen a prefilter; the envelope decides.

_DEFAULT_IMPORTANCE = {"turn": 0.5, "summary": 0.7, "fact": 0.8}


class StorePayload(TypedDict):
    """The JSON body of one ``POST /api/memory/store``."""

    content: str
    tags: list[str]
    importance: float


@dataclass(frozen=True, slots=True)
class DecodedMemory:
    """A record read back from the service, with where it came from.

    ``rank`` is the position of the record's first part in the input (0 = first), ``score`` the
    service's own relevance score when it sent one (``score``/``similarity``/``relevance``), and
    ``server_ids`` the ids of the memories that held it (several when it was split).
    """

    record: MemoryRecord
    rank: int
    score: float | None = None
    server_ids: tuple[str, ...] = field(default_factory=tuple)


# -- hashing ---------------------------------------------------------------------------------


def id_hash(*parts: str) -> str:
    """A short stable hash of ids, joined with an ASCII unit separator so ``("a","bc")`` and
    ``("ab","c")`` differ."""
    raw = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]


def key_tag(user_id: str, key: str) -> str:
    """The ``key:`` tag of a record: its idempotency key hashed with its user id."""
    return "key:" + id_hash(user_id, key)


def group_token(record: MemoryRecord) -> str:
    """A search-friendly token shared by every part of a split record (letters and digits only,
    so a full-text ``recall`` for it can find the sibling parts)."""
    return "thpart" + id_hash(record.user_id, record.key, record.id)


def scope_tags(
    user_id: str, agent_id: str | None = None, session_id: str | None = None
) -> list[str]:
    """The hashed scope tags for a user (and agent / session when given).

    Agent and session hashes include the user id, so equal session names of two users differ.
    """
    tags = ["u:" + id_hash(user_id)]
    if agent_id is not None:
        tags.append("a:" + id_hash(user_id, agent_id))
    if session_id is not None:
        tags.append("s:" + id_hash(user_id, session_id))
    return tags


# -- length in UTF-16 code units ---------------------------------------------------------------


def _units(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _earliest(a: str, b: str) -> str:
    """The earlier of two service timestamps, ignoring missing ones ("")."""
    return min(a, b) if a and b else a or b


def _split_units(text: str, size: int) -> list[str]:
    """Cut ``text`` into chunks of at most ``size`` UTF-16 units, never inside a code point."""
    if size < 2:
        raise ValueError("chunk size must be at least 2 code units")
    if text.isascii() or all(ord(ch) <= 0xFFFF for ch in text):
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]
    chunks: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        cost = 2 if ord(ch) > 0xFFFF else 1
        if used + cost > size:
            chunks.append(text[start:i])
            start, used = i, 0
        used += cost
    chunks.append(text[start:])
    return chunks


# -- encode ------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # ensure_ascii keeps the header free of lone surrogates and odd code points; compact
    # separators keep it short. Key order is fixed so encoding is deterministic (a retried write
    # sends byte-identical content).
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def _header(record: MemoryRecord) -> dict[str, Any]:
    head: dict[str, Any] = {
        "v": 1,
        "id": record.id,
        "u": record.user_id,
        "k": record.kind,
        "key": record.key,
        "t": record.created_at.astimezone(timezone.utc).isoformat(),
    }
    # Optional fields are omitted when empty to keep the header (and every part) small.
    if record.agent_id is not None:
        head["a"] = record.agent_id
    if record.session_id is not None:
        head["s"] = record.session_id
    if record.role is not None:
        head["r"] = record.role
    if record.seq is not None:
        head["q"] = record.seq
    if record.meta:
        head["m"] = record.meta
    if record.item is not None:
        head["i"] = record.item
    return head


def _base_tags(record: MemoryRecord) -> list[str]:
    tags = ["th:1", *scope_tags(record.user_id, record.agent_id, record.session_id)]
    tags.append("k:" + record.kind)
    tags.append(key_tag(record.user_id, record.key))
    if record.seq is not None:
        tags.append(f"q:{record.seq}")
    return tags


def encode(record: MemoryRecord, max_chars: int = MAX_CONTENT_CHARS) -> list[StorePayload]:
    """The payloads that store ``record``: one, or several parts when it is too long.

    Deterministic: the same record always encodes to the same payloads, so a retried or replayed
    write sends identical content. Every payload's content is at most ``max_chars`` UTF-16 code
    units and carries at most :data:`MAX_TAGS` tags of at most :data:`MAX_TAG_CHARS` characters.

    Raises:
        InvalidRecordError: ``record`` is not a :class:`MemoryRecord`, its metadata/item is not
            JSON-serialisable, its text holds lone surrogates, or ``max_chars`` is too small to
            hold a part header.
    """
    if not isinstance(record, MemoryRecord):
        raise InvalidRecordError(f"encode() takes a MemoryRecord, got {type(record).__name__}")
    try:
        header = _dumps(_header(record))
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"record {record.id!r} is not JSON-serialisable: {exc}") from exc
    try:
        record.text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates cannot travel as JSON over HTTP; fail before anything is queued.
        raise InvalidRecordError(f"record {record.id!r} text is not valid Unicode: {exc}") from exc
    importance = float(_DEFAULT_IMPORTANCE.get(record.kind, 0.5))
    tags = _base_tags(record)
    body = header + "\n" + record.text
    whole = PREFIX + body
    if _units(whole) <= max_chars:
        return [StorePayload(content=whole, tags=tags, importance=importance)]

    token = group_token(record)
    n = 2
    # The part header's length depends on the number of parts (its digits), so iterate until
    # the count is stable. Converges in two or three rounds.
    for _ in range(10):
        widest = PART_PREFIX + _dumps({"g": token, "i": n - 1, "id": record.id, "n": n}) + "\n"
        room = max_chars - _units(widest)
        if room < 16:
            raise InvalidRecordError(
                f"max_chars={max_chars} is too small to split a record into parts"
            )
        chunks = _split_units(body, room)
        if len(chunks) == n:
            break
        n = len(chunks)
    else:  # pragma: no cover - the loop converges: n only grows while room shrinks by digits
        raise InvalidRecordError("could not split the record into parts")
    payloads = []
    for i, chunk in enumerate(chunks):
        part_header = _dumps({"g": token, "i": i, "id": record.id, "n": n})
        payloads.append(
            StorePayload(
                content=PART_PREFIX + part_header + "\n" + chunk,
                tags=[*tags, f"part:{i}/{n}", "g:" + token[len("thpart") :]],
                importance=importance,
            )
        )
    return payloads


# -- decode ------------------------------------------------------------------------------------


def is_envelope(memory: Mapping[str, Any]) -> bool:
    """Whether a memory returned by the service looks like one of ours (whole or part)."""
    content = memory.get("content") if isinstance(memory, Mapping) else None
    return isinstance(content, str) and content.startswith(PREFIX)


def _parse_body(body: str) -> MemoryRecord | None:
    head_text, sep, text = body.partition("\n")
    if not sep:
        return None
    try:
        head = json.loads(head_text)
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("v") != 1:
        return None
    try:
        return MemoryRecord(
            id=head["id"],
            user_id=head["u"],
            agent_id=head.get("a"),
            session_id=head.get("s"),
            kind=head["k"],
            role=head.get("r"),
            text=text,
            item=head.get("i"),
            created_at=datetime.fromisoformat(head["t"]),
            seq=head.get("q"),
            key=head["key"],
            meta=head.get("m") or {},
        )
    except (KeyError, TypeError, ValueError, ValidationError, InvalidInputError):
        # Foreign or corrupted envelopes are skipped, never raised: reads must survive them.
        return None


def _score(memory: Mapping[str, Any]) -> float | None:
    for name in ("score", "similarity", "relevance"):
        value = memory.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _server_time(memory: Mapping[str, Any]) -> str:
    value = memory.get("created_at")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class _Found:
    rank: int
    server_time: str
    record: MemoryRecord
    score: float | None
    server_ids: tuple[str, ...]


@dataclass
class _Group:
    rank: int
    n: int
    chunks: dict[int, str] = field(default_factory=dict)
    server_ids: list[str] = field(default_factory=list)
    score: float | None = None
    server_time: str = ""


def decode_memories(results: Iterable[Mapping[str, Any]]) -> list[DecodedMemory]:
    """Decode service memories into records, keeping rank, score and server ids.

    * Non-envelope memories (written by something else) and malformed envelopes are ignored.
    * Parts are grouped by record id and part count; a record is returned only when every part
      is present (duplicated parts, e.g. from a replayed write, are harmless).
    * Records with the same ``(user_id, key)`` are deduplicated, keeping the earliest stored
      one: smallest service ``created_at``, then earliest position. This makes a write that was
      stored twice (a retry whose first answer was lost) invisible to readers.

    Output order: by the position of each record's first part in ``results``.
    """
    found: list[_Found] = []
    groups: dict[tuple[str, int], _Group] = {}
    for rank, memory in enumerate(results):
        if not is_envelope(memory):
            continue
        content: str = memory["content"]
        server_id = str(memory.get("id", ""))
        if content.startswith(PART_PREFIX):
            head_text, sep, chunk = content[len(PART_PREFIX) :].partition("\n")
            try:
                head = json.loads(head_text) if sep else None
            except ValueError:
                head = None
            if not isinstance(head, dict):
                continue
            rid, i, n = head.get("id"), head.get("i"), head.get("n")
            if not (isinstance(rid, str) and isinstance(i, int) and isinstance(n, int)):
                continue
            if not 0 <= i < n:
                continue
            group = groups.get((rid, n))
            if group is None:
                group = groups[(rid, n)] = _Group(rank=rank, n=n, server_time=_server_time(memory))
            group.chunks.setdefault(i, chunk)
            group.server_ids.append(server_id)
            score = _score(memory)
            if score is not None and (group.score is None or score > group.score):
                group.score = score
            group.server_time = _earliest(group.server_time, _server_time(memory))
            continue
        record = _parse_body(content[len(PREFIX) :])
        if record is not None:
            found.append(_Found(rank, _server_time(memory), record, _score(memory), (server_id,)))

    for group in groups.values():
        if len(group.chunks) != group.n:
            continue  # a missing part: skip the record rather than return half of it
        record = _parse_body("".join(group.chunks[i] for i in range(group.n)))
        if record is not None:
            found.append(
                _Found(group.rank, group.server_time, record, group.score, tuple(group.server_ids))
            )

    # Dedupe by (user, key): the earliest stored copy wins, as in a store with a unique index.
    # A copy without a service timestamp sorts after timestamped ones ("~" > any digit).
    winners: dict[tuple[str, str], _Found] = {}
    first_rank: dict[tuple[str, str], int] = {}
    for entry in found:
        k = (entry.record.user_id, entry.record.key)
        first_rank[k] = min(first_rank.get(k, entry.rank), entry.rank)
        held = winners.get(k)
        if held is None or (entry.server_time or "~", entry.rank) < (
            held.server_time or "~",
            held.rank,
        ):
            winners[k] = entry
    ordered = sorted(winners.items(), key=lambda kv: first_rank[kv[0]])
    return [
        DecodedMemory(record=e.record, rank=first_rank[k], score=e.score, server_ids=e.server_ids)
        for k, e in ordered
    ]


def decode(results: Iterable[Mapping[str, Any]]) -> list[MemoryRecord]:
    """The records held by service memories (see :func:`decode_memories` for the rules)."""
    return [d.record for d in decode_memories(results)]


def incomplete_groups(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """Group tokens (see :func:`group_token`) of split records whose parts are not all in
    ``results``, in first-seen order. A reader can recall these tokens to fetch the siblings."""
    have: dict[tuple[str, int], set[int]] = {}
    tokens: dict[tuple[str, int], str] = {}
    for memory in results:
        content = memory.get("content") if isinstance(memory, Mapping) else None
        if not isinstance(content, str) or not content.startswith(PART_PREFIX):
            continue
        head_text, _, _ = content[len(PART_PREFIX) :].partition("\n")
        try:
            head = json.loads(head_text)
        except ValueError:
            continue
        if not isinstance(head, dict):
            continue
        rid, i, n, g = head.get("id"), head.get("i"), head.get("n"), head.get("g")
        if (
            isinstance(rid, str)
            and isinstance(i, int)
            and isinstance(n, int)
            and isinstance(g, str)
        ):
            have.setdefault((rid, n), set()).add(i)
            tokens.setdefault((rid, n), g)
    return [tokens[k] for k, parts in have.items() if len(parts) < k[1]]


def payload_sizes(payloads: Sequence[StorePayload]) -> list[int]:
    """Content lengths in UTF-16 code units (what :func:`encode` keeps under ``max_chars``)."""
    return [_units(p["content"]) for p in payloads]
