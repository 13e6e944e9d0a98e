"""The server's OpenAPI 3.1 document, written by hand so it says exactly what the server does.

Pure data (no web framework): ``tests/test_server.py`` validates it with
``openapi-spec-validator`` and checks that every route of the app is documented.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


_ERR = _json(_ref("Error"), "Error")
_STD_ERRORS = {
    "401": _ERR | {"description": "Missing, invalid or revoked API key"},
    "422": _ERR | {"description": "Invalid parameters or body"},
    "429": _ERR | {"description": "Quota exceeded"},
    "503": _ERR | {"description": "The underlying store is unavailable"},
}
_BODY_ERRORS = {
    "400": _ERR | {"description": "Body is not JSON"},
    "413": _ERR | {"description": "Body larger than the server's limit"},
}

_USER_Q = _query("user", {"type": "string", "minLength": 1}, "Client user id.", required=True)
_AGENT_Q = _query("agent", {"type": "string"}, "Only this agent's records.")
_SESSION_Q = _query("session", {"type": "string"}, "Only this session's records.")
_KIND_Q = {
    **_query(
        "kind",
        {"type": "array", "items": {"type": "string", "enum": ["turn", "summary", "fact"]}},
        "Record kinds (repeat the parameter or separate with commas).",
    ),
    "style": "form",
    "explode": True,
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        op["responses"] = {**_BODY_ERRORS, **op["responses"]}
    if public:
        op["security"] = []
    else:
        op["responses"] = {**_STD_ERRORS, **op["responses"]}
    return op


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "detail": {}},
    },
    "StoreRequest": {
        "type": "object",
        "required": ["content"],
        "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": 10000},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "importance": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
        },
    },
    "StoreResponse": {
        "type": "object",
        "required": ["success", "id"],
        "properties": {
            "success": {"type": "boolean"},
            "id": {"type": "string"},
            "stored": {"type": "string", "enum": ["record", "plain", "part"]},
        },
    },
    "LearnRequest": {
        "type": "object",
        "required": ["subject", "predicate", "object"],
        "properties": {
            "subject": {"type": "string", "minLength": 1},
            "predicate": {"type": "string", "minLength": 1},
            "object": {"type": "string", "minLength": 1},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
        },
    },
    "Memory": {
        "type": "object",
        "required": ["id", "content", "tags", "importance", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "content": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "importance": {"type": "number"},
            "created_at": {"type": "string", "format": "date-time"},
            "score": {
                "type": "number",
                "description": "Relevance (recall only); higher is better.",
            },
        },
    },
    "MemoryList": {
        "type": "object",
        "required": ["results", "count"],
        "properties": {
            "results": {"type": "array", "items": _ref("Memory")},
            "count": {"type": "integer"},
            "total": {"type": "integer"},
        },
    },
    "Record": {
        "type": "object",
        "description": "A tiamat-hooks MemoryRecord (lossless JSON).",
        "required": ["id", "user_id", "kind", "text"],
        "properties": {
            "id": {"type": "string"},
            "user_id": {"type": "string"},
            "agent_id": {"type": ["string", "null"]},
            "session_id": {"type": ["string", "null"]},
            "kind": {"type": "string", "enum": ["turn", "summary", "fact"]},
            "role": {"type": ["string", "null"]},
            "text": {"type": "string"},
            "item": {"type": ["object", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "seq": {"type": ["integer", "null"], "minimum": 1},
            "key": {"type": "string"},
            "meta": {"type": "object"},
        },
    },
    "Session": {
        "type": "object",
        "properties": {
            "session_id": {"type": ["string", "null"]},
            "records": {"type": "integer"},
            "first_at": {"type": ["string", "null"], "format": "date-time"},
            "last_at": {"type": ["string", "null"], "format": "date-time"},
            "last_seq": {"type": "integer"},
        },
    },
    "AddRequest": {
        "type": "object",
        "required": ["records"],
        "properties": {
            "records": {"type": "array", "items": _ref("Record"), "minItems": 1, "maxItems": 1000}
        },
    },
    "DeleteRequest": {
        "type": "object",
        "required": ["user"],
        "properties": {
            "user": {"type": "string", "minLength": 1},
            "session": {"type": ["string", "null"]},
            "agent": {"type": ["string", "null"]},
            "ids": {"type": ["array", "null"], "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string"},
            "service": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
            "max_recall_limit": {"type": "integer"},
            "max_body_bytes": {"type": "integer"},
            "can_delete": {"type": "boolean"},
        },
    },
}


def openapi_document(*, max_body: int = 65536) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the server (a fresh dict on every call)."""
    ext = "extensions"
    paths: dict[str, Any] = {
        "/health": {
            "get": _op(
                "Liveness and the extensions this server offers",
                {"200": _json(_ref("Health"))},
                tag="service",
                public=True,
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document", {"200": _json({"type": "object"})}, tag="service", public=True
            )
        },
        "/": {
            "get": _op(
                "The inspector page (HTML; its API calls use the key entered on the page)",
                {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                tag="service",
                public=True,
            )
        },
        "/api/memory/store": {
            "post": _op(
                "Store a memory (a tiamat-hooks envelope, one part of one, or plain content)",
                {"200": _json(_ref("StoreResponse")), "409": _ERR},
                tag="hosted",
                body="StoreRequest",
            )
        },
        "/api/memory/recall": {
            "get": _op(
                "Full-text recall over every memory of the key's tenant",
                {"200": _json(_ref("MemoryList"))},
                tag="hosted",
                params=[
                    _query("query", {"type": "string"}, "What to look for."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
                        "Records to return (a split record's parts all come back).",
                    ),
                ],
            )
        },
        "/api/memory/learn": {
            "post": _op(
                "Store a knowledge triple",
                {"200": _json(_ref("StoreResponse"))},
                tag="hosted",
                body="LearnRequest",
            )
        },
        "/api/memory/list": {
            "get": _op(
                "Every memory of the tenant, a page at a time",
                {"200": _json(_ref("MemoryList"))},
                tag="hosted",
                params=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        "Page size.",
                    ),
                    _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip."),
                ],
            )
        },
        "/api/memory/stats": {
            "get": _op(
                "Counts for the tenant",
                {"200": _json({"type": "object"})},
                tag="hosted",
            )
        },
        "/api/memory/x/users": {
            "get": _op(
                "Users of the tenant",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "users": {"type": "array", "items": {"type": "string"}},
                                "count": {"type": "integer"},
                            },
                        }
                    )
                },
                tag=ext,
            )
        },
        "/api/memory/x/sessions": {
            "get": _op(
                "Sessions of one user",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "user": {"type": "string"},
                                "sessions": {"type": "array", "items": _ref("Session")},
                                "count": {"type": "integer"},
                            },
                        }
                    )
                },
                tag=ext,
                params=[_USER_Q],
            )
        },
        "/api/memory/x/read": {
            "get": _op(
                "Records of a scope in (session, seq) order",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "records": {"type": "array", "items": _ref("Record")},
                                "count": {"type": "integer"},
                                "truncated": {"type": "boolean"},
                            },
                        }
                    )
                },
                tag=ext,
                params=[
                    _USER_Q,
                    _AGENT_Q,
                    _SESSION_Q,
                    _KIND_Q,
                    _query("seq_from", {"type": "integer", "minimum": 0}, "Lowest seq."),
                    _query("seq_to", {"type": "integer", "minimum": 0}, "Highest seq."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 0, "maximum": 10000},
                        "At most this many records (default and maximum 10000).",
                    ),
                    _query(
                        "newest",
                        {"type": "boolean", "default": False},
                        "With limit: the last records, still in ascending order.",
                    ),
                ],
            )
        },
        "/api/memory/x/search": {
            "get": _op(
                "Full-text search within one user's scope, with scores and spans",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "hits": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "record": _ref("Record"),
                                            "score": {"type": "number"},
                                            "span": {
                                                "type": ["array", "null"],
                                                "items": {"type": "integer"},
                                            },
                                        },
                                    },
                                },
                                "count": {"type": "integer"},
                            },
                        }
                    )
                },
                tag=ext,
                params=[
                    _query("query", {"type": "string"}, "What to look for."),
                    _USER_Q,
                    _AGENT_Q,
                    _SESSION_Q,
                    _KIND_Q,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                        "Most hits.",
                    ),
                ],
            )
        },
        "/api/memory/x/add": {
            "post": _op(
                "Add records with server-assigned sequence numbers (idempotent by user and key)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "records": {"type": "array", "items": _ref("Record")},
                                "count": {"type": "integer"},
                            },
                        }
                    ),
                    "409": _ERR,
                },
                tag=ext,
                body="AddRequest",
            )
        },
        "/api/memory/x/delete": {
            "post": _op(
                "Delete a user's records, a session's, or given ids",
                {
                    "200": _json(
                        {"type": "object", "properties": {"deleted": {"type": "integer"}}}
                    ),
                    "501": _ERR,
                },
                tag=ext,
                body="DeleteRequest",
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tiamat-hooks memory server",
            "version": __version__,
            "description": (
                "The hosted TIAMAT memory API, self-hosted over any tiamat-hooks store, plus "
                f"extensions under /api/memory/x/. Request bodies are limited to {max_body} bytes."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "hosted", "description": "The hosted TIAMAT memory API, exactly."},
            {"name": ext, "description": "What the hosted API lacks (advertised by /health)."},
            {"name": "service", "description": "Health."},
        ],
        "paths": copy.deepcopy(paths),
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
