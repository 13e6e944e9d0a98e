"""The hosted TIAMAT memory API as a :class:`~tiamat_hooks.stores.base.MemoryStore`.

The API, exactly as it is::

    POST /api/memory/store    {content: str ≤ 10,000 chars, tags: list[str] ≤ 20, importance: 0–1}
    GET  /api/memory/recall   ?query=&limit=        (limit ≤ 50) -> {"results": [...], "count": n}
    POST /api/memory/learn    {subject, predicate, object, confidence}
    GET  /api/memory/list     ?limit=&offset=       -> {"results": [...]} (or {"memories": [...]})
    GET  /api/memory/stats    GET /health
    Authorization: Bearer <key>;  429 on quota (``retry_after_seconds`` / ``Retry-After``)

There is no delete, no update, no server-side idempotency, no per-session read and no scoping:
one key sees one flat list of memories. The client bridges the gap:

* **Records travel in envelopes** (:mod:`tiamat_hooks.envelope`): scope, kind, seq, key, item and
  text inside ``content``, hashed scope tags, records over 10,000 chars split into parts.
* **Scoping is client-side.** ``search`` recalls up to 50 memories for the query and keeps those
  of the scope; ``read``/``list_sessions``/``list_users``/``stats`` page through
  ``/api/memory/list`` and filter. Reads therefore cost one listing of the whole account
  (``capabilities.neighbors`` is ``False``: recall should not call ``read`` on its hot path).
* **Idempotency and sequence numbers live in a local outbox** (:mod:`tiamat_hooks.outbox`, a
  SQLite file). A turn without ``seq`` gets the next number of its session from a counter that
  is seeded, the first time this outbox writes to that session, from the service's listing. This
  holds with **one writer per session at a time** (per outbox file): two machines appending to
  one session concurrently can assign the same numbers. If the seed listing itself fails (the
  service is down on a session's first write), numbering starts after what the outbox has queued
  and a warning is logged. Readers also deduplicate by ``(user_id, key)`` (earliest copy wins),
  so a write stored twice is never seen twice.
* **Writes are durable.** Every write is queued in the outbox before it is sent, then the queue
  is delivered in order. If the service cannot be reached (after retries, or at once while the
  circuit breaker is open) the records stay queued and ``add`` returns them as stored, with
  their sequence numbers. The queue is replayed, in order and without duplicating parts, on the
  next ``add``, on :meth:`TiamatCloudStore.flush`, or from the CLI. ``read`` merges the scope's
  queued records, so a caller reads its own writes while the service is away.
* **Recall fails open.** ``search`` that cannot finish within ``recall_deadline`` seconds, or
  hits an operational error, returns ``[]`` and counts it in :attr:`TiamatCloudStore.stats_counters`
  (it runs before every model call); ``strict=True`` makes it raise instead.
* **Retries** follow the OpenAI client: bounded, exponential backoff with jitter, on connection
  errors, timeouts, 408, 429 and 5xx, honouring ``retry_after_seconds``/``Retry-After`` up to
  ``max_retry_after`` seconds; never on other 4xx. :func:`should_retry` is the one place that
  decides, and :func:`map_http_error` the one place httpx failures become package errors.
  Every part is sent with an ``Idempotency-Key`` header that is the same on each attempt (the
  hosted API ignores it today; a self-hosted server may honour it).

The API key is kept out of ``repr``, log records and exception messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from ..envelope import (
    MAX_CONTENT_CHARS,
    decode,
    decode_memories,
    encode,
    id_hash,
    incomplete_groups,
)
from ..errors import (
    CapabilityError,
    ConfigError,
    InvalidInputError,
    QuotaExceededError,
    StoreTimeoutError,
    StoreUnavailableError,
    TiamatError,
)
from ..models import (
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
    SessionInfo,
    StoreCapabilities,
    StoreStats,
)
from ..outbox import Outbox, OutboxStatus, default_outbox_path
from ..text import query_terms
from .base import DEFAULT_SEARCH_KINDS

__all__ = ["API_KEY_ENV", "TiamatCloudStore", "map_http_error", "should_retry"]

logger = logging.getLogger("tiamat_hooks.cloud")

API_KEY_ENV = "TIAMAT_API_KEY"
"""Environment variable :meth:`TiamatCloudStore.from_url` reads the API key from."""

HOSTED_MAX_RECALL = 50
"""The hosted API's largest recall ``limit``."""

