"""Translate SDK input items (``TResponseInputItem`` dicts) to searchable text and records.

Every item type the SDK can put in a conversation is accepted: messages (easy and typed), function
calls and outputs, handoff calls/outputs, reasoning, built-in tool calls, and unknown future types.
Unknown or malformed items never raise here: their text is a compact JSON rendering, so nothing is
lost and the original item is kept verbatim in ``MemoryRecord.item``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .models import MemoryRecord, make_record

__all__ = ["item_role", "item_text", "item_to_record", "to_jsonable"]

MAX_ITEM_TEXT = 20_000
"""Longest text kept for search from one item (the full item is stored regardless)."""


def to_jsonable(item: Any) -> dict[str, Any]:
    """A plain JSON-able dict for an SDK item (pydantic models are dumped, dicts copied)."""
    if hasattr(item, "model_dump"):
        dumped = item.model_dump(exclude_unset=True, mode="json")
        return dict(dumped) if isinstance(dumped, Mapping) else {"value": dumped}
    if isinstance(item, Mapping):
        plain: dict[str, Any] = json.loads(json.dumps(dict(item), default=str))
        return plain
    return {"type": "unknown", "value": json.loads(json.dumps(item, default=str))}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                for key in ("text", "refusal", "transcript"):
                    value = part.get(key)
                    if isinstance(value, str):
                        parts.append(value)
                        break
                else:
                    kind = part.get("type")
                    if isinstance(kind, str) and kind.startswith("input_"):
                        parts.append(f"[{kind[len('input_') :]}]")
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return "" if content is None else str(content)


def item_role(item: Mapping[str, Any]) -> str:
    """``user``/``assistant``/``system``/``developer`` for messages, else ``tool``."""
    role = item.get("role")
    if isinstance(role, str) and item.get("type", "message") == "message":
        return role
    return "tool"


def item_text(item: Mapping[str, Any]) -> str:
    """Searchable text of one SDK item (empty only when the item carries no text at all)."""
    kind = item.get("type", "message")
    text: str
    if kind == "message" or ("role" in item and "content" in item):
        text = _content_text(item.get("content"))
    elif kind == "function_call":
        text = f"called {item.get('name', '?')}({item.get('arguments', '')})"
    elif kind == "function_call_output":
        out = item.get("output")
        text = f"tool result: {out if isinstance(out, str) else _content_text(out)}"
    elif kind == "reasoning":
        summary = item.get("summary")
        parts = summary if isinstance(summary, (list, tuple)) else []
        text = " ".join(
            s["text"] for s in parts if isinstance(s, Mapping) and isinstance(s.get("text"), str)
        )
    else:
        text = json.dumps(
            {k: v for k, v in item.items() if k not in ("id",)}, ensure_ascii=False, default=str
        )
    return text[:MAX_ITEM_TEXT]


def item_to_record(
    item: Any,
    *,
    user_id: str,
    session_id: str | None,
    agent_id: str | None = None,
    created_at: datetime | None = None,
    key: str = "",
    seq: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> MemoryRecord:
    """A ``turn`` record for one SDK item, keeping the item verbatim for replay."""
    data = to_jsonable(item)
    fields: dict[str, Any] = {
        "user_id": user_id,
        "session_id": session_id,
        "agent_id": agent_id,
        "kind": "turn",
        "role": item_role(data),
        "text": item_text(data),
        "item": data,
        "key": key,
        "seq": seq,
        "meta": dict(meta or {}),
    }
    if created_at is not None:
        fields["created_at"] = created_at
    return make_record(**fields)
