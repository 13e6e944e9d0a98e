"""Multi-process write stress: many OS processes write to one store at once, then a check.

Every worker process opens the store from the same URL and, run after run, adds small batches
for several users and sessions, interleaved with the other workers. Some records are written by
every worker under the same key (turns and facts), so idempotency is tested across processes.
The plan is deterministic, so :func:`verify` knows exactly what the store must hold afterwards:

* every planned key stored exactly once, nothing else stored for the stress users;
* turn sequence numbers ``1..n`` in every session, without gaps or repeats;
* each worker's own turns in one session in the order that worker wrote them;
* the store's own ``integrity_check()`` (when it has one) finds nothing.

Two modes, chosen by ``mode=`` of :func:`run_workers`:

* ``"adds"`` (:func:`write_worker`, checked by :func:`verify`): store-level. Besides each
  worker's own turns, some records are written by every worker under the same key (turns and
  facts), so idempotency is tested across processes.
* ``"runs"`` (:func:`run_worker`, checked by :func:`verify_runs`): whole agent runs.
  ``Runner.run`` with :class:`~tiamat_hooks.hooks.TiamatHooks` (``strict=True``) and a
  ``ScriptedModel``; every third run calls a function tool, so calls and outputs are stored too.
  Workers come in pairs that talk in the same ``(user, session)`` on every run, and the pairs
  shift over users and sessions, so several processes append to one session at once.

Either plan is deterministic, so the check knows exactly what the store must hold afterwards:

* every planned record (or, for runs, every user input, assistant message, ``function_call``
  and ``function_call_output``) stored exactly once, nothing else stored for the stress users;
* turn sequence numbers ``1..n`` in every session, without gaps or repeats;
* each worker's own turns in one session in the order that worker wrote them;
* the store's own ``integrity_check()`` (when it has one) finds nothing.

Used by ``tests/test_multiprocess.py`` at a CI-affordable size and by ``tiamat-hooks bench
stress`` at a larger one (e.g. 8 workers x 200 runs).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue as queue_module
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from ..errors import TiamatError
from ..models import MemoryRecord, RecordKind, Scope, make_record
from ..stores import open_store

if TYPE_CHECKING:
    from agents import RunContextWrapper

__all__ = [
    "PlannedRecord",
    "PlannedRun",
    "StressMode",
    "WorkerReport",
    "plan",
    "plan_run",
    "run_worker",
    "run_workers",
    "verify",
    "verify_runs",
    "write_worker",
]

StressMode = Literal["adds", "runs"]

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
    """What one worker did.

    ``adds``: successful ``add`` calls (mode ``"adds"``). ``runs``: ``Runner.run`` calls that
    finished (mode ``"runs"``). ``records``: records the store acknowledged. ``seconds``: time
    from the common start to the worker's last write. ``errors`` holds one line per failed
    ``add`` or run, per non-zero ``hooks.stats.failures`` entry, or for a process failure.
    """

    worker: int
    adds: int = 0
    records: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    runs: int = 0


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


async def _stored_and_integrity(
    store_url: str, users: int, prefix: str
) -> tuple[list[MemoryRecord], list[str]]:
    """Every record of the stress users, and what the store's ``integrity_check()`` reports."""
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
    return stored, problems


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

    stored, problems = await _stored_and_integrity(store_url, users, prefix)

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


# -- mode "runs": whole agent runs through TiamatHooks ------------------------------------------

TOOL_EVERY = 3
"""Every 3rd run of a worker calls the ``lookup`` tool before answering."""

STRESS_AGENT = "stress-agent"

ItemSig = tuple[str, str, str]
"""What identifies one stored item of a planned run: (item type, role, text)."""


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """One ``Runner.run`` of the plan: whose conversation, what is said, what must be stored."""

    worker: int
    run: int
    user: int
    session: int
    tool: bool

    @property
    def tag(self) -> str:
        return f"w{self.worker}-r{self.run}"

    @property
    def message(self) -> str:
        return f"worker {self.worker} run {self.run}: what about topic{self.run % 11}?"

    @property
    def answer(self) -> str:
        return f"answer for worker {self.worker} run {self.run}"

    @property
    def tool_arguments(self) -> str:
        return json.dumps({"topic": self.tag}, separators=(",", ":"))

    def items(self) -> list[ItemSig]:
        """The items the run stores, in conversation order, as :func:`item_text` renders them."""
        out: list[ItemSig] = [("message", "user", self.message)]
        if self.tool:
            out.append(("function_call", "tool", f"called lookup({self.tool_arguments})"))
            out.append(("function_call_output", "tool", f"tool result: {_lookup_result(self.tag)}"))
        out.append(("message", "assistant", self.answer))
        return out


def _lookup_result(topic: str) -> str:
    return f"notes on {topic}"


