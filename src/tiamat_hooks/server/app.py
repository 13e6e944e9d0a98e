"""The Starlette application: parsing, validation, auth and the one error map.

Imported only through :func:`tiamat_hooks.server.create_app`, which turns a missing Starlette into
a :class:`~tiamat_hooks.errors.ConfigError`. Operations live in :mod:`.service`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import (
    CapabilityError,
    InvalidInputError,
    QuotaExceededError,
    StoreConflictError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from ..models import RECORD_KINDS, MemoryRecord, RecordKind
from ..stores.base import MemoryStore
from .auth import KeyResolver, Principal
from .openapi import openapi_document
from .service import (
    EXTENSIONS,
    MAX_LIST_LIMIT,
    MAX_READ_LIMIT,
    MAX_RECALL_LIMIT,
    MAX_SEARCH_LIMIT,
    MemoryService,
)

__all__ = ["DEFAULT_MAX_BODY", "ApiError", "build_app"]

DEFAULT_MAX_BODY = 64 * 1024
"""Largest request body accepted, in bytes (larger → 413)."""

_M = TypeVar("_M", bound=BaseModel)


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error": message, ...extra}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


# The one map from package errors to HTTP statuses; the first matching class wins.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (QuotaExceededError, 429),
    (StoreConflictError, 409),
    (StoreTimeoutError, 504),
    (StoreUnavailableError, 503),
    (StoreError, 500),
    (CapabilityError, 501),
    (InvalidInputError, 422),
)


def error_response(exc: Exception) -> JSONResponse:
    """The JSON answer for any error an endpoint raises. The only place errors become HTTP."""
    if isinstance(exc, ApiError):
        return JSONResponse(
            {"error": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers
        )
    if isinstance(exc, HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, ValidationError):
        detail = exc.errors(include_url=False, include_input=False, include_context=False)
        return JSONResponse({"error": "invalid request body", "detail": detail}, status_code=422)
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=status)
    # Unexpected errors: Starlette's ServerErrorMiddleware logs them and answers 500.
    raise exc


# -- request bodies ----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


class StoreBody(_Body):
    content: str = Field(min_length=1, max_length=10_000)
    tags: list[str] = Field(default_factory=list, max_length=20)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)


class LearnBody(_Body):
    subject: str = Field(min_length=1, max_length=1000)
    predicate: str = Field(min_length=1, max_length=1000)
    object: str = Field(min_length=1, max_length=1000)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)


class AddBody(_Body):
    records: list[MemoryRecord] = Field(min_length=1, max_length=1000)


class DeleteBody(_Body):
    user: str = Field(min_length=1)
    session: str | None = None
    agent: str | None = None
    ids: list[str] | None = Field(default=None, max_length=10_000)


async def _json_body(request: Request, model: type[_M], max_body: int) -> _M:
    """Read at most ``max_body`` bytes (413 beyond), parse JSON (400) and validate (422)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, f"request body is larger than {max_body} bytes")
    chunks: list[bytes] = []
    size = 0
    # Counted while streaming: a missing or false Content-Length cannot get past the limit.
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise ApiError(413, f"request body is larger than {max_body} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "request body must be a JSON object")
    return model.model_validate(data)


# -- query parameters --------------------------------------------------------------------------


def _int_param(request: Request, name: str, *, lo: int, hi: int, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(422, f"{name} must be between {lo} and {hi}")
    return value


def _str_param(request: Request, name: str, *, required: bool = False) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(422, f"query parameter {name!r} is required")
        return None
    return value


def _bool_param(request: Request, name: str) -> bool:
    raw = (request.query_params.get(name) or "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ApiError(422, f"{name} must be true or false")


def _kinds_param(request: Request) -> list[RecordKind] | None:
    values = request.query_params.getlist("kind")
    if not values:
        return None
    kinds: list[RecordKind] = []
    for v in values:
        for part in v.split(","):
            if part not in RECORD_KINDS:
                raise ApiError(422, f"kind must be one of {', '.join(RECORD_KINDS)}")
            kinds.append(part)
    return kinds


# -- serialisation -----------------------------------------------------------------------------


def _record_json(record: MemoryRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


# -- the app -----------------------------------------------------------------------------------

Handler = Callable[[Request, Principal], Awaitable[Response]]


def build_app(
    store: MemoryStore,
    *,
    keys: KeyResolver,
    max_body: int = DEFAULT_MAX_BODY,
    close_store: bool = False,
    inspector: bool = True,
) -> Starlette:
    """See :func:`tiamat_hooks.server.create_app`."""
    service = MemoryService(store)

    async def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
        # The registry reads a SQLite file: keep that off the event loop.
        found = await anyio.to_thread.run_sync(keys.resolve, token)
        if found is None:
            raise ApiError(
                401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        return found

    def authed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, await principal(request))
            except Exception as exc:
                return error_response(exc)

        endpoint.__name__ = handler.__name__
        return endpoint

    # -- hosted API ----------------------------------------------------------------------------

    async def store_memory(request: Request, p: Principal) -> Response:
        body = await _json_body(request, StoreBody, max_body)
        result = await service.store_memory(
            p,
            body.content,
            body.tags,
            body.importance,
            idempotency_key=request.headers.get("idempotency-key"),
        )
        return JSONResponse(result)

    async def recall(request: Request, p: Principal) -> Response:
        query = request.query_params.get("query", "")
        limit = _int_param(request, "limit", lo=1, hi=MAX_RECALL_LIMIT, default=10)
        assert limit is not None
        results = await service.recall(p, query, limit)
        return JSONResponse({"results": results, "count": len(results)})

    async def learn(request: Request, p: Principal) -> Response:
        body = await _json_body(request, LearnBody, max_body)
        return JSONResponse(
            await service.learn(p, body.subject, body.predicate, body.object, body.confidence)
        )

    async def list_memories(request: Request, p: Principal) -> Response:
        limit = _int_param(request, "limit", lo=1, hi=MAX_LIST_LIMIT, default=100)
        offset = _int_param(request, "offset", lo=0, hi=2**62, default=0)
        assert limit is not None and offset is not None
        results, total = await service.list_memories(p, limit, offset)
        return JSONResponse({"results": results, "count": len(results), "total": total})

    async def stats(request: Request, p: Principal) -> Response:
        return JSONResponse(await service.stats(p))

    # -- extensions ----------------------------------------------------------------------------

    async def x_users(request: Request, p: Principal) -> Response:
        users = await service.users(p)
        return JSONResponse({"users": users, "count": len(users)})

    async def x_sessions(request: Request, p: Principal) -> Response:
        user = _str_param(request, "user", required=True)
        assert user is not None
        infos = await service.sessions(p, user)
        sessions = [
            {
                "session_id": i.session_id,
                "records": i.records,
                "first_at": i.first_at.isoformat() if i.first_at else None,
                "last_at": i.last_at.isoformat() if i.last_at else None,
                "last_seq": i.last_seq,
            }
            for i in infos
        ]
        return JSONResponse({"user": user, "sessions": sessions, "count": len(sessions)})

    async def x_read(request: Request, p: Principal) -> Response:
        user = _str_param(request, "user", required=True)
        assert user is not None
        result = await service.read(
            p,
            user,
            agent_id=_str_param(request, "agent"),
            session_id=_str_param(request, "session"),
            kinds=_kinds_param(request),
            seq_from=_int_param(request, "seq_from", lo=0, hi=2**62, default=None),
            seq_to=_int_param(request, "seq_to", lo=0, hi=2**62, default=None),
            limit=_int_param(request, "limit", lo=0, hi=MAX_READ_LIMIT, default=None),
            newest=_bool_param(request, "newest"),
        )
        records = [_record_json(r) for r in result.records]
        return JSONResponse(
            {"records": records, "count": len(records), "truncated": result.truncated}
        )

    async def x_search(request: Request, p: Principal) -> Response:
        user = _str_param(request, "user", required=True)
        assert user is not None
        limit = _int_param(request, "limit", lo=1, hi=MAX_SEARCH_LIMIT, default=50)
        assert limit is not None
        hits = await service.search(
            p,
            request.query_params.get("query", ""),
            user,
            agent_id=_str_param(request, "agent"),
            session_id=_str_param(request, "session"),
            kinds=_kinds_param(request),
            limit=limit,
        )
        out = [
            {
                "record": _record_json(h.record),
                "score": h.score,
                "span": list(h.span) if h.span is not None else None,
            }
            for h in hits
        ]
        return JSONResponse({"hits": out, "count": len(out)})

    async def x_add(request: Request, p: Principal) -> Response:
        body = await _json_body(request, AddBody, max_body)
        stored = await service.add(p, body.records)
        records = [_record_json(r) for r in stored]
        return JSONResponse({"records": records, "count": len(records)})

    async def x_delete(request: Request, p: Principal) -> Response:
        body = await _json_body(request, DeleteBody, max_body)
        deleted = await service.delete(
            p, body.user, agent_id=body.agent, session_id=body.session, ids=body.ids
        )
        return JSONResponse({"deleted": deleted})

    # -- public --------------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "service": "tiamat-hooks",
                "version": __version__,
                "extensions": list(EXTENSIONS),
                "max_recall_limit": MAX_RECALL_LIMIT,
                "max_body_bytes": max_body,
                "can_delete": store.capabilities.can_delete,
            }
        )

    document = openapi_document(max_body=max_body)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    page = resources.files(__package__).joinpath("inspector.html").read_text("utf-8")

    async def index(request: Request) -> Response:
        # Self-contained page; the CSP keeps it from loading anything but itself and this API.
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
                "Cache-Control": "no-store",
            },
        )

    def route(path: str, handler: Handler, method: Literal["GET", "POST"]) -> Route:
        return Route(path, authed(handler), methods=[method])

    routes: Sequence[Route] = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        route("/api/memory/store", store_memory, "POST"),
        route("/api/memory/recall", recall, "GET"),
        route("/api/memory/learn", learn, "POST"),
        route("/api/memory/list", list_memories, "GET"),
        route("/api/memory/stats", stats, "GET"),
        route("/api/memory/x/users", x_users, "GET"),
        route("/api/memory/x/sessions", x_sessions, "GET"),
        route("/api/memory/x/read", x_read, "GET"),
        route("/api/memory/x/search", x_search, "GET"),
        route("/api/memory/x/add", x_add, "POST"),
        route("/api/memory/x/delete", x_delete, "POST"),
    ]
    if inspector:
        routes = [*routes, Route("/", index, methods=["GET"])]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                await store.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    return Starlette(
        routes=list(routes),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
