"""The recall benchmark: evidence recall within a token budget.

Scored as ``../shared/bench/README.md`` says.

For each conversation, every session's turns are ingested through the store API into a fresh
store (one user per conversation, one session per benchmark session, ``started_at`` as the turn
time). For each question, :meth:`Recaller.recall` — exactly what the input filter calls — runs with
the question as the newest user message, at ``asked_at``, with budget B. A turn counts as
recalled when the injected parts of it cover at least half of its characters (a whole turn
injected counts fully). Summaries and facts never count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..models import Scope, make_record
from ..recall import RecallConfig, Recaller, RecallResult
from ..stores import open_store
from ..stores.base import MemoryStore
from ..tokens import TokenCounter
from .dataset import BenchConversation, BenchDataset

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import Embedder
    from ..rerank import Reranker

__all__ = [
    "BudgetResult",
    "RecallBenchReport",
    "evidence_misses",
    "evidence_recall",
    "ingest_conversation",
    "parse_time",
    "run_recall_bench",
    "score_evidence",
]

SCORING_ENCODING = "cl100k_base"


def parse_time(value: str) -> datetime:
    """A benchmark timestamp as an aware datetime (naive ones are UTC)."""
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def turn_text(text: str, image_caption: str | None) -> str:
    """The stored text of a benchmark turn; a shared photo's caption is part of what was said."""
    return f"{text} [shared a photo: {image_caption}]" if image_caption else text


async def ingest_conversation(store: MemoryStore, conv: BenchConversation, user_id: str) -> int:
    """Write a conversation's turns through the store API; returns how many were stored."""
    n = 0
    for session in conv.sessions:
        started = parse_time(session.started_at)
        records = [
            make_record(
                user_id=user_id,
                session_id=session.id,
                role=t.role,
                text=turn_text(t.text, t.image_caption),
                created_at=started + timedelta(seconds=i),
                key=t.id,
                meta={"speaker": t.speaker} if t.speaker else {},
            )
            for i, t in enumerate(session.turns)
        ]
        n += len(await store.add(records))
    return n


def score_evidence(result: RecallResult, evidence: Sequence[str]) -> tuple[int, int, int]:
    """Evidence turns (by idempotency key = benchmark turn id) as ``(recalled, not_found,
    not_fitted)``; a turn listed twice counts twice.

    *Not found*: the turn was not among the records recall ranked (search hits and their
    neighbours). *Not fitted*: it was ranked, but packing spent the budget on other records.
    """
    recalled = _recalled(result, evidence)
    ranked = {r.key for r in result.ranked if r.kind == "turn"}
    hit = sum(1 for t in evidence if t in recalled)
    fitted_out = sum(1 for t in evidence if t not in recalled and t in ranked)
    return hit, len(evidence) - hit - fitted_out, fitted_out


def evidence_recall(result: RecallResult, evidence: Sequence[str]) -> float:
    """Share of evidence turns the block recalls (see :func:`score_evidence`)."""
    return score_evidence(result, evidence)[0] / len(evidence) if evidence else 0.0


def evidence_misses(result: RecallResult, evidence: Sequence[str]) -> tuple[int, int]:
    """Evidence turns the block misses, as ``(not_found, not_fitted)`` (see
    :func:`score_evidence`)."""
    return score_evidence(result, evidence)[1:]


def _recalled(result: RecallResult, evidence: Sequence[str]) -> set[str]:
    covered: dict[str, list[tuple[int, int]]] = {}
    lengths: dict[str, int] = {}
    for snip in result.snippets:
        if snip.record.kind != "turn":
            continue
        key = snip.record.key
        n = len(snip.record.text)
        lengths[key] = n
        covered.setdefault(key, []).append(snip.span or (0, n))
    hit: set[str] = set()
    for turn_id in evidence:
        spans = sorted(covered.get(turn_id, []))
        if not spans:
            continue
        total, end = 0, -1
        for s, e in spans:
            s = max(s, end)
            if e > s:
                total += e - s
                end = e
        if total * 2 >= lengths[turn_id]:
            hit.add(turn_id)
    return hit