MAX_QUERY_CHARS = 1_000
"""Longest query string sent to recall (the normalised words of the caller's query)."""

_FAIL_OPEN = (StoreUnavailableError, StoreTimeoutError, QuotaExceededError)
"""Operational errors: recall fails open on them and writes stay queued."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- retry policy and error mapping (the one place each) -------------------------------------


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The server's requested delay: ``retry_after_seconds`` in a JSON body, else the
    ``Retry-After-Ms`` / ``Retry-After`` header (seconds or an HTTP date). ``None`` if absent."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, Mapping):
        value = body.get("retry_after_seconds")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = response.headers.get(header)
        if raw is None:
            continue
        try:
            delay = float(raw)
        except ValueError:
            continue
        if math.isfinite(delay):
            return delay / divisor
    raw = response.headers.get("retry-after")
    if raw:
        try:
            parsed = email.utils.parsedate_tz(raw)
            if parsed is not None:
                return float(email.utils.mktime_tz(parsed) - time.time())
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def should_retry(exc: httpx.HTTPError, *, max_retry_after: float) -> bool:
    """Whether a failed request is worth another attempt. The only retry decision in the client.

    Retried: connection failures, timeouts, broken connections, HTTP 408, 429 and 5xx. Not
    retried: any other 4xx, requests httpx could not even build (bad URL or protocol), and a
    429/5xx whose requested ``Retry-After`` exceeds ``max_retry_after`` seconds (waiting that
    long inside one call is worse than failing now).
    """
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status != 408 and status != 429 and status < 500:
            return False
        after = retry_after_seconds(exc.response)
        return after is None or after <= max_retry_after
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return False
    return isinstance(exc, httpx.TransportError)


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def map_http_error(
    exc: httpx.HTTPError, *, what: str, redact: Callable[[str], str] = str
) -> TiamatError:
    """Turn an httpx failure into the package error. The only such mapping in the client.

    ``what`` names the call (``"POST /api/memory/store"``); ``redact`` scrubs secrets from the
    message (the key is never passed around as a plain argument). The caller raises the result
    ``from exc``.

    * timeouts and 408 → :class:`StoreTimeoutError`
    * other transport failures and 5xx → :class:`StoreUnavailableError`
    * 429 → :class:`QuotaExceededError`
    * 401/403 → :class:`ConfigError` (check the API key); 404 → :class:`ConfigError` (check the
      URL); other 4xx → :class:`InvalidInputError`
    """
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        try:
            body = exc.response.text[:200]
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            body = ""
        detail = redact(f"TIAMAT API {what} answered HTTP {status}: {body}".rstrip(": "))
        if status == 429:
            after = retry_after_seconds(exc.response)
            hint = f" (retry after {after:g}s)" if after is not None else ""
            return QuotaExceededError(detail + hint)
        if status == 408:
            return StoreTimeoutError(detail)
        if status >= 500:
            return StoreUnavailableError(detail)
        if status in (401, 403):
            return ConfigError(detail + " (check the TIAMAT API key)")
        if status == 404:
            return ConfigError(detail + " (check the TIAMAT base URL)")
        return InvalidInputError(detail)
    name = type(exc).__name__
    message = redact(f"TIAMAT API {what} failed: {name}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return StoreTimeoutError(message)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return ConfigError(message)
    return StoreUnavailableError(message)


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` as a request is sent.

    The key lives only here: not in the store's attributes, not in a header dict local to the
    calling frame (which ``--showlocals``-style tracebacks would print), never in a repr.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request

    def redact(self, text: str) -> str:
        return _redact(text, self._key)

    def fingerprint(self) -> str:
        return id_hash(self._key)

    def __repr__(self) -> str:
        return "<bearer auth>"

    __str__ = __repr__


def _memories(body: Any) -> list[Mapping[str, Any]]:
    """The memory list of a recall/list answer (``results``, or ``memories`` defensively)."""
    if isinstance(body, list):
        items: Any = body
    elif isinstance(body, Mapping):
        items = body.get("results")
        if items is None:
            items = body.get("memories", [])
    else:
        items = []
    return [m for m in items if isinstance(m, Mapping)] if isinstance(items, list) else []


def _in_scope(record: MemoryRecord, scope: Scope) -> bool:
    return (
        record.user_id == scope.user_id
        and (scope.agent_id is None or record.agent_id == scope.agent_id)
        and (scope.session_id is None or record.session_id == scope.session_id)
    )


def _read_order(record: MemoryRecord) -> tuple[str, bool, int, datetime, str]:
    # The SQLite store's order: session, then turns by seq, then unsequenced records by time.
    return (
        record.session_id or "",
        record.seq is None,
        record.seq or 0,
        record.created_at,
        record.id,
    )


class TiamatCloudStore:
    """The hosted TIAMAT memory API behind the store contract (see the module docstring).

    Args:
        base_url: e.g. ``"https://memory.tiamat.live"`` (a path prefix is kept; no userinfo).
        api_key: sent as ``Authorization: Bearer``; never logged or shown.
        client: a ready ``httpx.AsyncClient`` to use (not closed by :meth:`close`). Without one
            the store builds and owns a client (optionally on ``transport``, for tests).
        timeout: per-request timeout in seconds.
        max_retries: extra attempts after the first (0 disables retries).
        retry_base_delay / retry_max_delay: exponential backoff bounds in seconds (25% jitter).
        max_retry_after: longest server-requested wait honoured; longer ones fail at once.
        outbox: an :class:`~tiamat_hooks.outbox.Outbox`, a file path, ``":memory:"``, or
            ``None`` for a file in the user data directory named after the base URL and key
            hash (so two accounts or services never replay into each other).
        recall_deadline: seconds ``search`` may take before it gives up and returns ``[]``.
        strict: make ``search`` raise instead of failing open.
        circuit_cooldown: after a write could not be delivered, seconds during which writes go
            straight to the outbox and recall returns ``[]`` without calling the service.
        page_size: ``limit`` asked of ``/api/memory/list`` per page.
        max_pages: safety bound on pages read by one listing.

    The constructor does no I/O.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 8.0,
        max_retry_after: float = 60.0,
        outbox: Outbox | str | Path | None = None,
        recall_deadline: float = 0.3,
        strict: bool = False,
        circuit_cooldown: float = 30.0,
        page_size: int = 100,
        max_pages: int = 10_000,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError(f"a TIAMAT API key is required (pass api_key or set ${API_KEY_ENV})")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError("max_retries must be a non-negative integer")
        if recall_deadline <= 0 or timeout <= 0:
            raise ConfigError("recall_deadline and timeout must be positive")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"TIAMAT base URL must be http(s)://host[/prefix], got {base_url!r}")
        if parts.username or parts.password:
            raise ConfigError("pass the API key separately (or use from_url), not in base_url")
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._auth = _BearerAuth(api_key)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
        )
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.max_retry_after = max_retry_after
        if not isinstance(outbox, Outbox):
            if outbox is None:
                name = f"outbox-{id_hash(self.base_url, self._auth.fingerprint())}.db"
                outbox = default_outbox_path().with_name(name)
            outbox = Outbox(outbox)
        self.outbox = outbox
        self.recall_deadline = recall_deadline
        self.strict = strict
        self.circuit_cooldown = circuit_cooldown
        self.page_size = page_size
        self.max_pages = max_pages
        self.stats_counters: dict[str, int] = {
            "recall_timeouts": 0,
            "recall_errors": 0,
            "recall_skipped": 0,
            "retries": 0,
            "writes_queued": 0,
            "writes_delivered": 0,
        }
        """Operational counters: recalls that failed open (deadline, error, open circuit),
        retried requests, writes left queued by ``add`` and writes delivered."""
        self.server_info: dict[str, Any] = {}
        """What ``GET /health`` answered at the last :meth:`refresh_capabilities`."""
        self._write_lock = asyncio.Lock()
        self._next_seq: dict[tuple[str, str | None], int] = {}
        self._circuit_open_until = 0.0
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> TiamatCloudStore:
        """Build a store (owning its HTTP client) from ``https://[KEY@]host[/prefix]``.

        The API key is, in order: the ``api_key`` option, the URL's userinfo (``https://KEY@host``
        or ``https://:KEY@host``, handy in ``$TIAMAT_HOOKS_DB``), then ``$TIAMAT_API_KEY``. The
        userinfo is removed from the base URL. Other options go to the constructor.

        Raises:
            ConfigError: the URL is malformed or no key was found.
        """
        parts = urlsplit(url)
        key = options.pop("api_key", None)
        if not key and (parts.password or parts.username):
            key = unquote(parts.password or parts.username or "")
        if not key:
            key = os.environ.get(API_KEY_ENV, "")
        if not key:
            raise ConfigError(
                f"no TIAMAT API key: pass api_key=..., put it in the URL, or set ${API_KEY_ENV}"
            )
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return cls(base, key, **options)

    def __repr__(self) -> str:
        return f"TiamatCloudStore(base_url={self.base_url!r}, outbox={self.outbox.path!r})"

    @property
    def capabilities(self) -> StoreCapabilities:
        """Hosted behaviour unless the server said otherwise at :meth:`refresh_capabilities`.

        Only ``max_recall_limit`` (an int ≤ 1000) is read from the server today. A self-hosted
        server will advertise ``extensions`` (delete, full listing, per-session reads); their
        endpoints are not defined yet, so they are recorded in :attr:`server_info` and not used.
        """
        limit = self.server_info.get("max_recall_limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            limit = HOSTED_MAX_RECALL
        return StoreCapabilities(can_delete=False, max_search_limit=limit, neighbors=False)

    @property
    def server_extensions(self) -> frozenset[str]:
        """Extension names the server advertised in ``/health`` (empty for the hosted API)."""
        ext = self.server_info.get("extensions")
        return (
            frozenset(e for e in ext if isinstance(e, str))
            if isinstance(ext, list)
            else frozenset()
        )

    # -- HTTP ---------------------------------------------------------------------------------

    def _backoff(self, attempt: int, exc: httpx.HTTPError) -> float:
        if isinstance(exc, httpx.HTTPStatusError):
            after = retry_after_seconds(exc.response)
            if after is not None and 0 <= after <= self.max_retry_after:
                return after
        delay = min(self.retry_base_delay * 2.0**attempt, self.retry_max_delay)
        return max(0.0, delay * (1 - 0.25 * random.random()))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded JSON answer or raises a package error."""
        if self._closed:
            raise StoreUnavailableError("store is closed")
        what = f"{method} {path}"
        headers = {"Accept": "application/json"}
        if idempotency_key is not None:
            # The same key on every attempt: a retried write is recognisable as the same write.
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        while True:
            try:
                response = await self._client.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=body,
                    headers=headers,
                    auth=self._auth,
                )
                if not response.is_success:
                    await response.aread()
                    raise httpx.HTTPStatusError(
                        f"HTTP {response.status_code} from {what}",
                        request=response.request,
                        response=response,
                    )
            except httpx.HTTPError as exc:
                if attempt < self.max_retries and should_retry(
                    exc, max_retry_after=self.max_retry_after
                ):
                    delay = self._backoff(attempt, exc)
                    attempt += 1
                    self.stats_counters["retries"] += 1
                    logger.info(
                        "TIAMAT %s failed (%s); retry %d/%d in %.2fs",
                        what,
                        _status_or_name(exc),
                        attempt,
                        self.max_retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise map_http_error(exc, what=what, redact=self._auth.redact) from exc
            try:
                return response.json()
            except ValueError as exc:
                # A 2xx that is not JSON (a proxy or captive portal page) is not the service.
                raise StoreUnavailableError(
                    f"TIAMAT API {what} answered HTTP {response.status_code} without JSON"
                ) from exc

    # -- circuit ------------------------------------------------------------------------------

    def _circuit_open(self) -> bool:
        return time.monotonic() < self._circuit_open_until

    def _trip(self) -> None:
        self._circuit_open_until = time.monotonic() + self.circuit_cooldown

    # -- writes -------------------------------------------------------------------------------

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Store records (see the store contract and the module docstring on durability).

        Returns the stored records in input order, with sequence numbers, even when the service
        is unreachable and they are queued. Raises :class:`InvalidInputError` for non-records,
        :class:`ConfigError` when the service rejects the key or URL (the batch is not queued),
        and :class:`InvalidInputError` when it rejects one of this batch's records for good.
        """
        batch = list(records)
        for r in batch:
            if not isinstance(r, MemoryRecord):
                raise InvalidInputError(f"add() takes MemoryRecord objects, got {type(r).__name__}")
        if not batch:
            return []
        for r in batch:
            encode(r)  # raises InvalidRecordError before anything is queued
        async with self._write_lock:
            out, new = await self._prepare(batch)
            if not new:
                return out
            new_keys = {(r.user_id, r.key) for r in new}
            if self._circuit_open():
                self.stats_counters["writes_queued"] += len(new)
                return out
            try:
                await self._deliver(current=new_keys)
            except ConfigError:
                # The service rejects the key/URL: nothing will ever go through, so tell the
                # caller now and do not keep this batch queued.
                mine = [
                    q.pos
                    for q in await self.outbox.pending()
                    if (q.record.user_id, q.record.key) in new_keys
                ]
                await self.outbox.discard(mine)
                raise
            except _FAIL_OPEN:
                self.stats_counters["writes_queued"] += len(new)
            return out

    async def _prepare(
        self, batch: list[MemoryRecord]
    ) -> tuple[list[MemoryRecord], list[MemoryRecord]]:
        """Dedupe, assign sequence numbers and queue. Returns (all results, newly queued)."""
        # Sessions whose counter this process has not loaded: from the outbox, else the service.
        need = {
            (r.user_id, r.session_id)
            for r in batch
            if r.kind == "turn"
            and r.seq is None
            and (r.user_id, r.session_id) not in self._next_seq
        }
        unseeded = []
        for sess in need:
            stored = await self.outbox.next_seq(*sess)
            if stored is None:
                unseeded.append(sess)
            else:
                self._next_seq[sess] = stored
        if unseeded:
            await self._seed(unseeded)

        by_user: dict[str, list[str]] = {}
        for r in batch:
            by_user.setdefault(r.user_id, []).append(r.key)
        known: dict[tuple[str, str], MemoryRecord] = {}
        for user, keys in by_user.items():
            for key, rec in (await self.outbox.known(user, keys)).items():
                known[(user, key)] = rec

        out: list[MemoryRecord] = []
        new: list[MemoryRecord] = []
        touched: dict[tuple[str, str | None], int] = {}
        for r in batch:
            k = (r.user_id, r.key)
            if k in known:
                out.append(known[k])
                continue
            rec = r
            if r.kind == "turn":
                sess = (r.user_id, r.session_id)
                nxt = self._next_seq.get(sess, 1)
                if r.seq is None:
                    rec = r.model_copy(update={"seq": nxt})
                self._next_seq[sess] = touched[sess] = max(nxt, (rec.seq or 0) + 1)
            known[k] = rec
            out.append(rec)
            new.append(rec)
        if new:
            await self.outbox.enqueue(new, touched)
        return out, new

    async def _seed(self, sessions: list[tuple[str, str | None]]) -> None:
        """Load sequence counters (and known keys) of sessions new to this outbox from one
        listing of the service. Falls back to the outbox's queue when the service is away."""
        wanted = set(sessions)
        try:
            if self._circuit_open():
                raise StoreUnavailableError("circuit open")
            records = decode(await self._list_all())
        except _FAIL_OPEN as exc:
            logger.warning(
                "TIAMAT listing failed while numbering %d new session(s) (%s); numbering "
                "continues after queued writes only, which can collide with turns stored "
                "elsewhere",
                len(wanted),
                type(exc).__name__,
            )
            records = []
        mine = [r for r in records if (r.user_id, r.session_id) in wanted]
        await self.outbox.remember(mine)
        for sess in wanted:
            top = max(
                (
                    r.seq or 0
                    for r in mine
                    if r.kind == "turn" and (r.user_id, r.session_id) == sess
                ),
                default=0,
            )
            for q in await self.outbox.pending(sess[0], session_id=sess[1] or ""):
                if q.record.session_id == sess[1] and q.record.kind == "turn":
                    top = max(top, q.record.seq or 0)
            self._next_seq[sess] = top + 1

    async def _deliver(self, *, current: Collection[tuple[str, str]] = ()) -> int:
        """Send the queue in order; returns how many writes were delivered.

        Stops at the first write that cannot be delivered for operational reasons (it stays
        queued, the circuit opens, and the error is raised). A write the service rejects with a
        4xx about the write itself is dead-lettered; if it belongs to ``current`` the error is
        raised after the rest of the queue was delivered.
        """
        delivered = 0
        rejected: InvalidInputError | None = None
        for q in await self.outbox.pending():
            payloads = encode(q.record, MAX_CONTENT_CHARS)
            try:
                for i in range(q.parts_sent, len(payloads)):
                    await self._call(
                        "POST",
                        "/api/memory/store",
                        body=payloads[i],
                        idempotency_key=f"th-{id_hash(q.record.user_id, q.record.key)}-{i}",
                    )
                    if i + 1 < len(payloads):
                        await self.outbox.mark_progress(q.pos, i + 1)
            except ConfigError:
                raise
            except InvalidInputError as exc:
                logger.warning("TIAMAT rejected queued write %d for good: %s", q.pos, exc)
                await self.outbox.dead_letter(q.pos, str(exc))
                if (q.record.user_id, q.record.key) in current:
                    rejected = exc
                continue
            except _FAIL_OPEN as exc:
                await self.outbox.mark_failed(q.pos, str(exc))
                self._trip()
                raise
            await self.outbox.mark_sent(q.pos)
            delivered += 1
        self.stats_counters["writes_delivered"] += delivered
        self._circuit_open_until = 0.0
        if rejected is not None:
            raise rejected
        return delivered

    async def flush(self) -> int:
        """Deliver every queued write now, ignoring the circuit breaker.

        Returns how many were delivered. Raises the operational error (the rest stays queued)
        when the service still cannot take them.
        """
        async with self._write_lock:
            return await self._deliver()

    async def outbox_status(self) -> OutboxStatus:
        """Queued writes: count, users, dead letters, oldest age."""
        return await self.outbox.status()

    async def forget_queued(self, user_id: str) -> int:
        """Drop ``user_id``'s queued (unsent) writes and local bookkeeping; see
        :meth:`Outbox.forget`. Records the service already stored cannot be deleted."""
        async with self._write_lock:
            self._next_seq = {k: v for k, v in self._next_seq.items() if k[0] != user_id}
            return await self.outbox.forget(user_id)

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        """Always raises :class:`CapabilityError`: the hosted API cannot delete."""
        raise CapabilityError(
            "the hosted TIAMAT API cannot delete memories (capabilities.can_delete is False)"
        )

    async def learn(
        self, subject: str, predicate: str, object: str, confidence: float = 1.0
    ) -> Any:
        """``POST /api/memory/learn`` a knowledge triple; returns the service's JSON answer.

        Not part of the store contract and not queued: raises the mapped error on failure.
        """
        for name, value in (("subject", subject), ("predicate", predicate), ("object", object)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"{name} must be a non-empty string")
        if not 0.0 <= float(confidence) <= 1.0:
            raise InvalidInputError("confidence must be between 0 and 1")
        body = {
            "subject": subject,
            "predicate": predicate,
            "object": object,
            "confidence": float(confidence),
        }
        return await self._call("POST", "/api/memory/learn", body=body)

    async def health(self) -> Any:
        """``GET /health``: the service's JSON answer."""
        return await self._call("GET", "/health")

    async def refresh_capabilities(self) -> StoreCapabilities:
        """Ask ``/health`` what the server supports and update :attr:`capabilities`."""
        info = await self.health()
        self.server_info = dict(info) if isinstance(info, Mapping) else {}
        return self.capabilities

    # -- reads --------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] = DEFAULT_SEARCH_KINDS,
        limit: int = 50,
        strict: bool | None = None,
    ) -> list[SearchHit]:
        """Recall for ``query`` within ``scope`` (see the store contract).

        One ``GET /api/memory/recall`` for up to ``capabilities.max_search_limit`` memories,
        filtered to the scope and kinds client-side, so fewer than ``limit`` hits can come back
        even when more would match. Scores are the service's when it sends them, else derived
        from its order (``1 / (1 + rank)``). Queued, unsent writes are not searched. Spans are
        ``None``. Fails open (returns ``[]``, counted in :attr:`stats_counters`) on deadline,
        open circuit or operational errors unless ``strict`` (argument or constructor), which
        raises :class:`StoreTimeoutError` / the operational error instead. Misconfiguration
        (a rejected key or URL: :class:`ConfigError`, other 4xx: :class:`InvalidInputError`)
        always raises: failing open would hide it forever.
        """
        strict = self.strict if strict is None else strict
        terms = query_terms(query) if isinstance(query, str) else []
        kinds = list(kinds)
        limit = max(0, min(int(limit), self.capabilities.max_search_limit))
        if not terms or not kinds or limit == 0:
            return []
        if self._circuit_open() and not strict:
            self.stats_counters["recall_skipped"] += 1
            return []
        q = " ".join(terms)[:MAX_QUERY_CHARS]
        try:
            return await asyncio.wait_for(
                self._search(q, scope, kinds, limit), self.recall_deadline
            )
        except asyncio.TimeoutError as exc:
            self.stats_counters["recall_timeouts"] += 1
            if strict:
                raise StoreTimeoutError(
                    f"recall did not finish within {self.recall_deadline:g}s"
                ) from exc
            return []
        except _FAIL_OPEN as exc:
            self.stats_counters["recall_errors"] += 1
            if strict:
                raise
            logger.info("TIAMAT recall failed open: %s", type(exc).__name__)
            return []

    async def _search(
        self, q: str, scope: Scope, kinds: list[RecordKind], limit: int
    ) -> list[SearchHit]:
        fetch = self.capabilities.max_search_limit
        body = await self._call("GET", "/api/memory/recall", params={"query": q, "limit": fetch})
        results = _memories(body)
        # A long record's parts may not all be recalled; ask for the missing siblings by their
        # shared token (a few at most, inside the same deadline).
        for token in incomplete_groups(results)[:3]:
            more = await self._call(
                "GET", "/api/memory/recall", params={"query": token, "limit": fetch}
            )
            results = results + [m for m in _memories(more) if m not in results]
        decoded = [
            d
            for d in decode_memories(results)
            if _in_scope(d.record, scope) and d.record.kind in kinds
        ]
        use_server = bool(decoded) and all(d.score is not None and d.score > 0 for d in decoded)
        hits = [
            SearchHit(d.record, float(d.score) if use_server and d.score else 1.0 / (1 + d.rank))
            for d in decoded
        ]
        hits.sort(key=lambda h: -h.score)
        return hits[:limit]

    async def _list_all(self) -> list[Mapping[str, Any]]:
        """Every memory of the account, paging ``/api/memory/list`` by ``limit``/``offset``.

        Stops at a short or empty page, or when a page brings nothing new (a server that ignores
        ``offset``), or after ``max_pages``.
        """
        out: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        for _ in range(self.max_pages):
            body = await self._call(
                "GET", "/api/memory/list", params={"limit": self.page_size, "offset": offset}
            )
            page = _memories(body)
            fresh = 0
            for m in page:
                # Memories without an id are identified by their content, so a server that
                # ignores ``offset`` still ends the loop.
                mid = str(m.get("id") or "") or "content:" + str(m.get("content"))
                if mid not in seen:
                    seen.add(mid)
                    out.append(m)
                    fresh += 1
            if len(page) < self.page_size or fresh == 0:
                break
            offset += len(page)
        return out

    async def _scope_records(self, scope: Scope | None) -> list[MemoryRecord]:
        """Stored and queued records (of ``scope`` when given), deduplicated by (user, key)."""
        stored = decode(await self._list_all())
        if scope is not None:
            stored = [r for r in stored if _in_scope(r, scope)]
        have = {(r.user_id, r.key) for r in stored}
        queued = await self.outbox.pending(scope.user_id if scope is not None else None)
        for q in queued:
            r = q.record
            if (r.user_id, r.key) not in have and (scope is None or _in_scope(r, scope)):
                have.add((r.user_id, r.key))
                stored.append(r)
        return stored

    async def read(
        self,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[MemoryRecord]:
        """Records of a scope in ``(session_id, seq)`` order, including queued ones.

        Costs one full listing of the account. Raises the mapped error when the service cannot
        be listed (reads do not fail open).
        """
        if kinds is not None and not list(kinds):
            return []
        records = await self._scope_records(scope)
        if kinds is not None:
            wanted = set(kinds)
            records = [r for r in records if r.kind in wanted]
        if seq_from is not None:
            records = [r for r in records if r.seq is not None and r.seq >= seq_from]
        if seq_to is not None:
            records = [r for r in records if r.seq is not None and r.seq <= seq_to]
        records.sort(key=_read_order)
        if limit is not None:
            n = max(0, int(limit))
            records = (records[-n:] if n else []) if newest else records[:n]
        return records

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        """Sessions of a user (``None`` for records without one), by first record time."""
        records = await self._scope_records(Scope(user_id))
        groups: dict[str | None, list[MemoryRecord]] = {}
        for r in records:
            groups.setdefault(r.session_id, []).append(r)
        infos = [
            SessionInfo(
                user_id,
                sid,
                len(rs),
                min(r.created_at for r in rs),
                max(r.created_at for r in rs),
                max((r.seq or 0 for r in rs), default=0),
            )
            for sid, rs in groups.items()
        ]
        infos.sort(key=lambda i: (i.first_at or _EPOCH, i.session_id or ""))
        return infos

    async def list_users(self) -> list[str]:
        """Every user with stored or queued envelope records, sorted."""
        return sorted({r.user_id for r in await self._scope_records(None)})

    async def stats(self, user_id: str | None = None) -> StoreStats:
        """Counts over envelope records (stored and queued); foreign memories are not counted."""
        records = await self._scope_records(Scope(user_id) if user_id is not None else None)
        by_kind: dict[str, int] = {}
        for r in records:
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        users = {r.user_id for r in records}
        sessions = {(r.user_id, r.session_id) for r in records}
        return StoreStats(len(users), len(sessions), len(records), by_kind)

    async def close(self) -> None:
        """Close the outbox and, when this store built it, the HTTP client. Idempotent.

        Queued writes stay in the outbox file for the next process (not with ``":memory:"``).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.outbox.close()
        finally:
            if self._owns_client:
                await self._client.aclose()


def _status_or_name(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__
