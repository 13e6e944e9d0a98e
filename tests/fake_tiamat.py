"""An in-memory fake of the hosted TIAMAT memory API, as an ``httpx.MockTransport`` handler.

It behaves like the documented API and is strict where the real one has limits, so a client
that breaks a rule fails here: content ≤ 10,000 characters, ≤ 20 tags, importance in 0–1,
recall is ``GET`` only with ``limit`` ≤ 50, answers use ``results`` (``memories`` for ``list``
when ``list_key`` says so), every call needs the bearer key. Recall is naive word matching: a
query word matches a content word when they are equal or one is a prefix of the other (both at
least 3 letters), which stands in for the service's fuzzy search.

Knobs for failure tests: ``down`` (connection refused, ``/health`` included), ``fail_next`` (a
queue of statuses or exceptions answered before normal service), ``quota_forever`` (every call
answers 429), ``retry_after`` (sent with 429s), ``recall_delay`` (seconds recall sleeps),
``extensions`` (advertised by ``/health``). ``fail_next`` and ``quota_forever`` apply to ``/api/``
calls only, so the client's one ``/health`` request (extension detection) does not consume them.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _matches(q: str, word: str) -> bool:
    if q == word:
        return True
    if len(q) >= 3 and len(word) >= 3:
        return word.startswith(q) or q.startswith(word)
    return False


@dataclass
class FakeTiamat:
    api_key: str = field(default="test-key", repr=False)  # its repr shows in tracebacks
    memories: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    down: bool = False
    fail_next: list[int | Exception] = field(default_factory=list)
    quota_forever: bool = False
    retry_after: float | None = None
    retry_after_header: str | None = None
    recall_delay: float = 0.0
    list_key: str = "results"
    extensions: list[str] | None = None
    max_list_page: int = 100
    store_budget: int | None = None
    """Store calls accepted before the service goes down (``None``: unlimited)."""
    _counter: int = 0

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport)

    # -- helpers for tests ----------------------------------------------------------------

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def stored_contents(self) -> list[str]:
        return [m["content"] for m in self.memories]

    # -- the API --------------------------------------------------------------------------

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.store_budget is not None and request.url.path == "/api/memory/store":
            if self.store_budget <= 0:
                self.down = True
            self.store_budget -= 1
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        api = request.url.path.startswith("/api/")
        if self.fail_next and api:
            failure = self.fail_next.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return self._error(failure)
        if self.quota_forever and api:
            return self._error(429)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "unauthorized"})
        route: dict[tuple[str, str], Callable[[httpx.Request], Any]] = {
            ("POST", "/api/memory/store"): self._store,
            ("GET", "/api/memory/list"): self._list,
            ("GET", "/api/memory/stats"): self._stats,
            ("POST", "/api/memory/learn"): self._learn,
            ("GET", "/health"): self._health,
        }
        if request.url.path == "/api/memory/recall":
            if request.method != "GET":
                return httpx.Response(405, json={"error": "recall is GET"})
            if self.recall_delay:
                await asyncio.sleep(self.recall_delay)
            return self._recall(request)
        fn = route.get((request.method, request.url.path))
        if fn is None:
            return httpx.Response(404, json={"error": "not found"})
        result = fn(request)
        return result if isinstance(result, httpx.Response) else httpx.Response(200, json=result)

    def _error(self, status: int) -> httpx.Response:
        body: dict[str, Any] = {"error": f"status {status}"}
        headers = {}
        if status == 429:
            body["error"] = "quota exceeded"
            if self.retry_after is not None:
                body["retry_after_seconds"] = self.retry_after
            if self.retry_after_header is not None:
                headers["Retry-After"] = self.retry_after_header
        return httpx.Response(status, json=body, headers=headers)

    def _store(self, request: httpx.Request) -> Any:
        try:
            body = json.loads(request.content)
        except ValueError:
            return httpx.Response(400, json={"error": "invalid json"})
        content, tags, importance = (
            body.get("content"),
            body.get("tags", []),
            body.get("importance", 0.5),
        )
        if not isinstance(content, str) or not content or len(content) > 10_000:
            return httpx.Response(400, json={"error": "content must be 1..10000 chars"})
        if (
            not isinstance(tags, list)
            or len(tags) > 20
            or not all(isinstance(t, str) for t in tags)
        ):
            return httpx.Response(400, json={"error": "at most 20 string tags"})
        if not isinstance(importance, (int, float)) or not 0 <= importance <= 1:
            return httpx.Response(400, json={"error": "importance must be in 0..1"})
        self._counter += 1
        memory = {
            "id": uuid.uuid4().hex,
            "content": content,
            "tags": tags,
            "importance": importance,
            # Strictly increasing, like a real clock at this granularity.
            "created_at": (T0 + timedelta(milliseconds=self._counter)).isoformat(),
            "access_count": 0,
        }
        self.memories.append(memory)
        return {"success": True, "id": memory["id"]}

    def _recall(self, request: httpx.Request) -> httpx.Response:
        query = request.url.params.get("query", "")
        try:
            limit = int(request.url.params.get("limit", "10"))
        except ValueError:
            return httpx.Response(400, json={"error": "bad limit"})
        if not 1 <= limit <= 50:
            return httpx.Response(400, json={"error": "limit must be 1..50"})
        qwords = _words(query)
        scored = []
        for pos, memory in enumerate(self.memories):
            words = _words(memory["content"])
            score = sum(1 for q in qwords if any(_matches(q, w) for w in words))
            if score:
                scored.append((score, pos, memory))
        scored.sort(key=lambda t: (-t[0], -t[1]))
        results = [m for _, _, m in scored[:limit]]
        return httpx.Response(200, json={"results": results, "count": len(results)})

    def _list(self, request: httpx.Request) -> Any:
        limit = min(int(request.url.params.get("limit", "50")), self.max_list_page)
        offset = int(request.url.params.get("offset", "0"))
        page = self.memories[offset : offset + limit]
        return {self.list_key: page, "count": len(page), "total": len(self.memories)}

    def _stats(self, request: httpx.Request) -> Any:
        return {"total_memories": len(self.memories), "total_facts": len(self.facts)}

    def _learn(self, request: httpx.Request) -> Any:
        body = json.loads(request.content)
        self.facts.append(body)
        return {"success": True}

    def _health(self, request: httpx.Request) -> Any:
        info: dict[str, Any] = {"status": "ok"}
        if self.extensions is not None:
            info["extensions"] = self.extensions
        return info