@dataclass
class BudgetResult:
    budget: int
    recall: dict[str, float]
    tokens_mean: float
    tokens_max: int
    latency_ms: dict[str, float]
    evidence: dict[str, int] = field(default_factory=dict)
    """Evidence turns over all questions: ``total``, ``recalled``, and the misses split into
    ``not_found`` and ``not_fitted`` (see :func:`score_evidence`)."""
    found: dict[str, float] = field(default_factory=dict)
    """Like ``recall``, but counting every evidence turn ranking found (recalled or not
    fitted): the same at every budget, since ranking does not depend on it, and an upper bound
    for packing (found evidence may still not fit a small budget). The distance from ``recall``
    is ranking's and packing's to make up; the rest needs retrieval to find more."""

    def as_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "recall": self.recall,
            "found": self.found,
            "tokens_mean": self.tokens_mean,
            "tokens_max": self.tokens_max,
            "latency_ms": self.latency_ms,
            "evidence": self.evidence,
        }


@dataclass
class RecallBenchReport:
    dataset: str
    questions: int
    results: list[BudgetResult] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)
    """Questions per category (a category's figure rests on this many)."""
    embeddings: dict[str, Any] | None = None
    """With dense retrieval: model, texts embedded, embedding time and rates."""
    rerank: dict[str, Any] | None = None
    """With a reranker: model, rerankings and their time (once per question, see below), and
    ``failures``: recalls that kept their own order because the reranker failed (each budget's
    recall counts)."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "questions": self.questions,
            "categories": self.categories,
            "results": [r.as_json() for r in self.results],
        }
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings
        if self.rerank is not None:
            out["rerank"] = self.rerank
        return out


class _OncePerQuestion:
    """A reranker wrapper that scores each (query, candidates) once and times it.

    Ranking does not depend on the budget, so every budget of a question hands the reranker the
    same candidates; scoring them again per budget would triple the bench's time and measure
    nothing new. Each budget's recall latency therefore includes the reranking only at the
    first budget; the reranking's own time is reported apart.
    """

    def __init__(self, inner: Reranker) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.seconds: list[float] = []
        self._last: tuple[tuple[str, tuple[str, ...]], list[float]] | None = None

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        key = (query, tuple(texts))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        started = time.perf_counter()
        scores = [float(x) for x in self.inner.score(query, texts)]
        self.seconds.append(time.perf_counter() - started)
        self._last = (key, scores)
        return scores


def _means(shares: list[tuple[str, float]]) -> dict[str, float]:
    """Mean share overall and per category (sorted), rounded to four places."""
    by_cat: dict[str, list[float]] = {}
    for cat, share in shares:
        by_cat.setdefault(cat, []).append(share)
    means = {"overall": statistics.fmean(s for _, s in shares) if shares else 0.0}
    means.update({cat: statistics.fmean(v) for cat, v in sorted(by_cat.items())})
    return {k: round(v, 4) for k, v in means.items()}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


async def run_recall_bench(
    data: BenchDataset,
    *,
    budgets: Sequence[int] = (512, 1024, 2048),
    config: RecallConfig | None = None,
    store_url: str | None = None,
    progress: Callable[[int], None] | None = None,
    embeddings: bool | Embedder = False,
    hybrid_options: Mapping[str, Any] | None = None,
    reranker: Reranker | None = None,
) -> RecallBenchReport:
    """Run the benchmark. ``store_url`` None uses a fresh in-memory SQLite store per conversation.

    With a URL, every conversation goes into that store under its own random user id, so shared
    stores (Postgres, a server) can be measured without clearing them.

    ``embeddings`` wraps each conversation's store in a
    :class:`~tiamat_hooks.embeddings.HybridStore` (``True``: the default MiniLM model); the
    report then says how long embedding took at ingest and per query. ``hybrid_options`` are
    passed to that ``HybridStore`` (``fusion``, ``dense_weight``, ...). ``reranker`` is handed
    to recall (see :mod:`tiamat_hooks.rerank`); it scores each question's candidates once for
    all budgets, and the report says how long that took.
    """
    import uuid

    if hybrid_options and embeddings is False:
        raise ConfigError("hybrid_options need embeddings (they configure the HybridStore)")
    counter = TokenCounter(SCORING_ENCODING)
    config = config or RecallConfig()
    scores: dict[int, list[tuple[str, float]]] = {b: [] for b in budgets}
    found: dict[int, list[tuple[str, float]]] = {b: [] for b in budgets}
    tokens: dict[int, list[int]] = {b: [] for b in budgets}
    latency: dict[int, list[float]] = {b: [] for b in budgets}
    evidence: dict[int, dict[str, int]] = {
        b: {"total": 0, "recalled": 0, "not_found": 0, "not_fitted": 0} for b in budgets
    }
    questions = 0
    categories: dict[str, int] = {}
    embedder: Embedder | None = None
    if embeddings is not False:
        from ..embeddings import default_embedder

        embedder = default_embedder() if embeddings is True else embeddings
    once = None
    if reranker is not None:
        reranker.score("warm up", ["the model loads now, outside the timings"])
        once = _OncePerQuestion(reranker)
    recaller_failures = 0
    emb = {"texts": 0, "ingest_s": 0.0, "ingest_wall_s": 0.0, "queries": 0, "query_s": 0.0}
    for conv in data.conversations:
        store = open_store(store_url or "sqlite://:memory:")
        hybrid = None
        if embedder is not None:
            from ..embeddings import HybridStore

            store = hybrid = HybridStore(store, embedder, **(hybrid_options or {}))
        user_id = f"bench-{conv.id}-{uuid.uuid4().hex[:8]}" if store_url else f"bench-{conv.id}"
        try:
            t_ingest = time.perf_counter()
            await ingest_conversation(store, conv, user_id)
            if hybrid is not None:
                emb["ingest_wall_s"] += time.perf_counter() - t_ingest
                emb["texts"] += hybrid.embedded_texts
                emb["ingest_s"] += hybrid.embed_seconds
                before = (hybrid.embedded_texts, hybrid.embed_seconds)
            recaller = Recaller(store, config=config, counter=counter, reranker=once)
            for q in conv.questions:
                questions += 1
                categories[q.category] = categories.get(q.category, 0) + 1
                now = parse_time(q.asked_at)
                for b in budgets:
                    t0 = time.perf_counter()
                    result = await recaller.recall(Scope(user_id), q.question, now=now, budget=b)
                    latency[b].append((time.perf_counter() - t0) * 1000)
                    if result.tokens > b:  # the contract; a violation must never go unnoticed
                        raise AssertionError(f"block of {result.tokens} tokens exceeds budget {b}")
                    tokens[b].append(result.tokens)
                    hit, not_found, not_fitted = score_evidence(result, q.evidence)
                    n = len(q.evidence)
                    scores[b].append((q.category, hit / n if n else 0.0))
                    found[b].append((q.category, (hit + not_fitted) / n if n else 0.0))
                    counts = evidence[b]
                    counts["total"] += len(q.evidence)
                    counts["recalled"] += hit
                    counts["not_found"] += not_found
                    counts["not_fitted"] += not_fitted
                if progress is not None:
                    progress(1)
            recaller_failures += recaller.rerank_failures
            if hybrid is not None:
                emb["queries"] += hybrid.embedded_texts - before[0]
                emb["query_s"] += hybrid.embed_seconds - before[1]
        finally:
            await store.close()
    report = RecallBenchReport(data.name, questions, categories=dict(sorted(categories.items())))
    if embedder is not None:
        report.embeddings = {
            "model": embedder.model_id,
            "texts_embedded_at_ingest": int(emb["texts"]),
            "ingest_embed_s": round(emb["ingest_s"], 2),
            "ingest_wall_s": round(emb["ingest_wall_s"], 2),
            "texts_per_s": round(emb["texts"] / emb["ingest_s"], 1) if emb["ingest_s"] else 0.0,
            "query_embed_ms_mean": (
                round(emb["query_s"] * 1000 / emb["queries"], 2) if emb["queries"] else 0.0
            ),
        }
    if once is not None:
        ms = [x * 1000 for x in once.seconds]
        report.rerank = {
            "model": once.model_id,
            "rerankings": len(ms),
            "ms_p50": round(_pct(ms, 0.50), 2),
            "ms_p95": round(_pct(ms, 0.95), 2),
            "failures": recaller_failures,
        }
    for b in budgets:
        report.results.append(
            BudgetResult(
                budget=b,
                recall=_means(scores[b]),
                found=_means(found[b]),
                tokens_mean=round(statistics.fmean(tokens[b]), 1) if tokens[b] else 0.0,
                tokens_max=max(tokens[b], default=0),
                latency_ms={
                    "p50": round(_pct(latency[b], 0.50), 3),
                    "p95": round(_pct(latency[b], 0.95), 3),
                },
                evidence=evidence[b],
            )
        )
    return report
