"""Reader for the ``memory-recall-bench/1`` format (plain JSON or ``.json.gz``).

Format (one file, many conversations)::

    {"format": "memory-recall-bench/1", "name": str, "conversations": [
      {"id": str, "speakers": {"user": str, "assistant": str} | null,
       "sessions": [{"id": str, "started_at": ISO-8601, "turns": [
           {"id": str, "role": "user"|"assistant", "speaker": str|null, "text": str,
            "image_caption": str (optional)}]}],
       "questions": [{"id", "question", "answer", "asked_at", "category",
                      "evidence": [turn ids]}]}]}
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidInputError

__all__ = [
    "BenchConversation",
    "BenchDataset",
    "BenchQuestion",
    "BenchSession",
    "BenchTurn",
    "load_dataset",
]

FORMAT = "memory-recall-bench/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BenchTurn(_Model):
    id: str
    role: Literal["user", "assistant"]
    speaker: str | None = None
    text: str
    image_caption: str | None = None


class BenchSession(_Model):
    id: str
    started_at: str
    turns: list[BenchTurn]


class BenchQuestion(_Model):
    id: str
    question: str
    answer: str
    asked_at: str
    category: str
    evidence: list[str]


class BenchConversation(_Model):
    id: str
    speakers: dict[str, str] | None = None
    sessions: list[BenchSession]
    questions: list[BenchQuestion]


class BenchDataset(_Model):
    format: str
    name: str
    conversations: list[BenchConversation]


def load_dataset(path: str | Path) -> BenchDataset:
    """Load and validate a benchmark file.

    A CRI persona — its wheel or its data folder — is read too, and converted (see
    :mod:`tiamat_hooks.bench.cri`).

    Raises:
        InvalidInputError: the file is missing, not JSON, or not in the expected format.
    """
    p = Path(path)
    from .cri import is_cri, load_cri

    if is_cri(p):
        return load_cri(p)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read benchmark file {p}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInputError(f"{p} is not a {FORMAT} file")
    try:
        return BenchDataset.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"{p} does not match {FORMAT}: {exc}") from exc
