"""The CRI benchmark's persona data as a ``memory-recall-bench/1`` dataset (a held-out set).

CRI ("Contextual Resonance Index", the MIT-licensed PyPI package ``cri-benchmark``) ships one
synthetic persona: 2,862 dated user/assistant messages in 665 sessions over 289 days, and a
ground truth whose ``changes`` (a fact's value changing, with the ids of the messages that say
so) and ``conflicts`` (two statements that contradict each other, with their message ids) name
their evidence. Those two lists become questions; the other ground-truth lists name no messages
and are left out.

- **knowledge-update** — one question per change, "What is {persona}'s {query_topic}?" (the
  topic phrase is CRI's own), asked a day after the last message naming the change, against the
  history *up to then* (a conversation of its own: a store never holds the future). Evidence:
  the change's ``key_messages``.
- **conflict** — one question per conflict, "What is {persona}'s {topic}?", asked a day after
  the last message, against the whole history. Evidence: both statements' messages.

Nothing is copied: :func:`load_cri` reads the package's files where they are — the installed
package's data folder, a downloaded wheel (``pip download --no-deps cri-benchmark==0.1.2``) or
the folder holding ``conversations.jsonl`` and ``ground_truth.json``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .dataset import (
    FORMAT,
    BenchConversation,
    BenchDataset,
    BenchQuestion,
    BenchSession,
    BenchTurn,
)

__all__ = ["is_cri", "load_cri"]

_FILES = ("conversations.jsonl", "ground_truth.json")
_DATA_DIR = "cri/datasets/"


def is_cri(path: Path) -> bool:
    """Whether ``path`` is a CRI wheel (or zip) or a CRI persona folder."""
    if path.is_dir():
        return all((path / f).is_file() for f in _FILES)
    return path.suffix in (".whl", ".zip") and path.is_file()


def load_cri(path: str | Path, persona: str | None = None) -> BenchDataset:
    """Read a CRI persona (see the module docstring) and build the questions.

    ``persona`` picks one when a wheel holds several (default: the first in name order).

    Raises:
        InvalidInputError: the files are missing, unreadable or not in CRI's format.
    """
    p = Path(path)
    try:
        files = dict(_read(p, persona))
        messages = [json.loads(line) for line in files["conversations.jsonl"].splitlines() if line]
        truth = json.loads(files["ground_truth.json"])
        meta = json.loads(files.get("metadata.json", "{}"))
        return _build(messages, truth, meta)
    except InvalidInputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"cannot read CRI data from {p}: {exc!r}") from exc


def _read(path: Path, persona: str | None) -> Iterator[tuple[str, str]]:
    names = (*_FILES, "metadata.json")
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                yield name, (path / name).read_text(encoding="utf-8")
        return
    with zipfile.ZipFile(path) as zf:
        members = set(zf.namelist())
        folders = sorted(
            {
                n[: -len("ground_truth.json")]
                for n in members
                if n.startswith(_DATA_DIR) and n.endswith("/ground_truth.json")
            }
        )
        if persona is not None:
            folders = [f for f in folders if f.rstrip("/").rsplit("/", 1)[-1] == persona]
        if not folders:
            raise InvalidInputError(
                f"{path} holds no CRI persona data" + (f" named {persona!r}" if persona else "")
            )
        for name in names:
            member = folders[0] + name
            if member in members:
                yield name, zf.read(member).decode("utf-8")


def _build(
    messages: list[dict[str, Any]], truth: Mapping[str, Any], meta: Mapping[str, Any]
) -> BenchDataset:
    if not messages:
        raise InvalidInputError("CRI data has no messages")
    messages = sorted(messages, key=lambda m: (str(m["timestamp"]), int(m["message_id"])))
    when = {int(m["message_id"]): str(m["timestamp"]) for m in messages}
    persona_name = str(meta.get("persona_name") or "").split()
    first = persona_name[0] if persona_name else "the user"
    dataset_id = str(meta.get("dataset_id") or "cri")

    def day_after(ids: list[int]) -> str:
        missing = [i for i in ids if i not in when]
        if missing:
            raise InvalidInputError(f"CRI ground truth names unknown messages {missing}")
        last = max(datetime.fromisoformat(when[i]) for i in ids)
        return (last + timedelta(days=1)).isoformat()

    def conversation(
        cid: str, until: str | None, questions: list[BenchQuestion]
    ) -> BenchConversation:
        sessions: dict[str, list[dict[str, Any]]] = {}
        for m in messages:
            if until is None or str(m["timestamp"]) < until:
                sessions.setdefault(str(m["session_id"]), []).append(m)
        return BenchConversation(
            id=cid,
            speakers={"user": first, "assistant": "assistant"},
            sessions=[
                BenchSession(
                    id=sid,
                    started_at=str(ms[0]["timestamp"]),
                    turns=[
                        BenchTurn(
                            id=str(m["message_id"]),
                            role=m["role"],
                            speaker=first if m["role"] == "user" else "assistant",
                            text=str(m["content"]),
                        )
                        for m in ms
                    ],
                )
                for sid, ms in sessions.items()
            ],
            questions=questions,
        )

    conversations: list[BenchConversation] = []
    for i, change in enumerate(truth.get("changes", [])):
        ids = [int(x) for x in change["key_messages"]]
        asked = day_after(ids)
        value = change["new_value"]
        q = BenchQuestion(
            id=f"change-{i + 1}",
            question=f"What is {first}'s {change['query_topic']}?",
            answer=value if isinstance(value, str) else "; ".join(map(str, value)),
            asked_at=asked,
            category="knowledge-update",
            evidence=[str(x) for x in ids],
        )
        conversations.append(conversation(f"{dataset_id}@{asked[:10]}", asked, [q]))
    end = day_after([int(m["message_id"]) for m in messages[-1:]])
    conflicts = [
        BenchQuestion(
            id=str(c.get("conflict_id") or f"conflict-{i + 1}"),
            question=f"What is {first}'s {c['topic']}?",
            answer=str(c["correct_resolution"]),
            asked_at=end,
            category="conflict",
            evidence=[str(int(x)) for x in c["introduced_at_messages"]],
        )
        for i, c in enumerate(truth.get("conflicts", []))
    ]
    if conflicts:
        conversations.append(conversation(dataset_id, None, conflicts))
    if not conversations:
        raise InvalidInputError("CRI ground truth has no changes or conflicts to ask about")
    return BenchDataset(format=FORMAT, name=f"cri-{dataset_id}", conversations=conversations)
