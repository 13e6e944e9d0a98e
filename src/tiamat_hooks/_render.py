"""Rendering helpers shared by everything that puts stored text in front of a model.

Recall blocks, compaction summaries and fact lines all quote stored text inside frames
(``<memory>`` ... ``</memory>``, transcripts). One function defuses frame-like tags and folds
whitespace, so no stored text can close a frame early, whichever path renders it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from .models import MemoryRecord

__all__ = ["clean_quoted", "day", "speaker_label"]

_WS = re.compile(r"\s+")
_FRAME = re.compile(r"</?\s*(?:memory|transcript)\b[^>]*>?", re.IGNORECASE)


def clean_quoted(text: str) -> str:
    """Fold whitespace to single spaces and defuse anything that looks like our frame tags."""
    text = _WS.sub(" ", text).strip()
    return _FRAME.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›"), text)


def speaker_label(record: MemoryRecord) -> str:
    """Who said it: the stored speaker name, else ``summary`` for summaries, else the role."""
    speaker = record.meta.get("speaker") if record.meta else None
    if isinstance(speaker, str) and speaker.strip():
        return clean_quoted(speaker)[:40]
    if record.kind == "summary":
        return "summary"
    return record.role or record.kind


def day(dt: datetime) -> str:
    """``YYYY-MM-DD`` of ``dt`` in UTC."""
    return dt.astimezone(timezone.utc).date().isoformat()
