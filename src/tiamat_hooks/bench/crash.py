"""Crash safety: a writer process killed with SIGKILL mid-persist, many times, loses nothing acked.

Each round starts a fresh writer process on the same store URL. The writer adds small batches
(a turn of its own session, a fact, now and then a long turn split into many index units) and,
after each ``add`` returned, prints the acknowledged keys on stdout and flushes. The parent kills
it with ``SIGKILL`` at a random moment (after a random number of acknowledgements, so the kill
lands mid-write most of the time), then reads the keys that reached the pipe. After all rounds:

* the store's ``integrity_check()`` finds nothing;
* every acknowledged key is stored (``lost`` counts those that are not);
* turn sequence numbers of every writer session are ``1..n`` without gaps or repeats.

Used by ``tests/test_reliability_crash.py`` (10–20 rounds) and ``tiamat-hooks bench crash``.
POSIX only (``SIGKILL``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ..models import Scope
from ..stores import open_store

__all__ = ["CrashReport", "run_crash_bench"]

WRITER = r"""
import asyncio, sys
from tiamat_hooks.models import make_record
from tiamat_hooks.stores import open_store

url, user, session = sys.argv[1:4]

async def main():
    store = open_store(url)
    n = 0
    try:
        while True:
            n += 1
            batch = [make_record(user_id=user, session_id=session, role="user",
                                 key=f"{session}-t{n}", text=f"turn {n} of {session} " * 3)]
            if n % 3 == 0:
                batch.append(make_record(user_id=user, kind="fact", key=f"{session}-f{n}",
                                         text=f"fact {n} of {session}"))
            if n % 7 == 0:
                long = ". ".join(f"sentence {i} about the long turn {n}" for i in range(300))
                batch.append(make_record(user_id=user, session_id=session, role="assistant",
                                         key=f"{session}-l{n}", text=long))
            await store.add(batch)
            sys.stdout.write(" ".join(r.key for r in batch) + "\n")
            sys.stdout.flush()
    finally:
        await store.close()

asyncio.run(main())
"""


@dataclass
class CrashReport:
    """Outcome of :func:`run_crash_bench` for one store URL."""

    store: str
    rounds: int
    killed: int = 0
    acked: int = 0
    lost: int = 0
    stored: int = 0
    seq_errors: int = 0
    integrity_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lost_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.seq_errors and not self.integrity_problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _one_round(url: str, user: str, session: str, rng: random.Random) -> tuple[list[str], bool]:
    """Start a writer, kill it after a random number of acks; returns (acked keys, killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, user, session],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[str] = []
    target = rng.randint(1, 40)
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= target:
                done.set()
        done.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    done.wait(timeout=60)  # bounded: a writer that never acks is killed after a minute
    # A little extra random time so the kill lands anywhere inside the next write.
    time.sleep(rng.random() * 0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    reader.join(timeout=30)
    for line in lines:
        # Only complete lines count: a line cut by the kill was not acknowledged.
        if line.endswith("\n"):
            acked.extend(line.split())
    return acked, killed


async def run_crash_bench(url: str, rounds: int = 100, *, seed: int = 0) -> CrashReport:
    """Kill a writer ``rounds`` times on ``url`` and check the store (see the module docstring).

    Uses a fresh random user id, so it can run against a store holding other data.
    """
    rng = random.Random(seed)
    user = f"crash-{uuid.uuid4().hex[:10]}"
    report = CrashReport(url, rounds)
    started = time.perf_counter()
    acked: list[str] = []
    sessions = [f"w{i}" for i in range(rounds)]
    for session in sessions:
        keys, killed = await asyncio.to_thread(_one_round, url, user, session, rng)
        acked.extend(keys)
        report.killed += killed
    report.acked = len(acked)
    store = open_store(url)
    try:
        checker = getattr(store, "integrity_check", None)
        if callable(checker):
            report.integrity_problems = list(await checker())
        records = await store.read(Scope(user))
        stored = {r.key for r in records}
        report.stored = len(records)
        report.lost_keys = [k for k in acked if k not in stored][:20]
        report.lost = sum(1 for k in acked if k not in stored)
        for session in sessions:
            seqs = [r.seq for r in records if r.session_id == session and r.kind == "turn"]
            if seqs != list(range(1, len(seqs) + 1)):
                report.seq_errors += 1
        await store.delete(Scope(user))
    finally:
        await store.close()
    report.seconds = time.perf_counter() - started
    return report