def plan_run(worker: int, run: int, users: int, sessions: int) -> PlannedRun:
    """Run ``run`` of ``worker``. Workers ``2k`` and ``2k+1`` share every ``(user, session)``
    (two processes appending to one session at the same time); the pairs move over users and
    sessions at different rates, so other pairs join in too."""
    pair = worker // 2
    return PlannedRun(
        worker=worker,
        run=run,
        user=(pair + run) % users,
        session=(pair + run // users) % sessions,
        tool=run % TOOL_EVERY == 0,
    )


@dataclass(frozen=True, slots=True)
class _RunScope:
    """The run context: the application, not the model, says whose memory this is."""

    user_id: str
    session_id: str


def _scope_user(ctx: RunContextWrapper[Any]) -> str:
    scope: _RunScope = ctx.context
    return scope.user_id


def _scope_session(ctx: RunContextWrapper[Any]) -> str:
    scope: _RunScope = ctx.context
    return scope.session_id


async def run_worker(
    store_url: str, worker: int, runs: int, users: int, sessions: int, *, prefix: str = "stress"
) -> WorkerReport:
    """Perform the ``runs`` planned runs of ``worker`` with one :class:`TiamatHooks` object.

    The hooks are strict, so a store error (SQLite's "database is locked" included) raises out
    of ``Runner.run``: it is recorded in the report and the worker goes on with its next run.
    Compaction is off: summaries are derived records the plan cannot predict. Non-zero
    ``hooks.stats.failures`` are reported as errors too. Other exceptions propagate.
    """
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.testing import ScriptedModel, assistant_message, function_call

    from ..hooks import TiamatHooks

    @function_tool
    def lookup(topic: str) -> str:
        """Look up notes on a topic."""
        return _lookup_result(topic)

    report = WorkerReport(worker)
    store = open_store(store_url)
    hooks = TiamatHooks(
        store,
        user_id=_scope_user,
        session_id=_scope_session,
        strict=True,
        compact_after_tokens=None,
    )
    config = RunConfig(tracing_disabled=True)
    started = time.perf_counter()
    try:
        for run in range(runs):
            p = plan_run(worker, run, users, sessions)
            steps: list[Any] = [[assistant_message(p.answer, item_id=f"msg-{p.tag}")]]
            if p.tool:
                call = function_call("lookup", p.tool_arguments, call_id=f"call-{p.tag}")
                steps.insert(0, [call])
            agent = Agent(
                name=STRESS_AGENT,
                model=ScriptedModel(steps),
                tools=[lookup] if p.tool else [],
            )
            context = _RunScope(user_id(prefix, p.user), session_id(p.session))
            try:
                await Runner.run(agent, p.message, hooks=hooks, context=context, run_config=config)
            except TiamatError as exc:
                report.errors.append(f"run {run}: {type(exc).__name__}: {exc}")
            else:
                report.runs += 1
        try:
            await hooks.flush()
        except TiamatError as exc:
            report.errors.append(f"flush: {type(exc).__name__}: {exc}")
    finally:
        await store.close()
    report.seconds = time.perf_counter() - started
    report.records = hooks.stats.records_persisted
    report.errors.extend(
        f"hooks.stats.failures[{op!r}] = {n}" for op, n in sorted(hooks.stats.failures.items()) if n
    )
    return report


def _item_sig(record: MemoryRecord) -> ItemSig:
    item = record.item or {}
    kind = item.get("type", "message")
    return (kind if isinstance(kind, str) else repr(kind), record.role or "", record.text)


async def verify_runs(
    store_url: str,
    workers: int,
    runs: int,
    users: int,
    sessions: int,
    *,
    prefix: str = "stress",
) -> list[str]:
    """What is wrong with the store after ``workers`` ran :func:`run_worker`; ``[]`` if nothing.

    Checks every planned item stored exactly once (as a ``turn`` in its user's session, by the
    stress agent), nothing else stored for the stress users, seqs ``1..n`` per session, the
    items of one run in conversation order under one ``run_id``, each worker's runs of a
    session in the order it made them, and ``integrity_check()``. Assumes every run succeeded
    (check the reports' ``errors`` separately) and that the users named by ``prefix`` hold
    nothing else.
    """
    # (user id, session id, signature) -> (planned run, position in the run)
    expected: dict[tuple[str, str, ItemSig], tuple[PlannedRun, int]] = {}
    for w in range(workers):
        for run in range(runs):
            p = plan_run(w, run, users, sessions)
            uid, sid = user_id(prefix, p.user), session_id(p.session)
            for pos, sig in enumerate(p.items()):
                expected[(uid, sid, sig)] = (p, pos)

    stored, problems = await _stored_and_integrity(store_url, users, prefix)

    found: dict[tuple[str, str, ItemSig], list[MemoryRecord]] = defaultdict(list)
    by_session: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in stored:
        if r.kind != "turn" or r.session_id is None:
            problems.append(f"unexpected {r.kind} record {r.user_id}/{r.session_id}: {r.text!r}")
            continue
        k = (r.user_id, r.session_id, _item_sig(r))
        if k not in expected:
            problems.append(f"unexpected turn {r.user_id}/{r.session_id}: {k[2]}")
            continue
        found[k].append(r)
        if r.agent_id != STRESS_AGENT:
            problems.append(f"turn {k} stored with agent_id {r.agent_id!r}")
        if r.seq is None:
            problems.append(f"turn {k} has no seq")
        else:
            by_session[(r.user_id, r.session_id)].append(r.seq)
    problems.extend(f"duplicate turn {k} x{len(v)}" for k, v in sorted(found.items()) if len(v) > 1)
    problems.extend(f"lost turn {k}" for k in sorted(expected) if k not in found)
    for (uid, sid), seqs in sorted(by_session.items()):
        if sorted(seqs) != list(range(1, len(seqs) + 1)):
            problems.append(f"session {uid}/{sid}: seqs are not 1..{len(seqs)}: {sorted(seqs)}")

    # Per run: items in conversation order, one run_id. Per worker and session: runs in order.
    runs_seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
    run_ids: dict[tuple[int, int], set[str]] = defaultdict(set)
    sessions_of: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    for (uid, sid, _), (p, pos) in sorted(expected.items(), key=lambda kv: kv[1][1]):
        records = found.get((uid, sid, p.items()[pos]), [])
        if len(records) != 1 or records[0].seq is None:
            continue  # reported above
        runs_seqs[(p.worker, p.run)].append(records[0].seq)
        run_ids[(p.worker, p.run)].add(str(records[0].meta.get("run_id")))
        if pos == 0:
            sessions_of[(p.worker, uid, sid)].append(p.run)
    for (w, run), seqs in sorted(runs_seqs.items()):
        if seqs != sorted(seqs):
            problems.append(f"run w{w}-r{run}: items not stored in conversation order: {seqs}")
        if len(run_ids[(w, run)]) != 1:
            problems.append(f"run w{w}-r{run}: items under run ids {sorted(run_ids[(w, run)])}")
    for (w, uid, sid), planned in sorted(sessions_of.items()):
        firsts = [runs_seqs[(w, run)][0] for run in sorted(planned)]
        if firsts != sorted(firsts):
            problems.append(f"{uid}/{sid} w{w}: runs not stored in the order the worker made them")
    return problems


def _process_main(
    store_url: str,
    worker: int,
    runs: int,
    users: int,
    sessions: int,
    prefix: str,
    mode: StressMode,
    barrier: Any,
    results: Any,
) -> None:
    report = WorkerReport(worker)
    worker_fn = run_worker if mode == "runs" else write_worker
    try:
        if mode == "runs":
            # Import the SDK before the barrier, so that start-up is not part of the overlap.
            import agents  # noqa: F401

            from .. import hooks  # noqa: F401
        # Start together: the point is that the processes overlap.
        barrier.wait(timeout=120)
        report = asyncio.run(worker_fn(store_url, worker, runs, users, sessions, prefix=prefix))
    except threading.BrokenBarrierError:
        report.errors.append("start barrier broken (another worker failed to start)")
    except Exception as exc:
        report.errors.append(f"worker crashed: {type(exc).__name__}: {exc}")
    results.put(report)


_PRELOAD = ["tiamat_hooks.bench.stress", "tiamat_hooks.stores.postgres", "agents.testing"]
"""Imported once by the fork server; its children (the workers) start with them loaded."""


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    # Every worker is a fresh OS process with its own connections either way. A fork server
    # imports the SDK once (~2 s of CPU) instead of once per worker; it forks from a process
    # that has started no threads and opened no store. Modules that fail to import are skipped.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def run_workers(
    store_url: str,
    *,
    workers: int,
    runs: int,
    users: int,
    sessions: int,
    prefix: str = "stress",
    mode: StressMode = "adds",
    timeout: float = 300.0,
) -> list[WorkerReport]:
    """Run :func:`write_worker` (``mode="adds"``) or :func:`run_worker` (``mode="runs"``) in
    ``workers`` separate OS processes at once (``forkserver`` where available, else ``spawn``).

    Blocks until all finish or ``timeout`` seconds pass (then the rest are terminated). Returns
    one report per worker, in worker order; a process that died or hung gets a report whose
    ``errors`` say so.
    """
    ctx = _context()
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(store_url, w, runs, users, sessions, prefix, mode, barrier, results),
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
    timed_out: set[int] = set()
    for w, p in enumerate(procs):
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            timed_out.add(w)
            p.terminate()
            p.join()
    results.close()
    out = []
    for w, p in enumerate(procs):
        if w in reports:
            out.append(reports[w])
        elif w in timed_out:
            out.append(WorkerReport(w, errors=[f"not finished after {timeout:g} s; terminated"]))
        else:
            out.append(WorkerReport(w, errors=[f"no report; process exit code {p.exitcode}"]))
    return out
