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

A **self-hosted server** (``tiamat-hooks serve``, :mod:`tiamat_hooks.server`) speaks the same API
and advertises *extensions* in ``GET /health``. The client asks once, lazily, on its first
operation (one attempt, ``detect_timeout`` seconds; a failure means hosted behaviour and another
try after ``detect_retry_interval`` seconds, or at the next :meth:`~TiamatCloudStore.flush`), and
then uses each extension only when its name is listed:

* ``add``: queued writes are delivered in batches through ``POST /api/memory/x/add``. The server
  assigns sequence numbers (gap-free, however many devices append to a session) and is
  idempotent by ``(user_id, key)``; a turn this client numbered itself while the server was
  away is sent without its number, so the server renumbers it instead of colliding. ``add``
  returns the server's records; records still queued carry the client's provisional numbers.
  A record too large for one request body travels as envelope parts, as on the hosted API.
* ``search``: ``GET /api/memory/x/search``, scoped and ranked on the server, with spans, up to
  the server's limit (``max_search_limit``, else 1,000).
* ``read`` / ``sessions`` / ``users``: ``GET /api/memory/x/read`` (then ``capabilities.neighbors``
  is ``True``), ``x/sessions`` and ``x/users`` instead of listing the whole account. Queued
  writes are still merged in. A read of more than 10,000 records falls back to the listing.
* ``delete``: ``POST /api/memory/x/delete`` when ``/health`` also says ``can_delete``; then
  ``capabilities.can_delete`` is ``True``. Queued writes of the deleted scope are dropped first
  (:meth:`~TiamatCloudStore.forget_queued`), so a replay never brings them back.

Nothing else changes: an extension the server does not list is never called.

The API key is kept out of ``repr``, log records and exception messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
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
from pydantic import ValidationError

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
from ..outbox import Outbox, OutboxStatus, QueuedWrite, default_outbox_path
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

EXTENSION_MAX_SEARCH = 1_000
"""The search extension's largest ``limit`` when ``/health`` names no ``max_search_limit``."""

EXTENSION_MAX_READ = 10_000
"""Most records one call of the read extension returns."""

EXTENSION_MAX_ADD = 1_000
"""Most records one call of the add extension takes."""

DEFAULT_MAX_BODY = 64 * 1024
"""The self-hosted server's default request body limit, when ``/health`` names none."""

