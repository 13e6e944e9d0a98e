"""Multi-process write stress: many OS processes write to one store at once, then a check.

Every worker process opens the store from the same URL and, run after run, adds small batches
for several users and sessions, interleaved with the other workers. Some records are written by
every worker under the same key (turns and facts), so idempotency is tested across processes.
The plan is deterministic, so :func:`verify` knows exactly what the store must hold afterwards:

* every planned key stored exactly once, nothing else stored for the stress users;
* turn sequence numbers ``1..n`` in every session, without gaps or repeats;
* each worker's own turns in one session in the order that worker wrote them;
* the store's own ``integrity_check()`` (when it has one) finds nothing.

Used by ``tests/test_multiprocess.py`` at a CI-affordable size and by the benchmark command at
a larger one (e.g. 8 workers x 200 runs).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import TiamatError
from ..models import MemoryRecord, RecordKind, Scope, make_record
from ..stores import open_store

__all__ = ["PlannedRecord", "WorkerReport", "plan", "run_workers", "verify", "write_worker"]

_T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

SHARED_TURN_EVERY = 5
"""Every 5th run, all workers also write the same turn (same key, same content)."""

SHARED_FACT_EVERY = 7
"""Every 7th run, all workers also write the same fact; facts take no session lock."""


@dataclass(frozen=True, slots=True)
class PlannedRecord:
    """One record of the plan: who writes it and where it belongs."""

    key: str
    user: int
    session: int | None
    kind: RecordKind
    text: str
    shared: bool


@dataclass(slots=True)
class WorkerReport:
    """What one worker did. ``errors`` holds one line per failed ``add`` (or process failure)."""

    worker: int
    adds: int = 0
    records: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def user_id(prefix: str, user: int) -> str:
    return f"{prefix}-u{user}"


def session_id(session: int) -> str:
    return f"s{session}"


def plan(worker: int, run: int, users: int, sessions: int) -> list[PlannedRecord]:
    """The batch ``worker`` adds on ``run``: its own turn, plus the shared records of that run.

    Own turns spread each worker over every user and session, so workers interleave; shared
    records depend on ``run`` only, so all workers write them identically.
    """
    own = PlannedRecord(
        key=f"w{worker}-r{run}",
        user=(worker + run) % users,
        session=(worker * 3 + run) % sessions,
        kind="turn",
        text=f"worker {worker} run {run} talks about topic{run % 11}",
        shared=False,
    )
    batch = [own]
    if run % SHARED_TURN_EVERY == 0:
        batch.append(
            PlannedRecord(
                key=f"shared-turn-r{run}",
                user=run % users,
                session=run % sessions,
                kind="turn",
                text=f"shared turn of run {run} about topic{run % 11}",
                shared=True,
            )
        )
    if run % SHARED_FACT_EVERY == 0:
        batch.append(
            PlannedRecord(
                key=f"shared-fact-r{run}",
                user=(run + 1) % users,
                session=None,
                kind="fact",
                text=f"shared fact number {run}",
                shared=True,
            )
        )
    return batch


def _record(p: PlannedRecord, prefix: str, run: int) -> MemoryRecord:
    return make_record(
        user_id=user_id(prefix, p.user),
        session_id=session_id(p.session) if p.session is not None else None,
        kind=p.kind,
        role="user" if p.kind == "turn" else None,
        text=p.text,
        key=p.key,
        # Shared records must be identical in every worker, so the time depends on run only.
        created_at=_T0 + timedelta(seconds=run),
    )


async def write_worker(
    store_url: str, worker: int, runs: int, users: int, sessions: int, *, prefix: str = "stress"
) -> WorkerReport:
    """Add the plan of ``worker`` (``runs`` batches) to the store at ``store_url``.

    A failed ``add`` (any :class:`~tiamat_hooks.errors.TiamatError`, e.g. SQLite's "database is
    locked" as ``StoreTimeoutError``) is recorded in the report and the worker goes on; other
    exceptions propagate.
    """
    report = WorkerReport(worker)
    store = open_store(store_url)
    started = time.perf_counter()
    try:
        for run in range(runs):
            batch = [_record(p, prefix, run) for p in plan(worker, run, users, sessions)]
            try:
                await store.add(batch)
            except TiamatError as exc:
                report.errors.append(f"run {run}: {type(exc).__name__}: {exc}")
            else:
                report.adds += 1
                report.records += len(batch)
    finally:
        await store.close()
    report.seconds = time.perf_counter() - started
    return report


async def verify(
    store_url: str,
    workers: int,
    runs: int,
    users: int,
    sessions: int,
    *,
    prefix: str = "stress",
) -> list[str]:
    """What is wrong with the store after ``workers`` ran :func:`write_worker`; ``[]`` if nothing.

    Assumes every add succeeded (check the reports' ``errors`` separately) and that the users
    named by ``prefix`` hold nothing else.
    """
    expected: dict[tuple[str, str], PlannedRecord] = {}
    own_order: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in range(runs):
        for w in range(workers):
            for p in plan(w, run, users, sessions):
                uid = user_id(prefix, p.user)
                expected[(uid, p.key)] = p
                if not p.shared and p.session is not None:
                    own_order[(uid, session_id(p.session) + f"/w{w}")].append(p.key)

    problems: list[str] = []
    store = open_store(store_url)
    try:
        stored: list[MemoryRecord] = []
        for u in range(users):
            stored.extend(await store.read(Scope(user_id(prefix, u))))
        checker = getattr(store, "integrity_check", None)
        if callable(checker):
            problems.extend(f"integrity_check: {problem}" for problem in await checker())
    finally:
        await store.close()

    count: dict[tuple[str, str], int] = defaultdict(int)
    seq_of: dict[tuple[str, str], int | None] = {}
    by_session: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for r in stored:
        k = (r.user_id, r.key)
        count[k] += 1
        seq_of[k] = r.seq
        want = expected.get(k)
        if want is None:
            problems.append(f"unexpected record {k}")
            continue
        want_session = session_id(want.session) if want.session is not None else None
        if (r.session_id, r.kind, r.text) != (want_session, want.kind, want.text):
            problems.append(f"record {k} stored as {r.session_id!r}/{r.kind}/{r.text!r}")
        if r.kind == "turn":
            if r.seq is None:
                problems.append(f"turn {k} has no seq")
            else:
                by_session[(r.user_id, r.session_id)].append(r.seq)
    problems.extend(f"duplicate record {k} x{n}" for k, n in sorted(count.items()) if n > 1)
    problems.extend(f"lost record {k}" for k in sorted(expected) if k not in count)
    for (uid, sid), seqs in sorted(by_session.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if sorted(seqs) != list(range(1, len(seqs) + 1)):
            problems.append(f"session {uid}/{sid}: seqs are not 1..{len(seqs)}: {sorted(seqs)}")
    for (uid, tag), keys in sorted(own_order.items()):
        seqs_in_write_order = [seq_of.get((uid, k)) for k in keys]
        present = [s for s in seqs_in_write_order if s is not None]
        if present != sorted(present):
            problems.append(f"{uid} {tag}: turns not in the order the worker wrote them")
    return problems


def _process_main(
    store_url: str,
    worker: int,
    runs: int,
    users: int,
    sessions: int,
    prefix: str,
    barrier: Any,
    results: Any,
) -> None:
    report = WorkerReport(worker)
    try:
        # Start together: the point is that the processes overlap.
        barrier.wait(timeout=120)
        report = asyncio.run(write_worker(store_url, worker, runs, users, sessions, prefix=prefix))
    except threading.BrokenBarrierError:
        report.errors.append("start barrier broken (another worker failed to start)")
    except Exception as exc:
        report.errors.append(f"worker crashed: {type(exc).__name__}: {exc}")
    results.put(report)


def run_workers(
    store_url: str,
    *,
    workers: int,
    runs: int,
    users: int,
    sessions: int,
    prefix: str = "stress",
    timeout: float = 300.0,
) -> list[WorkerReport]:
    """Run :func:`write_worker` in ``workers`` separate OS processes (``spawn``) at once.

    Blocks until all finish or ``timeout`` seconds pass (then the rest are terminated). Returns
    one report per worker, in worker order; a process that died or hung gets a report whose
    ``errors`` say so.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(store_url, w, runs, users, sessions, prefix, barrier, results),
            name=f"tiamat-stress-{w}",
            daemon=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    reports: dict[int, WorkerReport] = {}
    deadline = time.monotonic() + timeout
    # Drain the queue before joining: a child blocks on exit until its queued report is read.
    while len(reports) < workers and time.monotonic() < deadline:
        try:
            report = results.get(timeout=0.2)
        except queue_module.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
            continue
        reports[report.worker] = report
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join()
    results.close()
    out = []
    for w, p in enumerate(procs):
        if w in reports:
            out.append(reports[w])
        else:
            out.append(WorkerReport(w, errors=[f"no report; process exit code {p.exitcode}"]))
    return out
