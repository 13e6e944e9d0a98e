"""Store latency benchmark: recall p50/p95 and persist throughput as a store grows.

Synthetic but realistic-shaped data: deterministic pseudo-random conversations (users with many
sessions of short turns drawn from a Zipf-like vocabulary), written through ``store.add`` in
batches, and recalled through :class:`~tiamat_hooks.recall.Recaller` — the same path the input
filter takes — at each checkpoint size (e.g. 10k, 100k, 1M stored turns).
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..models import MemoryRecord, Scope, make_record
from ..recall import RecallConfig, Recaller
from ..stores import MemoryStore, analyze, open_store

__all__ = [
    "LatencyPoint",
    "LatencyReport",
    "fill_store",
    "run_latency_bench",
    "synthetic_turns",
]

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "bel",
    "cor",
    "dan",
    "fi",
    "gul",
    "hep",
    "ith",
    "jor",
    "kem",
    "lun",
]


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def synthetic_turns(
    seed: int, users: Sequence[str], *, turns_per_session: int = 40
) -> Iterator[MemoryRecord]:
    """An endless, deterministic stream of turns spread over ``users`` and their sessions."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng, 20_000)
    # Cumulative weights computed once: ``choices(vocab, weights)`` would redo the 20k-term sum
    # for every turn (same draws either way).
    cum_weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    n = 0
    session_no: dict[str, int] = dict.fromkeys(users, 0)
    while True:
        user = users[(n // turns_per_session) % len(users)]
        if n % turns_per_session == 0:
            session_no[user] += 1
        words = rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(6, 40))
        yield make_record(
            user_id=user,
            session_id=f"s{session_no[user]}",
            role="user" if n % 2 == 0 else "assistant",
            text=" ".join(words).capitalize() + ".",
            created_at=t0 + timedelta(seconds=n),
            key=f"t{n}",
        )
        n += 1


async def fill_store(
    store: MemoryStore,
    stream: Iterator[MemoryRecord],
    count: int,
    *,
    batch: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Write the next ``count`` records of ``stream`` in batches of ``batch``; returns the
    seconds spent inside ``store.add`` (generating the records is not counted)."""
    seconds = 0.0
    left = count
    while left > 0:
        chunk = [next(stream) for _ in range(min(batch, left))]
        t = time.perf_counter()
        await store.add(chunk)
        seconds += time.perf_counter() - t
        left -= len(chunk)
        if progress is not None:
            progress(len(chunk))
    return seconds


@dataclass
class LatencyPoint:
    turns: int
    persist_turns_per_s: float
    recall_ms: dict[str, float]
    search_ms: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "persist_turns_per_s": round(self.persist_turns_per_s, 1),
            "recall_ms": self.recall_ms,
            "search_ms": self.search_ms,
        }


@dataclass
class LatencyReport:
    store: str
    users: int
    points: list[LatencyPoint] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "users": self.users,
            "points": [p.as_json() for p in self.points],
        }


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "p50": round(q(0.5), 3),
        "p95": round(q(0.95), 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


async def run_latency_bench(
    store_url: str,
    *,
    sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
    users: int = 100,
    queries: int = 200,
    batch: int = 1_000,
    budget: int = 1024,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
) -> LatencyReport:
    """Grow one store through ``sizes`` and measure at each size.

    Users get random ids, so a shared store (Postgres) can be measured without clearing it;
    only this run's turns count toward the sizes.
    """
    run = uuid.uuid4().hex[:8]
    user_ids = [f"lat-{run}-{i}" for i in range(users)]
    stream = synthetic_turns(seed, user_ids)
    rng = random.Random(seed + 1)
    query_vocab = _vocabulary(random.Random(seed), 20_000)[:5_000]
    store = open_store(store_url)
    report = LatencyReport(store_url.split("@")[-1], users)
    recaller = Recaller(store, config=RecallConfig(budget=budget))
    written = 0
    try:
        for size in sorted(sizes):
            persisted = max(0, size - written)
            persist_time = await fill_store(
                store, stream, persisted, batch=batch, progress=progress
            )
            written += persisted
            # A bulk load leaves Postgres without planner statistics until autovacuum analyses
            # the tables; measure the steady state a server reaches (time not counted).
            await analyze(store)
            recall_ms: list[float] = []
            search_ms: list[float] = []
            for _ in range(queries):
                user = rng.choice(user_ids)
                words = " ".join(rng.choices(query_vocab, k=rng.randint(3, 8)))
                t = time.perf_counter()
                await store.search(words, Scope(user), limit=120)
                search_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await recaller.recall(Scope(user), words)
                recall_ms.append((time.perf_counter() - t) * 1000)
            report.points.append(
                LatencyPoint(
                    turns=written,
                    persist_turns_per_s=persisted / persist_time if persist_time else 0.0,
                    recall_ms=_quantiles(recall_ms),
                    search_ms=_quantiles(search_ms),
                )
            )
    finally:
        await store.close()
    return report