_FAIL_OPEN = (StoreUnavailableError, StoreTimeoutError, QuotaExceededError)
"""Operational errors: recall fails open on them and writes stay queued."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- retry policy and error mapping (the one place each) -------------------------------------


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The server's requested delay: ``retry_after_seconds`` in a JSON body, else the
    ``Retry-After-Ms`` / ``Retry-After`` header (seconds or an HTTP date). ``None`` if absent."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead, RecursionError):
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


def _is_marker(record: MemoryRecord) -> bool:
    # TiamatSession's pop/clear markers (see tiamat_hooks.session): bookkeeping turns with empty
    # text. Their envelope header can still match a hosted recall, so search drops them.
    return bool(record.meta.get("marker")) and not record.text.strip()


def _positive_int(value: Any, *, cap: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= cap:
        return value
    return None


def _records(items: Any) -> list[MemoryRecord]:
    """Records of an extension answer (lossless JSON); malformed entries are skipped."""
    out: list[MemoryRecord] = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(MemoryRecord.model_validate(item))
        except (ValidationError, ValueError, TypeError):
            continue
    return out


def _json_size(record: MemoryRecord) -> int | None:
    """Bytes ``record`` takes in a request body (as httpx encodes JSON); ``None`` if it cannot
    travel as plain JSON (a NaN in its metadata), so it must go as envelope parts."""
    try:
        text = json.dumps(
            record.model_dump(mode="json"),
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )
    except ValueError:
        return None
    return len(text.encode("utf-8", "surrogatepass"))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


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
        detect_timeout: seconds the one ``GET /health`` of extension detection may take.
        detect_retry_interval: seconds before detection is tried again after it failed.

    The constructor does no I/O; extensions are detected on the first operation (see the module
    docstring), so :attr:`capabilities` is the hosted API's until then. Call
    :meth:`refresh_capabilities` first when they must be known before anything else.
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
        detect_timeout: float = 2.0,
        detect_retry_interval: float = 60.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError(f"a TIAMAT API key is required (pass api_key or set ${API_KEY_ENV})")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError("max_retries must be a non-negative integer")
        for name, value in (
            ("recall_deadline", recall_deadline),
            ("timeout", timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
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
        self.detect_timeout = detect_timeout
        self.detect_retry_interval = detect_retry_interval
        self.stats_counters: dict[str, int] = {
            "recall_timeouts": 0,
            "recall_errors": 0,
            "recall_skipped": 0,
            "retries": 0,
            "writes_queued": 0,
            "writes_delivered": 0,
            "detect_failures": 0,
        }
        """Operational counters: recalls that failed open (deadline, error, open circuit),
        retried requests, writes left queued by ``add``, writes delivered, and extension
        detections that could not reach ``/health``."""
        self.server_info: dict[str, Any] = {}
        """What ``GET /health`` answered at the last detection or :meth:`refresh_capabilities`."""
        self._detected = False
        self._detect_after = 0.0
        self._detect_task: asyncio.Task[None] | None = None
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
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"bad port in TIAMAT URL: {exc}") from exc
        if port is not None:
            netloc += f":{port}"
        base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return cls(base, key, **options)

    def __repr__(self) -> str:
        return f"TiamatCloudStore(base_url={self.base_url!r}, outbox={self.outbox.path!r})"

    @property
    def capabilities(self) -> StoreCapabilities:
        """What the server supports, as far as detected (hosted behaviour until then).

        * ``max_search_limit``: with the ``search`` extension the server's ``max_search_limit``
          (else :data:`EXTENSION_MAX_SEARCH`); without it ``max_recall_limit`` (an int ≤ 1000,
          else 50).
        * ``can_delete``: the ``delete`` extension is listed and ``/health`` says
          ``"can_delete": true``.
        * ``neighbors``: the ``read`` extension is listed (scoped reads cost one request).
        """
        ext = self.server_extensions
        if "search" in ext:
            limit = _positive_int(self.server_info.get("max_search_limit"), cap=100_000)
            limit = limit or EXTENSION_MAX_SEARCH
        else:
            limit = _positive_int(self.server_info.get("max_recall_limit"), cap=1000)
            limit = limit or HOSTED_MAX_RECALL
        return StoreCapabilities(
            can_delete="delete" in ext and self.server_info.get("can_delete") is True,
            max_search_limit=limit,
            neighbors="read" in ext,
        )

    @property
    def server_extensions(self) -> frozenset[str]:
        """Extension names the server advertised in ``/health`` (empty for the hosted API)."""
        ext = self.server_info.get("extensions")
        return (
            frozenset(e for e in ext if isinstance(e, str))
            if isinstance(ext, list)
            else frozenset()
        )

    # -- extension detection ------------------------------------------------------------------

    def _use_health(self, info: Any) -> None:
        self.server_info = dict(info) if isinstance(info, Mapping) else {}
        self._detected = True

    async def _detect(self) -> None:
        """One ``GET /health``: no retries, ``detect_timeout`` seconds. A 4xx answer is taken as
        "no extensions" for good; an operational failure leaves hosted behaviour in place and
        schedules another try after ``detect_retry_interval`` seconds."""
        try:
            info = await self._call("GET", "/health", retries=0, timeout=self.detect_timeout)
        except (ConfigError, InvalidInputError) as exc:
            logger.info("TIAMAT /health refused (%s): assuming the hosted API", type(exc).__name__)
            self._use_health({})
        except TiamatError as exc:
            self.stats_counters["detect_failures"] += 1
            self._detect_after = time.monotonic() + self.detect_retry_interval
            logger.info(
                "TIAMAT /health failed (%s): hosted behaviour, detection retried in %gs",
                type(exc).__name__,
                self.detect_retry_interval,
            )
        else:
            self._use_health(info)

    async def _ensure_detected(self, *, force: bool = False) -> None:
        """Detect extensions unless done, or (without ``force``) while a failed detection waits
        for its retry or the circuit breaker is open. Concurrent callers share one request.

        The request runs as a task awaited through :func:`asyncio.shield`: a caller cancelled
        by its own deadline (recall) leaves it running, so the next operation finds it done.
        """
        if self._detected or self._closed:
            return
        if not force and (time.monotonic() < self._detect_after or self._circuit_open()):
            return
        task = self._detect_task
        if task is None or task.done():
            task = self._detect_task = asyncio.get_running_loop().create_task(self._detect())
        await asyncio.shield(task)

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
        retries: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded JSON answer or raises a package error.

        ``retries`` overrides :attr:`max_retries` and ``timeout`` the client's timeout for this
        call only.
        """
        max_retries = self.max_retries if retries is None else retries
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
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
                if not response.is_success:
                    await response.aread()
                    raise httpx.HTTPStatusError(
                        f"HTTP {response.status_code} from {what}",
                        request=response.request,
                        response=response,
                    )
            except httpx.HTTPError as exc:
                if attempt < max_retries and should_retry(
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
                        max_retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise map_http_error(exc, what=what, redact=self._auth.redact) from exc
            try:
                return response.json()
            except (ValueError, RecursionError) as exc:
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

        With the ``add`` extension the records are the server's answer (its sequence numbers);
        a record that stays queued carries a provisional number the server may replace.
        """
        batch = list(records)
        for r in batch:
            if not isinstance(r, MemoryRecord):
                raise InvalidInputError(f"add() takes MemoryRecord objects, got {type(r).__name__}")
        if not batch:
            return []
        for r in batch:
            encode(r)  # raises InvalidRecordError before anything is queued
        await self._ensure_detected()
        async with self._write_lock:
            out, new = await self._prepare(batch)
            if not new:
                return out
            new_keys = {(r.user_id, r.key) for r in new}
            if self._circuit_open():
                self.stats_counters["writes_queued"] += len(new)
                return out
            stored: dict[tuple[str, str], MemoryRecord] = {}
            try:
                await self._deliver(current=new_keys, stored=stored)
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
            return [stored.get((r.user_id, r.key), r) for r in out]

    async def _prepare(
        self, batch: list[MemoryRecord]
    ) -> tuple[list[MemoryRecord], list[MemoryRecord]]:
        """Dedupe, assign sequence numbers and queue. Returns (all results, newly queued).

        With the ``add`` extension the server is the idempotency authority: only writes still
        queued here count as known (a local index could miss a delete made elsewhere), and
        numbers assigned here are marked provisional in the queue.
        """
        server_adds = "add" in self.server_extensions
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
            if server_adds and "sessions" in self.server_extensions:
                await self._seed_from_sessions(unseeded)
            else:
                await self._seed(unseeded)

        by_user: dict[str, list[str]] = {}
        for r in batch:
            by_user.setdefault(r.user_id, []).append(r.key)
        known: dict[tuple[str, str], MemoryRecord] = {}
        for user, keys in by_user.items():
            if server_adds:
                wanted = set(keys)
                for q in await self.outbox.pending(user):
                    if q.record.key in wanted:
                        known.setdefault((user, q.record.key), q.record)
            else:
                for key, rec in (await self.outbox.known(user, keys)).items():
                    known[(user, key)] = rec

        out: list[MemoryRecord] = []
        new: list[MemoryRecord] = []
        local: set[tuple[str, str]] = set()
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
                    local.add(k)
                self._next_seq[sess] = touched[sess] = max(nxt, (rec.seq or 0) + 1)
            known[k] = rec
            out.append(rec)
            new.append(rec)
        if new:
            await self.outbox.enqueue(new, touched, local_seq=local, remember=not server_adds)
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
        tops: dict[tuple[str, str | None], int] = {}
        for r in mine:
            if r.kind == "turn":
                sess = (r.user_id, r.session_id)
                tops[sess] = max(tops.get(sess, 0), r.seq or 0)
        await self._seed_after(wanted, tops)

    async def _seed_from_sessions(self, sessions: list[tuple[str, str | None]]) -> None:
        """Provisional counters from ``x/sessions`` (one call per user). The server renumbers
        provisional turns on delivery, so a failure only costs accuracy of what ``add``
        returns while the server is away."""
        wanted = set(sessions)
        tops: dict[tuple[str, str | None], int] = {}
        try:
            if self._circuit_open():
                raise StoreUnavailableError("circuit open")
            for user in sorted({u for u, _ in wanted}):
                body = await self._call("GET", "/api/memory/x/sessions", params={"user": user})
                infos = body.get("sessions") if isinstance(body, Mapping) else None
                for info in infos if isinstance(infos, list) else []:
                    if not isinstance(info, Mapping):
                        continue
                    sid, last = info.get("session_id"), info.get("last_seq")
                    if (sid is None or isinstance(sid, str)) and isinstance(last, int):
                        tops[(user, sid)] = last
        except _FAIL_OPEN as exc:
            logger.info(
                "TIAMAT x/sessions failed (%s); provisional numbering follows queued writes",
                type(exc).__name__,
            )
        await self._seed_after(wanted, tops)

    async def _seed_after(
        self, wanted: set[tuple[str, str | None]], tops: Mapping[tuple[str, str | None], int]
    ) -> None:
        # Never number below what is already queued here for the session.
        for sess in wanted:
            top = tops.get(sess, 0)
            for q in await self.outbox.pending(sess[0], session_id=sess[1] or ""):
                if q.record.session_id == sess[1] and q.record.kind == "turn":
                    top = max(top, q.record.seq or 0)
            self._next_seq[sess] = top + 1

    async def _deliver(
        self,
        *,
        current: Collection[tuple[str, str]] = (),
        stored: dict[tuple[str, str], MemoryRecord] | None = None,
    ) -> int:
        """Send the queue in order; returns how many writes were delivered.

        Stops at the first write that cannot be delivered for operational reasons (it stays
        queued, the circuit opens, and the error is raised). A write the service rejects with a
        4xx about the write itself is dead-lettered; if it belongs to ``current`` the error is
        raised after the rest of the queue was delivered. With the ``add`` extension, the
        server's answer for each delivered record is put in ``stored`` by ``(user_id, key)``.
        """
        queue = await self.outbox.pending()
        if "add" in self.server_extensions:
            delivered, rejected = await self._deliver_batches(queue, current, stored)
        else:
            delivered, rejected = 0, None
            for q in queue:
                ok, error = await self._deliver_one(q, q.record, current)
                delivered += ok
                rejected = rejected or error
        self.stats_counters["writes_delivered"] += delivered
        self._circuit_open_until = 0.0
        if rejected is not None:
            raise rejected
        return delivered

    async def _deliver_one(
        self, q: QueuedWrite, record: MemoryRecord, current: Collection[tuple[str, str]]
    ) -> tuple[bool, InvalidInputError | None]:
        """Send one queued write as envelope parts (``POST /api/memory/store``), resuming after
        ``parts_sent``. Returns (delivered, the rejection to raise for a ``current`` write)."""
        payloads = encode(record, MAX_CONTENT_CHARS)
        try:
            for i in range(q.parts_sent, len(payloads)):
                await self._call(
                    "POST",
                    "/api/memory/store",
                    body=payloads[i],
                    idempotency_key=f"th-{id_hash(record.user_id, record.key)}-{i}",
                )
                if i + 1 < len(payloads):
                    await self.outbox.mark_progress(q.pos, i + 1)
        except ConfigError:
            raise
        except InvalidInputError as exc:
            return False, await self._reject([q], exc, current)
        except _FAIL_OPEN as exc:
            await self.outbox.mark_failed(q.pos, str(exc))
            self._trip()
            raise
        await self.outbox.mark_sent(q.pos)
        return True, None

    async def _reject(
        self, writes: Sequence[QueuedWrite], exc: InvalidInputError, current: Collection[Any]
    ) -> InvalidInputError | None:
        for q in writes:
            logger.warning("TIAMAT rejected queued write %d for good: %s", q.pos, exc)
            await self.outbox.dead_letter(q.pos, str(exc))
        mine = any((q.record.user_id, q.record.key) in current for q in writes)
        return exc if mine else None

    async def _deliver_batches(
        self,
        queue: list[QueuedWrite],
        current: Collection[tuple[str, str]],
        stored: dict[tuple[str, str], MemoryRecord] | None,
    ) -> tuple[int, InvalidInputError | None]:
        """Deliver the queue through ``x/add`` in order, as batches that fit one request body.

        Provisionally numbered turns are sent without ``seq`` (the server numbers them). A
        record that cannot fit a body, or whose parts were partly sent already, goes as
        envelope parts. A rejected batch is retried record by record, so only the culprit is
        dead-lettered.
        """
        budget = _positive_int(self.server_info.get("max_body_bytes"), cap=2**31)
        budget = (budget or DEFAULT_MAX_BODY) - 64  # room for {"records":[...]}
        delivered = 0
        rejected: InvalidInputError | None = None
        i = 0
        while i < len(queue):
            q = queue[i]
            wire = q.record.model_copy(update={"seq": None}) if q.local_seq else q.record
            size = _json_size(wire)
            if q.parts_sent or size is None or size > budget:
                # Parts already sent were encoded from the record as queued: finish them alike.
                ok, error = await self._deliver_one(q, q.record if q.parts_sent else wire, current)
                delivered += ok
                rejected = rejected or error
                i += 1
                continue
            chunk, wires, used = [q], [wire], size + 1
            j = i + 1
            while j < len(queue) and len(chunk) < EXTENSION_MAX_ADD:
                nq = queue[j]
                nwire = nq.record.model_copy(update={"seq": None}) if nq.local_seq else nq.record
                nsize = _json_size(nwire)
                if nq.parts_sent or nsize is None or used + nsize + 1 > budget:
                    break
                chunk.append(nq)
                wires.append(nwire)
                used += nsize + 1
                j += 1
            try:
                body = await self._call(
                    "POST",
                    "/api/memory/x/add",
                    body={"records": [w.model_dump(mode="json") for w in wires]},
                )
            except ConfigError:
                raise
            except InvalidInputError as exc:
                if len(chunk) > 1:
                    # One bad record fails the whole batch: find it by sending them one by one.
                    ok_n, error = await self._deliver_singly(chunk, wires, current, stored)
                    delivered += ok_n
                    rejected = rejected or error
                else:
                    rejected = rejected or await self._reject(chunk, exc, current)
                i = j
                continue
            except _FAIL_OPEN as exc:
                await self.outbox.mark_failed(q.pos, str(exc))
                self._trip()
                raise
            await self._accept(chunk, body, stored)
            delivered += len(chunk)
            i = j
        return delivered, rejected

    async def _deliver_singly(
        self,
        chunk: list[QueuedWrite],
        wires: list[MemoryRecord],
        current: Collection[tuple[str, str]],
        stored: dict[tuple[str, str], MemoryRecord] | None,
    ) -> tuple[int, InvalidInputError | None]:
        delivered = 0
        rejected: InvalidInputError | None = None
        for q, wire in zip(chunk, wires, strict=True):
            try:
                body = await self._call(
                    "POST", "/api/memory/x/add", body={"records": [wire.model_dump(mode="json")]}
                )
            except ConfigError:
                raise
            except InvalidInputError as exc:
                rejected = rejected or await self._reject([q], exc, current)
                continue
            except _FAIL_OPEN as exc:
                await self.outbox.mark_failed(q.pos, str(exc))
                self._trip()
                raise
            await self._accept([q], body, stored)
            delivered += 1
        return delivered, rejected

    async def _accept(
        self,
        chunk: list[QueuedWrite],
        body: Any,
        stored: dict[tuple[str, str], MemoryRecord] | None,
    ) -> None:
        """Unqueue a delivered batch; record the server's answers and advance the counters used
        for provisional numbering past the server's numbers."""
        await self.outbox.mark_sent_many(q.pos for q in chunk)
        answers = _records(body.get("records") if isinstance(body, Mapping) else None)
        counters: dict[tuple[str, str | None], int] = {}
        for r in answers:
            if stored is not None:
                stored.setdefault((r.user_id, r.key), r)
            if r.kind == "turn" and r.seq is not None:
                sess = (r.user_id, r.session_id)
                nxt = max(self._next_seq.get(sess, 1), r.seq + 1)
                self._next_seq[sess] = counters[sess] = nxt
        await self.outbox.advance_seqs(counters)

    async def flush(self) -> int:
        """Deliver every queued write now, ignoring the circuit breaker.

        Detects the server's extensions first if that has not succeeded yet (even before the
        retry interval). Returns how many were delivered. Raises the operational error (the
        rest stays queued) when the service still cannot take them.
        """
        await self._ensure_detected(force=True)
        async with self._write_lock:
            return await self._deliver()

    async def outbox_status(self) -> OutboxStatus:
        """Queued writes: count, users, dead letters, oldest age."""
        return await self.outbox.status()

    async def forget_queued(
        self,
        user_id: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> int:
        """Drop the queued (unsent) writes and local bookkeeping of a scope — a user, narrowed
        by ``agent_id`` / ``session_id`` / record ``ids`` as in :meth:`delete`; see
        :meth:`Outbox.forget`. Returns how many queued writes were dropped. Records the service
        already stored are not touched (that is :meth:`delete`)."""
        async with self._write_lock:
            return await self._forget_queued(user_id, agent_id, session_id, ids)

    async def _forget_queued(
        self,
        user_id: str,
        agent_id: str | None,
        session_id: str | None,
        ids: Sequence[str] | None,
    ) -> int:
        # Caller holds the write lock: no delivery can pick up what is being dropped.
        if agent_id is None and ids is None:
            self._next_seq = {
                k: v
                for k, v in self._next_seq.items()
                if not (k[0] == user_id and (session_id is None or k[1] == session_id))
            }
        return await self.outbox.forget(user_id, agent_id=agent_id, session_id=session_id, ids=ids)

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        """Remove a scope's records, or only ``ids`` within it (see the store contract).

        Needs the ``delete`` extension (``capabilities.can_delete``); otherwise raises
        :class:`CapabilityError` (the hosted API cannot delete). Queued writes of the scope are
        dropped first and counted with what the server removed; if the server then cannot be
        reached the mapped error is raised and they stay dropped.
        """
        await self._ensure_detected()
        if not self.capabilities.can_delete:
            raise CapabilityError(
                "the hosted TIAMAT API cannot delete memories (capabilities.can_delete is False)"
            )
        id_list = None if ids is None else [str(i) for i in ids]
        if id_list is not None and not id_list:
            return 0
        body: dict[str, Any] = {"user": scope.user_id}
        if scope.session_id is not None:
            body["session"] = scope.session_id
        if scope.agent_id is not None:
            body["agent"] = scope.agent_id
        if id_list is not None:
            body["ids"] = id_list
        # Under the write lock, so a replay cannot deliver a dropped write after the delete.
        async with self._write_lock:
            dropped = await self._forget_queued(
                scope.user_id, scope.agent_id, scope.session_id, id_list
            )
            answer = await self._call("POST", "/api/memory/x/delete", body=body)
        deleted = answer.get("deleted") if isinstance(answer, Mapping) else None
        if not isinstance(deleted, int) or isinstance(deleted, bool):
            raise StoreUnavailableError("TIAMAT x/delete answered without a 'deleted' count")
        return deleted + dropped

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
        """Ask ``/health`` what the server supports and update :attr:`capabilities` now (with
        the usual retries). Counts as the lazy detection. Raises the mapped error on failure."""
        self._use_health(await self.health())
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

        Hosted API: one ``GET /api/memory/recall`` for up to ``capabilities.max_search_limit``
        memories, filtered to the scope and kinds client-side, so fewer than ``limit`` hits can
        come back even when more would match. Scores are the service's when it sends them, else
        derived from its order (``1 / (1 + rank)``); spans are ``None``. With the ``search``
        extension: one ``GET /api/memory/x/search``, scoped and ranked by the server, with its
        spans, ``limit`` capped at ``capabilities.max_search_limit``.

        Either way: queued, unsent writes are not searched, and TiamatSession marker records
        (``meta["marker"]`` with empty text) are never returned. Extension detection, when it
        is due, runs inside the deadline. Fails open (returns ``[]``, counted in
        :attr:`stats_counters`) on deadline, open circuit or operational errors unless
        ``strict`` (argument or constructor), which raises :class:`StoreTimeoutError` / the
        operational error instead. Misconfiguration (a rejected key or URL:
        :class:`ConfigError`, other 4xx: :class:`InvalidInputError`) always raises: failing
        open would hide it forever.
        """
        strict = self.strict if strict is None else strict
        terms = query_terms(query) if isinstance(query, str) else []
        kinds = list(kinds)
        wanted = max(0, int(limit))
        if not terms or not kinds or wanted == 0:
            return []
        if self._circuit_open() and not strict:
            self.stats_counters["recall_skipped"] += 1
            return []
        q = " ".join(terms)[:MAX_QUERY_CHARS]
        try:
            return await asyncio.wait_for(
                self._search(q, scope, kinds, wanted), self.recall_deadline
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
        self, q: str, scope: Scope, kinds: list[RecordKind], wanted: int
    ) -> list[SearchHit]:
        await self._ensure_detected()
        limit = min(wanted, self.capabilities.max_search_limit)
        if "search" in self.server_extensions:
            return await self._search_ext(q, scope, kinds, limit)
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
            if _in_scope(d.record, scope) and d.record.kind in kinds and not _is_marker(d.record)
        ]
        use_server = bool(decoded) and all(d.score is not None and d.score > 0 for d in decoded)
        hits = [
            SearchHit(d.record, float(d.score) if use_server and d.score else 1.0 / (1 + d.rank))
            for d in decoded
        ]
        hits.sort(key=lambda h: -h.score)
        return hits[:limit]

    def _scope_params(self, scope: Scope) -> dict[str, str | int]:
        params: dict[str, str | int] = {"user": scope.user_id}
        if scope.agent_id is not None:
            params["agent"] = scope.agent_id
        if scope.session_id is not None:
            params["session"] = scope.session_id
        return params

    async def _search_ext(
        self, q: str, scope: Scope, kinds: list[RecordKind], limit: int
    ) -> list[SearchHit]:
        params = self._scope_params(scope)
        params.update(query=q, kind=",".join(dict.fromkeys(kinds)), limit=limit)
        body = await self._call("GET", "/api/memory/x/search", params=params)
        raw = body.get("hits") if isinstance(body, Mapping) else None
        hits: list[SearchHit] = []
        for h in raw if isinstance(raw, list) else []:
            if not isinstance(h, Mapping):
                continue
            (record,) = _records([h.get("record")]) or (None,)
            score = h.get("score")
            if record is None or not isinstance(score, (int, float)) or isinstance(score, bool):
                continue
            # The server scoped the search; checking again costs nothing and keeps a
            # misbehaving server from leaking another scope into recall.
            if not _in_scope(record, scope) or record.kind not in kinds or _is_marker(record):
                continue
            span = h.get("span")
            pair: tuple[int, int] | None = None
            if (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
            ):
                pair = (span[0], span[1])
            hits.append(SearchHit(record, float(score), pair))
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

        With the ``read`` extension one ``GET /api/memory/x/read`` (the server windows and
        limits), plus the scope's queued writes merged in; a read the server truncates (more
        than 10,000 records) falls back to the listing. Without it, one full listing of the
        account. Raises the mapped error when the service cannot be read (reads do not fail
        open).
        """
        if kinds is not None and not list(kinds):
            return []
        await self._ensure_detected()
        records: list[MemoryRecord] | None = None
        if "read" in self.server_extensions:
            records = await self._read_ext(scope, kinds, seq_from, seq_to, limit, newest)
        if records is None:
            records = await self._scope_records(scope)
        else:
            records = await self._with_queued(records, scope)
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

    async def _read_ext(
        self,
        scope: Scope,
        kinds: Sequence[RecordKind] | None,
        seq_from: int | None,
        seq_to: int | None,
        limit: int | None,
        newest: bool,
    ) -> list[MemoryRecord] | None:
        """The server's records of a read (before queued writes are merged), or ``None`` when
        it truncated an answer the caller needs whole.

        Asking the server for the same ``limit`` is enough even though queued writes are merged
        afterwards: the first (or last) ``limit`` of the union lie within the server's first
        (or last) ``limit`` plus the queued ones.
        """
        if (seq_to is not None and seq_to < 0) or (limit is not None and limit <= 0):
            return []
        params = self._scope_params(scope)
        if kinds is not None:
            params["kind"] = ",".join(dict.fromkeys(kinds))
        if seq_from is not None and seq_from > 0:
            params["seq_from"] = int(seq_from)
        if seq_to is not None:
            params["seq_to"] = int(seq_to)
        if limit is not None:
            params["limit"] = min(int(limit), EXTENSION_MAX_READ)
            if newest:
                params["newest"] = "true"
        body = await self._call("GET", "/api/memory/x/read", params=params)
        if not isinstance(body, Mapping):
            raise StoreUnavailableError("TIAMAT x/read answered without records")
        records = _records(body.get("records"))
        if body.get("truncated") is True and (limit is None or limit > len(records)):
            return None
        return records

    async def _with_queued(self, records: list[MemoryRecord], scope: Scope) -> list[MemoryRecord]:
        """``records`` (from the server) plus the scope's queued writes they do not hold."""
        have = {(r.user_id, r.key) for r in records}
        out = list(records)
        for q in await self.outbox.pending(scope.user_id):
            r = q.record
            if (r.user_id, r.key) not in have and _in_scope(r, scope):
                have.add((r.user_id, r.key))
                out.append(r)
        return out

    async def list_sessions(self, user_id: str) -> list[SessionInfo]:
        """Sessions of a user (``None`` for records without one), by first record time.

        Queued writes are counted. With the ``sessions`` extension one ``GET
        /api/memory/x/sessions``; without it, one listing of the account.
        """
        await self._ensure_detected()
        if "sessions" not in self.server_extensions:
            return _session_infos(user_id, await self._scope_records(Scope(user_id)))
        body = await self._call("GET", "/api/memory/x/sessions", params={"user": user_id})
        raw = body.get("sessions") if isinstance(body, Mapping) else None
        infos: dict[str | None, SessionInfo] = {}
        for s in raw if isinstance(raw, list) else []:
            if not isinstance(s, Mapping):
                continue
            sid, n, last = s.get("session_id"), s.get("records"), s.get("last_seq")
            if not (sid is None or isinstance(sid, str)) or not isinstance(n, int):
                continue
            infos[sid] = SessionInfo(
                user_id,
                sid,
                n,
                _parse_time(s.get("first_at")),
                _parse_time(s.get("last_at")),
                last if isinstance(last, int) else 0,
            )
        queued = [q.record for q in await self.outbox.pending(user_id)]
        if not queued:
            return list(infos.values())
        # A queued write is normally not on the server yet (one delivered but not yet marked
        # sent would be counted twice until the next delivery).
        for sid, group in _by_session(queued).items():
            base = infos.get(sid)
            extra = _session_infos(user_id, group)[0]
            if base is None:
                infos[sid] = extra
                continue
            infos[sid] = SessionInfo(
                user_id,
                sid,
                base.records + extra.records,
                min((t for t in (base.first_at, extra.first_at) if t is not None), default=None),
                max((t for t in (base.last_at, extra.last_at) if t is not None), default=None),
                max(base.last_seq, extra.last_seq),
            )
        return sorted(infos.values(), key=lambda i: (i.first_at or _EPOCH, i.session_id or ""))

    async def list_users(self) -> list[str]:
        """Every user with stored or queued records, sorted (with the ``users`` extension from
        ``GET /api/memory/x/users``, else envelope records of one listing)."""
        await self._ensure_detected()
        if "users" not in self.server_extensions:
            return sorted({r.user_id for r in await self._scope_records(None)})
        body = await self._call("GET", "/api/memory/x/users")
        raw = body.get("users") if isinstance(body, Mapping) else None
        users = {u for u in (raw if isinstance(raw, list) else []) if isinstance(u, str)}
        users.update(q.user_id for q in await self.outbox.users())
        return sorted(users)

    async def stats(self, user_id: str | None = None) -> StoreStats:
        """Counts over records (stored and queued); foreign memories are not counted.

        With the ``read`` and ``users`` extensions, one read per user; else one listing.
        """
        await self._ensure_detected()
        if {"read", "users"} <= self.server_extensions:
            users = [user_id] if user_id is not None else await self.list_users()
            records = [r for u in users for r in await self.read(Scope(u))]
        else:
            records = await self._scope_records(Scope(user_id) if user_id is not None else None)
        by_kind: dict[str, int] = {}
        for r in records:
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        users_seen = {r.user_id for r in records}
        sessions = {(r.user_id, r.session_id) for r in records}
        return StoreStats(len(users_seen), len(sessions), len(records), by_kind)

    async def close(self) -> None:
        """Close the outbox and, when this store built it, the HTTP client. Idempotent.

        Queued writes stay in the outbox file for the next process (not with ``":memory:"``).
        """
        if self._closed:
            return
        self._closed = True
        task, self._detect_task = self._detect_task, None
        if task is not None and not task.done():
            task.cancel()
        try:
            await self.outbox.close()
        finally:
            if self._owns_client:
                await self._client.aclose()


def _by_session(records: Sequence[MemoryRecord]) -> dict[str | None, list[MemoryRecord]]:
    groups: dict[str | None, list[MemoryRecord]] = {}
    for r in records:
        groups.setdefault(r.session_id, []).append(r)
    return groups


def _session_infos(user_id: str, records: Sequence[MemoryRecord]) -> list[SessionInfo]:
    """Session summaries of ``records``, by first record time (then session id)."""
    infos = [
        SessionInfo(
            user_id,
            sid,
            len(rs),
            min(r.created_at for r in rs),
            max(r.created_at for r in rs),
            max((r.seq or 0 for r in rs), default=0),
        )
        for sid, rs in _by_session(records).items()
    ]
    infos.sort(key=lambda i: (i.first_at or _EPOCH, i.session_id or ""))
    return infos


def _status_or_name(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__
